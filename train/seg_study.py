"""`python -m train segmentation-study`: the architecture study of the automatic U-Net (seeds 001, 002, 004).

Every row is trained from scratch on the same number of images (``--epochs`` x ``--steps-per-epoch`` x
16; a fixed image budget, since CPU time on a shared 2-core machine is too noisy to split fairly, with
each row's measured training speed and CPU latency beside it) on the same 65
training patients and validated on the same 10 validation patients (the split of the shipped card; the
10 test patients are not touched). Rows: decoder (U-Net, U-Net++, U-Net with smp's scSE attention) on
MobileNetV3, and the U-Net on EfficientNet-B0 (seed 002's encoder; its U-Net++ and scSE rows were left out
after its U-Net rows learnt far more slowly from scratch in this budget), each on raw FLAIR and on median +
CLAHE input (seed 002), and seed 002's recipe (EfficientNet-B0 U-Net, median + CLAHE, Dice + BCE,
two-stage schedule). ResNet/MA-Net rows: ``--extra unet:resnet18 manet:resnet18``. Each row writes ``runs/study_seg/<name>/results.json``; ``python -m train report`` makes the
table and plots in ``docs/studies.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from train.study import run_rows

ENCODERS = {"mobilenetv3": "tu-mobilenetv3_large_100", "resnet18": "resnet18", "effb0": "efficientnet-b0"}
DECODERS = {"unet": ["--arch", "Unet"], "unetpp": ["--arch", "UnetPlusPlus"], "manet": ["--arch", "MAnet"],
            "unet_scse": ["--arch", "Unet", "--decoder-attention", "scse"]}
COMMON = ["segmentation", "--study", "--crop", "0", "--train-size", "160", "--input-size", "160", "--patience", "99"]


def rows(steps: int, epochs: int, decoders, encoders, preps) -> list[tuple[str, list[str]]]:
    out = []
    budget = ["--steps-per-epoch", str(steps), "--epochs", str(epochs), "--batch-size", "16"]
    tag = f"{steps * epochs * 16}img"
    for dec in decoders:
        for enc in encoders:
            for prep in preps:
                name = f"{dec}_{enc}_{prep}_{tag}"
                out.append((name, [*COMMON, *DECODERS[dec], "--encoder", ENCODERS[enc], "--input-prep", prep, *budget]))
    out.append((f"seed002_recipe_{tag}",
                [*COMMON, "--arch", "Unet", "--encoder", ENCODERS["effb0"], "--input-prep", "median_clahe",
                 "--schedule", "two_stage", *budget]))
    return out


@torch.inference_mode()
def engine_ms(model, size: int = 256, n: int = 10) -> float:
    """Median CPU ms of the app's U-Net engine on one size x size slice (letterbox + prep + forward)."""
    from bt_demo.models.unet import UNetEngine

    eng = UNetEngine(model.eval())
    img = np.random.default_rng(0).random((size, size)).astype(np.float32)
    eng.probabilities(img)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        eng.probabilities(img)
        ts.append(time.perf_counter() - t0)
    return round(1000 * float(np.median(ts)), 1)


def write_row(model, run, args, val_set, result, device) -> dict:
    """results.json of a study row: validation patients only, threshold 0.5, no post-processing."""
    from train import common
    from train.seg_eval import predict_probs, seg_metrics

    model.eval()
    probs = predict_probs(model, val_set.images, device=device)
    m = seg_metrics(probs >= 0.5, val_set.masks, val_set.patients)
    per = m.pop("per_patient")
    n_params = sum(p.numel() for p in model.parameters())
    budget = json.loads((run.dir / "budget.json").read_text()) if (run.dir / "budget.json").exists() else {}
    res = {"row": run.dir.name, "arch": args.arch, "decoder_attention": args.decoder_attention,
           "encoder": args.encoder, "input_prep": args.input_prep, "schedule": args.schedule,
           "time_budget_s": args.time_budget, "epochs": args.epochs, **budget,
           "val": m | {"patient_dice_worst": float(min(per.values())), "per_patient": per},
           "params": n_params, "size_mb_fp16": round(n_params * 2 / 2**20, 2),
           "cpu_ms_256": engine_ms(model), "train_images_per_s": round(result["images_per_s"], 2),
           "train_seconds": round(result["train_seconds"], 1), "images_seen": result["images_seen"],
           "best_epoch": result["best_epoch"], "history": run.history(),
           "command": "python -m train " + " ".join(sys.argv[1:]),
           "machine": common.machine_info()}
    (run.dir / "results.json").write_text(json.dumps(common.portable(res), indent=1))
    run.log.info(f"val per-patient Dice {m['patient_dice_mean']:.4f} (worst {res['val']['patient_dice_worst']:.3f}) "
                 f"slice {m['slice_dice_tumour_mean']:.4f} FP {m['fp_rate_tumour_free']:.3f} {res['cpu_ms_256']} ms")
    return res


def augmentation_rows(pool: str, steps: int, epochs: int, shares=(0.0, 0.25, 0.5), seeds=(0, 1),
                      base=("--arch", "Unet", "--encoder", ENCODERS["mobilenetv3"], "--input-prep", "raw")):
    """Issue 15's experiment: the same U-Net with 0 / 25 / 50 % synthetic pairs per batch, two seeds each
    (same patients: --split-seed 0)."""
    out = []
    for share in shares:
        for seed in seeds:
            name = f"aug_synthetic{int(share * 100)}_seed{seed}_{steps * epochs * 16}img"
            out.append((name, [*COMMON, *base, "--steps-per-epoch", str(steps), "--epochs", str(epochs),
                               "--batch-size", "16", "--seed", str(seed), "--split-seed", "0",
                               *(["--synthetic-pool", pool, "--synthetic-share", str(share)] if share else [])]))
    return out


def remeasure_latency(root: Path, threads: int = 1) -> None:
    """CPU ms at 256² of every finished row again, one after the other on an otherwise idle machine (the
    rows' own figures were taken while other runs shared the CPU). Latency does not depend on the weights,
    so each row's architecture is rebuilt from its args."""
    import types

    from train.seg_model import build_model

    torch.set_num_threads(threads)
    for res_p in sorted(root.glob("*/results.json")):
        res = json.loads(res_p.read_text())
        a = json.loads((res_p.parent / "args.json").read_text())
        args = types.SimpleNamespace(**{**a, "init_from": None, "pretrained": False})
        model = build_model(args, 1, "segmentation").eval()
        res["cpu_ms_256_during_training"] = res.get("cpu_ms_256_during_training", res["cpu_ms_256"])
        res["cpu_ms_256"] = engine_ms(model, n=20)
        res["cpu_ms_256_note"] = f"re-measured alone, {threads} thread(s)"
        res_p.write_text(json.dumps(res, indent=1))
        print(f"{res_p.parent.name}: {res['cpu_ms_256']} ms")


def default_rows() -> list[tuple[str, list[str]]]:
    """The rows ``python -m train segmentation-study`` runs with its defaults (the report lists unfinished ones)."""
    p = _parser()
    args = p.parse_args([])
    return _rows_of(args)


def _rows_of(args) -> list[tuple[str, list[str]]]:
    todo = rows(args.steps_per_epoch, args.epochs, args.decoders, args.encoders, args.preps)
    for pair in args.extra:
        dec, enc = pair.split(":")
        todo[-1:-1] = [r for r in rows(args.steps_per_epoch, args.epochs, [dec], [enc], args.preps)[:-1]]
    return _only(todo, args.only)


def _only(todo: list[tuple[str, list[str]]], only: list[str] | None) -> list[tuple[str, list[str]]]:
    """The rows whose name contains one of ``only`` (all when None)."""
    return [r for r in todo if any(o in r[0] for o in only)] if only else todo


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train segmentation-study", description=__doc__)
    p.add_argument("--root", default="runs/study_seg")
    p.add_argument("--steps-per-epoch", type=int, default=50, help="batches of 16 per epoch, every row")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--decoders", nargs="+", default=["unet", "unetpp", "unet_scse"], choices=list(DECODERS))
    p.add_argument("--encoders", nargs="+", default=["mobilenetv3"], choices=list(ENCODERS))
    p.add_argument("--preps", nargs="+", default=["raw", "median_clahe"])
    p.add_argument("--extra", nargs="*", default=["unet:effb0"],
                   help="more decoder:encoder pairs (both inputs); e.g. unet:resnet18 manet:resnet18 (seed 004's "
                        "family; their weights exceed the 10 MB limit)")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--only", nargs="*", default=None, help="run only rows whose name contains one of these")
    p.add_argument("--augmentation-pool", default=None,
                   help="instead of the study: the synthetic-augmentation experiment with this pool (issue 15)")
    p.add_argument("--base", default="--arch Unet --encoder tu-mobilenetv3_large_100 --input-prep raw",
                   help="with --augmentation-pool: the U-Net configuration (the study's winner)")
    p.add_argument("--remeasure-latency", action="store_true",
                   help="instead of training: CPU ms at 256² of every finished row, measured alone")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.remeasure_latency:
        remeasure_latency(Path(args.root))
        return 0
    if args.augmentation_pool:
        todo = augmentation_rows(args.augmentation_pool, args.steps_per_epoch, args.epochs, base=tuple(args.base.split()))
        # --only: e.g. the 0 % rows, which need no pool, while the generator still trains
        return run_rows(_only(todo, args.only), Path(args.root), args.jobs)
    return run_rows(_rows_of(args), Path(args.root), args.jobs)


if __name__ == "__main__":
    raise SystemExit(main())
