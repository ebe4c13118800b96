"""The preprocessing lab: named steps, a pipeline of them, and the geometry they change.

Every step is a pure function ``fn(image, **params) -> image`` registered in
:data:`STEPS` with declared parameter ranges, so the UI builds its toggles and
sliders from the registry and tests run every step on every kind of input.

Image convention (all public functions here):

* input: a 2-D array ``(H, W)`` (``(H, W, 1)`` is squeezed). The intended
  input is float32 in ``[0, 1]`` (``Slice.unit()``); anything else is
  converted by :func:`as_unit_float`: bool -> 0/1, uint8 -> ``/ 255``,
  floats already inside ``[0, 1]`` -> cast to float32 unchanged, every other
  dtype or range (uint16, int, float outside ``[0, 1]``) -> min-max rescaled to
  ``[0, 1]``. Non-finite values are replaced by the finite minimum (warning).
* output: float32 ``(h, w)`` in ``[0, 1]``, finite. Only ``crop_brain``
  changes the shape (and returns its box).
* a constant image is returned unchanged with a ``RuntimeWarning``, never NaN.

The steps, in registry (= run) order; none is on by default except ``normalize``:

``crop_brain(margin=8)``
    Bounding box of :func:`head_mask` plus ``margin`` px (0..64), clipped to
    the image; returns ``(cropped, (y0, x0, y1, x1))``. A head smaller than
    8 px a side gives the full image (with a warning), never an empty crop.
    ``run_pipeline`` composes the box into ``Processed.geometry``.
``skull_strip(method="morphological", erosion=4, iterations=30)``
    morphological: Otsu tissue threshold inside the head, erosion by
    ``erosion`` px to cut scalp-brain bridges, the largest component not
    touching the outer band of the head (else the largest), dilated back,
    holes filled. snakes: that mask refined by scikit-image's
    ``morphological_chan_vese`` (``iterations`` steps) on a copy at most 128 px
    a side, confined to 3 px around the initial mask. Outside the brain -> 0.
``denoise(method="median", strength=0.5)``, strength in [0, 1]:
    median: 3x3 (s <= 1/3), 5x5 (s <= 2/3), else 5x5 twice (float32, no
    quantisation); gaussian: sigma = 0.5 + 2.5 s px; bilateral (float32):
    range sigma 0.05 + 0.25 s, space sigma 1 + 3 s px; nlmeans: OpenCV
    ``fastNlMeansDenoising`` on the 8-bit image (5x5 patches, 11x11 search),
    h = (0.8 + 1.7 s) x the noise sigma estimated by :func:`noise_sigma`.
``clahe(clip_limit=2.0, tile_grid=8)``
    OpenCV CLAHE on the 8-bit image (output has 256 levels). Not 16-bit:
    OpenCV's 16-bit CLAHE uses 65536 bins, where its clip limit barely clips
    and the result is close to plain per-tile equalisation (noise blown up).
``musica(levels=5, power=0.7, amplification=1.0)``
    Laplacian pyramid (cv2.pyrDown/pyrUp; ``levels`` capped so the coarsest
    level keeps >= 4 px a side, see :func:`musica_levels`); each detail
    coefficient d of a level with M = max |d| becomes
    ``sign(d) * M * a * (|d| / M) ** p``; reconstruct; then the output's 0.5 /
    99.5 percentiles are mapped onto the input's and the result clipped to
    [0, 1]. With p = 1 and a = 1 the input comes back (within 1e-6).
``unsharp(radius=1.5, amount=0.8)``
    ``clip(img + amount * (img - gaussian(img, sigma=radius)), 0, 1)``.
``normalize(method="percentile", low=0.5, high=99.5)``
    Statistics over the non-zero ("brain") pixels; zeros stay 0. percentile:
    clip to the ``low``/``high`` percentiles and rescale to [0, 1]. zscore:
    ``clip((z + 3) / 6, 0, 1)``: kept in [0, 1] for display; the models
    standardise their input again anyway.

Boxes here are ``(y0, x0, y1, x1)`` in pixels (end exclusive), the order
:meth:`Geometry.then_crop` takes; points elsewhere are ``(x, y)``.

No Gradio import here (``bt_demo`` is the core).
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import cv2
import numpy as np

from bt_demo.errors import InputError
from bt_demo.image.geometry import Geometry
from bt_demo.image.masks import disk, fill_holes, large_components, largest_component, otsu_u8, smooth
from bt_demo.image.params import Param, check_params

__all__ = [
    "Param", "Step", "STEPS", "get_step", "validate_params", "default_pipeline", "PipelineSpec",
    "Processed", "run_pipeline", "model_steps", "pipeline_key", "estimate_brain_mask", "head_mask", "as_unit_float",
    "crop_brain", "skull_strip", "denoise", "clahe", "musica", "unsharp", "normalize", "musica_levels",
    "noise_sigma",
]

_CONST_EPS = 1e-6  # an image whose max - min is below this is treated as constant
_MIN_SIDE = 4      # smallest accepted image side, in pixels


# --------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------
def as_unit_float(image: np.ndarray) -> np.ndarray:
    """Any 2-D grey image -> float32 ``(H, W)`` in ``[0, 1]`` (a new array when converted).

    Conversion rules: bool -> 0/1; uint8 -> ``/ 255``; float already within
    ``[0, 1]`` -> cast only; anything else (uint16, other ints, floats outside
    ``[0, 1]``) -> min-max rescale to ``[0, 1]`` (a constant one -> zeros).
    NaN/inf are replaced by the finite minimum, with a warning.

    Raises :class:`InputError` (a ``ValueError``) for non-2-D input or a side
    shorter than 4 pixels.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"expected a 2-D grey image of shape (H, W), got shape {arr.shape}; "
                         "pick one slice and one channel first")
    if min(arr.shape) < _MIN_SIDE:
        raise InputError(f"image is too small: shape {arr.shape}, each side must be at least {_MIN_SIDE} pixels")
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"image dtype {arr.dtype} is not numeric")
    out = arr.astype(np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        warnings.warn("image has NaN/inf pixels; they were replaced by the smallest finite value",
                      RuntimeWarning, stacklevel=3)
        fill = float(out[finite].min()) if finite.any() else 0.0
        out = np.where(finite, out, np.float32(fill)).astype(np.float32)
    lo, hi = float(out.min()), float(out.max())
    if np.issubdtype(arr.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        return out if out is not arr else out.copy()
    if hi - lo <= 0:
        return np.zeros_like(out)
    return ((out - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32)


def _is_constant(img: np.ndarray) -> bool:
    return float(img.max()) - float(img.min()) < _CONST_EPS


def _warn_constant(what: str) -> None:
    warnings.warn(f"constant image: {what} has nothing to work on; the image is returned unchanged",
                  RuntimeWarning, stacklevel=4)


def _to_u8(img: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 by rounding (the 8-bit version steps share)."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------
# brain / head mask
# --------------------------------------------------------------------------
def head_mask(image: np.ndarray) -> np.ndarray:
    """The head (foreground) of a slice: bool ``(H, W)``.

    image: 2-D grey image, ideally float32 ``(H, W)`` in ``[0, 1]`` (others are
    converted, see :func:`as_unit_float`). Otsu threshold of the
    Gaussian-smoothed image (sigma = max(1, min(H, W) / 256) px), the largest
    8-connected component together with any other at least 10 % of its area
    (a scalp ring cut off from the brain by dark bone), a small closing (disk
    radius max(1, round(min(H, W) / 64)) px), holes filled. Includes scalp and skull
    when the slice shows them. Never empty: falls back to the non-zero pixels,
    then the whole image (also for a constant image, silently).
    """
    img = as_unit_float(image)
    if _is_constant(img):
        return np.ones(img.shape, bool)
    u8, t = otsu_u8(smooth(img))
    mask = large_components(u8 > t, 0.1)
    if mask.any():
        r = max(1, int(round(min(img.shape) / 64.0)))
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, disk(r)) > 0
        mask = fill_holes(mask)
    if not mask.any():
        mask = img > 0
    if not mask.any():
        mask = np.ones(img.shape, bool)
    return mask


def estimate_brain_mask(image: np.ndarray) -> np.ndarray:
    """A brain estimate: bool ``(H, W)``, the pixels K-Means clusters and measurements use.

    image: 2-D grey image, ideally float32 ``(H, W)`` in ``[0, 1]`` (others are
    converted, see :func:`as_unit_float`).

    Method: :func:`head_mask` (Otsu threshold of the smoothed image, largest
    component, small closing, holes filled), then the scalp and skull are
    peeled off: the head is eroded by a disk of radius 6 % of its equivalent
    diameter (about 11 px for a 256-px slice of a whole head; scalp fat is bright
    on FLAIR and would otherwise pose as tumour), and the largest component is
    kept. (On an image that is already skull-stripped this also trims the
    outer cortex by the same amount.) When the peeled mask would be tiny
    (< 16 px or < 25 % of the head: a thin or small object) the head itself is
    returned. Never empty for a non-constant image (falls back to the non-zero
    pixels, then the whole image). A constant image gives all True and a
    ``RuntimeWarning``.
    """
    img = as_unit_float(image)
    if _is_constant(img):
        warnings.warn("constant image: the brain mask is the whole image", RuntimeWarning, stacklevel=2)
        return np.ones(img.shape, bool)
    head = head_mask(img)
    area = int(head.sum())
    r = int(round(0.06 * np.sqrt(4.0 * area / np.pi)))
    if r >= 1:
        peeled = largest_component(cv2.erode(head.astype(np.uint8), disk(r)) > 0)
        if peeled.sum() >= max(16, 0.25 * area):
            return peeled
    return head


# --------------------------------------------------------------------------
# the steps (implementations take validated params)
# --------------------------------------------------------------------------
def _crop_brain(img: np.ndarray, margin: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    h, w = img.shape
    full = (0, 0, h, w)
    if _is_constant(img):
        _warn_constant("crop_brain")
        return img.copy(), full
    mask = head_mask(img)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return img.copy(), full
    y0, y1 = max(0, rows[0] - margin), min(h, rows[-1] + 1 + margin)
    x0, x1 = max(0, cols[0] - margin), min(w, cols[-1] + 1 + margin)
    min_side = min(8, h, w)
    if y1 - y0 < min_side or x1 - x0 < min_side:
        warnings.warn(f"crop_brain: the head found is smaller than {min_side} px; keeping the full image",
                      RuntimeWarning, stacklevel=4)
        return img.copy(), full
    box = (int(y0), int(x0), int(y1), int(x1))
    return img[y0:y1, x0:x1].copy(), box


def _morphological_brain(img: np.ndarray, erosion: int) -> np.ndarray:
    """bool brain mask: tissue threshold, erode, pick the brain component, dilate back, fill."""
    head = head_mask(img)
    sm = smooth(img)
    u8, t = otsu_u8(sm)
    tissue = (u8 > t) & head
    er = cv2.erode(tissue.astype(np.uint8), disk(erosion)) if erosion > 0 else tissue.astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(er, connectivity=8)
    if n <= 1:
        return head
    # The outer band of the head is scalp/skull: prefer the largest component not touching it.
    band_w = max(2, erosion + 1)
    band = head & ~(cv2.erode(head.astype(np.uint8), disk(band_w)) > 0)
    touching = np.zeros(n, bool)
    touching[np.unique(lab[band])] = True
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    areas[0] = -1
    inner = np.where(~touching & (areas >= 0.05 * head.sum()), areas, -1)
    best = int(np.argmax(inner)) if inner.max() > 0 else int(np.argmax(areas))
    brain = (lab == best).astype(np.uint8)
    if erosion > 0:
        brain = cv2.dilate(brain, disk(erosion))
    brain = fill_holes((brain > 0) & head)
    return brain if brain.any() else head


def _snake_brain(img: np.ndarray, erosion: int, iterations: int) -> np.ndarray:
    """Refine the morphological mask with a morphological Chan-Vese snake (on <= 128 px side)."""
    from skimage.segmentation import morphological_chan_vese

    init = _morphological_brain(img, erosion)
    h, w = img.shape
    f = min(1.0, 128.0 / max(h, w))
    sh, sw = max(4, int(round(h * f))), max(4, int(round(w * f)))
    small = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA) if f < 1 else img
    init_s = cv2.resize(init.astype(np.uint8), (sw, sh), interpolation=cv2.INTER_NEAREST) > 0 if f < 1 else init
    # Keep the snake near the initial brain: the skull further out is hidden from it.
    reach = cv2.dilate(init_s.astype(np.uint8), disk(3)) > 0
    ls = morphological_chan_vese(np.where(reach, small, 0).astype(np.float64), num_iter=int(iterations),
                                 init_level_set=init_s.astype(np.int8), smoothing=1)
    seg = fill_holes(largest_component((ls > 0) & reach))
    if f < 1:
        seg = cv2.resize(seg.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
    return seg if seg.any() else init


def _skull_strip(img: np.ndarray, method: str, erosion: int, iterations: int) -> np.ndarray:
    if _is_constant(img):
        _warn_constant("skull_strip")
        return img.copy()
    brain = _morphological_brain(img, erosion) if method == "morphological" else _snake_brain(img, erosion, iterations)
    return np.where(brain, img, np.float32(0)).astype(np.float32)


def noise_sigma(image: np.ndarray) -> float:
    """Gaussian noise sigma of a float image (same units), from Immerkaer's 3x3
    Laplacian-difference kernel N (whose response to white noise has std 6 sigma),
    made robust to edges: sigma = 1.4826 * median(|I * N|) / 6 over interior pixels."""
    img = np.asarray(image, np.float32)
    h, w = img.shape
    if h < 3 or w < 3:
        return 0.0
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    resp = cv2.filter2D(img, cv2.CV_32F, k)[1:-1, 1:-1]
    return float(1.4826 * np.median(np.abs(resp)) / 6.0)


def _median_ksizes(strength: float) -> tuple[int, ...]:
    """Median strength -> kernel sizes applied in turn (float32 medianBlur allows only 3 and 5)."""
    if strength <= 1 / 3:
        return (3,)
    if strength <= 2 / 3:
        return (5,)
    return (5, 5)


def _denoise(img: np.ndarray, method: str, strength: float) -> np.ndarray:
    if _is_constant(img):
        _warn_constant("denoise")
        return img.copy()
    if method == "median":
        out = img
        for k in _median_ksizes(strength):
            out = cv2.medianBlur(out, k)
    elif method == "gaussian":
        out = cv2.GaussianBlur(img, (0, 0), 0.5 + 2.5 * strength)
    elif method == "bilateral":
        out = cv2.bilateralFilter(img, -1, 0.05 + 0.25 * strength, 1.0 + 3.0 * strength)
    else:  # nlmeans
        h = max(1.0, 255.0 * noise_sigma(img) * (0.8 + 1.7 * strength))
        out = cv2.fastNlMeansDenoising(_to_u8(img), None, h=h, templateWindowSize=5, searchWindowSize=11)
        out = out.astype(np.float32) / np.float32(255.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _clahe(img: np.ndarray, clip_limit: float, tile_grid: int) -> np.ndarray:
    if _is_constant(img):
        _warn_constant("clahe")
        return img.copy()
    clahe = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tile_grid), int(tile_grid)))
    return clahe.apply(_to_u8(img)).astype(np.float32) / np.float32(255.0)


def musica_levels(shape: tuple[int, int], levels: int) -> int:
    """Pyramid levels actually used: ``levels`` capped so the coarsest level keeps >= 4 px a side."""
    cap = max(1, int(np.floor(np.log2(max(min(shape), 4) / 4.0))))
    return max(1, min(int(levels), cap))


def _robust_range(a: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(a, [0.5, 99.5])
    if hi - lo < _CONST_EPS:
        lo, hi = float(a.min()), float(a.max())
    return float(lo), float(hi)


def _musica(img: np.ndarray, levels: int, power: float, amplification: float) -> np.ndarray:
    if _is_constant(img):
        _warn_constant("musica")
        return img.copy()
    n = musica_levels(img.shape, levels)
    gauss = [img.astype(np.float32)]
    for _ in range(n):
        gauss.append(cv2.pyrDown(gauss[-1]))
    details = []
    for i in range(n):
        g = gauss[i]
        up = cv2.pyrUp(gauss[i + 1], dstsize=(g.shape[1], g.shape[0]))
        d = g - up
        m = float(np.abs(d).max())
        if m > 0 and (power != 1.0 or amplification != 1.0):
            d = (np.sign(d) * m * amplification * np.power(np.abs(d) / m, power)).astype(np.float32)
        details.append(d)
    out = gauss[n]
    for i in range(n - 1, -1, -1):
        g = details[i]
        out = cv2.pyrUp(out, dstsize=(g.shape[1], g.shape[0])) + g
    # Robust rescale: the output's 0.5/99.5 percentiles go onto the input's, then clip.
    ilo, ihi = _robust_range(img)
    olo, ohi = _robust_range(out)
    if ohi - olo > _CONST_EPS:
        out = (out - olo) / (ohi - olo) * (ihi - ilo) + ilo
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _unsharp(img: np.ndarray, radius: float, amount: float) -> np.ndarray:
    if _is_constant(img):
        _warn_constant("unsharp")
        return img.copy()
    blurred = cv2.GaussianBlur(img, (0, 0), float(radius))
    return np.clip(img + np.float32(amount) * (img - blurred), 0.0, 1.0).astype(np.float32)


def _normalize(img: np.ndarray, method: str, low: float, high: float) -> np.ndarray:
    if _is_constant(img):
        _warn_constant("normalize")
        return img.copy()
    brain = img > 0
    vals = img[brain] if brain.any() else img.ravel()
    if method == "percentile":
        lo, hi = (float(v) for v in np.percentile(vals, [low, high]))
        if hi - lo < _CONST_EPS:
            lo, hi = float(img.min()), float(img.max())
        out = (np.clip(img, lo, hi) - lo) / (hi - lo)
        out = np.where(brain, out, 0.0)
    else:  # zscore
        mean, std = float(vals.mean()), float(vals.std())
        if std < _CONST_EPS:
            warnings.warn("normalize: the brain (non-zero) pixels are constant; z-score skipped, image unchanged",
                          RuntimeWarning, stacklevel=4)
            return img.copy()
        out = np.where(brain, np.clip(((img - mean) / std + 3.0) / 6.0, 0.0, 1.0), 0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """A named preprocessing step.

    ``fn(image, **params)``: image float32 ``(h, w)`` in ``[0, 1]`` (other
    inputs converted, see :func:`as_unit_float`) -> float32 ``[0, 1]``; for
    ``crop_brain`` (the only step with ``changes_geometry``) it returns
    ``(image, box)`` with box ``(y0, x0, y1, x1)`` in input pixels. ``fn``
    validates its parameters (missing ones take defaults) and raises
    ``ValueError`` with the allowed range for bad ones.
    """

    name: str
    label: str
    description: str
    params: tuple[Param, ...]
    default_enabled: bool
    changes_geometry: bool
    fn: Callable

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"step {self.name!r} has no parameter {name!r}; options: "
                       f"{', '.join(p.name for p in self.params) or '(none)'}")


def _checked(name: str, impl: Callable) -> Callable:
    def fn(image: np.ndarray, *args, **params):
        if args:  # positional parameters in declaration order, e.g. unsharp(img, 1.5, 0.8)
            names = [p.name for p in STEPS[name].params]
            if len(args) > len(names):
                raise ValueError(f"{name} takes at most {len(names)} parameters ({', '.join(names)}); got {len(args)}")
            dup = [n for n in names[:len(args)] if n in params]
            if dup:
                raise ValueError(f"{name}: parameter {dup[0]!r} given twice")
            params = {**dict(zip(names, args, strict=False)), **params}
        p = validate_params(name, params)
        return impl(as_unit_float(image), **p)

    fn.__name__ = name
    fn.__qualname__ = name
    fn.__doc__ = impl.__doc__
    return fn


def _build_registry() -> dict[str, Step]:
    specs = [
        ("crop_brain", "Crop to brain",
         "Crops to the bounding box of the head (largest bright component) plus a margin; "
         "masks and clicks are mapped back to the original slice.",
         (Param("margin", "Margin (px)", 8, 0, 64, 1, help="pixels kept around the head on each side"),),
         False, True, _crop_brain),
        ("skull_strip", "Skull stripping",
         "Sets everything outside the estimated brain (scalp, skull, background) to zero.",
         (Param("method", "Method", "morphological", choices=("morphological", "snakes"),
                help="morphological: threshold + erosion + largest inner component; "
                     "snakes: refines that mask with a morphological Chan-Vese active contour"),
          Param("erosion", "Erosion (px)", 4, 0, 20, 1,
                help="erosion radius that cuts thin bridges between brain and scalp"),
          Param("iterations", "Snake iterations", 30, 1, 200, 1, help="used by the snakes method only")),
         False, False, _skull_strip),
        ("denoise", "Denoising",
         "Smooths noise with a median, Gaussian, bilateral or non-local-means filter.",
         (Param("method", "Method", "median", choices=("median", "gaussian", "bilateral", "nlmeans")),
          Param("strength", "Strength", 0.5, 0.0, 1.0, 0.05,
                help="median: 3x3 (<=1/3), 5x5 (<=2/3), 5x5 twice; gaussian: sigma 0.5+2.5s px; "
                     "bilateral: range sigma 0.05+0.25s, space sigma 1+3s px; "
                     "nlmeans (OpenCV, 8-bit): h = (0.8+1.7s) x the estimated noise sigma")),
         False, False, _denoise),
        ("clahe", "CLAHE",
         "Contrast-limited adaptive histogram equalisation: local contrast in tiles, with a clip limit.",
         (Param("clip_limit", "Clip limit", 2.0, 0.5, 10.0, 0.1, help="higher = stronger local contrast"),
          Param("tile_grid", "Tiles per side", 8, 2, 16, 1, help="the image is split into N x N tiles")),
         False, False, _clahe),
        ("musica", "MUSICA contrast",
         "Multiscale contrast amplification: a power law on the detail layers of a Laplacian pyramid.",
         (Param("levels", "Pyramid levels", 5, 2, 8, 1,
                help="capped so the coarsest level keeps at least 4 px a side"),
          Param("power", "Power", 0.7, 0.3, 1.0, 0.05, help="< 1 boosts faint details more than strong ones"),
          Param("amplification", "Amplification", 1.0, 1.0, 3.0, 0.1,
                help="gain on every detail layer; 1 = power law only")),
         False, False, _musica),
        ("unsharp", "Sharpening",
         "Unsharp mask: adds back the difference between the image and a blurred copy.",
         (Param("radius", "Radius (px)", 1.5, 0.5, 5.0, 0.1, help="Gaussian sigma of the blur"),
          Param("amount", "Amount", 0.8, 0.0, 3.0, 0.1, help="0 = no change")),
         False, False, _unsharp),
        ("normalize", "Normalise intensities",
         "Rescales the brain (non-zero) intensities to [0, 1] by percentiles or by z-score.",
         (Param("method", "Method", "percentile", choices=("percentile", "zscore"),
                help="zscore shows (z + 3) / 6 clipped to [0, 1]; the models standardise again anyway"),
          Param("low", "Low percentile", 0.5, 0.0, 20.0, 0.5),
          Param("high", "High percentile", 99.5, 80.0, 100.0, 0.5)),
         True, False, _normalize),
    ]
    return {name: Step(name, label, desc, params, enabled, geo, _checked(name, impl))
            for name, label, desc, params, enabled, geo, impl in specs}


STEPS: dict[str, Step] = _build_registry()
"""The registry: step name -> :class:`Step`; insertion order is the pipeline order."""

# The steps as plain functions (validated, positional or keyword parameters):
# ``clahe(img, 2.0, 8)`` == ``STEPS["clahe"].fn(img, clip_limit=2.0, tile_grid=8)``.
crop_brain = STEPS["crop_brain"].fn
skull_strip = STEPS["skull_strip"].fn
denoise = STEPS["denoise"].fn
clahe = STEPS["clahe"].fn
musica = STEPS["musica"].fn
unsharp = STEPS["unsharp"].fn
normalize = STEPS["normalize"].fn


def get_step(name: str) -> Step:
    """The registered step ``name``; an unknown name raises ``KeyError`` listing the options."""
    try:
        return STEPS[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown preprocessing step {name!r}; options: {', '.join(STEPS)}") from None


def validate_params(name: str, params: Mapping | None) -> dict:
    """Check and complete the parameters of step ``name``.

    Returns a new dict with every parameter of the step (missing ones take
    their defaults), ints as int (3.0 -> 3), floats as float, bools as bool.
    Raises ``KeyError`` for an unknown step and ``ValueError`` for an unknown
    parameter name, a value outside ``[min, max]`` (message like
    ``"clahe.clip_limit must be in [0.5, 10.0], got 42"``), a non-integral
    int, or a choice not offered.
    """
    out = check_params(name, get_step(name).params, params)
    if name == "normalize" and not out["low"] < out["high"]:
        raise ValueError(f"normalize.low must be below normalize.high; got low={out['low']}, high={out['high']}")
    return out


def default_pipeline() -> list[tuple[str, dict]]:
    """The steps enabled by default, with default parameters, in registry order."""
    return [(s.name, validate_params(s.name, None)) for s in STEPS.values() if s.default_enabled]


PipelineSpec = Sequence[tuple[str, Mapping]]
"""Ordered ``(step name, params)`` pairs. Steps always run in REGISTRY order
(crop -> skull strip -> denoise -> CLAHE -> MUSICA -> sharpen -> normalise),
whatever order they are given in; a step named twice is rejected."""


def _validate_spec(steps: PipelineSpec | None) -> tuple[tuple[str, dict], ...]:
    if steps is None:
        return tuple(default_pipeline())
    if isinstance(steps, (str, bytes, Mapping)):
        raise ValueError("steps must be a sequence of (step name, params) pairs, e.g. [('clahe', {'clip_limit': 2.0})]")
    seen: dict[str, dict] = {}
    for item in steps:
        try:
            name, params = item
        except (TypeError, ValueError):
            raise ValueError(f"each pipeline entry must be a (step name, params) pair; got {item!r}") from None
        get_step(name)
        if name in seen:
            raise ValueError(f"step {name!r} appears twice in the pipeline; give each step at most once")
        seen[name] = validate_params(name, params)
    order = list(STEPS)
    return tuple((n, seen[n]) for n in sorted(seen, key=order.index))


def _key(img: np.ndarray, spec: tuple[tuple[str, dict], ...]) -> str:
    h = hashlib.sha1()
    h.update(b"bt_demo.preprocess/v1")
    h.update(json.dumps(list(img.shape)).encode())
    h.update(np.ascontiguousarray(img, dtype=np.float32).tobytes())
    h.update(json.dumps([[n, p] for n, p in spec], sort_keys=True).encode())
    return h.hexdigest()


def pipeline_key(image: np.ndarray, steps: PipelineSpec | None = None) -> str:
    """sha1 hex of the (converted float32) image bytes + shape and the validated, ordered steps.

    Equal for equal content and parameters (3 and 3.0 are equal, the order the
    steps are given in does not matter); the key :func:`run_pipeline` puts on
    its result, used by engines as a cache key.
    """
    return _key(as_unit_float(image), _validate_spec(steps))


@dataclass(frozen=True, eq=False)
class Processed:
    """The output of :func:`run_pipeline`.

    image: float32 ``(h, w)`` in ``[0, 1]``.
    geometry: original slice -> this image (``geometry.to_original`` maps points back).
    brain_mask: bool ``(h, w)``, :func:`estimate_brain_mask` of ``image``, in processed pixels.
    steps: the validated spec that ran, in run (registry) order.
    key: :func:`pipeline_key` of the input and steps.
    timings: seconds per step name (and ``"brain_mask"``).
    """

    image: np.ndarray
    geometry: Geometry
    brain_mask: np.ndarray
    steps: tuple[tuple[str, dict], ...]
    key: str
    timings: dict[str, float] = field(default_factory=dict)


def model_steps(steps: PipelineSpec | None, lab_output: bool = False) -> tuple[tuple[str, dict], ...]:
    """The steps whose output the learned engines (U-Net, click model, SAM, classifier) are given.

    By default only the geometric ones (the brain crop): each model sees the kind of slice it was trained on,
    because intensity steps move its answer (skull stripping + CLAHE took the U-Net's Dice from 0.86 to 0.56,
    ``python -m train lab-robustness``) while the lab's steps still shape the display, K-Means, the histogram
    and the classical segmenters. ``lab_output=True``: every step (the user asked the models to see the lab).
    """
    spec = _validate_spec(steps)
    return spec if lab_output else tuple((n, p) for n, p in spec if STEPS[n].changes_geometry)


def run_pipeline(image: np.ndarray, steps: PipelineSpec | None = None) -> Processed:
    """Run preprocessing steps on one slice.

    image: 2-D grey image, ideally float32 ``(H, W)`` in ``[0, 1]`` (others are
    converted, see :func:`as_unit_float`).
    steps: ``None`` -> :func:`default_pipeline`; ``[]`` -> identity. Steps run
    in registry order regardless of the order given; duplicates and unknown
    steps/params raise (``ValueError`` / ``KeyError``).
    """
    img = as_unit_float(image)
    spec = _validate_spec(steps)
    key = _key(img, spec)
    geometry = Geometry.identity(img.shape)
    timings: dict[str, float] = {}
    out = img
    for name, params in spec:
        step = STEPS[name]
        t0 = time.perf_counter()
        if step.changes_geometry:
            out, box = step.fn(out, **params)
            geometry = geometry.then_crop(box)
        else:
            out = step.fn(out, **params)
        timings[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        if _is_constant(img):  # the step that met it already warned
            warnings.simplefilter("ignore")
        mask = estimate_brain_mask(out)
    timings["brain_mask"] = time.perf_counter() - t0
    if out is img and spec == ():
        out = img.copy() if img is image else img
    return Processed(np.ascontiguousarray(out, dtype=np.float32), geometry, mask, spec, key, timings)
