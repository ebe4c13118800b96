"""Test-time augmentation (TTA) uncertainty of a segmentation engine's probability map.

The engine (anything with ``probabilities(image) -> prob``, float32 ``(h, w)``
in [0, 1], and optionally a ``threshold`` attribute, e.g.
:class:`bt_demo.models.unet.UNetEngine`) is run on ``n`` transformed copies of
the image; each probability map is mapped back by the inverse transform, and
the per-pixel mean and standard deviation (population, ddof = 0) over the
copies are returned. Since every map lies in [0, 1], the std lies in [0, 0.5].

Transforms (2-D affine maps, applied with OpenCV ``warpAffine``, bilinear,
border replicated), in this order; ``n`` takes the first ``n`` (n <= 8), and
beyond 8 adds seeded random combinations (flip or not, shift in ±4 px, scale
in [0.9, 1.1]):

``identity, hflip, shift +4 px x, shift -4 px x, shift +4 px y, shift -4 px y,
scale 0.9, scale 1.1`` (scales about the image centre).

Flips and whole-pixel shifts are exactly invertible (away from the replicated
border); scales are interpolated both ways.

No Gradio import here (``bt_demo`` is the core).
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["N_RANGE", "augmentations", "summarise", "tta_uncertainty"]

N_RANGE = (2, 32)  #: allowed number of augmentations (inclusive)
_SHIFT = 4.0


def _affine(shape, flip: bool = False, dx: float = 0.0, dy: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """2x3 float64 forward map (x, y) -> (x', y') on pixel centres: flip, scale about the centre, then shift."""
    h, w = shape
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    a = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    if flip:
        a = np.array([[-1.0, 0, w - 1], [0, 1.0, 0], [0, 0, 1.0]]) @ a
    if scale != 1.0:
        a = np.array([[scale, 0, (1 - scale) * cx], [0, scale, (1 - scale) * cy], [0, 0, 1.0]]) @ a
    a = np.array([[1.0, 0, dx], [0, 1.0, dy], [0, 0, 1.0]]) @ a
    return a[:2]


def augmentations(n: int = 8, seed: int = 0) -> list[dict]:
    """The ``n`` transforms used: dicts ``{"name", "flip", "dx", "dy", "scale"}`` (shifts in px, (x, y) order)."""
    base = [dict(name="identity"), dict(name="hflip", flip=True),
            dict(name="shift +x", dx=_SHIFT), dict(name="shift -x", dx=-_SHIFT),
            dict(name="shift +y", dy=_SHIFT), dict(name="shift -y", dy=-_SHIFT),
            dict(name="scale 0.9", scale=0.9), dict(name="scale 1.1", scale=1.1)]
    out = [{"flip": False, "dx": 0.0, "dy": 0.0, "scale": 1.0} | b for b in base[:n]]
    rng = np.random.default_rng(seed)
    for i in range(max(0, n - len(base))):
        flip = bool(rng.integers(0, 2))
        dx, dy = (float(v) for v in rng.integers(-4, 5, size=2))
        s = float(np.round(rng.uniform(0.9, 1.1), 3))
        out.append({"name": f"random {i}", "flip": flip, "dx": dx, "dy": dy, "scale": s})
    return out


def _warp(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    import cv2

    h, w = img.shape
    return cv2.warpAffine(img, m.astype(np.float64), (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _check_int(name: str, v, lo: int, hi: int | None = None) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be a whole number {'in ' if hi is not None else ''}{rng}, got {v!r}")
    return int(v)


def summarise(mean_prob: np.ndarray, uncertainty: np.ndarray, threshold: float, std_threshold: float = 0.15
              ) -> tuple[int, float]:
    """(tumour_px, high_fraction) of a :func:`tta_uncertainty` result at another probability threshold.

    mean_prob, uncertainty: float ``(h, w)`` maps of the same shape; threshold in [0, 1]:
    tumour = ``mean_prob >= threshold``; std_threshold in (0, 0.5]: uncertain = ``uncertainty > std_threshold``.
    high_fraction is the uncertain share of the tumour pixels, 0.0 when there are none.
    """
    mp, un = np.asarray(mean_prob), np.asarray(uncertainty)
    if mp.shape != un.shape:
        raise ValueError(f"mean_prob {mp.shape} and uncertainty {un.shape} must have the same shape")
    tumour = mp >= float(threshold)
    n_t = int(tumour.sum())
    return n_t, (float((un[tumour] > float(std_threshold)).mean()) if n_t else 0.0)


def tta_uncertainty(unet_engine, image: np.ndarray, n: int = 8, seed: int = 0, std_threshold: float = 0.15) -> dict:
    """Per-pixel spread of the engine's probability map under test-time augmentation.

    unet_engine: object with ``probabilities(img) -> float (h, w) in [0, 1]`` and
        optionally ``threshold`` (float in [0, 1]; 0.5 when absent).
    image: PROCESSED float32 ``(h, w)`` in [0, 1] (others converted by
        :func:`bt_demo.image.preprocess.as_unit_float`).
    n: augmentations, a whole number in [2, 32] (see :func:`augmentations`).
    seed: whole number >= 0, seeds the random augmentations beyond the 8 fixed ones.
    std_threshold: in (0, 0.5]; a pixel is "uncertain" when its std exceeds it.

    Returns a dict:
        ``mean_prob`` float32 ``(h, w)`` in [0, 1]; ``uncertainty`` float32 ``(h, w)``
        in [0, 0.5] (std over the augmentations); ``threshold`` used;
        ``tumour_px`` (pixels with mean_prob >= threshold); ``high_fraction``: the
        fraction of those whose std > ``std_threshold`` (0.0 when there are none);
        ``augmentations`` (names); ``n``; ``seconds`` wall time. All in PROCESSED pixels
        (map them with ``Geometry.map_to_original(..., order=1)`` for display).
    """
    import cv2

    from bt_demo.image.preprocess import as_unit_float

    t0 = time.perf_counter()
    n = _check_int("n", n, *N_RANGE)
    seed = _check_int("seed", seed, 0)
    try:
        st = float(std_threshold)
    except (TypeError, ValueError):
        raise ValueError(f"std_threshold must be a number in (0, 0.5], got {std_threshold!r}") from None
    if not (np.isfinite(st) and 0.0 < st <= 0.5):
        raise ValueError(f"std_threshold must be a number in (0, 0.5], got {std_threshold!r}")
    if not callable(getattr(unet_engine, "probabilities", None)):
        raise ValueError("unet_engine must have a probabilities(image) method (e.g. UNetEngine.load(...))")
    thr = float(getattr(unet_engine, "threshold", 0.5))
    img = as_unit_float(image)
    h, w = img.shape
    augs = augmentations(n, seed)
    maps = np.empty((n, h, w), np.float32)
    for i, a in enumerate(augs):
        m = _affine((h, w), a["flip"], a["dx"], a["dy"], a["scale"])
        fwd = img if a["name"] == "identity" else _warp(img, m)
        prob = np.asarray(unet_engine.probabilities(fwd), np.float32)
        if prob.shape != (h, w):
            raise ValueError(f"the engine returned a map of shape {prob.shape} for an image of shape {(h, w)}")
        maps[i] = prob if a["name"] == "identity" else _warp(prob, cv2.invertAffineTransform(m))
    np.clip(maps, 0.0, 1.0, out=maps)
    mean = maps.mean(axis=0).astype(np.float32)
    std = np.clip(maps.std(axis=0), 0.0, 0.5).astype(np.float32)
    n_t, high = summarise(mean, std, thr, st)
    return {"mean_prob": mean, "uncertainty": std, "threshold": thr, "std_threshold": st, "tumour_px": n_t,
            "high_fraction": high, "augmentations": [a["name"] for a in augs], "n": n,
            "seconds": time.perf_counter() - t0}
