"""Synthetic FLAIR-like brain slices: the app's examples, never real data.

Every example image shipped in ``assets/examples/`` is drawn by this module
from random numbers, so it carries no patient, no scanner and no hospital.
Run ``python -m bt_demo.sim.phantom --out assets/examples`` to draw them again.

What :func:`flair_phantom` draws (an axial FLAIR look, intensities in
``[0, 1]``):

================================  =========================================
structure                         appearance
================================  =========================================
background                        dark, Rician noise only (~0.03)
scalp                             thin bright-ish ring (~0.6)
skull                             dark bone gap (~0.06) under the scalp
subarachnoid CSF                  thin dark band around the brain (~0.12)
cortex (gray matter)              ~0.52, brighter than white matter on FLAIR
white matter                      ~0.42, sinuous border made by smoothed noise
sulci                             thin dark lines in the cortical band
lateral ventricles                two dark crescents either side of the midline
falx / interhemispheric fissure   dark midline cleft front and back, bright line
lesion ``"solid"``                FLAIR-bright (~0.8) irregular blob, brighter rim
lesion ``"cystic"``               dark fluid core (~0.22) inside a bright rim
================================  =========================================

The lesion sits off-centre in one hemisphere (which one depends on the seed),
inside the brain. A smooth bias field, a slight partial-volume blur and
Rician noise (``sqrt((s + n1)^2 + n2^2)``) finish the look. The lesion mask is
the ground truth *before* blur and noise.

Coordinates: arrays are ``(H, W)`` = (rows, columns); row 0 is anterior (top
of the picture) as in the radiological display of :mod:`bt_demo.io`.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["LESION_KINDS", "flair_phantom", "flair_phantom_volume", "write_examples"]

LESION_KINDS = ("solid", "cystic")
"""Values of ``lesion_kind``."""

_MIN_SIDE, _MAX_SIDE = 16, 4096
_FOV_MM = 230.0  # nominal field of view of a 2-D phantom: 256 px -> 0.9 mm pixels

# (name, smoothing sigma in mm) of the smooth random fields the anatomy is drawn from
_FIELDS = (
    ("outline", 30.0),    # head outline wobble
    ("wm", 6.0),          # gray/white border
    ("gyri", 12.0),       # where the sulci run (phase of an angular wave)
    ("sulci", 3.5),       # small wiggles of sulci and ventricle walls
    ("texture", 1.6),     # fine parenchymal texture
    ("bias", 70.0),       # coil sensitivity (multiplicative)
    ("lesion", 6.5),      # lesion outline
    ("lesion_tex", 1.8),  # lesion internal texture
)


# ---------------------------------------------------------------------------
# parameter checks
# ---------------------------------------------------------------------------
def _check_shape(shape) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in shape)
        ok = all(float(v) == int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (H, W), two whole numbers from {_MIN_SIDE} to {_MAX_SIDE}, "
                         f"got {shape!r}") from None
    if not ok or not (_MIN_SIDE <= h <= _MAX_SIDE and _MIN_SIDE <= w <= _MAX_SIDE):
        raise ValueError(f"shape must be (H, W), two whole numbers from {_MIN_SIDE} to {_MAX_SIDE}, "
                         f"got {tuple(shape)}")
    return h, w


def _check_kind(kind) -> str:
    if kind not in LESION_KINDS:
        raise ValueError(f"lesion_kind must be one of {', '.join(map(repr, LESION_KINDS))}, got {kind!r}")
    return kind


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    return int(seed)


# ---------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Head:
    cy: float  # centre row (px)
    cx: float  # centre column (px)
    ry: float  # semi-axis along rows (px)
    rx: float  # semi-axis along columns (px)
    angle: float  # in-plane tilt (rad)


@dataclass(frozen=True)
class _Lesion:
    u0: float  # centre in head units (columns), sign = hemisphere
    v0: float  # centre in head units (rows)
    z0: float  # centre along the slice axis (mm)
    radius: float  # in-plane radius (mm)
    radius_z: float  # through-plane radius (mm)
    kind: str


def _upsample(f: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Bicubic in-plane (last two axes), linear along a leading slice axis."""
    import cv2

    h, w = shape[-2:]
    if f.ndim == 2:
        return cv2.resize(f, (w, h), interpolation=cv2.INTER_CUBIC)
    planes = np.stack([cv2.resize(p, (w, h), interpolation=cv2.INTER_CUBIC) for p in f])
    pos = (np.arange(shape[0]) + 0.5) * planes.shape[0] / shape[0] - 0.5
    lo = np.clip(np.floor(pos).astype(int), 0, planes.shape[0] - 1)
    hi = np.clip(lo + 1, 0, planes.shape[0] - 1)
    t = np.clip(pos - lo, 0.0, 1.0)[:, None, None].astype(np.float32)
    return planes[lo] * (1 - t) + planes[hi] * t


def _smooth_fields(rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...]) -> dict:
    """Unit-variance smooth Gaussian random fields, one per entry of :data:`_FIELDS`."""
    from scipy import ndimage

    out = {}
    for name, sigma_mm in _FIELDS:
        sig = [max(sigma_mm / sp, 0.3) for sp in spacing]
        # wide fields are drawn on a coarser grid (>= 3 grid steps per sigma) and interpolated up
        step = [max(1, int(s // 3)) for s in sig]
        coarse = tuple(max(4, math.ceil(n / k) + 1) for n, k in zip(shape, step, strict=False))
        noise = rng.standard_normal(coarse).astype(np.float32)
        f = ndimage.gaussian_filter(noise, [s / k for s, k in zip(sig, step, strict=False)], mode="reflect")
        if coarse != tuple(shape):
            f = _upsample(f, tuple(shape))
        out[name] = (f - f.mean()) / max(float(f.std()), 1e-6)
    return out


def _draw_slice(shape: tuple[int, int], spacing_mm: float, head: _Head, lesion: _Lesion | None,
                fields: dict, z_mm: float, rng: np.random.Generator, noise_sigma: float = 0.025):
    """One axial slice at height ``z_mm`` (0 = the level of the ventricle bodies).

    Returns (float32 (H, W) in [0, 1], bool (H, W) lesion mask)."""
    from scipy import ndimage

    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # the head shrinks a little away from z = 0 (a sphere cap of radius ~ 95 mm)
    zs = math.sqrt(max(0.0, 1.0 - (z_mm / 95.0) ** 2))
    ry, rx = head.ry * zs, head.rx * zs
    dx, dy = xx - head.cx, yy - head.cy
    ca, sa = math.cos(head.angle), math.sin(head.angle)
    xr, yr = ca * dx + sa * dy, -sa * dx + ca * dy
    v = yr / ry
    u = xr / (rx * (1.0 + 0.07 * v))  # egg shape: wider at the back
    r = np.sqrt(u * u + v * v) * (1.0 + 0.015 * fields["outline"])
    mm = spacing_mm  # mm per pixel

    img = np.zeros(shape, np.float32)
    # scalp, bone, CSF, brain (from outside in)
    scalp = (r <= 1.0) & (r > 0.955)
    bone = (r <= 0.955) & (r > 0.90)
    csf = (r <= 0.90) & (r > 0.875)
    brain = r <= 0.875
    img[scalp] = 0.55 + 0.12 * np.clip(1.0 - (1.0 - r[scalp]) / 0.045, 0, 1)
    marrow = bone & (np.abs(r - 0.9275) < 0.008)
    img[bone] = 0.06
    img[marrow] = 0.14
    img[csf] = 0.12

    # gyri: sulci run roughly radially in from the surface (zero lines of a phase-warped
    # angular wave); gray matter lines the surface and every sulcus (~3 mm), white matter inside
    theta = np.arctan2(v, u)
    wave = np.abs(np.sin(12.0 * theta + 1.3 * fields["gyri"] + 0.35 * fields["sulci"]))
    depth = 0.69 + 0.05 * fields["wm"]  # how deep the sulci reach
    sulcus = brain & (r > depth) & (wave < 0.16 + 0.10 * np.clip(r - depth, 0, None) / 0.18)
    to_csf = ndimage.distance_transform_edt(brain & ~sulcus) * mm
    gm = to_csf < (3.0 + 0.8 * fields["wm"])
    tissue = np.where(gm, 0.55, 0.43).astype(np.float32) + 0.025 * fields["texture"]
    tissue = np.where(sulcus, 0.14, tissue)

    # lateral ventricles: two crescents bowing outwards, diverging towards the back;
    # frontal horn and atrium wider than the body
    vent = np.zeros(shape, bool)
    vz = 1.0 - (z_mm / 22.0) ** 2
    if vz > 0:
        vz = math.sqrt(vz)
        v_lo, v_hi = -0.32 * vz, 0.30 * vz
        t = (v - v_lo) / (v_hi - v_lo)  # 0 at the frontal horn tip, 1 at the atrium
        inside_t = (t > 0) & (t < 1)
        tc = np.clip(t, 0.0, 1.0)
        env = np.sqrt(np.clip(np.sin(np.pi * tc), 0.0, 1.0))
        half = env * (0.028 + 0.030 * np.exp(-((tc - 0.16) / 0.10) ** 2)
                      + 0.040 * np.exp(-((tc - 0.86) / 0.10) ** 2)) * vz
        wobble = 0.006 * fields["sulci"]
        for side, asym in ((-1, 1.0), (1, 0.9)):
            centre = side * (0.035 + half + 0.10 * tc ** 1.6 + 0.03 * np.sin(np.pi * tc))
            vent |= inside_t & (np.abs(u + wobble - centre) < half * asym)
        # the third ventricle: a midline slit behind the frontal horns
        vent |= (np.abs(u) < 0.012 * vz) & (v > 0.0) & (v < 0.14 * vz)
    tissue = np.where(vent, 0.10, tissue)
    # periventricular FLAIR caps (a thin bright-ish seam)
    seam = ndimage.binary_dilation(vent, iterations=max(1, round(1.5 / mm))) & ~vent
    tissue = np.where(seam, tissue + 0.05, tissue)

    # interhemispheric fissure (dark) with the falx (a thin brighter line), front and back
    fissure = brain & ((v < -0.40) | (v > 0.50)) & (np.abs(xr) < max(1.2, 2.0 / mm))
    falx = fissure & (np.abs(xr) < max(0.5, 0.6 / mm))
    tissue = np.where(fissure, 0.12, tissue)
    tissue = np.where(falx, 0.32, tissue)

    mask = np.zeros(shape, bool)
    if lesion is not None:
        ly = head.cy + (lesion.v0 * ry) * ca + (lesion.u0 * rx) * sa
        lx = head.cx + (lesion.u0 * rx) * ca - (lesion.v0 * ry) * sa
        dz = (z_mm - lesion.z0) / lesion.radius_z
        d = np.sqrt(((yy - ly) * mm) ** 2 + ((xx - lx) * mm) ** 2) / lesion.radius
        d = np.sqrt(d * d + dz * dz) + 0.22 * fields["lesion"]
        blob = (d < 1.0) & (r < 0.84)
        if blob.any():
            lab, n = ndimage.label(blob)
            sizes = ndimage.sum(blob, lab, range(1, n + 1))
            blob = ndimage.binary_fill_holes(lab == (int(np.argmax(sizes)) + 1))
            mask = blob
            inner = ndimage.distance_transform_edt(mask) * mm  # mm to the lesion edge
            rim_mm = 1.6 if lesion.kind == "solid" else 2.6
            rim = mask & (inner <= rim_mm)
            if lesion.kind == "solid":
                core_val = 0.78 + 0.05 * fields["lesion_tex"] + 0.04 * fields["lesion"]
                rim_val = 0.90
            else:
                core_val = np.where(inner > rim_mm + 0.8, 0.22, 0.55) + 0.02 * fields["lesion_tex"]
                rim_val = 0.88
            tissue = np.where(mask, np.where(rim, rim_val, core_val), tissue)
            # a faint FLAIR halo just outside the edge (oedema)
            outer = ndimage.distance_transform_edt(~mask) * mm
            halo = brain & ~mask & ~vent & (outer < 8.0)
            tissue = np.where(halo, tissue + 0.12 * np.exp(-outer / 2.5), tissue)

    img = np.where(brain, tissue, img)
    # a slight partial-volume blur, then the coil's bias field and Rician noise
    img = ndimage.gaussian_filter(img, max(0.35, 0.5 / mm))
    img = img * (1.0 + 0.07 * fields["bias"])
    n1 = rng.standard_normal(shape).astype(np.float32) * noise_sigma
    n2 = rng.standard_normal(shape).astype(np.float32) * noise_sigma
    img = np.sqrt((img + n1) ** 2 + n2 ** 2)
    return np.clip(img, 0.0, 1.0).astype(np.float32), mask


def _head_for(shape: tuple[int, int], rng: np.random.Generator) -> _Head:
    h, w = shape
    ry = 0.44 * h
    rx = min(0.40 * w, 0.80 * ry)  # a head is longer (front to back) than wide
    ry = min(ry, rx / 0.72)
    return _Head(cy=h / 2 + rng.uniform(-0.02, 0.02) * h, cx=w / 2 + rng.uniform(-0.02, 0.02) * w,
                 ry=ry, rx=rx, angle=rng.uniform(-0.08, 0.08))


def _lesion_for(rng: np.random.Generator, kind: str, head_mm: float) -> _Lesion:
    side = rng.choice([-1.0, 1.0])
    return _Lesion(u0=float(side * rng.uniform(0.36, 0.48)), v0=float(rng.uniform(-0.35, 0.35)),
                   z0=0.0, radius=float(head_mm * rng.uniform(0.10, 0.15)), radius_z=float(head_mm * 0.12),
                   kind=kind)


def flair_phantom(shape=(256, 256), seed: int = 0, lesion: bool = True,
                  lesion_kind: str = "solid") -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic axial FLAIR-like slice and its lesion mask.

    Args:
        shape: ``(H, W)`` in pixels, each side from 16 to 4096 (non-square is
            fine; the head keeps a head's proportions and fits the frame).
        seed: whole number >= 0; the same seed and arguments give the same
            arrays (bit for bit on one machine).
        lesion: draw a lesion (else the mask is all False).
        lesion_kind: ``"solid"`` (FLAIR-bright blob, brighter rim) or
            ``"cystic"`` (dark fluid core inside a bright rim).

    Returns:
        ``(image, mask)``: ``image`` float32 ``(H, W)`` in ``[0, 1]``;
        ``mask`` bool ``(H, W)``, True on the lesion (rim and core).

    Raises:
        ValueError: a parameter out of its allowed range (the message says which).
    """
    h, w = _check_shape(shape)
    seed = _check_seed(seed)
    _check_kind(lesion_kind)
    rng = np.random.default_rng([seed, 0x464C4149])  # "FLAI": streams differ from other users of the seed
    mm = _FOV_MM / min(h, w)
    head = _head_for((h, w), rng)
    les = _lesion_for(rng, lesion_kind, 2 * head.rx * mm) if lesion else None
    fields = _smooth_fields(rng, (h, w), (mm, mm))
    return _draw_slice((h, w), mm, head, les, fields, 0.0, rng)


def flair_phantom_volume(shape=(24, 128, 128), spacing: float = 1.5, seed: int = 0,
                         lesion_kind: str = "solid") -> tuple[np.ndarray, np.ndarray]:
    """A small 3-D stack of axial phantom slices with one lesion across several of them.

    Args:
        shape: ``(Z, H, W)``: slices (2 to 256, index 0 = most inferior), rows, columns
            (16 to 1024 each).
        spacing: isotropic voxel size in mm, 0.2 to 5.
        seed, lesion_kind: as in :func:`flair_phantom`.

    Returns:
        ``(volume, mask)``: float32 ``(Z, H, W)`` in ``[0, 1]`` and bool ``(Z, H, W)``;
        the lesion is centred on the middle slice ``Z // 2`` and spans about
        ``2 * 0.12 * head width`` mm through the slab.
    """
    try:
        z, h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (Z, H, W), three whole numbers, got {shape!r}") from None
    if not (2 <= z <= 256 and 16 <= h <= 1024 and 16 <= w <= 1024):
        raise ValueError(f"shape must be (Z, H, W) with Z from 2 to 256 and H, W from 16 to 1024, got {tuple(shape)}")
    spacing = float(spacing)
    if not (0.2 <= spacing <= 5.0):
        raise ValueError(f"spacing must be from 0.2 to 5 mm, got {spacing}")
    seed = _check_seed(seed)
    _check_kind(lesion_kind)
    rng = np.random.default_rng([seed, 0x564F4C])  # "VOL"
    head = _head_for((h, w), rng)
    les = _lesion_for(rng, lesion_kind, 2 * head.rx * spacing)
    fields3 = _smooth_fields(rng, (z, h, w), (spacing, spacing, spacing))
    vol = np.zeros((z, h, w), np.float32)
    mask = np.zeros((z, h, w), bool)
    for k in range(z):
        z_mm = (k - z // 2) * spacing
        vol[k], mask[k] = _draw_slice((h, w), spacing, head, les, {n: f[k] for n, f in fields3.items()}, z_mm, rng)
    return vol, mask


# ---------------------------------------------------------------------------
# example files
# ---------------------------------------------------------------------------
_README = """\
Synthetic example images for the brain-tumour MRI demo
======================================================

Every file here is drawn from random numbers by bt_demo/sim/phantom.py; none comes
from a patient or a scanner. Regenerate them with

    python -m bt_demo.sim.phantom --out assets/examples

Each image has a *_mask.png beside it: the ground-truth lesion (0 / 255),
in the pixels of the slice the app shows, for trying "upload a corrected mask".

{table}
"""


def _png_bytes(arr: np.ndarray) -> bytes:
    """8- or 16-bit gray PNG (no text chunks, deterministic)."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _to_uint(img: np.ndarray, top: int, dtype) -> np.ndarray:
    return np.rint(np.clip(img, 0, 1) * top).astype(dtype)


def _dicom_bytes(img: np.ndarray, spacing_mm: float) -> bytes:
    """An MR DICOM of a phantom slice: 12-bit values in uint16, no patient-identifying values."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    def uid(what: str) -> str:  # deterministic, so regenerating gives the same file
        return generate_uid(entropy_srcs=["bt_demo phantom", what])

    px = _to_uint(img, 4095, np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("phantom", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.FrameOfReferenceUID = uid("frame")
    ds.Modality = "MR"
    ds.Manufacturer = "bt_demo synthetic phantom"
    ds.SeriesDescription = "Synthetic FLAIR phantom (not patient data)"
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    # type-2 identity attributes present but empty, except the two placeholders
    ds.PatientName = "Anonymous^Phantom"
    ds.PatientID = "PHANTOM"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.AccessionNumber = ""
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ScanningSequence = "IR"
    ds.SequenceVariant = "SK"
    ds.RepetitionTime = 9000
    ds.EchoTime = 120
    ds.InversionTime = 2500
    ds.MagneticFieldStrength = 1.5
    ds.SliceThickness = 5.0
    ds.ImagePositionPatient = [-(px.shape[1] / 2) * spacing_mm, -(px.shape[0] / 2) * spacing_mm, 0.0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [spacing_mm, spacing_mm]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(px.shape[0]), int(px.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter = 1800
    ds.WindowWidth = 3600
    ds.PixelData = px.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _nifti_volume_bytes(vol: np.ndarray, spacing: float, dtype, top: float) -> bytes:
    """(Z, H, W) display-ordered stack -> .nii.gz bytes that bt_demo.io shows the same way.

    Stored as data[i, j, k] = vol[k, j, i] with affine diag(-s, -s, s): the
    array axes run to the patient's left, posterior and superior (DICOM's LPS
    pixel order), which :func:`bt_demo.io.load_slice` displays with row 0
    anterior and column 0 the patient's right, exactly as ``vol[k]``."""
    import nibabel as nib

    data = np.ascontiguousarray(np.transpose(np.rint(vol * top).astype(dtype) if top else vol.astype(dtype),
                                             (2, 1, 0)))
    img = nib.Nifti1Image(data, np.diag([-spacing, -spacing, spacing, 1.0]))
    img.header.set_xyzt_units("mm")
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    img.header["descrip"] = b"bt_demo synthetic phantom"
    return gzip.compress(img.to_bytes(), compresslevel=9, mtime=0)


def write_examples(folder: str | Path = "assets/examples") -> list[Path]:
    """Draw every example image (and its ``*_mask.png``) into ``folder``; return the paths written.

    Files (all synthetic):

    * ``phantom_flair.png``: 8-bit, 256 x 256, seed 0, solid lesion
    * ``phantom_flair_512.png``: 8-bit, 512 x 512, seed 1
    * ``phantom_cystic.png``: 8-bit, 256 x 256, seed 2, cystic lesion
    * ``phantom_flair_16bit.tif``: uint16 (12-bit values 0..4095), 256 x 256, seed 3, zlib-compressed
    * ``phantom_flair.dcm``: MR DICOM, 256 x 256, seed 4, PixelSpacing 0.9\\0.9,
      WindowCenter 1800 / WindowWidth 3600, PatientName ``Anonymous^Phantom``,
      PatientID ``PHANTOM``, no dates or other identifying values
    * ``phantom_volume.nii.gz``: int16 128 x 128 x 24, 1.5 mm voxels, lesion across
      several slices; ``phantom_volume_mask.nii.gz`` is its 3-D mask and
      ``phantom_volume_mask.png`` the mask of the slice the app opens by default
    * ``README.txt``: what these are and how to regenerate them

    Each ``<stem>_mask.png`` (``phantom_flair_dcm_mask.png`` for the DICOM) is
    8-bit 0/255 and aligned with the slice :func:`bt_demo.io.load_slice`
    shows for its image.
    """
    import tifffile

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def put(name: str, data: bytes) -> None:
        p = out / name
        p.write_bytes(data)
        written.append(p)

    def mask_png(mask: np.ndarray) -> bytes:
        return _png_bytes(mask.astype(np.uint8) * 255)

    img, m = flair_phantom((256, 256), seed=0)
    put("phantom_flair.png", _png_bytes(_to_uint(img, 255, np.uint8)))
    put("phantom_flair_mask.png", mask_png(m))

    img, m = flair_phantom((512, 512), seed=1)
    put("phantom_flair_512.png", _png_bytes(_to_uint(img, 255, np.uint8)))
    put("phantom_flair_512_mask.png", mask_png(m))

    img, m = flair_phantom((256, 256), seed=2, lesion_kind="cystic")
    put("phantom_cystic.png", _png_bytes(_to_uint(img, 255, np.uint8)))
    put("phantom_cystic_mask.png", mask_png(m))

    img, m = flair_phantom((256, 256), seed=3)
    buf = io.BytesIO()
    tifffile.imwrite(buf, _to_uint(img, 4095, np.uint16), compression="zlib", photometric="minisblack")
    put("phantom_flair_16bit.tif", buf.getvalue())
    put("phantom_flair_16bit_mask.png", mask_png(m))

    img, m = flair_phantom((256, 256), seed=4)
    put("phantom_flair.dcm", _dicom_bytes(img, 0.9))
    put("phantom_flair_dcm_mask.png", mask_png(m))

    vol, vmask = flair_phantom_volume((24, 128, 128), spacing=1.5, seed=5)
    vol_bytes = _nifti_volume_bytes(vol, 1.5, np.int16, 1000.0)
    put("phantom_volume.nii.gz", vol_bytes)
    put("phantom_volume_mask.nii.gz", _nifti_volume_bytes(vmask, 1.5, np.uint8, 0))
    from bt_demo.io import load_slice

    shown = load_slice(vol_bytes)  # the slice the app opens first
    k = shown.index["slice"][0]
    put("phantom_volume_mask.png", mask_png(vmask[k]))

    rows = ["file                              bytes", "--------------------------------  -------"]
    rows += [f"{p.name:<32}  {p.stat().st_size:>7}" for p in written]
    rows.append(f"(phantom_volume_mask.png is slice {k} of 0..{vol.shape[0] - 1}, the one the app opens first)")
    put("README.txt", _README.format(table="\n".join(rows)).encode())
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bt_demo.sim.phantom", description="Write the synthetic example images.")
    p.add_argument("--out", default="assets/examples", help="folder to write into (default: assets/examples)")
    args = p.parse_args(argv)
    paths = write_examples(args.out)
    print(json.dumps({p.name: p.stat().st_size for p in paths}, indent=1))
    print(f"total {sum(p.stat().st_size for p in paths):,} bytes in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
