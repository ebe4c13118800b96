"""The bad-input corpus through the app's upload handler: how many cases behave as they must, and how fast.

    python -m bench.bench_corpus [--weights-dir weights] [--json out.json]

Every file of :mod:`bench.bad_inputs` (generated, never copied) is uploaded
into a session that already shows a good phantom. A file expected to fail
must give exactly one short message free of Python names and leave the
session as it was; a file expected to load must become the slice; and the
next good upload must work in every case. Prints one line per case and the
totals, writes ``bench/results/corpus.json``. The pytest version of the same
check is ``tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import write

_PYTHON_NAMES = re.compile(r"Traceback|\b\w*(Error|Exception)\b|File \"|line \d+, in|\bNone\b|<class |object at")


def _phantom_png(folder: Path, seed: int) -> Path:
    from bt_demo.sim.phantom import flair_phantom

    img, _ = flair_phantom((96, 96), seed=seed)
    p = folder / f"good_{seed}.png"
    Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(p)
    return p


def run_corpus(engines, folder: Path) -> list[dict]:
    from bench.bad_inputs import make_corpus
    from bt_demo.ui.panels import upload as UP
    from bt_demo.ui.state import Session

    good = _phantom_png(folder, 1)
    rows = []
    for case in make_corpus(folder / "corpus"):
        s, _ = UP.load_file(Session(), engines, str(good))
        before = s.slice
        t0 = time.perf_counter()
        try:
            s, view = UP.load_file(s, engines, str(case.path))
            crashed = None
        except Exception as e:  # noqa: BLE001 - a bench records what a test would fail on
            crashed, view = type(e).__name__, {}
        ms = (time.perf_counter() - t0) * 1000
        msgs = view.get("_messages", [])
        if crashed:
            ok, got = False, f"exception {crashed} escaped the handler"
        elif case.expected == "error":
            clean = len(msgs) == 1 and "\n" not in msgs[0].strip() and not _PYTHON_NAMES.search(msgs[0])
            ok, got = clean and s.slice is before, msgs[0] if msgs else "accepted"
        else:
            ok, got = not msgs and s.slice is not before, "loaded" if not msgs else msgs[0]
        s, view2 = UP.load_file(s, engines, str(good))
        recovered = not view2.get("_messages")
        rows.append({"case": case.name, "expected": case.expected, "passed": bool(ok and recovered),
                     "next_good_upload_ok": recovered, "ms": round(ms, 1), "message": got})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights-dir", default=None, help="models for the automatic panels (default: none, faster)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from bt_demo.models.registry import Engines

    with tempfile.TemporaryDirectory(prefix="bt_corpus_") as tmp:
        engines = Engines(weights_dir=args.weights_dir or str(Path(tmp) / "no_weights"), sam_model="none", device="cpu")
        rows = run_corpus(engines, Path(tmp))
    for r in rows:
        print(f"{'PASS' if r['passed'] else 'FAIL'}  {r['expected']:5s} {r['case']:26s} {r['ms']:8.1f} ms  {r['message'][:90]}")
    n_ok = sum(r["passed"] for r in rows)
    print(f"\n{n_ok}/{len(rows)} corpus cases behaved as required")
    out = write("corpus", rows, {"passed": n_ok, "total": len(rows)}, args.json)
    print(f"written {out}")
    return 0 if n_ok == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
