"""Any volume upload -> one :class:`Volume`: slices in the app's display orientation plus the geometry that
puts every voxel in patient space.

Accepted: a NIfTI-1/-2 volume (``.nii`` / ``.nii.gz``, header extensions allowed; a 4-D file gives one of
its volumes), a DICOM series (several files, or a zip of them; sorted by position along the slice normal,
never by file name; one series chosen when several are present), and a multi-frame DICOM whose frames
carry their positions. Unequal slice spacing, missing slices and mixed orientations are refused with a
message that says which, never turned silently into a wrong volume.

Display orientation (the same as :func:`bt_demo.imaging.load_slice` shows an axial NIfTI slice): the
volume is brought to the closest canonical RAS+ orientation (nibabel), then ``data[z, row, col]`` with
``z`` from inferior to superior, row 0 anterior, column 0 the patient's right (radiological).
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bt_demo.errors import InputError
from bt_demo.imaging import MAX_PIXELS, MAX_VOLUME_VOXELS, MIN_SIDE

MAX_SERIES_FILES = 2048
SPACING_TOLERANCE = 0.05  # relative difference of slice gaps accepted as equal (rounding in headers)


@dataclass(frozen=True)
class Volume:
    """data: float32 (Z, H, W) in display orientation (module docstring), source units.

    affine: float64 (4, 4), ``(column, row, z, 1)`` of ``data`` -> world RAS mm, or None (no geometry:
    slices stacked from 2-D images). spacing: ``(z_mm, row_mm, col_mm)`` or None. source: "nifti",
    "dicom-series", "dicom-multiframe" or "slices". source_affine / source_shape: the file's own voxel
    grid (what exports are written in), or None. metadata: non-identifying fields. series: for DICOM,
    the source datasets in ``z`` order (highdicom needs them for a SEG); never shown or exported as such.
    """

    data: np.ndarray
    affine: np.ndarray | None
    spacing: tuple[float, float, float] | None
    source: str
    source_affine: np.ndarray | None = None
    source_shape: tuple[int, int, int] | None = None
    metadata: dict = field(default_factory=dict)
    series: tuple = ()
    window: tuple[float, float] | None = None  # the display/engine window (center, width); None: from the data

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.data.shape)

    @property
    def voxel_ml(self) -> float | None:
        """Volume of one voxel in mL (None when the spacing is unknown)."""
        return None if self.spacing is None else float(np.prod(self.spacing)) / 1000.0

    def to_canonical(self, arr: np.ndarray) -> np.ndarray:
        """A (Z, H, W) array in display order -> the canonical RAS array (X, Y, Z)."""
        return np.ascontiguousarray(np.asarray(arr)[:, ::-1, ::-1].transpose(2, 1, 0))

    @classmethod
    def from_slices(cls, slices, spacing=None, window=None) -> "Volume":
        """2-D slices of one series (e.g. the LGG PNGs of one patient, in order) with no geometry.

        window: (center, width); 8-bit slices (uint8) default to (127.5, 255), as the app shows an 8-bit
        image, so the engines see exactly what the single-slice path gives them."""
        arrs = [np.asarray(s) for s in slices]
        if window is None and all(a.dtype == np.uint8 for a in arrs):
            window = (127.5, 255.0)
        data = np.stack([a.astype(np.float32) for a in arrs])
        sp = None if spacing is None else tuple(float(v) for v in spacing)
        return cls(data, None, sp, "slices", window=window)


def _check_voxels(shape) -> None:
    n = int(np.prod(shape))
    if n > MAX_VOLUME_VOXELS:
        raise InputError(f"this volume has {'x'.join(map(str, shape))} = {n:,} voxels; the limit is "
                         f"{MAX_VOLUME_VOXELS:,} (512x512x256). Crop or downsample it")


def _from_nifti_image(img, source: str, meta: dict, series: tuple = ()) -> Volume:
    """Any nibabel spatial image (3-D, or 4-D: its first volume) -> Volume in display orientation."""
    import nibabel as nib

    shape = tuple(int(v) for v in img.shape)
    if len(shape) == 4:
        meta = meta | {"volumes_in_file": str(shape[3]), "volume_used": "1"}
    elif len(shape) != 3:
        raise InputError(f"volume mode needs a 3-D (or 4-D) image; this one has shape {shape}")
    _check_voxels(shape[:3])
    if min(shape[:2]) < MIN_SIDE or shape[0] * shape[1] > MAX_PIXELS:
        raise InputError(f"slices of {shape[0]}x{shape[1]} voxels are outside the slice limits "
                         f"({MIN_SIDE} px per side, {MAX_PIXELS:,} px per slice)")
    data = np.asarray(img.dataobj[..., 0] if len(shape) == 4 else img.dataobj, dtype=np.float32)
    if not np.isfinite(data).all():
        raise InputError(f"this volume has {int((~np.isfinite(data)).sum()):,} NaN or infinite voxels; export it again")
    base = nib.Nifti1Image(data, img.affine)
    canon = nib.as_closest_canonical(base)
    cdata = np.asarray(canon.dataobj, dtype=np.float32)  # (X, Y, Z) RAS
    X, Y, Z = cdata.shape
    disp = np.ascontiguousarray(cdata[::-1, ::-1, :].transpose(2, 1, 0))  # (Z, Y, X): row 0 anterior, col 0 right
    # (col, row, z) -> canonical voxel (X-1-col, Y-1-row, z) -> world
    to_canon = np.array([[-1, 0, 0, X - 1], [0, -1, 0, Y - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float64)
    affine = canon.affine @ to_canon
    zooms = np.sqrt((canon.affine[:3, :3] ** 2).sum(axis=0))
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    if not all(math.isfinite(v) and 0 < v <= 100 for v in spacing):
        spacing = None
    return Volume(disp, affine, spacing, source, np.asarray(img.affine, dtype=np.float64), shape[:3],
                  meta | {"stored_axes": "".join(nib.orientations.aff2axcodes(img.affine))}, series)


def _nifti_volume(raw: bytes) -> Volume:
    import nibabel as nib

    from bt_demo.imaging import _gunzip, _nifti_header_info, _sniff

    if raw[:2] == b"\x1f\x8b":
        raw = _gunzip(raw)  # bounded: only as far as the header says the data goes
    kind = _sniff(raw[:1024])
    if kind not in ("nifti1", "nifti2"):
        raise InputError("this file is not a NIfTI volume")
    info = _nifti_header_info(raw, 1 if kind == "nifti1" else 2)  # the app's checks: limits, CIFTI, damage
    _check_voxels(info.shape[:3])
    klass = nib.Nifti1Image if kind == "nifti1" else nib.Nifti2Image
    try:
        img = klass.from_bytes(raw)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"this NIfTI volume cannot be read ({type(e).__name__})") from None
    if info.zero_pixdim:
        raise InputError("this NIfTI gives no voxel size (pixdim 0), so its volume in mL is unknown; "
                         "open it as single slices instead")
    return _from_nifti_image(img, "nifti", {"format": f"NIfTI-{kind[-1]}"})


# ---------------------------------------------------------------------------
# DICOM series
# ---------------------------------------------------------------------------
def _read_dicoms(items) -> list:
    """pydicom datasets from bytes / paths / zip archives (non-DICOM members are skipped)."""
    import pydicom

    out = []

    def add(data: bytes):
        if data[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                members = [m for m in z.infolist() if not m.is_dir()]
                if len(members) > MAX_SERIES_FILES:
                    raise InputError(f"this zip holds {len(members)} files; the limit is {MAX_SERIES_FILES}")
                total = sum(m.file_size for m in members)
                if total > 2 * 1024**3:
                    raise InputError("this zip expands to more than 2 GB; upload the series in parts")
                for m in members:
                    add(z.read(m))
            return
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception:  # noqa: BLE001 - not DICOM: skipped, counted below
            return
        if "PixelData" in ds and "Rows" in ds:
            out.append(ds)

    for it in items:
        if isinstance(it, (bytes, bytearray)):
            add(bytes(it))
        else:
            add(Path(it).read_bytes())
        if len(out) > MAX_SERIES_FILES:
            raise InputError(f"more than {MAX_SERIES_FILES} DICOM files; upload one series")
    return out


def _series_key(ds) -> str:
    return str(ds.get("SeriesInstanceUID", "") or "") or "unknown"


def series_choices(items) -> list[tuple[str, int]]:
    """(description, number of images) of each series among the files, to let the user choose one."""
    groups: dict[str, list] = {}
    for ds in _read_dicoms(items):
        groups.setdefault(_series_key(ds), []).append(ds)
    out = []
    for i, (_, dss) in enumerate(sorted(groups.items(), key=lambda kv: -len(kv[1]))):
        d = dss[0]
        desc = " ".join(str(d.get(k, "") or "") for k in ("Modality", "SeriesDescription")).strip() or "series"
        out.append((f"{i + 1}: {desc} ({len(dss)} images)", len(dss)))
    return out


def _dicom_series(items, series_index: int | None = None) -> Volume:
    from bt_demo.imaging import _dicom_rescale

    dss = _read_dicoms(items)
    if not dss:
        raise InputError("none of these files is a DICOM image")
    groups: dict[str, list] = {}
    for ds in dss:
        groups.setdefault(_series_key(ds), []).append(ds)
    ordered = sorted(groups.values(), key=len, reverse=True)
    if len(ordered) > 1 and series_index is None:
        names = "; ".join(c for c, _ in series_choices(items))
        raise InputError(f"these files hold {len(ordered)} series ({names}); choose one")
    group = ordered[(series_index or 1) - 1] if len(ordered) > 1 else ordered[0]
    if len(group) == 1 and int(group[0].get("NumberOfFrames", 1) or 1) > 1:
        return _multiframe(group[0])
    if len(group) < 2:
        raise InputError("a volume needs at least 2 slices of one series; open a single image as a slice instead")
    rows = {(int(d.Rows), int(d.Columns)) for d in group}
    if len(rows) > 1:
        raise InputError(f"the images of this series have different sizes ({sorted(rows)}); it is not one volume")
    try:
        iops = np.array([[float(v) for v in d.ImageOrientationPatient] for d in group])
        ipps = np.array([[float(v) for v in d.ImagePositionPatient] for d in group])
        ps = np.array([[float(v) for v in d.PixelSpacing] for d in group])
    except (AttributeError, TypeError, ValueError):
        raise InputError("these DICOM images do not give their position and orientation (ImagePositionPatient, "
                         "ImageOrientationPatient, PixelSpacing), so they cannot be stacked into a volume") from None
    if np.abs(iops - iops[0]).max() > 1e-3:
        raise InputError("the images of this series have different orientations (ImageOrientationPatient); "
                         "it is not one volume")
    if np.abs(ps - ps[0]).max() > 1e-4:
        raise InputError("the images of this series have different pixel spacings; it is not one volume")
    normal = np.cross(iops[0][:3], iops[0][3:])
    pos = ipps @ normal
    order = np.argsort(pos)
    gaps = np.diff(pos[order])
    if np.any(gaps < 1e-3):
        raise InputError("two images of this series lie at the same position (a duplicate, or two acquisitions "
                         "mixed); remove the duplicates")
    med = float(np.median(gaps))
    if np.any(np.abs(gaps - med) > SPACING_TOLERANCE * med):
        big = int(np.argmax(np.abs(gaps - med)))
        missing = gaps[big] / med
        what = (f"about {round(missing) - 1} slice(s) seem to be missing after position {pos[order][big]:.1f} mm"
                if missing > 1.5 else "the slice gaps are unequal")
        raise InputError(f"this series' slices are not evenly spaced ({gaps.min():.2f}–{gaps.max():.2f} mm): "
                         f"{what}; a volume from them would be wrong")
    sorted_ds = [group[i] for i in order]
    R, C = rows.pop()
    _check_voxels((C, R, len(sorted_ds)))
    stack = np.empty((C, R, len(sorted_ds)), np.float32)  # (col, row, k): nibabel's i, j, k
    for k, ds in enumerate(sorted_ds):
        try:
            arr = np.asarray(ds.pixel_array)
        except Exception:  # noqa: BLE001
            raise InputError(f"image {k + 1} of this series cannot be decoded; export the series again") from None
        if arr.shape != (R, C):
            raise InputError("an image of this series is not a single gray frame; it is not one volume")
        stack[:, :, k] = _dicom_rescale(ds, arr, 0).T
    row_dir, col_dir = iops[0][:3], iops[0][3:]
    row_mm, col_mm = ps[0]
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_mm
    lps[:3, 1] = col_dir * row_mm
    lps[:3, 2] = normal * med
    lps[:3, 3] = ipps[order[0]]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    import nibabel as nib

    meta = {"format": "DICOM series", "modality": str(sorted_ds[0].get("Modality", "") or ""),
            "images": str(len(sorted_ds)), "slice_gap_mm": f"{med:.3g}"}
    return _from_nifti_image(nib.Nifti1Image(stack, affine), "dicom-series", meta, tuple(sorted_ds))


def _multiframe(ds) -> Volume:
    from bt_demo.imaging import _dicom_rescale, _functional

    n = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        ipps = np.array([[float(v) for v in _functional(ds, f, "PlanePositionSequence", "ImagePositionPatient")]
                         for f in range(n)])
        iop = np.array([float(v) for v in _functional(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient")])
        ps = np.array([float(v) for v in _functional(ds, 0, "PixelMeasuresSequence", "PixelSpacing")])
    except (TypeError, ValueError):
        raise InputError("this multi-frame DICOM does not give each frame's position, so its frames cannot be "
                         "stacked into a volume; open it frame by frame instead") from None
    normal = np.cross(iop[:3], iop[3:])
    pos = ipps @ normal
    order = np.argsort(pos)
    gaps = np.diff(pos[order])
    med = float(np.median(gaps)) if len(gaps) else 1.0
    if len(gaps) and (np.any(gaps < 1e-3) or np.any(np.abs(gaps - med) > SPACING_TOLERANCE * med)):
        raise InputError("the frames of this DICOM are not evenly spaced along the slice normal; "
                         "a volume from them would be wrong")
    arr = np.asarray(ds.pixel_array)
    R, C = int(ds.Rows), int(ds.Columns)
    _check_voxels((C, R, n))
    stack = np.stack([_dicom_rescale(ds, arr[i], int(i)).T for i in order], axis=-1).astype(np.float32)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * ps[1]
    lps[:3, 1] = iop[3:] * ps[0]
    lps[:3, 2] = normal * med
    lps[:3, 3] = ipps[order[0]]
    import nibabel as nib

    meta = {"format": "DICOM multi-frame", "modality": str(ds.get("Modality", "") or ""), "images": str(n)}
    return _from_nifti_image(nib.Nifti1Image(stack, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps), "dicom-multiframe",
                             meta, (ds,))


def load_volume(items, series_index: int | None = None) -> Volume:
    """One Volume from: a NIfTI (bytes or path), DICOM files (several bytes/paths), or a zip of a series.

    series_index: 1-based choice when the files hold several series (the error message lists them).
    Raises InputError with a message a user can act on.
    """
    if isinstance(items, (bytes, bytearray, str, Path)):
        items = [items]
    items = list(items)
    if not items:
        raise InputError("no file given")
    if len(items) == 1:
        raw = bytes(items[0]) if isinstance(items[0], (bytes, bytearray)) else Path(items[0]).read_bytes()
        if raw[:2] == b"\x1f\x8b" or raw[344:348] in (b"n+1\x00", b"ni1\x00") or raw[4:8] == b"n+2\x00":
            return _nifti_volume(raw)
        items = [raw]
    return _dicom_series(items, series_index)
