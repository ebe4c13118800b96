"""Reader for class-folder image sets (``<root>/<class>/*``), content-sniffed and deduplicated.

Files are identified by the SHA-1 of their bytes: duplicates inside a split are
dropped, and test images that also occur in training are dropped from the
test set (the 4-class set has 88 such leaks). Folder names are mapped to the
canonical class names glioma / meningioma / no_tumour / pituitary.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CANONICAL = {"glioma": "glioma", "meningioma": "meningioma", "pituitary": "pituitary",
             "no": "no_tumour", "notumor": "no_tumour", "no_tumor": "no_tumour", "no_tumour": "no_tumour",
             "normal": "no_tumour", "healthy": "no_tumour"}


def canonical_class(folder: str) -> str:
    s = folder.lower().replace("-", "_").replace(" ", "_")
    for suffix in ("_tumor", "_tumour"):
        if s.endswith(suffix) and s != "no" + suffix:
            s = s[: -len(suffix)]
    return CANONICAL.get(s, s)


@dataclass
class ClassSet:
    images: list[np.ndarray]   # uint8 (H, W) gray, original sizes
    labels: np.ndarray         # int (N,)
    hashes: list[str]
    class_names: list[str]
    paths: list[str]
    dropped: dict              # counts of what was removed and why


def _is_image(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff" or data[:8] == b"\x89PNG\r\n\x1a\n" or data[:2] == b"BM" or data[:4] in (b"II*\x00", b"MM\x00*")


def read_class_folder(root: str | Path, class_names: list[str] | None = None,
                      exclude_hashes: set[str] | None = None) -> ClassSet:
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"class folder root not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    found = sorted({canonical_class(f.name) for f in folders})
    names = class_names or found
    images, labels, hashes, paths = [], [], [], []
    seen: set[str] = set()
    dropped = {"duplicate": 0, "also_in_training": 0, "not_an_image": 0, "unknown_class": 0}
    for f in folders:
        cname = canonical_class(f.name)
        if cname not in names:
            dropped["unknown_class"] += sum(1 for _ in f.iterdir())
            continue
        for fp in sorted(f.iterdir()):
            if not fp.is_file():
                continue
            data = fp.read_bytes()
            if not _is_image(data):
                dropped["not_an_image"] += 1
                continue
            h = hashlib.sha1(data).hexdigest()
            if h in seen:
                dropped["duplicate"] += 1
                continue
            if exclude_hashes and h in exclude_hashes:
                dropped["also_in_training"] += 1
                continue
            seen.add(h)
            import io

            with Image.open(io.BytesIO(data)) as im:
                images.append(np.asarray(im.convert("L")))
            labels.append(names.index(cname))
            hashes.append(h)
            paths.append(str(fp.relative_to(root)))
    return ClassSet(images, np.array(labels, int), hashes, list(names), paths, dropped)
