"""The training data's roots, and the reader for the LGG segmentation layout with its patient-grouped split.

Layout: ``<root>/<patient>/<stem>_<n>.(png|tif)`` with ``<stem>_<n>_mask.(png|tif)``
beside it. 3-channel stacks (Kaggle's pre-contrast/FLAIR/post-contrast) give
their FLAIR channel (1); 1-channel files are taken as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
LGG_DEFAULT = DATA_ROOT / "lgg"  # LGG FLAIR slices + expert masks: the U-Net, the click model, the presence head
FIGSHARE_DEFAULT = DATA_ROOT / "figshare"  # figshare T1-CE slices with the author's folds: the type head
SARTAJ_DEFAULT = DATA_ROOT / "classification" / "sartaj_4class"  # an external check of the classifier only

_SLICE_RE = re.compile(r"^(?P<stem>.+)_(?P<n>\d+)\.(?P<ext>png|tif|tiff)$", re.IGNORECASE)
FLAIR_CHANNEL = 1


@dataclass
class LggSet:
    """All slices of a set of patients, in memory.

    images: uint8 (N, H, W) FLAIR; masks: bool (N, H, W); patients: (N,) str;
    slice_numbers: (N,) int (1..n through the head).
    """

    images: np.ndarray
    masks: np.ndarray
    patients: np.ndarray
    slice_numbers: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, patient_ids) -> "LggSet":
        keep = np.isin(self.patients, list(patient_ids))
        return LggSet(self.images[keep], self.masks[keep], self.patients[keep], self.slice_numbers[keep])

    @property
    def patient_ids(self) -> list[str]:
        return sorted(set(self.patients.tolist()))

    @property
    def has_tumour(self) -> np.ndarray:
        return self.masks.reshape(len(self.masks), -1).any(axis=1)


def read_gray(path: Path, flair: bool) -> np.ndarray:
    """uint8 (H, W) of an LGG file: a 3-channel stack gives its FLAIR channel (or channel 0 for a mask)."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., FLAIR_CHANNEL] if flair else arr[..., 0]
    if arr.dtype != np.uint8:
        arr = np.clip(arr.astype(np.float32) / max(float(arr.max()), 1.0) * 255.0, 0, 255).astype(np.uint8)
    return arr


def find_slices(root: str | Path) -> list[tuple[str, int, Path, Path]]:
    """(patient, slice number, image path, mask path) for every pair under root, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"LGG folder not found: {root}")
    out = []
    for pdir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(pdir.iterdir()):
            m = _SLICE_RE.match(f.name)
            if not m or m.group("stem").endswith("_mask"):
                continue
            mask = f.with_name(f"{m.group('stem')}_{m.group('n')}_mask.{m.group('ext')}")
            if mask.exists():
                out.append((pdir.name, int(m.group("n")), f, mask))
    if not out:
        raise FileNotFoundError(f"no <name>_<n>.png|tif + <name>_<n>_mask.png|tif pairs under {root}")
    out.sort(key=lambda t: (t[0], t[1]))
    return out


def load_lgg(root: str | Path, patients: list[str] | None = None, size: int | None = None) -> LggSet:
    """Load every slice (optionally only some patients), resized to ``size`` if given."""
    import cv2

    rows = find_slices(root)
    if patients is not None:
        wanted = set(patients)
        rows = [r for r in rows if r[0] in wanted]
    imgs, masks, pats, nums = [], [], [], []
    for pat, n, ip, mp in rows:
        img = read_gray(ip, flair=True)
        msk = read_gray(mp, flair=False) > 127
        if size is not None and img.shape != (size, size):
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
            msk = cv2.resize(msk.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
        if img.shape != msk.shape:
            raise ValueError(f"image and mask sizes differ for {ip.name}: {img.shape} vs {msk.shape}")
        imgs.append(img)
        masks.append(msk)
        pats.append(pat)
        nums.append(n)
    return LggSet(np.stack(imgs), np.stack(masks), np.array(pats), np.array(nums))


def patient_split(patients: np.ndarray, has_tumour: np.ndarray, n_val: int, n_test: int, seed: int = 0) -> dict:
    """Split patient ids into train / val / test, never splitting a patient.

    Uses scikit-learn's GroupShuffleSplit twice (test first, then val from the
    rest). ``val`` chooses checkpoints and post-processing; ``test`` is
    reported once, in the model card. Returns {"train": [...], "val": [...], "test": [...]}.
    """
    from sklearn.model_selection import GroupShuffleSplit

    patients = np.asarray(patients)
    idx = np.arange(len(patients))
    uniq = sorted(set(patients.tolist()))
    if n_val + n_test >= len(uniq):
        raise ValueError(f"need more than {n_val + n_test} patients, have {len(uniq)}")
    gss = GroupShuffleSplit(n_splits=1, test_size=n_test, random_state=seed)
    rest, test = next(gss.split(idx, has_tumour, groups=patients))
    gss2 = GroupShuffleSplit(n_splits=1, test_size=n_val, random_state=seed + 1)
    tr, va = next(gss2.split(rest, has_tumour[rest], groups=patients[rest]))
    return {
        "train": sorted(set(patients[rest][tr].tolist())),
        "val": sorted(set(patients[rest][va].tolist())),
        "test": sorted(set(patients[test].tolist())),
    }
