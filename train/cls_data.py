"""The classifier's data, as the square inputs the engine sees, cached per input size.

- figshare (``../shared/data/figshare``): T1-CE slices, glioma / meningioma /
  pituitary, with the dataset author's patient-level folds 1-4 -> the type head.
- LGG (``../shared/data/lgg``): FLAIR slices with and without tumour of the
  same patients -> the presence head (split by patient).
- Sartaj 4-class ``Testing/`` -> an external check only (its classes come from
  different sources; labels imperfect).
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.lgg import FIGSHARE_DEFAULT, LGG_DEFAULT, SARTAJ_DEFAULT

TYPE_CLASSES = ["glioma", "meningioma", "pituitary"]
PRESENCE_CLASSES = ["no_tumour", "tumour"]
CACHE = Path("runs") / "cache"

FIGSHARE_DATA = {
    "name": "figshare brain tumour dataset (Cheng et al.), folds 1-4 of the author's patient-level 5-fold split",
    "source": "images: GitHub nanonane/RCS-YOLO @ 57449ec; folds/labels: GitHub chengjun583/brainTumorRetrieval @ 52963d8",
    "licence": "CC BY 4.0 (figshare). Cite Cheng J. et al., PLoS ONE 10(10): e0140157 (2015).",
}
SARTAJ_CAVEAT = ("Sartaj 4-class Testing folder (deduplicated, images also in Training dropped): an external check only; "
                 "its classes come from different sources and its glioma labels are known to be imperfect")


@dataclass
class Arrays:
    """x: uint8 (N, S, S) model inputs; y: int (N,); groups: (N,) patient or fold ids; extra: per-image ints."""
    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    extra: np.ndarray

    def take(self, keep) -> "Arrays":
        return Arrays(self.x[keep], self.y[keep], self.groups[keep], self.extra[keep])


def to_inputs(images, size: int, fit: str) -> np.ndarray:
    """uint8 (N, size, size): each image mapped to the model's square input exactly as the engine does."""
    from bt_demo.models.sizing import fit_square

    out = np.zeros((len(images), size, size), np.uint8)
    for i, im in enumerate(images):
        f = np.asarray(im, np.float32)
        out[i] = np.clip(fit_square(f, size, fit).image(f), 0, 255).astype(np.uint8)
    return out


def _cached(name: str, size: int, fit: str, build) -> Arrays:
    path = Path(CACHE) / f"{name}_{size}_{fit}.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        return Arrays(z["x"], z["y"], z["groups"], z["extra"])
    a = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of this process's own: two study rows (--jobs 2) may build the same cache at once, and with one
    # shared temporary name the second rename found the file already moved (seen in CI)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, x=a.x, y=a.y, groups=a.groups, extra=a.extra)
    tmp.replace(path)
    return a


def _gray(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def figshare(size: int, fit: str, root: Path | None = None) -> Arrays:
    """Type data: y indexes TYPE_CLASSES; groups = fold (1-4); extra = figshare index."""
    root = Path(root or FIGSHARE_DEFAULT)

    def build():
        with open(root / "labels.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        x = to_inputs([_gray(root / r["image"]) for r in rows], size, fit)
        return Arrays(x, np.array([TYPE_CLASSES.index(r["label"]) for r in rows]),
                      np.array([int(r["fold"]) for r in rows]), np.array([int(r["figshare_index"]) for r in rows]))
    return _cached(f"figshare_{hashlib.sha1(str(root).encode()).hexdigest()[:6]}", size, fit, build)


def lgg_presence(size: int, fit: str, root: Path | None = None) -> Arrays:
    """Presence data: y = 1 when the expert mask is not empty; groups = patient; extra = mask pixels (256² slice)."""
    root = Path(root or LGG_DEFAULT)

    def build():
        from train import lgg

        rows = lgg.find_slices(root)
        imgs, px = [], []
        for _, _, ip, mp in rows:
            imgs.append(lgg.read_gray(ip, flair=True))
            px.append(int((lgg.read_gray(mp, flair=False) > 127).sum()))
        px = np.array(px)
        return Arrays(to_inputs(imgs, size, fit), (px > 0).astype(int), np.array([r[0] for r in rows]), px)
    return _cached(f"lgg_{hashlib.sha1(str(root).encode()).hexdigest()[:6]}", size, fit, build)


def sartaj_testing(size: int, fit: str, root: Path | None = None) -> Arrays:
    """External check: y indexes ['glioma','meningioma','no_tumour','pituitary']; deduplicated, leaks dropped."""
    root = Path(root or SARTAJ_DEFAULT)

    def build():
        from train.classes import read_class_folder

        names = ["glioma", "meningioma", "no_tumour", "pituitary"]
        train_hashes = set(read_class_folder(root / "Training", names).hashes)
        test = read_class_folder(root / "Testing", names, exclude_hashes=train_hashes)
        return Arrays(to_inputs(test.images, size, fit), test.labels, np.zeros(len(test.labels), int),
                      np.zeros(len(test.labels), int))
    return _cached(f"sartaj_testing_{hashlib.sha1(str(root).encode()).hexdigest()[:6]}", size, fit, build)


def lgg_presence_split(patients: np.ndarray, n_val: int = 17, seed: int = 0) -> dict:
    """Train / validation patients for the presence head (scikit-learn GroupShuffleSplit, never splitting a patient)."""
    from sklearn.model_selection import GroupShuffleSplit

    idx = np.arange(len(patients))
    tr, va = next(GroupShuffleSplit(n_splits=1, test_size=n_val, random_state=seed).split(idx, groups=patients))
    return {"train": sorted(set(patients[tr].tolist())), "val": sorted(set(patients[va].tolist()))}
