"""Stored corrections (bt_demo.io.corrections.CorrectionStore) as a training set.

    from train.corrections import load_corrections
    extra = load_corrections("corrections", size=256)   # -> train.lgg.LggSet

Each record becomes one slice of its own group ``"correction_<id>"`` (so a
patient-grouped split never puts one correction on both sides), with
``slice_numbers`` 0. Damaged records are skipped with a warning naming them,
never silently and never fatally.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from bt_demo.io.corrections import CorrectionStore, CorruptRecordError
from train.lgg import LggSet


def _empty(size: int | None) -> LggSet:
    side = 0 if size is None else size
    return LggSet(np.zeros((0, side, side), np.uint8), np.zeros((0, side, side), bool),
                  np.zeros(0, dtype="<U27"), np.zeros(0, dtype=np.int64))


def load_corrections(root: str | Path, size: int | None = 256) -> LggSet:
    """Every complete, verified record of the store at ``root`` as an :class:`~train.lgg.LggSet`.

    Args:
        root: a correction store folder (it must exist; it is opened, not created).
        size: side of the square output (8 to 4096): images are resized with
            area interpolation, masks with nearest neighbour. ``None`` keeps
            each record's size, which then must all be equal.

    Returns:
        ``images`` uint8 ``(N, size, size)`` (``round(image * 255)``),
        ``masks`` bool ``(N, size, size)`` (the *corrected* masks),
        ``patients`` ``"correction_<id>"``, ``slice_numbers`` all 0; records in
        id order. An empty store gives ``N = 0`` with the same trailing shape
        (``(0, 0, 0)`` when ``size`` is ``None``).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: ``size`` out of range, or ``size=None`` with records of different sizes.
    """
    import cv2

    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= 4096):
        raise ValueError(f"size must be None or a whole number from 8 to 4096, got {size!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"correction store not found: {root}")
    store = CorrectionStore(root)
    imgs, masks, pats = [], [], []
    skipped = []
    for rid in store.ids():
        try:
            rec = store.load(rid)
        except CorruptRecordError as e:
            skipped.append(str(e))
            continue
        img = np.rint(np.clip(rec.image, 0.0, 1.0) * 255.0).astype(np.uint8)
        msk = rec.corrected_mask
        if size is not None and img.shape != (size, size):
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
            msk = cv2.resize(msk.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
        imgs.append(img)
        masks.append(msk)
        pats.append(f"correction_{rid}")
    if skipped:
        warnings.warn(f"{len(skipped)} damaged correction record(s) skipped: " + "; ".join(skipped), stacklevel=2)
    if not imgs:
        return _empty(size)
    shapes = sorted({i.shape for i in imgs})
    if len(shapes) > 1:
        raise ValueError(f"the stored corrections have different sizes {shapes[:5]}; pass size=<side> to resize them")
    return LggSet(np.stack(imgs), np.stack(masks), np.array(pats), np.zeros(len(imgs), dtype=np.int64))
