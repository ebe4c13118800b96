"""The correction store: round trip, privacy, crash safety, bounds, threads; and train.corrections."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from bench.crash_store import KILLS, crash_test
from bt_demo.errors import InputError
from bt_demo.io import load_slice
from bt_demo.io.corrections import (
    CorrectionStore,
    CorruptRecordError,
    StoreFullError,
    check_deidentified,
)
from bt_demo.sim.phantom import flair_phantom

ID_RE = re.compile(r"^[0-9a-f]{16}$")


@pytest.fixture
def store(tmp_path) -> CorrectionStore:
    return CorrectionStore(tmp_path / "store")


def phantom_case(seed=0, shape=(64, 80)):
    img, m = flair_phantom(shape, seed=seed)
    model = np.roll(m, 3, axis=1)  # the "model" was a bit off; the user corrected it
    return img, m, model


def folder_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


# ---------------------------------------------------------------------------
# round trip and layout
# ---------------------------------------------------------------------------
def test_round_trip(store):
    img, m, model = phantom_case()
    prompts = {"points": np.array([[10, 20], [30, 40]]), "labels": (1, 0), "box": None}
    settings = {"threshold": np.float32(0.5), "steps": ["clahe", "denoise"], "hd95": float("inf")}
    rid = store.save(image=img, corrected_mask=m, model_mask=model, prompts=prompts, settings=settings,
                     spacing=(0.9, 1.1), engine="sam2.1-hiera-tiny", meta={"modality": "MR", "app_version": "0.1.0"})
    assert ID_RE.match(rid)
    assert store.ids() == [rid] and len(store) == 1 and rid in store
    rec = store.load(rid)
    assert rec.id == rid
    np.testing.assert_array_equal(rec.corrected_mask, m)
    np.testing.assert_array_equal(rec.model_mask, model)
    assert rec.image.dtype == np.float32 and rec.image.shape == img.shape
    assert np.abs(rec.image - img).max() <= 0.5 / 65535 + 1e-7  # 16-bit quantisation only
    assert rec.spacing == (0.9, 1.1)
    assert rec.engine == "sam2.1-hiera-tiny"
    assert rec.prompts == {"points": [[10, 20], [30, 40]], "labels": [1, 0], "box": None}
    assert rec.settings == {"threshold": 0.5, "steps": ["clahe", "denoise"], "hd95": None}
    assert rec.meta == {"modality": "MR", "app_version": "0.1.0"}
    datetime.strptime(rec.created_utc, "%Y-%m-%dT%H:%M:%S.%fZ")
    # a reopened store (a new process after a restart) sees the same record
    again = CorrectionStore(store.root).load(rid)
    np.testing.assert_array_equal(again.corrected_mask, m)


def test_record_folder_layout(store):
    img, m, model = phantom_case()
    with_model = store.save(image=img, corrected_mask=m, model_mask=model)
    without = store.save(image=img, corrected_mask=m)
    assert {p.name for p in (store.root / with_model).iterdir()} == \
        {"image.png", "corrected_mask.png", "model_mask.png", "record.json"}
    assert {p.name for p in (store.root / without).iterdir()} == {"image.png", "corrected_mask.png", "record.json"}
    assert store.load(without).model_mask is None
    # files readable by ordinary tools: 16-bit image, 0/255 masks
    s = load_slice(store.root / with_model / "image.png")
    assert s.metadata["bits"] == "16"
    np.testing.assert_allclose(s.pixels / 65535, img, atol=1e-5)
    mk = load_slice(store.root / with_model / "corrected_mask.png").pixels
    np.testing.assert_array_equal(mk, m * 255.0)
    rec = json.loads((store.root / with_model / "record.json").read_text())
    assert rec["schema_version"] == 1 and rec["id"] == with_model and rec["shape"] == [64, 80]
    assert set(rec["sha256"]) == {"image", "corrected_mask", "model_mask"}
    # nothing else at the top level but the records and .tmp
    assert {p.name for p in store.root.iterdir()} == {with_model, without, ".tmp"}


def test_image_slack_is_clipped_but_wrong_units_are_refused(store):
    img, m, _ = phantom_case()
    img = img.copy()
    img[0, 0], img[0, 1] = -1e-5, 1 + 1e-5
    rec = store.load(store.save(image=img, corrected_mask=m))
    assert rec.image.min() >= 0 and rec.image.max() <= 1
    with pytest.raises(InputError, match=r"\[0, 1\].*0\.*\d*\.\.255"):
        store.save(image=img * 255, corrected_mask=m)
    assert len(store) == 1


@pytest.mark.parametrize("kwargs, text", [
    ({"image": np.zeros((20, 20), np.uint8)}, "dtype uint8"),
    ({"image": np.zeros((3, 20, 20), np.float32)}, "shape (3, 20, 20)"),
    ({"image": np.full((20, 20), np.nan, np.float32)}, "NaN"),
    ({"corrected_mask": np.zeros((20, 21), bool)}, "(20, 21)"),
    ({"model_mask": np.zeros((21, 20), bool)}, "(21, 20)"),
    ({"spacing": (0.9, -1)}, "row_mm, col_mm"),
    ({"meta": ["not", "a", "dict"]}, "dict"),
    ({"settings": {"fn": print}}, "builtin_function_or_method"),
])
def test_bad_input_is_refused_with_the_reason(store, kwargs, text):
    args = {"image": np.zeros((20, 20), np.float32), "corrected_mask": np.zeros((20, 20), bool)} | kwargs
    with pytest.raises(InputError) as e:
        store.save(**args)
    assert text in str(e.value)
    if "mask" in text or "(2" in text:
        assert "(20, 20)" in str(e.value)  # both shapes named
    assert len(store) == 0 and not any((store.root / ".tmp").iterdir())


def test_constructor_limits_say_the_range(tmp_path):
    with pytest.raises(ValueError, match="1 to 10,000,000"):
        CorrectionStore(tmp_path, max_records=0)
    with pytest.raises(ValueError, match="1 MiB"):
        CorrectionStore(tmp_path, max_bytes=10)


def test_unknown_or_hostile_ids(store):
    for bad in ("../../etc/passwd", "0123", "ABCDEF0123456789", 5):
        with pytest.raises(InputError, match="not a record id"):
            store.load(bad)
    with pytest.raises(InputError, match="no record"):
        store.load("0123456789abcdef")


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("BT_ANNOTATIONS_DIR", str(tmp_path / "x"))
    assert CorrectionStore.default_root() == tmp_path / "x"
    monkeypatch.delenv("BT_ANNOTATIONS_DIR")
    root = CorrectionStore.default_root()
    if os.path.isdir("/data") and os.access("/data", os.W_OK):
        assert root == Path("/data/corrections")
    else:
        assert root == Path(__file__).resolve().parents[1] / "corrections"


# ---------------------------------------------------------------------------
# privacy
# ---------------------------------------------------------------------------
UPLOAD_NAME = "DOE_JANE_brain_0042"


@pytest.mark.parametrize("kwargs", [
    {"meta": {"source": f"{UPLOAD_NAME}.dcm"}},
    {"meta": {"source": f"{UPLOAD_NAME}.nii.gz"}},
    {"meta": {"upload": f"C:\\Users\\jane\\{UPLOAD_NAME}.PNG"}},
    {"meta": {"where": f"/tmp/gradio/abc/{UPLOAD_NAME}"}},
    {"prompts": {"file_name": UPLOAD_NAME}},
    {"prompts": {"FileName": UPLOAD_NAME}},
    {"settings": {"input_path": "x"}},
    {"settings": {"nested": [{"dicom": {"PatientName": "Doe^Jane"}}]}},
    {"meta": {"Patient ID": "12345"}},
    {"meta": {"patient_age": "045Y"}},
    {"meta": {"StudyDate": "20240102"}},
    {"meta": {"accession-number": "A1"}},
    {"meta": {"InstitutionName": "General Hospital"}},
    {"meta": {"ReferringPhysicianName": "Dr^Who"}},
    {"meta": {"SeriesInstanceUID": "1.2.3"}},
    {"meta": {"series": "1.2.840.113619.2.55.3.604688"}},
    {"meta": {f"{UPLOAD_NAME}.png": 1}},
    {"engine": f"{UPLOAD_NAME}.nii"},
])
def test_identifying_keys_and_upload_names_are_refused(store, kwargs):
    img, m, _ = phantom_case()
    with pytest.raises(ValueError) as e:  # InputError is a ValueError
        store.save(image=img, corrected_mask=m, **kwargs)
    assert isinstance(e.value, InputError)
    assert "cannot be stored" in str(e.value)
    assert len(store) == 0 and not any((store.root / ".tmp").iterdir())


def test_a_dicom_upload_leaves_no_header_field_or_name_in_the_store(store, tmp_path):
    """The real flow: upload a named DICOM with identity in its header, correct, save."""
    import pydicom

    from bt_demo.sim.phantom import _dicom_bytes

    img, m = flair_phantom((64, 64), seed=3)
    ds = pydicom.dcmread(io.BytesIO(_dicom_bytes(img, 0.9)))
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN778899"
    ds.PatientBirthDate = "19700101"
    ds.InstitutionName = "Saint Example Hospital"
    ds.StudyDate = "20240102"
    upload = tmp_path / f"{UPLOAD_NAME}.dcm"
    ds.save_as(upload)
    s = load_slice(upload)
    rid = store.save(image=s.unit(), corrected_mask=m, spacing=s.spacing, engine="unet",
                     meta=dict(s.metadata), settings={"window": list(s.window)})
    blob = folder_bytes(store.root)
    for secret in (b"Doe", b"Jane", b"MRN778899", b"19700101", b"Saint Example", b"20240102",
                   UPLOAD_NAME.encode(), b".dcm"):
        assert secret not in blob, secret
    rec = json.loads((store.root / rid / "record.json").read_text())
    check_deidentified(rec, "record.json")  # the stored JSON passes the store's own rules
    assert re.fullmatch(r"[0-9a-f]{16}", rid) and UPLOAD_NAME not in rid


# ---------------------------------------------------------------------------
# crash safety
# ---------------------------------------------------------------------------
def test_sigkill_at_random_moments_leaves_only_complete_records(tmp_path):
    result = crash_test(tmp_path / "store", kills=KILLS, seed=0)
    assert result["written"] > 0  # saves did complete between the kills
    assert result["interrupted_saves"] > 0  # and some kills landed inside a save
    assert result["partial"] == 0
    assert result["corrupt"] == 0
    assert result["lost"] == 0  # every save that returned survived
    assert result["readable"] == result["folders"] >= result["written"]
    assert result["tmp_left_after_reopen"] == 0
    store = CorrectionStore(tmp_path / "store")
    assert len(store) == result["readable"]
    for rid in store.ids():
        store.load(rid)


def test_stale_tmp_is_cleaned_but_a_live_writer_is_left_alone(store):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    half = store.root / ".tmp" / f"0123456789abcdef.{dead_pid}"
    half.mkdir()
    (half / "image.png").write_bytes(b"\x89PNG half")
    live = store.root / ".tmp" / f"fedcba9876543210.{os.getpid()}"
    live.mkdir()
    reopened = CorrectionStore(store.root)
    assert not half.exists()
    assert live.exists()
    assert reopened.ids() == []


def test_a_damaged_record_is_reported_not_crashed_on(store):
    img, m, _ = phantom_case()
    good = store.save(image=img, corrected_mask=m)
    bad = store.save(image=img, corrected_mask=m)
    p = store.root / bad / "corrected_mask.png"
    raw = bytearray(p.read_bytes())
    raw[-20] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(CorruptRecordError, match=f"record {bad} is damaged.*SHA-256"):
        store.load(bad)
    assert isinstance(CorruptRecordError("x"), InputError)
    report = store.check()
    assert report["readable"] == [good] and list(report["corrupt"]) == [bad]
    store.delete(bad)
    assert store.ids() == [good]


# ---------------------------------------------------------------------------
# bounds and concurrency
# ---------------------------------------------------------------------------
def test_record_limit_refuses_and_keeps_what_is_there(tmp_path):
    store = CorrectionStore(tmp_path / "s", max_records=3)
    img, m, _ = phantom_case()
    ids = [store.save(image=img, corrected_mask=m) for _ in range(3)]
    with pytest.raises(StoreFullError) as e:
        store.save(image=img, corrected_mask=m)
    assert "3 of 3 records" in str(e.value) and "Nothing was saved" in str(e.value)
    assert isinstance(e.value, InputError)
    assert store.ids() == sorted(ids)  # nothing rotated out
    store.delete(ids[0])
    store.save(image=img, corrected_mask=m)  # room again
    assert len(store) == 3


def test_byte_limit_refuses_before_going_over(tmp_path):
    store = CorrectionStore(tmp_path / "s", max_bytes=1 << 20)
    rng = np.random.default_rng(0)
    saved = 0
    with pytest.raises(StoreFullError, match="MB of 1.0 MB"):
        for _ in range(50):
            noise = rng.random((160, 160), dtype=np.float32)  # ~50 kB as 16-bit PNG
            store.save(image=noise, corrected_mask=noise > 0.5)
            saved += 1
    assert 5 < saved < 50
    assert store.size_bytes() <= 1 << 20
    assert len(store) == saved


def test_concurrent_saves_from_threads_all_land(store):
    n_threads, per_thread = 8, 4
    results: dict[int, list[str]] = {}
    errors = []

    def work(t):
        try:
            out = []
            for i in range(per_thread):
                value = (t * per_thread + i + 1) / 64.0
                img = np.full((24, 24), value, np.float32)
                out.append(store.save(image=img, corrected_mask=img > 0, settings={"thread": t, "i": i}))
            results[t] = out
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    all_ids = [rid for ids in results.values() for rid in ids]
    assert len(set(all_ids)) == n_threads * per_thread
    assert sorted(all_ids) == store.ids()
    for t, ids in results.items():  # each record holds what its own thread saved
        for i, rid in enumerate(ids):
            rec = store.load(rid)
            assert rec.settings == {"thread": t, "i": i}
            assert abs(float(rec.image[0, 0]) - (t * per_thread + i + 1) / 64.0) < 1e-4


# ---------------------------------------------------------------------------
# train.corrections
# ---------------------------------------------------------------------------
def test_load_corrections_as_a_training_set(store):
    from train.corrections import load_corrections

    cases = [flair_phantom(shape, seed=s) for s, shape in enumerate([(96, 96), (120, 80), (64, 64)])]
    ids = [store.save(image=img, corrected_mask=m, model_mask=np.zeros_like(m)) for img, m in cases]
    data = load_corrections(store.root, size=64)
    assert len(data) == 3
    assert data.images.dtype == np.uint8 and data.images.shape == (3, 64, 64)
    assert data.masks.dtype == bool and data.masks.shape == (3, 64, 64)
    order = sorted(range(3), key=lambda k: ids[k])
    assert list(data.patients) == [f"correction_{ids[k]}" for k in order]
    assert data.patient_ids == sorted(data.patients.tolist())  # each record its own group
    assert (data.slice_numbers == 0).all()
    assert data.has_tumour.all()  # the corrected masks, not the empty model masks
    for j, k in enumerate(order):  # lesion stays the bright part after resizing
        img = data.images[j].astype(float)
        assert img[data.masks[j]].mean() > img[~data.masks[j]].mean() + 60
        frac = cases[k][1].mean()
        assert abs(data.masks[j].mean() - frac) < 0.02

    with pytest.raises(ValueError, match="pass size"):
        load_corrections(store.root, size=None)


def test_load_corrections_empty_and_damaged(tmp_path):
    from train.corrections import load_corrections

    store = CorrectionStore(tmp_path / "s")
    empty = load_corrections(store.root, size=32)
    assert len(empty) == 0
    assert empty.images.shape == (0, 32, 32) and empty.images.dtype == np.uint8
    assert empty.masks.shape == (0, 32, 32) and empty.masks.dtype == bool
    img, m = flair_phantom((48, 48), seed=1)
    good = store.save(image=img, corrected_mask=m)
    bad = store.save(image=img, corrected_mask=m)
    (store.root / bad / "image.png").write_bytes(b"broken")
    with pytest.warns(UserWarning, match=bad):
        data = load_corrections(store.root, size=None)
    assert list(data.patients) == [f"correction_{good}"]
    assert data.images.shape == (1, 48, 48)
    np.testing.assert_array_equal(data.masks[0], m)
    with pytest.raises(FileNotFoundError):
        load_corrections(tmp_path / "missing")


# ---------------------------------------------------------------------------
# one store per process, its folder checked at start, notes without personal details
# ---------------------------------------------------------------------------
def test_concurrent_saves_at_the_cap_never_overshoot(tmp_path):
    """Four users pressing *Accept* at once at 9,999 of 10,000 records: one lands, three are refused."""
    from bt_demo.io.corrections import shared_store

    root = tmp_path / "s"
    img, m, _ = phantom_case()
    store = shared_store(root, max_records=5)
    for _ in range(4):
        store.save(image=img, corrected_mask=m)
    outcomes, barrier = [], threading.Barrier(4)

    def user():
        st = shared_store(str(root), max_records=5)  # each save asks for the store, as the handler does
        barrier.wait()
        try:
            st.save(image=img, corrected_mask=m)
            outcomes.append("saved")
        except StoreFullError as e:
            outcomes.append(str(e))
    threads = [threading.Thread(target=user) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("saved") == 1 and len(CorrectionStore(root)) == 5
    assert all("--max-corrections" in o for o in outcomes if o != "saved")  # the message names the flag that sets it
    assert shared_store(root, 5) is shared_store(str(root / "." ), 5)


def test_store_folder_is_checked_and_explained(tmp_path, monkeypatch):
    from bt_demo.io.corrections import StoreError, check_store_root

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert check_store_root("~/corr") == tmp_path / "home" / "corr"  # expanded, not a literal ./~/corr
    assert (tmp_path / "home" / "corr").is_dir() and not Path("~").exists()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if not os.access(ro, os.W_OK):  # root ignores permissions
            with pytest.raises(StoreError, match="exists but is not writable"):
                check_store_root(ro)
    finally:
        ro.chmod(0o755)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreError, match="is a file, not a folder"):
        check_store_root(tmp_path / "afile")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio_cache"))
    with pytest.raises(StoreError, match="inside Gradio's upload cache"):
        check_store_root(tmp_path / "gradio_cache" / "corrections")


@pytest.mark.parametrize("note", ["Patient John Doe, DOB 1970-01-01, MRN 4MR1", "seen by Dr. Who", "born 3 March 1950",
                                  "call 555 123 4567", "mail me: a.b@example.org", "id 12345", "John Doe"])
def test_notes_with_personal_details_are_refused(note):
    from bt_demo.io.corrections import note_problem

    assert note_problem(note) is not None


@pytest.mark.parametrize("note", ["left frontal, checked", "added the cystic core; the U-Net missed it",
                                  "FLAIR rim included", "T2 bright edge, 3 clicks"])
def test_clinical_notes_pass(note):
    from bt_demo.io.corrections import note_problem

    assert note_problem(note) is None
