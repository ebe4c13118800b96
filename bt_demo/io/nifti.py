"""NIfTI-1 / NIfTI-2 through nibabel, reading only the chosen slice (reoriented to RAS+, shown radiologically)."""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np

from bt_demo.errors import InputError
from bt_demo.io.slice import MAX_FILE_BYTES, MAX_VOLUME_VOXELS, Selection, Slice, check_size, finish, short_reason

__all__ = ["NiftiInfo", "NiftiReader", "nifti_header_info"]

# ---------------------------------------------------------------------------
# NIfTI through nibabel, reading only the chosen slice
# ---------------------------------------------------------------------------


class NiftiReader:
    """NIfTI-1 (``version=1``) or NIfTI-2 through nibabel; ``slice_index`` and ``volume`` pick the slice."""

    label = "NIfTI"

    def __init__(self, version: int) -> None:
        self.version = version

    def accepts(self, kind: str | None) -> bool:
        return kind == f"nifti{self.version}"

    def read(self, raw: bytes, sel: Selection) -> Slice:
        return _load_nifti(raw, self.version, sel)


@dataclass(frozen=True)
class NiftiInfo:
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


def nifti_header_info(raw: bytes, version: int) -> NiftiInfo:
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
            raise InputError(f"this NIfTI file's header is damaged ({short_reason(e)}); export it again") from None
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
            raise InputError(f"this NIfTI file's header is damaged ({short_reason(e)})") from None
    if dtype.kind == "c":
        raise InputError("this NIfTI holds complex numbers; export the magnitude image")
    if dtype.kind not in "biuf":
        raise InputError(f"this NIfTI stores {dtype} voxels (colour or structured data); export a gray-scale image")
    if offset < hsize or offset > MAX_FILE_BYTES:
        raise InputError("this NIfTI file's header is damaged: the image data offset is invalid")
    return NiftiInfo(hdr, shape, dtype, offset, offset + voxels * dtype.itemsize, zero_pixdim)


def _extension_codes(hdr) -> list[tuple[int, object]]:
    """(code, extension) of each NIfTI header extension (32 = CIFTI)."""
    try:
        return [(int(e.get_code()), e) for e in hdr.extensions]
    except Exception:  # noqa: BLE001
        return []


def _load_nifti(raw: bytes, version: int, sel: Selection) -> Slice:
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
            raise InputError(f"this NIfTI file cannot be read ({short_reason(e)})") from None
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
        check_size(h, w, "NIfTI slice")

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
    return finish(px, "nifti", spacing=spacing, metadata=meta, index=index, what="slice", affine=slice_affine)


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
