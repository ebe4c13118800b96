"""Exports: the mask comes back identical (PNG, NIfTI), the report is valid JSON without identity."""

from __future__ import annotations

import gzip
import json
import math
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from bt_demo.errors import InputError
from bt_demo.io import load_slice
from bt_demo.io.corrections import check_deidentified
from bt_demo.io.export import DISCLAIMER, build_report, mask_nifti, mask_png, write_bundle
from bt_demo.sim.phantom import flair_phantom
from bt_demo.studies import metrics as M


def asymmetric_mask(shape=(37, 53)) -> np.ndarray:
    """An L in the top-left plus a dot bottom-right: any flip or transpose changes it."""
    m = np.zeros(shape, bool)
    m[2:20, 3:6] = True
    m[17:20, 3:15] = True
    m[shape[0] - 4, shape[1] - 3] = True
    return m


def report_kwargs(**over):
    a = asymmetric_mask()
    b = np.zeros_like(a)
    kw = dict(
        engines={"unet": {"weights": "weights/unet", "ms": np.float64(12.5)}, "sam": {"ms": float("nan")}},
        preprocessing=[{"name": "clahe", "params": {"clip": np.float32(2.0), "tiles": (8, 8)}}],
        prompts={"points": np.array([[4, 5]]), "labels": [1]},
        metrics={"unet_vs_sam": M.compare_masks(a, b, spacing=(0.9, 0.9)).as_dict(),
                 "pairwise": M.pairwise_table({"unet": a, "sam": b}, spacing=(0.9, 0.9)),
                 "raw_hd95": float("inf")},
        areas=M.area_table({"unet": a, "sam": b}, spacing=(0.9, 0.9)),
        classifier={"probabilities": {"glioma": np.float32(0.7), "no_tumour": 0.3}},
        spacing=(0.9, 0.9), shape=a.shape, app_version="0.1.0",
    )
    kw.update(over)
    return kw


# ---------------------------------------------------------------------------
# PNG and NIfTI round trips
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [bool, np.uint8, np.float32])
def test_png_round_trip(dtype):
    m = asymmetric_mask()
    raw = mask_png(m.astype(dtype) * (255 if dtype is np.uint8 else 1))
    assert raw.startswith(b"\x89PNG")
    s = load_slice(raw)
    assert s.shape == m.shape and s.metadata["bits"] == "8"
    np.testing.assert_array_equal(s.pixels, m * 255.0)


@pytest.mark.parametrize("spacing", [(0.8, 1.25), (2.0, 0.5), None])
def test_nifti_round_trip_through_the_app_loader(spacing):
    m = asymmetric_mask((41, 66))
    raw = mask_nifti(m, spacing)
    assert raw[:2] == b"\x1f\x8b"
    s = load_slice(raw)
    assert s.shape == m.shape
    np.testing.assert_array_equal(s.pixels > 0.5, m)
    assert set(np.unique(s.pixels)) == {0.0, 1.0}
    # NIfTI stores float32: 0.8 mm comes back as 0.800000011920929
    if spacing is None:
        assert s.spacing is None  # written as unknown, read back as unknown: never 1 mm
    else:
        assert s.spacing == pytest.approx(spacing, rel=1e-6)


def test_nifti_header_keeps_spacing_and_uint8():
    import nibabel as nib

    m = asymmetric_mask((41, 66))
    img = nib.Nifti1Image.from_bytes(gzip.decompress(mask_nifti(m, (0.8, 1.25))))
    assert img.get_data_dtype() == np.uint8
    assert img.shape == (66, 41, 1)  # (columns, rows, 1): see the module docstring
    np.testing.assert_allclose(img.header.get_zooms()[:2], (1.25, 0.8))  # (col_mm, row_mm)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, 0].T, m)
    assert img.header.get_xyzt_units()[0] == "mm"


def test_phantom_mask_round_trip_at_app_size():
    _, m = flair_phantom((256, 256), seed=0)
    np.testing.assert_array_equal(load_slice(mask_nifti(m, (0.9, 0.9))).pixels > 0.5, m)
    np.testing.assert_array_equal(load_slice(mask_png(m)).pixels > 127, m)


@pytest.mark.parametrize("bad, text", [
    (np.zeros((3, 20, 20)), "2-D"),
    (np.zeros((0, 20)), "empty"),
])
def test_bad_masks(bad, text):
    with pytest.raises(InputError, match=text):
        mask_png(bad)
    with pytest.raises(InputError, match=text):
        mask_nifti(bad)


def test_bad_spacing():
    with pytest.raises(InputError, match="row_mm, col_mm"):
        mask_nifti(asymmetric_mask(), (0.9, 0))


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------
def test_report_is_strict_json_with_inf_and_nan_as_null():
    rep = build_report(**report_kwargs())
    text = json.dumps(rep, allow_nan=False)  # raises on NaN / inf
    back = json.loads(text)
    assert back["disclaimer"] == DISCLAIMER == "Research demo, not for diagnosis."
    datetime.strptime(back["created_utc"], "%Y-%m-%dT%H:%M:%SZ")
    assert back["app_version"] == "0.1.0"
    assert back["image"] == {"shape": [37, 53], "spacing_mm": [0.9, 0.9]}
    assert back["metrics"]["raw_hd95"] is None
    assert back["metrics"]["unet_vs_sam"]["hd95"] is None  # one empty mask: no distance
    assert back["engines"]["sam"]["ms"] is None and back["engines"]["unet"]["ms"] == 12.5
    assert back["preprocessing"][0]["params"] == {"clip": 2.0, "tiles": [8, 8]}
    assert back["prompts"]["points"] == [[4, 5]]
    assert back["classifier"]["probabilities"]["glioma"] == pytest.approx(0.7)
    assert [row["mask"] for row in back["areas"]] == ["unet", "sam"]
    assert back["areas"][0]["area_px"] == int(asymmetric_mask().sum())
    assert back["extra"] == {}
    check_deidentified(back)  # no forbidden key or value anywhere
    assert build_report(**report_kwargs(classifier=None, spacing=None))["image"]["spacing_mm"] is None


@pytest.mark.parametrize("over", [
    {"extra": {"PatientName": "Doe^Jane"}},
    {"extra": {"upload_path": "x"}},
    {"extra": {"source": "DOE_JANE_0042.dcm"}},
    {"engines": {"unet": {"weights": "/home/jane/models/unet"}}},
    {"metrics": {"study": {"StudyInstanceUID": "1.2.3"}}},
    {"classifier": {"note": "scan_7.nii.gz"}},
    {"prompts": {"file_name": "a"}},
])
def test_report_refuses_identity_and_file_names(over):
    with pytest.raises(InputError, match="cannot be stored"):
        build_report(**report_kwargs(**over))


@pytest.mark.parametrize("over, text", [
    ({"engines": ["unet"]}, "engines must be a dict"),
    ({"shape": (10,)}, "(H, W)"),
    ({"spacing": (1, float("nan"))}, "row_mm, col_mm"),
    ({"extra": {"blob": b"bytes"}}, "bytes"),
])
def test_report_bad_arguments(over, text):
    with pytest.raises(InputError) as e:
        build_report(**report_kwargs(**over))
    assert text in str(e.value)


# ---------------------------------------------------------------------------
# bundle
# ---------------------------------------------------------------------------
def test_write_bundle(tmp_path):
    m = asymmetric_mask()
    rep = build_report(**report_kwargs())
    paths = write_bundle(tmp_path / "out", m, (0.9, 0.9), rep)
    assert set(paths) == {"png", "nifti", "report"}
    rid = re.fullmatch(r"mask_([0-9a-f]{12})\.png", paths["png"].name).group(1)
    assert paths["nifti"].name == f"mask_{rid}.nii.gz" and paths["report"].name == f"report_{rid}.json"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths.values())
    np.testing.assert_array_equal(load_slice(paths["png"]).pixels > 127, m)
    nii = load_slice(paths["nifti"])
    np.testing.assert_array_equal(nii.pixels > 0.5, m)
    assert nii.spacing == pytest.approx((0.9, 0.9), rel=1e-6)
    back = json.loads(paths["report"].read_text())
    assert back["bundle_id"] == rid and back["disclaimer"] == DISCLAIMER
    check_deidentified(back)
    again = write_bundle(tmp_path / "out", m, (0.9, 0.9), rep)
    assert again["png"] != paths["png"]  # a second export never overwrites the first
    assert len(list((tmp_path / "out").iterdir())) == 6


def test_write_bundle_refuses_a_mask_of_another_slice(tmp_path):
    rep = build_report(**report_kwargs())
    with pytest.raises(InputError, match="37x53"):
        write_bundle(tmp_path, np.zeros((40, 40), bool), None, rep)
    assert not any(tmp_path.iterdir())
    with pytest.raises(InputError, match="PatientID"):
        write_bundle(tmp_path, asymmetric_mask(), None, rep | {"PatientID": "123"})
    assert not any(tmp_path.iterdir())


def test_nifti_bytes_are_deterministic_and_carry_no_name():
    m = asymmetric_mask()
    a, b = mask_nifti(m, (1.0, 1.0)), mask_nifti(m, (1.0, 1.0))
    assert a == b  # gzip mtime fixed: no time stamp, no file name inside
    flags, mtime = a[3], a[4:8]
    assert not flags & 0x08 and not flags & 0x10  # no FNAME, no FCOMMENT field
    assert mtime == b"\0\0\0\0"
    assert math.isclose(len(gzip.decompress(a)), 352 + 53 * 37, abs_tol=8)


# ---------------------------------------------------------------------------
# exports that sit on their source (nibabel's and pydicom's bundled files)
# ---------------------------------------------------------------------------
def _world_of_mask(nii_bytes: bytes) -> np.ndarray:
    """World (RAS mm) centres of the mask's voxels, from the exported file alone."""
    import nibabel as nib

    img = nib.Nifti1Image.from_bytes(gzip.decompress(nii_bytes))
    ijk = np.argwhere(np.asarray(img.dataobj) > 0)
    return nib.affines.apply_affine(img.affine, ijk)


def _nib(name):
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data" / name


@pytest.mark.parametrize("name", ["anatomical.nii", "example4d.nii.gz", "example_nifti2.nii.gz", "reoriented"])
def test_nifti_slice_export_lands_on_the_same_voxels_of_the_source(name, tmp_path):
    """A mask drawn on a NIfTI slice, exported, reloaded: its voxels are the source's voxels, in world mm."""
    import nibabel as nib

    from bt_demo.io import load_slice

    if name == "reoriented":  # a copy stored in another orientation (LPS-ish), same anatomy
        src = nib.load(_nib("anatomical.nii"))
        data = np.asarray(src.dataobj)[::-1, :, ::-1]
        flip = np.diag([-1.0, 1.0, -1.0, 1.0])
        flip[0, 3], flip[2, 3] = data.shape[0] - 1, data.shape[2] - 1
        img = nib.Nifti1Image(data, src.affine @ flip)
        path = tmp_path / "reoriented.nii"
        nib.save(img, path)
    else:
        path = _nib(name)
        img = nib.load(path)
    sl = load_slice(path.read_bytes())
    assert sl.affine is not None
    h, w = sl.shape
    mask = np.zeros((h, w), bool)
    mask[h // 3: h // 3 + 4, w // 4: w // 4 + 3] = True  # off-centre, asymmetric
    world = _world_of_mask(mask_nifti(mask, sl.spacing, sl.affine))
    # the same pixels in the source volume: find each world point's voxel and check it shows that pixel's value
    inv = np.linalg.inv(img.affine)
    ijk = np.rint(nib.affines.apply_affine(inv, world)).astype(int)
    vol = np.asarray(img.dataobj)
    vol = vol[..., 0] if vol.ndim == 4 else vol
    assert ((ijk >= 0) & (ijk < vol.shape[:3])).all()
    got = np.sort(vol[tuple(ijk.T)].astype(np.float64))
    want = np.sort(sl.pixels[mask].astype(np.float64))
    assert np.allclose(got, want, rtol=1e-4, atol=1e-3)
    assert len({tuple(v) for v in ijk}) == mask.sum()  # one source voxel per mask pixel
    k = sl.index["slice"][0]
    # the slice index the app shows is the canonical (RAS) one; the world z of every mask voxel is that slice's
    canon = nib.as_closest_canonical(img)
    z = nib.affines.apply_affine(np.linalg.inv(canon.affine), world)[:, 2]
    assert np.allclose(z, k, atol=1e-3)


def test_dicom_slice_export_lands_at_its_patient_position():
    """pydicom's MR_small.dcm: the exported mask's corner is ImagePositionPatient (LPS -> RAS)."""
    import pydicom
    from pydicom.data import get_testdata_file

    from bt_demo.io import load_slice

    path = get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    sl = load_slice(Path(path).read_bytes())
    mask = np.zeros(sl.shape, bool)
    mask[0, 0] = True
    mask[5, 9] = True
    world = _world_of_mask(mask_nifti(mask, sl.spacing, sl.affine))
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    r, c = (np.array([float(v) for v in ds.ImageOrientationPatient[:3]]),
            np.array([float(v) for v in ds.ImageOrientationPatient[3:]]))
    row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
    lps = {(0, 0): ipp, (5, 9): ipp + 9 * col_mm * r + 5 * row_mm * c}
    want = np.array(sorted((v * [-1, -1, 1]).tolist() for v in lps.values()))
    assert np.allclose(np.array(sorted(world.tolist())), want, atol=1e-3)


def test_unknown_spacing_is_written_as_unknown_not_1mm():
    import nibabel as nib

    img = nib.Nifti1Image.from_bytes(gzip.decompress(mask_nifti(np.ones((20, 30), bool))))
    assert int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) == 0
    assert img.header.get_xyzt_units()[0] == "unknown"
