"""`python -m train segmentation`: the automatic U-Net on LGG FLAIR slices."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from bt_demo.models import weights
from bt_demo.models.input_prep import prepare
from train import common, lgg
from train.augment import augment_pair
from train.lgg import LGG_DEFAULT
from train.seg_model import build_model, encoder_freezer, seg_loss


def add_args(p: argparse.ArgumentParser, clicks: bool = False) -> None:
    name = "clicks" if clicks else "unet"
    p.add_argument("--data", default=str(LGG_DEFAULT), help="LGG folder (patient folders of *_N.png|tif + *_N_mask)")
    p.add_argument("--corrections", default=None, help="a correction store folder to add to training (optional)")
    p.add_argument("--out", default=f"weights/{name}", help="weights folder to write (config.json + model.safetensors + card)")
    p.add_argument("--run-dir", default=f"runs/{name}", help="logs, metrics, checkpoints and plots")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from last.pt")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--steps-per-epoch", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crop", type=int, default=128, help="training crop side at full resolution (0: whole slice)")
    p.add_argument("--input-size", type=int, default=256, help="side of the model's input at inference")
    p.add_argument("--train-size", type=int, default=0,
                   help="resize each (whole, uncropped) training slice to this side, as the app letterboxes it "
                        "to --input-size (0: keep the slice's size)")
    p.add_argument("--arch", default="Unet", help="smp architecture: Unet, UnetPlusPlus, MAnet, ...")
    p.add_argument("--decoder-attention", default=None, choices=[None, "scse"],
                   help="Unet/UnetPlusPlus: smp's scSE attention in the decoder blocks")
    p.add_argument("--input-prep", default="raw", choices=["raw", "median_clahe"],
                   help="the model's own input mapping (stored in its config; median_clahe = seed 002's)")
    p.add_argument("--lab-p", type=float, default=0.25,
                   help="probability of a random preprocessing-lab pipeline per training slice (train/lab_augment.py)")
    p.add_argument("--time-budget", type=float, default=0,
                   help="seconds of training in all (sets --steps-per-epoch from a timed probe; studies)")
    p.add_argument("--schedule", default="cosine", choices=["cosine", "two_stage"],
                   help="two_stage (seed 002): cosine over the first 2/3 of the steps, then fine-tune at lr/10")
    p.add_argument("--small-lesion-boost", type=float, default=0.0,
                   help="draw tumour slices whose lesion is under 400 px this many times more often (+1); the "
                        "failure analysis (python -m train failures) found small lesions the weakest")
    p.add_argument("--synthetic-pool", default=None,
                   help="an .npz of synthetic (slice, mask) pairs from `python -m train synthetic-pool` (issue 15)")
    p.add_argument("--synthetic-share", type=float, default=0.0,
                   help="share of each batch drawn from --synthetic-pool instead of the real training slices")
    p.add_argument("--study", action="store_true",
                   help="a study row: write results.json on the validation patients; no card, no export, no test")
    p.add_argument("--encoder", default="tu-mobilenetv3_large_100")
    p.add_argument("--decoder-channels", default="128,64,48,32,16")
    p.add_argument("--init-from", default=None,
                   help="start from an existing weights folder of the same kind (e.g. the shipped one) instead of scratch")
    p.add_argument("--pretrained", action="store_true", help="start from ImageNet encoder weights (needs network)")
    p.add_argument("--freeze-epochs", type=int, default=2, help="with --pretrained: epochs with the encoder frozen")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--patience", type=int, default=10, help="early stop after this many epochs without a better val score")
    p.add_argument("--n-val", type=int, default=10, help="validation patients (checkpoint and post-processing choice)")
    p.add_argument("--n-test", type=int, default=10, help="test patients (reported once in the card)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of the patient split (default: --seed); keep it fixed to repeat a run with other --seed")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--force", action="store_true",
                   help="replace the shipped weights in --out even when their card scores better")


def resize_pair(x: np.ndarray, m: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Whole slice to the model's input side, the way the engine's letterbox does (area when shrinking).

    Training on whole slices at the inference size matters: the net standardises
    each input by its own mean/std, so a tumour-centred crop has other
    statistics than the whole slice the app feeds it (false positives)."""
    from bt_demo.models.sizing import Letterbox

    lb = Letterbox.fit(x.shape, size)
    return lb.image(x), lb.image(m.astype(np.float32)) >= 0.5


def load_split(args) -> tuple[lgg.LggSet, dict]:
    data = lgg.load_lgg(args.data)
    split = lgg.patient_split(data.patients, data.has_tumour, args.n_val, args.n_test,
                              seed=args.seed if args.split_seed is None else args.split_seed)
    return data, split


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train segmentation", description=__doc__)
    add_args(p)
    args = p.parse_args(argv)
    device, run = common.start_run(args)
    data, split = load_split(args)
    (run.dir / "split.json").write_text(json.dumps(split, indent=1))
    train_set, val_set = data.subset(split["train"]), data.subset(split["val"])
    if args.corrections:
        from train.corrections import load_corrections

        extra = load_corrections(args.corrections, size=data.images.shape[1])
        if len(extra):
            train_set = lgg.LggSet(np.concatenate([train_set.images, extra.images]),
                                   np.concatenate([train_set.masks, extra.masks]),
                                   np.concatenate([train_set.patients, extra.patients]),
                                   np.concatenate([train_set.slice_numbers, extra.slice_numbers]))
    run.log.info(f"train {len(train_set.patient_ids)} patients / {len(train_set)} slices, "
                 f"val {len(val_set.patient_ids)} / {len(val_set)}, test {len(split['test'])} patients")
    tumour_idx = np.nonzero(train_set.has_tumour)[0]
    areas = train_set.masks[tumour_idx].reshape(len(tumour_idx), -1).sum(1)
    tumour_p = 1.0 + args.small_lesion_boost * (areas < 400)
    tumour_p = tumour_p / tumour_p.sum() if len(tumour_p) else None
    all_idx = np.arange(len(train_set))
    imgs_f = train_set.images

    pool = None
    if args.synthetic_share > 0:
        if not args.synthetic_pool:
            raise SystemExit("--synthetic-share needs --synthetic-pool")
        pool = np.load(args.synthetic_pool)
        pool = (pool["images"], pool["masks"])
        run.log.info(f"synthetic pool: {len(pool[0])} pairs, {args.synthetic_share:.0%} of every batch")

    def make_batch(rng):
        xs, ys = [], []
        for _ in range(args.batch_size):
            if pool is not None and rng.random() < args.synthetic_share:
                j = int(rng.integers(len(pool[0])))
                src, src_m = pool[0][j], pool[1][j]
            else:
                i = int(rng.choice(tumour_idx, p=tumour_p)) if (len(tumour_idx) and rng.random() < 0.6) \
                    else int(rng.choice(all_idx))
                src, src_m = imgs_f[i], train_set.masks[i]
            x, m = augment_pair(src.astype(np.float32) / 255.0, src_m, rng, args.crop or None, lab_p=args.lab_p)
            if args.train_size:
                x, m = resize_pair(x, m, args.train_size)
            xs.append(prepare(x, args.input_prep))
            ys.append(m)
        return (torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys).astype(np.float32))[:, None])

    from train.seg_eval import predict_probs, seg_metrics

    def validate(model):
        probs = predict_probs(model, val_set.images, device=device)
        return seg_metrics(probs >= 0.5, val_set.masks, val_set.patients)

    model = build_model(args, 1, "segmentation")
    summary = common.Timer()
    fit_budget(args, run, model, make_batch, seg_loss())
    from train.loop import fit

    result = fit(
        model, run, make_batch=make_batch, loss_fn=seg_loss(), validate=validate, score_key="patient_dice_mean",
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, lr=args.lr, weight_decay=args.weight_decay,
        seed=args.seed, device=device, resume=args.resume, patience=args.patience,
        freeze_epochs=args.freeze_epochs if args.pretrained else 0,
        freeze=encoder_freezer(model) if args.pretrained else None, progress=not args.no_progress,
        schedule=args.schedule)
    if args.study:
        from train.seg_study import write_row

        write_row(model, run, args, val_set, result, device)
        return 0
    finish(model, run, args, val_set, result, summary(), device)
    return 0


def fit_budget(args, run, model, make_batch, loss_fn) -> None:
    """--time-budget: steps per epoch from a timed probe (4 steps after a warm-up), fixed in the run's
    config so a resumed row keeps its schedule."""
    if not args.time_budget:
        return
    saved = run.dir / "budget.json"
    if args.resume and saved.exists():
        args.steps_per_epoch = json.loads(saved.read_text())["steps_per_epoch"]
        return
    import time

    rng = np.random.default_rng(12345)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # timing only: lr 0 leaves the weights as they are
    model.train()
    times = []
    for i in range(5):
        t0 = time.perf_counter()
        x, y = make_batch(rng)
        loss = loss_fn(model(x), y, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    args.steps_per_epoch = max(1, int(args.time_budget / args.epochs / float(np.median(times))))
    saved.write_text(json.dumps({"steps_per_epoch": args.steps_per_epoch, "seconds_per_step": float(np.median(times)),
                                 "time_budget_s": args.time_budget, "epochs": args.epochs}))
    run.log.info(f"time budget {args.time_budget:.0f}s: {args.steps_per_epoch} steps per epoch x {args.epochs} epochs")


def finish(model, run, args, val_set, result, wall_s, device) -> None:
    """Choose post-processing on validation, export the weights, write the card via evaluate."""
    from train.seg_eval import choose_postprocessing, predict_probs

    probs = predict_probs(model, val_set.images, device=device)
    best, grid = choose_postprocessing(probs, val_set.masks, val_set.patients)
    # min_component_px was chosen on slice-size maps; the engine reads it at the model's input scale
    scale = model.input_size / max(val_set.images.shape[1:])
    weights.set_config(model, threshold=float(best["threshold"]),
                       min_component_px=int(round(best["min_component_px"] * scale * scale)))
    run.log.info(f"post-processing chosen on validation: {best}")
    candidate = run.dir / "candidate"
    common.export_weights(model, candidate)
    train_info = {"command": "python -m train " + " ".join(sys.argv[1:]), "best_epoch": result["best_epoch"],
                  "epochs_run": len(run.history()), "train_seconds": round(result["train_seconds"], 1),
                  "wall_seconds_this_process": round(wall_s, 1), "images_seen": result["images_seen"],
                  "images_per_s": round(result["images_per_s"], 2), "val_best_score": result["best_score"],
                  "postprocessing_grid_val": grid, "postprocessing_chosen": best, "machine": common.machine_info(),
                  "args": {k: v for k, v in vars(args).items()}}
    (run.dir / "train_info.json").write_text(json.dumps(train_info, indent=1, default=str))
    from train import evaluate

    evaluate.main(["--weights", str(candidate), "--run-dir", str(run.dir), "--data", args.data])
    from train.promote import promote

    shipped, why = promote(candidate, args.out, force=args.force)
    run.log.info(why)


if __name__ == "__main__":
    raise SystemExit(main())
