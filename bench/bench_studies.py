"""Latencies of the study tools: histogram view, classical segmenters, measurement, TTA uncertainty.

    python -m bench.bench_studies [--repeats N] [--sizes 256,512] [--json out.json]

Input: a synthetic FLAIR-like phantom drawn at run time by ``bt_demo.sim.phantom``
(random numbers only, never real data), at each size; one positive click at
the lesion's centroid for the click runs. The uncertainty map uses a randomly
initialised U-Net of the shipped architecture (``SegNet()`` defaults, saved
and loaded through the app's loading code), 8 augmentations. Each item runs
once to warm up, then ``--repeats`` times; the table gives the median and 95th
percentile in milliseconds, and the Dice of each segmenter against the
phantom's lesion. JSON: ``bench/results/studies.json`` by default.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings

import numpy as np

from bench.common import markdown, time_it, write


def _dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return round(float(2.0 * (a & b).sum() / max(1, a.sum() + b.sum())), 3)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=10, help="timed runs per item (default 10)")
    p.add_argument("--sizes", default="256,512", help="comma-separated square sizes (default 256,512)")
    p.add_argument("--json", default=None, help="output JSON path (default bench/results/studies.json)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    from bt_demo.image import intensity
    from bt_demo.image.preprocess import estimate_brain_mask, run_pipeline
    from bt_demo.models.nets import SegNet
    from bt_demo.models.unet import UNetEngine
    from bt_demo.sim.phantom import flair_phantom
    from bt_demo.studies import classical_seg as cs
    from bt_demo.studies import measure as ms
    from bt_demo.studies import uncertainty as un
    from bt_demo.studies.clustering import kmeans_segment

    warnings.simplefilter("ignore", RuntimeWarning)
    with tempfile.TemporaryDirectory() as tmp:
        SegNet().save_pretrained(tmp)
        engine = UNetEngine.load(tmp)
        if isinstance(engine, str):
            raise SystemExit(engine)
        rows = []
        for size in sizes:
            img, lesion = flair_phantom((size, size), seed=0)
            ys, xs = np.nonzero(lesion)
            click = [(float(xs.mean()), float(ys.mean()))]
            brain = estimate_brain_mask(img)
            after = run_pipeline(img).image
            km = kmeans_segment(img, 4, mask=brain)
            items = [("histogram + CDF figure (before/after)",
                      lambda img=img, after=after, brain=brain, km=km: intensity.intensity_figure(
                          img, after if after.shape == img.shape else None,
                          brain_mask=brain, kmeans_centers=km.centers, window=(0.5, 0.6)), None)]
            for name in cs.CLASSICAL:
                for label, pts in (("1 click", click), ("no click", [])):
                    fn = (lambda n=name, q=pts, img=img: cs.run_classical(n, img, points=q, labels=[1] * len(q)))
                    items.append((f"{name} ({label})", fn, fn))
            items.append(("measure (lesion, spacing 0.5 mm)",
                          lambda lesion=lesion, brain=brain: ms.measure(lesion, spacing=(0.5, 0.5), brain_mask=brain),
                          None))
            items.append(("TTA uncertainty (random U-Net, n=8)", lambda img=img: un.tta_uncertainty(engine, img, n=8), None))
            for label, fn, seg in items:
                row = {"size": size, "item": label, **time_it(fn, args.repeats)}
                if seg is not None:
                    row["dice_vs_lesion"] = _dice(seg().mask, lesion)
                rows.append(row)
                print(f"{size}  {label:45s} {row['median_ms']:9.1f} ms  p95 {row['p95_ms']:9.1f}"
                      + (f"  Dice {row['dice_vs_lesion']}" if "dice_vs_lesion" in row else ""), flush=True)
    print()
    print(markdown(rows, ["size", "item", "median_ms", "p95_ms", "dice_vs_lesion"]))
    out = write("studies", rows, {"repeats": args.repeats, "input": "bt_demo.sim.phantom.flair_phantom seed 0"},
                args.json)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
