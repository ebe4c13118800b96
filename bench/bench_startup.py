"""Cold start: `python app.py` to the first served page, median over a few runs.

python -m bench.bench_startup [--runs 3] [--weights-dir weights] [--json out.json]

Each run starts a fresh process on a free port and polls http://127.0.0.1:PORT/
until it answers 200; the process is then stopped. Two configurations: the
default flags as a user starts the app (SAM's hub id, tried once; on this
offline machine it is unavailable), and ``--sam-model none``. The
environment is the user's: no analytics or offline variables are set here.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import write

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(weights_dir: str | None, timeout: float = 120.0, sam_none: bool = True) -> float:
    port = free_port()
    cmd = [sys.executable, str(REPO / "app.py"), "--port", str(port), "--annotations-dir", tempfile.mkdtemp()]
    if sam_none:
        cmd += ["--sam-model", "none"]
    if weights_dir:
        cmd += ["--weights-dir", weights_dir]
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items()
           if k not in ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_OFFLINE", "BT_SAM_MODEL")}  # as a user starts it
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=env)
    try:
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with code {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"no page after {timeout} s")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = []
    for label, sam_none in (("default flags (offline)", False), ("--sam-model none", True)):
        times = [one_run(args.weights_dir, sam_none=sam_none) for _ in range(args.runs)]
        rows.append({"item": f"cold start to first page, {label}", "median_s": round(statistics.median(times), 2),
                     "max_s": round(max(times), 2), "runs": args.runs})
        print(rows[-1])
    print(f"written {write('startup', rows, path=args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
