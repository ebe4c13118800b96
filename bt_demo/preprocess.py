"""The preprocessing lab: named steps in one registry, a pipeline, and its geometry.

Every step is a pure function ``fn(image, **params) -> image`` on float32
(h, w) images in [0, 1] (inputs outside that range or of another dtype are
converted: clipped to [0, 1] as float32). Parameters are declared (name,
default, range) so the UI builds its controls from ``STEPS`` and
``validate_params`` rejects bad values with the allowed range. Only
``crop_brain`` changes geometry; ``run_pipeline`` returns the processed image
and the ``Geometry`` that maps points and masks back to the original slice.

Steps always run in registry order (crop, skull strip, denoise, CLAHE,
MUSICA, sharpen, normalise), whatever order the caller lists them in.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from bt_demo.geometry import Geometry


@dataclass(frozen=True)
class Param:
    name: str
    label: str
    default: float | int | str | bool
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None
    help: str = ""

    @property
    def kind(self) -> str:
        if self.choices is not None:
            return "choice"
        if isinstance(self.default, bool):
            return "bool"
        if isinstance(self.default, int):
            return "int"
        return "float"


@dataclass(frozen=True)
class Step:
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
        raise KeyError(f"step {self.name!r} has no parameter {name!r}; it has {[p.name for p in self.params]}")


# -- helpers ----------------------------------------------------------------

def as_unit(image) -> np.ndarray:
    """float32 (h, w) in [0, 1]: NaN -> 0, values clipped."""
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D image (h, w), got shape {a.shape}")
    a = np.nan_to_num(a.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(a, 0.0, 1.0)


def _is_constant(img: np.ndarray) -> bool:
    return float(img.max() - img.min()) < 1e-6


def _warn_constant(step: str) -> None:
    warnings.warn(f"{step}: the image is constant; returned unchanged", RuntimeWarning, stacklevel=3)


def _to_u16(img: np.ndarray) -> np.ndarray:
    return np.round(img * 65535.0).astype(np.uint16)


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.round(img * 255.0).astype(np.uint8)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    import cv2

    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask.astype(bool)
    return lab == (1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_fill_holes(mask)


def head_mask(image: np.ndarray) -> np.ndarray:
    """bool (h, w): the head (everything brighter than the background), largest component, holes filled."""
    import cv2

    img = as_unit(image)
    if _is_constant(img):
        return np.ones(img.shape, bool)
    u8 = _to_u8(cv2.GaussianBlur(img, (0, 0), 1.0) / max(float(img.max()), 1e-6))
    # background is dark and large: a low threshold (half of Otsu) keeps the dim scalp
    t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    m = u8 > max(1, t * 0.5)
    if not m.any():
        return np.ones(img.shape, bool)
    return _fill_holes(_largest_component(m))


def estimate_brain_mask(image: np.ndarray) -> np.ndarray:
    """bool (h, w): a brain estimate for clustering and measurements.

    The head (Otsu threshold on a smoothed image, halved so dim tissue stays;
    largest component; holes filled) eroded by 7 % of its equivalent diameter,
    which peels off scalp and skull, whose fat is bright on FLAIR. Never empty
    for an image with content (falls back to the head, then the non-zero
    region, then the whole image). A constant image gives all True and a warning.
    """
    import cv2

    img = as_unit(image)
    if _is_constant(img):
        warnings.warn("estimate_brain_mask: the image is constant; using the whole image", RuntimeWarning, stacklevel=2)
        return np.ones(img.shape, bool)
    head = head_mask(img)
    r = int(round(0.07 * np.sqrt(head.sum())))
    m = head
    if r >= 1:
        kern = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        m = cv2.erode(head.astype(np.uint8), kern) > 0
        if m.sum() >= 16:
            m = _largest_component(m)
    if m.sum() < 16:
        m = head
    if m.sum() < 16:
        nz = img > 0
        return nz if nz.sum() >= 16 else np.ones(img.shape, bool)
    return m


# -- steps ------------------------------------------------------------------

def crop_brain(image: np.ndarray, margin: int = 8) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Crop to the head's bounding box plus ``margin`` px. Returns (image, (y0, x0, y1, x1))."""
    img = as_unit(image)
    h, w = img.shape
    if _is_constant(img):
        _warn_constant("crop_brain")
        return img.copy(), (0, 0, h, w)
    m = head_mask(img)
    ys, xs = np.nonzero(m)
    if len(ys) == 0:
        return img.copy(), (0, 0, h, w)
    y0, y1 = max(0, ys.min() - margin), min(h, ys.max() + 1 + margin)
    x0, x1 = max(0, xs.min() - margin), min(w, xs.max() + 1 + margin)
    if y1 - y0 < 8 or x1 - x0 < 8:  # degenerate: keep the full image
        return img.copy(), (0, 0, h, w)
    return img[y0:y1, x0:x1].copy(), (int(y0), int(x0), int(y1), int(x1))


def skull_strip(image: np.ndarray, method: str = "morphological", erosion: int = 4, iterations: int = 30) -> np.ndarray:
    """Zero everything outside the brain.

    morphological: head mask, eroded by ``erosion`` px to peel the scalp and
    skull, opened, largest component, holes filled. snakes: scikit-image's
    morphological Chan-Vese started from that mask (on a grid of at most 128
    px for speed), ``iterations`` steps.
    """
    import cv2

    img = as_unit(image)
    if _is_constant(img):
        _warn_constant("skull_strip")
        return img.copy()
    m = head_mask(img)
    r = max(1, int(erosion))
    kern = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    core = cv2.erode(m.astype(np.uint8), kern)
    core = cv2.morphologyEx(core, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))) > 0
    if core.sum() < 16:
        core = m
    core = _fill_holes(_largest_component(core))
    if method == "snakes":
        from skimage.segmentation import morphological_chan_vese

        s = min(1.0, 128 / max(img.shape))
        small = cv2.resize(img, (max(8, round(img.shape[1] * s)), max(8, round(img.shape[0] * s))),
                           interpolation=cv2.INTER_AREA)
        init = cv2.resize(core.astype(np.uint8), small.shape[::-1], interpolation=cv2.INTER_NEAREST)
        ls = morphological_chan_vese(small, num_iter=int(iterations), init_level_set=init, smoothing=2)
        ls = cv2.resize(ls.astype(np.uint8), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
        ls &= m
        if ls.sum() >= 16:
            core = _fill_holes(_largest_component(ls))
    return np.where(core, img, 0.0).astype(np.float32)


def denoise(image: np.ndarray, method: str = "median", strength: float = 1.0) -> np.ndarray:
    """median: kernel 2*round(strength)+1 px; gaussian: sigma = strength px;
    bilateral: sigma_space = 3*strength px, sigma_colour = 0.05*strength;
    nlmeans: OpenCV fastNlMeans with h = 6*strength grey levels (of 255)."""
    import cv2

    img = as_unit(image)
    if _is_constant(img):
        _warn_constant("denoise")
        return img.copy()
    s = float(strength)
    if method == "median":
        k = 2 * max(1, int(round(s))) + 1
        out = cv2.medianBlur(_to_u16(img), 5 if k > 5 else k) if k <= 5 else cv2.medianBlur(_to_u8(img), k)
        return (out.astype(np.float32) / (65535.0 if out.dtype == np.uint16 else 255.0))
    if method == "gaussian":
        return np.clip(cv2.GaussianBlur(img, (0, 0), s), 0, 1).astype(np.float32)
    if method == "bilateral":
        return np.clip(cv2.bilateralFilter(img, d=0, sigmaColor=0.05 * s, sigmaSpace=3 * s), 0, 1).astype(np.float32)
    if method == "nlmeans":
        out = cv2.fastNlMeansDenoising(_to_u8(img), None, h=6 * s, templateWindowSize=7, searchWindowSize=21)
        return out.astype(np.float32) / 255.0
    raise ValueError(f"unknown denoise method {method!r}; choose one of median, gaussian, bilateral, nlmeans")


def clahe(image: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """OpenCV CLAHE on a 16-bit copy (keeps precision)."""
    import cv2

    img = as_unit(image)
    if _is_constant(img):
        _warn_constant("clahe")
        return img.copy()
    c = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tile_grid), int(tile_grid)))
    return c.apply(_to_u16(img)).astype(np.float32) / 65535.0


def _laplacian_pyramid(img: np.ndarray, levels: int) -> list[np.ndarray]:
    import cv2

    pyr, cur = [], img
    for _ in range(levels):
        down = cv2.pyrDown(cur)
        up = cv2.pyrUp(down, dstsize=(cur.shape[1], cur.shape[0]))
        pyr.append(cur - up)
        cur = down
    pyr.append(cur)
    return pyr


def _reconstruct(pyr: list[np.ndarray]) -> np.ndarray:
    import cv2

    cur = pyr[-1]
    for d in reversed(pyr[:-1]):
        cur = cv2.pyrUp(cur, dstsize=(d.shape[1], d.shape[0])) + d
    return cur


def max_levels(shape: tuple[int, int]) -> int:
    """Pyramid depth the image allows (the coarsest level keeps >= 8 px)."""
    return int(max(1, np.floor(np.log2(max(8, min(shape)) / 8))))


def musica(image: np.ndarray, levels: int = 5, power: float = 0.7, amplification: float = 1.0) -> np.ndarray:
    """MUSICA multiscale contrast amplification (Vuylsteke & Schoeters).

    Laplacian pyramid; each detail coefficient d of a level with maximum |d| = M
    becomes a * M * sign(d) * (|d| / M) ** power (``amplification`` a, the same
    on every detail level); reconstruct; rescale to [0, 1] between the 0.1 and
    99.9 percentiles. power = 1 and a = 1 reconstruct the input exactly (no rescale).
    """
    img = as_unit(image)
    if _is_constant(img):
        _warn_constant("musica")
        return img.copy()
    lv = int(min(levels, max_levels(img.shape)))
    pyr = _laplacian_pyramid(img, lv)
    if power == 1.0 and amplification == 1.0:
        return np.clip(_reconstruct(pyr), 0, 1).astype(np.float32)
    out = []
    for d in pyr[:-1]:
        m = float(np.abs(d).max())
        out.append(d if m < 1e-8 else (amplification * m * np.sign(d) * (np.abs(d) / m) ** power).astype(np.float32))
    rec = _reconstruct(out + [pyr[-1]])
    lo, hi = np.percentile(rec, [0.1, 99.9])
    if hi - lo < 1e-6:
        return np.clip(rec, 0, 1).astype(np.float32)
    return np.clip((rec - lo) / (hi - lo), 0, 1).astype(np.float32)


def unsharp(image: np.ndarray, radius: float = 1.5, amount: float = 0.8) -> np.ndarray:
    """image + amount * (image - gaussian(image, radius)), clipped to [0, 1]."""
    import cv2

    img = as_unit(image)
    blur = cv2.GaussianBlur(img, (0, 0), float(radius))
    return np.clip(img + float(amount) * (img - blur), 0, 1).astype(np.float32)


def normalize(image: np.ndarray, method: str = "percentile", low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """percentile: clip to the low/high percentiles of the non-zero (brain/head)
    pixels and rescale to [0, 1]. zscore: z-score over those pixels, shown as
    (z + 3) / 6 clipped to [0, 1] (the display stays in [0, 1]; models
    standardise again anyway)."""
    img = as_unit(image)
    if _is_constant(img):
        _warn_constant("normalize")
        return img.copy()
    fg = img[img > 0]
    if fg.size < 16:
        fg = img.ravel()
    if method == "percentile":
        if not 0 <= low < high <= 100:
            raise ValueError(f"normalize.low must be < normalize.high, got {low} and {high}")
        lo, hi = np.percentile(fg, [low, high])
        if hi - lo < 1e-6:
            lo, hi = float(img.min()), float(img.max())
        out = (img - lo) / (hi - lo)
        out[img == 0] = 0.0  # keep the background (and a stripped skull) black
        return np.clip(out, 0, 1).astype(np.float32)
    if method == "zscore":
        mu, sd = float(fg.mean()), float(fg.std())
        out = ((img - mu) / max(sd, 1e-6) + 3.0) / 6.0
        out[img == 0] = 0.0
        return np.clip(out, 0, 1).astype(np.float32)
    raise ValueError(f"unknown normalize method {method!r}; choose percentile or zscore")


STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        Step("crop_brain", "Crop to brain", "Crop to the head's bounding box (with a margin); masks map back to the slice.",
             (Param("margin", "margin (px)", 8, 0, 64, 1),), False, True, crop_brain),
        Step("skull_strip", "Skull stripping", "Remove scalp and skull: threshold + largest component + erosion, or a morphological snake.",
             (Param("method", "method", "morphological", choices=("morphological", "snakes")),
              Param("erosion", "erosion (px)", 4, 0, 20, 1, help="how much to peel off the head outline"),
              Param("iterations", "snake iterations", 30, 5, 200, 5)), False, False, skull_strip),
        Step("denoise", "Denoising", "Median, Gaussian, bilateral or non-local-means smoothing.",
             (Param("method", "method", "median", choices=("median", "gaussian", "bilateral", "nlmeans")),
              Param("strength", "strength", 1.0, 0.5, 5.0, 0.5)), False, False, denoise),
        Step("clahe", "CLAHE", "Contrast-limited adaptive histogram equalisation.",
             (Param("clip_limit", "clip limit", 2.0, 0.5, 10.0, 0.5), Param("tile_grid", "tile grid", 8, 2, 16, 1)),
             False, False, clahe),
        Step("musica", "MUSICA contrast", "Multiscale contrast amplification on a Laplacian pyramid.",
             (Param("levels", "levels", 5, 2, 8, 1), Param("power", "power", 0.7, 0.3, 1.0, 0.05),
              Param("amplification", "amplification", 1.0, 1.0, 3.0, 0.1)), False, False, musica),
        Step("unsharp", "Sharpening", "Unsharp mask.",
             (Param("radius", "radius (px)", 1.5, 0.5, 5.0, 0.1), Param("amount", "amount", 0.8, 0.0, 3.0, 0.1)),
             False, False, unsharp),
        Step("normalize", "Intensity normalisation", "Percentile clip and rescale, or z-score.",
             (Param("method", "method", "percentile", choices=("percentile", "zscore")),
              Param("low", "low percentile", 0.5, 0.0, 20.0, 0.5), Param("high", "high percentile", 99.5, 80.0, 100.0, 0.1)),
             True, False, normalize),
    )
}


def get_step(name: str) -> Step:
    try:
        return STEPS[name]
    except KeyError:
        raise KeyError(f"unknown preprocessing step {name!r}; choose one of {list(STEPS)}") from None


def validate_params(name: str, params: Mapping | None) -> dict:
    """Defaults filled in, types coerced, ranges checked (ValueError naming the allowed range)."""
    step = get_step(name)
    params = dict(params or {})
    known = {p.name for p in step.params}
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"{name} has no parameter(s) {sorted(unknown)}; it has {sorted(known)}")
    out = {}
    for p in step.params:
        v = params.get(p.name, p.default)
        if p.kind == "choice":
            if v not in p.choices:
                raise ValueError(f"{name}.{p.name} must be one of {list(p.choices)}, got {v!r}")
        elif p.kind == "bool":
            v = bool(v)
        else:
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"{name}.{p.name} must be a number, got {v!r}") from None
            if not np.isfinite(v) or (p.min is not None and v < p.min) or (p.max is not None and v > p.max):
                raise ValueError(f"{name}.{p.name} must be in [{p.min}, {p.max}], got {v}")
            v = int(round(v)) if p.kind == "int" else v
        out[p.name] = v
    return out


PipelineSpec = Sequence[tuple[str, Mapping]]


def default_pipeline() -> list[tuple[str, dict]]:
    return [(s.name, validate_params(s.name, {})) for s in STEPS.values() if s.default_enabled]


def _validated(steps: PipelineSpec | None) -> tuple[tuple[str, dict], ...]:
    if steps is None:
        return tuple(default_pipeline())
    seen, out = set(), {}
    for name, params in steps:
        get_step(name)
        if name in seen:
            raise ValueError(f"step {name!r} is listed twice")
        seen.add(name)
        out[name] = validate_params(name, params)
    return tuple((n, out[n]) for n in STEPS if n in out)


def pipeline_key(image, steps: PipelineSpec | None) -> str:
    """sha1 of the image bytes + shape and the validated steps: the key engines cache by."""
    img = np.ascontiguousarray(np.asarray(image, np.float32))
    h = hashlib.sha1(img.tobytes())
    h.update(repr(img.shape).encode())
    h.update(json.dumps(_validated(steps), sort_keys=True).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Processed:
    image: np.ndarray                 # float32 (h, w) in [0, 1]
    geometry: Geometry                # original slice -> this image
    brain_mask: np.ndarray            # bool (h, w) in processed pixels
    steps: tuple[tuple[str, dict], ...]
    key: str
    timings: dict = field(default_factory=dict)


def run_pipeline(image: np.ndarray, steps: PipelineSpec | None = None) -> Processed:
    """Run the enabled steps in registry order. image: float32 (H, W) in [0, 1] (the slice's unit image).

    None -> default_pipeline(); [] -> identity. Returns the processed image, the
    geometry, a brain mask (processed pixels), the validated spec, the cache key
    and seconds per step.
    """
    img = as_unit(image)
    spec = _validated(steps)
    geom = Geometry.identity(img.shape)
    timings = {}
    cur = img
    for name, params in spec:
        t0 = time.perf_counter()
        step = STEPS[name]
        if step.changes_geometry:
            cur, box = step.fn(cur, **params)
            if box != (0, 0, *geom.processed_shape):
                geom = geom.then_crop(box)
        else:
            cur = step.fn(cur, **params)
        cur = as_unit(cur)
        timings[name] = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        brain = estimate_brain_mask(cur)
    return Processed(cur, geom, brain, spec, pipeline_key(img, spec), timings)
