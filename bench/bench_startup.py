"""Cold start: `python app.py` to the first served page, median over a few runs.

python -m bench.bench_startup [--runs 3] [--weights-dir weights] [--json out.json]

Each run starts a fresh process on a free port and polls http://127.0.0.1:PORT/
until it answers 200; the process is then stopped. SAM is disabled (offline
machines cannot download it), so the time is Python + Gradio + our engines'
background loading start.
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


def one_run(weights_dir: str | None, timeout: float = 120.0) -> float:
    port = free_port()
    cmd = [sys.executable, str(REPO / "app.py"), "--port", str(port), "--sam-model", "none",
           "--annotations-dir", tempfile.mkdtemp()]
    if weights_dir:
        cmd += ["--weights-dir", weights_dir]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                            env=os.environ | {"GRADIO_ANALYTICS_ENABLED": "False"})
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
    times = [one_run(args.weights_dir) for _ in range(args.runs)]
    row = {"item": "cold start to first page", "median_s": round(statistics.median(times), 2),
           "max_s": round(max(times), 2), "runs": args.runs}
    print(row)
    print(f"written {write('startup', [row], path=args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
