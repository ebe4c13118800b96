"""Mask post-processing shared by the engines and by training's selection of it."""

from __future__ import annotations

import numpy as np


def remove_small_components(mask: np.ndarray, min_px: int) -> np.ndarray:
    """bool (H, W) with 8-connected components smaller than ``min_px`` pixels removed."""
    import cv2

    mask = np.asarray(mask, dtype=bool)
    if min_px <= 1 or not mask.any():
        return mask.copy()
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_px
    return keep[lab]


def keep_components_touching(mask: np.ndarray, points_xy, labels) -> np.ndarray:
    """Keep only the components of ``mask`` that contain a positive click.

    With no positive click inside any component the mask is returned as is
    (the model's answer is still the best guess we have).
    """
    import cv2

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    h, w = mask.shape
    ids = set()
    for (x, y), l in zip(points_xy, labels, strict=False):
        xi, yi = int(round(float(x))), int(round(float(y)))
        if l == 1 and 0 <= xi < w and 0 <= yi < h and lab[yi, xi] > 0:
            ids.add(int(lab[yi, xi]))
    if not ids:
        return mask.copy()
    return np.isin(lab, list(ids))


def binarize(prob: np.ndarray, threshold: float, min_component_px: int = 0) -> np.ndarray:
    """Threshold a probability map (float (H, W) in [0, 1]) and drop small components."""
    return remove_small_components(np.asarray(prob) >= threshold, min_component_px)
