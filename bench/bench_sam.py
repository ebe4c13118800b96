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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bt_demo.models import sam as S

DEFAULT_CANDIDATES = ["sam2.1-hiera-tiny", "slimsam-77", "sam2.1-hiera-small", "slimsam-50", "sam-vit-base",
                      "medsam-vit-base"]


# ---------------------------------------------------------------------------
# candidate architectures (random weights, no download)
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A published checkpoint's architecture, built from its config alone."""

    hub_id: str
    family: str
    vision: dict = field(default_factory=dict)  # SamVisionConfig / Sam2HieraDetConfig overrides
    channels: tuple[int, ...] | None = None  # SAM 2: backbone_channel_list (deepest first)
    source: str = ""
    same_as: str | None = None  # identical architecture to another candidate

    def config(self, size: int = 1024):
        """The transformers config of this architecture at input ``size`` (px, square)."""
        import transformers

        if self.family == "sam":
            vision = {"image_size": size, **self.vision}
            return transformers.SamConfig(vision_config=vision,
                                          prompt_encoder_config={"image_size": size})
        backbone = {"model_type": "sam2_hiera_det_model", "image_size": [size, size], **self.vision}
        vision = {"backbone_config": backbone,
                  "backbone_feature_sizes": [[size // 4] * 2, [size // 8] * 2, [size // 16] * 2]}
        if self.channels:
            vision["backbone_channel_list"] = list(self.channels)
        return transformers.Sam2Config(vision_config=vision, prompt_encoder_config={"image_size": size})

    def build(self, size: int = 1024):
        return S.model_class(self.family)(self.config(size)).eval()


_CONVERT = "transformers' convert_sam_to_hf.py get_config"
_CONVERT2 = "transformers' convert_sam2_to_hf.py get_config"
CANDIDATES: dict[str, Candidate] = {
    "sam-vit-base": Candidate("facebook/sam-vit-base", "sam", {}, source="SamConfig() defaults (ViT-B)"),
    "medsam-vit-base": Candidate("flaviagiammarino/medsam-vit-base", "sam", {}, same_as="sam-vit-base",
                                 source="MedSAM is SAM ViT-B fine-tuned on medical images"),
    "slimsam-50": Candidate("nielsr/slimsam-50-uniform", "sam",
                            {"hidden_size": 384, "mlp_dim": 1536, "num_attention_heads": 12}, source=_CONVERT),
    "slimsam-77": Candidate("nielsr/slimsam-77-uniform", "sam",
                            {"hidden_size": 168, "mlp_dim": 696, "num_attention_heads": 12}, source=_CONVERT),
    "sam-vit-large": Candidate("facebook/sam-vit-large", "sam",
                               {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                                "global_attn_indexes": [5, 11, 17, 23]}, source=_CONVERT),
    "sam-vit-huge": Candidate("facebook/sam-vit-huge", "sam",
                              {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16,
                               "global_attn_indexes": [7, 15, 23, 31]}, source=_CONVERT),
    "sam2.1-hiera-tiny": Candidate("facebook/sam2.1-hiera-tiny", "sam2", {},
                                   source="Sam2HieraDetConfig() defaults (Hiera-T: 96, [1,2,7,2], global [5,7,9])"),
    "sam2.1-hiera-small": Candidate("facebook/sam2.1-hiera-small", "sam2",
                                    {"blocks_per_stage": [1, 2, 11, 2], "global_attention_blocks": [7, 10, 13]},
                                    source=_CONVERT2),
    "sam2.1-hiera-base-plus": Candidate(
        "facebook/sam2.1-hiera-base-plus", "sam2",
        {"hidden_size": 112, "embed_dim_per_stage": [112, 224, 448, 896], "num_attention_heads_per_stage": [2, 4, 8, 16],
         "blocks_per_stage": [2, 3, 16, 3], "global_attention_blocks": [12, 16, 20],
         "window_positional_embedding_background_size": [14, 14]},
        channels=(896, 448, 224, 112), source=_CONVERT2),
    "sam2.1-hiera-large": Candidate(
        "facebook/sam2.1-hiera-large", "sam2",
        {"hidden_size": 144, "embed_dim_per_stage": [144, 288, 576, 1152], "num_attention_heads_per_stage": [2, 4, 8, 16],
         "blocks_per_stage": [2, 6, 36, 4], "global_attention_blocks": [23, 33, 43],
         "window_size_per_stage": [8, 4, 16, 8], "window_positional_embedding_background_size": [7, 7]},
        channels=(1152, 576, 288, 144), source=_CONVERT2),
}


def _percentile(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def encoder_benchmark(config_names: list[str], size: int = 1024, repeats: int = 3) -> list[dict]:
    """Time each candidate ARCHITECTURE's image encoder on this machine (random weights, no download).

    config_names: keys of ``CANDIDATES``; unknown names raise ``ValueError``
    listing the options. size: square input in px. repeats: timed rounds.

    All models are built first; each runs once under torch's FLOP counter
    (warm-up, and a load-independent cost), then the timed runs go round-robin
    (model A, B, C, A, B, C, ...) so that a CPU shared with other work slows
    every candidate alike. Uses torch's current thread count.

    Returns one dict per name: name, hub_id, family, params_m (encoder +
    decoder, millions), gflops (encoder, one image), encoder_ms_median / _p95 /
    _min, runs_ms, size, source. A candidate whose architecture equals one
    listed before it reuses that one's numbers (``same_as``).
    """
    import gc

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    unknown = [n for n in config_names if n not in CANDIDATES]
    if unknown:
        raise ValueError(f"unknown candidate(s) {unknown}; options: {', '.join(CANDIDATES)}")
    if int(repeats) < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    measured = [n for n in dict.fromkeys(config_names) if not (CANDIDATES[n].same_as in config_names)]
    models, rows = {}, {}
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        for name in measured:
            torch.manual_seed(0)
            models[name] = CANDIDATES[name].build(size)
            counter = FlopCounterMode(display=False)
            with counter:
                models[name].get_image_embeddings(x)
            rows[name] = {"params_m": round(sum(p.numel() for p in models[name].parameters()) / 1e6, 2),
                          "gflops": round(counter.get_total_flops() / 1e9, 1), "runs_ms": []}
        for _ in range(int(repeats)):
            for name in measured:
                t0 = time.perf_counter()
                models[name].get_image_embeddings(x)
                rows[name]["runs_ms"].append(round((time.perf_counter() - t0) * 1000.0, 1))
    del models
    gc.collect()
    out = []
    for name in config_names:
        cand = CANDIDATES[name]
        src = cand.same_as if name not in rows else name
        runs = rows[src]["runs_ms"]
        r = {"name": name, "hub_id": cand.hub_id, "family": cand.family, "size": int(size), "source": cand.source,
             "params_m": rows[src]["params_m"], "gflops": rows[src]["gflops"],
             "encoder_ms_median": round(statistics.median(runs), 1), "encoder_ms_p95": round(_percentile(runs, 95), 1),
             "encoder_ms_min": round(min(runs), 1), "runs_ms": runs}
        if src != name:
            r["same_as"] = src
        out.append(r)
    return out


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

    cand = CANDIDATES[name]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = cand.build(size)
        model.save_pretrained(tmp)
        S.default_processor(cand.family, size).save_pretrained(tmp)
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
    ap.add_argument("--candidates", nargs="+", default=DEFAULT_CANDIDATES, choices=list(CANDIDATES))
    ap.add_argument("--json", type=Path, default=Path("bench/results/sam_cpu.json"), help="where to write the JSON")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    info = machine()
    rows = encoder_benchmark(args.candidates, size=args.size, repeats=args.repeats)
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
