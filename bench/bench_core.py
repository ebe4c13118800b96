"""Core latencies: every preprocessing step, the default pipeline, one K-Means, the K sweep.

    python -m bench.bench_core [--repeats N] [--sweep-repeats N] [--sizes 256,512] [--json out.json]

Input: a synthetic FLAIR-like phantom drawn at run time by ``bt_demo.sim.phantom``
(random numbers only, never real data), at each size. Each item runs once to
warm up, then ``--repeats`` times (``--sweep-repeats`` for the K sweep, and a
quarter of ``--repeats`` for the slow snakes / NL-means variants); the table
gives the median and 95th percentile in milliseconds. The JSON (default
``bench/results/core.json``) adds the machine: CPU count, platform, Python and
library versions.
"""

from __future__ import annotations

import argparse
import warnings

import cv2

from bench.common import markdown, time_it, write


def _items(pp, cl, img):
    """(label, callable) pairs for one image."""
    items = []
    for name, step in pp.STEPS.items():
        prm = pp.validate_params(name, {})
        items.append((f"step {name}", lambda f=step.fn, p=prm: f(img, **p)))
        if name == "skull_strip":
            prm = pp.validate_params(name, {"method": "snakes"})
            items.append(("step skull_strip (snakes)", lambda f=step.fn, p=prm: f(img, **p)))
        if name == "denoise":
            for method in ("gaussian", "bilateral", "nlmeans"):
                prm = pp.validate_params(name, {"method": method})
                items.append((f"step denoise ({method})", lambda f=step.fn, p=prm: f(img, **p)))
    items.append(("default pipeline", lambda: pp.run_pipeline(img)))
    proc = pp.run_pipeline(img)
    items.append(("kmeans_segment (k=4)", lambda: cl.kmeans_segment(proc.image, 4, mask=proc.brain_mask)))
    items.append(("k_sweep (K=2..12)", lambda: cl.k_sweep(proc.image, range(2, 13), mask=proc.brain_mask)))
    return items


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20, help="timed runs per item (default 20)")
    p.add_argument("--sweep-repeats", type=int, default=5, help="timed runs of the K sweep (default 5)")
    p.add_argument("--sizes", default="256,512", help="comma-separated square sizes (default 256,512)")
    p.add_argument("--json", default=None, help="output JSON path (default bench/results/core.json)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.sweep_repeats < 1:
        p.error("--repeats and --sweep-repeats must be at least 1")
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        p.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 32:
        p.error("--sizes must list sizes of at least 32 px")

    from bt_demo.image import preprocess as pp
    from bt_demo.sim.phantom import flair_phantom
    from bt_demo.studies import clustering as cl

    warnings.simplefilter("ignore")
    rows = []
    for size in sizes:
        img, _ = flair_phantom((size, size), seed=0)
        for label, fn in _items(pp, cl, img):
            if label.startswith("k_sweep"):
                reps = args.sweep_repeats
            elif "snakes" in label or "nlmeans" in label:
                reps = max(3, args.repeats // 4)
            else:
                reps = args.repeats
            rows.append({"item": label, "size": f"{size}x{size}", **time_it(fn, reps)})
            print(f"  {label:<28} {size:>5}  median {rows[-1]['median_ms']:8.2f} ms", flush=True)
    print()
    print(markdown(rows, ["item", "size", "median_ms", "p95_ms", "repeats"]))
    out = write("core", rows, {"opencv_threads": cv2.getNumThreads(), "input": "bt_demo.sim.phantom.flair_phantom(seed=0)"},
                args.json)
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
