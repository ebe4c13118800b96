"""How fast is a first click and a later click with each SAM / SAM 2 architecture on this machine?

    python -m bench.bench_sam [--repeats N] [--json out.json] [--threads 2] [--candidates a b ...]

1. Image-encoder time (what ``set_image`` costs) of each candidate ARCHITECTURE,
   built from its config with random weights (nothing is downloaded; speed
   does not depend on the weight values), at 1024 x 1024: one warm-up run
   under torch's FLOP counter, then ``--repeats`` rounds that run the
   candidates in turn (fair when the CPU is shared); median, min and p95.
2. For the fastest encoder, the real engine path: the random model is saved with
   ``save_pretrained`` and loaded with ``SamEngine.load`` as the app does; then
   ``set_image`` on a 256 x 256 phantom and ``--clicks`` ``predict`` calls with
   the embedding cached (median / p95).

Prints a Markdown table and writes JSON (machine, versions, load average).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bt_demo.models import sam as S

DEFAULT_CANDIDATES = ["sam2.1-hiera-tiny", "slimsam-77", "sam2.1-hiera-small", "slimsam-50", "sam-vit-base",
                      "medsam-vit-base"]


def machine() -> dict:
    import torch
    import transformers

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu_count": os.cpu_count(), "cpus_usable": usable, "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(), "platform": platform.platform(),
            "python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.cuda.is_available(), "loadavg_start": list(os.getloadavg())}


def phantom(shape=(256, 256), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    brain = ((yy - shape[0] / 2) / (0.42 * shape[0])) ** 2 + ((xx - shape[1] / 2) / (0.36 * shape[1])) ** 2 < 1
    tumour = (yy - 0.4 * shape[0]) ** 2 + (xx - 0.6 * shape[1]) ** 2 < (0.08 * shape[0]) ** 2
    img = 0.35 * brain + 0.45 * tumour + 0.04 * rng.standard_normal(shape)
    return np.clip(img, 0, 1).astype(np.float32)


def predict_benchmark(name: str, clicks: int = 20, size: int = 1024) -> dict:
    """The engine path for candidate ``name``: save_pretrained -> SamEngine.load -> set_image -> predict x clicks."""
    import torch

    cand = S.CANDIDATES[name]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = cand.build(size)
        model.save_pretrained(tmp)
        S._FAMILIES[cand.family].default_processor(size).save_pretrained(tmp)
        del model
        engine = S.SamEngine.load(tmp, device="cpu")
        if isinstance(engine, str):
            raise RuntimeError(engine)
        t0 = time.perf_counter()
        engine.set_image(phantom(seed=1))  # the first ever call pays one-off start-up costs
        engine.predict([[150.0, 100.0]], [1])
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        engine.set_image(phantom())  # a new slice on a warm server: what a first click costs
        set_image_s = time.perf_counter() - t0
        first = engine.predict([[150.0, 100.0]], [1])
        times, prev, pts, labs = [], None, [], []
        for i in range(clicks):
            if i % 5 == 0:  # a new object: one click, three candidates
                pts, labs, prev = [], [], None
            pts.append([float(rng.uniform(20, 236)), float(rng.uniform(20, 236))])
            labs.append(int(i % 5 != 2))
            t0 = time.perf_counter()
            prev = engine.predict(pts, labs, previous=prev)
            times.append(time.perf_counter() - t0)
        assert engine.encoder_calls == 2
    ms = [t * 1000 for t in times]
    return {"name": name, "slice": [256, 256], "clicks": clicks, "cold_first_click_ms": round(cold_s * 1000, 1),
            "set_image_ms": round(set_image_s * 1000, 1),
            "first_predict_ms": round(first.seconds * 1000, 1),
            "first_click_ms": round((set_image_s + first.seconds) * 1000, 1),
            "predict_ms_median": round(statistics.median(ms), 1), "predict_ms_p95": round(float(np.percentile(ms, 95)), 1),
            "predict_ms_max": round(max(ms), 1)}


def table(rows: list[dict], pred: dict) -> str:
    lines = ["| candidate | hub id | params (M) | encoder GFLOPs | encoder ms median | min | p95 | est. first click ms |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(rows, key=lambda r: r["encoder_ms_median"]):
        first = r["encoder_ms_median"] + pred["predict_ms_median"]
        same = f" (= {r['same_as']})" if r.get("same_as") else ""
        lines.append(f"| {r['name']}{same} | {r['hub_id']} | {r['params_m']} | {r['gflops']} | "
                     f"{r['encoder_ms_median']:.0f} | {r['encoder_ms_min']:.0f} | {r['encoder_ms_p95']:.0f} | {first:.0f} |")
    lines += ["", f"`predict` with a cached embedding ({pred['name']}, 256 x 256 slice, {pred['clicks']} clicks): "
              f"median {pred['predict_ms_median']} ms, p95 {pred['predict_ms_p95']} ms; "
              f"measured set_image {pred['set_image_ms']} ms + first predict {pred['first_predict_ms']} ms "
              f"= first click {pred['first_click_ms']} ms (the very first after start-up: "
              f"{pred['cold_first_click_ms']} ms)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed encoder runs per candidate (after 1 warm-up)")
    ap.add_argument("--clicks", type=int, default=20, help="predict calls for the fastest candidate")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the target box has 2 vCPUs)")
    ap.add_argument("--size", type=int, default=1024, help="encoder input size (px)")
    ap.add_argument("--candidates", nargs="+", default=DEFAULT_CANDIDATES, choices=list(S.CANDIDATES))
    ap.add_argument("--json", type=Path, default=Path("bench/results/sam_cpu.json"), help="where to write the JSON")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    info = machine()
    rows = S.encoder_benchmark(args.candidates, size=args.size, repeats=args.repeats)
    fastest = min(rows, key=lambda r: r["encoder_ms_median"])
    pred = predict_benchmark(fastest["name"], clicks=args.clicks, size=args.size)
    info["loadavg_end"] = list(os.getloadavg())
    out = {"bench": "bench.bench_sam", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": info, "repeats": args.repeats, "size": args.size, "encoder": rows, "predict": pred,
           "fastest": fastest["name"], "fastest_hub_id": fastest["hub_id"],
           "default_cpu": S.DEFAULT_SAM_ID, "default_gpu": S.DEFAULT_SAM_ID_GPU,
           "wall_s": round(time.perf_counter() - t_start, 1),
           "note": "random weights of each architecture; speed does not depend on weight values"}
    md = table(rows, pred)
    print(md)
    print(f"\nmachine: {info['cpus_usable']} CPUs usable, torch {info['torch']} with {info['torch_threads']} threads, "
          f"load average {info['loadavg_start'][0]:.1f} -> {info['loadavg_end'][0]:.1f}; wall {out['wall_s']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
