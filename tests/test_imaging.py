"""bt_demo.io: every upload format -> one Slice, and every bad upload -> InputError.

All files are generated here (Pillow, tifffile, pydicom, nibabel); no real data.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from bt_demo.errors import InputError
from bt_demo.io import (
    MAX_ASPECT,
    MAX_PIXELS,
    MAX_VOLUME_VOXELS,
    MIN_SIDE,
    Slice,
    describe_indices,
    load_slice,
)

# ---------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------


def _ramp(h=32, w=40, hi=255, dtype=np.uint8):
    """(h, w) with every value distinct-ish, spanning 0..hi."""
    a = np.linspace(0, hi, h * w).reshape(h, w)
    return np.round(a).astype(dtype)


def _pil_bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png(arr, mode=None) -> bytes:
    return _pil_bytes(Image.fromarray(arr, mode) if mode else Image.fromarray(arr), "PNG")


def _tiff(arr, **kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


PATIENT = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID778899",
    "PatientBirthDate": "19610203",
    "StudyDate": "20240102",
    "InstitutionName": "St Elsewhere Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "AccessionNumber": "ACC123456",
}


def _dicom_ds(arr, photometric="MONOCHROME2", bits=12, **fields) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = "MR"
    for k, v in PATIENT.items():
        setattr(ds, k, v)
    ds.set_pixel_data(arr, photometric, bits)
    for k, v in fields.items():
        setattr(ds, k, v)
    return ds


def _dicom(arr, photometric="MONOCHROME2", bits=12, preamble=True, **fields) -> bytes:
    ds = _dicom_ds(arr, photometric, bits, **fields)
    buf = io.BytesIO()
    if preamble:
        ds.save_as(buf, enforce_file_format=True)
    else:
        del ds.file_meta
        ds.save_as(buf, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def _nifti(data, affine=None, version=1, gz=False, **header) -> bytes:
    klass = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    img = klass(np.asarray(data), np.eye(4) if affine is None else np.asarray(affine, float))
    for k, v in header.items():
        img.header[k] = v
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=1) if gz else raw


def _radiological(data3, affine, k):
    """Oracle: nibabel's canonical (RAS+) volume, axial slice k, shown radiologically."""
    can = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data3, np.float32), np.asarray(affine, float)))
    c = np.asarray(can.dataobj)[:, :, k]  # (x = R+, y = A+)
    return c[::-1, ::-1].T  # rows: anterior first; columns: patient's right first


def _gzip_bomb(payload_head: bytes = b"", mb: int = 200) -> bytes:
    """gzip stream inflating to payload_head + mb MiB of zeros (multi-member: a few hundred KB)."""
    zero_member = gzip.compress(b"\0" * (1 << 20), compresslevel=9)
    return (gzip.compress(payload_head) if payload_head else b"") + zero_member * mb


# ---------------------------------------------------------------------------
# raster images
# ---------------------------------------------------------------------------


def test_png_8bit_gray_keeps_values_and_uses_8bit_window():
    a = _ramp()
    s = load_slice(_png(a))
    assert s.source == "png"
    assert s.pixels.dtype == np.float32 and s.shape == (32, 40)
    np.testing.assert_array_equal(s.pixels, a)
    assert s.window == (127.5, 255.0)
    assert s.spacing is None and dict(s.index) == {}
    np.testing.assert_array_equal(s.display(), a)  # 8-bit window shows the file as it is


def test_png_16bit_gray_keeps_full_range_and_robust_window():
    a = _ramp(hi=60000, dtype=np.uint16)
    s = load_slice(_png(a))
    np.testing.assert_array_equal(s.pixels, a.astype(np.float32))
    lo, hi = np.percentile(a.astype(np.float64), [0.5, 99.5])
    assert s.window == pytest.approx(((lo + hi) / 2, hi - lo), rel=1e-5)
    assert s.metadata["bits"] == "16"


def test_rgb_with_equal_channels_is_gray_without_channel_axis():
    a = _ramp()
    s = load_slice(_png(np.dstack([a, a, a])))
    np.testing.assert_allclose(s.pixels, a, atol=1e-3)
    assert "channel" not in s.index
    # nearly-equal channels (JPEG-like noise within 2 levels) are still gray
    b = np.dstack([a, np.clip(a.astype(int) + 2, 0, 255), a]).astype(np.uint8)
    assert "channel" not in load_slice(_png(b)).index


def test_rgb_colour_defaults_to_luma_and_channel_picks_one():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    data = _png(rgb)
    s = load_slice(data)
    luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(s.pixels, luma, atol=1e-3)
    assert s.index["channel"] == (-1, 3)
    blue = load_slice(data, channel=2)
    np.testing.assert_array_equal(blue.pixels, rgb[..., 2])
    assert blue.index["channel"] == (2, 3)
    assert describe_indices(blue) == "channel 3 of 3 (blue)"
    with pytest.raises(InputError, match="0 to 2"):
        load_slice(data, channel=3)


def test_rgba_is_composited_on_black():
    a = np.full((32, 40), 200, np.uint8)
    alpha = np.zeros((32, 40), np.uint8)
    alpha[:, 20:] = 255
    alpha[:16, :20] = 128
    s = load_slice(_png(np.dstack([a, a, a, alpha])))
    assert np.all(s.pixels[:, 20:] == pytest.approx(200, abs=0.01))
    assert np.all(s.pixels[16:, :20] == 0)
    assert s.pixels[0, 0] == pytest.approx(200 * 128 / 255, abs=0.01)


def test_palette_la_and_1bit_pngs():
    a = _ramp()
    p = Image.fromarray(a).convert("P")  # adaptive palette of the gray levels
    s = load_slice(_pil_bytes(p, "PNG"))
    np.testing.assert_allclose(s.pixels, np.asarray(p.convert("L")), atol=0.01)
    assert "channel" not in s.index

    la = Image.merge("LA", [Image.fromarray(a), Image.fromarray(np.full_like(a, 255))])
    la_s = load_slice(_pil_bytes(la, "PNG"))
    np.testing.assert_allclose(la_s.pixels, a, atol=0.01)

    bits = np.zeros((32, 40), bool)
    bits[8:24, 10:30] = True
    one = load_slice(_pil_bytes(Image.fromarray(bits).convert("1"), "PNG"))
    np.testing.assert_array_equal(one.pixels, bits * 255.0)
    assert one.window == (127.5, 255.0)


def test_jpeg_gray_rgb_and_cmyk_read_close_to_the_original():
    a = _ramp(64, 64)
    for img in (Image.fromarray(a), Image.fromarray(np.dstack([a, a, a])),
                Image.fromarray(np.dstack([a, a, a])).convert("CMYK")):
        s = load_slice(_pil_bytes(img, "JPEG", quality=95))
        assert s.source == "jpeg", img.mode
        assert np.abs(s.pixels - a).mean() < 3, img.mode
        assert "channel" not in s.index, img.mode


def test_jpeg_exif_orientation_is_applied():
    a = np.zeros((24, 40), np.uint8)
    a[0:4, 0:4] = 255  # marker at stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    s = load_slice(_pil_bytes(Image.fromarray(a), "JPEG", quality=95, exif=exif.tobytes()))
    assert s.shape == (40, 24)
    assert s.pixels[0:4, -4:].mean() > 200  # stored top-left is displayed top-right
    assert s.pixels[0:4, 0:4].mean() < 50


def test_bmp_and_webp():
    a = _ramp()
    np.testing.assert_array_equal(load_slice(_pil_bytes(Image.fromarray(a), "BMP")).pixels, a)
    s = load_slice(_pil_bytes(Image.fromarray(a), "WEBP", lossless=True))
    assert s.source == "webp"
    np.testing.assert_allclose(s.pixels, a, atol=1)


def test_tiff_8bit_16bit_float_and_rgb():
    a8 = _ramp()
    s8 = load_slice(_tiff(a8))
    assert s8.source == "tiff" and s8.window == (127.5, 255.0)
    np.testing.assert_array_equal(s8.pixels, a8)

    a16 = _ramp(hi=4000, dtype=np.uint16)
    np.testing.assert_array_equal(load_slice(_tiff(a16)).pixels, a16)

    af = np.linspace(-3.5, 1e4, 32 * 40, dtype=np.float32).reshape(32, 40)
    sf = load_slice(_tiff(af))
    np.testing.assert_array_equal(sf.pixels, af)  # as stored, negatives included
    assert sf.metadata["bits"] == "32f"

    rgb = np.random.default_rng(1).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    srgb = load_slice(_tiff(rgb, photometric="rgb"), channel=0)
    np.testing.assert_array_equal(srgb.pixels, rgb[..., 0])


def test_tiff_rgba_is_composited_on_black():
    rgba = np.zeros((32, 40, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, 20:, 3] = 255
    s = load_slice(_tiff(rgba, photometric="rgb", extrasamples=["unassalpha"]))
    np.testing.assert_allclose(s.pixels[:, 20:], 200, atol=0.01)
    np.testing.assert_array_equal(s.pixels[:, :20], 0)


def test_tiff_multipage_page_choice():
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tw:
        for v in (10, 20, 30):
            tw.write(np.full((32, 40), v, np.uint16))
    data = buf.getvalue()
    s = load_slice(data, page=2)
    assert np.all(s.pixels == 30)
    assert s.index["page"] == (2, 3)
    assert describe_indices(s) == "page 3 of 3"
    assert np.all(load_slice(data).pixels == 10)
    with pytest.raises(InputError, match="0 to 2"):
        load_slice(data, page=3)


def test_tiff_lzw_and_miniswhite():
    a = _ramp()
    lzw = _pil_bytes(Image.fromarray(a), "TIFF", compression="tiff_lzw")
    np.testing.assert_array_equal(load_slice(lzw).pixels, a)
    white = load_slice(_tiff(a, photometric="miniswhite"))
    np.testing.assert_array_equal(white.pixels, 255 - a.astype(np.float32))


def test_animated_gif_page_choice():
    frames = [Image.fromarray(np.full((32, 40), v, np.uint8)) for v in (0, 100, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    s = load_slice(buf.getvalue(), page=1)
    assert s.source == "gif" and s.index["page"] == (1, 3)
    np.testing.assert_allclose(s.pixels, 100, atol=0.01)
    np.testing.assert_allclose(load_slice(buf.getvalue(), page=2).pixels, 200, atol=0.01)


def test_format_comes_from_content_not_extension(tmp_path):
    a = _ramp()
    lying_png = tmp_path / "scan.jpg"
    lying_png.write_bytes(_png(a))
    lying_dicom = tmp_path / "scan.png"
    lying_dicom.write_bytes(_dicom(a.astype(np.uint16)))
    assert load_slice(lying_png).source == "png"
    assert load_slice(str(lying_dicom)).source == "dicom"
    np.testing.assert_array_equal(load_slice(lying_dicom).pixels, a)


def test_all_input_kinds_give_the_same_slice(tmp_path):
    data = _png(_ramp())
    path = tmp_path / "Doe_Jane_brain.png"
    path.write_bytes(data)
    slices = [load_slice(data), load_slice(bytearray(data)), load_slice(str(path)), load_slice(path),
              load_slice(io.BytesIO(data))]
    with open(path, "rb") as fh:
        slices.append(load_slice(fh))
    for s in slices:
        np.testing.assert_array_equal(s.pixels, slices[0].pixels)
        assert not any("Doe" in v or "brain" in v for v in s.metadata.values())  # never the file name


# ---------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------


def test_dicom_plain_spacing_metadata_and_no_patient_fields():
    a = _ramp(hi=4000, dtype=np.uint16)
    raw = _dicom(a, PixelSpacing=[0.5, 0.75], SeriesDescription="AX FLAIR", MagneticFieldStrength=3,
                 SliceThickness=5, BodyPartExamined="BRAIN")
    s = load_slice(raw)
    assert s.source == "dicom"
    np.testing.assert_array_equal(s.pixels, a)
    assert s.spacing == (0.5, 0.75)
    assert s.metadata["modality"] == "MR"
    assert s.metadata["series_description"] == "AX FLAIR"
    assert s.metadata["field_strength"] == "3 T" and s.metadata["slice_thickness"] == "5 mm"
    text = " ".join(list(s.metadata.keys()) + list(s.metadata.values())).lower()
    for value in list(PATIENT.values()) + ["doe", "jane", "1.2."]:
        assert value.lower() not in text
    assert "patient" not in text and "uid" not in text


def test_dicom_without_preamble_loads():
    a = _ramp(dtype=np.uint16)
    raw = _dicom(a, preamble=False)
    assert raw[128:132] != b"DICM"
    np.testing.assert_array_equal(load_slice(raw).pixels, a)


def test_dicom_rescale_slope_intercept():
    a = _ramp(hi=3000, dtype=np.uint16)
    s = load_slice(_dicom(a, RescaleSlope=2, RescaleIntercept=-1024))
    np.testing.assert_allclose(s.pixels, 2.0 * a - 1024)


def test_dicom_window_from_header_first_value():
    a = _ramp(hi=4000, dtype=np.uint16)
    s = load_slice(_dicom(a, WindowCenter=[400, 1000], WindowWidth=[800, 2000]))
    assert s.window == (400.0, 800.0)
    expected = np.clip((a - (400 - 400)) / 800.0, 0, 1)
    np.testing.assert_allclose(s.unit(), expected, atol=1e-6)


def test_dicom_monochrome1_is_inverted_so_bright_is_high_signal():
    a = _ramp(hi=4000, dtype=np.uint16)
    plain = load_slice(_dicom(a, WindowCenter=1000, WindowWidth=1500))
    mono1 = load_slice(_dicom(a, photometric="MONOCHROME1", WindowCenter=1000, WindowWidth=1500))
    assert mono1.pixels[0, 0] > mono1.pixels[-1, -1]  # stored 0 is white in MONOCHROME1
    np.testing.assert_allclose(mono1.pixels, a.max() + a.min() - a.astype(np.float64))
    # the header window is mirrored with the pixels: the picture is the photographic negative
    np.testing.assert_allclose(mono1.unit(), 1.0 - plain.unit(), atol=1e-6)
    assert mono1.display()[0, 0] == 255


def test_dicom_multiframe_frame_choice():
    frames = np.stack([np.full((32, 40), v, np.uint16) for v in (10, 20, 30)])
    raw = _dicom(frames)
    s = load_slice(raw, frame=1)
    assert np.all(s.pixels == 20) and s.index["frame"] == (1, 3)
    assert np.all(load_slice(raw).pixels == 10)
    with pytest.raises(InputError, match="0 to 2"):
        load_slice(raw, frame=3)


def test_dicom_rgb_colour_uses_channel_rule():
    rgb = np.random.default_rng(2).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    s = load_slice(_dicom(rgb, photometric="RGB", bits=8), channel=1)
    np.testing.assert_array_equal(s.pixels, rgb[..., 1])
    assert s.index["channel"] == (1, 3)


def test_dicom_without_pixel_data_is_refused():
    ds = _dicom_ds(_ramp(dtype=np.uint16))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(InputError, match="no image"):
        load_slice(buf.getvalue())


def _jpeg2000_garbage_dicom() -> bytes:
    ds = _dicom_ds(_ramp(dtype=np.uint16))
    ds.file_meta.TransferSyntaxUID = JPEG2000
    ds.PixelData = encapsulate([b"\x00\x01 not a jpeg 2000 codestream " * 8])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_damaged_compressed_dicom_is_called_damaged_when_the_codec_is_here():
    """A corrupt JPEG 2000 DICOM, with a JPEG 2000 decoder installed, is damaged, not an unsupported codec."""
    with pytest.raises(InputError) as info:
        load_slice(_jpeg2000_garbage_dicom())
    msg = str(info.value)
    assert "JPEG 2000" in msg and "damaged" in msg and "cannot decode" not in msg


def test_dicom_compressed_that_cannot_be_decoded_names_the_syntax():
    from pydicom.pixels import get_decoder
    from pydicom.uid import HTJ2KLossless

    if get_decoder(HTJ2KLossless).is_available:
        pytest.skip("an HTJ2K decoder is installed here")
    raw = bytearray(_jpeg2000_garbage_dicom())
    ds = pydicom.dcmread(io.BytesIO(bytes(raw)))
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(InputError) as info:
        load_slice(buf.getvalue())
    msg = str(info.value)
    assert "High-Throughput JPEG 2000" in msg and "cannot decode" in msg and "uncompressed" in msg


# ---------------------------------------------------------------------------
# NIfTI
# ---------------------------------------------------------------------------

X, Y, Z = 20, 24, 8  # deliberately non-square


def _marker_volume():
    """RAS-stored volume: right-anterior corner = 100, right-posterior = 50, left-anterior = 25."""
    d = np.zeros((X, Y, Z), np.float32)
    d[X - 1, Y - 1, :] = 100
    d[X - 1, 0, :] = 50
    d[0, Y - 1, :] = 25
    return d


def test_nifti_radiological_orientation_marker_ras():
    s = load_slice(_nifti(_marker_volume()), slice_index=3)
    assert s.source == "nifti" and s.shape == (Y, X)
    assert s.pixels[0, 0] == 100  # patient's right-anterior -> top-left
    assert s.pixels[-1, 0] == 50  # right-posterior -> bottom-left
    assert s.pixels[0, -1] == 25  # left-anterior -> top-right
    assert s.metadata["stored_axes"] == "RAS" and s.metadata["plane"] == "axial"


def test_nifti_lps_stored_data_is_reoriented():
    # LPS storage: voxel index grows to the patient's left and posterior, so the
    # right-anterior corner is voxel (0, 0, k).
    d = np.zeros((X, Y, Z), np.float32)
    d[0, 0, :] = 100
    d[0, Y - 1, :] = 50
    d[X - 1, 0, :] = 25
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    s = load_slice(_nifti(d, affine), slice_index=2)
    assert s.metadata["stored_axes"] == "LPS"
    assert (s.pixels[0, 0], s.pixels[-1, 0], s.pixels[0, -1]) == (100, 50, 25)


@pytest.mark.parametrize("affine", [
    np.diag([-1.0, -1.0, 1.0, 1.0]),
    np.diag([1.0, 1.0, -2.0, 1.0]),
    np.array([[0, 1.5, 0, 0], [-1, 0, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]], float),  # axes swapped and flipped
    np.array([[0.98, 0.17, 0, 0], [-0.17, 0.98, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]], float),  # oblique
])
def test_nifti_slices_match_nibabel_canonical(affine):
    rng = np.random.default_rng(3)
    d = rng.normal(100, 20, (X, Y, Z)).astype(np.float32)
    raw = _nifti(d, affine)
    can_z = nib.as_closest_canonical(nib.Nifti1Image(d, affine)).shape[2]
    for k in (0, can_z - 1, can_z // 2):
        s = load_slice(raw, slice_index=k)
        np.testing.assert_array_equal(s.pixels, _radiological(d, affine, k))
        assert s.index["slice"] == (k, can_z)


def test_nifti_spacing_rows_along_y_columns_along_x():
    affine = np.diag([1.5, 2.0, 3.0, 1.0])
    s = load_slice(_nifti(np.ones((X, Y, Z), np.int16), affine))
    assert s.spacing == pytest.approx((2.0, 1.5))


@pytest.mark.parametrize("z_sign", [1.0, -1.0])
def test_nifti_default_slice_has_the_most_signal(z_sign):
    d = np.zeros((X, Y, 12), np.float32)
    d += np.arange(12)[None, None, :] * 0.01  # weak ramp
    d[4:16, 4:20, 9] += 500  # the brain is in stored slice 9
    affine = np.diag([1.0, 1.0, z_sign, 1.0])
    s = load_slice(_nifti(d, affine))
    expected = 9 if z_sign > 0 else 12 - 1 - 9
    assert s.index["slice"] == (expected, 12)
    assert s.pixels.max() >= 500


def test_nifti_2d_and_single_slice_3d():
    d = _marker_volume()[:, :, 0]
    for data in (d, d[:, :, None]):
        s = load_slice(_nifti(data))
        assert s.shape == (Y, X) and "slice" not in s.index
        assert s.pixels[0, 0] == 100


def test_nifti_single_coronal_slice_is_shown_superior_up_right_on_left():
    d = np.zeros((X, 1, 18), np.float32)
    d[X - 1, 0, 17] = 100  # patient's right, superior
    d[0, 0, 17] = 25  # left, superior
    s = load_slice(_nifti(d))
    assert s.shape == (18, X) and s.metadata["plane"] == "coronal"
    assert (s.pixels[0, 0], s.pixels[0, -1]) == (100, 25)


def test_nifti_4d_volume_choice_and_describe():
    d = np.stack([np.full((X, Y, 10), v, np.float32) for v in (1, 2, 3)], axis=-1)
    d[:, :, 5, :] += 10
    raw = _nifti(d)
    s = load_slice(raw, volume=1, slice_index=5)
    assert np.all(s.pixels == 12)
    assert dict(s.index) == {"slice": (5, 10), "volume": (1, 3)}
    assert describe_indices(s) == "slice 6 of 10, volume 2 of 3"
    assert np.all(load_slice(raw).pixels == 11)  # default: volume 0, the slice with signal
    with pytest.raises(InputError, match="0 to 2"):
        load_slice(raw, volume=3)
    with pytest.raises(InputError, match="0 to 9"):
        load_slice(raw, slice_index=10)


def test_nifti_gz_nifti2_and_scaling_give_the_same_pixels():
    d = (_marker_volume() * 3).astype(np.int16)
    ref = load_slice(_nifti(d), slice_index=4)
    gz = load_slice(_nifti(d, gz=True), slice_index=4)
    v2 = load_slice(_nifti(d, version=2), slice_index=4)
    np.testing.assert_array_equal(gz.pixels, ref.pixels)
    np.testing.assert_array_equal(v2.pixels, ref.pixels)
    assert gz.metadata["container"] == "gzip" and v2.metadata["nifti_version"] == "2"
    big_endian = nib.Nifti1Image(d.astype(">i2"), np.eye(4), nib.Nifti1Header(endianness=">"))
    be_raw = big_endian.to_bytes()
    assert struct.unpack(">i", be_raw[:4])[0] == 348
    np.testing.assert_array_equal(load_slice(be_raw, slice_index=4).pixels, ref.pixels)
    scaled = nib.Nifti1Image(d, np.eye(4))
    scaled.header.set_slope_inter(0.5, 10)
    s = load_slice(scaled.to_bytes(), slice_index=4)
    np.testing.assert_allclose(s.pixels, ref.pixels * 0.5 + 10)


def test_nifti_nan_in_chosen_slice_is_refused_with_a_count():
    d = np.ones((X, Y, Z), np.float32)
    d[1, 2, 3] = d[4, 5, 3] = np.nan
    d[0, 0, 3] = np.inf
    d[:, :, 6] = np.nan
    raw = _nifti(d)
    with pytest.raises(InputError, match=r"non-numeric.*\b3 of its"):
        load_slice(raw, slice_index=3)
    with pytest.raises(InputError, match="non-numeric.*all of its"):
        load_slice(raw, slice_index=6)
    assert np.all(load_slice(raw, slice_index=0).pixels == 1)


def test_float_tiff_with_nan_is_refused():
    a = np.ones((32, 40), np.float32)
    a[3, 3] = np.nan
    with pytest.raises(InputError, match="non-numeric"):
        load_slice(_tiff(a))


# ---------------------------------------------------------------------------
# window maths
# ---------------------------------------------------------------------------


def test_unit_and_display_match_numpy():
    rng = np.random.default_rng(4)
    p = rng.normal(300, 200, (32, 40)).astype(np.float32)
    s = Slice(p, None, (300.0, 400.0), "png")
    for window in (None, (100.0, 50.0), (-20.0, 1e4)):
        c, w = window or s.window
        expected = np.clip((p.astype(np.float64) - (c - w / 2)) / w, 0, 1)
        u = s.unit(window)
        assert u.dtype == np.float32 and u.shape == p.shape
        np.testing.assert_allclose(u, expected, atol=1e-6)
        d = s.display(window)
        assert d.dtype == np.uint8
        assert np.abs(d.astype(int) - np.round(expected * 255)).max() <= 1
    with pytest.raises(ValueError):
        s.unit((1.0, 0.0))
    with pytest.raises(ValueError):
        s.unit((np.nan, 10.0))


def test_constant_image_displays_constant_without_nan():
    s = load_slice(_tiff(np.full((32, 40), 1234.5, np.float32)))
    assert s.window == (1234.5, 1.0)
    d = s.display()
    assert np.unique(d).size == 1
    assert np.isfinite(s.unit()).all()


def test_slice_rejects_bad_construction():
    with pytest.raises(ValueError):
        Slice(np.zeros((2, 3, 4)), None, (0.5, 1.0), "png")
    with pytest.raises(ValueError):
        Slice(np.array([[np.nan, 1.0]]), None, (0.5, 1.0), "png")
    with pytest.raises(ValueError, match="options"):
        Slice(np.zeros((4, 4)), None, (0.5, 1.0), "png", index={"time": (0, 2)})
    assert describe_indices(Slice(np.zeros((4, 4)), None, (0.5, 1.0), "png")) == ""


# ---------------------------------------------------------------------------
# bad inputs: every one raises InputError with a clean message
# ---------------------------------------------------------------------------


def _crafted_huge_png(w=20000, h=20000) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _nifti_header_only(shape, dtype=np.int16) -> bytes:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4,) * len(shape))
    hdr.set_data_dtype(dtype)
    raw = bytearray(hdr.binaryblock + b"\0" * 4)
    struct.pack_into("<8h", raw, 40, len(shape), *shape, *([1] * (7 - len(shape))))
    return bytes(raw)


def _nifti_negative_dims() -> bytes:
    raw = bytearray(_nifti(np.ones((X, Y, Z), np.int16)))
    struct.pack_into("<h", raw, 42, -5)
    return bytes(raw)


def _nifti_garbage_header() -> bytes:
    raw = bytearray(_nifti(np.ones((X, Y, Z), np.int16)))
    raw[40:340] = np.random.default_rng(5).integers(0, 256, 300, dtype=np.uint8).tobytes()
    return bytes(raw)


def _noise(h=64, w=64):
    return np.random.default_rng(7).integers(0, 256, (h, w), dtype=np.uint8)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("scan.png", _png(_ramp()))
    return buf.getvalue()


def _truncated_pixel_dicom() -> bytes:
    return _dicom(_ramp(dtype=np.uint16))[:-500]


BAD_INPUTS = {
    "empty": (lambda: b"", "empty"),
    "truncated png": (lambda: _truncated(_png(_noise())), "damaged or incomplete"),
    "truncated jpeg": (lambda: _truncated(_pil_bytes(Image.fromarray(_noise()), "JPEG")), "damaged or incomplete"),
    "truncated tiff": (lambda: _tiff(_ramp(64, 64))[:-1500], "truncated"),
    "html": (lambda: b"<!DOCTYPE html><html><body>Not found</body></html>", "HTML"),
    "zip": (_zip_bytes, "ZIP"),
    "text": (lambda: b"patient,slice\n1,2\n" * 10, "text"),
    "random bytes": (lambda: np.random.default_rng(6).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "not an image"),
    "1x1 png": (lambda: _png(np.zeros((1, 1), np.uint8)), "1x1 pixels"),
    "1x20000 png": (lambda: _png(np.zeros((20000, 1), np.uint8)), "1x20000 pixels; need at least 16"),
    "20000x20000 png header": (_crafted_huge_png, "20000x20000"),
    "gzip bomb": (_gzip_bomb, "does not contain an image"),
    "nifti negative dims": (_nifti_negative_dims, "header is damaged"),
    "nifti garbage header": (_nifti_garbage_header, "NIfTI"),
    "nifti over voxel limit": (lambda: _nifti_header_only((1024, 1024, 1024)), "limit"),
    "nifti gz over voxel limit": (lambda: gzip.compress(_nifti_header_only((600, 600, 600, 2))), "limit"),
    "nifti truncated data": (lambda: _nifti(np.ones((X, Y, Z), np.int16))[:-100], "truncated"),
    "nifti 5-d": (lambda: _nifti(np.ones((X, Y, 2, 2, 2), np.int16)), "dimensions"),
    "dicom no pixels": (lambda: _dicom_without_pixels(), "no image"),
    "dicom jpeg2000 garbage": (_jpeg2000_garbage_dicom, "JPEG 2000"),
    "dicom truncated pixels": (_truncated_pixel_dicom, "incomplete or damaged"),
    "dicom over voxel limit": (lambda: _dicom_over_voxel_limit(), "300 frames of 2048x2048"),
    "dicom too small": (lambda: _dicom(np.zeros((8, 8), np.uint16)), "need at least 16"),
}


def _dicom_over_voxel_limit() -> bytes:
    ds = _dicom_ds(_ramp(dtype=np.uint16))
    ds.Rows, ds.Columns, ds.NumberOfFrames = 2048, 2048, 300  # header only: 2 KB of pixel data
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _dicom_without_pixels() -> bytes:
    ds = _dicom_ds(_ramp(dtype=np.uint16))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_inputs_raise_input_error_with_a_clean_message(name):
    make, fragment = BAD_INPUTS[name]
    with pytest.raises(InputError) as info:
        load_slice(make())
    msg = str(info.value)
    assert type(info.value) is InputError
    assert msg.strip() and "Traceback" not in msg and "\n" not in msg
    assert fragment.lower() in msg.lower(), msg


def test_html_named_png_on_disk_is_refused(tmp_path):
    path = tmp_path / "scan.png"
    path.write_text("<html><head><title>404</title></head></html>")
    with pytest.raises(InputError, match="HTML"):
        load_slice(path)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"page": -1}, "0 or more"),
    ({"slice_index": 1.5}, "whole number"),
    ({"frame": True}, "whole number"),
    ({"slice_index": 2}, "single slice"),
    ({"channel": 1}, "single channel"),
])
def test_bad_indices_are_refused(kwargs, fragment):
    with pytest.raises(InputError, match=fragment):
        load_slice(_png(_ramp()), **kwargs)


def test_index_zero_is_accepted_for_axes_the_file_lacks():
    s = load_slice(_png(_ramp()), page=0, frame=0, slice_index=0, volume=0, channel=0)
    assert s.shape == (32, 40)


def test_gzip_bomb_is_refused_without_inflating_it():
    bomb = _gzip_bomb()
    tracemalloc.start()
    try:
        with pytest.raises(InputError):
            load_slice(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.0f} MB while refusing a 200 MB gzip bomb"


def test_nifti_gz_with_trailing_bomb_inflates_only_the_image():
    d = _marker_volume()
    raw = _nifti(d)
    payload = _gzip_bomb(raw)
    tracemalloc.start()
    try:
        s = load_slice(payload, slice_index=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert s.pixels[0, 0] == 100
    assert peak < 16 * 2**20


def test_huge_png_header_is_refused_before_decoding():
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="2048x2048"):
            load_slice(_crafted_huge_png())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20
    just_over = int(np.sqrt(MAX_PIXELS)) + 1
    with pytest.raises(InputError, match="limit"):
        load_slice(_crafted_huge_png(just_over, just_over))


def test_limits_are_the_contract_values():
    assert (MAX_PIXELS, MAX_VOLUME_VOXELS, MIN_SIDE, MAX_ASPECT) == (2048 * 2048, 512 * 512 * 256, 16, 8)


def test_missing_path_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="could not be found"):
        load_slice(tmp_path / "nope.png")
    with pytest.raises(InputError, match="folder"):
        load_slice(tmp_path)


# ---------------------------------------------------------------------------
# property test: nothing but Slice or InputError, whatever the bytes
# ---------------------------------------------------------------------------


@functools.cache
def _seed_files() -> tuple[bytes, ...]:
    a = _ramp()
    return (
        _png(a),
        _png(np.dstack([a, a // 2, a])),
        _dicom(a.astype(np.uint16), PixelSpacing=[0.5, 0.5], WindowCenter=100, WindowWidth=200),
        _dicom(np.stack([a, a]).astype(np.uint16)),
        _nifti(_marker_volume()),
        _nifti(_marker_volume(), gz=True),
        _tiff(a),
        _pil_bytes(Image.fromarray(a), "JPEG"),
    )


def _check_slice_or_input_error(data: bytes, **kw) -> None:
    try:
        s = load_slice(data, **kw)
    except InputError as e:
        assert str(e).strip() and "Traceback" not in str(e)
        return
    assert s.pixels.dtype == np.float32 and s.pixels.ndim == 2
    assert min(s.shape) >= MIN_SIDE and s.pixels.size <= MAX_PIXELS
    assert np.isfinite(s.pixels).all()
    c, w = s.window
    assert np.isfinite(c) and w > 0


def test_property_random_and_mutated_bytes_give_slice_or_input_error():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    seeds = _seed_files()

    @st.composite
    def mutated(draw):
        base = bytearray(seeds[draw(st.integers(0, len(seeds) - 1))])
        for _ in range(draw(st.integers(1, 12))):
            pos = draw(st.integers(0, len(base) - 1))
            base[pos] = draw(st.integers(0, 255))
        if draw(st.booleans()):
            base = base[: draw(st.integers(0, len(base)))]
        return bytes(base)

    @hypothesis.settings(max_examples=150, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(data=st.one_of(st.binary(max_size=3000), mutated()),
                      page=st.sampled_from([None, 0, 1]), slice_index=st.sampled_from([None, 0, 3]))
    def run(data, page, slice_index):
        _check_slice_or_input_error(data, page=page, slice_index=slice_index)

    run()


def test_seed_files_for_the_property_test_all_load():
    for data in _seed_files():
        _check_slice_or_input_error(data)
        assert isinstance(load_slice(data), Slice)


def test_no_file_name_or_os_path_leaks_into_errors(tmp_path):
    path = tmp_path / "Doe_Jane_1961.png"
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(InputError) as info:
        load_slice(os.fspath(path))
    assert "Doe_Jane" not in str(info.value)


# ---------------------------------------------------------------------------
# NIfTI header extensions, CIFTI, implausible spacing (issue: refused as "damaged", spacing shown wrongly)
# ---------------------------------------------------------------------------
def _nib_data(name: str) -> Path:
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data" / name


@pytest.mark.parametrize("name", ["example4d.nii.gz", "example_nifti2.nii.gz", "anatomical.nii"])
def test_nibabels_bundled_niftis_load_with_their_extensions(name):
    import nibabel

    path = _nib_data(name)
    s = load_slice(path.read_bytes())
    img = nibabel.load(path)
    assert s.metadata["format"] == "NIfTI" and s.pixels.ndim == 2
    assert s.spacing == pytest.approx((2.0, 2.0))
    assert s.index["volume"] == (0, 2) if img.ndim == 4 else "volume" not in s.index
    assert bool(len(img.header.extensions)) == (name != "anatomical.nii")


def test_a_nifti_too_small_to_segment_says_so_not_damaged():
    with pytest.raises(InputError, match="need at least 16 pixels") as e:
        load_slice(_nib_data("standard.nii.gz").read_bytes())  # 4 x 5 x 7 voxels
    assert "damaged" not in str(e.value)


def test_nifti_with_an_afni_style_extension_reads_like_without():
    import nibabel

    data = np.arange(20 * 18 * 3, dtype=np.int16).reshape(20, 18, 3)
    plain = nibabel.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    with_ext = nibabel.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    with_ext.header.extensions.append(nibabel.nifti1.Nifti1Extension(4, b"<AFNI_attributes>" + b"x" * 300))
    a, b = load_slice(plain.to_bytes()), load_slice(with_ext.to_bytes())
    assert np.array_equal(a.pixels, b.pixels) and a.spacing == b.spacing == (2.0, 2.0)
    import gzip

    c = load_slice(gzip.compress(with_ext.to_bytes()))  # the .nii.gz path reads the extension too
    assert np.array_equal(a.pixels, c.pixels)


def test_cifti_is_named_as_such():
    with pytest.raises(InputError, match="CIFTI-2"):
        load_slice(_nib_data("row_major.dconn.nii").read_bytes())


def test_nifti_zero_or_huge_voxel_size_is_unknown_spacing_not_1mm():
    import nibabel

    data = np.random.default_rng(0).random((16, 16, 2)).astype(np.float32)
    img = nibabel.Nifti1Image(data, None)
    img.header["pixdim"][1:4] = 0
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    s = load_slice(img.to_bytes())
    assert s.spacing is None
    big = nibabel.Nifti1Image(data, np.diag([250.0, 250.0, 3.0, 1.0]))
    s = load_slice(big.to_bytes())
    assert s.spacing is None and "outside 0–100 mm" in s.metadata["spacing_note"]
