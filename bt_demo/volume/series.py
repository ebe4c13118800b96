"""Any volume upload -> one :class:`Volume`: slices in the app's display orientation plus the geometry that
puts every voxel in patient space.

Accepted: a NIfTI-1/-2 volume (``.nii`` / ``.nii.gz``, header extensions allowed; a 4-D file gives one of
its volumes), a DICOM series (several files, or a zip of them; sorted by position along the slice normal,
never by file name; one series chosen when several are present), and a multi-frame DICOM whose frames
carry their positions. Unequal slice spacing, missing slices and mixed orientations are refused with a
message that says which, never turned silently into a wrong volume.

Display orientation (the same as :func:`bt_demo.io.load_slice` shows an axial NIfTI slice): the
volume is brought to the closest canonical RAS+ orientation (nibabel), then ``data[z, row, col]`` with
``z`` from inferior to superior, row 0 anterior, column 0 the patient's right (radiological).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bt_demo.errors import InputError
from bt_demo.io.memory import LOAD_BYTES_PER_VOXEL
from bt_demo.io.memory import SERVER as SERVER_MEMORY
from bt_demo.io.slice import MAX_PIXELS, MAX_VOLUME_VOXELS, MIN_SIDE
from bt_demo.io.sniff import read_upload
from bt_demo.io.upload import Member, Upload, UploadLimits, refuse_nested_archive

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


def _nifti_volume(raw: bytes, on_wait=None) -> Volume:
    """A NIfTI volume: its header gives the budget (shape x datatype) before any voxel is read."""
    import nibabel as nib

    from bt_demo.io.nifti import nifti_header_info
    from bt_demo.io.sniff import gunzip_bounded, sniff

    if raw[:2] == b"\x1f\x8b":
        raw = gunzip_bounded(raw)  # bounded: only as far as the header says the data goes
    kind = sniff(raw[:1024])
    if kind not in ("nifti1", "nifti2"):
        raise InputError("this file is not a NIfTI volume")
    info = nifti_header_info(raw, 1 if kind == "nifti1" else 2)  # the app's checks: limits, CIFTI, damage
    _check_voxels(info.shape[:3])
    if info.zero_pixdim:
        raise InputError("this NIfTI gives no voxel size (pixdim 0), so its volume in mL is unknown; "
                         "open it as single slices instead")
    if len(raw) < info.needed_bytes:
        raise InputError(f"this NIfTI volume is truncated: its header declares {info.needed_bytes:,} bytes, the file "
                         f"holds {len(raw):,}; export it again")
    klass = nib.Nifti1Image if kind == "nifti1" else nib.Nifti2Image
    voxels = math.prod(info.shape[:3])
    with SERVER_MEMORY.reserve(voxels * (info.dtype.itemsize + LOAD_BYTES_PER_VOXEL), on_wait=on_wait):
        try:
            img = klass.from_bytes(raw)
        except Exception as e:  # noqa: BLE001
            raise InputError(f"this NIfTI volume cannot be read ({type(e).__name__})") from None
        return _from_nifti_image(img, "nifti", {"format": f"NIfTI-{kind[-1]}"})


# ---------------------------------------------------------------------------
# DICOM series: headers first (counted across the whole upload), then the chosen series' pixels
# ---------------------------------------------------------------------------
MAX_HEADER_BYTES_PER_FILE = 32 << 20  # an enhanced multi-frame header of 1,000 frames is a few MB
_PIXEL_TAGS = (b"\xe0\x7f\x10\x00", b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00",  # little endian
               b"\x7f\xe0\x00\x10", b"\x7f\xe0\x00\x08", b"\x7f\xe0\x00\x09")  # big endian


def _looks_like_dicom(head: bytes) -> bool:
    """Part-10 preamble, or a bare dataset starting with a group 0002/0008 element (little or big endian)."""
    return head[128:132] == b"DICM" or head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


@dataclass(frozen=True)
class _Image:
    """One DICOM file of the upload, from its header only: no pixel has been read."""

    member: Member
    header: object  # pydicom Dataset without its pixel data
    rows: int
    cols: int
    frames: int
    pixel_offset: int  # where the pixel data element starts in the file

    @property
    def voxels(self) -> int:
        return self.rows * self.cols * self.frames


def _scan(up: Upload) -> list[_Image]:
    """The headers of every DICOM image in the upload, counted against its budget; no pixel is decoded."""
    import pydicom

    out, voxels = [], 0
    for m in up.members:
        cap = min(MAX_HEADER_BYTES_PER_FILE, up.budget.header_room() + 1)
        msg = (f"the DICOM header of {m.name} is larger than {cap / 2**20:,.0f} MB (the headers of one upload "
               f"may take {up.budget.limits.max_header_bytes / 2**20:,.0f} MB); upload one series")
        with m.open(cap=cap, message=msg) as fh:
            head = fh.peek(512)[:512]
            refuse_nested_archive(m, head)
            if not _looks_like_dicom(head):
                continue  # a README, a DICOMDIR viewer, a thumbnail: not part of any series
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
            except InputError:
                raise
            except Exception:  # noqa: BLE001 - not DICOM after all: skipped like any other file
                continue
            used = fh.tell()
            tag = fh.read(4)
        up.budget.add_header(used)
        if tag not in _PIXEL_TAGS or "Rows" not in ds or "Columns" not in ds:
            continue  # no pixels (a SEG's source list, a structured report): not an image
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            spp = int(ds.get("SamplesPerPixel", 1) or 1)
        except (TypeError, ValueError):
            raise InputError(f"{m.name} has a damaged header (Rows, Columns or NumberOfFrames is not a number); "
                             "export the series again") from None
        if min(rows, cols) < MIN_SIDE or rows * cols > MAX_PIXELS or frames < 1 or spp < 1:
            raise InputError(f"{m.name} declares {frames} frame(s) of {cols}x{rows} px; slices must be "
                             f"{MIN_SIDE} px per side or more and {MAX_PIXELS:,} px at most")
        voxels += rows * cols * frames * spp
        out.append(_Image(m, ds, rows, cols, frames, used))
    up.budget.check_voxels(voxels)
    return out


def _series_key(ds) -> str:
    return str(ds.get("SeriesInstanceUID", "") or "") or "unknown"


def _groups(images: list[_Image]) -> list[list[_Image]]:
    groups: dict[str, list] = {}
    for im in images:
        groups.setdefault(_series_key(im.header), []).append(im)
    return sorted(groups.values(), key=len, reverse=True)


def _describe(groups: list[list[_Image]]) -> list[tuple[str, int]]:
    out = []
    for i, g in enumerate(groups):
        d = g[0].header
        desc = " ".join(str(d.get(k, "") or "") for k in ("Modality", "SeriesDescription")).strip() or "series"
        out.append((f"{i + 1}: {desc} ({len(g)} images)", len(g)))
    return out


def series_choices(items, limits: UploadLimits | None = None) -> list[tuple[str, int]]:
    """(description, number of images) of each series among the files, to let the user choose one.
    Reads headers only."""
    with Upload(_as_list(items), limits) as up:
        return _describe(_groups(_scan(up)))


def _decode(im: _Image):
    """The image's dataset (its header, with the pixel data element read) and its pixel array.

    The header parsed in the first pass is reused: only the pixel data element is read now, from where the
    first pass stopped (native transfer syntaxes); an encapsulated (compressed) one is read whole."""
    import pydicom

    hdr = im.header
    try:
        native = not hdr.file_meta.TransferSyntaxUID.is_compressed
        explicit, little = not hdr.file_meta.TransferSyntaxUID.is_implicit_VR, hdr.file_meta.TransferSyntaxUID.is_little_endian
    except (AttributeError, ValueError, KeyError):
        native = False
    try:
        if native:
            with im.member.open() as fh:
                _skip(fh, im.pixel_offset)
                head = fh.read(12 if explicit else 8)
                vr = head[4:6] if explicit else b"OW"
                length = int.from_bytes(head[8:12] if explicit else head[4:8], "little" if little else "big")
                if length == 0xFFFFFFFF or (explicit and vr not in (b"OB", b"OW")):
                    raise _Whole()
                if length > im.member.size:
                    raise InputError(f"{im.member.name} declares more pixel data than the file holds; it is damaged")
                data = fh.read(length)
            if len(data) != length:
                raise InputError(f"{im.member.name} is truncated: its pixel data ends early; export it again")
            hdr.PixelData = data
            hdr["PixelData"].VR = vr.decode()
            ds = hdr
        else:
            raise _Whole()
    except _Whole:
        ds = pydicom.dcmread(io.BytesIO(im.member.read()), force=True)
        if int(ds.Rows) != im.rows or int(ds.Columns) != im.cols:
            raise InputError(f"{im.member.name} changed between reads; upload it again") from None
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception:  # noqa: BLE001
        raise InputError(f"{im.member.name} cannot be decoded; export the series again") from None
    return ds, arr


class _Whole(Exception):
    """The pixel data element cannot be read on its own: read the whole file."""


def _skip(fh, n: int) -> None:
    """Advance a stream by ``n`` bytes from its start (seek where it can, else read and drop)."""
    if fh.seekable():
        fh.seek(n)
        return
    while n > 0:
        chunk = fh.read(min(n, 1 << 20))
        if not chunk:
            break
        n -= len(chunk)


def _dicom_series(items, series_index: int | None = None, on_wait=None, limits: UploadLimits | None = None) -> Volume:
    with Upload(items, limits) as up:
        images = _scan(up)
        if not images:
            raise InputError("none of these files is a DICOM image")
        ordered = _groups(images)
        if len(ordered) > 1 and series_index is None:
            names = "; ".join(c for c, _ in _describe(ordered))
            raise InputError(f"these files hold {len(ordered)} series ({names}); choose one")
        if series_index is not None and len(ordered) > 1 and not 1 <= series_index <= len(ordered):
            raise InputError(f"series {series_index} does not exist: these files hold {len(ordered)} series")
        group = ordered[(series_index or 1) - 1] if len(ordered) > 1 else ordered[0]
        if len(group) == 1 and group[0].frames > 1:
            return _multiframe(group[0], on_wait)
        return _stack_series(group, on_wait)


def _stack_series(group: list[_Image], on_wait=None) -> Volume:
    from bt_demo.io.dicom import dicom_rescale

    if len(group) < 2:
        raise InputError("a volume needs at least 2 slices of one series; open a single image as a slice instead")
    hdrs = [im.header for im in group]
    rows = {(im.rows, im.cols) for im in group}
    if len(rows) > 1:
        raise InputError(f"the images of this series have different sizes ({sorted(rows)}); it is not one volume")
    if any(im.frames != 1 for im in group):
        raise InputError("this series mixes multi-frame and single-frame images; it is not one volume")
    try:
        iops = np.array([[float(v) for v in d.ImageOrientationPatient] for d in hdrs])
        ipps = np.array([[float(v) for v in d.ImagePositionPatient] for d in hdrs])
        ps = np.array([[float(v) for v in d.PixelSpacing] for d in hdrs])
    except (AttributeError, TypeError, ValueError):
        raise InputError("these DICOM images do not give their position and orientation (ImagePositionPatient, "
                         "ImageOrientationPatient, PixelSpacing), so they cannot be stacked into a volume") from None
    if iops.shape[1:] != (6,) or ipps.shape[1:] != (3,) or ps.shape[1:] != (2,):
        raise InputError("the position or orientation of these DICOM images is malformed; export the series again")
    if np.abs(iops - iops[0]).max() > 1e-3:
        raise InputError("the images of this series have different orientations (ImageOrientationPatient); "
                         "it is not one volume")
    if np.abs(ps - ps[0]).max() > 1e-4:
        raise InputError("the images of this series have different pixel spacings; it is not one volume")
    normal = np.cross(iops[0][:3], iops[0][3:])
    pos = ipps @ normal
    order = np.argsort(pos)
    med = _even_gaps(pos[order], "slices", "images")
    R, C = rows.pop()
    _check_voxels((C, R, len(group)))
    with SERVER_MEMORY.reserve(C * R * len(group) * LOAD_BYTES_PER_VOXEL, on_wait=on_wait):
        stack = np.empty((C, R, len(group)), np.float32)  # (col, row, k): nibabel's i, j, k
        sorted_ds = []
        for k, i in enumerate(order):
            ds, arr = _decode(group[i])
            if arr.shape != (R, C):
                raise InputError("an image of this series is not a single gray frame; it is not one volume")
            stack[:, :, k] = dicom_rescale(ds, arr, 0).T
            del ds.PixelData  # the SEG export needs the headers only; the pixels are in the stack
            sorted_ds.append(ds)
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


def _even_gaps(pos_sorted: np.ndarray, what: str, plural: str) -> float:
    """The slice gap of positions along the normal (sorted); refuses duplicates, missing and unequal gaps."""
    gaps = np.diff(pos_sorted)
    if not len(gaps):
        return 1.0
    if np.any(gaps < 1e-3):
        raise InputError(f"two {plural} of this series lie at the same position (a duplicate, or two acquisitions "
                         "mixed); remove the duplicates")
    med = float(np.median(gaps))
    if np.any(np.abs(gaps - med) > SPACING_TOLERANCE * med):
        big = int(np.argmax(np.abs(gaps - med)))
        missing = gaps[big] / med
        detail = (f"about {round(missing) - 1} slice(s) seem to be missing after position {pos_sorted[big]:.1f} mm"
                  if missing > 1.5 else "the slice gaps are unequal")
        raise InputError(f"this series' {what} are not evenly spaced ({gaps.min():.2f}–{gaps.max():.2f} mm): "
                         f"{detail}; a volume from them would be wrong")
    return med


def _multiframe(im: _Image, on_wait=None) -> Volume:
    """A multi-frame DICOM: the frame count and every frame's position come from the header, checked
    before the pixel data is read."""
    from bt_demo.io.dicom import dicom_functional, dicom_rescale

    hdr, n = im.header, im.frames
    per_frame = hdr.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) != n:
        raise InputError(f"this multi-frame DICOM declares {n} frames but describes {len(per_frame)}; "
                         "its header is inconsistent, so it was not decoded")
    try:
        ipps = np.array([[float(v) for v in dicom_functional(hdr, f, "PlanePositionSequence", "ImagePositionPatient")]
                         for f in range(n)])
        iop = np.array([float(v) for v in dicom_functional(hdr, 0, "PlaneOrientationSequence",
                                                             "ImageOrientationPatient")])
        ps = np.array([float(v) for v in dicom_functional(hdr, 0, "PixelMeasuresSequence", "PixelSpacing")])
    except (TypeError, ValueError):
        raise InputError("this multi-frame DICOM does not give each frame's position, so its frames cannot be "
                         "stacked into a volume; open it frame by frame instead") from None
    if ipps.shape != (n, 3) or iop.shape != (6,) or ps.shape != (2,):
        raise InputError("this multi-frame DICOM does not give each frame's position, so its frames cannot be "
                         "stacked into a volume; open it frame by frame instead")
    normal = np.cross(iop[:3], iop[3:])
    pos = ipps @ normal
    order = np.argsort(pos)
    try:
        med = _even_gaps(pos[order], "frames", "frames")
    except InputError:
        raise InputError("the frames of this DICOM are not evenly spaced along the slice normal; "
                         "a volume from them would be wrong") from None
    R, C = im.rows, im.cols
    _check_voxels((C, R, n))
    with SERVER_MEMORY.reserve(C * R * n * LOAD_BYTES_PER_VOXEL, on_wait=on_wait):
        ds, arr = _decode(im)
        if arr.shape != (n, R, C):
            raise InputError(f"this multi-frame DICOM's pixel data does not hold the {n} frames of {C}x{R} px its "
                             "header declares; it is damaged")
        stack = np.empty((C, R, n), np.float32)
        for k, i in enumerate(order):
            stack[:, :, k] = dicom_rescale(ds, arr[i], int(i)).T
        del arr, ds.PixelData
        lps = np.eye(4)
        lps[:3, 0] = iop[:3] * ps[1]
        lps[:3, 1] = iop[3:] * ps[0]
        lps[:3, 2] = normal * med
        lps[:3, 3] = ipps[order[0]]
        import nibabel as nib

        meta = {"format": "DICOM multi-frame", "modality": str(ds.get("Modality", "") or ""), "images": str(n)}
        return _from_nifti_image(nib.Nifti1Image(stack, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps), "dicom-multiframe",
                                 meta, (ds,))


def _as_list(items) -> list:
    if isinstance(items, (bytes, bytearray, str, Path)):
        items = [items]
    items = list(items)
    if not items:
        raise InputError("no file given")
    return items


def load_volume(items, series_index: int | None = None, on_wait=None, limits: UploadLimits | None = None) -> Volume:
    """One Volume from: a NIfTI (bytes or path), DICOM files (several bytes/paths, or a folder), or a zip of a
    series.

    series_index: 1-based choice when the files hold several series (the error message lists them).
    on_wait(seconds, bytes_in_use): called about once a second while the load waits for the server's memory
    budget (:mod:`bt_demo.io.memory`). limits: the upload's budget (:class:`bt_demo.io.upload.UploadLimits`).
    Everything is counted from headers before any pixel is decoded. Raises InputError with a message a
    user can act on.
    """
    items = _as_list(items)
    if len(items) == 1 and not isinstance(items[0], (bytes, bytearray)):
        path = Path(items[0])
        if not path.exists():
            raise InputError(f"{path.name or 'the file'} could not be found on the server; upload it again")
        if path.is_file():
            if path.stat().st_size == 0:
                raise InputError("the file is empty (0 bytes); upload the volume again")
            with open(path, "rb") as fh:
                head = fh.read(1024)
            if _is_nifti(head):
                return _nifti_volume(read_upload(path), on_wait)
    elif len(items) == 1 and _is_nifti(bytes(items[0][:1024])):
        return _nifti_volume(bytes(items[0]), on_wait)
    return _dicom_series(items, series_index, on_wait, limits)


def _is_nifti(head: bytes) -> bool:
    return head[:2] == b"\x1f\x8b" or head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] == b"n+2\x00"
