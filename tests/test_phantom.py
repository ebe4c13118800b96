"""Synthetic FLAIR phantoms and the shipped example files.

What a user would notice: the lesion is the bright thing in one hemisphere,
CSF is dark, the background is black, each example opens in the app with its
ground-truth mask aligned, and the examples folder holds only synthetic files.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from bt_demo.io import load_slice
from bt_demo.sim.phantom import flair_phantom, flair_phantom_volume, write_examples

REPO = Path(__file__).resolve().parents[1]
EXPECTED_FILES = {
    "README.txt",
    "phantom_flair.png", "phantom_flair_mask.png",
    "phantom_flair_512.png", "phantom_flair_512_mask.png",
    "phantom_cystic.png", "phantom_cystic_mask.png",
    "phantom_flair_16bit.tif", "phantom_flair_16bit_mask.png",
    "phantom_flair.dcm", "phantom_flair_dcm_mask.png",
    "phantom_volume.nii.gz", "phantom_volume_mask.nii.gz", "phantom_volume_mask.png",
}
# image -> its ground-truth mask
PAIRS = {
    "phantom_flair.png": "phantom_flair_mask.png",
    "phantom_flair_512.png": "phantom_flair_512_mask.png",
    "phantom_cystic.png": "phantom_cystic_mask.png",
    "phantom_flair_16bit.tif": "phantom_flair_16bit_mask.png",
    "phantom_flair.dcm": "phantom_flair_dcm_mask.png",
    "phantom_volume.nii.gz": "phantom_volume_mask.png",
}
MAX_FOLDER_BYTES = 1_500_000


def head_mask(img: np.ndarray) -> np.ndarray:
    return ndimage.binary_fill_holes(ndimage.gaussian_filter(img, 2) > 0.25)


def brain_near(mask: np.ndarray, img: np.ndarray, ring: int = 10) -> np.ndarray:
    """Pixels of the head within ``ring`` px of the lesion, outside it (and off its halo)."""
    near = ndimage.binary_dilation(mask, iterations=ring) & ~ndimage.binary_dilation(mask, iterations=4)
    return near & head_mask(img)


# ---------------------------------------------------------------------------
# flair_phantom
# ---------------------------------------------------------------------------
def test_types_range_and_determinism():
    img, m = flair_phantom((256, 256), seed=0)
    assert img.dtype == np.float32 and img.shape == (256, 256)
    assert m.dtype == bool and m.shape == (256, 256)
    assert img.min() >= 0.0 and img.max() <= 1.0
    img2, m2 = flair_phantom((256, 256), seed=0)
    np.testing.assert_array_equal(img, img2)
    np.testing.assert_array_equal(m, m2)
    img3, m3 = flair_phantom((256, 256), seed=1)
    assert not np.array_equal(m, m3)
    assert np.abs(img - img3).mean() > 0.01


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_looks_like_a_flair_slice(seed):
    img, m = flair_phantom((256, 256), seed=seed)
    h, w = img.shape
    head = head_mask(img)
    # background dark, head fills a good part of the frame but not all of it
    corners = np.concatenate([img[:12, :12].ravel(), img[:12, -12:].ravel(), img[-12:, :12].ravel()])
    assert corners.mean() < 0.08
    assert 0.35 < head.mean() < 0.85
    assert not head[0].any() and not head[-1].any() and not head[:, 0].any() and not head[:, -1].any()
    # a lesion of a sensible size, inside the head, FLAIR-bright against the brain around it
    area = int(m.sum())
    assert 0.003 * h * w < area < 0.08 * h * w
    assert head[m].all()
    assert img[m].mean() > img[brain_near(m, img)].mean() + 0.2
    # in one hemisphere: (almost) all of it on one side of the midline, its centroid well off it
    cy, cx = ndimage.center_of_mass(m)
    left = m[:, : w // 2].sum() / area
    assert max(left, 1 - left) > 0.95
    assert abs(cx - w / 2) > 0.08 * w
    # dark CSF (ventricles) near the centre of the head
    centre = img[int(h * 0.35):int(h * 0.65), int(w * 0.4):int(w * 0.6)]
    assert ndimage.uniform_filter(centre, 3).min() < 0.25


def test_cystic_lesion_has_a_dark_core_and_a_bright_rim():
    img, m = flair_phantom((256, 256), seed=2, lesion_kind="cystic")
    depth = ndimage.distance_transform_edt(m)
    rim, core = m & (depth <= 2), depth >= 6
    assert core.sum() > 20
    assert img[rim].mean() > img[core].mean() + 0.35
    assert img[core].mean() < img[brain_near(m, img)].mean()  # darker than the brain around it
    solid, ms = flair_phantom((256, 256), seed=2, lesion_kind="solid")
    np.testing.assert_array_equal(ms, m)  # same seed, same outline: only the inside differs
    assert solid[core].mean() > img[core].mean() + 0.3


def test_no_lesion_means_an_empty_mask_and_no_bright_blob():
    img, m = flair_phantom((256, 256), seed=0, lesion=False)
    with_lesion, m1 = flair_phantom((256, 256), seed=0)
    assert not m.any()
    assert img[m1].mean() < with_lesion[m1].mean() - 0.2


@pytest.mark.parametrize("shape", [(97, 180), (300, 120), (16, 16), (33, 64)])
def test_non_square_and_small_shapes(shape):
    img, m = flair_phantom(shape, seed=5)
    assert img.shape == shape and m.shape == shape
    assert np.isfinite(img).all() and 0 <= img.min() and img.max() <= 1
    if min(shape) >= 90:
        head = head_mask(img)
        assert m.any() and head[m].all()
        assert not head[0].any() and not head[:, 0].any()


@pytest.mark.parametrize("kwargs, text", [
    ({"shape": (8, 256)}, "16 to 4096"),
    ({"shape": (256, 5000)}, "16 to 4096"),
    ({"shape": (256,)}, "(H, W)"),
    ({"shape": (25.5, 64)}, "whole numbers"),
    ({"lesion_kind": "necrotic"}, "'solid', 'cystic'"),
    ({"seed": -1}, ">= 0"),
    ({"seed": 1.5}, ">= 0"),
])
def test_bad_parameters_say_the_allowed_range(kwargs, text):
    with pytest.raises(ValueError) as e:
        flair_phantom(**kwargs)
    assert text in str(e.value)


def test_volume_lesion_spans_several_slices():
    vol, m = flair_phantom_volume((12, 64, 64), spacing=3.0, seed=1)
    assert vol.shape == m.shape == (12, 64, 64) and vol.dtype == np.float32
    per_slice = m.reshape(12, -1).sum(1)
    assert (per_slice > 0).sum() >= 3
    assert per_slice.argmax() in (5, 6, 7)  # centred on the middle slice
    with pytest.raises(ValueError, match="0.2 to 5"):
        flair_phantom_volume(spacing=9.0)


# ---------------------------------------------------------------------------
# example files
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("examples")
    paths = write_examples(out)
    assert {p.name for p in paths} == EXPECTED_FILES
    assert all(p.parent == out and p.is_file() for p in paths)
    return out


def test_examples_are_small_and_only_the_expected_files(examples):
    assert {p.name for p in examples.iterdir()} == EXPECTED_FILES
    assert sum(p.stat().st_size for p in examples.iterdir()) < MAX_FOLDER_BYTES


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_each_example_opens_with_its_mask_aligned(examples, name):
    s = load_slice(examples / name)
    mask_slice = load_slice(examples / PAIRS[name])
    assert mask_slice.shape == s.shape
    assert set(np.unique(mask_slice.pixels)) <= {0.0, 255.0}
    m = mask_slice.pixels > 127
    assert m.sum() > 30
    u = s.unit()
    # the mask sits on the bright lesion: brighter than the head around it (cystic: its rim)
    rim = m & ~ndimage.binary_erosion(m, iterations=2)
    assert u[rim].mean() > u[brain_near(m, u)].mean() + 0.15


def test_example_formats_and_their_headers(examples):
    import nibabel as nib
    import pydicom
    import tifffile

    assert load_slice(examples / "phantom_flair.png").shape == (256, 256)
    assert load_slice(examples / "phantom_flair_512.png").shape == (512, 512)
    tif = tifffile.imread(examples / "phantom_flair_16bit.tif")
    assert tif.dtype == np.uint16 and tif.shape == (256, 256) and tif.max() > 255

    dcm = load_slice(examples / "phantom_flair.dcm")
    assert dcm.spacing == (0.9, 0.9)
    assert dcm.window == (1800.0, 3600.0)
    ds = pydicom.dcmread(examples / "phantom_flair.dcm")
    assert ds.Modality == "MR"
    assert str(ds.PatientName) == "Anonymous^Phantom" and ds.PatientID == "PHANTOM"
    for kw in ("PatientBirthDate", "StudyDate", "AccessionNumber", "ReferringPhysicianName", "InstitutionName"):
        assert not str(ds.get(kw, "")), kw

    vol = load_slice(examples / "phantom_volume.nii.gz")
    assert vol.spacing == (1.5, 1.5) and vol.shape == (128, 128)
    k, n = vol.index["slice"]
    assert n == 24
    img = nib.load(examples / "phantom_volume.nii.gz")
    assert img.shape == (128, 128, 24)
    np.testing.assert_allclose(img.header.get_zooms(), (1.5, 1.5, 1.5))
    mask3 = load_slice(examples / "phantom_volume_mask.nii.gz", slice_index=k).pixels > 0
    np.testing.assert_array_equal(mask3, load_slice(examples / "phantom_volume_mask.png").pixels > 127)
    per_slice = np.asarray(nib.load(examples / "phantom_volume_mask.nii.gz").dataobj).reshape(-1, 24).sum(0)
    assert (per_slice > 0).sum() >= 5  # the lesion runs through several slices


def test_shipped_examples_folder(tmp_path):
    """assets/examples holds exactly the generated, synthetic files, and they open."""
    shipped = REPO / "assets" / "examples"
    if not shipped.is_dir():
        pytest.skip("assets/examples not generated yet: python -m bt_demo.sim.phantom --out assets/examples")
    assert {p.name for p in shipped.iterdir()} == EXPECTED_FILES
    assert sum(p.stat().st_size for p in shipped.iterdir()) < MAX_FOLDER_BYTES
    for name, mask in PAIRS.items():
        assert load_slice(shipped / name).shape == load_slice(shipped / mask).shape
    readme = (shipped / "README.txt").read_text()
    assert "synthetic" in readme.lower() or "random numbers" in readme


def test_dicom_example_bytes_carry_no_identity():
    from bt_demo.sim.phantom import _dicom_bytes

    img, _ = flair_phantom((32, 32), seed=0)
    raw = _dicom_bytes(img, 0.9)
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(raw))
    names = {el.keyword for el in ds.iterall() if str(el.value).strip()}
    assert not names & {"PatientBirthDate", "PatientSex", "PatientAge", "StudyDate", "StudyTime",
                        "InstitutionName", "ReferringPhysicianName", "AccessionNumber", "OperatorsName"}
