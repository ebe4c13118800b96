"""How clicks become input channels of the built-in click model.

One function, used by training and inference alike, so the two cannot drift.
Each click is a disk of ``radius`` pixels (in the model's input pixels) in the
positive or negative map, as in RITM/DeepEdit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def click_maps(shape: tuple[int, int], points_xy: Sequence[Sequence[float]], labels: Sequence[int],
               radius: float) -> np.ndarray:
    """float32 (2, H, W): channel 0 positive disks, channel 1 negative disks, values 0/1.

    points_xy: (x, y) in the pixels of ``shape``; points outside are ignored.
    labels: 1 positive, 0 negative (same length as points_xy).
    """
    import cv2

    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((2, h, w), np.float32)
    if len(points_xy) != len(labels):
        raise ValueError(f"{len(points_xy)} points but {len(labels)} labels")
    r = max(1, int(round(radius)))
    for (x, y), lab in zip(points_xy, labels, strict=True):
        if lab not in (0, 1):
            raise ValueError(f"click labels must be 1 (positive) or 0 (negative), got {lab!r}")
        xi, yi = int(round(float(x))), int(round(float(y)))
        if 0 <= xi < w and 0 <= yi < h:
            cv2.circle(out[0 if lab == 1 else 1], (xi, yi), r, 1.0, thickness=-1)
    return out
