"""`python -m train embed-finetune`: the type study's "encoder fine-tuned" row (issue 25, part 1), for the part
of LiteMedSAM's encoder this machine can afford: its neck.

The frozen front of the encoder never runs here: its last TinyViT stage's output (s3, 320 x 64 x 64) comes from
the embedding cache (``python -m train embeddings --dataset figshare --stages s2,s3``). On it a copy of the
pretrained neck (two convolutions and two layer norms, 0.67 M parameters) is fine-tuned together with a linear
type head on its mean- and max-pooled output over the unpadded frame, beside the frozen stages' pooled vectors
(s0-s3, 1,344 numbers, standardised on the training folds): the linear row's features with the neck's part made
trainable, so the row starts where the linear row stands. Training maps are mirrored left-right at random
(within the unpadded frame). ``python -m train embed-heads
--measure-finetune`` says what a sample costs (the neck: about 0.1-0.2 s forward + backward at 2 threads; the
last stage with it ten times that, which is why that row is not run).

Cross-validated like the other rows: each figshare fold held out in turn, the model trained on the other three
for a fixed budget (``--epochs``), no choice made on the held-out fold. The temperature is fitted on 15 % of the
training folds' slices kept out of training (the folds carry no patient id, so those slices may share patients
with the training slices: the temperature may be a little optimistic). Each fold checkpoints every epoch and
writes its result; a killed run resumes with the same command.

Writes ``--out/results.json`` in the format of ``python -m train embed-heads`` (``python -m train report`` lists
it beside the linear and MLP rows).

Example: ``python -m train embed-finetune --out runs/study_embed/type_neck_finetune --threads 2``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from train.embed_heads import TYPE_CLASSES

STAGE = "s3"  # the neck's input
CALIBRATION_SHARE = 0.15
NECK_POOLED = 512  # the neck's mean + max at the end of the cache's pooled vector (the frozen part is the rest)


def build_tail(n_classes: int = len(TYPE_CLASSES), frozen_dim: int = 0):
    """A copy of LiteMedSAM's pretrained neck + a linear head on its mean- and max-pooled output and on
    ``frozen_dim`` standardised frozen features given beside the maps."""
    import copy

    import torch
    from torch import nn

    from bt_demo.models.medsam import load_model

    class NeckHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.neck = copy.deepcopy(load_model("cpu").image_encoder.neck)
            self.head = nn.Linear(NECK_POOLED + frozen_dim, n_classes)

        def forward(self, s3, valid_cells, frozen=None):
            """s3 (B, 320, 64, 64); valid_cells (B, 2) int: the unpadded rows / columns of the 64 grid;
            frozen (B, frozen_dim) standardised, or None when frozen_dim is 0."""
            z = self.neck(s3.float())
            feats = []
            for k in range(len(z)):
                h, w = int(valid_cells[k, 0]), int(valid_cells[k, 1])
                v = z[k, :, :h, :w].flatten(1)
                feats.append(torch.cat([v.mean(1), v.amax(1)]))
            f = torch.stack(feats)
            return self.head(f if frozen is None else torch.cat([f, frozen.float()], 1))

    return NeckHead()


class Data:
    """The cached s3 maps (read from disk per batch), labels, folds and valid cells of a figshare cache."""

    def __init__(self, cache_dir: str | Path):
        from train.embeddings import open_cache

        self.cache = open_cache(cache_dir)
        d = self.cache.dir / "stages" / STAGE
        self.ids = [i for i in self.cache.ids if (d / f"{i}.npy").exists()]
        if not self.ids:
            raise SystemExit(f"{cache_dir} holds no {STAGE} maps: run python -m train embeddings --dataset figshare "
                             f"--stages s2,s3")
        rows = [self.cache.rows[i] for i in self.ids]
        self.y = np.array([TYPE_CLASSES.index(r["label"]) for r in rows])
        self.folds = np.array([int(r["fold"]) for r in rows])
        self.cells = np.array([[max(1, int(np.ceil(v * 64 / 256))) for v in r.get("valid_hw", (256, 256))]
                               for r in rows])
        ids, pooled = self.cache.pooled()
        at = {i: k for k, i in enumerate(ids)}
        self.frozen = pooled[[at[i] for i in self.ids], :-NECK_POOLED]  # s0-s3's pooled vectors
        self.mean, self.sd = np.zeros(self.frozen.shape[1]), np.ones(self.frozen.shape[1])

    def standardise_on(self, idx) -> None:
        """The frozen features' standardisation from the training slices ``idx`` only."""
        self.mean, self.sd = self.frozen[idx].mean(0), self.frozen[idx].std(0) + 1e-6

    def batch(self, idx, flip_rng=None):
        """Maps, valid cells, standardised frozen features and labels of ``idx``; with ``flip_rng`` each map is
        mirrored left-right within its unpadded frame with probability 1/2 (the pooled frozen features are
        left as they are: mean and max pooling do not see a mirror)."""
        import torch

        x = np.stack([self.cache.stage(STAGE, self.ids[i]) for i in idx]).astype(np.float32)
        if flip_rng is not None:
            for k, i in enumerate(idx):
                if flip_rng.random() < 0.5:
                    w = int(self.cells[i, 1])
                    x[k, :, :, :w] = x[k, :, :, :w][:, :, ::-1]
        z = ((self.frozen[idx] - self.mean) / self.sd).astype(np.float32)
        return (torch.from_numpy(x), torch.from_numpy(self.cells[idx]), torch.from_numpy(z),
                torch.from_numpy(self.y[idx]))


def logits(model, data: Data, idx: np.ndarray, batch: int = 16) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(idx), batch):
            x, cells, z, _ = data.batch(idx[s:s + batch])
            out.append(model(x, cells, z).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(TYPE_CLASSES)))


def run_fold(data: Data, fold: int, args, log=print) -> dict:
    """Train on the other folds (minus the calibration slices), resumable per epoch; metrics on ``fold``."""
    import torch

    from train.classifier import class_metrics, ece, fit_temperature, softmax

    fdir = Path(args.out) / f"fold{fold}"
    done = fdir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    fdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed + fold)
    train_all = np.nonzero(data.folds != fold)[0]
    calib = np.sort(rng.choice(train_all, max(1, int(round(CALIBRATION_SHARE * len(train_all)))), replace=False))
    train = np.setdiff1d(train_all, calib)
    held = np.nonzero(data.folds == fold)[0]
    data.standardise_on(train)
    torch.manual_seed(args.seed + fold)
    model = build_tail(frozen_dim=data.frozen.shape[1])
    opt = torch.optim.AdamW([{"params": model.neck.parameters(), "lr": args.lr},
                             {"params": model.head.parameters(), "lr": args.head_lr}], weight_decay=1e-4)
    steps_per_epoch = int(np.ceil(len(train) / args.batch_size))
    total = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + np.cos(np.pi * min(1.0, k / max(1, total)))))
    start, seconds = 0, 0.0
    ckpt = fdir / "last.pt"
    if ckpt.exists():
        st = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        start, seconds = st["epoch"] + 1, st["seconds"]
        log(f"fold {fold}: resumed after epoch {st['epoch']}")
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(start, args.epochs):
        t0 = time.perf_counter()
        model.train()
        erng = np.random.default_rng(args.seed * 1000 + fold * 100 + epoch)
        order = erng.permutation(train)
        losses = []
        for s in range(0, len(order), args.batch_size):
            x, cells, z, y = data.batch(order[s:s + args.batch_size], flip_rng=erng)
            loss = loss_fn(model(x, cells, z), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        seconds += time.perf_counter() - t0
        tmp = fdir / "last.pt.tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "epoch": epoch, "seconds": seconds}, tmp)
        tmp.replace(ckpt)
        log(f"fold {fold} epoch {epoch}: loss {np.mean(losses):.4f} ({time.perf_counter() - t0:.0f} s)")
    t = fit_temperature(logits(model, data, calib), data.y[calib])
    z = logits(model, data, held)
    m = class_metrics(softmax(z / t), data.y[held], TYPE_CLASSES)
    m.update({"val_fold": fold, "setting": f"{args.epochs} epochs", "temperature": t,
              "ece_before_t": ece(softmax(z), data.y[held]), "n_train": int(len(train)), "n_calibration": int(len(calib)),
              "fit_s": round(seconds, 1)})
    done.write_text(json.dumps(m, indent=1, default=float))
    log(f"fold {fold}: macro-F1 {m['macro_f1']:.3f}, T {t:.2f}, ECE {m['ece_before_t']:.3f} -> {m['ece']:.3f}")
    return m


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train embed-finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default="runs/embeddings/figshare", help="figshare cache with the s3 maps")
    p.add_argument("--out", required=True, help="run folder (per-fold checkpoints, results.json)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4, help="the neck's learning rate (pretrained)")
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    data = Data(args.cache)
    per_fold = [run_fold(data, f, args) for f in sorted(np.unique(data.folds).tolist())]
    agg = {k: [f[k] for f in per_fold] for k in ("macro_f1", "accuracy", "ece", "ece_before_t")}
    summary = {k: {"mean": float(np.mean(v)), "sd": float(np.std(v))} for k, v in agg.items()}
    summary["recall"] = {c: float(np.mean([f["recall"][c] for f in per_fold])) for c in TYPE_CLASSES}
    res = {"head": "type", "model": "neck fine-tuned", "row": f"LiteMedSAM's neck fine-tuned ({args.epochs} epochs, "
           "from cached s3) + linear head on its pooled output and the frozen stages' pooled vectors", "folds": per_fold, "summary": summary,
           "seconds": float(sum(f["fit_s"] for f in per_fold)), "n_slices": len(data.ids),
           "command": "python -m train embed-finetune " + " ".join(sys.argv[1:] if argv is None else argv)}
    (Path(args.out) / "results.json").write_text(json.dumps(res, indent=1, default=float))
    print(f"macro-F1 {summary['macro_f1']['mean']:.3f} ± {summary['macro_f1']['sd']:.3f} over {len(per_fold)} folds "
          f"-> {args.out}/results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
