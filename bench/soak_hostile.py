"""The real server under a long session (soak) and under hostile files (hostile), through Gradio's own client.

    python -m bench.soak_hostile soak --cycles 300            # upload -> click -> export, one session
    python -m bench.soak_hostile hostile                      # the hostile corpus while a victim clicks

Both start ``app.py`` (tiny random weights unless ``--weights-dir``; SAM off) with its scratch folder in a
temporary directory, and watch the server process from outside: its resident memory (``/proc/PID/status``)
and the bytes and files under its scratch folder (its Gradio cache, the sessions' private folders).

soak: one session repeats upload (a rotation of 5 phantoms) -> positive click -> export. Targets: resident
memory and cache flat, at most 10 % growth from cycle 25 to the end.

hostile: a victim session clicks on its phantom all the time while another session sends, one by one, the
files of the issue's items 2, 3 and 9 (from :mod:`bench.bad_inputs`, plus a volume of the largest accepted
size); after a file that loads, that session also clicks and exports. Targets: no request over 10 s, the
server's memory at most +1.5 GB over its level before the attack, the victim's clicks at most 2 s.
Then the volume path (issue 26; ``--no-volumes`` skips it): the files of :mod:`bench.hostile_volumes` one by
one through the Volume tab, then three sessions sending the worst three at once, each phase with its own
victim and memory watch; then the batch command ``python -m bt_demo.volume`` on all of them (its wall time
and peak memory). Same targets: no request over 10 s, at most +1.5 GB, the victim's click p95 at most 2 s.

Writes ``bench/results/soak.json`` / ``bench/results/hostile.json`` with :func:`bench.common.write`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.load_test import CYCLE, REPO, SessionDriver, find_endpoints, make_phantom, running_app

# the bad-input corpus cases of the items 2 (one small file holds the server), 3 (memory) and 9 (crashes)
HOSTILE = ("strip.png", "long_strip.png", "big_4096.png", "bomb.png", "tiny.dcm", "bomb.nii.gz", "too_big.nii.gz",
           "constant16.png", "zeros.nii", "spacing250.nii", "pixdim0.nii", "jpegls_garbage.dcm", "nan.nii",
           "afni_ext.nii")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def disk(folder: Path) -> tuple[int, int]:
    """(bytes, files) under ``folder``."""
    n = b = 0
    for p in Path(folder).rglob("*"):
        try:
            if p.is_file():
                n += 1
                b += p.stat().st_size
        except OSError:
            pass
    return b, n


def _api(config: dict, name: str) -> int:
    for d in config["dependencies"]:
        if d.get("api_name") == name:
            return d["id"]
    raise LookupError(f"no event with api_name {name!r}")


def _pct(v: list[float], q: float) -> float | None:
    if not v:
        return None
    s = sorted(v)
    return round(s[min(len(s) - 1, int(round(q * (len(s) - 1))))], 1)


def _growth(series: list[float], start: int) -> float | None:
    if len(series) <= start or not series[start]:
        return None
    return round(series[-1] / series[start] - 1, 4)


def soak(url: str, info: dict, cycles: int, side: int) -> dict:
    from gradio_client import Client

    probe = Client(url, verbose=False)
    ep, export_id = find_endpoints(probe.config), _api(probe.config, "export")
    probe.close()
    folder = Path(tempfile.mkdtemp(prefix="bt_soak_"))
    phantoms = [make_phantom(folder, 300 + i, side) for i in range(5)]
    drivers = [SessionDriver(url, ep, path, pts, side) for path, _m, pts in phantoms[:1]]
    d = drivers[0]
    rss, cache, files, times = [], [], [], []
    for i in range(cycles):
        path, _m, pts = phantoms[i % len(phantoms)]
        d.image = path
        t0 = time.perf_counter()
        d.upload()
        d.click(0)
        d._call(export_id, "prompted")
        times.append((time.perf_counter() - t0) * 1000)
        b, n = disk(info["scratch"])
        rss.append(round(rss_mb(info["pid"]), 1))
        cache.append(b)
        files.append(n)
    kinds = _kinds(Path(info["scratch"]))
    d.close()
    k = min(25, cycles - 1)
    return {"mode": "soak", "cycles": cycles, "side": side,
            "rss_mb": {"cycle_1": rss[0], f"cycle_{k + 1}": rss[k], "last": rss[-1], "max": max(rss),
                       "growth_after_25": _growth(rss, k)},
            "scratch_bytes": {"cycle_1": cache[0], f"cycle_{k + 1}": cache[k], "last": cache[-1],
                              "growth_after_25": _growth(cache, k)},
            "scratch_files": {"cycle_1": files[0], f"cycle_{k + 1}": files[k], "last": files[-1],
                              "growth_after_25": _growth(files, k)},
            "cycle_ms": {"p50": round(statistics.median(times), 1), "p95": _pct(times, 0.95)},
            "rss_series_every_25": rss[::25], "files_series_every_25": files[::25],
            "files_by_kind_at_end": kinds}


def _kinds(folder: Path) -> dict[str, int]:
    """What the scratch folder holds, by file name with ids and hashes blanked (which kind of file piles up)."""
    import re
    from collections import Counter

    c = Counter()
    for p in folder.rglob("*"):
        if p.is_file():
            rel = p.relative_to(folder).parts
            where = "gradio cache" if "gradio" in rel[:2] else "session folders"
            where += f" (depth {len(rel)})"
            name = re.sub(r"[0-9a-f]{6,}|\d+", "*", p.name)
            c[f"{where}: {name}"] += 1
    return dict(c.most_common())


def _max_volume(folder: Path) -> Path:
    """A NIfTI .gz of the largest accepted volume (512 x 512 x 256 int16), mostly background: a small file."""
    from bench.bad_inputs import nifti_bytes

    vol = np.zeros((512, 512, 256), np.int16)
    vol[128:384, 128:384, 64:192] = 400
    path = folder / "max_volume.nii.gz"
    path.write_bytes(gzip.compress(nifti_bytes(vol), compresslevel=1))
    return path


class _Victim:
    """A victim session clicking on its phantom all the time, and the server's memory watched from outside
    (every 0.1 s), for the ``with`` block."""

    def __init__(self, url, ep, path, pts, side, pid) -> None:
        self.driver = SessionDriver(url, ep, path, pts, side)
        self.driver.upload()
        self.pid = pid
        self.stop = threading.Event()
        self.ms: list[float] = []
        self.errors: list[str] = []

    def __enter__(self) -> "_Victim":
        time.sleep(1.0)
        self.base = rss_mb(self.pid)
        self.peak = [self.base]
        self.threads = [threading.Thread(target=self._watch, daemon=True),
                        threading.Thread(target=self._click, daemon=True)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        self.driver.close()

    def _watch(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak.append(rss_mb(self.pid))
            except OSError:  # the server died: the summary shows it
                self.peak.append(float("nan"))
                return
            time.sleep(0.1)

    def _click(self) -> None:
        k = 0
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                self.driver.click(k % CYCLE)
                self.ms.append((time.perf_counter() - t0) * 1000)
            except Exception as exc:  # noqa: BLE001 - reported
                self.errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")
            k += 1
            if k % CYCLE == 0:
                self.driver.clear()

    def summary(self) -> dict:
        alive = Path(f"/proc/{self.pid}").exists()
        return {"server_alive": alive, "rss_mb_before": round(self.base, 1), "rss_mb_peak": round(max(self.peak), 1),
                "rss_mb_rise": round(max(self.peak) - self.base, 1),
                "victim_clicks": len(self.ms), "victim_click_p50_ms": _pct(self.ms, 0.5),
                "victim_click_p95_ms": _pct(self.ms, 0.95), "victim_click_max_ms": _pct(self.ms, 1.0),
                "victim_errors": self.errors[:5]}


def _attack_slices(attacker, ep, export_id, files, info) -> list[dict]:
    from gradio_client import handle_file

    rows = []
    for name, p, expected in files:
        row = {"file": name, "expected": expected, "bytes": p.stat().st_size}
        t0 = time.perf_counter()
        try:
            attacker._call(ep.upload, handle_file(str(p)))
            attacker._call(ep.prepare)
            row["upload_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        except Exception as exc:  # noqa: BLE001 - a refusal is an answer too; recorded
            row["upload_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            row["error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
        if expected == "ok":
            for what, call in (("click", lambda: attacker._call(ep.click, "positive", event_data={
                    "index": [8, 8], "value": None, "selected": True})),
                               ("export", lambda: attacker._call(export_id, "prompted"))):
                t1 = time.perf_counter()
                try:
                    call()
                except Exception as exc:  # noqa: BLE001
                    row[f"{what}_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
                row[f"{what}_ms"] = round((time.perf_counter() - t1) * 1000, 1)
        row["rss_mb_after"] = round(rss_mb(info["pid"]), 1)
        rows.append(row)
    return rows


def _send_volume(url, ep, path, pts, side, seg_id: int, file: Path) -> dict:
    """One attacker session sends ``file`` to the Volume tab (Segment volume); the answer's text and time."""
    from gradio_client import handle_file

    d = SessionDriver(url, ep, path, pts, side)
    row = {"file": file.name, "bytes": file.stat().st_size}
    t0 = time.perf_counter()
    try:
        out = d._call(seg_id, [handle_file(str(file))], 0)
        info = next((v for v in (out if isinstance(out, (list, tuple)) else [out])
                     if isinstance(v, str) and ("slices" in v or "volume" in v.lower())), "")
        row["answer"] = " ".join(str(info).split())[:160] or f"no volume shown: {' '.join(str(out).split())[:160]}"
    except Exception as exc:  # noqa: BLE001 - a refusal raised as gr.Error is an answer too
        row["answer"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    row["ms"] = round((time.perf_counter() - t0) * 1000, 1)
    if row["answer"].startswith("no volume shown"):
        row["answer"] = "refused (the reason is shown to the user as a warning)" + row["answer"][15:]
    d.close()
    return row


def hostile_volumes(url: str, info: dict, side: int, folder: Path, weights_dir: Path | None, rounds: int = 4) -> dict:
    """The volume path under the issue-26 corpus (bench/hostile_volumes.py) while a victim clicks: each file
    through the Volume tab, then three sessions sending the worst shapes at once, then the batch command on
    all of them (its own process: wall time and peak memory)."""
    import concurrent.futures as cf
    import subprocess

    from gradio_client import Client

    from bench.hostile_volumes import make_cases

    cases = make_cases(folder / "volumes")
    probe = Client(url, verbose=False)
    ep, seg_id = find_endpoints(probe.config), _api(probe.config, "segment_volume")
    probe.close()
    path, _m, pts = make_phantom(folder, 901, side)
    out: dict = {}
    with _Victim(url, ep, path, pts, side, info["pid"]) as watch:
        out["one_by_one"] = [_send_volume(url, ep, path, pts, side, seg_id, c.path) for c in cases]
    out["one_by_one_server"] = watch.summary()
    worst = [c.path for c in cases if c.name in ("zip_2048.zip", "zip_of_zips_512.zip", "multiframe_lying_count.dcm")]
    out["three_at_once"] = []
    with _Victim(url, ep, path, pts, side, info["pid"]) as watch:
        for _ in range(rounds):  # several rounds: enough victim clicks for a p95
            with cf.ThreadPoolExecutor(3) as pool:
                out["three_at_once"] += list(pool.map(lambda f: _send_volume(url, ep, path, pts, side, seg_id, f),
                                                      worst))
    out["three_at_once_server"] = watch.summary()
    # the batch command in its own process (2 Dask workers), its and its workers' peak memory
    args = [*map(str, (c.path for c in cases)), "--out", str(folder / "batch"), "--workers", "2"] + (
        ["--weights-dir", str(weights_dir)] if weights_dir else [])
    # the driver's own peak is VmHWM (ru_maxrss of RUSAGE_SELF keeps this bench's RSS from before the exec)
    code = ("import json, re, resource, sys; from bt_demo.volume.__main__ import main; rc = main(sys.argv[1:]); "
            "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); "
            "print(json.dumps({'rc': rc, 'self_mb': hwm / 1024, "
            "'worker_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, timeout=600)
    try:
        mem = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        mem = {}
    out["batch"] = {"seconds": round(time.perf_counter() - t0, 1), "exit": mem.get("rc", r.returncode),
                    "driver_peak_rss_mb": round(mem.get("self_mb", float("nan")), 1),
                    "largest_worker_peak_rss_mb": round(mem.get("worker_mb", float("nan")), 1),
                    "lines": [" ".join(x.split())[:200] for x in r.stderr.splitlines()
                              if "not processed" in x or "volumes," in x][-12:]}
    return out


def hostile(url: str, info: dict, side: int, volumes: bool = True, weights_dir: Path | None = None) -> dict:
    from gradio_client import Client

    from bench.bad_inputs import make_corpus

    folder = Path(tempfile.mkdtemp(prefix="bt_hostile_"))
    cases = {c.name: c for c in make_corpus(folder / "corpus")}
    files = [(n, cases[n].path, cases[n].expected) for n in HOSTILE if n in cases]
    files.append(("max_volume.nii.gz", _max_volume(folder), "ok"))
    probe = Client(url, verbose=False)
    ep, export_id = find_endpoints(probe.config), _api(probe.config, "export")
    probe.close()
    path, _m, pts = make_phantom(folder, 900, side)
    attacker = SessionDriver(url, ep, path, pts, side)
    attacker.upload()
    with _Victim(url, ep, path, pts, side, info["pid"]) as watch:
        rows = _attack_slices(attacker, ep, export_id, files, info)
    attacker.close()
    slowest = max(max(r.get(k, 0) for k in ("upload_ms", "click_ms", "export_ms")) for r in rows)
    result = {"mode": "hostile", "files": len(rows), "slowest_request_ms": slowest, **watch.summary(), "cases": rows}
    if volumes:
        result["volumes"] = hostile_volumes(url, info, side, folder, weights_dir)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak_hostile", description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["soak", "hostile"])
    ap.add_argument("--cycles", type=int, default=300, help="soak: upload -> click -> export cycles")
    ap.add_argument("--side", type=int, default=128)
    ap.add_argument("--weights-dir", help="real weights (default: tiny random weights)")
    ap.add_argument("--out", help="JSON path (default bench/results/<mode>.json)")
    ap.add_argument("--no-volumes", action="store_true", help="hostile: skip the volume path (issue 26)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from bench.common import write

    info: dict = {}
    with tempfile.TemporaryDirectory(prefix="bt_soak_app_") as tmp:
        with running_app(Path(tmp), Path(args.weights_dir) if args.weights_dir else None, info=info) as url:
            result = (soak(url, info, args.cycles, args.side) if args.mode == "soak" else
                      hostile(url, info, args.side, volumes=not args.no_volumes,
                              weights_dir=Path(args.weights_dir) if args.weights_dir else Path(tmp) / "weights"))
    result["weights"] = args.weights_dir or "tiny random (tests/tiny_models.py)"
    print(json.dumps({k: v for k, v in result.items() if k not in ("cases", "volumes")}, indent=1))
    if result.get("volumes"):
        print(json.dumps(result["volumes"], indent=1))
    for r in result.get("cases", []):
        print(r)
    print(f"wrote {write(args.mode, [result], path=args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
