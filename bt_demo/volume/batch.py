"""A cohort of volumes through the U-Net: one task per input volume, on Dask (one machine or many).

:func:`run_cohort` sends one task per input to a ``dask.distributed`` cluster: a ``LocalCluster`` of
``workers`` processes x 1 thread on this machine, or an existing cluster given by its scheduler address
(``tcp://HOST:PORT``) for many machines. Each worker loads the U-Net once (:func:`_engine`, cached per
process) and keeps it for all its tasks. ``workers=0`` runs the same tasks in this process, without Dask
(the reference the cluster's outputs are compared with, byte for byte).

Every input ends with one row in ``OUT/summary.csv`` (status ``ok``, ``done earlier``, ``failed`` or
``duplicate``), whatever happens to the workers:

* a task that raises, or whose worker dies, is retried once (``retries=1``, and the scheduler's
  ``allowed-failures`` = 1), then listed as failed with the reason; the rest go on;
* outputs are written into a temporary folder beside their place and renamed into it when complete, so a
  killed worker leaves no half-written output, and a retried task never writes twice;
* an input whose ``report.json`` exists and names the same weights (SHA-256) and settings is not run
  again (resume after a crash); ``force`` redoes it.

Memory: a worker holds one volume at a time; loading is bounded by :mod:`bt_demo.io.upload` and
:mod:`bt_demo.io.memory` (about 16 bytes per voxel at the peak: 1 GB for the largest accepted volume,
512 x 512 x 256), plus the U-Net's probabilities (4 bytes per voxel) and the model (under 100 MB).
A ``LocalCluster`` worker is limited to ``memory_per_worker`` (3 GiB by default); Dask's nanny restarts a
worker that goes past it, and its task is retried once like any lost worker.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

SUMMARY_FIELDS = ("n", "input", "status", "error", "volume_ml", "voxels", "slices", "extent_slices", "extent_mm",
                  "engine", "weights_sha256", "seconds", "output")
CONNECT_TIMEOUT_S = 10
DEFAULT_MEMORY_PER_WORKER = "3GiB"


@dataclasses.dataclass(frozen=True)
class Settings:
    """What decides a volume's outputs besides its input and the weights (resume compares these)."""

    weights_dir: str
    series: int | None = None
    threshold: float | None = None
    batch: int = 8
    threads: int = 1  # torch threads per task

    def key(self) -> dict:
        return {"series": self.series, "threshold": self.threshold, "batch": self.batch}


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------
_VOLUME_MAGIC = (b"PK\x03\x04", b"\x1f\x8b")


def _is_volume_file(p: Path) -> bool:
    """A NIfTI (.nii, .nii.gz) or a zip: one input of a cohort folder (a DICOM file is a slice of one)."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(352)
    except OSError:
        return False
    return head.startswith(_VOLUME_MAGIC) or head[344:348] in (b"n+1\x00", b"n+2\x00") or head[4:8] == b"n+2\x00"


def expand_inputs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The cohort's inputs, in order, from the command line's paths.

    * a ``.csv`` file: a list of paths (the column ``path``, else the first column; relative paths are
      taken from the CSV's folder);
    * a folder that holds volumes (NIfTI files, zips) or subfolders, and no DICOM file at its top: a cohort
      folder, each of those is one input;
    * anything else (a file, a folder of one DICOM series, a path that does not exist): one input, as given
      (a missing path gets its row in the summary).
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_file() and p.suffix.lower() == ".csv":
            out += _csv_inputs(p)
        elif p.is_dir():
            entries = sorted(e for e in p.iterdir() if not e.name.startswith("."))
            files = [e for e in entries if e.is_file()]
            if entries and all(e.is_dir() or _is_volume_file(e) for e in entries) and (
                    any(e.is_dir() for e in entries) or len(files) > 1):
                out += entries
            else:
                out.append(p)
        else:
            out.append(p)
    return out


def _csv_inputs(p: Path) -> list[Path]:
    with open(p, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return []
    col = 0
    header = [c.strip().lower() for c in rows[0]]
    if "path" in header:
        col, rows = header.index("path"), rows[1:]
    out = []
    for r in rows:
        if len(r) > col and r[col].strip() and not r[col].lstrip().startswith("#"):
            q = Path(r[col].strip())
            out.append(q if q.is_absolute() else p.parent / q)
    return out


def output_dir(out: Path, n: int, path: Path) -> Path:
    """``OUT/<n>_<stem>``: by position and the input's stem, never anything from DICOM headers."""
    stem = path.name.split(".")[0] or "input"
    return Path(out) / f"{n:04d}_{stem}"


@functools.cache
def weights_sha256(unet_dir: str) -> str:
    """SHA-256 of the U-Net folder's config.json and model.safetensors (what resume compares)."""
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        p = Path(unet_dir) / name
        h.update(name.encode())
        h.update(p.read_bytes() if p.exists() else b"")
    return h.hexdigest()


def _done(dst: Path, whash: str, settings: Settings) -> dict | None:
    """The report of an earlier run with the same weights and settings, or None."""
    try:
        rep = json.loads((dst / "report.json").read_text())
    except (OSError, ValueError):
        return None
    if rep.get("weights_sha256") == whash and rep.get("batch_settings") == settings.key():
        return rep
    return None


# ---------------------------------------------------------------------------
# one task: one volume (runs in a worker)
# ---------------------------------------------------------------------------
def _malloc_for_tensors() -> None:
    """Let glibc keep freed tensor buffers for reuse, as it does by default.

    A Dask nanny starts its workers with MALLOC_TRIM_THRESHOLD_=65536; setting it fixes glibc's mmap
    threshold at 128 KiB, so every activation buffer is mmapped, page-faulted and unmapped again, and the
    U-Net ran 2.8x slower per volume in a worker than in a plain process (4.1 s vs 1.46 s, measured). The
    nanny still bounds the worker's memory; only the reuse of freed buffers changes. Not glibc: no-op."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: buffers under 64 MiB come from the reusable heap
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD: keep up to 128 MiB of freed heap for the next task
    except (OSError, AttributeError):
        pass


@functools.cache
def _engine(unet_dir: str, threads: int):
    """The U-Net, loaded once per worker process (Dask keeps the process between tasks)."""
    import torch

    from bt_demo.models.unet import UNetEngine

    if os.environ.get("MALLOC_TRIM_THRESHOLD_"):  # a Dask worker (see _malloc_for_tensors)
        _malloc_for_tensors()
    torch.set_num_threads(max(1, threads))
    unet = UNetEngine.load(unet_dir)
    if isinstance(unet, str):  # the loader's reason
        raise RuntimeError(unet)
    return unet


def _row(n: int, path: Path, status: str, error: str = "", **kw) -> dict:
    return {"n": n, "input": str(path), "status": status, "error": error, **kw}


def _row_from_report(n: int, path: Path, dst: Path, rep: dict, status: str, seconds: float) -> dict:
    v = rep["volume"]
    return _row(n, path, status, volume_ml=v.get("volume_ml"), voxels=v.get("voxels"), slices=rep["shape_zyx"][0],
                extent_slices="-".join(str(k + 1) for k in v["extent_slices"]) if v.get("extent_slices") else "",
                extent_mm=v.get("extent_mm"), engine=rep.get("engine"), weights_sha256=rep.get("weights_sha256"),
                seconds=round(seconds, 2), output=str(dst))


def process(n: int, path: str, out: str, settings: Settings, force: bool = False, run_id: str = "") -> dict:
    """Segment input number ``n`` into ``output_dir(out, n, path)``; returns its summary row.

    run_id: this cohort run's id, kept in report.json: a retried task (its first worker lost after writing)
    finds its own output and reports it as done in this run, not as done earlier.

    Bad input gives a ``failed`` row (not an exception: retrying cannot fix a corrupt file); anything else
    raises, and the cluster retries the task once.
    """
    from bt_demo.errors import InputError
    from bt_demo.volume import load_volume
    from bt_demo.volume.export import dicom_seg, mask_nifti_3d
    from bt_demo.volume.segment import segment_volume, volume_numbers

    t0 = time.perf_counter()
    p, dst = Path(path), output_dir(Path(out), n, Path(path))
    unet_dir = str(Path(settings.weights_dir) / "unet")
    whash = weights_sha256(unet_dir)
    if (rep := _done(dst, whash, settings)) is not None and (not force or (run_id and rep.get("run_id") == run_id)):
        mine = bool(run_id) and rep.get("run_id") == run_id
        return _row_from_report(n, p, dst, rep, "ok" if mine else "done earlier", rep.get("seconds", 0.0))
    if not p.exists():
        return _row(n, p, "failed", "no such file or folder")
    unet = _engine(unet_dir, settings.threads)
    try:
        items = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        if not items:
            raise InputError("this folder is empty")
        vol = load_volume(items, series_index=settings.series)
        res = segment_volume(vol, unet, threshold=settings.threshold, batch=settings.batch)
    except (InputError, ValueError, OSError) as e:
        return _row(n, p, "failed", " ".join(str(e).split())[:300] or type(e).__name__)
    nums = volume_numbers(vol, res.mask)
    files = {"mask.nii.gz": mask_nifti_3d(vol, res.mask)}
    seg_note = None
    if vol.source.startswith("dicom"):
        try:
            files["seg.dcm"] = dicom_seg(vol, res.mask)
        except InputError as e:  # the mask and the numbers stand; the report says why there is no SEG
            seg_note = str(e)
    report = {"disclaimer": "Research demo, not for diagnosis.", "source_format": vol.source,
              "shape_zyx": list(vol.shape), "volume": nums | {"areas_px": None},
              "areas_px_per_slice": nums["areas_px"], "engine": res.engine, "settings": res.settings,
              "weights_sha256": whash, "batch_settings": settings.key(), "run_id": run_id,
              "seconds": round(res.seconds, 2), "files": sorted(files) + ["report.json"],
              "placement": "mask.nii.gz has the source's own voxel grid and affine" if vol.source_affine
              is not None else "no source geometry"}
    if seg_note:
        report["seg_not_written"] = seg_note
    files["report.json"] = (json.dumps(report, indent=1) + "\n").encode()
    _write_atomically(dst, files)
    return _row_from_report(n, p, dst, report, "ok", time.perf_counter() - t0)


def _write_atomically(dst: Path, files: dict[str, bytes]) -> None:
    """All of ``files`` appear in ``dst`` at once (a temporary folder renamed), or none do."""
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        if dst.exists():
            old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(dst, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# the cohort
# ---------------------------------------------------------------------------
def write_summary(out: Path, rows: list[dict]) -> Path:
    """``OUT/summary.csv`` (one row per input, in input order), replaced atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in sorted(rows, key=lambda r: r["n"]):
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in SUMMARY_FIELDS})
    path = Path(out) / "summary.csv"
    tmp = path.with_name(f".summary.csv.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)
    return path


class Progress:
    """One line across the cohort: done / total, failed, skipped, and the time left (on stderr)."""

    def __init__(self, total: int, stream=None) -> None:
        self.total, self.stream, self.t0 = total, stream or sys.stderr, time.perf_counter()
        self.counts = {"ok": 0, "done earlier": 0, "failed": 0, "duplicate": 0}
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, row: dict) -> None:
        self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1
        done = sum(self.counts.values())
        el = time.perf_counter() - self.t0
        ran = self.counts["ok"] + self.counts["failed"]
        left = (self.total - done) * el / ran if ran else 0.0
        width = 30
        bar = "#" * int(width * done / max(1, self.total))
        line = (f"[{bar:<{width}}] {done}/{self.total} volumes, {self.counts['failed']} failed, "
                f"{self.counts['done earlier']} done earlier, {el:.0f} s, about {left:.0f} s left")
        what = f"  {row['input']}: {row['status']}" + (f" ({row['error']})" if row.get("error") else "")
        if self.tty:
            print(f"\r{what}\n{line}", end="", file=self.stream, flush=True)
        else:
            print(f"{what}\n{line}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.stream)


def connect(scheduler: str | None, workers: int, memory_per_worker: str = DEFAULT_MEMORY_PER_WORKER):
    """A dask.distributed Client: to ``scheduler`` (failing within CONNECT_TIMEOUT_S with a clear message), or
    to a new LocalCluster of ``workers`` processes x 1 thread. Each retried task may fail once more."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    dask.config.set({"distributed.scheduler.allowed-failures": 1})
    if scheduler:
        try:
            return Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
        except (OSError, TimeoutError) as e:
            raise ConnectionError(f"no Dask scheduler answered at {scheduler} within {CONNECT_TIMEOUT_S} s ({e}); "
                                  "start one with `dask scheduler` and `dask worker ADDRESS`, or leave out "
                                  "--scheduler to run on this machine") from None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=memory_per_worker,
                           dashboard_address=None, silence_logs=logging.ERROR)
    return Client(cluster)


def run_cohort(inputs: Sequence[Path], out: Path, settings: Settings, *, workers: int = 0,
               scheduler: str | None = None, force: bool = False,
               on_row: Callable[[dict], None] | None = None, client=None) -> list[dict]:
    """Every input through :func:`process`; returns the rows (also in ``OUT/summary.csv``, rewritten after
    each one so a crash of this process keeps what finished).

    workers=0 and no scheduler: in this process (no Dask). ``client``: an existing Client to use (tests).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _sweep_unfinished(out)
    rows: list[dict] = []
    todo: list[tuple[int, Path]] = []
    seen: dict[str, int] = {}
    for n, p in enumerate(inputs, 1):
        key = os.path.realpath(p)
        if key in seen:
            rows.append(_row(n, p, "duplicate", f"the same file as input {seen[key]}"))
        else:
            seen[key] = n
            todo.append((n, p))

    def done(row: dict) -> None:
        rows.append(row)
        write_summary(out, rows)
        if on_row is not None:
            on_row(row)

    for r in list(rows):
        if on_row is not None:
            on_row(r)
    if not todo:
        write_summary(out, rows)
        return sorted(rows, key=lambda r: r["n"])
    if client is None and not scheduler and workers <= 0:
        run = uuid.uuid4().hex[:8]
        for n, p in todo:
            try:
                done(process(n, str(p), str(out), settings, force, run))
            except Exception as e:  # noqa: BLE001 - listed, the rest go on
                done(_row(n, p, "failed", f"{type(e).__name__}: {e}"[:300]))
        return sorted(rows, key=lambda r: r["n"])
    from distributed import as_completed

    own = client is None
    client = client or connect(scheduler, workers)
    try:
        run = uuid.uuid4().hex[:8]
        futures = {client.submit(process, n, str(p), str(out), settings, force, run, key=f"volume-{n:04d}-{run}",
                                 retries=1, pure=False): (n, p) for n, p in todo}
        for fut in as_completed(futures):
            n, p = futures[fut]
            try:
                row = fut.result()
            except Exception as e:  # noqa: BLE001 - a worker lost twice, or an error twice: listed
                row = _row(n, p, "failed", f"failed twice ({type(e).__name__}: {' '.join(str(e).split())[:240]})")
            done(row)
    finally:
        if own:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()
    _sweep_unfinished(out)  # a worker killed mid-write left its temporary folder; the retry wrote the real one
    return sorted(rows, key=lambda r: r["n"])


def _sweep_unfinished(out: Path) -> None:
    """Remove temporary output folders (never renamed, so never used): a killed run's or a killed worker's."""
    for stale in out.glob(".*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
