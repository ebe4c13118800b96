"""Measurements of a segmentation mask: area, box, centroid, contour and RANO diameters.

Conventions:

* ``mask``: bool-like ``(H, W)`` in ORIGINAL slice pixels (``> 0`` = tumour, NaN is not;
  :func:`bt_demo.image.masks.as_mask`).
* Points are ``(x, y)`` = (column, row) in pixels, pixel centres at integers.
* ``spacing``: ``(row_mm, col_mm)`` = mm per pixel along y and along x (the
  DICOM PixelSpacing order), or None. With spacing every length is in mm and
  areas in mm² (anisotropic pixels handled: distances are computed after
  scaling x by ``col_mm`` and y by ``row_mm``); without it in px.
* Diameters are measured between PIXEL CENTRES: a one-pixel mask has
  diameters 0, a horizontal run of n pixels has a long diameter of n - 1 px.
  (For a digitised disk of radius r this gives 2r, the true diameter.)

The RANO bidimensional measurement: the longest in-plane diameter (the largest
distance between two mask pixels, found on the convex hull of the pixel
centres in mm space), and the longest chord of the mask perpendicular to it
(lines perpendicular to the long axis are sampled every half pixel along it;
on each, the longest contiguous run inside the mask is measured, less one
pixel's extent so that it is centre-to-centre like the long diameter), and
their product.

No Gradio import here (``bt_demo`` is the core).
"""

from __future__ import annotations

import numpy as np

from bt_demo.errors import InputError
from bt_demo.image.masks import as_mask, check_spacing
from bt_demo.render import COLORS

__all__ = ["SIDE_CAVEAT", "measure", "draw_measurement"]

SIDE_CAVEAT = ("image left/right; in radiological convention image left is the patient's right — "
               "check the orientation of your viewer")


def _longest_diameter(xs: np.ndarray, ys: np.ndarray, sx: float, sy: float):
    """((x0, y0), (x1, y1), length in scaled units) between mask pixel centres (brute force on the hull)."""
    import cv2

    pts = np.stack([xs * sx, ys * sy], axis=1).astype(np.float32)
    if len(pts) > 2:
        hull = cv2.convexHull(pts).reshape(-1, 2).astype(np.float64)
    else:
        hull = pts.astype(np.float64)
    if len(hull) == 1:
        p = hull[0]
        return (p, p, 0.0)
    d2 = ((hull[:, None, :] - hull[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    return hull[i], hull[j], float(np.sqrt(d2[i, j]))


def _perpendicular_chord(mask: np.ndarray, p0: np.ndarray, p1: np.ndarray, sx: float, sy: float):
    """Longest chord of ``mask`` perpendicular to p0->p1 (both in scaled units).

    Returns ((x0, y0), (x1, y1)) in scaled units and the length, or None when
    no chord is found (a single pixel)."""
    h, w = mask.shape
    axis = p1 - p0
    length = float(np.hypot(*axis))
    if length <= 0:
        return None
    u = axis / length
    v = np.array([-u[1], u[0]])
    step = 0.5 * min(sx, sy)
    # positions along the long axis, and offsets across it covering only the mask's own extent across the
    # axis (the whole image's diagonal made an elongated mask cost length x diagonal samples)
    ts = np.arange(0.0, length + step / 2, step)
    ys, xs = np.nonzero(mask)
    across = (xs * sx - p0[0]) * v[0] + (ys * sy - p0[1]) * v[1]
    margin = float(np.hypot(sx, sy))
    ss = np.arange(float(across.min()) - margin, float(across.max()) + margin + step / 2, step)
    best = (0.0, None)
    chunk = max(1, 2_000_000 // max(1, len(ss)))
    for k in range(0, len(ts), chunk):
        t = ts[k:k + chunk]
        px = p0[0] + t[:, None] * u[0] + ss[None, :] * v[0]
        py = p0[1] + t[:, None] * u[1] + ss[None, :] * v[1]
        xi, yi = np.rint(px / sx).astype(np.int64), np.rint(py / sy).astype(np.int64)
        ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        inside = np.zeros(xi.shape, bool)
        inside[ok] = mask[yi[ok], xi[ok]]
        # length of the run of True ending at each sample (cumulative sum, reset at every False)
        cs = np.cumsum(inside, axis=1, dtype=np.int64)
        runs = cs - np.maximum.accumulate(np.where(inside, 0, cs), axis=1)
        ends = runs.argmax(axis=1)
        lens = runs[np.arange(len(t)), ends]
        r = int(np.argmax(lens))
        if lens[r] == 0:
            continue
        run = float(lens[r] - 1) * step
        if run > best[0] or best[1] is None:
            best = (run, (k + r, int(ends[r] - lens[r] + 1), int(ends[r])))
    if best[1] is None:
        return None
    ti, a, b = best[1]
    # sampled runs reach the pixels' edges: trim half a pixel's extent along v at each end
    extent = abs(v[0]) * sx + abs(v[1]) * sy
    sa, sb = ss[a] + extent / 2, ss[b] - extent / 2
    if sb < sa:
        sa = sb = (ss[a] + ss[b]) / 2
    base = p0 + ts[ti] * u
    return base + sa * v, base + sb * v, float(sb - sa)


def _side(cx: float, brain_mask, shape) -> dict:
    if brain_mask is not None:
        bm = as_mask(brain_mask, "brain_mask")
        if bm.shape != tuple(shape):
            raise ValueError(f"brain_mask shape {bm.shape} does not match mask shape {tuple(shape)}")
        if bm.any():
            midline = float(np.nonzero(bm)[1].mean())
            source = "vertical line through the brain mask's centroid"
        else:
            midline, source = (shape[1] - 1) / 2.0, "image centre (the brain mask is empty)"
    else:
        midline, source = (shape[1] - 1) / 2.0, "image centre (no brain mask given)"
    tol = 0.02 * shape[1]
    side = "midline" if abs(cx - midline) <= tol else ("image left" if cx < midline else "image right")
    return {"side": side, "midline_x": midline, "midline_source": source}


def measure(mask: np.ndarray, spacing=None, brain_mask: np.ndarray | None = None) -> dict:
    """Measure one mask.

    mask: bool ``(H, W)`` (``> 0`` = tumour, NaN is not), original slice pixels.
    spacing: ``(row_mm, col_mm)``, each in (0, 100], or None (then lengths are in px).
    brain_mask: bool ``(H, W)`` or None; its centroid's x is the midline for ``side``
        (None or empty: the image's centre column).

    Returns a JSON-friendly dict (plain floats / ints / lists):
        ``area_px`` int; ``area_mm2`` float or None (no spacing);
        ``bbox`` ``(x0, y0, x1, y1)`` inclusive pixel indices or None;
        ``centroid`` ``(x, y)`` mean pixel centre or None;
        ``contours``: list of ``[[x, y], ...]`` outer outlines (OpenCV, all components);
        ``unit`` "mm" or "px"; ``long_axis`` / ``short_axis``: ``{"p0": (x, y),
        "p1": (x, y), "length": float}`` in pixels (endpoints) and ``unit``
        (length), or None for an empty mask; ``long_diameter`` / ``short_diameter``
        floats (0.0 for empty), ``rano_product`` = their product (unit²);
        ``side`` ("image left", "image right", "midline" or None), ``midline_x``,
        ``midline_source``, ``side_caveat`` (:data:`SIDE_CAVEAT`); ``n_components``.
    An empty mask gives zeros / None, never an exception. Masks touching the
    border are measured as they are (``touches_border`` says so).
    """
    import cv2

    m = as_mask(mask)
    if m.size == 0:
        raise InputError(f"mask must be a 2-D (H, W) array with pixels, got shape {m.shape}")
    sp = check_spacing(spacing)
    sy, sx = sp if sp is not None else (1.0, 1.0)
    unit = "mm" if sp is not None else "px"
    out = {"area_px": 0, "area_mm2": 0.0 if sp is not None else None, "bbox": None, "centroid": None,
           "contours": [], "unit": unit, "spacing": list(sp) if sp is not None else None,
           "long_axis": None, "short_axis": None, "long_diameter": 0.0, "short_diameter": 0.0,
           "rano_product": 0.0, "side": None, "midline_x": None, "midline_source": None,
           "side_caveat": SIDE_CAVEAT, "n_components": 0, "touches_border": False}
    if brain_mask is not None:
        bm = as_mask(brain_mask, "brain_mask")
        if bm.shape != m.shape:
            raise ValueError(f"brain_mask shape {bm.shape} does not match mask shape {m.shape}")
    if not m.any():
        return out
    ys, xs = np.nonzero(m)
    area = int(xs.size)
    out["area_px"] = area
    if sp is not None:
        out["area_mm2"] = float(area * sx * sy)
    out["bbox"] = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    cx, cy = float(xs.mean()), float(ys.mean())
    out["centroid"] = (cx, cy)
    h, w = m.shape
    out["touches_border"] = bool(xs.min() == 0 or ys.min() == 0 or xs.max() == w - 1 or ys.max() == h - 1)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out["contours"] = [c.reshape(-1, 2).tolist() for c in contours]
    out["n_components"] = len(contours)

    def px(p):  # scaled (mm or px) -> pixel (x, y)
        return (float(p[0] / sx), float(p[1] / sy))

    p0, p1, long_len = _longest_diameter(xs.astype(np.float64), ys.astype(np.float64), sx, sy)
    out["long_axis"] = {"p0": px(p0), "p1": px(p1), "length": long_len}
    chord = _perpendicular_chord(m, p0, p1, sx, sy)
    if chord is None:
        out["short_axis"] = {"p0": px(p0), "p1": px(p0), "length": 0.0}
    else:
        q0, q1, short_len = chord
        out["short_axis"] = {"p0": px(q0), "p1": px(q1), "length": short_len}
    out["long_diameter"] = float(long_len)
    out["short_diameter"] = float(out["short_axis"]["length"])
    out["rano_product"] = out["long_diameter"] * out["short_diameter"]
    out.update(_side(cx, brain_mask, m.shape))
    return out


def draw_measurement(rgb: np.ndarray, m: dict, color=COLORS["prompt"], axis_colors=((255, 255, 255), COLORS["box"]),
                     thickness: int = 1) -> np.ndarray:
    """Draw a :func:`measure` result on an image; returns a new uint8 RGB ``(H, W, 3)``.

    rgb: anything :func:`bt_demo.render.to_rgb` accepts, in the same ORIGINAL
        pixels as the measured mask. m: the dict from :func:`measure`.
    color: (R, G, B) of the contour and bounding box; axis_colors: colours of the
        long and the short RANO diameter lines. thickness: whole number >= 1.
    An empty measurement draws nothing.
    """
    import cv2

    from bt_demo.render import to_rgb

    if isinstance(thickness, bool) or not isinstance(thickness, (int, np.integer)) or thickness < 1:
        raise ValueError(f"thickness must be a whole number >= 1 (pixels), got {thickness!r}")
    out = to_rgb(rgb)
    if not isinstance(m, dict) or "contours" not in m:
        raise ValueError("m must be the dict returned by bt_demo.studies.measure.measure(mask)")
    col = tuple(int(c) for c in color)
    cs = [np.asarray(c, np.int32).reshape(-1, 1, 2) for c in m["contours"] if len(c)]
    if cs:
        cv2.drawContours(out, cs, -1, col, thickness, lineType=cv2.LINE_8)
    if m.get("bbox") is not None:
        x0, y0, x1, y1 = m["bbox"]
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), col, thickness)
    for key, c in zip(("long_axis", "short_axis"), axis_colors, strict=False):
        ax = m.get(key)
        if ax is None:
            continue
        a = tuple(int(round(v)) for v in ax["p0"])
        b = tuple(int(round(v)) for v in ax["p1"])
        cv2.line(out, a, b, tuple(int(v) for v in c), thickness, lineType=cv2.LINE_AA)
    return out
