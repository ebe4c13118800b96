"""`python -m train classifier`: one head of the tumour classifier, trained and validated by patient.

--head type      glioma / meningioma / pituitary on figshare; validation = one of the
                 author's patient-level folds (--val-fold), training = the other three.
--head presence  tumour / no tumour on the LGG FLAIR slices (both answers from the
                 same patients); validation = held-out patients.

The best checkpoint (validation macro-F1) gets a temperature fitted on the
validation logits and is exported to ``<run>/candidate``; ``<run>/results.json``
holds the validation metrics clean and degraded (noise sigma 0.05, blur sigma
1.5 px, 2x down-sampling, applied to the model's input), ECE before and after
temperature, parameters, CPU time and throughput. ``python -m train
classifier-ship`` assembles a type run and a presence run into
``weights/classifier``; ``python -m train classifier-study`` runs the backbone study.

--time-budget S fixes the training time instead of the step count: the speed
of the first steps sets how many steps fit (so every backbone gets the same
CPU minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bt_demo.models import weights
from train import cls_data, common
from train.augment import intensity, random_affine

DEGRADATIONS = {"noise": "Gaussian noise sigma 0.05", "blur": "Gaussian blur sigma 1.5 px", "downsample": "2x down-sampling"}


@torch.inference_mode()
def logits_of(model, x_u8: np.ndarray, batch: int = 64, device="cpu") -> np.ndarray:
    model.eval()
    outs = [model(torch.from_numpy(x_u8[i:i + batch].astype(np.float32) / 255.0)[:, None].to(device)).float().cpu().numpy()
            for i in range(0, len(x_u8), batch)]
    return np.concatenate(outs) if outs else np.zeros((0, 1), np.float32)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising the NLL of softmax(logits / T) (Guo et al. 2017)."""
    lg = torch.from_numpy(logits).double()
    y = torch.from_numpy(labels).long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lg / log_t.exp(), y)
        loss.backward()
        return loss
    opt.step(closure)
    return float(np.clip(log_t.exp().item(), 0.05, 20.0))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fold_linear(head) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) of a fitted StandardScaler + LogisticRegression pipeline with the standardisation folded
    in: the same decision values on raw features."""
    scaler, clf = head[0], head[-1]
    w = clf.coef_ / scaler.scale_[None, :]
    return w, clf.intercept_ - w @ scaler.mean_


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence, equal-width bins."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    e = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        k = (conf > lo) & (conf <= hi)
        if k.any():
            e += k.mean() * abs(correct[k].mean() - conf[k].mean())
    return float(e)


def class_metrics(probs: np.ndarray, labels: np.ndarray, names: list[str], threshold: float | None = None) -> dict:
    """Accuracy, macro-F1, per-class recall, ECE, confusion matrix; ROC AUC of the last class for two classes.

    threshold: for two classes, predict the second class when its probability >= threshold (else argmax).
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score, roc_auc_score

    pred = probs.argmax(1) if threshold is None else (probs[:, 1] >= threshold).astype(int)
    rec = recall_score(labels, pred, labels=range(len(names)), average=None, zero_division=0)
    out = {"accuracy": float(accuracy_score(labels, pred)),
           "macro_f1": float(f1_score(labels, pred, labels=range(len(names)), average="macro", zero_division=0)),
           "recall": {n: float(r) for n, r in zip(names, rec, strict=True)}, "ece": ece(probs, labels),
           "confusion_matrix": confusion_matrix(labels, pred, labels=range(len(names))).tolist(), "n": int(len(labels))}
    if len(names) == 2 and len(set(labels.tolist())) == 2:
        out["roc_auc"] = float(roc_auc_score(labels, probs[:, 1]))
    return out


def degraded(x_u8: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """Model inputs as a clinic might send them: 'noise' (sigma 0.05), 'blur' (sigma 1.5 px), 'downsample' (2x)."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty_like(x_u8)
    for i, im in enumerate(x_u8):
        f = im.astype(np.float32) / 255.0
        if kind == "noise":
            f = f + rng.normal(0, 0.05, f.shape).astype(np.float32)
        elif kind == "blur":
            f = cv2.GaussianBlur(f, (0, 0), 1.5)
        elif kind == "downsample":
            s = f.shape[0]
            f = cv2.resize(cv2.resize(f, (s // 2, s // 2), interpolation=cv2.INTER_AREA), (s, s), interpolation=cv2.INTER_LINEAR)
        else:
            raise ValueError(f"unknown degradation {kind!r}; choose one of {sorted(DEGRADATIONS)}")
        out[i] = np.clip(f * 255 + 0.5, 0, 255).astype(np.uint8)
    return out


def strong_degrade(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Degradation training: noise, blur and down-sampling at several strengths, each half the time."""
    import cv2

    s = x.shape[0]
    if rng.random() < 0.5:
        f = rng.uniform(0.3, 0.8)
        x = cv2.resize(cv2.resize(x, (max(8, int(s * f)),) * 2, interpolation=cv2.INTER_AREA), (s, s),
                       interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.3, 2.0))
    if rng.random() < 0.5:
        x = x + rng.normal(0, rng.uniform(0.01, 0.08), x.shape).astype(np.float32)
    return np.clip(x, 0, 1).astype(np.float32)


def evaluate_head(model, x: np.ndarray, y: np.ndarray, names: list[str], temperature: float,
                  threshold: float | None = None) -> dict:
    """Clean metrics (calibrated and raw ECE) and the three degradations, on one validation set."""
    lg = logits_of(model, x)
    m = class_metrics(softmax(lg / temperature), y, names, threshold)
    m["ece_before_temperature"] = class_metrics(softmax(lg), y, names, threshold)["ece"]
    m["degraded"] = {k: class_metrics(softmax(logits_of(model, degraded(x, k)) / temperature), y, names, threshold)
                     for k in DEGRADATIONS}
    return m


def head_data(head: str, size: int, fit: str, val_fold: int, n_val_patients: int, seed: int, data: str | None = None):
    """(train Arrays, val Arrays, class names, split description). data: the figshare / LGG folder (default: shared)."""
    if head == "type":
        a = cls_data.figshare(size, fit, data)
        if val_fold not in set(a.groups.tolist()):
            raise SystemExit(f"--val-fold {val_fold} is not among the folds here {sorted(set(a.groups.tolist()))}")
        tr, va = a.groups != val_fold, a.groups == val_fold
        split = {"method": "figshare author's patient-level folds", "val_fold": val_fold,
                 "train_folds": sorted(set(a.groups[tr].tolist()))}
        return a.take(tr), a.take(va), cls_data.TYPE_CLASSES, split
    a = cls_data.lgg_presence(size, fit, data)
    sp = cls_data.lgg_presence_split(a.groups, n_val_patients, seed)
    tr = np.isin(a.groups, sp["train"])
    # validation as the issue measures it: tumour >= 200 px (of 256²) against tumour-free slices
    va = np.isin(a.groups, sp["val"]) & ((a.extra == 0) | (a.extra >= 200))
    # training drops the ambiguous slivers (1-49 px): a speck is neither a clear "tumour" nor "no tumour"
    tr &= (a.extra == 0) | (a.extra >= 50)
    split = {"method": "LGG patients, scikit-learn GroupShuffleSplit", **sp,
             "val_rule": "tumour >= 200 px vs tumour-free slices", "train_rule": "slices with 1-49 tumour px left out"}
    return a.take(tr), a.take(va), cls_data.PRESENCE_CLASSES, split


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train classifier", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head", choices=["type", "presence"], required=True)
    p.add_argument("--val-fold", type=int, default=4, help="type head: the figshare fold held out (1-4)")
    p.add_argument("--val-patients", type=int, default=17, help="presence head: LGG patients held out")
    p.add_argument("--data", default=None, help="the head's data folder (default: ../shared/data/figshare or lgg)")
    p.add_argument("--cache-dir", default=str(cls_data.CACHE), help="where the model-input arrays are cached")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--backbone", default="resnet18", help="small_cnn, vgg_style or any timm model name")
    p.add_argument("--pretrained", action="store_true", help="ImageNet weights via timm (needs network)")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--fit", default="head_equalized", choices=["head_equalized", "head_square", "letterbox"])
    p.add_argument("--degrade-train", action="store_true",
                   help="train with noise, blur and down-sampling at several strengths")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--steps-per-epoch", type=int, default=0, help="0: one pass over the training images")
    p.add_argument("--time-budget", type=float, default=0, help="seconds of training; sets --steps-per-epoch")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.05)
    p.add_argument("--patience", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    device, run = common.start_run(args)
    cls_data.CACHE = Path(args.cache_dir)
    train, val, names, split = head_data(args.head, args.input_size, args.fit, args.val_fold, args.val_patients,
                                         args.seed, args.data)
    (run.dir / "split.json").write_text(json.dumps(split))
    counts = np.bincount(train.y, minlength=len(names))
    class_w = torch.tensor(counts.sum() / (len(names) * np.maximum(counts, 1)), dtype=torch.float32)
    run.log.info(f"{args.head}: train {len(train.y)} val {len(val.y)} per class {counts.tolist()}")
    from bt_demo.models.nets import ClassifierNet

    model = ClassifierNet(backbone=args.backbone, class_names=names,
                          no_tumour_class="no_tumour" if args.head == "presence" else None,
                          input_size=args.input_size, fit=args.fit, pretrained=args.pretrained).to(device)

    def make_batch(rng):
        xs = []
        ids = rng.integers(len(train.y), size=args.batch_size)
        for i in ids:
            x, _ = random_affine(train.x[i].astype(np.float32) / 255.0, [], rng, rot_deg=15, scale=(0.85, 1.15), shift=0.08)
            x = intensity(x, rng)
            xs.append(strong_degrade(x, rng) if args.degrade_train else x)
        return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(train.y[ids]).long()

    ce = torch.nn.CrossEntropyLoss(weight=class_w.to(device), label_smoothing=args.label_smoothing)
    steps = args.steps_per_epoch or int(np.ceil(len(train.y) / args.batch_size))
    if args.time_budget:
        steps = _steps_for_budget(model, make_batch, ce, device, args)
        run.log.info(f"time budget {args.time_budget:.0f}s: {steps} steps per epoch x {args.epochs} epochs")

    def validate(m):
        return class_metrics(softmax(logits_of(m, val.x, device=device)), val.y, names)

    from train.loop import fit

    result = fit(model, run, make_batch=make_batch, loss_fn=lambda lg, y, x: ce(lg, y), validate=validate,
                 score_key="macro_f1", epochs=args.epochs, steps_per_epoch=steps, lr=args.lr,
                 weight_decay=args.weight_decay, seed=args.seed, device=device, resume=args.resume,
                 patience=args.patience, progress=not args.no_progress)
    model = model.cpu().float()
    t = fit_temperature(logits_of(model, val.x), val.y)
    weights.set_config(model, temperature=t)
    common.export_weights(model, run.dir / "candidate")
    metrics = evaluate_head(model, val.x, val.y, names, t)
    results = {"head": args.head, "backbone": args.backbone, "degrade_train": args.degrade_train,
               "pretrained": args.pretrained, "input_size": args.input_size, "split": split, "val": metrics,
               "temperature": t, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
               "ms_per_image_cpu": _ms_per_image(model, args.input_size),
               "train_minutes": round(result["train_seconds"] / 60, 2), "images_seen": result["images_seen"],
               "images_per_s": round(result["images_per_s"], 1), "best_epoch": result["best_epoch"],
               "epochs": args.epochs, "steps_per_epoch": steps, "time_budget_s": args.time_budget,
               "command": "python -m train classifier " + " ".join(argv if argv is not None else sys.argv[1:]),
               "machine": common.machine_info()}
    (run.dir / "results.json").write_text(json.dumps(common.portable(results), indent=1))
    deg = {k: round(v["macro_f1"], 3) for k, v in metrics["degraded"].items()}
    run.log.info(f"val macro-F1 {metrics['macro_f1']:.4f} (degraded {deg}) ECE {metrics['ece_before_temperature']:.3f}"
                 f" -> {metrics['ece']:.3f} at T={t:.2f}" + (f" AUC {metrics['roc_auc']:.4f}" if "roc_auc" in metrics else ""))
    return 0


def _steps_for_budget(model, make_batch, ce, device, args) -> int:
    """Steps per epoch so that epochs x steps take about --time-budget seconds (timed on 4 steps after 1 warm-up)."""
    rng = np.random.default_rng(12345)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: timing only, the weights do not move
    model.train()
    times = []
    for i in range(5):
        t0 = time.perf_counter()
        x, y = make_batch(rng)
        loss = ce(model(x.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return max(1, int(args.time_budget / args.epochs / float(np.median(times))))


@torch.inference_mode()
def _ms_per_image(model, size: int, n: int = 10) -> float:
    """Median CPU ms of one forward pass at the model's input size (batch 1)."""
    model.eval()
    x = torch.rand(1, 1, size, size)
    model(x)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        model(x)
        ts.append(time.perf_counter() - t0)
    return round(1000 * float(np.median(ts)), 2)


if __name__ == "__main__":
    raise SystemExit(main())
