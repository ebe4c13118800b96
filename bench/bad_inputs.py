"""A corpus of bad and odd upload files, all generated here by code (no copied files, no real data).

    python -m bench.bad_inputs OUT_DIR      # writes the files and prints the list

:func:`make_corpus` writes every file into a folder and returns one
:class:`Case` per file: ``(name, path, description, expected)`` where
``expected`` is ``"ok"`` (the upload must load as a slice) or ``"error"``
(it must be refused with a clear message). File names (and extensions) are
chosen to be misleading on purpose where that is the point: the loader
detects formats from content, never from names.

``tests/test_bad_inputs.py`` runs the whole corpus through the app's upload
handler.
"""

from __future__ import annotations

import gzip
import io
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

__all__ = ["Case", "make_corpus", "KINDS"]


class Case(NamedTuple):
    name: str
    path: Path
    description: str
    expected: str  # "ok" | "error"


# ---------------------------------------------------------------------------
# small builders
# ---------------------------------------------------------------------------
def _image(h: int = 48, w: int = 56, seed: int = 0) -> np.ndarray:
    """uint8 (h, w): a smooth ramp plus a bright blob, so nothing is constant."""
    yy, xx = np.mgrid[0:h, 0:w]
    a = 40 + 120 * (xx / max(w - 1, 1)) + 60 * np.exp(-((yy - h / 2) ** 2 + (xx - w / 3) ** 2) / (0.02 * h * w))
    a += np.random.default_rng(seed).normal(0, 3, (h, w))
    return np.clip(a, 0, 255).astype(np.uint8)


def _pil(arr_or_img, fmt: str, mode: str | None = None, **kw) -> bytes:
    from PIL import Image

    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png(arr: np.ndarray) -> bytes:
    return _pil(arr, "PNG")


def _tiff(arr: np.ndarray, **kw) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    c = zlib.crc32(kind + body) if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", c & 0xFFFFFFFF)


def _png_bomb(w: int = 20000, h: int = 20000) -> bytes:
    """A tiny PNG whose IHDR claims w x h 8-bit gray (a decompression bomb if decoded)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + _png_chunk(b"IEND", b""))


def _png_bad_crc() -> bytes:
    """A valid 48x56 PNG whose IHDR CRC is wrong."""
    raw = bytearray(_png(_image()))
    # signature (8) + length (4) + "IHDR" (4) + 13 bytes body -> CRC at 29..33
    raw[29:33] = bytes(b ^ 0xFF for b in raw[29:33])
    return bytes(raw)


def _bmp_lying_size() -> bytes:
    """A BMP whose header claims 30000 x 30000 pixels but carries 64 bytes of pixel data."""
    raw = bytearray(_pil(_image(16, 16), "BMP"))
    struct.pack_into("<ii", raw, 18, 30000, 30000)
    return bytes(raw)


def _bmp_short_data() -> bytes:
    """A 64x64 BMP header with only a third of its pixel rows present."""
    raw = _pil(_image(64, 64), "BMP")
    return raw[: 54 + 1024 + 64 * 20]


def _tiff_lying_size() -> bytes:
    """A small TIFF whose ImageWidth/ImageLength tags claim 100000 x 100000."""
    import tifffile

    raw = bytearray(_tiff(_image(32, 32)))
    with tifffile.TiffFile(io.BytesIO(bytes(raw))) as tf:
        tags = tf.pages[0].tags
        for name in ("ImageWidth", "ImageLength"):
            tag = tags[name]
            fmt = "<I" if tag.dtype == 4 else "<H"
            struct.pack_into(fmt, raw, tag.valueoffset, 100000 if fmt == "<I" else 65000)
    return bytes(raw)


def _cmyk_jpeg() -> bytes:
    from PIL import Image

    rgb = np.dstack([_image(), _image(seed=1), _image(seed=2)])
    return _pil(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=90)


def _animated_gif() -> bytes:
    from PIL import Image

    frames = [Image.fromarray(_image(seed=i)).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("scan.png", _png(_image()))
    return buf.getvalue()


def _dicom_ds(arr: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientName = "Synthetic^Phantom"
    ds.set_pixel_data(arr, photometric, bits)
    return ds


def _dicom_bytes(ds, preamble: bool = True) -> bytes:
    buf = io.BytesIO()
    if preamble:
        ds.save_as(buf, enforce_file_format=True)
    else:
        del ds.file_meta
        ds.save_as(buf, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def _dicom(photometric: str = "MONOCHROME2", preamble: bool = True) -> bytes:
    return _dicom_bytes(_dicom_ds(_image().astype(np.uint16) * 8, photometric), preamble)


def _dicom_no_pixels() -> bytes:
    ds = _dicom_ds(_image().astype(np.uint16))
    del ds.PixelData
    return _dicom_bytes(ds)


def _dicom_jpegls_garbage() -> bytes:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    ds = _dicom_ds(_image().astype(np.uint16))
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8 garbage, not JPEG-LS " * 6, b"\x00\x11\x22 more garbage" * 4])
    ds["PixelData"].VR = "OB"
    return _dicom_bytes(ds)


def _dicom_unknown_syntax() -> bytes:
    """Pixel data under a transfer syntax UID nobody knows."""
    ds = _dicom_ds(_image().astype(np.uint16))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7.8.9.999"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return buf.getvalue()


def _dicom_truncated() -> bytes:
    return _dicom()[:-700]


def _dicom_rows_zero() -> bytes:
    ds = _dicom_ds(_image().astype(np.uint16))
    ds.Rows = 0
    return _dicom_bytes(ds)


def nifti_bytes(data, gz: bool = False, version: int = 1) -> bytes:
    import nibabel as nib

    klass = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    raw = klass(np.asarray(data), np.diag([1.0, 1.0, 2.0, 1.0])).to_bytes()
    return gzip.compress(raw, compresslevel=1) if gz else raw


def _nifti_spacing(mm: float) -> bytes:
    """A small NIfTI whose voxel size is ``mm`` (0: pixdim 0 with no qform/sform)."""
    import nibabel as nib

    img = nib.Nifti1Image(_volume(), np.diag([mm or 1.0, mm or 1.0, 2.0, 1.0]))
    if not mm:
        img.header["pixdim"][1:4] = 0
        img.header.set_qform(None, code=0)
        img.header.set_sform(None, code=0)
    return img.to_bytes()


def _nifti_with_extension() -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(_volume(), np.diag([1.0, 1.0, 2.0, 1.0]))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(4, b"<AFNI_attributes>" + b"x" * 500))
    return img.to_bytes()


def _volume(z: int = 6) -> np.ndarray:
    return np.stack([_image(seed=k).T.astype(np.float32) for k in range(z)], axis=-1)  # (x, y, z)


def _nifti_header_only(shape, dtype=np.int16) -> bytes:
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4,) * len(shape))
    hdr.set_data_dtype(dtype)
    raw = bytearray(hdr.binaryblock + b"\0" * 4)
    struct.pack_into("<8h", raw, 40, len(shape), *shape, *([1] * (7 - len(shape))))
    return bytes(raw)


def _nifti_broken_header() -> bytes:
    raw = bytearray(nifti_bytes(_volume().astype(np.int16)))
    raw[40:340] = np.random.default_rng(5).integers(0, 256, 300, dtype=np.uint8).tobytes()
    return bytes(raw)


def _nifti_bad_datatype() -> bytes:
    raw = bytearray(nifti_bytes(_volume().astype(np.int16)))
    struct.pack_into("<h", raw, 70, 12345)  # datatype code nobody defines
    return bytes(raw)


def _nifti_bad_vox_offset() -> bytes:
    raw = bytearray(nifti_bytes(_volume().astype(np.int16)))
    struct.pack_into("<f", raw, 108, 1e12)  # vox_offset far past the end of the file
    return bytes(raw)


def _gzip_bomb(mb: int = 200) -> bytes:
    member = gzip.compress(b"\0" * (1 << 20), compresslevel=9)
    return member * mb


def _random(n: int = 5000, seed: int = 6) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# ---------------------------------------------------------------------------
# the corpus: file name, builder, description, expected outcome
# ---------------------------------------------------------------------------
def _spec() -> list[tuple[str, Callable[[], bytes], str, str]]:
    img = _image()
    return [
        # --- nothing / not an image at all
        ("empty.png", lambda: b"", "0-byte file named .png", "error"),
        ("empty.nii.gz", lambda: b"", "0-byte file named .nii.gz", "error"),
        ("random.bin", _random, "5000 random bytes", "error"),
        ("random_named.dcm", lambda: _random(3000, 9), "random bytes named .dcm", "error"),
        ("notes.txt", lambda: b"patient,slice,comment\n1,2,looks fine\n" * 20, "a CSV/text file", "error"),
        ("page.png", lambda: b"<!DOCTYPE html><html><head><title>404</title></head><body>Not found</body></html>",
         "an HTML error page saved as .png", "error"),
        ("archive.png", _zip, "a ZIP (holding a PNG) renamed to .png", "error"),
        ("report.png", lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n",
         "a PDF header renamed to .png", "error"),
        ("drawing.png", lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" '
                                b'height="64"><rect width="64" height="64"/></svg>', "an SVG renamed .png", "error"),
        ("text.gz", lambda: gzip.compress(b"just some text\n" * 50), "gzip of a text file", "error"),
        ("double.nii.gz", lambda: gzip.compress(nifti_bytes(_volume(), gz=True)), "NIfTI gzipped twice", "error"),
        ("bomb.nii.gz", _gzip_bomb, "gzip bomb: ~600 KB inflating to 200 MB of zeros", "error"),
        # --- damaged rasters
        ("truncated.png", lambda: _png(_image(64, 64, 3))[:300], "PNG cut after 300 bytes", "error"),
        ("truncated.jpg", lambda: (lambda b: b[: len(b) // 2])(_pil(_image(64, 64, 4), "JPEG")),
         "JPEG cut in half", "error"),
        ("truncated.tif", lambda: _tiff(_image(64, 64))[:-1500], "TIFF missing its last 1500 bytes", "error"),
        ("jpeg_header_only.jpg", lambda: b"\xff\xd8\xff\xe0" + _random(200, 3), "JPEG magic then garbage", "error"),
        ("bad_crc.png", _png_bad_crc, "PNG whose IHDR CRC is wrong", "error"),
        ("bmp_lying_size.bmp", _bmp_lying_size, "BMP header claims 30000x30000, file is 1 KB", "error"),
        ("bmp_short.bmp", _bmp_short_data, "64x64 BMP with most pixel rows missing", "error"),
        ("tiff_lying_size.tif", _tiff_lying_size, "TIFF tags claim 100000x100000 (or 65000x65000)", "error"),
        # --- sizes
        ("one_pixel.png", lambda: _png(np.zeros((1, 1), np.uint8)), "1x1 PNG", "error"),
        ("line.png", lambda: _png(np.zeros((1, 20000), np.uint8)), "1x20000 PNG (one row)", "error"),
        ("bomb.png", _png_bomb, "PNG whose IHDR claims 20000x20000 (tiny file)", "error"),
        ("tiny.dcm", lambda: _dicom_bytes(_dicom_ds(np.zeros((8, 8), np.uint16))), "8x8 DICOM", "error"),
        ("smallest_ok.png", lambda: _png(_image(16, 16)), "16x16 PNG (the smallest accepted)", "ok"),
        ("thin_ok.png", lambda: _png(_image(16, 128)), "16x128 PNG (aspect 8, the most allowed)", "ok"),
        ("strip.png", lambda: _png(np.full((16, 100000), 200, np.uint8)),
         "100000x16 PNG, 1.7 KB (one click took 80 s when it was accepted)", "error"),
        ("long_strip.png", lambda: _png(np.full((16, 1048576), 200, np.uint8)),
         "1048576x16 PNG, 16 KB (one click did not finish in 18 minutes)", "error"),
        ("big_4096.png", lambda: _png(np.tile(_image(64, 64), (64, 64))),
         "4096x4096 PNG (took 110 s and 3 GB when it was accepted)", "error"),
        ("constant.png", lambda: _png(np.full((40, 40), 7, np.uint8)), "constant image", "ok"),
        ("constant16.png", lambda: _png(np.full((40, 40), 1234, np.uint16)), "constant 16-bit PNG", "ok"),
        ("zeros.nii", lambda: nifti_bytes(np.zeros((40, 40, 3), np.int16)), "all-zero NIfTI", "ok"),
        ("spacing250.nii", lambda: _nifti_spacing(250.0), "NIfTI with 250 mm voxels (spacing treated as unknown)", "ok"),
        ("pixdim0.nii", lambda: _nifti_spacing(0.0), "NIfTI with pixdim 0 (spacing unknown, not 1 mm)", "ok"),
        ("afni_ext.nii", _nifti_with_extension, "NIfTI with a header extension (AFNI-style)", "ok"),
        # --- wrong extensions (content wins)
        ("png_named.dcm", lambda: _png(img), "a valid PNG named .dcm", "ok"),
        ("dicom_named.png", _dicom, "a valid DICOM named .png", "ok"),
        ("nifti_named.jpg", lambda: nifti_bytes(_volume()), "a valid NIfTI named .jpg", "ok"),
        ("noext", lambda: _pil(img, "JPEG"), "a JPEG with no extension", "ok"),
        # --- odd but valid rasters
        ("gray16.tif", lambda: _tiff(img.astype(np.uint16) * 250), "16-bit TIFF", "ok"),
        ("float32.tif", lambda: _tiff(img.astype(np.float32) / 255.0 - 0.3), "float32 TIFF with negatives", "ok"),
        ("gray16.png", lambda: _pil(img.astype(np.uint16) * 250, "PNG"), "16-bit PNG", "ok"),
        ("rgba.png", lambda: _png(np.dstack([img, img, img, np.full_like(img, 200)])), "RGBA PNG", "ok"),
        ("cmyk.jpg", _cmyk_jpeg, "CMYK JPEG", "ok"),
        ("animated.gif", _animated_gif, "animated GIF, 3 frames (first frame loads)", "ok"),
        ("image.webp", lambda: _pil(img, "WEBP", lossless=True), "lossless WebP", "ok"),
        ("image.bmp", lambda: _pil(img, "BMP"), "plain BMP", "ok"),
        ("nan.tif", lambda: _tiff(np.full((32, 32), np.nan, np.float32)), "float TIFF of all NaN", "error"),
        # --- DICOM
        ("mono1.dcm", lambda: _dicom("MONOCHROME1"), "DICOM MONOCHROME1 (inverted)", "ok"),
        ("no_preamble.dcm", lambda: _dicom(preamble=False), "DICOM without the 128-byte preamble", "ok"),
        ("no_pixels.dcm", _dicom_no_pixels, "DICOM with no PixelData element", "error"),
        ("jpegls_garbage.dcm", _dicom_jpegls_garbage, "JPEG-LS DICOM whose fragments are garbage", "error"),
        ("unknown_syntax.dcm", _dicom_unknown_syntax, "DICOM with an unknown transfer syntax UID", "error"),
        ("truncated.dcm", _dicom_truncated, "DICOM missing the end of its pixel data", "error"),
        ("rows_zero.dcm", _dicom_rows_zero, "DICOM claiming Rows = 0", "error"),
        # --- NIfTI
        ("flat.nii", lambda: nifti_bytes(_image().T.astype(np.float32)), "2-D NIfTI", "ok"),
        ("series.nii.gz", lambda: nifti_bytes(np.stack([_volume(4), 2 * _volume(4)], -1), gz=True),
         "4-D NIfTI (2 volumes), gzipped", "ok"),
        ("v2.nii", lambda: nifti_bytes(_volume(), version=2), "NIfTI-2", "ok"),
        ("nan.nii", lambda: nifti_bytes(np.full((32, 32, 4), np.nan, np.float32)), "NIfTI filled with NaN", "error"),
        ("inf.nii.gz", lambda: nifti_bytes(np.full((32, 32, 4), np.inf, np.float32), gz=True), "NIfTI of +inf",
         "error"),
        ("broken_header.nii", _nifti_broken_header, "NIfTI with 300 random header bytes", "error"),
        ("bad_datatype.nii", _nifti_bad_datatype, "NIfTI with an undefined datatype code", "error"),
        ("bad_offset.nii", _nifti_bad_vox_offset, "NIfTI whose vox_offset points past the file", "error"),
        ("truncated.nii", lambda: nifti_bytes(_volume().astype(np.int16))[:-100], "NIfTI missing 100 bytes", "error"),
        ("too_big.nii.gz", lambda: gzip.compress(_nifti_header_only((600, 600, 600, 2))),
         "gzipped NIfTI header claiming 600x600x600x2 voxels (no data)", "error"),
        ("five_d.nii", lambda: nifti_bytes(np.ones((20, 20, 2, 2, 2), np.int16)), "5-D NIfTI", "error"),
    ]


KINDS = [name for name, *_ in _spec()]


def make_corpus(folder) -> list[Case]:
    """Write every corpus file into ``folder`` (created if needed); return the cases in a fixed order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for name, build, description, expected in _spec():
        path = folder / name
        path.write_bytes(build())
        cases.append(Case(name, path, description, expected))
    return cases


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m bench.bad_inputs OUT_DIR", file=sys.stderr)
        return 2
    cases = make_corpus(argv[0])
    for c in cases:
        print(f"{c.expected:5s}  {c.name:24s}  {c.path.stat().st_size:>9,d} B  {c.description}")
    print(f"{len(cases)} files: {sum(c.expected == 'ok' for c in cases)} ok, "
          f"{sum(c.expected == 'error' for c in cases)} error")
    return 0


if __name__ == "__main__":
    sys.exit(main())
