"""`python -m train classifier`: glioma / meningioma / no tumour / pituitary.

Data: class folders (default: the 4-class set's Training/ and Testing/),
deduplicated by file hash, test images that also occur in training dropped.
Training/ is split (stratified) into train and validation; validation picks the
checkpoint and fits the temperature; Testing/ is reported once.
Class-balanced loss weights; temperature scaling stored in the config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from bt_demo.models.sizing import fit_square
from train import common
from train.augment import degrade, intensity, random_affine
from train.classes import read_class_folder

DATA_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "classification" / "sartaj_4class"
CLASSES = ["glioma", "meningioma", "no_tumour", "pituitary"]
SARTAJ_DATA = {
    "name": "Brain Tumor Classification (MRI), 4 classes (Sartaj Bhuvaji)",
    "source": "GitHub SartajBhuvaji/Brain-Tumor-Classification-DataSet @ 3ea9f4e",
    "licence": "None stated in the source repository. Research/demo use only; labels are known to be imperfect (glioma).",
    "deduplication": "SHA-1 of file bytes; duplicates dropped; Testing images also present in Training dropped",
}


def letterboxed(images: list[np.ndarray], size: int, fit: str = "letterbox") -> np.ndarray:
    """uint8 (N, size, size): each image put into the model's square input the way the engine does."""
    out = np.zeros((len(images), size, size), np.uint8)
    for i, im in enumerate(images):
        lb = fit_square(im.astype(np.float32), size, fit)
        out[i] = np.clip(lb.image(im.astype(np.float32)), 0, 255).astype(np.uint8)
    return out


@torch.inference_mode()
def logits_of(model, x_u8: np.ndarray, batch: int = 64, device="cpu") -> np.ndarray:
    model.eval()
    outs = [model(torch.from_numpy(x_u8[i:i + batch].astype(np.float32) / 255.0)[:, None].to(device)).float().cpu().numpy()
            for i in range(0, len(x_u8), batch)]
    return np.concatenate(outs)


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


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence, equal-width bins."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    e = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        k = (conf > lo) & (conf <= hi)
        if k.any():
            e += k.mean() * abs(correct[k].mean() - conf[k].mean())
    return float(e)


def class_metrics(probs: np.ndarray, labels: np.ndarray, names: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

    pred = probs.argmax(1)
    rec = recall_score(labels, pred, labels=range(len(names)), average=None, zero_division=0)
    return {"accuracy": float(accuracy_score(labels, pred)),
            "macro_f1": float(f1_score(labels, pred, labels=range(len(names)), average="macro", zero_division=0)),
            "recall": {n: float(r) for n, r in zip(names, rec)}, "ece": ece(probs, labels),
            "confusion_matrix": confusion_matrix(labels, pred, labels=range(len(names))).tolist(), "n": int(len(labels))}


def degraded(x_u8: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """The Testing images as a clinic might send them: 'noise', 'blur' or 'downsample'."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty_like(x_u8)
    for i, im in enumerate(x_u8):
        f = im.astype(np.float32) / 255.0
        if kind == "noise":
            f = f + rng.normal(0, 0.04, f.shape).astype(np.float32)
        elif kind == "blur":
            f = cv2.GaussianBlur(f, (0, 0), 1.5)
        elif kind == "downsample":
            s = f.shape[0]
            f = cv2.resize(cv2.resize(f, (s // 3, s // 3), interpolation=cv2.INTER_AREA), (s, s), interpolation=cv2.INTER_LINEAR)
        else:
            raise ValueError(f"unknown degradation {kind!r}; choose noise, blur or downsample")
        out[i] = np.clip(f * 255, 0, 255).astype(np.uint8)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train classifier", description=__doc__)
    p.add_argument("--train-dir", default=str(DATA_DEFAULT / "Training"))
    p.add_argument("--test-dir", default=str(DATA_DEFAULT / "Testing"))
    p.add_argument("--out", default="weights/classifier")
    p.add_argument("--run-dir", default="runs/classifier")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--backbone", default="mobilenetv3_large_100", help="any timm model name")
    p.add_argument("--pretrained", action="store_true", help="ImageNet weights via timm (needs network)")
    p.add_argument("--input-size", type=int, default=160)
    p.add_argument("--fit", default="head_equalized", choices=["head_equalized", "head_square", "letterbox"],
                   help="how an image becomes the square input: crop to the head, stretch to the square and "
                        "equalise the histogram (default: no padding, aspect-ratio or brightness cue of the "
                        "image's source), the same without equalising, or letterbox")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--steps-per-epoch", type=int, default=0, help="0: one pass over the training images")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.05)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--patience", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--force", action="store_true",
                   help="replace the shipped weights in --out even when their card scores better")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    common.set_seed(args.seed)
    device = common.pick_device(args.device)
    run = common.Run(args.run_dir, vars(args) | {"argv": sys.argv}, args.resume)
    trainset = read_class_folder(args.train_dir, CLASSES)
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(trainset.labels))
    tr_i, va_i = train_test_split(idx, test_size=args.val_fraction, stratify=trainset.labels, random_state=args.seed)
    x_all = letterboxed(trainset.images, args.input_size, args.fit)
    x_tr, y_tr, x_va, y_va = x_all[tr_i], trainset.labels[tr_i], x_all[va_i], trainset.labels[va_i]
    (run.dir / "split.json").write_text(json.dumps({"train": [trainset.paths[i] for i in tr_i],
                                                    "val": [trainset.paths[i] for i in va_i],
                                                    "train_hashes": trainset.hashes, "dropped_train": trainset.dropped}))
    counts = np.bincount(y_tr, minlength=len(CLASSES))
    class_w = torch.tensor(counts.sum() / (len(CLASSES) * np.maximum(counts, 1)), dtype=torch.float32)
    run.log.info(f"train {len(y_tr)} val {len(y_va)} per class {counts.tolist()} weights {class_w.numpy().round(2).tolist()}")
    from bt_demo.models.nets import ClassifierNet

    model = ClassifierNet(backbone=args.backbone, class_names=CLASSES, input_size=args.input_size, fit=args.fit,
                          pretrained=args.pretrained)
    steps = args.steps_per_epoch or int(np.ceil(len(y_tr) / args.batch_size))

    def make_batch(rng):
        xs = []
        ids = rng.integers(len(y_tr), size=args.batch_size)
        for i in ids:
            x, _ = random_affine(x_tr[i].astype(np.float32) / 255.0, [], rng, rot_deg=15, scale=(0.85, 1.15), shift=0.08)
            # degradations twice as often as for segmentation: noise, blur and resolution differ by source
            x = degrade(degrade(intensity(x, rng), rng), rng)
            xs.append(x)
        return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(y_tr[ids]).long()

    ce = torch.nn.CrossEntropyLoss(weight=class_w.to(device), label_smoothing=args.label_smoothing)

    def validate(m):
        lg = logits_of(m, x_va, device=device)
        return class_metrics(softmax(lg), y_va, CLASSES)

    timer = common.Timer()
    from train.loop import fit

    result = fit(model, run, make_batch=make_batch, loss_fn=lambda lg, y, x: ce(lg, y), validate=validate,
                 score_key="macro_f1", epochs=args.epochs, steps_per_epoch=steps, lr=args.lr,
                 weight_decay=args.weight_decay, seed=args.seed, device=device, resume=args.resume,
                 patience=args.patience, progress=not args.no_progress)
    t = fit_temperature(logits_of(model, x_va, device=device), y_va)
    model.temperature = t
    model._hub_mixin_config["temperature"] = t
    run.log.info(f"temperature fitted on validation: {t:.3f}")
    candidate = run.dir / "candidate"
    common.export_weights(model, candidate)
    info = {"command": "python -m train " + " ".join(sys.argv[1:]), "best_epoch": result["best_epoch"],
            "epochs_run": len(run.history()), "train_seconds": round(result["train_seconds"], 1),
            "wall_seconds_this_process": round(timer(), 1), "images_seen": result["images_seen"],
            "images_per_s": round(result["images_per_s"], 2), "val_best_macro_f1": result["best_score"],
            "temperature": t, "machine": common.machine_info(), "args": vars(args)}
    (run.dir / "train_info.json").write_text(json.dumps(info, indent=1, default=str))
    from train import evaluate

    evaluate.main(["--weights", str(candidate), "--run-dir", str(run.dir), "--data", str(Path(args.test_dir).parent)])
    from train.promote import promote

    shipped, why = promote(candidate, args.out, force=args.force)
    run.log.info(why)
    return 0


def evaluate_classifier(weights: Path, run_dir: Path, data_root: str | None, info: dict, eval_cmd: str) -> dict:
    """Card for a classifier folder: Testing metrics (deduplicated, leaks dropped), calibrated and not, degraded."""
    import datetime as _dt

    from bt_demo.models.nets import ClassifierNet
    from train.evaluate import floor

    root = Path(data_root) if data_root else DATA_DEFAULT
    model = ClassifierNet.from_pretrained(str(weights), strict=True).float().eval()
    split = json.loads((run_dir / "split.json").read_text()) if (run_dir / "split.json").exists() else {}
    train_hashes = set(split.get("train_hashes", [])) or set(read_class_folder(root / "Training", model.class_names).hashes)
    test = read_class_folder(root / "Testing", model.class_names, exclude_hashes=train_hashes)
    x = letterboxed(test.images, model.input_size, model.fit)
    lg = logits_of(model, x)
    m_cal = class_metrics(softmax(lg / model.temperature), test.labels, model.class_names)
    m_raw = class_metrics(softmax(lg), test.labels, model.class_names)
    deg = {}
    for kind in ("noise", "blur", "downsample"):
        deg[kind] = class_metrics(softmax(logits_of(model, degraded(x, kind)) / model.temperature), test.labels,
                                  model.class_names)
    plots = _class_plots(run_dir, m_cal, softmax(lg / model.temperature), softmax(lg), test.labels, model.class_names)
    metrics = {"evaluated_on": "Testing folder, deduplicated, images also in Training dropped",
               **{k: v for k, v in m_cal.items()}, "ece_before_temperature": m_raw["ece"],
               "n_test_dropped": test.dropped, "degraded": deg}
    return {"model": f"bt_demo tumour classifier ({model.backbone.__class__.__name__})", "task": "classification",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "config": json.loads((weights / "config.json").read_text()), "data": SARTAJ_DATA | {"path": str(root)},
            "split": {"method": "Training/ split 85/15 stratified by class (sklearn train_test_split); Testing/ held out",
                      "n_train": len(split.get("train", [])), "n_val": len(split.get("val", []))},
            "metrics": metrics, "floors": {"macro_f1": floor(m_cal["macro_f1"]), "accuracy": floor(m_cal["accuracy"]),
                                           "ece_max": round(m_cal["ece"] + 0.03, 3)},
            "training": info, "plots": plots, "evaluate_command": eval_cmd}


def _class_plots(run_dir: Path, m: dict, probs_cal, probs_raw, labels, names) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    cm = np.array(m["confusion_matrix"])
    ax[0].imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax[0].text(j, i, str(v), ha="center", va="center")
    ax[0].set_xticks(range(len(names)), names, rotation=30); ax[0].set_yticks(range(len(names)), names)
    ax[0].set_xlabel("predicted"); ax[0].set_ylabel("true"); ax[0].set_title("confusion matrix (test)")
    for probs, lab in ((probs_raw, "before temperature"), (probs_cal, "after temperature")):
        conf, correct = probs.max(1), probs.argmax(1) == labels
        edges = np.linspace(0, 1, 11)
        xs, ys = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            k = (conf > lo) & (conf <= hi)
            if k.any():
                xs.append(conf[k].mean()); ys.append(correct[k].mean())
        ax[1].plot(xs, ys, "o-", label=lab)
    ax[1].plot([0, 1], [0, 1], "k--", lw=0.8); ax[1].legend(); ax[1].set_title("reliability (test)")
    ax[1].set_xlabel("confidence"); ax[1].set_ylabel("accuracy")
    fig.tight_layout()
    out = run_dir / "classifier_eval.png"
    fig.savefig(out, dpi=90); plt.close(fig)
    return [str(out)]


if __name__ == "__main__":
    raise SystemExit(main())
