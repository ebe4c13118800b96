"""One training loop for every model: AdamW, cosine schedule with warm-up,
checkpoint every epoch, resume, early stopping on a validation score."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from train.common import Run


def cosine_lambda(total_steps: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p))
    return f


def two_stage_lambda(total_steps: int, warmup: int) -> Callable[[int], float]:
    """Seed 002's two stages: a cosine over the first 2/3 of the steps, then a fine-tune at lr/10."""
    first = max(1, (2 * total_steps) // 3)
    cos = cosine_lambda(first, warmup)

    def f(step: int) -> float:
        return cos(step) if step < first else 0.1
    return f


def fit(model: torch.nn.Module, run: Run, *, make_batch: Callable[[np.random.Generator], tuple],
        loss_fn: Callable, validate: Callable[[torch.nn.Module], dict], score_key: str,
        epochs: int, steps_per_epoch: int, lr: float, weight_decay: float, seed: int,
        device: torch.device, resume: bool, patience: int, freeze_epochs: int = 0,
        freeze: Callable[[bool], None] | None = None, progress: bool = True, schedule: str = "cosine") -> dict:
    """Train ``model``; keep best.pt by ``validate(model)[score_key]``. Returns a summary dict.

    make_batch(rng) -> (inputs, targets) tensors on CPU. loss_fn(logits, targets, inputs) -> scalar.
    """
    from tqdm import tqdm

    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * steps_per_epoch
    lam = {"cosine": cosine_lambda, "two_stage": two_stage_lambda}[schedule]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam(total, warmup=min(300, total // 10 + 1)))
    start_epoch, best, bad_epochs, train_seconds, images_seen = 0, -1.0, 0, 0.0, 0
    rng = np.random.default_rng(seed)
    if resume and run.last_ckpt.exists():
        st = torch.load(run.last_ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        start_epoch, best, bad_epochs = st["epoch"] + 1, st["best"], st["bad_epochs"]
        train_seconds, images_seen = st.get("train_seconds", 0.0), st.get("images_seen", 0)
        rng = np.random.default_rng([seed, start_epoch])
        torch.manual_seed(seed + start_epoch)
        run.log.info(f"resumed at epoch {start_epoch}, best {score_key}={best:.4f}")
    for epoch in range(start_epoch, epochs):
        if bad_epochs >= patience:
            run.log.info(f"early stop: no better {score_key} for {patience} epochs")
            break
        if freeze is not None:
            freeze(epoch < freeze_epochs)
        model.train()
        t0 = time.perf_counter()
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for _ in bar:
            x, y = make_batch(rng)
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = loss_fn(logits, y, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            images_seen += len(x)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        dt = time.perf_counter() - t0
        train_seconds += dt
        tv = time.perf_counter()
        val = validate(model)
        score = float(val[score_key])
        improved = score > best
        if improved:
            best, bad_epochs = score, 0
        else:
            bad_epochs += 1
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": sched.get_last_lr()[0],
               "train_s": dt, "val_s": time.perf_counter() - tv, "images_per_s": steps_per_epoch * len(x) / dt,
               **{k: v for k, v in val.items() if isinstance(v, (int, float))}}
        run.metrics(**row)
        run.log.info(f"epoch {epoch + 1}/{epochs} loss {row['loss']:.4f} {score_key} {score:.4f} "
                     f"(best {best:.4f}) {row['images_per_s']:.1f} img/s train {dt:.0f}s val {row['val_s']:.0f}s")
        run.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "epoch": epoch,
                  "best": best, "bad_epochs": bad_epochs, "train_seconds": train_seconds,
                  "images_seen": images_seen}, best=improved)
    st = torch.load(run.best_ckpt, map_location="cpu", weights_only=False)
    model.load_state_dict(st["model"])
    return {"best_score": best, "best_epoch": st["epoch"] + 1, "train_seconds": train_seconds,
            "images_seen": images_seen, "images_per_s": images_seen / max(train_seconds, 1e-9)}
