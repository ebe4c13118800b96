"""Core latencies: every preprocessing step, the default pipeline, one K-Means, the K sweep.

python -m bench.bench_core [--repeats N] [--sizes 256,512] [--json out.json]

Runs on a synthetic phantom (bt_demo.phantom), never on real data.
"""

from __future__ import annotations

import argparse
import warnings

import cv2

from bench.common import markdown, time_it, write


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--sweep-repeats", type=int, default=5)
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from bt_demo import clustering, preprocess as pp
    from bt_demo.phantom import flair_phantom

    warnings.simplefilter("ignore")
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        img, _ = flair_phantom((size, size), seed=0)
        variants = [(n, {}) for n in pp.STEPS]
        variants += [("skull_strip", {"method": "snakes"})]
        variants += [("denoise", {"method": m}) for m in ("gaussian", "bilateral", "nlmeans")]
        for name, params in variants:
            prm = pp.validate_params(name, params)
            label = name + ("" if not params else f" ({', '.join(str(v) for v in params.values())})")
            reps = max(3, args.repeats // 4) if (params.get("method") in ("snakes", "nlmeans")) else args.repeats
            rows.append({"item": f"step {label}", "size": size, **time_it(lambda: pp.STEPS[name].fn(img, **prm), reps)})
        rows.append({"item": "default pipeline", "size": size, **time_it(lambda: pp.run_pipeline(img), args.repeats)})
        proc = pp.run_pipeline(img).image
        rows.append({"item": "K-Means (k=3)", "size": size, **time_it(lambda: clustering.kmeans_segment(proc, 3), args.repeats)})
        rows.append({"item": "K-Means (k=4)", "size": size, **time_it(lambda: clustering.kmeans_segment(proc, 4), args.repeats)})
        rows.append({"item": "K sweep 2..12", "size": size, **time_it(lambda: clustering.k_sweep(proc), args.sweep_repeats)})
    print(markdown(rows, ["item", "size", "median_ms", "p95_ms"]))
    out = write("core", rows, {"opencv_threads": cv2.getNumThreads()}, args.json)
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
