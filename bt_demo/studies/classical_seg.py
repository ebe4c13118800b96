"""Classical tumour segmenters: marker-controlled watershed and two morphological snakes.

Each segmenter is registered in :data:`CLASSICAL` with its parameters declared
as :class:`bt_demo.image.params.Param`, so the UI can build its sliders from the
registry. :func:`run_classical` validates the parameters (``ValueError`` naming
the allowed range), runs the method and returns a
:class:`bt_demo.models.base.SegResult` whose mask is in ORIGINAL slice pixels.

Inputs, for every method:

* ``image``: the PROCESSED 2-D image ``(h, w)``, ideally float32 in ``[0, 1]``
  (others converted by :func:`bt_demo.image.preprocess.as_unit_float`).
* ``points``: ``(N, 2)`` as ``(x, y)`` in ORIGINAL slice pixels; ``labels``
  ``(N,)``, 1 = tumour (positive), 0 = not tumour (negative). They are mapped
  with ``geometry.to_processed``; points outside the processed image are ignored.
* ``geometry``: :class:`bt_demo.image.geometry.Geometry` from the original slice to
  ``image`` (None: identity); the mask comes back through ``map_to_original``.

Without any positive click every method starts from the brightest K-Means
cluster (:func:`bt_demo.studies.clustering.kmeans_segment` on the smoothed image inside
:func:`bt_demo.image.preprocess.estimate_brain_mask`, holes filled, largest
component): "the brightest blob" is the tumour guess, as on FLAIR.

No Gradio import here (``bt_demo`` is the core); scikit-image is imported lazily.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from bt_demo.image.geometry import Geometry
from bt_demo.image.masks import disk, largest_component  # the same morphology helpers as the lab
from bt_demo.image.params import Param, check_params
from bt_demo.models.base import SegResult

__all__ = ["Classical", "CLASSICAL", "SNAKE_SIDE", "validate_classical_params", "run_classical",
           "watershed_segment", "chan_vese_segment", "geodesic_segment"]

SNAKE_SIDE = 160  #: snakes run on a copy whose longer side is at most this many pixels


@dataclass(frozen=True)
class Classical:
    """One classical segmenter: ``fn(image, points, labels, **params) -> bool (h, w)`` in PROCESSED pixels
    (points here already in processed (x, y) pixels); :func:`run_classical` wraps it."""

    name: str
    label: str
    description: str
    params: tuple[Param, ...]
    fn: Callable


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _fill_holes(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_fill_holes

    return binary_fill_holes(mask)


def _smooth(img: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(img, (0, 0), float(sigma)) if sigma > 0 else img


def _click_disks(shape, points, labels, radius: int, want: int) -> np.ndarray:
    """bool (h, w): disks of ``radius`` px at the clicks whose label is ``want``."""
    import cv2

    m = np.zeros(shape, np.uint8)
    for (x, y), lab in zip(points, labels, strict=False):
        if int(lab) == want:
            cv2.circle(m, (int(round(x)), int(round(y))), int(radius), 1, -1)
    return m > 0


def _keep_clicked(mask: np.ndarray, points, labels) -> np.ndarray:
    """Components containing a positive click; with none inside any component, the largest one."""
    from bt_demo.models.postprocess import keep_components_touching

    if not mask.any():
        return mask
    pos = [(x, y) for (x, y), lab in zip(points, labels, strict=False) if int(lab) == 1]
    kept = keep_components_touching(mask, pos, [1] * len(pos)) if pos else mask
    h, w = mask.shape
    hit = any(0 <= int(round(y)) < h and 0 <= int(round(x)) < w and mask[int(round(y)), int(round(x))]
              for x, y in pos)
    return kept if hit else largest_component(mask)


def bright_candidate(img: np.ndarray, k: int = 3, sigma: float = 1.0) -> np.ndarray:
    """The brightest K-Means cluster of the smoothed image inside the estimated brain, holes filled,
    largest 8-connected component: bool ``(h, w)`` (empty for a constant image).

    img: float32 ``(h, w)`` in [0, 1]. k: clusters in [2, 12]. sigma: Gaussian smoothing in px (>= 0).
    """
    from bt_demo.image.preprocess import estimate_brain_mask
    from bt_demo.studies.clustering import kmeans_segment

    if float(img.max()) - float(img.min()) < 1e-6:
        return np.zeros(img.shape, bool)
    sm = _smooth(img, sigma)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        brain = estimate_brain_mask(img)
        res = kmeans_segment(sm, k=k, mask=brain)
    if res.k < 2:
        return np.zeros(img.shape, bool)
    return largest_component(_fill_holes(res.labels == res.k))


def _equiv_radius(mask: np.ndarray) -> float:
    return float(np.sqrt(mask.sum() / np.pi))


# --------------------------------------------------------------------------
# watershed
# --------------------------------------------------------------------------
def watershed_segment(img: np.ndarray, points=(), labels=(), sigma: float = 1.0, marker_radius: int = 3,
                      background_level: float = 0.5, k: int = 3) -> np.ndarray:
    """Marker-controlled watershed on the Sobel gradient of the smoothed image
    (Gaussian, ``sigma`` px per 256 px of the shorter side, at least ``sigma``).

    img: float32 ``(h, w)`` in [0, 1]; points ``(N, 2)`` (x, y) PROCESSED pixels; labels ``(N,)`` 1/0.
    Markers (label 2 = tumour, 1 = background):

    * with a positive click: disks of ``marker_radius`` px at positive clicks (2);
      disks at negative clicks, the 1-px image border, the dark background
      outside the head (:func:`bt_demo.image.preprocess.head_mask` dilated by 2 px),
      and every pixel whose smoothed intensity lies on the brain's side of
      ``level = b + background_level * (c - b)`` (1), where c is the median
      smoothed intensity under the positive disks and b the median of the
      estimated brain (for a bright tumour: every pixel darker than ``level``;
      opened by a disk of max(1, min(h, w) / 128) px to drop speckle; skipped
      when |c - b| < 0.02, no contrast);
    * without: the brightest cluster (:func:`bright_candidate`) eroded by a
      quarter of its equivalent radius (2); everything outside it dilated by
      half its equivalent radius (at least 3 px), plus the border, plus the
      background outside the head, plus negative clicks (1).

    Returns bool ``(h, w)``: the basin(s) flooded from the tumour marker, holes filled
    (a dark necrotic or cystic core stays inside the tumour), keeping the components
    that hold a positive click (else the largest).
    """
    import cv2
    from skimage.filters import sobel
    from skimage.segmentation import watershed

    from bt_demo.image.preprocess import estimate_brain_mask, head_mask

    h, w = img.shape
    if float(img.max()) - float(img.min()) < 1e-6:
        return np.zeros(img.shape, bool)
    sm = _smooth(img, sigma * max(1.0, min(h, w) / 256.0))
    grad = sobel(sm)
    markers = np.zeros((h, w), np.int32)
    border = np.zeros((h, w), bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    outside_head = ~(cv2.dilate(head_mask(img).astype(np.uint8), disk(2)) > 0)
    background = border | outside_head | _click_disks((h, w), points, labels, marker_radius, 0)
    tumour = _click_disks((h, w), points, labels, marker_radius, 1)
    if tumour.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            brain = estimate_brain_mask(img) & ~tumour
        c = float(np.median(sm[tumour]))
        b = float(np.median(sm[brain])) if brain.any() else float(np.median(sm[~tumour]))
        if abs(c - b) >= 0.02:
            level = b + background_level * (c - b)
            far = (sm < level) if c > b else (sm > level)
            # opened, so that speckle inside a textured tumour seeds no background
            r_open = max(1, int(round(min(h, w) / 128)))
            background |= cv2.morphologyEx(far.astype(np.uint8), cv2.MORPH_OPEN, disk(r_open)) > 0
    else:
        cand = bright_candidate(img, k=k, sigma=sigma)
        if not cand.any():
            return np.zeros((h, w), bool)
        r = _equiv_radius(cand)
        tumour = cv2.erode(cand.astype(np.uint8), disk(max(0, int(r / 4)))) > 0
        if not tumour.any():
            tumour = cand
        background |= ~(cv2.dilate(cand.astype(np.uint8), disk(max(3, int(r / 2)))) > 0)
    markers[background] = 1
    markers[tumour] = 2  # a click wins over the background where they overlap
    seg = _fill_holes(watershed(grad, markers) == 2)
    return _keep_clicked(seg, points, labels)


# --------------------------------------------------------------------------
# snakes
# --------------------------------------------------------------------------
def _work_scale(shape) -> float:
    return min(1.0, SNAKE_SIDE / float(max(shape)))


def _snake_init(img_s: np.ndarray, points_s, labels, radius: float, k: int) -> np.ndarray:
    """Initial level set (bool) on the working image: disks at positive clicks, else the brightest cluster."""
    init = _click_disks(img_s.shape, points_s, labels, max(1, int(round(radius))), 1)
    if init.any():
        return init
    return bright_candidate(img_s, k=k, sigma=1.0)


def _flatten_outside_brain(small: np.ndarray, init: np.ndarray) -> np.ndarray:
    """A copy of ``small`` with the pixels outside the estimated brain (dilated by 3 px, plus the
    initial contour dilated by 3 px) set to the brain's median intensity, so the dark background
    and the bright scalp neither pull a Chan–Vese contour nor stop a geodesic one."""
    import cv2

    from bt_demo.image.preprocess import estimate_brain_mask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        brain = estimate_brain_mask(small)
    keep = cv2.dilate((brain | init).astype(np.uint8), disk(3)) > 0
    if keep.all() or not brain.any():
        return small
    out = small.copy()
    out[~keep] = np.float32(np.median(small[brain]))
    return out


def _far_from_tumour(small: np.ndarray, init: np.ndarray, level: float = 0.5) -> np.ndarray | None:
    """bool: pixels whose smoothed intensity lies on the brain's side of ``b + level * (c - b)``
    (c: median under the initial contour, b: median of the rest of the estimated brain), opened
    to drop speckle; None when there is no contrast (|c - b| < 0.02). As the watershed's background."""
    import cv2

    from bt_demo.image.preprocess import estimate_brain_mask

    sm = _smooth(small, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        brain = estimate_brain_mask(small) & ~init
    if not brain.any() or not init.any():
        return None
    c, b = float(np.median(sm[init])), float(np.median(sm[brain]))
    if abs(c - b) < 0.02:
        return None
    t = b + level * (c - b)
    far = (sm < t) if c > b else (sm > t)
    r_open = max(1, int(round(min(small.shape) / 128)))
    return cv2.morphologyEx(far.astype(np.uint8), cv2.MORPH_OPEN, disk(r_open)) > 0


def _snake(img: np.ndarray, points, labels, method: str, iterations: int, smoothing: int, radius: int,
           balloon: float = 1.0, threshold: float = 0.0, k: int = 3) -> np.ndarray:
    import cv2
    from skimage.segmentation import (
        inverse_gaussian_gradient,
        morphological_chan_vese,
        morphological_geodesic_active_contour,
    )

    h, w = img.shape
    if float(img.max()) - float(img.min()) < 1e-6:
        return np.zeros((h, w), bool)
    f = _work_scale((h, w))
    sh, sw = max(4, int(round(h * f))), max(4, int(round(w * f)))
    small = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA) if f < 1 else img
    pts = [((x + 0.5) * sw / w - 0.5, (y + 0.5) * sh / h - 0.5) for x, y in points]
    init = _snake_init(small, pts, labels, radius * f, k)
    if not init.any():
        return np.zeros((h, w), bool)
    small = _flatten_outside_brain(small, init)
    if method == "chan_vese":
        seg = morphological_chan_vese(small, num_iter=iterations, init_level_set=init.astype(np.int8),
                                      smoothing=smoothing)
    else:
        gimg = inverse_gaussian_gradient(small, alpha=100.0, sigma=1.5)
        far = _far_from_tumour(small, init)
        if far is not None:
            gimg[far] = 0.0  # an edge everywhere the intensity is on the brain's side: no leak through weak edges
        thr = "auto" if threshold <= 0 else float(threshold)
        seg = morphological_geodesic_active_contour(gimg, num_iter=iterations, init_level_set=init.astype(np.int8),
                                                    smoothing=smoothing, balloon=balloon, threshold=thr)
    seg = seg.astype(bool)
    # keep the components with a positive click (else the largest), on the working grid
    seg = _keep_clicked(seg, pts, labels)
    if f < 1:
        seg = cv2.resize(seg.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
    return seg


def chan_vese_segment(img: np.ndarray, points=(), labels=(), iterations: int = 60, smoothing: int = 1,
                      radius: int = 5, k: int = 3) -> np.ndarray:
    """Morphological Chan–Vese (scikit-image ``morphological_chan_vese``, lambda1 = lambda2 = 1).

    img: float32 ``(h, w)`` in [0, 1]; points (x, y) PROCESSED pixels; labels 1/0.
    Runs on a copy whose longer side is at most :data:`SNAKE_SIDE` px, initialised with
    disks of ``radius`` px (processed pixels) at positive clicks, else the brightest
    cluster; ``iterations`` steps, ``smoothing`` smoothing passes per step. Outside the
    estimated brain the working copy is set to the brain's median (see
    :func:`_flatten_outside_brain`; a tumour cut off by that brain estimate is lost
    unless a click covers it). The result keeps the components holding a positive
    click (else the largest) and is resized back to ``(h, w)``. Returns bool ``(h, w)``.
    """
    return _snake(img, points, labels, "chan_vese", iterations, smoothing, radius, k=k)


def geodesic_segment(img: np.ndarray, points=(), labels=(), iterations: int = 120, smoothing: int = 1,
                     radius: int = 5, balloon: float = 1.0, threshold: float = 0.6, k: int = 3) -> np.ndarray:
    """Morphological geodesic active contour on ``inverse_gaussian_gradient(img, alpha=100, sigma=1.5)``.

    As :func:`chan_vese_segment` for the working copy, the initialisation and the
    clean-up. ``balloon`` > 0 inflates the contour (about one working pixel per
    step) until it meets edges, < 0 deflates it; ``threshold`` in (0, 1] is
    scikit-image's level of the inverse gradient image below which pixels count as
    edges, 0 = its "auto" (the 40th percentile; stops early on textured tumours).
    Pixels whose smoothed intensity lies on the brain's side of halfway between the
    initial region's median and the rest of the brain's count as edges too (as the
    watershed's background markers), so the balloon does not leak through the weak
    edges of a FLAIR lesion into the brain. (Measured on 45 LGG FLAIR tumour slices with
    one click, see ``tests/test_studies.py``: mean Dice 0.38 without this gate at
    threshold 0.5, 0.62 with it at the default 0.6.)
    Returns bool ``(h, w)``.
    """
    return _snake(img, points, labels, "geodesic", iterations, smoothing, radius, balloon, threshold, k)


# --------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------
_K = Param("k", "K-Means clusters (no click)", 3, 2, 8, 1,
           help="clusters of the brain's intensities; without a positive click the brightest one starts the method")

CLASSICAL: dict[str, Classical] = {
    "watershed": Classical(
        "watershed", "Watershed (marker-controlled)",
        "Floods the Sobel gradient of the smoothed image from tumour markers (positive clicks, or the core "
        "of the brightest K-Means cluster) and background markers (negative clicks, the border, the dark "
        "background); the tumour is the basin reached from the tumour markers.",
        (Param("sigma", "Smoothing sigma (px)", 1.0, 0.0, 5.0, 0.25, help="Gaussian smoothing before the gradient"),
         Param("marker_radius", "Click marker radius (px)", 3, 1, 20, 1, help="disk drawn at each click"),
         Param("background_level", "Background level (clicks)", 0.5, 0.05, 0.95, 0.05,
               help="with clicks, pixels below brain + this fraction of (clicked - brain) intensity seed the "
                    "background"),
         _K),
        watershed_segment),
    "chan_vese": Classical(
        "chan_vese", "Morphological Chan–Vese",
        "Region-based active contour: grows/shrinks from the clicks (or the brightest cluster) to the region "
        "whose mean intensity best separates it from the rest (no edges needed).",
        (Param("iterations", "Iterations", 60, 1, 500, 1),
         Param("smoothing", "Smoothing passes", 1, 0, 4, 1, help="curvature smoothing per iteration"),
         Param("radius", "Initial disk radius (px)", 5, 1, 40, 1, help="disk at each positive click"),
         _K),
        chan_vese_segment),
    "geodesic": Classical(
        "geodesic", "Morphological geodesic active contour",
        "Edge-based active contour: a balloon force inflates the contour from the clicks (or the brightest "
        "cluster) until it meets strong edges or the intensity falls to the surrounding brain's level.",
        (Param("iterations", "Iterations", 120, 1, 500, 1),
         Param("smoothing", "Smoothing passes", 1, 0, 4, 1),
         Param("radius", "Initial disk radius (px)", 5, 1, 40, 1),
         Param("balloon", "Balloon force", 1.0, -1.0, 1.0, 1.0, help="+1 inflates, -1 deflates, 0 none"),
         Param("threshold", "Edge threshold (0 = auto)", 0.6, 0.0, 1.0, 0.05,
               help="edge-stopping level of the inverse gradient image; 0 uses scikit-image's auto level"),
         _K),
        geodesic_segment),
}


def get_classical(name: str) -> Classical:
    """The registry entry ``name``; ``KeyError`` listing the options for an unknown one."""
    try:
        return CLASSICAL[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown classical segmenter {name!r}; options: {', '.join(CLASSICAL)}") from None


def validate_classical_params(name: str, params: Mapping | None) -> dict:
    """Check and complete the parameters of segmenter ``name`` (as :func:`bt_demo.image.preprocess.validate_params`).

    Missing ones take their defaults; ints as int, floats as float. ``KeyError`` for an
    unknown segmenter; ``ValueError`` for an unknown parameter or a value out of its
    range (message like ``"watershed.sigma must be in [0.0, 5.0], got 9"``).
    """
    return check_params(name, get_classical(name).params, params)


def _check_points(points, labels) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2) if len(points) else np.zeros((0, 2))
    lab = np.asarray(labels).reshape(-1) if len(labels) else np.zeros((0,), np.int64)
    if len(p) != len(lab):
        raise ValueError(f"points and labels must have the same length, got {len(p)} points and {len(lab)} labels")
    if not np.all(np.isfinite(p)):
        raise ValueError("points must be finite (x, y) pixel coordinates")
    if lab.size and not np.all(np.isin(lab, (0, 1))):
        raise ValueError(f"labels must be 1 (tumour) or 0 (not tumour), got {sorted(set(lab.tolist()))}")
    return p, lab.astype(np.int64)


def run_classical(name: str, image: np.ndarray, points=(), labels=(), geometry: Geometry | None = None,
                  **params) -> SegResult:
    """Run classical segmenter ``name`` (a key of :data:`CLASSICAL`) with validated ``params``.

    image: PROCESSED float32 ``(h, w)`` in [0, 1] (others converted).
    points: ``(N, 2)`` (x, y) in ORIGINAL slice pixels; labels ``(N,)`` 1 tumour / 0 not.
    geometry: original -> processed mapping (None: identity on ``image``'s shape);
        its ``processed_shape`` must equal ``image.shape`` (``ValueError`` otherwise).
    Returns a :class:`SegResult`: ``mask`` bool ``(H, W)`` in ORIGINAL pixels, ``engine``
    the segmenter's label, ``seconds`` the wall time, ``extra`` the parameters used,
    the method name and whether clicks or the brightest cluster started it.
    """
    from bt_demo.image.preprocess import as_unit_float

    entry = get_classical(name)
    p = validate_classical_params(name, params)
    img = as_unit_float(image)
    geometry = geometry or Geometry.identity(img.shape)
    if tuple(geometry.processed_shape) != img.shape:
        raise ValueError(f"geometry.processed_shape {tuple(geometry.processed_shape)} does not match the image "
                         f"shape {img.shape}; pass the geometry of the preprocessing that made this image")
    pts, lab = _check_points(points, labels)
    t0 = time.perf_counter()
    proc = geometry.to_processed(pts) if len(pts) else pts
    h, w = img.shape
    inside = (proc[:, 0] > -0.5) & (proc[:, 0] < w - 0.5) & (proc[:, 1] > -0.5) & (proc[:, 1] < h - 0.5) \
        if len(proc) else np.zeros(0, bool)
    proc, lab = proc[inside], lab[inside]
    seg = entry.fn(img, [tuple(q) for q in proc], lab.tolist(), **p)
    mask = geometry.map_to_original(np.asarray(seg, bool), fill=False)
    started = "clicks" if bool((lab == 1).any()) else "brightest K-Means cluster"
    return SegResult(mask, entry.label, time.perf_counter() - t0,
                     extra={"method": name, "params": p, "started_from": started})
