"""`python -m train clicks`: the built-in click model (interactive segmentation).

Clicks are simulated as in RITM/DeepEdit: the first at the tumour's interior
point farthest from its boundary (or, 30 %, a random interior point), each next
one at the centre of the largest error of the model's own previous answer (run
without gradients, up to --max-sim-rounds rounds), the previous mask fed back;
mixed with random user-like clicks and corrupted previous masks so real users'
clicks work too. Once a mask exists the net sees a zoomed crop around it
(FocalClick/RITM zoom-in, ``bt_demo/models/click_step.py``, the same code as the
app). Trained on tumour slices at their own resolution (--crop and --train-size
are not used: the click step letterboxes whatever it is given).
"""

from __future__ import annotations

import argparse
import json
import sys

import cv2
import numpy as np
import torch

from bt_demo.models import weights
from bt_demo.models.click_step import click_input, click_output, run_batch
from bt_demo.sim.clicksim import first_click, next_click, random_clicks
from train import common, lgg
from train.augment import augment_pair
from train.seg_eval import random_interior_click
from train.seg_model import build_model, encoder_freezer, seg_loss
from train.segmentation import add_args


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
    p.add_argument("--max-sim-rounds", type=int, default=10,
                   help="most rounds of error-driven clicks simulated before a training answer (RITM)")
    p.add_argument("--protocol-share", type=float, default=0.7,
                   help="share of samples clicked by the protocol (the rest: random user-like clicks, corrupted masks)")
    p.add_argument("--no-zoom-in", action="store_true", help="always show the whole slice (no crop around the mask)")
    p.add_argument("--val-clicks", type=int, default=10)
    args = p.parse_args(argv)
    device, run = common.start_run(args)
    data = lgg.load_lgg(args.data)
    split = lgg.patient_split(data.patients, data.has_tumour, args.n_val, args.n_test,
                              seed=args.seed if args.split_seed is None else args.split_seed)
    (run.dir / "split.json").write_text(json.dumps(split, indent=1))
    tr, va = data.subset(split["train"]), data.subset(split["val"])
    tr = lgg.LggSet(tr.images[tr.has_tumour], tr.masks[tr.has_tumour], tr.patients[tr.has_tumour],
                    tr.slice_numbers[tr.has_tumour])
    va_t = va.has_tumour
    run.log.info(f"click model: train {len(tr)} tumour slices ({len(tr.patient_ids)} patients), val {int(va_t.sum())}")
    model = build_model(args, 4, "clicks")
    weights.set_config(model, click_radius=float(args.click_radius), zoom_in=not args.no_zoom_in)

    def sample(rng) -> dict:
        """One training slice at its own resolution, with the clicks a user (or the protocol) would give."""
        i = int(rng.integers(len(tr)))
        x, m = augment_pair(tr.images[i].astype(np.float32) / 255.0, tr.masks[i], rng, None,
                            p_tumour_crop=1.0, lab_p=args.lab_p)
        if not m.any():  # augmentation lost the tumour: the plain slice
            x, m = tr.images[i].astype(np.float32) / 255.0, tr.masks[i]
        if rng.random() < args.protocol_share:  # the protocol, from a centre or an off-centre first click
            first = first_click(m) if rng.random() < 0.7 else random_interior_click(m, rng)
            rounds = 0 if rng.random() < 0.2 else int(rng.integers(1, args.max_sim_rounds + 1))
            return {"x": x, "m": m, "pts": [first], "labs": [1], "prev": None, "rounds": rounds}
        pts, labs = random_clicks(m, rng, int(rng.integers(1, 4)), int(rng.integers(0, 3)))
        if not any(labs):
            pts, labs = [first_click(m)] + pts, [1] + labs
        prev = corrupt_mask(m, rng) if rng.random() < 0.5 else None
        return {"x": x, "m": m, "pts": pts, "labs": labs, "prev": prev, "rounds": 0}

    def make_batch(rng):
        """RITM's iterative training: each sample's clicks come from the model's own errors (no gradients,
        up to --max-sim-rounds rounds), through the app's click step (zoom-in included); the loss is on
        the next answer."""
        batch = [sample(rng) for _ in range(args.batch_size)]
        most = max(b["rounds"] for b in batch)
        if most:
            was_training = model.training
            model.eval()
            for r in range(most):
                active = [b for b in batch if b["rounds"] > r]
                inputs, frames = zip(*[click_input(model, b["x"], b["pts"], b["labs"], b["prev"]) for b in active], strict=True)
                probs = run_batch(model, list(inputs))
                for b, pr, fr in zip(active, probs, frames, strict=True):
                    _, pred = click_output(model, pr, fr, b["labs"], b["x"].shape)
                    b["prev"] = pred
                    nc = next_click(pred, b["m"])
                    if nc is not None:
                        b["pts"].append(nc[0]); b["labs"].append(nc[1])
            model.train(was_training)
        xs, ys = [], []
        for b in batch:
            inp, fr = click_input(model, b["x"], b["pts"], b["labs"], b["prev"])
            y0, x0, y1, x1 = fr.box
            xs.append(inp)
            ys.append(fr.lb.image(b["m"][y0:y1, x0:x1].astype(np.float32)) >= 0.5)
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.float32))[:, None]

    from train.seg_eval import click_protocol

    def validate(m):  # the score is the mean Dice over all --val-clicks clicks: late clicks count too
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
