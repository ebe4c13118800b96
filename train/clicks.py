"""`python -m train clicks`: the built-in click model (interactive segmentation).

Clicks are simulated as in RITM/DeepEdit: the first at the tumour's interior
point farthest from its boundary, each next one at the centre of the largest
error of the model's own previous answer (run without gradients, 0-3 rounds),
the previous mask fed back; mixed with random user-like clicks and corrupted
previous masks so real users' clicks work too. Trained on tumour slices.
"""

from __future__ import annotations

import argparse
import json
import sys

import cv2
import numpy as np
import torch

from bt_demo.clicksim import first_click, next_click, random_clicks
from bt_demo.models.click_encoding import click_maps
from bt_demo.models.input_prep import prepare
from train import common, lgg
from train.augment import augment_pair
from train.segmentation import add_args, build_model, encoder_freezer, resize_pair, seg_loss


def corrupt_mask(m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible wrong previous mask: eroded, dilated or shifted ground truth."""
    k = int(rng.integers(2, 8))
    kern = np.ones((2 * k + 1, 2 * k + 1), np.uint8)
    r = rng.random()
    if r < 0.35:
        out = cv2.erode(m.astype(np.uint8), kern) > 0
    elif r < 0.7:
        out = cv2.dilate(m.astype(np.uint8), kern) > 0
    else:
        out = np.roll(m, (int(rng.integers(-k, k + 1)), int(rng.integers(-k, k + 1))), axis=(0, 1))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train clicks", description=__doc__)
    add_args(p, clicks=True)
    p.add_argument("--click-radius", type=float, default=5.0, help="click disk radius in model input pixels")
    p.add_argument("--max-sim-rounds", type=int, default=3, help="rounds of error-driven clicks simulated per batch")
    p.add_argument("--val-clicks", type=int, default=5)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    common.set_seed(args.seed)
    device = common.pick_device(args.device)
    run = common.Run(args.run_dir, vars(args) | {"argv": sys.argv}, args.resume)
    data = lgg.load_lgg(args.data)
    split = lgg.patient_split(data.patients, data.has_tumour, args.n_val, args.n_test, seed=args.seed)
    (run.dir / "split.json").write_text(json.dumps(split, indent=1))
    tr, va = data.subset(split["train"]), data.subset(split["val"])
    tr = lgg.LggSet(tr.images[tr.has_tumour], tr.masks[tr.has_tumour], tr.patients[tr.has_tumour],
                    tr.slice_numbers[tr.has_tumour])
    va_t = va.has_tumour
    run.log.info(f"click model: train {len(tr)} tumour slices ({len(tr.patient_ids)} patients), val {int(va_t.sum())}")
    model = build_model(args, 4, "clicks")
    model.click_radius = float(args.click_radius)
    model._hub_mixin_config["click_radius"] = model.click_radius
    radius = model.click_radius

    def make_batch(rng):
        imgs, gts, pts, labs, prevs, protocol = [], [], [], [], [], []
        for _ in range(args.batch_size):
            i = int(rng.integers(len(tr)))
            x, m = augment_pair(tr.images[i].astype(np.float32) / 255.0, tr.masks[i], rng, args.crop or None,
                                p_tumour_crop=1.0, lab_p=args.lab_p)
            if args.train_size:
                x, m = resize_pair(x, m, args.train_size)
            if not m.any():  # augmentation lost the tumour: fall back to the plain slice (crop around it)
                x, (m,) = __import__("train.augment", fromlist=["crop_around"]).crop_around(
                    tr.images[i].astype(np.float32) / 255.0, [tr.masks[i]], args.crop or 256, rng, tr.masks[i])
                if args.train_size:
                    x, m = resize_pair(x, m, args.train_size)
                    if not m.any():  # a tumour of a pixel or two vanishes when shrunk: keep its centre
                        ys, xs = np.nonzero(tr.masks[i])
                        m = np.zeros_like(m)
                        s = args.train_size / max(tr.masks[i].shape)
                        m[min(int(ys.mean() * s), m.shape[0] - 1), min(int(xs.mean() * s), m.shape[1] - 1)] = True
            if rng.random() < 0.6:
                fc = first_click(m)
                if fc is None:
                    pt, lb = [], []
                else:
                    j = rng.integers(-2, 3, size=2)
                    fx, fy = int(np.clip(fc[0] + j[0], 0, m.shape[1] - 1)), int(np.clip(fc[1] + j[1], 0, m.shape[0] - 1))
                    pt, lb = ([(fx, fy)], [1]) if m[fy, fx] else ([fc], [1])
                prev = np.zeros_like(m)
                protocol.append(True)
            else:
                pt, lb = random_clicks(m, rng, int(rng.integers(1, 4)), int(rng.integers(0, 3)))
                prev = corrupt_mask(m, rng) if rng.random() < 0.5 else np.zeros_like(m)
                protocol.append(False)
            imgs.append(prepare(x, args.input_prep)); gts.append(m); pts.append(pt); labs.append(lb); prevs.append(prev.astype(np.float32))

        def inputs():
            return torch.from_numpy(np.stack([np.concatenate([imgs[k][None], click_maps(imgs[k].shape, pts[k], labs[k], radius),
                                                              prevs[k][None]]) for k in range(len(imgs))]))

        rounds = int(rng.integers(0, args.max_sim_rounds + 1))
        if rounds:
            was_training = model.training
            model.eval()
            with torch.no_grad():
                for _ in range(rounds):
                    prob = torch.sigmoid(model(inputs().to(device))).cpu().numpy()[:, 0]
                    for k in range(len(imgs)):
                        if not protocol[k]:
                            continue
                        pred = prob[k] >= 0.5
                        nc = next_click(pred, gts[k])
                        if nc is not None:
                            pts[k].append(nc[0]); labs[k].append(nc[1])
                        prevs[k] = pred.astype(np.float32)
            model.train(was_training)
        return inputs(), torch.from_numpy(np.stack(gts).astype(np.float32))[:, None]

    from train.seg_eval import click_protocol

    def validate(m):
        d = click_protocol(m, va.images[va_t], va.masks[va_t], n_clicks=args.val_clicks, device=device)
        return {"click_dice_mean": float(d.mean()), **{f"dice_after_{c + 1}_clicks": float(d[:, c].mean())
                                                        for c in range(d.shape[1])}}

    timer = common.Timer()
    from train.loop import fit

    result = fit(model, run, make_batch=make_batch, loss_fn=seg_loss(), validate=validate, score_key="click_dice_mean",
                 epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, lr=args.lr, weight_decay=args.weight_decay,
                 seed=args.seed, device=device, resume=args.resume, patience=args.patience,
                 freeze_epochs=args.freeze_epochs if args.pretrained else 0,
                 freeze=encoder_freezer(model) if args.pretrained else None, progress=not args.no_progress)
    candidate = run.dir / "candidate"
    common.export_weights(model, candidate)
    info = {"command": "python -m train " + " ".join(sys.argv[1:]), "best_epoch": result["best_epoch"],
            "epochs_run": len(run.history()), "train_seconds": round(result["train_seconds"], 1),
            "wall_seconds_this_process": round(timer(), 1), "images_seen": result["images_seen"],
            "images_per_s": round(result["images_per_s"], 2), "val_best_score": result["best_score"],
            "machine": common.machine_info(), "args": vars(args)}
    (run.dir / "train_info.json").write_text(json.dumps(info, indent=1, default=str))
    from train import evaluate

    evaluate.main(["--weights", str(candidate), "--run-dir", str(run.dir), "--data", args.data])
    from train.promote import promote

    shipped, why = promote(candidate, args.out, force=args.force)
    run.log.info(why)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
