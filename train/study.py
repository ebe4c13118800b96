"""Run a study: many `python -m train ...` runs at one budget, a few at a time, resumable.

Each row is a subprocess with its own run folder under ``--root``; a row whose
``results.json`` exists is skipped, a row cut short (a checkpoint but no
results) is resumed. ``python -m train classifier-study`` and
``python -m train segmentation-study`` build their rows here; ``python -m
train report`` turns the results into ``docs/studies.md``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def run_rows(rows: list[tuple[str, list[str]]], root: Path, jobs: int, log=print) -> int:
    """rows: (name, argv after ``python -m train``). Runs ``jobs`` at a time, one torch thread each."""
    root.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    pending = []
    for name, argv in rows:
        rd = root / name
        if (rd / "results.json").exists():
            log(f"done already: {name}")
            continue
        extra = ["--resume"] if (rd / "last.pt").exists() else []
        if rd.exists() and not extra:
            import shutil

            shutil.rmtree(rd)  # started but no checkpoint yet: start again
        pending.append((name, [sys.executable, "-m", "train", *argv, "--run-dir", str(rd), "--threads", "1",
                               "--no-progress", *extra]))
    running: list[tuple[str, subprocess.Popen, float]] = []
    failed = 0
    while pending or running:
        while pending and len(running) < jobs:
            name, cmd = pending.pop(0)
            (root / "logs").mkdir(exist_ok=True)
            out = open(root / "logs" / f"{name}.log", "a")
            log(f"start {name}: {' '.join(cmd[1:])}")
            running.append((name, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env), time.time()))
        time.sleep(2)
        for item in list(running):
            name, proc, t0 = item
            if proc.poll() is not None:
                running.remove(item)
                log(f"{'finished' if proc.returncode == 0 else 'FAILED'} {name} in {(time.time() - t0) / 60:.1f} min")
                failed += proc.returncode != 0
    return 1 if failed else 0
