"""Segment a Volume: the U-Net over every slice (batched), 3-D post-processing, the numbers a radiologist
reads (mL, extent, largest slice, RANO diameters there), and propagation of one slice's mask through the
series with a promptable engine (the click model, MedSAM with a box, MedSAM clicks).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bt_demo.volume.series import Volume

# 3-D post-processing: drop connected components (26-connected) smaller than this share of the largest one.
# Chosen on the U-Net card's validation patients (bench/bench_volume.py --choose-rule); see docs/studies.md.
MIN_COMPONENT_SHARE = 0.1


@dataclass(frozen=True)
class VolumeResult:
    """mask: bool (Z, H, W); prob: float32 (Z, H, W) or None; engine; seconds; settings (JSON-safe)."""

    mask: np.ndarray
    prob: np.ndarray | None
    engine: str
    seconds: float
    settings: dict = field(default_factory=dict)


def volume_range(vol: Volume, window: tuple[float, float] | None = None) -> tuple[float, float] | None:
    """(lo, hi) of the one window used for every slice: ``window`` or the volume's own, else the 0.5-99.5th
    percentiles of a sample (as a slice's default window is chosen); None for a constant volume."""
    window = window or vol.window
    if window is not None:
        c, w = window
        return c - w / 2, c + w / 2
    d = vol.data
    lo, hi = (float(v) for v in np.percentile(d[:, ::4, ::4].ravel(), [0.5, 99.5]))
    if not hi > lo:
        lo, hi = float(d.min()), float(d.max())
    return (lo, hi) if hi > lo else None


def unit_volume(vol: Volume, window: tuple[float, float] | None = None, slices=slice(None)) -> np.ndarray:
    """float32 (Z, H, W) in [0, 1] (or just ``slices`` of it) under :func:`volume_range`, so every slice is
    seen at the same contrast."""
    d = vol.data[slices]
    r = volume_range(vol, window)
    if r is None:
        return np.zeros_like(d, dtype=np.float32)
    lo, hi = r
    return np.clip((d - lo) / (hi - lo), 0, 1).astype(np.float32)


def unet_probabilities(unet, unit: np.ndarray, batch: int = 8,
                       progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """float32 (Z, H, W): the U-Net's tumour probability of every slice (same letterbox as the app)."""
    import torch

    from bt_demo.models.input_prep import prepare_batch
    from bt_demo.models.sizing import Letterbox

    model = unet.model
    lb = Letterbox.fit(unit.shape[1:], model.input_size)
    p = next(model.parameters())
    out = np.empty(unit.shape, np.float32)
    n = len(unit)
    for i in range(0, n, batch):
        xs = prepare_batch(np.stack([lb.image(s) for s in unit[i:i + batch]]), model.input_prep)
        with torch.inference_mode():
            pr = torch.sigmoid(model(torch.from_numpy(xs)[:, None].to(p.device, p.dtype))).float().cpu().numpy()[:, 0]
        for j, prob in enumerate(pr):
            out[i + j] = np.clip(lb.unmap(prob, order=1), 0, 1)
        if progress is not None:
            progress(min(n, i + batch), n)
    return out


def postprocess_3d(mask: np.ndarray, min_share: float = MIN_COMPONENT_SHARE) -> np.ndarray:
    """Keep the 26-connected components of ``mask`` whose voxel count is at least ``min_share`` of the
    largest's (0 keeps everything)."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    if not mask.any() or min_share <= 0:
        return mask.copy()
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(lab.ravel())[1:]
    keep = np.flatnonzero(sizes >= min_share * sizes.max()) + 1
    return np.isin(lab, keep)


def segment_volume(vol: Volume, unet, *, threshold: float | None = None, min_share: float = MIN_COMPONENT_SHARE,
                   batch: int = 8, progress: Callable[[int, int], None] | None = None,
                   window: tuple[float, float] | None = None) -> VolumeResult:
    """The U-Net on every slice, thresholded and cleaned per slice exactly as the single-slice engine does
    (its ``min_component_px``), then :func:`postprocess_3d`."""
    from bt_demo.models.postprocess import binarize

    t0 = time.perf_counter()
    prob = unet_probabilities(unet, unit_volume(vol, window), batch=batch, progress=progress)
    thr = float(unet.threshold if threshold is None else threshold)
    scale = max(prob.shape[1:]) / unet.model.input_size
    min_px = int(round(unet.model.min_component_px * scale * scale))
    mask = postprocess_3d(np.stack([binarize(p, thr, min_px) for p in prob]), min_share)
    return VolumeResult(mask, prob, "U-Net", time.perf_counter() - t0,
                        {"threshold": thr, "min_component_px_2d": min_px, "min_component_share_3d": min_share,
                         "batch": batch,
                         "card": getattr(unet, "card_line", "")})


def volume_numbers(vol: Volume, mask: np.ndarray) -> dict:
    """Tumour volume (mL when the spacing is known, voxels always), per-slice areas, largest slice, extent in
    slices and mm, and the RANO diameters on the largest slice. JSON-safe."""
    from bt_demo.studies.measure import measure

    mask = np.asarray(mask, bool)
    areas = mask.reshape(len(mask), -1).sum(1)
    n = int(areas.sum())
    out: dict = {"voxels": n, "slices": int(len(mask)), "areas_px": [int(a) for a in areas],
                 "spacing_mm": None if vol.spacing is None else [round(float(v), 4) for v in vol.spacing]}
    out["volume_ml"] = None if vol.voxel_ml is None else round(n * vol.voxel_ml, 3)
    if n == 0:
        out.update(largest_slice=None, extent_slices=None, extent_mm=None, rano=None)
        return out
    zs = np.flatnonzero(areas)
    k = int(np.argmax(areas))
    out["largest_slice"] = k
    out["extent_slices"] = [int(zs[0]), int(zs[-1])]
    out["extent_mm"] = None if vol.spacing is None else round(float((zs[-1] - zs[0] + 1) * vol.spacing[0]), 2)
    m = measure(mask[k], None if vol.spacing is None else (vol.spacing[1], vol.spacing[2]))
    out["rano"] = {"slice": k, "unit": m.get("unit"), "long_diameter": m.get("long_diameter"),
                   "short_diameter": m.get("short_diameter"), "product": m.get("rano_product")}
    return out


# Propagation is kept inside the U-Net's "maybe tumour" region: probability >= GATE_LEVEL, grown by GATE_GROW
# px. Chosen on the U-Net card's validation patients (one simulated click on the middle tumour slice;
# `python -m bench.bench_volume --part lgg` lists every level): without a gate the click model runs on past
# the tumour's end.
GATE_LEVEL = 0.2
GATE_GROW = 3


def propagation_gate(prob: np.ndarray, level: float = GATE_LEVEL, grow: int = GATE_GROW) -> np.ndarray:
    """bool (Z, H, W): where the U-Net's probability reaches ``level``, grown by ``grow`` px in each slice."""
    from scipy import ndimage

    g = np.asarray(prob) >= level
    if grow > 0:
        st = np.zeros((3, 3, 3), bool)
        st[1] = ndimage.generate_binary_structure(2, 1)
        g = ndimage.binary_dilation(g, structure=st, iterations=int(grow))
    return g


def _grown_box(mask: np.ndarray, margin: int) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of ``mask``'s extent grown by ``margin`` px, clipped to the slice."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (float(max(0, xs.min() - margin)), float(max(0, ys.min() - margin)),
            float(min(w - 1, xs.max() + margin)), float(min(h - 1, ys.max() + margin)))


# MedSAM's prompt on the next slice: the neighbour's mask box grown by this many px (the tumour's outline moves
# between slices; LiteMedSAM was trained on boxes a few px larger than the object)
BOX_MARGIN = 5


def propagate(vol: Volume, clicks_engine, start: int, start_mask: np.ndarray, *, min_area_px: int = 10,
              max_slices: int | None = None, window: tuple[float, float] | None = None,
              gate: np.ndarray | None = None, prompt: str = "click", box_margin: int = BOX_MARGIN,
              progress: Callable[[int, int], None] | None = None) -> VolumeResult:
    """Carry ``start_mask`` (slice ``start``) up and down the series with a promptable engine.

    On each next slice the engine gets the neighbouring slice's answer as its previous-mask input and
    ``prompt``: "click" (the click model's rule) one positive click at that mask's innermost point; "box"
    (MedSAM as published) the mask's box grown by ``box_margin`` px; "box+click" (MedSAM clicks) both. An
    engine that feeds its previous answer's logits back (``carries_previous``: the fine-tuned MedSAM decoder)
    gets the neighbour's logits as the mask prompt. The answer is kept inside ``gate`` (see
    :func:`propagation_gate`; None: no gate). It stops in each direction when the mask falls under
    ``min_area_px`` (the tumour has ended) or after ``max_slices``.
    """
    from scipy import ndimage

    from bt_demo.models.base import SegResult

    if prompt not in ("click", "box", "box+click"):
        raise ValueError(f"prompt must be 'click', 'box' or 'box+click', not {prompt!r}")
    t0 = time.perf_counter()
    unit = unit_volume(vol, window)
    out = np.zeros(vol.shape, bool)
    start_mask = np.asarray(start_mask, bool)
    out[start] = start_mask
    Z = vol.shape[0]
    limit = Z if max_slices is None else int(max_slices)
    carries = bool(getattr(clicks_engine, "carries_previous", False))
    done = 0
    for step in (1, -1):
        prev = start_mask
        prev_res = SegResult(prev, "propagated", 0.0)
        k = start + step
        while 0 <= k < Z and abs(k - start) <= limit and prev.sum() >= min_area_px:
            if carries:
                clicks_engine.set_image(unit[k], keep_previous=True)
            else:
                clicks_engine.set_image(unit[k])
            pts, labs, box = [], [], None
            if prompt in ("click", "box+click"):
                d = ndimage.distance_transform_edt(prev)
                y, x = np.unravel_index(int(np.argmax(d)), d.shape)
                pts, labs = [(float(x), float(y))], [1]
            if prompt in ("box", "box+click"):
                box = _grown_box(prev, box_margin)
            res = clicks_engine.predict(pts, labs, box=box, previous=prev_res)
            cur = np.asarray(res.mask, bool)
            if gate is not None:
                cur = cur & gate[k]
            if cur.sum() < min_area_px:
                break
            out[k] = cur
            prev, prev_res = cur, res
            k += step
            done += 1
            if progress is not None:
                progress(done, Z)
    rule = {"click": "one click at its innermost point", "box": f"its box grown by {box_margin} px",
            "box+click": f"its box grown by {box_margin} px and one click at its innermost point"}[prompt]
    name = getattr(clicks_engine, "name", "click model")
    return VolumeResult(out, None, f"{name} (propagated)", time.perf_counter() - t0,
                        {"start_slice": int(start), "min_area_px": int(min_area_px), "prompt": prompt,
                         "rule": f"previous slice's mask as the previous-mask input + {rule}",
                         "gate": None if gate is None else f"U-Net probability >= {GATE_LEVEL}, grown {GATE_GROW} px"})
