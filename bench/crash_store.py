"""Does the correction store survive SIGKILL at random moments?

    python -m bench.crash_store [--kills 300] [--seed 0] [--max-delay 0.25] [--root DIR] [--json out.json]

Each round forks a writer process that opens a :class:`~bt_demo.io.corrections.CorrectionStore`
and saves small random records in a loop, reporting each id once ``save``
has returned; after a random delay (0..``max_delay`` s from the writer's
"ready") the writer is killed with SIGKILL. After all rounds the store is
opened again and every record is verified.

Printed JSON (``crash_test``'s result):

* ``written``: saves that returned before their writer was killed;
* ``folders``: entries visible at the store's top level (excluding ``.tmp``);
* ``readable``: records that load and pass SHA-256 verification;
* ``partial``: ``folders - readable`` (visible but incomplete or damaged; must be 0);
* ``lost``: reported ids that are not readable (must be 0);
* ``interrupted_saves``: rounds whose kill left a half-written record in
  ``.tmp`` (evidence that kills did land inside ``save``);
* ``tmp_left_after_reopen``: ``.tmp`` entries left once the store was reopened (must be 0).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import select
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bt_demo.io.corrections import CorrectionStore

KILLS = 30
"""Kills the unit test runs; ``--kills`` sets how many this script runs."""


def _writer(root: str, seed: int, fd: int) -> None:
    """Child process: save records forever, writing each committed id (one line) to ``fd``."""
    store = CorrectionStore(root)
    os.write(fd, b"ready\n")
    rng = np.random.default_rng(seed)
    i = 0
    while True:
        h, w = (int(v) for v in rng.integers(16, 96, size=2))
        img = rng.random((h, w), dtype=np.float32)
        mask = img > 0.7
        rid = store.save(image=img, corrected_mask=mask, model_mask=(img > 0.6) if i % 2 else None,
                         prompts={"points": [[int(w // 2), int(h // 2)]], "labels": [1]},
                         settings={"round": i}, spacing=(0.9, 0.9), engine="crash-test")
        os.write(fd, (rid + "\n").encode())  # < PIPE_BUF: one write, never half a line
        i += 1


def _read_until(fd: int, token: bytes, timeout: float) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while token not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"writer did not report {token!r} within {timeout} s")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("writer exited before it was ready")
            buf += chunk
    return buf


def _drain(fd: int) -> bytes:
    buf = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return buf
        buf += chunk


def crash_test(root: str | Path, kills: int, seed: int, max_delay: float = 0.25) -> dict:
    """SIGKILL a saving writer ``kills`` times, then reopen ``root`` and count.

    Args:
        root: the store folder (created when missing; may already hold records).
        kills: rounds, 1 to 100,000.
        seed: seeds the kill delays and the writers' records.
        max_delay: longest wait (s) between a writer's "ready" and its kill, 0 to 10.

    Returns a JSON-safe dict (see the module docstring).
    """
    if isinstance(kills, bool) or not isinstance(kills, int) or not 1 <= kills <= 100_000:
        raise ValueError(f"kills must be a whole number from 1 to 100,000, got {kills!r}")
    if not 0 <= max_delay <= 10:
        raise ValueError(f"max_delay must be from 0 to 10 seconds, got {max_delay!r}")
    root = Path(root)
    CorrectionStore(root)  # create it
    with tempfile.TemporaryDirectory() as warm:  # import what save() imports lazily, before forking
        CorrectionStore(warm).save(image=np.zeros((16, 16), np.float32), corrected_mask=np.zeros((16, 16), bool))
    ctx = mp.get_context("fork")  # the parent's imports are reused: a round costs milliseconds, not a Python start
    rng = random.Random(seed)
    reported: list[str] = []
    interrupted = 0
    t0 = time.monotonic()
    for k in range(kills):
        r, w = os.pipe()
        try:
            p = ctx.Process(target=_writer, args=(str(root), seed * 1_000_003 + k, w), daemon=True)
            p.start()
            os.close(w)
            w = -1
            buf = _read_until(r, b"ready\n", timeout=60.0)
            time.sleep(rng.uniform(0.0, max_delay))
            os.kill(p.pid, signal.SIGKILL)
            p.join()  # reap it, so its pid reads as dead when the store cleans .tmp
            buf += _drain(r)
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        reported += [line for line in buf.decode().split("\n")[1:] if line]
        interrupted += int(any((root / ".tmp").iterdir()))
    store = CorrectionStore(root)  # reopening cleans the dead writers' .tmp entries
    checked = store.check()
    folders = [e for e in os.listdir(root) if e != ".tmp"]
    readable = set(checked["readable"])
    return {
        "kills": kills,
        "seed": seed,
        "max_delay_s": max_delay,
        "written": len(reported),
        "folders": len(folders),
        "readable": len(readable),
        "partial": len(folders) - len(readable),
        "corrupt": len(checked["corrupt"]),
        "lost": len([rid for rid in reported if rid not in readable]),
        "interrupted_saves": interrupted,
        "tmp_left_after_reopen": len(os.listdir(root / ".tmp")),
        "seconds": round(time.monotonic() - t0, 2),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.crash_store", description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-delay", type=float, default=0.25, help="seconds (default 0.25)")
    p.add_argument("--root", default=None, help="store folder (default: a fresh temporary folder, removed after)")
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="crash_store_") as tmp:
        result = crash_test(args.root or tmp, args.kills, args.seed, args.max_delay)
    result["machine"] = {"python": sys.version.split()[0], "platform": platform.platform(),
                         "cpus": os.cpu_count()}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if result["partial"] == 0 and result["lost"] == 0 and result["tmp_left_after_reopen"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
