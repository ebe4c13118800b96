"""The cohort batch command on a 2-worker Dask LocalCluster (issue 24): every input gets its row, bad ones
included; outputs equal the in-process path's; a killed worker or a killed run loses nothing and writes
nothing twice; a scheduler that does not answer gives a clear message quickly."""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _nifti(path: Path, seed: int, z: int = 6, fourd: bool = False) -> Path:
    import nibabel as nib

    from bt_demo.sim.phantom import flair_phantom

    sl = [(flair_phantom((48, 48), seed=seed + k)[0] * 1000).astype(np.int16).T for k in range(z)]
    vol = np.stack(sl, axis=-1)
    if fourd:
        vol = np.stack([vol, vol], axis=-1)
    path.write_bytes(gzip.compress(nib.Nifti1Image(vol, np.diag([0.9, 0.9, 3.0, 1.0])).to_bytes(), mtime=0))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from tests.tiny_models import make_weights_dir

    return make_weights_dir(tmp_path_factory.mktemp("w"))


@pytest.fixture(scope="module")
def client():
    from bt_demo.volume.batch import connect

    c = connect(None, 2)
    yield c
    cluster = c.cluster
    c.close()
    cluster.close()


@pytest.fixture()
def cohort(tmp_path):
    good = [_nifti(tmp_path / f"p{i}.nii.gz", 10 * i) for i in range(4)]
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(gzip.compress(b"\x5c\x01\x00\x00" + b"garbage" * 50))
    empty = tmp_path / "empty.nii"
    empty.write_bytes(b"")
    folder = tmp_path / "emptydir"
    folder.mkdir()
    four = _nifti(tmp_path / "fourd.nii.gz", 99, fourd=True)
    return good, [corrupt, empty, folder, four, good[1], tmp_path / "missing.nii"]


def _settings(weights):
    from bt_demo.volume.batch import Settings

    return Settings(str(weights))


def test_every_input_gets_a_row_and_the_rest_complete(client, weights, cohort, tmp_path):
    from bt_demo.volume.batch import run_cohort

    good, bad = cohort
    rows = run_cohort(good + bad, tmp_path / "out", _settings(weights), client=client)
    assert [r["n"] for r in rows] == list(range(1, 11))
    assert [r["status"] for r in rows[:4]] == ["ok"] * 4
    status = {Path(r["input"]).name: (r["status"], r["error"]) for r in rows[4:8] + rows[9:]}
    assert status["corrupt.nii.gz"][0] == "failed" and status["corrupt.nii.gz"][1]
    assert status["empty.nii"][0] == "failed" and "empty" in status["empty.nii"][1]
    assert status["emptydir"] == ("failed", "this folder is empty")
    assert status["missing.nii"] == ("failed", "no such file or folder")
    assert status["fourd.nii.gz"][0] == "ok"  # a 4-D NIfTI gives its first volume, as in the app
    dup = rows[8]
    assert dup["status"] == "duplicate" and "input 2" in dup["error"]
    with open(tmp_path / "out" / "summary.csv") as fh:
        summary = list(csv.DictReader(fh))
    assert len(summary) == 10 and summary[0]["engine"] == "U-Net" and len(summary[0]["weights_sha256"]) == 64
    assert float(summary[0]["volume_ml"]) >= 0 and summary[0]["slices"] == "6"
    assert not list((tmp_path / "out").glob(".*"))  # no temporary folder left


def test_cluster_outputs_equal_the_in_process_path_byte_for_byte(client, weights, cohort, tmp_path):
    from bt_demo.volume.batch import run_cohort

    good, _ = cohort
    run_cohort(good, tmp_path / "dask", _settings(weights), client=client)
    run_cohort(good, tmp_path / "local", _settings(weights), workers=0)
    for d in sorted((tmp_path / "local").iterdir()):
        if not d.is_dir():
            continue
        other = tmp_path / "dask" / d.name
        assert (d / "mask.nii.gz").read_bytes() == (other / "mask.nii.gz").read_bytes()
        a, b = json.loads((d / "report.json").read_text()), json.loads((other / "report.json").read_text())
        for k in ("seconds", "run_id"):
            a.pop(k), b.pop(k)
        assert a == b


def test_a_worker_killed_mid_cohort_loses_no_volume_and_writes_none_twice(client, weights, tmp_path):
    from bt_demo.volume.batch import run_cohort

    inputs = [_nifti(tmp_path / f"v{i}.nii.gz", 7 * i, z=12) for i in range(8)]
    pids = list(client.run(os.getpid).values())
    killed = []

    def on_row(row):
        if not killed:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    rows = run_cohort(inputs, tmp_path / "out", _settings(weights), client=client, on_row=on_row)
    assert killed and [r["status"] for r in rows] == ["ok"] * 8
    outs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outs == sorted([f"{i + 1:04d}_v{i}" for i in range(8)] + ["summary.csv"])
    for i in range(8):
        assert sorted(p.name for p in (tmp_path / "out" / f"{i + 1:04d}_v{i}").iterdir()) == ["mask.nii.gz",
                                                                                               "report.json"]
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it


def test_a_killed_run_resumes_and_skips_what_was_done(weights, tmp_path):
    inputs = [str(_nifti(tmp_path / f"r{i}.nii.gz", 3 * i, z=40)) for i in range(6)]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bt_demo.volume", *inputs, "--out", str(out), "--weights-dir", str(weights),
           "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    def finished_now() -> set:
        # an output folder under its real name; pathlib's "*" also matches a worker's hidden temporary folder,
        # which may hold its report.json for an instant before the rename (that one is not finished)
        return {p.parent.name for p in out.glob("*/report.json") if not p.parent.name.startswith(".")}

    deadline = time.time() + 240
    while time.time() < deadline and not finished_now():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = finished_now()
    assert finished, "nothing finished before the kill"
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and all(x["status"] in ("ok", "done earlier") for x in rows)
    earlier = {Path(x["output"]).name for x in rows if x["status"] == "done earlier"}
    assert finished <= earlier | {Path(x["output"]).name for x in rows if x["status"] == "ok"}
    assert earlier >= finished - {Path(x["output"]).name for x in rows if x["status"] == "ok"}
    assert len(earlier) >= 1 and not list(out.glob(".*tmp*"))
    r2 = subprocess.run(cmd + ["--workers", "0"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert "6 done earlier" in r2.stdout
    r3 = subprocess.run(cmd + ["--workers", "0", "--force"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert "6 segmented" in r3.stdout


def test_a_scheduler_that_does_not_answer_is_reported_within_ten_seconds(weights, tmp_path):
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "bt_demo.volume", str(tmp_path / "x.nii"), "--out", str(tmp_path / "o"),
                        "--weights-dir", str(weights), "--scheduler", "tcp://127.0.0.1:9"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no Dask scheduler answered at tcp://127.0.0.1:9" in r.stderr
    assert time.time() - t0 < 60  # imports included; the connection itself gives up after 10 s


def test_inputs_from_a_csv_list_and_a_cohort_folder(tmp_path):
    from bt_demo.volume.batch import expand_inputs

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    a, b = _nifti(cohort / "a.nii.gz", 1), _nifti(cohort / "b.nii.gz", 2)
    (cohort / "series1").mkdir()
    lst = tmp_path / "list.csv"
    lst.write_text("path,note\ncohort/a.nii.gz,x\n# a comment\n" + f"{b},y\n")
    assert expand_inputs([cohort]) == [a, b, cohort / "series1"]
    assert expand_inputs([lst]) == [tmp_path / "cohort" / "a.nii.gz", b]
    series = tmp_path / "series"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"\0" * 128 + b"DICM")
    assert expand_inputs([series]) == [series]  # a folder of one DICOM series is one input


def test_a_series_a_seg_cannot_be_written_for_keeps_its_mask_and_says_why(weights, tmp_path):
    """A DICOM series without SliceThickness (highdicom must copy it into a SEG): mask and numbers stand."""
    import io

    import pydicom

    from bench.hostile_volumes import dicom_bytes
    from bt_demo.volume.batch import run_cohort

    folder = tmp_path / "series"
    folder.mkdir()
    for k in range(4):
        ds = pydicom.dcmread(io.BytesIO(dicom_bytes(32, 32, k, series_uid="1.2.3.9")))
        del ds.SliceThickness
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
    rows = run_cohort([folder], tmp_path / "out", _settings(weights), workers=0)
    assert rows[0]["status"] == "ok"
    out = Path(rows[0]["output"])
    rep = json.loads((out / "report.json").read_text())
    assert "SliceThickness" in rep["seg_not_written"] and (out / "mask.nii.gz").exists()
    assert not (out / "seg.dcm").exists() and rep["files"] == ["mask.nii.gz", "report.json"]
