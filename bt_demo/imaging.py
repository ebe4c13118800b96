"""Any upload -> one 2-D :class:`Slice` (float32 pixels, spacing, safe metadata).

``load_slice`` is the one entry point for every file a user gives us. It
detects the format from the file's *content* (never its name or extension),
reads exactly one 2-D slice, and raises only :class:`~bt_demo.errors.InputError`
with a message meant for a clinician.

Supported content:

============  =====================================================  ================
source        what                                                   selectable axes
============  =====================================================  ================
``png``       8/16-bit gray, RGB(A), palette, LA, 1-bit              ``channel``
``jpeg``      gray, RGB, CMYK; EXIF orientation applied              ``channel``
``tiff``      8/16/32-bit int, float, RGB(A), palette, multi-page    ``page``, ``channel``
``bmp``       as Pillow reads it                                     ``channel``
``gif``       animated GIF: one frame                                ``page``, ``channel``
``webp``      still or animated                                      ``page``, ``channel``
``dicom``     any uncompressed (or Pillow-decodable) transfer        ``frame``, ``channel``
              syntax, single- or multi-frame, with or without the
              128-byte preamble
``nifti``     NIfTI-1 / NIfTI-2, ``.nii`` or ``.nii.gz``, 2-D to 4-D  ``slice``, ``volume``
============  =====================================================  ================

Conventions
-----------
* Pixels are ``float32`` arrays of shape ``(H, W)`` = (rows, columns), always
  finite, in the source's own units (see :class:`Slice`).
* Every index is 0-based; :func:`describe_indices` prints them 1-based for people.
* Colour: when the three channels of an RGB image agree within 2 grey levels
  (on an 8-bit scale) the image is gray and there is no ``"channel"`` axis.
  Otherwise the default is the ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B``
  (``index["channel"] == (-1, 3)``), and ``channel=0|1|2`` picks R, G or B
  unchanged. No channel is assumed to be a particular MRI sequence.
* Alpha is dropped by compositing on black (``value * alpha / alpha_max``).
* NIfTI volumes are reoriented to the closest canonical RAS+ orientation and
  shown in the radiological convention: anterior at the top, the patient's
  right on the image's *left*. ``slice_index`` counts axial slices from
  inferior (0) to superior.
* Limits (checked from headers *before* any pixel data is decoded):
  :data:`MAX_PIXELS` per slice, :data:`MAX_VOLUME_VOXELS` per volume or
  multi-frame object, :data:`MIN_SIDE` pixels on each side. Gzip input is
  decompressed incrementally, only as far as the NIfTI header says the data
  goes, so a gzip bomb never reaches memory.

Metadata never holds patient identity, dates, institutions, physicians,
accession numbers, UIDs or the file name: only the whitelisted technical
fields documented in :func:`load_slice`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import BinaryIO, Mapping

import numpy as np

from .errors import InputError

__all__ = [
    "MAX_ASPECT",
    "MAX_PIXELS",
    "MAX_VOLUME_VOXELS",
    "MIN_SIDE",
    "SOURCES",
    "Slice",
    "load_slice",
    "describe_indices",
    # the volume loader's building blocks (bt_demo.volume.series)
    "read_upload",
    "sniff",
    "gunzip_bounded",
    "nifti_header_info",
    "dicom_functional",
    "dicom_rescale",
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
_MAX_FILE_BYTES = MAX_VOLUME_VOXELS * 8 + (1 << 20)
# Cap for gzip content that is not NIfTI (whose size the header bounds instead).
_MAX_GUNZIP_OTHER_BYTES = 128 << 20
_CHANNEL_NAMES = ("red", "green", "blue")
_FORMAT_LABEL = {
    "png": "PNG",
    "jpeg": "JPEG",
    "tiff": "TIFF",
    "bmp": "BMP",
    "gif": "GIF",
    "webp": "WebP",
    "dicom": "DICOM",
    "nifti": "NIfTI",
}
_SUPPORTED_TEXT = "PNG, JPEG, TIFF, BMP, GIF, WebP, DICOM (.dcm) or NIfTI (.nii / .nii.gz)"


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


class _Selection:
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


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def load_slice(
    data: bytes | str | os.PathLike | BinaryIO,
    *,
    page: int | None = None,
    frame: int | None = None,
    slice_index: int | None = None,
    volume: int | None = None,
    channel: int | None = None,
) -> Slice:
    """Read one 2-D slice from any supported upload.

    Args:
        data: the file's bytes, a path to it, or a binary file object (read
            from its current position). The format is detected from the
            content; the name and extension are ignored.
        page: page of a multi-page TIFF or frame of an animated GIF/WebP
            (default 0).
        frame: frame of a multi-frame DICOM (default 0).
        slice_index: axial slice of a NIfTI volume, 0 = most inferior after
            reorientation to RAS+ (default: the slice with the most signal,
            i.e. the largest per-slice sum of ``max(v - p10, 0)`` where ``p10``
            is the volume's 10th percentile; the middle slice if all are equal).
        volume: volume of a 4-D NIfTI (default 0).
        channel: 0, 1 or 2 picks R, G or B of a colour image; default (None) is
            the BT.601 luma. For images whose channels are equal it picks that
            channel (they agree within 2 grey levels).

        An index given for an axis the file does not have must be 0 (or None).

    Returns:
        a :class:`Slice`. Metadata keys (each present only when known):
        all sources: ``format``, ``bits`` (bits per sample, "32f"/"64f" for
        floats), ``photometric``; DICOM adds ``modality``,
        ``series_description``, ``body_part``, ``field_strength`` ("3 T"),
        ``slice_thickness`` ("5 mm"); NIfTI adds ``nifti_version``,
        ``datatype``, ``stored_axes`` (e.g. "LPS"), ``plane``, ``orientation``;
        gzip input adds ``container`` = "gzip".

    Raises:
        InputError: for anything that is not a readable image within the
            limits (:data:`MAX_PIXELS`, :data:`MAX_VOLUME_VOXELS`,
            :data:`MIN_SIDE`), an index out of range, undecodable compressed
            DICOM, missing pixel data, or non-numeric (NaN/Inf) pixels. No
            other exception type escapes.
    """
    sel = _Selection(page=page, frame=frame, slice=slice_index, volume=volume, channel=channel)
    try:
        raw = read_upload(data)
        result = _load_bytes(raw, sel, gz=False)
        sel.finish()
        return result
    except InputError:
        raise
    except MemoryError:
        raise InputError("this file is too large to open on this server; "
                         "upload a smaller image or a single slice") from None
    except RecursionError:
        raise InputError("could not read this file: its structure is damaged (too deeply nested)") from None
    except Exception as e:  # noqa: BLE001 - the one place where every library error becomes a user message
        raise InputError(f"could not read this file: {_short_reason(e)}") from e


def _short_reason(e: BaseException) -> str:
    """One short line from an exception, without object reprs or memory addresses."""
    text = " ".join(str(e).split())
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the file", text)
    text = re.sub(r"^cannot identify image file\b.*", "the content is not an image format this app reads", text)
    if not text:
        text = type(e).__name__
    if len(text) > 160:
        text = text[:157] + "..."
    return text


def read_upload(data) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    elif isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not path:
            raise InputError("no file was given; upload an image file")
        if not os.path.exists(path):
            raise InputError("the uploaded file could not be found on the server; please upload it again")
        if os.path.isdir(path):
            raise InputError("a folder was given, not a file; upload one image file")
        size = os.path.getsize(path)
        if size > _MAX_FILE_BYTES:
            raise InputError(_too_big_file_message(size))
        with open(path, "rb") as fh:
            raw = _read_stream(fh)
    elif hasattr(data, "read"):
        raw = _read_stream(data)
    elif data is None:
        raise InputError("no file was given; upload an image file")
    else:
        raise InputError(f"cannot read an upload of type {type(data).__name__}; give bytes, a path or a binary file")
    if len(raw) > _MAX_FILE_BYTES:
        raise InputError(_too_big_file_message(len(raw)))
    if not raw:
        raise InputError("the file is empty (0 bytes); upload an image file")
    return raw


def _read_stream(fh) -> bytes:
    """Read a binary stream from its current position, in chunks (never one huge up-front buffer)."""
    chunks, total = [], 0
    while True:
        chunk = fh.read(16 << 20)
        if isinstance(chunk, str):
            raise InputError("the file was opened as text; open it in binary mode ('rb')")
        if not chunk:
            break
        chunks.append(bytes(chunk))
        total += len(chunk)
        if total > _MAX_FILE_BYTES:
            raise InputError(_too_big_file_message(total))
    return b"".join(chunks)


def _too_big_file_message(size: int) -> str:
    return (f"the file is too large ({size / 2**20:,.0f} MB; the limit is {_MAX_FILE_BYTES / 2**20:,.0f} MB); "
            "upload a single slice or a smaller volume")


# ---------------------------------------------------------------------------
# Format detection
# ---------------------------------------------------------------------------


def sniff(raw: bytes) -> str | None:
    """Format key from magic bytes, or None. DICOM's "DICM" at 128 wins over
    anything in its preamble (dual-personality DICOM/TIFF files)."""
    if len(raw) >= 132 and raw[128:132] == b"DICM":
        return "dicom"
    if raw.startswith(b"\x1f\x8b"):
        return "gzip"
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if raw.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if raw[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if raw[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "webp"
    if raw[:2] == b"BM" and len(raw) >= 26:
        return "bmp"
    if len(raw) >= 4:
        for order in "<>":
            size = struct.unpack(order + "i", raw[:4])[0]
            if size == 348:
                return "nifti1"
            if size == 540:
                return "nifti2"
    return None


def _describe_unknown(raw: bytes) -> str:
    head = raw[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if raw.startswith(b"PK\x03\x04") or raw.startswith(b"PK\x05\x06"):
        what = "a ZIP archive; unzip it and upload one image from inside"
    elif head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head[:200]:
        what = "a web page (HTML), not an image; save the image itself, not the page"
    elif raw.startswith(b"%PDF"):
        what = "a PDF document; export the image from it as PNG"
    elif head.startswith(b"<?xml") or head.startswith(b"<svg"):
        what = "an XML/SVG document, not a pixel image"
    elif _looks_like_text(raw[:4096]):
        what = "a text file, not an image"
    else:
        what = "not an image format we recognise"
    return f"this file is {what}. Supported formats: {_SUPPORTED_TEXT}."


def _looks_like_text(chunk: bytes) -> bool:
    if not chunk or b"\x00" in chunk:
        return False
    try:
        text = chunk.decode("utf-8")
    except UnicodeDecodeError:
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * len(text)


def _load_bytes(raw: bytes, sel: _Selection, *, gz: bool) -> Slice:
    kind = sniff(raw)
    if kind == "gzip":
        if gz:
            raise InputError("this file is compressed twice (gzip inside gzip); decompress it and upload the image")
        return _load_bytes(gunzip_bounded(raw), sel, gz=True)
    if kind in ("png", "jpeg", "bmp", "gif", "webp"):
        with _damaged(_FORMAT_LABEL[kind]):
            s = _load_pillow(raw, kind, sel)
    elif kind == "tiff":
        with _damaged("TIFF"):
            s = _load_tiff(raw, sel)
    elif kind == "dicom":
        with _damaged("DICOM"):
            s = _load_dicom(raw, sel, has_preamble=True)
    elif kind in ("nifti1", "nifti2"):
        with _damaged("NIfTI"):
            s = _load_nifti(raw, 1 if kind == "nifti1" else 2, sel)
    elif _may_be_dicom_without_preamble(raw):
        with _damaged("DICOM"):  # only reached once the content looked like a DICOM dataset
            s = _load_dicom(raw, sel, has_preamble=False)
    else:
        raise InputError(_describe_unknown(raw))
    if gz:
        s = Slice(s.pixels, s.spacing, s.window, s.source, {**s.metadata, "container": "gzip"}, s.index, s.affine)
    return s


@contextlib.contextmanager
def _damaged(label: str):
    """Turn any library error inside a reader into an InputError naming the format."""
    try:
        yield
    except (InputError, MemoryError, RecursionError):
        raise
    except Exception as e:  # noqa: BLE001 - parsers of hostile files fail in every way imaginable
        raise InputError(f"this {label} file is damaged and cannot be read ({_short_reason(e)}); "
                         "export or download it again") from e


# ---------------------------------------------------------------------------
# gzip, decompressed incrementally and only as far as needed
# ---------------------------------------------------------------------------


class _Gunzip:
    """Incremental gzip reader: ``fill(n)`` decompresses until ``n`` bytes are out."""

    _CHUNK = 1 << 20

    def __init__(self, raw: bytes) -> None:
        self._src = memoryview(raw)
        self._pos = 0
        self._d = zlib.decompressobj(31)
        self._pending = b""
        self.out = bytearray()
        self.ended = False

    def fill(self, n: int) -> None:
        try:
            self._fill(n)
        except zlib.error:
            if not self.out:
                raise InputError("this .gz file is damaged and cannot be decompressed") from None
            self.ended = True  # keep what was decoded; the reader reports truncation if it matters

    def _fill(self, n: int) -> None:
        while len(self.out) < n and not self.ended:
            if self._d.eof:
                rest = self._d.unused_data + bytes(self._src[self._pos:self._pos + 2])
                if rest.startswith(b"\x1f\x8b"):  # another gzip member follows
                    self._pending = self._d.unused_data
                    self._d = zlib.decompressobj(31)
                    continue
                self.ended = True
                break
            if self._d.unconsumed_tail:
                chunk = self._d.unconsumed_tail
            elif self._pending:
                chunk, self._pending = self._pending, b""
            else:
                chunk = bytes(self._src[self._pos:self._pos + self._CHUNK])
                self._pos += len(chunk)
                if not chunk:
                    self.ended = True  # input ended before the gzip stream did (truncated)
                    break
            want = min(n - len(self.out), self._CHUNK)
            self.out += self._d.decompress(chunk, want)


def _nifti_vox_offset(head: bytes, kind: str) -> int:
    """Where a NIfTI's image data starts, from the first bytes of its header (0 when unreadable)."""
    import struct

    if len(head) < 348 + (192 if kind == "nifti2" else 0):
        return 0
    endian = "<" if struct.unpack("<i", head[:4])[0] in (348, 540) else ">"
    try:
        v = struct.unpack(endian + "f", head[108:112])[0] if kind == "nifti1" else struct.unpack(endian + "q", head[168:176])[0]
        return max(0, int(v)) if math.isfinite(v) else 0
    except (struct.error, OverflowError, ValueError):
        return 0


def gunzip_bounded(raw: bytes) -> bytes:
    g = _Gunzip(raw)
    g.fill(1024)
    head = bytes(g.out)
    kind = sniff(head) if head else None
    if kind in ("nifti1", "nifti2"):
        # the header and its extensions end where the image data starts (vox_offset)
        g.fill(min(_nifti_vox_offset(head, kind), _MAX_FILE_BYTES))
        hdr_info = nifti_header_info(bytes(g.out), 1 if kind == "nifti1" else 2)
        # Only as many bytes as the header says the image needs: trailing data is never inflated.
        g.fill(hdr_info.needed_bytes)
        del g.out[hdr_info.needed_bytes:]
        return bytes(g.out)
    if kind in ("png", "jpeg", "tiff", "bmp", "gif", "webp", "dicom") or _may_be_dicom_without_preamble(head):
        g.fill(_MAX_GUNZIP_OTHER_BYTES + 1)
        if len(g.out) > _MAX_GUNZIP_OTHER_BYTES:
            raise InputError(f"this compressed file expands to more than {_MAX_GUNZIP_OTHER_BYTES >> 20} MB; "
                             "upload the image uncompressed")
        return bytes(g.out)
    if kind == "gzip":
        raise InputError("this file is compressed twice (gzip inside gzip); decompress it and upload the image")
    if not head:
        raise InputError("this .gz file contains nothing (or is damaged); upload the uncompressed image")
    raise InputError("this .gz file does not contain an image we recognise (a NIfTI .nii.gz is expected). "
                     f"Supported formats: {_SUPPORTED_TEXT}.")


# ---------------------------------------------------------------------------
# Shared finishing: size checks, NaN check, default window
# ---------------------------------------------------------------------------


def _check_size(h: int, w: int, what: str = "image") -> None:
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


def _check_finite(px: np.ndarray, what: str = "image") -> None:
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


def _finish(px: np.ndarray, source: str, *, spacing=None, window=None, metadata=None, index=None,
            what: str = "image", affine=None) -> Slice:
    px = np.asarray(px)
    if px.ndim != 2:
        raise InputError(f"could not read this file: expected a 2-D image, got shape {px.shape}")
    _check_size(px.shape[0], px.shape[1], what)
    with np.errstate(all="ignore"):
        px = px.astype(np.float32)  # values beyond float32 become inf and are refused below
    _check_finite(px, what)
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


def _color_to_gray(rgb: np.ndarray, levels: float, sel: _Selection) -> tuple[np.ndarray, dict]:
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


# ---------------------------------------------------------------------------
# Raster images through Pillow
# ---------------------------------------------------------------------------


def _peek_size(raw: bytes, kind: str) -> tuple[int, int] | None:
    """(width, height) from the header bytes alone, where cheap; None if unknown."""
    try:
        if kind == "png" and raw[12:16] == b"IHDR":
            return struct.unpack(">II", raw[16:24])
        if kind == "gif":
            return struct.unpack("<HH", raw[6:10])
        if kind == "bmp":
            hsize = struct.unpack("<I", raw[14:18])[0]
            if hsize == 12:
                w, h = struct.unpack("<HH", raw[18:22])
            else:
                w, h = struct.unpack("<ii", raw[18:26])
            return abs(w), abs(h)
        if kind == "jpeg":
            i = 2
            while i + 9 < len(raw):
                if raw[i] != 0xFF:
                    return None
                marker = raw[i + 1]
                if marker == 0xFF:
                    i += 1
                    continue
                seglen = struct.unpack(">H", raw[i + 2:i + 4])[0]
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", raw[i + 5:i + 9])
                    return w, h
                i += 2 + seglen
    except struct.error:
        return None
    return None


def _pil():
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own bomb guard agrees with ours
    pil_log = logging.getLogger("PIL")
    if not pil_log.handlers:  # damaged uploads make Pillow log errors; keep them off stderr by default
        pil_log.addHandler(logging.NullHandler())
    return Image


def _load_pillow(raw: bytes, kind: str, sel: _Selection, *, page_count: int | None = None) -> Slice:
    Image = _pil()
    from PIL import ImageOps, UnidentifiedImageError

    label = _FORMAT_LABEL[kind]
    size = _peek_size(raw, kind)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        _check_size(size[1], size[0])
    pil_format = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "gif": "GIF", "webp": "WEBP", "tiff": "TIFF"}[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(raw), formats=[pil_format])
            w, h = im.size
            _check_size(h, w)
            n = int(getattr(im, "n_frames", 1) or 1) if page_count is None else page_count
            chosen = sel.take("page", n)
            if chosen:
                im.seek(chosen)
            im.load()
            if kind in ("jpeg", "webp", "png"):  # (TIFF: ignored, as on the tifffile path)
                im = ImageOps.exif_transpose(im)
            px, levels, bits, photometric = _pil_to_array(im)
        except InputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InputError(f"this {label} image is larger than the limit of 4096x4096 ({MAX_PIXELS:,}) pixels "
                             "per slice; downsample or crop it before uploading") from None
        except (UnidentifiedImageError, OSError, SyntaxError, EOFError, ValueError, struct.error, IndexError,
                KeyError, TypeError, ZeroDivisionError) as e:
            raise InputError(f"this {label} file is damaged or incomplete and cannot be opened ({_short_reason(e)}); "
                             "export or download it again") from None

    index: dict[str, tuple[int, int]] = {}
    if n > 1:
        index["page"] = (chosen, n)
    if px.ndim == 3:
        px, ch_index = _color_to_gray(px, levels, sel)
        index.update(ch_index)
    else:
        sel.take("channel", 1)
    window = (127.5, 255.0) if levels == 255 else None
    meta = {"format": label, "bits": bits, "photometric": photometric}
    return _finish(px, kind, window=window, metadata=meta, index=index)


def _pil_to_array(im) -> tuple[np.ndarray, float, str, str]:
    """Pillow image -> (array (H, W) or (H, W, 3), full-scale level, bits text, photometric text)."""
    mode = im.mode
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if (mode == "PA" or "transparency" in im.info) else "RGB")
        mode = im.mode
    if mode in ("1", "L"):
        a = np.asarray(im.convert("L") if mode == "1" else im)
        return a, 255.0, "1" if mode == "1" else "8", "gray"
    if mode in ("LA", "La"):
        a = np.asarray(im.convert("LA")).astype(np.float32)
        return a[..., 0] * (a[..., 1] / 255.0), 255.0, "8", "gray+alpha"
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16), 65535.0, "16", "gray"
    if mode == "I":
        a = np.asarray(im)
        levels = 65535.0 if (a.size and a.min() >= 0 and a.max() <= 65535) else float(2**31 - 1)
        return a, levels, "32", "gray"
    if mode == "F":
        return np.asarray(im), 0.0, "32f", "gray"
    if mode in ("RGBA", "RGBa"):
        a = np.asarray(im.convert("RGBA")).astype(np.float32)
        return a[..., :3] * (a[..., 3:4] / 255.0), 255.0, "8", "RGBA"
    if mode == "RGB":
        return np.asarray(im), 255.0, "8", "RGB"
    photometric = mode
    return np.asarray(im.convert("RGB")), 255.0, "8", photometric


# ---------------------------------------------------------------------------
# TIFF through tifffile (Pillow as fallback for codecs tifffile lacks)
# ---------------------------------------------------------------------------


def _load_tiff(raw: bytes, sel: _Selection) -> Slice:
    import tifffile

    tiff_log = logging.getLogger("tifffile")
    if not tiff_log.handlers:  # damaged uploads make tifffile log errors; keep them off stderr by default
        tiff_log.addHandler(logging.NullHandler())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tif = tifffile.TiffFile(io.BytesIO(raw))
        except Exception as e:  # noqa: BLE001 - any parse failure is a damaged file
            raise InputError(f"this TIFF file is damaged and cannot be opened ({_short_reason(e)})") from None
        with tif:
            try:
                n = len(tif.pages)
            except Exception as e:  # noqa: BLE001
                raise InputError(f"this TIFF file is damaged ({_short_reason(e)})") from None
            if n == 0:
                raise InputError("this TIFF file contains no images")
            chosen = sel.take("page", n)
            try:
                page = tif.pages[chosen]
                if not isinstance(page, tifffile.TiffPage):
                    page = page.aspage()
                h, w = int(page.imagelength), int(page.imagewidth)
            except InputError:
                raise
            except Exception as e:  # noqa: BLE001
                raise InputError(f"page {chosen} of this TIFF file is damaged ({_short_reason(e)})") from None
            _check_size(h, w)
            depth = int(getattr(page, "imagedepth", 1) or 1)
            samples = int(page.samplesperpixel or 1)
            if depth * h * w * samples > 4 * MAX_PIXELS:
                raise InputError("this TIFF page holds a 3-D block larger than the per-slice limit; "
                                 "export it as ordinary 2-D pages")
            for off, cnt in zip(page.dataoffsets, page.databytecounts):
                if off + cnt > len(raw):
                    raise InputError("this TIFF file is truncated (its image data stops before the end); "
                                     "export or download it again")
            photometric = int(page.photometric) if page.photometric is not None else 1
            if photometric not in (0, 1, 2, 3):  # CMYK, YCbCr, Lab, ...: let Pillow convert to RGB
                return _load_pillow(raw, "tiff", sel, page_count=n)
            try:
                arr = page.asarray()
            except Exception as e:  # noqa: BLE001
                if "imagecodecs" in str(e):  # LZW / JPEG / ... codec missing: Pillow decodes those
                    return _load_pillow(raw, "tiff", sel, page_count=n)
                raise InputError(f"page {chosen} of this TIFF file cannot be decoded ({_short_reason(e)}); "
                                 "save it uncompressed and try again") from None
            axes = page.axes
            bits = int(page.bitspersample or 8)
            colormap = page.colormap if photometric == 3 else None
            extrasamples = tuple(int(v) for v in (page.extrasamples or ()))

    arr = _tiff_to_yxs(np.asarray(arr), axes)
    if arr.dtype.kind == "c":
        raise InputError("this TIFF holds complex numbers, not an image; export the magnitude image")
    if arr.dtype.kind not in "buif":
        raise InputError(f"this TIFF stores {arr.dtype} samples, which are not supported; export 8/16-bit or float")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
        bits = 8
    photo_text = {0: "MINISWHITE", 1: "MINISBLACK", 2: "RGB", 3: "PALETTE"}[photometric]
    if arr.dtype.kind == "f":
        finite = arr[np.isfinite(arr)]
        levels = float(np.abs(finite).max()) if finite.size else 1.0
        levels = levels if levels > 0 else 1.0
        bits_text, eight_bit = f"{arr.dtype.itemsize * 8}f", False
    else:
        bits = min(max(bits, 1), arr.dtype.itemsize * 8)
        levels = float(np.iinfo(arr.dtype).max) if arr.dtype.kind == "i" else float(2**bits - 1)
        bits_text, eight_bit = str(bits), arr.dtype == np.uint8 and bits == 8

    if photometric == 3:
        if colormap is None or arr.ndim != 2 or arr.dtype.kind not in "ui":
            raise InputError("this palette TIFF has no usable colour table; export it as gray or RGB")
        cmap = np.asarray(colormap).astype(np.int64)
        if cmap.ndim != 2 or cmap.shape[0] != 3 or cmap.shape[1] == 0:
            raise InputError("this palette TIFF has no usable colour table; export it as gray or RGB")
        levels = 65535.0
        if cmap.size and cmap.max() > 255 and not (cmap % 257).any():  # 8-bit palette stored as 16-bit
            cmap, levels = cmap // 257, 255.0
        elif cmap.size and cmap.max() <= 255:
            levels = 255.0
        idx = np.clip(arr.astype(np.int64), 0, cmap.shape[1] - 1)
        arr = np.moveaxis(cmap[:, idx], 0, -1)
        eight_bit = levels == 255.0
    if arr.ndim == 3:
        s = arr.shape[2]
        base = 3 if (photometric in (2, 3) and s >= 3) else 1
        if s > base:  # extra samples: composite when declared as unassociated alpha, else drop
            alpha_kind = extrasamples[0] if extrasamples else 0
            main = arr[..., :base]
            if alpha_kind == 2:
                main = main.astype(np.float32) * (arr[..., base:base + 1].astype(np.float32) / levels)
            arr = main
        if arr.shape[2] == 1:
            arr = arr[..., 0]
    if photometric == 0:  # white is zero: invert so bright = high signal
        if arr.dtype.kind == "f":
            finite = arr[np.isfinite(arr)]
            arr = (finite.max() + finite.min()) - arr if finite.size else arr
        else:
            arr = levels - arr.astype(np.float64)
    index: dict[str, tuple[int, int]] = {"page": (chosen, n)} if n > 1 else {}
    if arr.ndim == 3:
        arr, ch_index = _color_to_gray(arr, levels, sel)
        index.update(ch_index)
    else:
        sel.take("channel", 1)
    meta = {"format": "TIFF", "bits": bits_text, "photometric": photo_text}
    return _finish(arr, "tiff", window=(127.5, 255.0) if eight_bit else None, metadata=meta, index=index)


def _tiff_to_yxs(arr: np.ndarray, axes: str) -> np.ndarray:
    """tifffile page array with ``axes`` (e.g. 'YX', 'YXS', 'SYX', 'ZYXS') -> (Y, X) or (Y, X, S)."""
    if len(axes) != arr.ndim:
        axes = ("YX" if arr.ndim == 2 else "YXS")[: arr.ndim] if arr.ndim in (2, 3) else axes
    keep = []
    for i, ax in enumerate(axes):
        if ax in ("Y", "X", "S"):
            keep.append(i)
        elif arr.shape[i] != 1:
            raise InputError("this TIFF page holds a 3-D block of images; export it as ordinary 2-D pages")
    squeeze = tuple(i for i in range(arr.ndim) if i not in keep)
    arr = arr.squeeze(axis=squeeze) if squeeze else arr
    axes = "".join(a for a in axes if a in "YXS")
    order = [axes.index(a) for a in "YXS" if a in axes]
    return np.transpose(arr, order)


# ---------------------------------------------------------------------------
# DICOM through pydicom
# ---------------------------------------------------------------------------

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _may_be_dicom_without_preamble(raw: bytes) -> bool:
    """A bare DICOM dataset starts with a group 0002 or 0008 tag (either byte order)."""
    if len(raw) < 8:
        return False
    return raw[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def _looks_like_dicom_dataset(ds) -> bool:
    """For files without the 'DICM' marker: does the parsed dataset look real?"""
    try:
        known = ("SOPClassUID", "Modality", "Rows", "Columns", "StudyInstanceUID", "SeriesInstanceUID")
        return sum(k in ds for k in known) >= 2
    except Exception:  # noqa: BLE001
        return False


def dicom_functional(ds, frame: int, sequence: str, keyword: str):
    """A value from the per-frame, then shared functional groups (enhanced DICOM), then the top level."""
    for groups, i in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        try:
            item = getattr(ds, groups)[i]
            inner = getattr(item, sequence)[0]
            value = getattr(inner, keyword)
            if value is not None and value != "":
                return value
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            continue
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001
        return None
    return None if value == "" else value


def _first_number(value) -> float | None:
    if value is None:
        return None
    try:
        if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
            if len(value) == 0:
                return None
            value = value[0]
        v = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return v if math.isfinite(v) else None


def _dicom_spacing(ds, frame: int) -> tuple[float, float] | None:
    value = dicom_functional(ds, frame, "PixelMeasuresSequence", "PixelSpacing")
    if value is None:
        value = ds.get("ImagerPixelSpacing")
    try:
        sp = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(sp) != 2 or not all(math.isfinite(v) and v > 0 for v in sp):
        return None
    return sp


def _clean_text(value, limit: int = 64) -> str | None:
    if value is None:
        return None
    text = " ".join(str(value).split())
    text = "".join(ch for ch in text if ch.isprintable())
    return text[:limit] or None


def _dicom_metadata(ds, photometric: str, bits: int | None) -> dict[str, str]:
    """Whitelisted, non-identifying fields only."""
    meta: dict[str, str] = {"format": "DICOM", "photometric": photometric}
    if bits:
        meta["bits"] = str(bits)
    for keyword, key in (("Modality", "modality"), ("SeriesDescription", "series_description"),
                         ("BodyPartExamined", "body_part")):
        text = _clean_text(ds.get(keyword))
        if text:
            meta[key] = text
    for keyword, key, unit in (("MagneticFieldStrength", "field_strength", "T"),
                               ("SliceThickness", "slice_thickness", "mm")):
        v = _first_number(ds.get(keyword))
        if v is not None and v > 0:
            meta[key] = f"{v:g} {unit}"
    return meta


def _load_dicom(raw: bytes, sel: _Selection, *, has_preamble: bool) -> Slice:
    import pydicom
    from pydicom import uid as dicom_uid
    from pydicom.dataset import FileMetaDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(raw), force=True)
        except Exception as e:  # noqa: BLE001
            if not has_preamble:
                raise InputError(_describe_unknown(raw)) from None
            raise InputError(f"this DICOM file is damaged and its header cannot be read ({_short_reason(e)})") from None
        try:
            pixel_kw = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
            if not has_preamble and not _looks_like_dicom_dataset(ds):
                raise InputError(_describe_unknown(raw))
        except InputError:
            raise
        except Exception:  # noqa: BLE001 - garbage that pydicom parsed lazily
            raise InputError(_describe_unknown(raw) if not has_preamble else
                             "this DICOM file is damaged and its header cannot be read") from None
        if pixel_kw is None:
            raise InputError("this DICOM file has no image (pixel data); it may be a report, a structured document "
                             "or a series index. Upload an image file of the series instead")
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            nframes = int(ds.get("NumberOfFrames") or 1)
            spp = int(ds.get("SamplesPerPixel") or 1)
            bits_alloc = int(ds.get("BitsAllocated") or 0)
            bits_stored = int(ds.get("BitsStored") or bits_alloc or 0)
            photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper()
        except (AttributeError, TypeError, ValueError, KeyError):
            raise InputError("this DICOM file's image description (rows, columns, frames) "
                             "is missing or damaged") from None
        if nframes < 1:
            nframes = 1
        _check_size(rows, cols, "DICOM image")
        if rows * cols * nframes > MAX_VOLUME_VOXELS:
            raise InputError(f"this DICOM holds {nframes} frames of {cols}x{rows} ({rows * cols * nframes:,} voxels); "
                             f"the limit is {MAX_VOLUME_VOXELS:,}. Export fewer frames")
        if spp not in (1, 3):
            raise InputError(f"this DICOM has {spp} samples per pixel; "
                             "only gray (1) or colour (3) images are supported")
        chosen = sel.take("frame", nframes)

        meta_ds = getattr(ds, "file_meta", None)
        ts = meta_ds.get("TransferSyntaxUID") if meta_ds is not None else None
        if not ts:
            implicit, little = ds.original_encoding
            implicit = True if implicit is None else implicit
            little = True if little is None else little
            ts = (dicom_uid.ImplicitVRLittleEndian if implicit else
                  dicom_uid.ExplicitVRLittleEndian if little else dicom_uid.ExplicitVRBigEndian)
            if meta_ds is None:
                ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ts
        ts = dicom_uid.UID(str(ts))
        ts_name = ts.name if ts.is_valid else str(ts)
        try:
            ds.pixel_array_options(index=chosen if nframes > 1 else None)
            arr = np.asarray(ds.pixel_array)
        except Exception as e:  # noqa: BLE001
            if ts.is_transfer_syntax and ts.is_compressed and _can_decode(ts):
                # a decoder is here (intact files of this syntax decode): this file's data is what is wrong
                raise InputError(f"this DICOM's compressed pixel data ('{ts_name}') is damaged and cannot be "
                                 "decompressed; export it again") from None
            if not (ts.is_transfer_syntax and not ts.is_compressed):
                how = "compressed as" if ts.is_transfer_syntax else "stored with the transfer syntax"
                raise InputError(f"this DICOM's pixel data is {how} '{ts_name}', which this server cannot "
                                 "decode. Export the images uncompressed (Explicit VR Little Endian) and upload "
                                 "again") from None
            raise InputError(f"this DICOM file's pixel data is incomplete or damaged ({_short_reason(e)}); "
                             "export it again") from None
        if arr.ndim == 4 or (arr.ndim == 3 and spp == 1):  # all frames came back: pick ours
            arr = arr[chosen]
        if arr.shape[:2] != (rows, cols):
            raise InputError("this DICOM file's pixel data does not match its stated rows and columns")

        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = np.asarray(apply_color_lut(arr, ds))
            levels = 65535.0 if arr.dtype.itemsize > 1 else 255.0
        else:
            levels = float(2 ** bits_stored - 1) if 0 < bits_stored <= 32 else 255.0

        window = None
        if arr.ndim == 2:
            px = dicom_rescale(ds, arr, chosen)
            wc = _first_number(dicom_functional(ds, chosen, "FrameVOILUTSequence", "WindowCenter"))
            ww = _first_number(dicom_functional(ds, chosen, "FrameVOILUTSequence", "WindowWidth"))
            if photometric == "MONOCHROME1":
                mirror = float(np.nanmin(px)) + float(np.nanmax(px)) if px.size else 0.0
                px = mirror - px
                if wc is not None:
                    wc = mirror - wc
            if wc is not None and ww is not None and ww > 0:
                window = (wc, ww)
            index: dict[str, tuple[int, int]] = {}
            sel.take("channel", 1)
        else:
            px, index = _color_to_gray(arr[..., :3], levels, sel)
        if nframes > 1:
            index = {"frame": (chosen, nframes), **index}
        meta = _dicom_metadata(ds, photometric, bits_stored or None)
        spacing = _dicom_spacing(ds, chosen)
        affine = _dicom_affine(ds, chosen, spacing)
    return _finish(px, "dicom", spacing=spacing, window=window, metadata=meta, index=index, what="DICOM image",
                   affine=affine)


def _dicom_affine(ds, frame: int, spacing) -> np.ndarray | None:
    """(column, row, 0, 1) -> RAS mm from ImagePositionPatient / ImageOrientationPatient (per frame when the
    file has functional groups) and the pixel spacing; None when the file does not place the slice."""
    if spacing is None:
        return None
    try:
        ipp = dicom_functional(ds, frame, "PlanePositionSequence", "ImagePositionPatient")
        iop = dicom_functional(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
        if ipp is None or iop is None:
            return None
        pos = np.array([float(v) for v in ipp], dtype=np.float64)
        cos = np.array([float(v) for v in iop], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if pos.shape != (3,) or cos.shape != (6,) or not (np.isfinite(pos).all() and np.isfinite(cos).all()):
        return None
    row_dir, col_dir = cos[:3], cos[3:]  # along a row (column index grows), along a column (row index grows)
    if not (0.9 < np.linalg.norm(row_dir) < 1.1 and 0.9 < np.linalg.norm(col_dir) < 1.1):
        return None
    row_mm, col_mm = spacing
    thick = _first_number(ds.get("SpacingBetweenSlices")) or _first_number(ds.get("SliceThickness")) or 1.0
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_mm
    lps[:3, 1] = col_dir * row_mm
    lps[:3, 2] = np.cross(row_dir, col_dir) * (thick if thick > 0 else 1.0)
    lps[:3, 3] = pos
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM's LPS -> NIfTI's RAS


def _can_decode(ts) -> bool:
    """Whether pydicom has a working decoder plugin for this transfer syntax here."""
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(ts).is_available)
    except Exception:  # noqa: BLE001 - unknown syntax, old pydicom
        return False


def dicom_rescale(ds, arr: np.ndarray, frame: int) -> np.ndarray:
    """Stored values -> modality units (Modality LUT, or slope/intercept incl. enhanced per-frame groups)."""
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    slope = _first_number(dicom_functional(ds, frame, "PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _first_number(dicom_functional(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept"))
    px = arr.astype(np.float64)
    if slope is not None and slope != 0 and slope != 1:
        px = px * slope
    if intercept:
        px = px + intercept
    return px


# ---------------------------------------------------------------------------
# NIfTI through nibabel, reading only the chosen slice
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _NiftiInfo:
    header: object  # nibabel Nifti1Header / Nifti2Header, checked and fixed as nibabel.load would
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int
    needed_bytes: int
    zero_pixdim: bool = False  # the file's voxel size is 0 (nibabel's fix makes it 1 mm): spacing unknown


class _SilentLog:
    """Stands in for nibabel's global logger so header fixes are not printed (thread-safe, unlike
    nibabel.imageglobals.LoggingOutputSuppressor)."""

    level = 0

    def log(self, *args, **kwargs) -> None:
        pass


def nifti_header_info(raw: bytes, version: int) -> _NiftiInfo:
    """Validate a NIfTI header from its bytes; nothing of the image data is touched."""
    import nibabel as nib

    hsize = 348 if version == 1 else 540
    if len(raw) < hsize:
        raise InputError("this NIfTI file is truncated: its header is incomplete")
    magic = raw[344:348] if version == 1 else raw[4:8]
    if version == 1 and magic[:3] == b"ni1":
        raise InputError("this is the header (.hdr) of a two-file NIfTI pair; upload a single-file .nii or .nii.gz")
    if version == 1 and magic[:3] != b"n+1":
        raise InputError("this looks like an Analyze 7.5 header (.hdr), not a single-file NIfTI; "
                         "convert it to .nii or .nii.gz")
    if version == 2 and magic[:3] != b"n+2":
        raise InputError("this NIfTI-2 file's header is damaged (bad magic); export it again")
    header_class = nib.Nifti1Header if version == 1 else nib.Nifti2Header
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # the whole file: nibabel reads the header extensions (AFNI, CIFTI, DICOM...) that follow it
            hdr = header_class.from_fileobj(io.BytesIO(raw), check=False)
            # nibabel's fix turns a zero pixdim into 1 mm: remember that the file gave none
            zero_pixdim = bool(np.any(np.asarray(hdr["pixdim"][1:4]) == 0)) and int(hdr["sform_code"]) == 0
            hdr.check_fix(logger=_SilentLog(), error_level=40)  # what nibabel.load does, minus the printing
            dim = [int(v) for v in hdr["dim"]]
        except Exception as e:  # noqa: BLE001
            raise InputError(f"this NIfTI file's header is damaged ({_short_reason(e)}); export it again") from None
        intent = int(hdr["intent_code"])
        if 3000 <= intent <= 3099 or any(int(code) == 32 for code, _ in _extension_codes(hdr)):
            raise InputError("this is a CIFTI-2 file (grayordinate/surface data, not an image volume); "
                             "upload a NIfTI image volume instead")
        ndim = dim[0]
        if not 1 <= ndim <= 7:
            raise InputError(f"this NIfTI file's header is damaged: it claims {ndim} dimensions (1 to 7 allowed)")
        shape = tuple(dim[1:ndim + 1])
        if any(d <= 0 for d in shape):
            raise InputError(f"this NIfTI file's header is damaged: its image size {shape} has zero or negative sides")
        voxels = math.prod(shape)
        if voxels > MAX_VOLUME_VOXELS:
            raise InputError(f"this NIfTI volume has {'x'.join(map(str, shape))} = {voxels:,} voxels; the limit is "
                             f"{MAX_VOLUME_VOXELS:,} (512x512x256). Crop or downsample it, or export fewer volumes")
        try:
            dtype = np.dtype(hdr.get_data_dtype())
            offset = int(hdr.get_data_offset())
        except Exception as e:  # noqa: BLE001
            raise InputError(f"this NIfTI file's header is damaged ({_short_reason(e)})") from None
    if dtype.kind == "c":
        raise InputError("this NIfTI holds complex numbers; export the magnitude image")
    if dtype.kind not in "biuf":
        raise InputError(f"this NIfTI stores {dtype} voxels (colour or structured data); export a gray-scale image")
    if offset < hsize or offset > _MAX_FILE_BYTES:
        raise InputError("this NIfTI file's header is damaged: the image data offset is invalid")
    return _NiftiInfo(hdr, shape, dtype, offset, offset + voxels * dtype.itemsize, zero_pixdim)


def _extension_codes(hdr) -> list[tuple[int, object]]:
    """(code, extension) of each NIfTI header extension (32 = CIFTI)."""
    try:
        return [(int(e.get_code()), e) for e in hdr.extensions]
    except Exception:  # noqa: BLE001
        return []


def _load_nifti(raw: bytes, version: int, sel: _Selection) -> Slice:
    import nibabel as nib

    info = nifti_header_info(raw, version)
    if len(raw) < info.needed_bytes:
        raise InputError(f"this NIfTI file is truncated: the header describes {info.needed_bytes:,} bytes "
                         f"but the file has {len(raw):,}. Download or export it again")
    shape = list(info.shape)
    while len(shape) > 4 and shape[-1] == 1:
        shape.pop()
    if len(shape) > 4:
        raise InputError(f"this NIfTI has {len(shape)} dimensions {tuple(shape)}; only 2-D, 3-D and 4-D "
                         "(time/series) images are supported")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # The proxy reads only the voxels a slicing asks for, scaled by scl_slope/scl_inter.
            dataobj = nib.arrayproxy.ArrayProxy(io.BytesIO(raw), info.header)
            affine = np.asarray(info.header.get_best_affine(), dtype=np.float64)
        except Exception as e:  # noqa: BLE001
            raise InputError(f"this NIfTI file cannot be read ({_short_reason(e)})") from None
        data_ndim = len(dataobj.shape)
        shape3 = (list(shape) + [1, 1])[:3]
        nvol = shape[3] if len(shape) == 4 else 1

        ornt, known = _orientation(affine)
        # canonical axis j <- input axis perm[j]; sign[j] = +1 when input index increases along +j
        perm = [0, 0, 0]
        sign = [1, 1, 1]
        for i in range(3):
            perm[int(ornt[i, 0])] = i
            sign[int(ornt[i, 0])] = int(ornt[i, 1])
        singletons = [i for i in range(3) if shape3[i] == 1]
        through = int(ornt[singletons[0], 0]) if len(singletons) == 1 else 2  # canonical axis across the plane
        row_axis, col_axis = {2: (1, 0), 1: (2, 0), 0: (2, 1)}[through]
        plane = {2: "axial", 1: "coronal", 0: "sagittal"}[through]
        i_t = perm[through]
        n_t = shape3[i_t]
        h, w = shape3[perm[row_axis]], shape3[perm[col_axis]]
        _check_size(h, w, "NIfTI slice")

        vol = sel.take("volume", nvol)
        k = sel.take("slice", n_t, default=None)
        if k is None:
            k_in = _most_signal_slice(dataobj, data_ndim, i_t, n_t, vol) if n_t > 1 else 0
            k = k_in if sign[through] > 0 else n_t - 1 - k_in
        else:
            k_in = k if sign[through] > 0 else n_t - 1 - k

        block = _read_block(dataobj, data_ndim, i_t, slice(k_in, k_in + 1), vol)
        block = np.take(block, 0, axis=i_t) if i_t < block.ndim else block
        rest = [i for i in range(3) if i != i_t][: block.ndim]
        # arrange as (row input axis, col input axis)
        if rest and rest[0] != perm[row_axis]:
            block = block.T
        # display: row 0 = most positive along the row axis (anterior / superior),
        # column 0 = most positive along the column axis (patient's right / anterior)
        if sign[row_axis] > 0:
            block = block[::-1, :]
        if sign[col_axis] > 0:
            block = block[:, ::-1]
        px = np.ascontiguousarray(block)
        # (column, row, 0, 1) of the displayed slice -> input voxel (i, j, k, 1) -> world
        to_voxel = np.zeros((4, 4))
        to_voxel[3, 3] = 1.0
        for disp, axis in ((0, col_axis), (1, row_axis)):
            i_in, n_in = perm[axis], shape3[perm[axis]]
            if sign[axis] > 0:  # flipped for display: index n-1-d
                to_voxel[i_in, disp], to_voxel[i_in, 3] = -1.0, n_in - 1.0
            else:
                to_voxel[i_in, disp] = 1.0
        to_voxel[i_t, 2] = 1.0  # the third axis crosses the plane (one slice thick)
        to_voxel[i_t, 3] = float(k_in)
        slice_affine = affine @ to_voxel if known and not info.zero_pixdim else None

    with np.errstate(over="ignore", invalid="ignore"):  # a damaged affine must not warn; it just gives no spacing
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    spacing = None
    row_mm, col_mm = float(zooms[perm[row_axis]]), float(zooms[perm[col_axis]])
    if known and not info.zero_pixdim and all(math.isfinite(v) and v > 0 for v in (row_mm, col_mm)):
        spacing = (row_mm, col_mm)
    index: dict[str, tuple[int, int]] = {}
    if n_t > 1:
        index["slice"] = (k, n_t)
    if nvol > 1:
        index["volume"] = (vol, nvol)
    sel.take("channel", 1)
    stored = "".join(nib.orientations.ornt2axcodes(ornt)) if known else "unknown"
    meta = {
        "format": "NIfTI",
        "nifti_version": str(version),
        "datatype": str(info.dtype),
        "bits": f"{info.dtype.itemsize * 8}{'f' if info.dtype.kind == 'f' else ''}",
        "stored_axes": stored,
        "plane": plane,
        "orientation": ("radiological: anterior at top, patient's right on the left" if plane == "axial" else
                        "radiological: superior at top, patient's right on the left" if plane == "coronal" else
                        "superior at top, anterior on the left") if known else
                       "unknown (the header has no valid orientation): stored axes taken as RAS",
    }
    return _finish(px, "nifti", spacing=spacing, metadata=meta, index=index, what="slice", affine=slice_affine)


def _orientation(affine: np.ndarray) -> tuple[np.ndarray, bool]:
    """nibabel's io_orientation, or the identity (stored = RAS) when the affine is unusable."""
    import nibabel as nib

    identity = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        return identity, False
    try:
        ornt = nib.orientations.io_orientation(affine)
    except Exception:  # noqa: BLE001
        return identity, False
    if ornt.shape != (3, 2) or not np.isfinite(ornt).all() or sorted(ornt[:, 0].astype(int)) != [0, 1, 2]:
        return identity, False
    return ornt, True


def _read_block(dataobj, data_ndim: int, axis: int, span: slice, vol: int) -> np.ndarray:
    """float32 block: ``span`` along input spatial ``axis``, full extent elsewhere, volume ``vol``.

    Returns an array over the first min(3, data_ndim) axes (2-D data keeps 2 axes)."""
    slicer: list = [slice(None)] * data_ndim
    for d in range(3, data_ndim):
        slicer[d] = vol if d == 3 else 0
    if axis < data_ndim:
        slicer[axis] = span
    with np.errstate(all="ignore"):
        return np.asarray(dataobj[tuple(slicer)]).astype(np.float32)


def _most_signal_slice(dataobj, data_ndim: int, axis: int, n: int, vol: int) -> int:
    """Input index of the slice with the largest sum of max(v - p10, 0), p10 = the volume's 10th percentile.

    Reads the volume in chunks (bounded memory); the percentile comes from a
    sample of at most ~64 slices. Non-finite voxels are ignored here (the
    chosen slice is checked for them afterwards). Ties -> the middle slice."""
    step = max(1, math.ceil(n / 64))
    sample = _read_block(dataobj, data_ndim, axis, slice(0, n, step), vol)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return n // 2
    p10 = float(np.percentile(finite, 10))
    per_slice = max(1, math.prod(dataobj.shape[:3]) // n)
    chunk = max(1, (8 << 20) // per_slice)
    sums = np.zeros(n, dtype=np.float64)
    other = tuple(d for d in range(3) if d != axis and d < data_ndim)
    for start in range(0, n, chunk):
        block = _read_block(dataobj, data_ndim, axis, slice(start, min(n, start + chunk)), vol)
        excess = np.where(np.isfinite(block), np.maximum(block.astype(np.float64) - p10, 0.0), 0.0)
        part = excess.sum(axis=other) if other else excess
        sums[start:start + part.shape[0]] = part
    if np.all(sums == sums[0]):
        return n // 2
    return int(np.argmax(sums))
