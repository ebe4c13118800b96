"""Overlays, contours, click markers, heat maps and agreement maps on an MRI slice.

Everything here is pure NumPy/OpenCV: functions take arrays and return a
**new** ``uint8`` RGB image of shape ``(H, W, 3)`` (values 0..255); inputs
are never modified. Conventions:

- Images: gray ``uint8`` ``(H, W)``, gray float ``(H, W)`` in [0, 1], or RGB
  ``uint8`` ``(H, W, 3)`` (see :func:`to_rgb`), so overlays can be chained.
- Masks: ``(H, W)`` bool, ``uint8`` 0/1 or 0/255 (tumour where ``> 0``), the
  same ``(H, W)`` as the image, else :class:`~bt_demo.errors.InputError`
  (a ``ValueError``) naming both shapes.
- Points are ``(x, y)`` = (column, row) in pixels of the image drawn on;
  boxes are ``(x0, y0, x1, y1)`` in the same pixels.
- Colours are ``(R, G, B)`` tuples of ints in 0..255.
- Alpha blending, wherever it is used: ``out = rint((1 - alpha) * pixel + alpha * colour)``
  per channel, computed in float64, rounded half to even (``numpy.rint``).

Colours (:data:`COLORS`) come from the Okabe–Ito palette, which stays
distinguishable with the common colour-vision deficiencies, and are chosen
to be readable on a gray MRI (no pure black/dark blue for filled overlays):

===============  =================  =========================================
key              colour             used for
===============  =================  =========================================
``unet``         orange             the automatic U-Net mask
``prompt``       sky blue           the prompted (SAM / click model) mask
``kmeans``       reddish purple     the K-Means tumour cluster
``reference``    white              a reference / corrected mask contour
``positive``     bluish green       positive clicks ("tumour here", "+")
``negative``     vermillion         negative clicks ("not tumour", "−")
``box``          yellow             the prompt box
``agree``        bluish green       agreement map: every mask says tumour
``only_a``       orange             agreement map: only the 1st mask (U-Net)
``only_b``       sky blue           agreement map: only the 2nd mask (prompt)
``only_c``       reddish purple     agreement map: only the 3rd mask (K-Means)
``pair_ab``      yellow             agreement map: 1st and 2nd, not 3rd
``pair_ac``      vermillion         agreement map: 1st and 3rd, not 2nd
``pair_bc``      blue               agreement map: 2nd and 3rd, not 1st
===============  =================  =========================================

``only_a/b/c`` reuse the colours of unet/prompt/kmeans, so with the usual
order (U-Net, prompt, K-Means) a region has the colour of the one engine
that claims it. The same colour serves in different views (points never
appear on the agreement map).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from bt_demo.errors import InputError
from bt_demo.image.masks import as_mask
from bt_demo.studies.metrics import agreement_labels

__all__ = [
    "COLORMAPS",
    "COLORS",
    "OKABE_ITO",
    "default_point_radius",
    "agreement_rgb",
    "consensus_rgb",
    "draw_box",
    "draw_contour",
    "draw_points",
    "heatmap_overlay",
    "label_palette",
    "overlay_labels",
    "overlay_mask",
    "side_by_side",
    "to_rgb",
    "upscale_for_display",
]

RGB = tuple[int, int, int]

#: The Okabe–Ito colour-blind-safe palette (Okabe & Ito 2008), RGB.
OKABE_ITO: dict[str, RGB] = {
    "black": (0, 0, 0),
    "orange": (230, 159, 0),
    "sky_blue": (86, 180, 233),
    "bluish_green": (0, 158, 115),
    "yellow": (240, 228, 66),
    "blue": (0, 114, 178),
    "vermillion": (213, 94, 0),
    "reddish_purple": (204, 121, 167),
}

#: Named colours of the app (see the module docstring for which is which).
COLORS: dict[str, RGB] = {
    "unet": OKABE_ITO["orange"],
    "prompt": OKABE_ITO["sky_blue"],
    "kmeans": OKABE_ITO["reddish_purple"],
    "reference": (255, 255, 255),
    "positive": OKABE_ITO["bluish_green"],
    "negative": OKABE_ITO["vermillion"],
    "box": OKABE_ITO["yellow"],
    "agree": OKABE_ITO["bluish_green"],
    "only_a": OKABE_ITO["orange"],
    "only_b": OKABE_ITO["sky_blue"],
    "only_c": OKABE_ITO["reddish_purple"],
    "pair_ab": OKABE_ITO["yellow"],
    "pair_ac": OKABE_ITO["vermillion"],
    "pair_bc": OKABE_ITO["blue"],
    # classical segmenters (bt_demo.studies.classical_seg), beside U-Net / prompted / K-Means
    "watershed": OKABE_ITO["blue"],
    "chan_vese": OKABE_ITO["bluish_green"],
    "geodesic": OKABE_ITO["vermillion"],
}

_WHITE: RGB = (255, 255, 255)
_BLACK: RGB = (0, 0, 0)
_GAP_RGB: RGB = (24, 24, 24)

#: Colour maps by name for :func:`heatmap_overlay` -> OpenCV constant name.
COLORMAPS: dict[str, str] = {
    "inferno": "COLORMAP_INFERNO",
    "jet": "COLORMAP_JET",
    "viridis": "COLORMAP_VIRIDIS",
    "magma": "COLORMAP_MAGMA",
}

# Label colours for overlay_labels: Okabe–Ito without black, most distinct first.
_LABEL_COLORS: list[RGB] = [
    OKABE_ITO[k]
    for k in ("orange", "sky_blue", "bluish_green", "yellow", "vermillion", "reddish_purple", "blue")
]



def _plane(arr, name: str, shape: tuple[int, int]) -> np.ndarray:
    """``arr`` as a 2-D array of the image's ``shape`` (InputError naming ``name`` otherwise)."""
    a = np.asarray(arr)
    if a.ndim != 2:
        raise InputError(f"{name} must be a 2-D (H, W) array, got shape {a.shape}")
    if a.shape != tuple(shape):
        raise InputError(f"{name} shape {a.shape} does not match image shape {tuple(shape)}")
    return a

def _cv2():
    import cv2

    return cv2


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------
def _color(color, name: str = "color") -> RGB:
    try:
        values = [float(c) for c in color]
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an (R, G, B) tuple of integers 0..255, got {color!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) and 0 <= v <= 255 for v in values):
        raise InputError(f"{name} must be an (R, G, B) tuple of integers 0..255, got {color!r}")
    return tuple(int(round(v)) for v in values)  # type: ignore[return-value]


def _alpha(alpha) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise InputError(f"alpha must be a number in [0, 1], got {alpha!r}") from None
    if not (0.0 <= a <= 1.0):  # also rejects NaN
        raise InputError(f"alpha must be in [0, 1] (0 = invisible, 1 = opaque), got {alpha!r}")
    return a


def _thickness(thickness) -> int:
    if isinstance(thickness, bool) or not isinstance(thickness, (int, np.integer)) or thickness < 1:
        raise InputError(f"thickness must be an integer >= 1 (pixels), got {thickness!r}")
    return int(thickness)


def _mask_for(rgb: np.ndarray, mask, name: str = "mask") -> np.ndarray:
    m = as_mask(mask, name)
    if m.shape != rgb.shape[:2]:
        raise InputError(
            f"{name} shape {m.shape} does not match image shape {rgb.shape[:2]}; "
            "both must be in the pixels of the same slice"
        )
    return m


def _blend_into(out: np.ndarray, where: np.ndarray, color, alpha: float) -> None:
    """``out[where] = rint((1 - alpha) * out[where] + alpha * color)``; ``out`` is our own copy.

    color: one (R, G, B) or an (N, 3) array, one colour per selected pixel.
    """
    if alpha == 0.0 or not where.any():
        return
    px = out[where].astype(np.float64)
    col = np.asarray(color, dtype=np.float64)
    out[where] = np.clip(np.rint((1.0 - alpha) * px + alpha * col), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------
def to_rgb(gray: np.ndarray) -> np.ndarray:
    """Any displayable slice -> a new ``uint8`` RGB image ``(H, W, 3)``.

    Accepts:
    - ``uint8`` ``(H, W)`` gray, or ``(H, W, 1)``: copied into all three channels;
    - ``bool`` ``(H, W)``: False -> 0, True -> 255;
    - float ``(H, W)`` or ``(H, W, 3)`` in [0, 1]: ``rint(255 * v)``; NaN -> 0,
      values outside [0, 1] are clipped (normalise the slice first);
    - ``uint8`` ``(H, W, 3)`` RGB: copied; ``(H, W, 4)`` RGBA: alpha dropped.

    Other integer dtypes (e.g. ``uint16`` DICOM pixels) raise
    :class:`InputError`: scale them to float [0, 1] or ``uint8`` first.
    """
    arr = np.asarray(gray)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise InputError(f"image must be (H, W) gray or (H, W, 3) RGB, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"image is empty (shape {arr.shape})")
    if arr.dtype == bool:
        u8 = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint8:
        u8 = arr
    elif np.issubdtype(arr.dtype, np.floating):
        f = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        u8 = np.rint(np.clip(f, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise InputError(
            f"image dtype {arr.dtype} is not displayable as is; give uint8 (0..255) or float in [0, 1]"
        )
    if u8.ndim == 2:
        return np.repeat(u8[:, :, None], 3, axis=2)
    return np.array(u8, dtype=np.uint8, copy=True, order="C")


# ---------------------------------------------------------------------------
# masks and labels
# ---------------------------------------------------------------------------
def draw_contour(rgb: np.ndarray, mask, color: RGB, thickness: int = 1) -> np.ndarray:
    """Draw the outline of ``mask`` (outer borders and holes) at full opacity; returns a new image.

    rgb: image accepted by :func:`to_rgb`; mask: ``(H, W)`` of the same size.
    The outline goes through the mask's own border pixels
    (``cv2.findContours``, ``RETR_LIST``, ``CHAIN_APPROX_NONE``), so with
    ``thickness=1`` no pixel outside the mask changes; a thicker line grows
    about ``thickness // 2`` pixels to each side. An empty mask changes nothing.
    """
    cv2 = _cv2()
    out = to_rgb(rgb)
    m = _mask_for(out, mask)
    color = _color(color)
    thickness = _thickness(thickness)
    if not m.any():
        return out
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, color, thickness, lineType=cv2.LINE_8)
    return out


def overlay_mask(
    gray: np.ndarray,
    mask,
    color: RGB = COLORS["unet"],
    alpha: float = 0.4,
    contour: bool = True,
    thickness: int = 1,
) -> np.ndarray:
    """Tint the pixels of ``mask`` with ``color`` and outline it; returns a new ``uint8`` RGB image.

    gray: image accepted by :func:`to_rgb` (``(H, W)`` or ``(H, W, 3)``).
    mask: ``(H, W)`` bool / 0-1 / 0-255, same ``(H, W)``.
    alpha: in [0, 1]; inside the mask ``rint((1 - alpha) * pixel + alpha * color)``.
    contour: also draw the outline at full opacity (see :func:`draw_contour`).
    Pixels outside the mask (and off a thick outline) are left exactly as
    :func:`to_rgb` gives them; an empty mask returns the image unchanged.
    """
    out = to_rgb(gray)
    m = _mask_for(out, mask)
    color = _color(color)
    a = _alpha(alpha)
    thickness = _thickness(thickness)
    if not m.any():
        return out
    _blend_into(out, m, color, a)
    if contour:
        out = draw_contour(out, m, color, thickness)
    return out


def label_palette(n_labels: int) -> np.ndarray:
    """Colours for labels ``0..n_labels``: ``uint8`` ``(n_labels + 1, 3)``; row 0 (background) is black and unused.

    Up to 7 labels: Okabe–Ito colours (colour-blind safe, most distinct
    first); more: evenly spaced samples of viridis (perceptually ordered).
    """
    if isinstance(n_labels, bool) or not isinstance(n_labels, (int, np.integer)) or n_labels < 0:
        raise InputError(f"n_labels must be an integer >= 0, got {n_labels!r}")
    n = int(n_labels)
    pal = np.zeros((n + 1, 3), dtype=np.uint8)
    if n == 0:
        return pal
    if n <= len(_LABEL_COLORS):
        pal[1:] = np.asarray(_LABEL_COLORS[:n], dtype=np.uint8)
        return pal
    cv2 = _cv2()
    ramp = np.rint(np.linspace(0, 255, n)).astype(np.uint8).reshape(-1, 1)
    bgr = cv2.applyColorMap(ramp, cv2.COLORMAP_VIRIDIS).reshape(-1, 3)
    pal[1:] = bgr[:, ::-1]
    return pal


def overlay_labels(
    gray: np.ndarray,
    labels: np.ndarray,
    colors_rgb: np.ndarray | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Tint each labelled region with its colour; returns a new ``uint8`` RGB image.

    gray: image accepted by :func:`to_rgb`.
    labels: integer (or bool) ``(H, W)``, values 0..K; 0 is left transparent.
    colors_rgb: ``(K' + 1, 3)`` values 0..255 indexed by label (row 0 unused),
    K' >= K; default :func:`label_palette` (K).
    alpha: in [0, 1]; label pixels become ``rint((1 - alpha) * pixel + alpha * colors_rgb[label])``.
    """
    out = to_rgb(gray)
    lab = _plane(labels, "labels", out.shape[:2])
    if lab.dtype == bool:
        lab = lab.astype(np.int64)
    if not np.issubdtype(lab.dtype, np.integer):
        raise InputError(f"labels must be integers (0 = background), got dtype {lab.dtype}")
    a = _alpha(alpha)
    k = int(lab.max()) if lab.size else 0
    if lab.size and int(lab.min()) < 0:
        raise InputError(f"labels must be >= 0 (0 = background), found {int(lab.min())}")
    if colors_rgb is None:
        pal = label_palette(k)
    else:
        pal = np.asarray(colors_rgb)
        if pal.ndim != 2 or pal.shape[1] != 3:
            raise InputError(f"colors_rgb must have shape (K + 1, 3), got {pal.shape}")
        if pal.shape[0] <= k:
            raise InputError(
                f"colors_rgb has {pal.shape[0]} rows (labels 0..{pal.shape[0] - 1}) but labels go up to {k}; "
                f"give at least {k + 1} rows"
            )
        if not np.all(np.isfinite(pal)) or pal.min() < 0 or pal.max() > 255:
            raise InputError("colors_rgb values must be in 0..255")
    where = lab > 0
    if where.any():
        _blend_into(out, where, np.asarray(pal, dtype=np.float64)[lab[where]], a)
    return out


# ---------------------------------------------------------------------------
# prompts: points and boxes
# ---------------------------------------------------------------------------
def default_point_radius(shape: tuple[int, ...]) -> int:
    """Marker radius in pixels for an image of shape ``(H, W, ...)``: ``max(3, round(min(H, W) / 64))``."""
    return max(3, int(round(min(int(shape[0]), int(shape[1])) / 64)))


def draw_points(
    rgb: np.ndarray,
    points_xy: Sequence[tuple[float, float]],
    labels: Sequence[int],
    radius: int | None = None,
) -> np.ndarray:
    """Draw click markers; returns a new ``uint8`` RGB image.

    points_xy: N points ``(x, y)`` = (column, row) in pixels of ``rgb``
    (floats are rounded to the nearest pixel), as a sequence or an ``(N, 2)`` array.
    labels: N ints, 1 = positive (a ``COLORS["positive"]`` disc with a white
    "+"), 0 = negative (a ``COLORS["negative"]`` disc with a white "−"); each
    disc has a white inner and black outer ring so it reads on dark and bright tissue.
    radius: disc radius in pixels (>= 1); default :func:`default_point_radius`.
    Points outside the image (or NaN) are skipped silently; a point near the
    edge is drawn clipped.
    """
    cv2 = _cv2()
    out = to_rgb(rgb)
    pts = np.asarray(points_xy, dtype=np.float64)
    if pts.size == 0:
        pts = pts.reshape(0, 2)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise InputError(f"points_xy must be N (x, y) pairs, got shape {pts.shape}")
    labs = np.asarray(labels).reshape(-1)
    if labs.shape[0] != pts.shape[0]:
        raise InputError(f"got {pts.shape[0]} points but {labs.shape[0]} labels; give one label per point")
    if labs.size and not np.all(np.isin(labs, (0, 1))):
        raise InputError(f"point labels must be 1 (tumour) or 0 (not tumour), got {sorted(set(labs.tolist()))}")
    if radius is None:
        r = default_point_radius(out.shape)
    else:
        if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 1:
            raise InputError(f"radius must be an integer >= 1 (pixels), got {radius!r}")
        r = int(radius)
    h, w = out.shape[:2]
    arm = max(1, int(round(0.55 * r)))
    stroke = max(1, r // 4)
    for (x, y), lab in zip(pts, labs, strict=True):
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        cx, cy = int(round(x)), int(round(y))
        if not (0 <= cx < w and 0 <= cy < h):
            continue
        fill = COLORS["positive"] if int(lab) == 1 else COLORS["negative"]
        cv2.circle(out, (cx, cy), r + 1, _BLACK, 1, lineType=cv2.LINE_8)
        cv2.circle(out, (cx, cy), r, fill, -1, lineType=cv2.LINE_8)
        cv2.circle(out, (cx, cy), r, _WHITE, 1, lineType=cv2.LINE_8)
        cv2.line(out, (cx - arm, cy), (cx + arm, cy), _WHITE, stroke, lineType=cv2.LINE_8)
        if int(lab) == 1:
            cv2.line(out, (cx, cy - arm), (cx, cy + arm), _WHITE, stroke, lineType=cv2.LINE_8)
    return out


def draw_box(rgb: np.ndarray, box_xyxy, color: RGB = COLORS["box"], thickness: int = 1) -> np.ndarray:
    """Draw a rectangle outline; returns a new ``uint8`` RGB image.

    box_xyxy: ``(x0, y0, x1, y1)`` corner pixels (columns, rows), inclusive,
    rounded to the nearest pixel; corners may be given in either order
    (a drag up-left works). Parts outside the image are clipped.
    """
    cv2 = _cv2()
    out = to_rgb(rgb)
    try:
        b = np.asarray(box_xyxy, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"box must be (x0, y0, x1, y1) numbers, got {box_xyxy!r}") from None
    if b.shape != (4,) or not np.all(np.isfinite(b)):
        raise InputError(f"box must be 4 finite numbers (x0, y0, x1, y1), got {box_xyxy!r}")
    color = _color(color)
    thickness = _thickness(thickness)
    x0, x1 = sorted((int(round(b[0])), int(round(b[2]))))
    y0, y1 = sorted((int(round(b[1])), int(round(b[3]))))
    cv2.rectangle(out, (x0, y0), (x1, y1), color, thickness, lineType=cv2.LINE_8)
    return out


# ---------------------------------------------------------------------------
# heat maps and agreement maps
# ---------------------------------------------------------------------------
def heatmap_overlay(
    gray: np.ndarray,
    heat: np.ndarray,
    alpha: float = 0.45,
    colormap: str = "inferno",
    mask_below: float | None = None,
) -> np.ndarray:
    """Blend a colour-mapped heat map (e.g. Grad-CAM) over the slice; returns a new ``uint8`` RGB image.

    gray: image accepted by :func:`to_rgb`.
    heat: float ``(H, W)`` in [0, 1], same ``(H, W)``; NaN -> 0, values
    outside [0, 1] clipped. Colour = OpenCV colour map of ``rint(255 * heat)``.
    colormap: one of :data:`COLORMAPS` ("inferno", "jet", "viridis", "magma").
    mask_below: in [0, 1] or None; where ``heat < mask_below`` the slice is
    left as it is (so only the hot regions are tinted). None tints everywhere.
    """
    cv2 = _cv2()
    out = to_rgb(gray)
    hm = _plane(heat, "heat", out.shape[:2])
    if not (np.issubdtype(hm.dtype, np.floating) or np.issubdtype(hm.dtype, np.integer) or hm.dtype == bool):
        raise InputError(f"heat must be numeric, got dtype {hm.dtype}")
    if colormap not in COLORMAPS:
        raise InputError(f"unknown colormap {colormap!r}; choose one of {sorted(COLORMAPS)}")
    a = _alpha(alpha)
    if mask_below is not None:
        try:
            thr = float(mask_below)
        except (TypeError, ValueError):
            raise InputError(f"mask_below must be a number in [0, 1] or None, got {mask_below!r}") from None
        if not (0.0 <= thr <= 1.0):
            raise InputError(f"mask_below must be in [0, 1] or None, got {mask_below!r}")
    h = np.clip(np.nan_to_num(hm.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    u8 = np.rint(h * 255.0).astype(np.uint8)
    colored = cv2.applyColorMap(u8, getattr(cv2, COLORMAPS[colormap]))[:, :, ::-1]
    where = np.ones(h.shape, dtype=bool) if mask_below is None else h >= thr
    _blend_into(out, where, colored[where], a)
    return out


def _agreement_colors(n: int) -> dict[int, RGB]:
    if n == 1:
        return {1: COLORS["only_a"]}
    full = (1 << n) - 1
    colors = {full: COLORS["agree"], 1: COLORS["only_a"], 2: COLORS["only_b"]}
    if n == 3:
        colors.update({4: COLORS["only_c"], 3: COLORS["pair_ab"], 5: COLORS["pair_ac"], 6: COLORS["pair_bc"]})
    return colors


def agreement_rgb(
    gray: np.ndarray,
    agreement: np.ndarray,
    names: Sequence[str],
    alpha: float = 0.5,
) -> tuple[np.ndarray, list[tuple[str, RGB]]]:
    """Colour the codes of :func:`bt_demo.studies.metrics.agreement_map`; returns ``(image, legend)``.

    gray: image accepted by :func:`to_rgb`.
    agreement: integer ``(H, W)`` bit codes, same ``(H, W)``; values 0..2**len(names) - 1.
    names: 1 to 3 display names, in the order the masks were given to ``agreement_map``.
    alpha: in [0, 1] blend of each region's colour (code 0 stays as the slice).

    legend: ``[(text, (R, G, B)), ...]`` for every non-zero code, in the order
    of :func:`bt_demo.studies.metrics.agreement_labels`, e.g. for ``["U-Net", "prompt"]``
    ``[("both: U-Net & prompt", agree), ("only U-Net", only_a), ("only prompt", only_b)]``.
    """
    out = to_rgb(gray)
    code = np.asarray(agreement)
    names = [str(n) for n in names]
    labels = agreement_labels(names)  # validates 1..3 names
    if code.ndim != 2:
        raise InputError(f"agreement must be a 2-D (H, W) array, got shape {code.shape}")
    if code.shape != out.shape[:2]:
        raise InputError(f"agreement shape {code.shape} does not match image shape {out.shape[:2]}")
    if not np.issubdtype(code.dtype, np.integer):
        raise InputError(f"agreement must be integer bit codes (from agreement_map), got dtype {code.dtype}")
    a = _alpha(alpha)
    top = (1 << len(names)) - 1
    if code.size and (int(code.min()) < 0 or int(code.max()) > top):
        raise InputError(
            f"agreement codes must be in 0..{top} for {len(names)} names, found {int(code.min())}..{int(code.max())}; "
            "pass one name per mask given to agreement_map"
        )
    colors = _agreement_colors(len(names))
    for k, col in colors.items():
        _blend_into(out, code == k, col, a)
    legend = [(text, colors[k]) for k, text in labels.items()]
    return out, legend


def consensus_rgb(
    gray: np.ndarray,
    votes: np.ndarray,
    n_masks: int,
    alpha: float = 0.5,
    colormap: str = "viridis",
) -> tuple[np.ndarray, list[tuple[str, RGB]]]:
    """Colour how many of ``n_masks`` masks call each pixel tumour; returns ``(image, legend)``.

    For any number of masks (where :func:`agreement_rgb`'s Venn colours stop at three).
    gray: image accepted by :func:`to_rgb`. votes: integer ``(H, W)`` in ``0..n_masks``
    (:func:`bt_demo.studies.metrics.vote_map`); 0 stays as the slice. n_masks: whole number >= 1.
    colormap: one of :data:`COLORMAPS`; ``k`` votes get the colour at ``k / n_masks``
    (a dark, cold colour for one mask alone, the brightest for all of them).
    legend: ``[(text, (R, G, B)), ...]`` from "all n masks" down to "1 of n masks".
    """
    cv2 = _cv2()
    out = to_rgb(gray)
    if isinstance(n_masks, bool) or not isinstance(n_masks, (int, np.integer)) or n_masks < 1:
        raise InputError(f"n_masks must be a whole number >= 1, got {n_masks!r}")
    v = np.asarray(votes)
    if v.ndim != 2 or v.shape != out.shape[:2]:
        raise InputError(f"votes must be (H, W) like the image {out.shape[:2]}, got shape {v.shape}")
    if not np.issubdtype(v.dtype, np.integer):
        raise InputError(f"votes must be integer counts (from vote_map), got dtype {v.dtype}")
    if v.size and (int(v.min()) < 0 or int(v.max()) > n_masks):
        raise InputError(f"votes must be in 0..{n_masks}, found {int(v.min())}..{int(v.max())}")
    if colormap not in COLORMAPS:
        raise InputError(f"unknown colormap {colormap!r}; choose one of {sorted(COLORMAPS)}")
    a = _alpha(alpha)
    ramp = np.rint(np.linspace(0.25, 1.0, n_masks) * 255).astype(np.uint8).reshape(-1, 1)
    lut = cv2.applyColorMap(ramp, getattr(cv2, COLORMAPS[colormap]))[:, 0, ::-1]  # BGR -> RGB
    legend = []
    for k in range(n_masks, 0, -1):
        col = tuple(int(c) for c in lut[k - 1])
        _blend_into(out, v == k, col, a)
        text = (f"all {n_masks} masks" if k == n_masks and n_masks > 1 else f"{k} of {n_masks} masks")
        legend.append((text, col))
    return out, legend


# ---------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------
def side_by_side(images: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Join panels left to right with a dark ``gap`` (pixels, >= 0); returns ``uint8`` RGB.

    images: one or more images accepted by :func:`to_rgb`. Panels lower than
    the tallest are resized (nearest neighbour, aspect ratio kept) to its height.
    """
    cv2 = _cv2()
    if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)) or gap < 0:
        raise InputError(f"gap must be an integer >= 0 (pixels), got {gap!r}")
    panels = [to_rgb(im) for im in images]
    if not panels:
        raise InputError("side_by_side needs at least one image")
    height = max(p.shape[0] for p in panels)
    parts = []
    for i, p in enumerate(panels):
        if p.shape[0] != height:
            width = max(1, int(round(p.shape[1] * height / p.shape[0])))
            p = cv2.resize(p, (width, height), interpolation=cv2.INTER_NEAREST)
        if i and gap:
            parts.append(np.full((height, int(gap), 3), _GAP_RGB, dtype=np.uint8))
        parts.append(p)
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


def upscale_for_display(rgb: np.ndarray, min_side: int = 512) -> tuple[np.ndarray, float]:
    """Nearest-neighbour upscale of a small image by an integer factor; returns ``(image, factor)``.

    rgb: ``(H, W)`` or ``(H, W, C)`` array of any dtype (an image, a mask or a
    label map: the dtype is kept, so the same factor works for all of them).
    factor = ``ceil(min_side / min(H, W))`` when ``min(H, W) < min_side``,
    else 1, but never so large that the long side exceeds ``4 * min_side``
    (unless it already does). Pixel ``(x, y)`` covers display pixels
    ``[x * f, (x + 1) * f)``; its centre is at ``(x + 0.5) * f - 0.5``.
    Always returns a new array.
    """
    arr = np.asarray(rgb)
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"image must be (H, W) or (H, W, C), got shape {arr.shape}")
    if isinstance(min_side, bool) or not isinstance(min_side, (int, np.integer)) or min_side < 1:
        raise InputError(f"min_side must be an integer >= 1 (pixels), got {min_side!r}")
    h, w = arr.shape[:2]
    f = 1
    if min(h, w) < min_side:
        f = math.ceil(min_side / min(h, w))
        f = max(1, min(f, (4 * int(min_side)) // max(h, w)))
    if f == 1:
        return arr.copy(), 1.0
    return np.repeat(np.repeat(arr, f, axis=0), f, axis=1), float(f)
