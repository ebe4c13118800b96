"""Volume mode: series in (NIfTI of several orientations, a DICOM series made from pydicom's MR_small.dcm),
segmentation and numbers, propagation, and exports that overlay their source to the voxel."""

from __future__ import annotations

import copy
import gzip
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bt_demo.errors import InputError
from bt_demo.volume import Volume, load_volume
from bt_demo.volume.export import dicom_seg, mask_nifti_3d


def _nib(name: str) -> Path:
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data" / name


def _reoriented(tmp_path) -> Path:
    """anatomical.nii stored in another axis order (ARI instead of LAS): the same anatomy in world space."""
    import nibabel as nib

    src = nib.load(_nib("anatomical.nii"))
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(src.affine),
                                           nib.orientations.axcodes2ornt(("A", "R", "I")))
    img = src.as_reoriented(ornt)
    p = tmp_path / "reoriented.nii.gz"
    nib.save(img, p)
    return p


def _world(affine, ijk):
    import nibabel as nib

    return nib.affines.apply_affine(affine, np.asarray(ijk, float))


@pytest.mark.parametrize("name", ["anatomical.nii", "example4d.nii.gz", "example_nifti2.nii.gz", "reoriented"])
def test_nifti_volume_export_overlays_its_source_to_the_voxel(name, tmp_path):
    import nibabel as nib

    path = _reoriented(tmp_path) if name == "reoriented" else _nib(name)
    vol = load_volume(path.read_bytes())
    src = nib.load(path)
    assert vol.source == "nifti" and vol.spacing is not None
    Z, H, W = vol.shape
    mask = np.zeros(vol.shape, bool)
    mask[Z // 2, H // 3:H // 3 + 3, W // 4:W // 4 + 2] = True  # asymmetric
    mask[Z // 2 + 1, H // 2, W // 2] = True
    out = nib.Nifti1Image.from_bytes(gzip.decompress(mask_nifti_3d(vol, mask)))
    assert out.shape == src.shape[:3]
    assert np.allclose(out.affine, src.affine, atol=1e-4)
    # world positions of the mask voxels: through the volume's own affine vs the exported file's
    zyx = np.argwhere(mask)
    want = _world(vol.affine, zyx[:, [2, 1, 0]])
    got = _world(out.affine, np.argwhere(np.asarray(out.dataobj) > 0))
    assert np.allclose(np.sort(want, axis=0), np.sort(got, axis=0), atol=1e-3)
    # and the source's voxel values there are the volume's pixels there
    data = np.asarray(src.dataobj)
    data = data[..., 0] if data.ndim == 4 else data
    ijk = np.argwhere(np.asarray(out.dataobj) > 0)
    assert np.allclose(np.sort(data[tuple(ijk.T)]), np.sort(vol.data[mask]), rtol=1e-5)


def test_a_slice_of_the_volume_is_the_slice_the_app_shows():
    from bt_demo.io import load_slice

    raw = _nib("anatomical.nii").read_bytes()
    vol = load_volume(raw)
    for k in (3, 12):
        sl = load_slice(raw, slice_index=k)
        assert np.array_equal(vol.data[k], sl.pixels)
        assert np.allclose(vol.affine @ np.array([5, 7, k, 1.0]), sl.affine @ np.array([5, 7, 0, 1.0]))


def _series(n=5, gap=3.0, shuffle=True, series_uid=None):
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    base = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    iop = np.array([float(v) for v in base.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    ipp0 = np.array([float(v) for v in base.ImagePositionPatient])
    uid = series_uid or generate_uid()
    out = []
    for k in range(n):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp0 + k * gap * normal]
        arr = ds.pixel_array.copy()
        arr[0, 0] = 30000 + k  # a marker of the true position
        ds.PixelData = arr.tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    order = list(range(n))
    if shuffle:
        order = [3, 0, 4, 1, 2][:n] if n == 5 else order[::-1]
    return [out[i] for i in order], normal, ipp0


def test_dicom_series_sorted_by_position_and_exported_as_nifti_and_seg(tmp_path):
    import highdicom as hd
    import nibabel as nib
    import pydicom

    files, normal, ipp0 = _series()
    vol = load_volume(files)
    assert vol.source == "dicom-series" and vol.shape[0] == 5
    assert vol.spacing[0] == pytest.approx(3.0, abs=1e-3)
    # the markers come out in position order whatever the file order
    markers = [int(v) - 30000 for v in vol.data.reshape(5, -1).max(1)]
    src_k = [int(round(((vol.affine @ [0, 0, z, 1])[:3] * [-1, -1, 1] - ipp0) @ normal / 3.0)) for z in range(5)]
    assert sorted(src_k) == [0, 1, 2, 3, 4] and markers in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0])
    assert (markers[0] < markers[-1]) == (src_k[0] < src_k[-1])  # the slice at each place is the file from there
    mask = np.zeros(vol.shape, bool)
    mask[2, 10:14, 20:23] = True
    nii = nib.Nifti1Image.from_bytes(gzip.decompress(mask_nifti_3d(vol, mask)))
    got = _world(nii.affine, np.argwhere(np.asarray(nii.dataobj) > 0))
    want = _world(vol.affine, np.argwhere(mask)[:, [2, 1, 0]])
    assert np.allclose(np.sort(got, axis=0), np.sort(want, axis=0), atol=1e-3)
    # DICOM SEG: references the source instances, and its frames sit on the source images' positions
    seg = pydicom.dcmread(io.BytesIO(dicom_seg(vol, mask)))
    assert seg.Modality == "SEG"
    refs = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert refs == {pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID for f in files}
    s = hd.seg.Segmentation.from_dataset(seg)
    assert int(np.asarray(s.pixel_array).sum()) == int(mask.sum())
    fpos = [np.array([float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient])
            for f in seg.PerFrameFunctionalGroupsSequence]
    assert len(fpos) == 1  # only the non-empty frame
    z_world = (vol.affine @ [0, 0, 2, 1])[:3] * [-1, -1, 1]  # LPS of slice 2's first voxel
    assert np.allclose(fpos[0], z_world, atol=1e-3)


def test_dicom_series_in_a_zip_and_with_several_series(tmp_path):
    files, *_ = _series(4, shuffle=False)
    other, *_ = _series(3, shuffle=False)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, f in enumerate(files):
            z.writestr(f"b/{9 - i}.dcm", f)
        z.writestr("README.txt", "not dicom")
    vol = load_volume(buf.getvalue())
    assert vol.shape[0] == 4
    with pytest.raises(InputError, match="2 series") as e:
        load_volume(files + other)
    assert "(4 images)" in str(e.value) and "(3 images)" in str(e.value)
    assert load_volume(files + other, series_index=2).shape[0] == 3


def test_bad_series_are_refused_with_the_reason():
    files, *_ = _series(5, shuffle=False)
    with pytest.raises(InputError, match="missing"):
        load_volume(files[:2] + files[3:])  # a gap
    with pytest.raises(InputError, match="same position"):
        load_volume(files + [files[1]])
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(files[1]))
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(InputError, match="different orientations"):
        load_volume([files[0], buf.getvalue(), files[2]])
    with pytest.raises(InputError, match="not a DICOM image|none of these files"):
        load_volume([b"hello", b"world"])


def test_volume_numbers_and_postprocessing():
    from bt_demo.volume.segment import postprocess_3d, volume_numbers

    vol = Volume(np.zeros((10, 40, 40), np.float32), None, (2.0, 0.5, 0.5), "slices")
    mask = np.zeros(vol.shape, bool)
    mask[3:7, 10:20, 10:30] = True  # 4 x 10 x 20 = 800 voxels of 0.5 mm^3
    mask[9, 0, 0] = True  # a speck far away
    clean = postprocess_3d(mask, 0.1)
    assert clean.sum() == 800 and not clean[9, 0, 0]
    n = volume_numbers(vol, clean)
    assert n["voxels"] == 800 and n["volume_ml"] == pytest.approx(800 * 0.5 / 1000)
    assert n["extent_slices"] == [3, 6] and n["extent_mm"] == pytest.approx(8.0)
    assert n["largest_slice"] in (3, 4, 5, 6) and n["rano"]["long_diameter"] > n["rano"]["short_diameter"] > 0
    none = volume_numbers(Volume(vol.data, None, None, "slices"), clean)
    assert none["volume_ml"] is None and none["voxels"] == 800


def test_segment_and_propagate_run_through_the_real_engines(engines):
    from bt_demo.sim.phantom import flair_phantom
    from bt_demo.volume.segment import propagate, segment_volume

    imgs, masks = zip(*[flair_phantom((64, 64), seed=s) for s in range(6)], strict=True)
    vol = Volume.from_slices([i * 255 for i in imgs])
    seen = []
    res = segment_volume(vol, engines.unet(), progress=lambda i, n: seen.append((i, n)))
    assert res.mask.shape == vol.shape and res.prob.shape == vol.shape and seen[-1] == (6, 6)
    clicks = engines.new_predictor("clicks")
    pr = propagate(vol, clicks, 2, masks[2], min_area_px=1)
    assert pr.mask.shape == vol.shape and np.array_equal(pr.mask[2], masks[2])
    assert pr.settings["start_slice"] == 2
    # the U-Net gate: nothing outside it is ever added (here it allows nothing, so only the clicked slice stays)
    from bt_demo.volume.segment import propagation_gate

    gated = propagate(vol, clicks, 2, masks[2], min_area_px=1, gate=np.zeros(vol.shape, bool))
    assert np.array_equal(gated.mask[2], masks[2]) and not np.delete(gated.mask, 2, axis=0).any()
    g = propagation_gate(np.pad(np.ones((1, 2, 2)), ((0, 0), (5, 5), (5, 5))), level=0.5, grow=2)
    assert g.shape == (1, 12, 12) and g.sum() == 4 + 8 + 12  # a 2x2 square grown by two 4-connected rings


def test_batch_command_writes_mask_seg_and_report_for_each_input(tmp_path):
    import json
    import subprocess
    import sys

    from tests.tiny_models import make_weights_dir

    wd = make_weights_dir(tmp_path / "w")
    files, *_ = _series(4, shuffle=False)
    series_dir = tmp_path / "series"
    series_dir.mkdir()
    for i, f in enumerate(files):
        (series_dir / f"img{i}.dcm").write_bytes(f)
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"not a volume")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "bt_demo.volume", str(_nib("anatomical.nii")), str(series_dir), str(bad),
                        "--out", str(out), "--weights-dir", str(wd), "--threads", "1"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 1 and "bad.nii: not processed" in r.stderr  # the others still ran
    a, b = out / "0001_anatomical", out / "0002_series"
    assert (a / "mask.nii.gz").exists() and not (a / "seg.dcm").exists()
    assert (b / "mask.nii.gz").exists() and (b / "seg.dcm").exists()
    rep = json.loads((a / "report.json").read_text())
    assert rep["volume"]["voxels"] >= 0 and "volume_ml" in rep["volume"] and rep["engine"] == "U-Net"
    assert len(rep["areas_px_per_slice"]) == rep["shape_zyx"][0]


def test_volume_tab_segments_propagates_jumps_and_exports(engines, tmp_path):
    """The Volume tab's handlers on the bundled synthetic NIfTI volume, as the page calls them."""
    import nibabel as nib

    from bt_demo.ui.panels import prompts as PR
    from bt_demo.ui.panels import upload as UP
    from bt_demo.ui.panels import volume as VP
    from bt_demo.ui.state import Session

    example = Path(__file__).resolve().parents[1] / "assets" / "examples" / "phantom_volume.nii.gz"
    s = Session()
    s, view = VP.segment(s, engines)
    assert "upload a NIfTI volume" in " ".join(view.get("_messages", []))
    s, view = UP.load_file(s, engines, str(example))
    ticks = []
    s, view = VP.segment(s, engines, None, None, lambda t, **kw: ticks.append(t))
    Z = s.volume.shape[0]
    assert ticks[-1] == (Z, Z) and s.volume_masks["unet"].shape == s.volume.shape
    assert ("mL" in view["volume_info"]) or ("voxels" in view["volume_info"])
    assert list(view["volume_plot"]["slice"]) == list(range(1, Z + 1))
    assert view["volume_image"].ndim == 3 and view["volume_slice"]["maximum"] == Z
    s, view = VP.show(s, 2, None)
    assert s.volume_k == 1
    s, view = VP.jump(s, [1, Z])
    assert 0 <= s.volume_k < Z
    # propagate: click the lesion on the shown slice of the same upload, then carry it through the series
    k = s.slice.index["slice"][0]
    lesion = np.argwhere(s.slice.pixels >= np.percentile(s.slice.pixels, 99.5))[0]
    x, y = (lesion[1] + 0.5) * s.display_factor - 0.5, (lesion[0] + 0.5) * s.display_factor - 0.5
    s, _ = PR.click(s, engines, [x, y], "positive")
    assert s.prompts.result is not None
    s, view = VP.propagate(s, engines)
    assert s.volume_which == "propagated" and s.volume_k == k
    assert np.array_equal(s.volume_masks["propagated"][k], s.prompts.result.mask)
    s, view = VP.export(s, engines)
    files = view["volume_files"]
    assert any(f.endswith(".nii.gz") for f in files) and any(f.endswith(".json") for f in files)
    nii = nib.load(next(f for f in files if f.endswith(".nii.gz")))
    src = nib.load(example)
    assert nii.shape == src.shape[:3] and np.allclose(nii.affine, src.affine, atol=1e-4)
    rep = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())
    assert rep["volume"]["mask"].startswith("propagated") and rep["volume"]["slices"] == Z


def test_volume_export_of_a_series_a_seg_cannot_be_written_for_still_gives_mask_and_report(engines, tmp_path):
    """A DICOM series without SliceThickness (a SEG must copy it): the page exports the NIfTI mask and the
    report, says why there is no SEG, and the report says it too."""
    import pydicom

    from bench.hostile_volumes import dicom_bytes
    from bt_demo.ui.panels import volume as VP
    from bt_demo.ui.state import Session

    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for k in range(4):
            ds = pydicom.dcmread(io.BytesIO(dicom_bytes(32, 32, k, series_uid="1.2.3.9")))
            del ds.SliceThickness
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            z.writestr(f"{k}.dcm", buf.getvalue())
    s = Session()
    s, _ = VP.segment(s, engines, [str(archive)])
    assert s.volume is not None and s.volume.source.startswith("dicom")
    s, view = VP.export(s, engines)
    files = view["volume_files"]
    assert not any(f.endswith(".dcm") for f in files) and any(f.endswith(".nii.gz") for f in files)
    assert "No DICOM SEG" in view["volume_export_info"] and "SliceThickness" in view["volume_export_info"]
    rep = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())
    assert "SliceThickness" in rep["seg_not_written"]
