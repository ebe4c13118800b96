"""Simulated clicks, the standard interactive-segmentation protocol.

First click: the interior point of the target farthest from its boundary.
Each next click: the point farthest from the boundary of the largest error
region, positive when that region is missed tumour, negative when it is a
false alarm. Used by training, the accuracy evaluation and the benchmarks.
Points are (x, y) in pixels.
"""

from __future__ import annotations

import numpy as np


def _interior_point(region: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of ``region`` farthest from its boundary (image border counts as boundary)."""
    import cv2

    padded = np.pad(region.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def first_click(target: np.ndarray) -> tuple[int, int] | None:
    """Interior point farthest from the boundary of a bool (H, W) target; None if empty."""
    target = np.asarray(target, dtype=bool)
    if not target.any():
        return None
    return _interior_point(target)


def next_click(pred: np.ndarray, target: np.ndarray) -> tuple[tuple[int, int], int] | None:
    """((x, y), label) at the centre of the largest error region; None if pred == target.

    label is 1 (positive) for a missed region (target & ~pred), 0 for a false one.
    The error region is chosen by the largest distance-to-boundary (as in
    RITM/DeepEdit), which favours thick errors over thin rims.
    """
    import cv2

    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    fn = target & ~pred
    fp = pred & ~target
    if not fn.any() and not fp.any():
        return None
    d_fn = cv2.distanceTransform(np.pad(fn.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    d_fp = cv2.distanceTransform(np.pad(fp.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    if d_fn.max() >= d_fp.max():
        y, x = np.unravel_index(int(np.argmax(d_fn)), d_fn.shape)
        return (int(x), int(y)), 1
    y, x = np.unravel_index(int(np.argmax(d_fp)), d_fp.shape)
    return (int(x), int(y)), 0


def random_clicks(target: np.ndarray, rng: np.random.Generator, n_pos: int, n_neg: int,
                  margin: int = 3) -> tuple[list[tuple[int, int]], list[int]]:
    """Random user-like clicks: positives inside the (eroded) target, negatives
    in a band around it (where users actually click to trim a mask)."""
    import cv2

    target = np.asarray(target, dtype=bool)
    pts: list[tuple[int, int]] = []
    labels: list[int] = []
    if target.any() and n_pos:
        inner = cv2.erode(target.astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)) > 0
        pool = np.argwhere(inner if inner.any() else target)
        for i in rng.choice(len(pool), size=min(n_pos, len(pool)), replace=False):
            y, x = pool[i]
            pts.append((int(x), int(y)))
            labels.append(1)
    if n_neg:
        k = max(15, int(np.sqrt(target.sum()) * 0.6)) if target.any() else 15
        band = cv2.dilate(target.astype(np.uint8), np.ones((2 * k + 1,) * 2, np.uint8)) > 0
        band &= ~(cv2.dilate(target.astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)) > 0)
        pool = np.argwhere(band)
        if len(pool):
            for i in rng.choice(len(pool), size=min(n_neg, len(pool)), replace=False):
                y, x = pool[i]
                pts.append((int(x), int(y)))
                labels.append(0)
    return pts, labels
