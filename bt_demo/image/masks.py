"""One mask coercion and one pixel-spacing check, used by metrics, export, the correction store and
measurement; and the small morphology helpers (disk, components, holes, Otsu) the masks are made with.

Both raise :class:`bt_demo.errors.InputError` (a ``ValueError``) with a message that says what to pass instead.

The NaN rule: :func:`as_mask` reads a pixel as lesion when its value is ``> 0``, so NaN (and any value <= 0,
and -inf) is NOT lesion. A NaN in a probability map means the model gave no answer there; calling that
tumour would inflate areas and overlaps with pixels nobody predicted.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from bt_demo.errors import InputError

__all__ = [
    "MAX_SPACING_MM", "as_mask", "check_spacing", "disk", "fill_holes", "large_components", "largest_component",
    "otsu_u8", "smooth",
]

MAX_SPACING_MM = 100.0
"""Largest pixel side accepted, in mm (a 10 cm pixel is no MRI slice; the readers treat larger as unknown)."""


def as_mask(mask, name: str = "mask") -> np.ndarray:
    """Any 2-D array-like -> ``bool`` array ``(H, W)``: the lesion pixels.

    ``bool`` input is returned as is (not copied). Numbers become ``mask > 0`` (a new array): 255, 1, 0.3 and
    +inf are lesion; 0, negatives, -inf and NaN are not (see the module's NaN rule). This is no threshold for
    probability maps: threshold those first (0.3 counts as lesion here). An ``(H, W, 1)`` array is taken as
    its one channel. ``name`` names the argument in the error message.

    Raises :class:`InputError` when the input is not ``(H, W)`` (or ``(H, W, 1)``), or not bool or numeric.
    """
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(
            f"{name} must be a 2-D (H, W) array, got shape {arr.shape}; "
            "pass one slice, and for an RGB mask one channel of it"
        )
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"{name} must be numeric or bool, got dtype {arr.dtype}")
    with np.errstate(invalid="ignore"):
        return arr > 0


def check_spacing(spacing) -> tuple[float, float] | None:
    """``(row_mm, col_mm)`` as two floats, or ``None`` (unknown spacing) as ``None``.

    row_mm is the height of a pixel (along y), col_mm its width (along x). Each must be a finite number in
    ``(0, MAX_SPACING_MM]``; anything else (one number, three, a string, 0, a negative, NaN, inf, 250 mm)
    raises :class:`InputError`.
    """
    if spacing is None:
        return None
    msg = (f"spacing must be (row_mm, col_mm): two finite numbers in (0, {MAX_SPACING_MM:g}] mm per pixel, "
           f"or None when unknown; got {spacing!r}")
    if isinstance(spacing, (str, bytes)):
        raise InputError(msg)
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise InputError(msg) from None
    if len(values) != 2 or not all(math.isfinite(v) and 0.0 < v <= MAX_SPACING_MM for v in values):
        raise InputError(msg)
    return values[0], values[1]


# --------------------------------------------------------------------------
# morphology helpers
# --------------------------------------------------------------------------
def disk(radius: int) -> np.ndarray:
    """uint8 elliptical structuring element of radius ``radius`` px (``2r + 1`` a side) for OpenCV."""
    r = max(0, int(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """bool (H, W) -> bool (H, W): the largest 8-connected component (empty stays empty)."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return lab == best


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """bool (H, W): ``mask`` with every background region not 4-connected to the border filled
    (what ``scipy.ndimage.binary_fill_holes`` does, via one OpenCV flood fill)."""
    h, w = mask.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = mask
    cv2.floodFill(pad, None, (0, 0), 2, flags=4)
    return pad[1:-1, 1:-1] != 2


def large_components(mask: np.ndarray, fraction: float) -> np.ndarray:
    """bool (H, W): the 8-connected components with at least ``fraction`` of the largest one's area."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    areas = stats[:, cv2.CC_STAT_AREA]
    keep = areas >= fraction * areas[1:].max()
    keep[0] = False
    return keep[lab]


def otsu_u8(img: np.ndarray) -> tuple[np.ndarray, int]:
    """Min-max stretch to uint8 and Otsu threshold it: (u8 image, threshold)."""
    lo, hi = float(img.min()), float(img.max())
    u8 = np.clip(np.rint((img - lo) / max(hi - lo, 1e-12) * 255.0), 0, 255).astype(np.uint8)
    t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return u8, int(t)


def smooth(img: np.ndarray) -> np.ndarray:
    """Gaussian blur with sigma = max(1, min(H, W) / 256) px (the head mask's pre-smoothing)."""
    sigma = max(1.0, min(img.shape) / 256.0)
    return cv2.GaussianBlur(img, (0, 0), sigma)
