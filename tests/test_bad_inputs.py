"""Every file of the bad-input corpus (``bench/bad_inputs.py``) through the app's upload handler.

Each case: a fresh session loads a good phantom, then the corpus file, then a
second good phantom. A file expected to fail must give a short, clean message
(no traceback, no Python exception names) and leave the session exactly as it
was; a file expected to load must become the session's slice; and in every
case the next good upload in the same session must work.

Plus a property test of ``load_slice`` on *structured* header mutations
(DICOM elements, NIfTI header fields, PNG IHDR with a recomputed CRC), which
complements the byte-flip property test in ``tests/test_imaging.py``.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.bad_inputs import KINDS, make_corpus
from bt_demo.errors import InputError
from bt_demo.io import MAX_PIXELS, MIN_SIDE, load_slice
from bt_demo.sim.phantom import flair_phantom
from bt_demo.ui.panels import upload as UP
from bt_demo.ui.state import Session

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers"),
              pytest.mark.usefixtures("one_thread")]

# Python-isms that must never reach a clinician
_PYTHON_NAMES = re.compile(r"Traceback|\b\w*(Error|Exception)\b|struct\.error|File \"|line \d+, in|(?<![0-9A-Za-z])0x[0-9a-f]{6,}|"
                           r"\bNone\b|<class |object at")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    return {c.name: c for c in make_corpus(tmp_path_factory.mktemp("corpus"))}


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[Path, Path]:
    """Two different phantom PNGs (different seeds and shapes)."""
    folder = tmp_path_factory.mktemp("good")
    paths = []
    for seed, shape in ((1, (72, 72)), (2, (64, 80))):
        img, _ = flair_phantom(shape, seed=seed)
        p = folder / f"good_{seed}.png"
        Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(p)
        paths.append(p)
    return paths[0], paths[1]


def _load_ok(s: Session, engines, path: Path) -> Session:
    s, view = UP.load_file(s, engines, str(path))
    assert not view.get("_messages"), view.get("_messages")
    assert s.loaded and s.source_path == str(path)
    return s


def _assert_clean_message(msg: str) -> None:
    assert msg.strip(), "empty message"
    assert "\n" not in msg.strip(), msg
    assert len(msg) < 400, msg
    bad = _PYTHON_NAMES.search(msg)
    assert bad is None, f"python-ism {bad.group(0)!r} in the user message: {msg}"


def test_corpus_shape(corpus):
    assert len(corpus) >= 30 and len(KINDS) == len(set(KINDS)) == len(corpus)
    expected = [c.expected for c in corpus.values()]
    assert set(expected) == {"ok", "error"}
    assert expected.count("ok") >= 10 and expected.count("error") >= 20
    for c in corpus.values():
        assert c.path.exists() and c.description


@pytest.mark.parametrize("name", KINDS)
def test_corpus_file_through_the_upload_handler(name, corpus, good, engines):
    case = corpus[name]
    s = _load_ok(Session(), engines, good[0])
    before = (s.slice, s.source_path, s.window, s.processed, s.prompts, s.selectors)

    s, view = UP.load_file(s, engines, str(case.path))
    messages = view.get("_messages", [])
    if case.expected == "error":
        assert len(messages) == 1, f"{name}: expected one message, got {messages}"
        _assert_clean_message(messages[0])
        assert "could not be opened" in view["status"] and "previous image is still shown" in view["status"]
        assert case.path.name not in messages[0]  # file names never come back from uploads
        after = (s.slice, s.source_path, s.window, s.processed, s.prompts, s.selectors)
        assert all(a is b for a, b in zip(before, after, strict=True)), f"{name}: the session changed on a refused file"
    else:
        assert not messages, f"{name}: {messages}"
        assert s.source_path == str(case.path) and s.slice is not before[0]
        assert min(s.slice.shape) >= MIN_SIDE and np.isfinite(s.slice.pixels).all()
        assert "prompt_image" in view and "status" in view

    # the same session still takes a good upload afterwards
    s = _load_ok(s, engines, good[1])
    assert s.slice.shape == (64, 80)


def test_refused_file_on_a_fresh_session_leaves_it_empty(corpus, good, engines):
    for case in corpus.values():
        if case.expected != "error":
            continue
        s, view = UP.load_file(Session(), engines, str(case.path))
        assert not s.loaded and view.get("_messages"), case.name
        assert "previous image" not in view["status"]
        _load_ok(s, engines, good[0])


def test_the_whole_corpus_in_one_session(corpus, good, engines):
    """One tab uploading everything in turn: only the ok files replace the slice, and the tab survives."""
    s = _load_ok(Session(), engines, good[0])
    current = s.slice
    for case in corpus.values():
        s, view = UP.load_file(s, engines, str(case.path))
        if case.expected == "ok":
            assert s.slice is not current and not view.get("_messages"), case.name
            current = s.slice
        else:
            assert s.slice is current, case.name
    s = _load_ok(s, engines, good[1])
    assert s.slice.shape == (64, 80)


# ---------------------------------------------------------------------------
# property test: structured header mutations -> Slice or InputError
# ---------------------------------------------------------------------------
_INTERESTING_INTS = [0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 31, 32, 33, 64, 255, 256, 4095, 4096, 4097, 32767,
                     65535, -1, -32768, 2**31 - 1]
_INTERESTING_FLOATS = [0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, 1e300, float("nan"), float("inf"), float("-inf"), 0.5]


def _check(data: bytes) -> None:
    try:
        s = load_slice(data)
    except InputError as e:
        assert type(e) is InputError
        assert str(e).strip() and "Traceback" not in str(e)
        return
    assert s.pixels.dtype == np.float32 and s.pixels.ndim == 2
    assert min(s.shape) >= MIN_SIDE and s.pixels.size <= MAX_PIXELS
    assert np.isfinite(s.pixels).all()
    c, w = s.window
    assert np.isfinite(c) and np.isfinite(w) and w > 0


def _seed_nifti(version: int) -> bytes:
    import nibabel as nib

    data = np.arange(20 * 24 * 4, dtype=np.int16).reshape(20, 24, 4)
    klass = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    return klass(data, np.diag([1.0, 1.2, 2.0, 1.0])).to_bytes()


# (offset, struct format) of NIfTI-1 header fields worth breaking
_NIFTI1_FIELDS = [(40 + 2 * i, "<h") for i in range(8)] + [  # dim[0..7]
    (70, "<h"), (72, "<h"),  # datatype, bitpix
] + [(76 + 4 * i, "<f") for i in range(8)] + [  # pixdim[0..7]
    (108, "<f"), (112, "<f"), (116, "<f"),  # vox_offset, scl_slope, scl_inter
    (252, "<h"), (254, "<h"),  # qform_code, sform_code
] + [(256 + 4 * i, "<f") for i in range(18)]  # quatern_b..d, qoffset, srow_x/y/z

# NIfTI-2: dim int64 at 16, datatype int16 at 12, bitpix int16 at 14, pixdim float64 at 104, vox_offset int64 at 168,
# scl_slope / scl_inter float64 at 176 / 184, qform/sform int32 at 344 / 348, srow float64 at 400..
_NIFTI2_FIELDS = [(16 + 8 * i, "<q") for i in range(8)] + [(12, "<h"), (14, "<h")] + \
                 [(104 + 8 * i, "<d") for i in range(8)] + [(168, "<q"), (176, "<d"), (184, "<d"),
                                                            (344, "<i"), (348, "<i")] + \
                 [(400 + 8 * i, "<d") for i in range(12)]

_DICOM_INT_ELEMENTS = ["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                       "SamplesPerPixel", "PlanarConfiguration", "NumberOfFrames"]
_DICOM_STR_ELEMENTS = {
    "PhotometricInterpretation": ["MONOCHROME1", "RGB", "YBR_FULL", "PALETTE COLOR", "", "garbage", "MONOCHROME2"],
    "RescaleSlope": ["0", "-1", "1e300", "nan", "inf", "abc", ""],
    "RescaleIntercept": ["-1e300", "nan", "1e5", "x"],
    "WindowCenter": ["nan", "1e400", "-5", "", "a\\b"],
    "WindowWidth": ["0", "-10", "nan", "inf", ""],
    "PixelSpacing": ["0\\0", "-1\\1", "nan\\nan", "1", "a\\b"],
}


def _fit(fmt: str, value):
    """Clamp/convert a value so struct can pack it into ``fmt``."""
    if fmt in ("<f", "<d"):
        v = float(value)
        if fmt == "<f" and np.isfinite(v) and abs(v) > 3.0e38:
            v = float("inf") if v > 0 else float("-inf")
        return v
    bits = {"<h": 16, "<i": 32, "<q": 64}[fmt]
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    v = int(value) if np.isfinite(value) else 0
    return min(max(v, lo), hi)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_property_structured_header_mutations_give_slice_or_input_error():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    from pydicom import dcmread
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

    base_png = io.BytesIO()
    Image.fromarray(np.arange(32 * 40, dtype=np.uint16).reshape(32, 40).astype(np.uint8)).save(base_png, "PNG")
    base_png = base_png.getvalue()
    nifti = {1: _seed_nifti(1), 2: _seed_nifti(2)}

    def dicom_seed() -> Dataset:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = "1.2.3.4"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = "1.2.3.4"
        ds.Modality = "MR"
        ds.set_pixel_data(np.arange(32 * 40, dtype=np.uint16).reshape(32, 40), "MONOCHROME2", 12)
        ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = "1", "0", "600", "1200"
        ds.PixelSpacing = [0.5, 0.5]
        return ds

    dicom_base = io.BytesIO()
    dicom_seed().save_as(dicom_base, enforce_file_format=True)
    dicom_base = dicom_base.getvalue()

    number = st.one_of(st.sampled_from(_INTERESTING_INTS), st.sampled_from(_INTERESTING_FLOATS),
                       st.integers(-(2 ** 40), 2 ** 40))

    @st.composite
    def nifti_mutant(draw):
        version = draw(st.sampled_from([1, 2]))
        raw = bytearray(nifti[version])
        fields = _NIFTI1_FIELDS if version == 1 else _NIFTI2_FIELDS
        for _ in range(draw(st.integers(1, 4))):
            off, fmt = draw(st.sampled_from(fields))
            struct.pack_into(fmt, raw, off, _fit(fmt, draw(number)))
        if draw(st.booleans()):
            raw = raw[: draw(st.integers(0, len(raw)))]
        return bytes(raw)

    @st.composite
    def dicom_mutant(draw):
        ds = dcmread(io.BytesIO(dicom_base))
        for _ in range(draw(st.integers(1, 3))):
            if draw(st.booleans()):
                name = draw(st.sampled_from(_DICOM_INT_ELEMENTS))
                value = draw(st.sampled_from([v for v in _INTERESTING_INTS if 0 <= v <= 65535]))
                setattr(ds, name, value if name != "NumberOfFrames" else str(value))
            else:
                name = draw(st.sampled_from(sorted(_DICOM_STR_ELEMENTS)))
                value = draw(st.sampled_from(_DICOM_STR_ELEMENTS[name]))
                try:
                    setattr(ds, name, value)
                except Exception:  # noqa: BLE001 - pydicom may refuse a value for this VR; keep the file
                    pass
        if draw(st.booleans()):
            del ds.PixelData
            ds.PixelData = draw(st.binary(max_size=4000))
        buf = io.BytesIO()
        try:
            ds.save_as(buf, enforce_file_format=True)
        except Exception:  # noqa: BLE001 - pydicom would not write it: fall back to the unmutated file
            return dicom_base
        return buf.getvalue()

    @st.composite
    def png_mutant(draw):
        raw = bytearray(base_png)
        body = bytearray(raw[16:29])  # IHDR body: width, height, depth, colour type, compression, filter, interlace
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.sampled_from([0, 4, 8, 9, 10, 11, 12]))
            if i in (0, 4):
                struct.pack_into(">I", body, i, draw(st.sampled_from([0, 1, 15, 16, 40, 41, 4097, 20000,
                                                                      2 ** 31 - 1, 2 ** 32 - 1])))
            else:
                body[i] = draw(st.sampled_from([0, 1, 2, 3, 4, 6, 8, 16, 255]))
        raw[16:29] = body
        raw[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(body)) & 0xFFFFFFFF)
        return bytes(raw)

    @hypothesis.settings(max_examples=120, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(data=st.one_of(nifti_mutant(), dicom_mutant(), png_mutant()))
    def run(data):
        _check(data)

    run()
