"""DICOM through pydicom: one frame of any uncompressed (or Pillow-decodable) file, with or without preamble."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np

from bt_demo.errors import InputError
from bt_demo.io.slice import MAX_VOLUME_VOXELS, Selection, Slice, check_size, color_to_gray, finish, short_reason
from bt_demo.io.sniff import describe_unknown

__all__ = ["BARE_DICOM", "DicomReader", "dicom_functional", "dicom_rescale"]

# ---------------------------------------------------------------------------
# DICOM through pydicom
# ---------------------------------------------------------------------------

BARE_DICOM = "dicom-without-preamble"
"""The kind :class:`DicomReader` ``(has_preamble=False)`` accepts: content without the "DICM" marker that
:func:`~bt_demo.io.sniff.may_be_dicom_without_preamble` let through (``sniff`` itself says ``None``)."""


class DicomReader:
    """DICOM through pydicom: one frame (``frame``) of a single- or multi-frame file.

    ``has_preamble=True`` reads what ``sniff`` called ``"dicom"``; ``False`` reads a bare dataset (no 128-byte
    preamble): content that is no dataset after all gets the "not an image format" message, not "damaged".
    """

    label = "DICOM"

    def __init__(self, *, has_preamble: bool) -> None:
        self.has_preamble = has_preamble

    def accepts(self, kind: str | None) -> bool:
        return kind == ("dicom" if self.has_preamble else BARE_DICOM)

    def read(self, raw: bytes, sel: Selection) -> Slice:
        return _load_dicom(raw, sel, has_preamble=self.has_preamble)


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")



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


def _load_dicom(raw: bytes, sel: Selection, *, has_preamble: bool) -> Slice:
    import pydicom
    from pydicom import uid as dicom_uid
    from pydicom.dataset import FileMetaDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(raw), force=True)
        except Exception as e:  # noqa: BLE001
            if not has_preamble:
                raise InputError(describe_unknown(raw)) from None
            raise InputError(f"this DICOM file is damaged and its header cannot be read ({short_reason(e)})") from None
        try:
            pixel_kw = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
            if not has_preamble and not _looks_like_dicom_dataset(ds):
                raise InputError(describe_unknown(raw))
        except InputError:
            raise
        except Exception:  # noqa: BLE001 - garbage that pydicom parsed lazily
            raise InputError(describe_unknown(raw) if not has_preamble else
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
        check_size(rows, cols, "DICOM image")
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
            raise InputError(f"this DICOM file's pixel data is incomplete or damaged ({short_reason(e)}); "
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
            px, index = color_to_gray(arr[..., :3], levels, sel)
        if nframes > 1:
            index = {"frame": (chosen, nframes), **index}
        meta = _dicom_metadata(ds, photometric, bits_stored or None)
        spacing = _dicom_spacing(ds, chosen)
        affine = _dicom_affine(ds, chosen, spacing)
    return finish(px, "dicom", spacing=spacing, window=window, metadata=meta, index=index, what="DICOM image",
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
