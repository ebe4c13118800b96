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
import os
from typing import BinaryIO, Protocol

from bt_demo.errors import InputError
from bt_demo.io.dicom import BARE_DICOM, DicomReader
from bt_demo.io.nifti import NiftiReader
from bt_demo.io.raster import PillowReader, TiffReader
from bt_demo.io.slice import Selection, Slice, short_reason
from bt_demo.io.sniff import describe_unknown, gunzip_bounded, may_be_dicom_without_preamble, read_upload, sniff

__all__ = ["READERS", "Reader", "load_slice"]

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
    sel = Selection(page=page, frame=frame, slice=slice_index, volume=volume, channel=channel)
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
        raise InputError(f"could not read this file: {short_reason(e)}") from e


class Reader(Protocol):
    """One file format: ``accepts(kind)`` for a :func:`~bt_demo.io.sniff.sniff` key, ``read`` -> one Slice.

    ``label`` names the format in the message of a damaged file. ``read`` takes the whole file's bytes and the
    user's :class:`~bt_demo.io.slice.Selection`, and raises :class:`InputError` for what it refuses.
    """

    label: str

    def accepts(self, kind: str | None) -> bool: ...

    def read(self, raw: bytes, sel: Selection) -> Slice: ...


READERS: tuple[Reader, ...] = (
    *(PillowReader(kind) for kind in ("png", "jpeg", "bmp", "gif", "webp")),
    TiffReader(),
    DicomReader(has_preamble=True),
    NiftiReader(1),
    NiftiReader(2),
    DicomReader(has_preamble=False),  # only reached once the content looked like a DICOM dataset
)
"""Every reader, one per format (and per variant), asked in order; the first that accepts the kind reads."""


def _load_bytes(raw: bytes, sel: Selection, *, gz: bool) -> Slice:
    kind = sniff(raw)
    if kind == "gzip":
        if gz:
            raise InputError("this file is compressed twice (gzip inside gzip); decompress it and upload the image")
        return _load_bytes(gunzip_bounded(raw), sel, gz=True)
    if kind is None and may_be_dicom_without_preamble(raw):
        kind = BARE_DICOM
    reader = next((r for r in READERS if r.accepts(kind)), None)
    if reader is None:
        raise InputError(describe_unknown(raw))
    with _damaged(reader.label):
        s = reader.read(raw, sel)
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
        raise InputError(f"this {label} file is damaged and cannot be read ({short_reason(e)}); "
                         "export or download it again") from e
