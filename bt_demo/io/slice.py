"""The :class:`Slice` every reader returns, the limits it is held to, and the checks all readers share.

* :class:`Slice`: one 2-D slice, float32 pixels ``(H, W)``, spacing, display window, safe metadata, affine.
* :class:`Selection`: the indices a user asked for (page, frame, slice, volume, channel); readers ``take`` the
  axes their file has.
* :func:`finish`: every reader's last step (size limits, NaN check, default window, spacing sanity).
* The limits: :data:`MAX_PIXELS`, :data:`MAX_ASPECT`, :data:`MAX_VOLUME_VOXELS`, :data:`MIN_SIDE`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import numpy as np

from bt_demo.errors import InputError

__all__ = [
    "AXES",
    "FORMAT_LABEL",
    "MAX_ASPECT",
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "MAX_SPACING_MM",
    "MAX_VOLUME_VOXELS",
    "MIN_SIDE",
    "SOURCES",
    "Selection",
    "Slice",
    "check_finite",
    "check_size",
    "color_to_gray",
    "describe_indices",
    "finish",
    "short_reason",
]

MAX_PIXELS = 2048 * 2048
"""Largest 2-D slice accepted, in pixels (H * W): beyond any MRI slice, and small enough that no one
upload holds the server for long (a 4096 x 4096 PNG took 110 s and 3 GB on a busy 2-core machine)."""

MAX_ASPECT = 8
"""Largest ratio of a slice's long side to its short side (a 100000 x 16 strip is not a slice)."""

MAX_VOLUME_VOXELS = 512 * 512 * 256
"""Largest NIfTI volume (all of its voxels, every volume of a 4-D file) or
multi-frame DICOM (rows * columns * frames) accepted."""

MIN_SIDE = 16
"""Smallest accepted side of a slice, in pixels."""

MAX_SPACING_MM = 100.0
"""Largest pixel spacing taken from a file (the measurements' own limit); beyond it the spacing is unknown."""

SOURCES = ("png", "jpeg", "tiff", "bmp", "gif", "webp", "dicom", "nifti")
"""Values :attr:`Slice.source` takes when the slice comes from :func:`load_slice`."""

AXES = ("page", "frame", "slice", "volume", "channel")
"""Names of the selectable axes in :attr:`Slice.index`, in display order."""

# Raw upload size cap: the biggest NIfTI the voxel limit allows (float64) plus headers.
MAX_FILE_BYTES = MAX_VOLUME_VOXELS * 8 + (1 << 20)
_CHANNEL_NAMES = ("red", "green", "blue")
FORMAT_LABEL = {
    "png": "PNG",
    "jpeg": "JPEG",
    "tiff": "TIFF",
    "bmp": "BMP",
    "gif": "GIF",
    "webp": "WebP",
    "dicom": "DICOM",
    "nifti": "NIfTI",
}


# ---------------------------------------------------------------------------
# The slice
# ---------------------------------------------------------------------------


def _check_window(window) -> tuple[float, float]:
    """Validate a (center, width) display window; width must be > 0 and both finite."""
    try:
        c, w = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window must be a pair (center, width) of numbers, got {window!r}") from None
    if not (math.isfinite(c) and math.isfinite(w)) or w <= 0:
        raise ValueError(f"window (center, width) must be finite with width > 0, got ({c}, {w})")
    return c, w


@dataclass(frozen=True, eq=False)
class Slice:
    """One 2-D image slice, ready for preprocessing and display.

    Attributes:
        pixels: ``float32`` array of shape ``(H, W)`` (rows, columns), finite.
            Intensities are in the source's own units: 8-bit files 0..255,
            16-bit files 0..65535, float TIFF as stored, DICOM in modality units
            (after RescaleSlope/RescaleIntercept or the Modality LUT), NIfTI in
            scanner units (after scl_slope/scl_inter). DICOM MONOCHROME1 is
            already inverted (``min + max - p``) so that bright = high signal.
            Treat it as read-only: :func:`load_slice` returns a fresh array, but
            a cached Slice may be shared.
        spacing: ``(row_mm, col_mm)``: the physical size of one pixel along a
            column (between rows) and along a row (between columns), when the
            file says (DICOM PixelSpacing / ImagerPixelSpacing, NIfTI voxel
            sizes), else ``None``.
        window: default display window ``(center, width)`` in pixel units,
            ``width > 0``. From the DICOM header (WindowCenter/WindowWidth, first
            value) when present; 8-bit raster images ``(127.5, 255.0)``;
            otherwise the 0.5th..99.5th percentiles of the pixels (falling back
            to min..max when those coincide; a constant image gets width 1).
        source: the detected format, one of :data:`SOURCES`.
        metadata: technical, non-identifying fields only (str -> str), e.g.
            ``modality``, ``series_description``, ``photometric``, ``bits``,
            ``orientation``. Never patient identity, dates, places, people, UIDs
            or the upload's file name.
        index: the source's selectable axes, ``name -> (chosen, count)`` with
            names among :data:`AXES`, listed in that order. ``chosen`` is 0-based;
            for ``"channel"`` it is ``-1`` when the slice is the luma of the
            channels. Empty for a plain 2-D gray image.
        affine: ``float64 (4, 4)`` taking ``(column, row, 0, 1)`` of :attr:`pixels`
            to the source's world coordinates in mm, RAS+ (NIfTI: the file's
            sform/qform; DICOM: ImagePositionPatient, ImageOrientationPatient and
            PixelSpacing, LPS turned to RAS), or ``None`` when the file does not
            place the slice (PNG, JPEG, TIFF...). Exports use it so a mask sits
            on its slice in any viewer.
    """

    pixels: np.ndarray
    spacing: tuple[float, float] | None
    window: tuple[float, float]
    source: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    index: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    affine: np.ndarray | None = None

    def __post_init__(self) -> None:
        px = np.ascontiguousarray(self.pixels, dtype=np.float32)
        if px.ndim != 2:
            raise ValueError(f"Slice.pixels must be 2-D (H, W), got shape {px.shape}")
        if px.size == 0:
            raise ValueError("Slice.pixels is empty")
        if not np.isfinite(px).all():
            raise ValueError("Slice.pixels must be finite (no NaN or infinity)")
        object.__setattr__(self, "pixels", px)
        if self.spacing is not None:
            sp = tuple(float(v) for v in self.spacing)
            if len(sp) != 2 or not all(math.isfinite(v) and v > 0 for v in sp):
                raise ValueError(f"Slice.spacing must be None or (row_mm, col_mm) > 0, got {self.spacing!r}")
            object.__setattr__(self, "spacing", sp)
        object.__setattr__(self, "window", _check_window(self.window))
        object.__setattr__(self, "metadata", MappingProxyType({str(k): str(v) for k, v in dict(self.metadata).items()}))
        idx: dict[str, tuple[int, int]] = {}
        for name, (chosen, count) in dict(self.index).items():
            if name not in AXES:
                raise ValueError(f"unknown index axis {name!r}; options: {', '.join(AXES)}")
            chosen, count = int(chosen), int(count)
            lowest = -1 if name == "channel" else 0
            if count < 1 or not lowest <= chosen < count:
                raise ValueError(f"index {name!r}: chosen {chosen} not in {lowest}..{count - 1}")
            idx[name] = (chosen, count)
        object.__setattr__(self, "index", MappingProxyType({k: idx[k] for k in AXES if k in idx}))
        if self.affine is not None:
            a = np.array(self.affine, dtype=np.float64)
            if a.shape != (4, 4) or not np.isfinite(a).all():
                raise ValueError(f"Slice.affine must be None or a finite 4x4 array, got shape {a.shape}")
            a.setflags(write=False)
            object.__setattr__(self, "affine", a)

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of :attr:`pixels`."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    def unit(self, window: tuple[float, float] | None = None) -> np.ndarray:
        """Window/level applied: ``float32 (H, W)`` in ``[0, 1]``.

        ``clip((pixels - (center - width / 2)) / width, 0, 1)`` with
        ``window = (center, width)`` (default :attr:`window`). A bad window
        (non-finite, width <= 0) raises ``ValueError``.
        """
        c, w = self.window if window is None else _check_window(window)
        u = (self.pixels.astype(np.float64) - (c - w / 2.0)) / w
        return np.clip(u, 0.0, 1.0).astype(np.float32)

    def display(self, window: tuple[float, float] | None = None) -> np.ndarray:
        """``uint8 (H, W)``: ``round(unit(window) * 255)``, 0 = black, 255 = white."""
        return np.rint(self.unit(window).astype(np.float64) * 255.0).astype(np.uint8)


def describe_indices(s: Slice) -> str:
    """Short 1-based text for the chosen position, e.g. ``"slice 77 of 155, volume 1 of 2"``.

    Returns ``""`` when the slice has nothing to choose (a plain 2-D image).
    """
    parts = []
    for name in AXES:
        if name not in s.index:
            continue
        chosen, count = s.index[name]
        if name == "channel":
            if chosen < 0:
                parts.append(f"luma of {count} channels")
            else:
                label = f" ({_CHANNEL_NAMES[chosen]})" if count == 3 else ""
                parts.append(f"channel {chosen + 1} of {count}{label}")
        else:
            parts.append(f"{name} {chosen + 1} of {count}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------
# Selection of pages / frames / slices / volumes / channels
# ---------------------------------------------------------------------------

_ARG_NAME = {"page": "page", "frame": "frame", "slice": "slice_index", "volume": "volume", "channel": "channel"}


def _check_selector(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{_ARG_NAME[name]} must be a whole number (0, 1, 2, ...), got {value!r}")
    value = int(value)
    if value < 0:
        raise InputError(f"{_ARG_NAME[name]} must be 0 or more (counting from 0), got {value}")
    return value


class Selection:
    """The user's requested indices; readers ``take`` the axes their file has."""

    def __init__(self, **requested: int | None) -> None:
        self.requested = {k: _check_selector(k, v) for k, v in requested.items()}
        self.taken: set[str] = set()

    def take(self, name: str, count: int, default: int | None = 0) -> int | None:
        """Chosen index along ``name`` (``count`` items), or ``default`` when not requested."""
        self.taken.add(name)
        value = self.requested.get(name)
        if value is None:
            return default
        if value >= count:
            raise InputError(_range_message(name, value, count))
        return value

    def finish(self) -> None:
        """Axes the file does not have accept only 0 (or nothing)."""
        for name, value in self.requested.items():
            if name not in self.taken and value not in (None, 0):
                raise InputError(_range_message(name, value, 1))


def _range_message(name: str, value: int, count: int) -> str:
    noun = "slice" if name == "slice" else name
    if count == 1:
        return (f"{_ARG_NAME[name]}={value} is not available: this file has a single {noun} "
                f"(use 0 or leave it empty)")
    return (f"{_ARG_NAME[name]}={value} is out of range: this file has {count} {noun}s "
            f"(choose 0 to {count - 1})")


def short_reason(e: BaseException) -> str:
    """One short line from an exception, without object reprs or memory addresses."""
    text = " ".join(str(e).split())
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the file", text)
    text = re.sub(r"^cannot identify image file\b.*", "the content is not an image format this app reads", text)
    if not text:
        text = type(e).__name__
    if len(text) > 160:
        text = text[:157] + "..."
    return text



# ---------------------------------------------------------------------------
# Shared finishing: size checks, NaN check, default window
# ---------------------------------------------------------------------------


def check_size(h: int, w: int, what: str = "image") -> None:
    """Refuse slices outside MIN_SIDE..MAX_PIXELS before any pixel is decoded."""
    h, w = int(h), int(w)
    if h <= 0 or w <= 0:
        raise InputError(f"this {what} has no pixels ({w}x{h}); the file is empty or damaged")
    if h * w > MAX_PIXELS:
        raise InputError(f"{what} is {w}x{h} pixels ({w * h:,}); the limit is 2048x2048 ({MAX_PIXELS:,}) "
                         "pixels per slice. Downsample or crop it before uploading")
    if h < MIN_SIDE or w < MIN_SIDE:
        raise InputError(f"{what} is {w}x{h} pixels; need at least {MIN_SIDE} pixels on each side")
    if max(h, w) > MAX_ASPECT * min(h, w):
        raise InputError(f"{what} is {w}x{h} pixels: one side is more than {MAX_ASPECT} times the other, "
                         "which no MRI slice is. Crop it to the head before uploading")


def check_finite(px: np.ndarray, what: str = "image") -> None:
    bad = int(px.size - np.count_nonzero(np.isfinite(px)))
    if bad:
        scope = "all of its" if bad == px.size else f"{bad:,} of its {px.size:,}"
        raise InputError(f"the file contains non-numeric voxels (NaN or infinity): {scope} pixels in this {what}. "
                         "Export it with the missing values replaced by numbers, or choose another slice")


def _auto_window(px: np.ndarray) -> tuple[float, float]:
    """Robust (center, width): 0.5..99.5 percentiles, min..max fallback, width 1 for constant."""
    flat = px.ravel()
    if flat.size > 4_000_000:  # a strided sample is plenty for two percentiles
        flat = flat[:: flat.size // 2_000_000]
    lo, hi = (float(v) for v in np.percentile(flat, [0.5, 99.5]))
    if not hi > lo:
        lo, hi = float(px.min()), float(px.max())
    if not hi > lo:
        return lo, 1.0
    return (lo + hi) / 2.0, hi - lo


def finish(px: np.ndarray, source: str, *, spacing=None, window=None, metadata=None, index=None,
            what: str = "image", affine=None) -> Slice:
    px = np.asarray(px)
    if px.ndim != 2:
        raise InputError(f"could not read this file: expected a 2-D image, got shape {px.shape}")
    check_size(px.shape[0], px.shape[1], what)
    with np.errstate(all="ignore"):
        px = px.astype(np.float32)  # values beyond float32 become inf and are refused below
    check_finite(px, what)
    if window is None:
        window = _auto_window(px)
    metadata = dict(metadata or {})
    if spacing is not None and not all(0 < float(v) <= MAX_SPACING_MM for v in spacing):
        # a file's implausible spacing is reported and dropped, never used for mm (every measure would fail)
        metadata["spacing_note"] = (f"the file gives {float(spacing[0]):.3g} × {float(spacing[1]):.3g} mm pixels, "
                                    f"outside 0–{MAX_SPACING_MM:g} mm: treated as unknown")
        spacing = None
        affine = None  # an implausible voxel size does not place the slice either
    if affine is not None and not np.isfinite(np.asarray(affine, dtype=np.float64)).all():
        affine = None
    return Slice(px, spacing, window, source, metadata, index or {}, affine)


def _max_abs_channel_diff(rgb: np.ndarray) -> float:
    a = rgb.astype(np.float32, copy=False)
    return float(max(np.abs(a[..., 0] - a[..., 1]).max(),
                     np.abs(a[..., 1] - a[..., 2]).max(),
                     np.abs(a[..., 0] - a[..., 2]).max()))


def color_to_gray(rgb: np.ndarray, levels: float, sel: Selection) -> tuple[np.ndarray, dict]:
    """(H, W, 3) -> ((H, W), index entry). ``levels`` = full scale of the source (255 for 8-bit)."""
    tol = 2.0 * levels / 255.0
    gray = _max_abs_channel_diff(rgb) <= tol
    chosen = sel.take("channel", 3, default=None)
    if chosen is None:
        a = rgb.astype(np.float64)
        out = (0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]).astype(np.float32)
    else:
        out = rgb[..., chosen].astype(np.float32)
    index = {} if gray else {"channel": (-1 if chosen is None else chosen, 3)}
    return out, index
