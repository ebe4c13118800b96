"""Volume uploads are counted from their headers, across the whole upload, before any pixel is decoded
(issue 26): each hostile shape is refused with a message that names the limit, and fast; the server's
memory budget makes concurrent loads wait instead of adding up."""

from __future__ import annotations

import io
import threading
import time
import zipfile

import numpy as np
import pytest

from bench.hostile_volumes import dicom_bytes, make_cases
from bt_demo.errors import InputError
from bt_demo.io.memory import MemoryBudget
from bt_demo.io.upload import UploadLimits
from bt_demo.volume import load_volume
from bt_demo.volume.series import series_choices


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return {c.name: c for c in make_cases(tmp_path_factory.mktemp("hostile"), scale=0.25)}


@pytest.mark.parametrize("name, says", [
    ("zip_of_zips_512.zip", "archives inside archives are not opened"),
    ("zip_of_zips_2048.zip", "archives inside archives are not opened"),
    ("zip_2048_under_bytes.zip", "declare .* voxels in all; the limit is"),
    ("series_one_huge_slice.zip", "huge.dcm declares 1 frame\\(s\\) of 20000x20000 px"),
    ("multiframe_lying_count.dcm", "declare 1,048,576,000 voxels in all"),
    ("inflates_past_declared.zip", "is damaged"),
])
def test_each_hostile_shape_is_refused_before_decoding_with_the_limit_named(cases, name, says, monkeypatch):
    decoded = []
    import pydicom.dataset

    real = pydicom.dataset.Dataset.pixel_array
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array",
                        property(lambda ds: decoded.append(1) or real.fget(ds)))
    with pytest.raises(InputError, match=says):
        load_volume([cases[name].path])
    if name != "inflates_past_declared.zip":
        assert not decoded, "a pixel was decoded before the upload's budget was counted"


def test_the_byte_budget_counts_the_whole_upload_not_each_archive(tmp_path):
    """Two zips each under the limit are refused together, from their directories alone."""
    one = io.BytesIO()
    with zipfile.ZipFile(one, "w", zipfile.ZIP_DEFLATED) as z:
        for k in range(6):
            z.writestr(f"{k}.dcm", dicom_bytes(64, 64, k))
    limits = UploadLimits(max_files=10)
    load_volume([one.getvalue()], limits=limits)  # 6 files: fine
    with pytest.raises(InputError, match="holds 12 files or more; the limit is 10 \\(2 too many\\)"):
        load_volume([one.getvalue(), one.getvalue()], limits=limits)
    with pytest.raises(InputError, match="expands to .* the limit is"):
        load_volume([one.getvalue()], limits=UploadLimits(max_bytes=6 * 64 * 64 * 2))


def test_a_legitimate_series_still_loads_and_lists_its_series(cases):
    vol = load_volume([cases["legit_series.zip"].path])
    assert vol.shape == (24, 256, 256) and vol.source == "dicom-series"
    assert vol.spacing[0] == pytest.approx(3.0)
    assert series_choices([cases["legit_series.zip"].path]) == [("1: MR (24 images)", 24)]
    # the kept datasets carry headers for the SEG export, not a second copy of the pixels
    assert all("PixelData" not in ds for ds in vol.series)


def test_a_multiframe_whose_header_and_pixels_disagree_is_refused():
    n_declared = dicom_bytes(32, 32, 0, frames=6, pixel_frames=3, series_uid="1.2.3.4")
    with pytest.raises(InputError, match="cannot be decoded|does not hold the 6 frames"):
        load_volume([n_declared])
    ok = load_volume([dicom_bytes(32, 32, 0, frames=6, series_uid="1.2.3.5")])
    assert ok.shape == (6, 32, 32) and ok.source == "dicom-multiframe"


def test_a_nifti_is_budgeted_from_its_header(tmp_path):
    from bench.bad_inputs import nifti_bytes

    raw = bytearray(nifti_bytes(np.zeros((32, 32, 8), np.int16)))
    import struct

    struct.pack_into("<8h", raw, 40, 3, 1024, 1024, 512, 1, 1, 1, 1)  # dim: 1024 x 1024 x 512, data absent
    p = tmp_path / "liar.nii"
    p.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="voxels; the limit is"):
        load_volume(p)


def test_the_server_budget_makes_a_second_load_wait_and_then_proceed():
    budget = MemoryBudget(100)
    waited, order = [], []

    def second():
        with budget.reserve(80, wait_s=5, on_wait=lambda s, used: waited.append(used)):
            order.append("second")

    with budget.reserve(60):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first done")
    t.join(5)
    assert order == ["first done", "second"] and waited and waited[0] == 60
    assert budget.used == 0


def test_the_server_budget_gives_up_with_a_message_and_refuses_what_can_never_fit():
    budget = MemoryBudget(100)
    with budget.reserve(90):
        with pytest.raises(InputError, match="busy loading other volumes .* try again"):
            with budget.reserve(20, wait_s=0.2):
                pass
    with pytest.raises(InputError, match="more than this server allows one volume"):
        with budget.reserve(101):
            pass
    assert budget.used == 0


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
def test_compressed_implicit_and_big_endian_series_give_the_same_volume(name):
    """The second pass reads only the pixel element where it can (native syntaxes) and the whole file where
    it cannot (encapsulated); every syntax gives the pixels of the plain file."""
    from pydicom.data import get_testdata_file

    from bench.bench_volume_load import _mr_small_series

    want = load_volume(_mr_small_series(get_testdata_file("MR_small.dcm"), 4))
    got = load_volume(_mr_small_series(get_testdata_file(name), 4))
    assert got.shape == want.shape == (4, 64, 64)
    assert np.array_equal(got.data, want.data)
