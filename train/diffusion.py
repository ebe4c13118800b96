"""`python -m train diffusion`: the mask-conditioned DDIM generator of synthetic FLAIR slices.

Data: the LGG FLAIR slices and their expert masks (tumour and tumour-free slices; an empty mask teaches
"no tumour"), resized to --size, split by patient (validation patients are held back: the validation loss
picks the checkpoint and they are the real side of the realism measure). Training: the denoising
objective with diffusers' scheduler (``add_noise``; the target is the velocity v = ``get_velocity`` by default,
or the noise with ``--prediction-type epsilon``), AdamW, left-right flips; sampling in the app uses diffusers'
``DDIMScheduler``. Why v: an epsilon model trained here (28,800 images) predicted x0 well from t <= 500 but
a speckled x0 from t >= 800 (x0 = (x_t - sqrt(1-a) eps) / sqrt(a) magnifies the noise error ~13x at t=950),
and its DDIM samples were noise on a grey background. ``--init-from`` warm-starts from another run's
checkpoint or an exported folder (same architecture). Checkpoint every epoch (``--resume``), ``--time-budget`` seconds
of training at most. Exports ``<run>/candidate`` and, when its validation loss beats the shipped card's,
``--out`` (default ``weights/diffusion``) with a card and a grid of synthetic samples drawn for the project
phantom's lesion masks (no patient data in the repository; the grid beside real held-back slices stays in
the run folder: samples_vs_real.png).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from train import common


def load_pairs(root: str, size: int, patients: list[str] | None = None):
    """uint8 images (N, size, size), bool masks (N, size, size), patients (N,)."""
    from train import lgg

    d = lgg.load_lgg(root, patients=patients, size=size)
    return d.images, d.masks, d.patients


def to_model(images_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_u8.astype(np.float32) / 127.5 - 1.0)[:, None]


@torch.no_grad()
def target(model, sched, x0, noise, t):
    """What the network learns to predict: the velocity v or the noise, per the model's prediction_type."""
    return sched.get_velocity(x0, noise, t) if model.prediction_type == "v_prediction" else noise


@torch.no_grad()
def val_loss(model, sched, x, m, seed: int = 0, batch: int = 32) -> float:
    """Mean MSE of the prediction on fixed timesteps and noise (comparable across epochs and runs of one
    prediction type)."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    losses = []
    for i in range(0, len(x), batch):
        xb, mb = x[i:i + batch], m[i:i + batch]
        t = torch.randint(0, sched.config.num_train_timesteps, (len(xb),), generator=g)
        noise = torch.randn(xb.shape, generator=g)
        pred = model(sched.add_noise(xb, noise, t), mb, t)
        losses.append(float(torch.nn.functional.mse_loss(pred, target(model, sched, xb, noise, t))) * len(xb))
    return float(np.sum(losses) / max(1, len(x)))


def _grid(engine, tops: np.ndarray, masks: np.ndarray, out: Path, top_title: str, steps: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(masks)
    fig, ax = plt.subplots(2, n, figsize=(1.8 * n, 3.9), squeeze=False)
    for j in range(n):
        s = engine.generate(masks[j], seed=j, steps=steps)
        for row, img, m in ((0, tops[j], masks[j]), (1, s.image, s.mask)):  # s.mask: at the generator's size
            ax[row, j].imshow(img, cmap="gray", vmin=0, vmax=1)
            if m.any():
                ax[row, j].contour(m, levels=[0.5], colors="orange", linewidths=0.6)
            ax[row, j].axis("off")
    ax[0, 0].set_title(top_title, fontsize=8, loc="left")
    ax[1, 0].set_title("SYNTHETIC, for the mask above (orange)", fontsize=8, loc="left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def sample_grid(engine, out: Path, n: int = 6, steps: int = 25) -> Path:
    """PNG that ships with the weights: synthetic slices drawn for the lesion masks of the project's own
    phantom (bt_demo.sim.phantom; top row), the last two for an empty mask. No patient image or expert mask goes
    into the repository, so the side-by-side with real slices stays in the run folder (``sample_grid_vs_real``)."""
    from bt_demo.sim.phantom import flair_phantom

    size = 256
    tops, masks = [], []
    for j in range(n):
        img, m = flair_phantom((size, size), seed=j, lesion=j < n - 2, lesion_kind="cystic" if j % 3 == 2 else "solid")
        tops.append(img)
        masks.append(m)
    return _grid(engine, np.stack(tops), np.stack(masks), out, "project phantom (not a patient)", steps)


def sample_grid_vs_real(engine, real_imgs: np.ndarray, real_masks: np.ndarray, out: Path, n: int = 6,
                        steps: int = 25) -> Path:
    """PNG for the run folder only: held-back real slices (top) and synthetic slices for their masks;
    mostly tumour masks, the last two columns empty ones."""
    has = real_masks.reshape(len(real_masks), -1).any(1)
    tum, empty = np.nonzero(has)[0], np.nonzero(~has)[0]
    n_t = min(len(tum), n - min(2, len(empty)))
    idx = np.r_[tum[np.linspace(0, len(tum) - 1, n_t).astype(int)] if n_t else [],
                empty[np.linspace(0, len(empty) - 1, n - n_t).astype(int)] if n - n_t else []].astype(int)
    return _grid(engine, real_imgs[idx] / 255.0, real_masks[idx], out, "real (held-out)", steps)


def read_warm_start(path: str) -> tuple[dict | None, dict]:
    """(state dict, info) of a warm start, the file read once. state: a training checkpoint's EMA-averaged
    weights (else its weights) or an exported folder's model.safetensors (float16 on disk) as float32; info,
    for the card: the path and what that run had done (images, seconds, epochs, its flags)."""
    if not path:
        return None, {}
    p = Path(path)
    if p.is_dir():
        from safetensors.torch import load_file

        card = p / "card.json"
        tr = json.loads(card.read_text()).get("training", {}) if card.exists() else {}
        return ({k: v.float() for k, v in load_file(p / "model.safetensors").items()},
                {"init_from": path, **{k: tr[k] for k in ("images_seen", "train_seconds", "command") if k in tr}})
    st = torch.load(p, map_location="cpu", weights_only=False)
    args_p = p.parent / "args.json"
    a = json.loads(args_p.read_text()) if args_p.exists() else {}
    return (st.get("averaged") or st["model"],
            {"init_from": path, "images_seen": st.get("images_seen"), "train_seconds": round(st.get("train_seconds", 0), 1),
             "epochs": st.get("epoch", -1) + 1, "prediction_type": a.get("prediction_type", "epsilon"),
             **{k: a[k] for k in ("size", "batch_size", "steps_per_epoch", "lr", "channels") if k in a}})


def main(argv=None) -> int:
    from train.lgg import LGG_DEFAULT

    p = argparse.ArgumentParser(prog="python -m train diffusion", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(LGG_DEFAULT))
    p.add_argument("--out", default="weights/diffusion")
    p.add_argument("--run-dir", default="runs/diffusion")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--size", type=int, default=64, help="side of the generated slices (64 or 128)")
    p.add_argument("--channels", default="32,64,128,128", help="block_out_channels of the diffusers UNet2DModel")
    p.add_argument("--no-attention", action="store_true")
    p.add_argument("--prediction-type", default="v_prediction", choices=["v_prediction", "epsilon"])
    p.add_argument("--init-from", default="", help="warm start: a run's .pt checkpoint (its averaged weights) or "
                                                   "an exported weights folder, of the same architecture")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps-per-epoch", type=int, default=200)
    p.add_argument("--time-budget", type=float, default=0, help="stop after this many seconds of training")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--ema", type=float, default=0.999, help="decay of the weight average used for sampling (0: off)")
    p.add_argument("--n-val", type=int, default=10, help="the U-Net split's validation patients (held back)")
    p.add_argument("--n-test", type=int, default=10, help="the U-Net split's test patients (held back)")
    p.add_argument("--val-slices", type=int, default=256, help="held-back slices in the per-epoch validation loss")
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--force", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    common.set_seed(args.seed)
    run = common.Run(args.run_dir, vars(args) | {"argv": sys.argv}, args.resume)
    imgs, masks, pats = load_pairs(args.data, args.size)
    from train import lgg

    # the U-Net's own patient split: the generator learns only the U-Net's training patients, so synthetic
    # pairs added to U-Net training (the augmentation experiment) carry nothing of its validation or test
    # patients; those 20 patients are held back here (validation loss, the real side of the KID)
    has = masks.reshape(len(masks), -1).any(1)
    seg_split = lgg.patient_split(pats, has, args.n_val, args.n_test, seed=args.seed)
    split = {"train": seg_split["train"], "val": sorted(seg_split["val"] + seg_split["test"])}
    tr, va = np.isin(pats, split["train"]), np.isin(pats, split["val"])
    # a fixed subset of the held-back slices for the per-epoch validation loss (comparable, and quick)
    va[np.nonzero(va)[0][np.random.default_rng(0).permutation(int(va.sum()))[args.val_slices:]]] = False
    (run.dir / "split.json").write_text(json.dumps(split))
    x_tr, m_tr = to_model(imgs[tr]), torch.from_numpy(masks[tr].astype(np.float32))[:, None]
    x_va, m_va = to_model(imgs[va]), torch.from_numpy(masks[va].astype(np.float32))[:, None]
    from bt_demo.models.generator import MaskConditionedDiffusion

    model = MaskConditionedDiffusion(sample_size=args.size, block_out_channels=[int(c) for c in args.channels.split(",")],
                                     attention=not args.no_attention, prediction_type=args.prediction_type)
    warm = {}  # what the weights started from, kept in every checkpoint and written into the card
    if args.init_from and not (args.resume and run.last_ckpt.exists()):
        state, warm = read_warm_start(args.init_from)
        model.load_state_dict(state)
        run.log.info(f"warm start from {args.init_from}")
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=model.num_train_timesteps, beta_schedule=model.beta_schedule)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    # An exponential moving average of the weights samples far better than the last step's weights after a
    # short CPU training; diffusers' EMAModel (with warm-up) keeps it, and validation/export use it.
    from diffusers.training_utils import EMAModel

    ema = EMAModel(model.parameters(), decay=args.ema, use_ema_warmup=True) if args.ema else None
    start, best, train_s, seen = 0, float("inf"), 0.0, 0
    rng = np.random.default_rng(args.seed)
    if args.resume and run.last_ckpt.exists():
        st = torch.load(run.last_ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"]); opt.load_state_dict(st["opt"])
        if ema is not None and st.get("ema"):
            ema.load_state_dict(st["ema"])
        start, best, train_s, seen = st["epoch"] + 1, st["best"], st["train_seconds"], st["images_seen"]
        # (a run resumed with --init-from, made before checkpoints kept it, records it from the flag)
        warm = st.get("warm_start") or read_warm_start(args.init_from)[1]
        rng = np.random.default_rng([args.seed, start])
        run.log.info(f"resumed at epoch {start}, best val loss {best:.5f}")
    for epoch in range(start, args.epochs):
        if args.time_budget and train_s >= args.time_budget:
            run.log.info(f"time budget of {args.time_budget:.0f} s reached")
            break
        model.train()
        t0, losses = time.perf_counter(), []
        for _ in range(args.steps_per_epoch):
            ids = rng.integers(len(x_tr), size=args.batch_size)
            xb, mb = x_tr[ids].clone(), m_tr[ids].clone()
            flip = torch.from_numpy(rng.random(len(ids)) < 0.5)
            xb[flip], mb[flip] = xb[flip].flip(-1), mb[flip].flip(-1)
            t = torch.from_numpy(rng.integers(0, sched.config.num_train_timesteps, len(ids))).long()
            noise = torch.randn_like(xb)
            loss = torch.nn.functional.mse_loss(model(sched.add_noise(xb, noise, t), mb, t),
                                                target(model, sched, xb, noise, t))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if ema is not None:
                ema.step(model.parameters())
            losses.append(loss.item())
            seen += len(ids)
        dt = time.perf_counter() - t0
        train_s += dt
        if ema is not None:  # validate (and keep as "best") the averaged weights the app will sample with
            ema.store(model.parameters()); ema.copy_to(model.parameters())
        v = val_loss(model, sched, x_va, m_va)
        averaged = {k: t.detach().clone() for k, t in model.state_dict().items()}
        if ema is not None:
            ema.restore(model.parameters())
        improved = v < best
        best = min(best, v)
        run.metrics(epoch=epoch + 1, loss=float(np.mean(losses)), val_loss=v, train_s=dt,
                    images_per_s=args.steps_per_epoch * args.batch_size / dt)
        run.log.info(f"epoch {epoch + 1}/{args.epochs} loss {np.mean(losses):.5f} val {v:.5f} (best {best:.5f}) {dt:.0f}s")
        run.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch, "best": best,
                  "train_seconds": train_s, "images_seen": seen, "averaged": averaged,
                  "ema": ema.state_dict() if ema is not None else None, "warm_start": warm}, best=improved)
    st = torch.load(run.best_ckpt, map_location="cpu", weights_only=False)
    model.load_state_dict(st.get("averaged") or st["model"])
    candidate = run.dir / "candidate"
    common.export_weights(model, candidate)  # float16 on disk (<= 10 MB); loaded as float32 on the CPU
    from bt_demo.models.generator import GeneratorEngine

    eng = GeneratorEngine(model.float().eval())
    t0 = time.perf_counter()
    grid = sample_grid(eng, run.dir / "samples.png", steps=args.sample_steps)
    gen_s = (time.perf_counter() - t0) / 6
    sample_grid_vs_real(eng, imgs[va], masks[va], run.dir / "samples_vs_real.png", steps=args.sample_steps)
    from train.evaluate import LGG_DATA, NOT_FOR_DIAGNOSIS, write_card, write_plots

    card = {"model": f"bt_demo mask-conditioned DDIM generator ({args.size}², channels {args.channels})",
            "task": "generation", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": json.loads((candidate / "config.json").read_text()), "data": LGG_DATA | {"path": args.data},
            "split": {"method": "LGG patients, GroupShuffleSplit", **split},
            "metrics": {"evaluated_on": "held-out LGG patients", "val_loss": best, "n_val_slices": int(va.sum()),
                        "seconds_per_sample_at_sample_steps": round(gen_s, 2), "sample_steps": args.sample_steps,
                        "note": NOT_FOR_DIAGNOSIS + " Every output is SYNTHETIC."},
            "floors": {}, "training": {"command": "python -m train diffusion " + " ".join(argv if argv is not None else sys.argv[1:]),
                                       "train_seconds": round(train_s, 1), "images_seen": seen,
                                       "threads": args.threads or torch.get_num_threads(),
                                       "prediction_type": args.prediction_type,
                                       "warm_start": warm,
                                       "machine": common.machine_info()},
            "plots": write_plots(run.dir, None, "val_loss") + [str(grid)],
            "evaluate_command": "python -m train generator-eval --cache runs/generator_eval_synthetic.npz  "
                                "# realism (KID, C2ST) and mask adherence"}
    write_card(candidate, card)
    for f in card["plots"]:
        src = Path(f)
        if src.exists():
            (candidate / src.name).write_bytes(src.read_bytes())
    from train.promote import promote

    shipped, why = promote(candidate, args.out, force=args.force)
    run.log.info(why)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
