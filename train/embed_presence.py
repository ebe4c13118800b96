"""`python -m train embed-heads --head presence`: a tumour-presence head on LiteMedSAM's frozen encoder, per
sequence (issue 25, parts 1-2).

Data: the pooled stage vectors of the embedding caches (``python -m train embeddings --per-patient 8``):
LGG FLAIR (``runs/embeddings/lgg``) and the same patients' post-contrast T1 (``runs/embeddings/lgg_t1ce``),
tumour >= 200 px against tumour-free slices (slices with less tumour are left out), and figshare's T1-CE
slices (every one holds a tumour: positives only). Patients are split as the shipped classifier's presence
head was (``weights/classifier/card.json``: 68 training, 17 validation LGG patients), so the shipped small
CNN can stand in the same table on the same validation slices.

Rows (``--train-on``):

    flair            LGG FLAIR training patients only (what the shipped CNN learnt from)
    flair+t1ce       FLAIR and T1-CE of the training patients: both sequences, no new source
    flair+t1ce+fig   ... plus figshare folds 1-3 as extra positives; fold 4 is held out for the recall row.
                     Kept only if it does not teach the source: T1-CE tumour-free recall and AUC must not drop

The head: standardised features -> logistic regression; C from a grid by a grouped 4-fold CV over the
training patients (ROC AUC), the temperature fitted on those out-of-fold logits, the threshold 0.5 (the
shipped one). Reported once on the validation patients, per sequence: ROC AUC, tumour and tumour-free recall
at the threshold, ECE; figshare fold 4 tumour recall.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

GRID = [0.001, 0.003, 0.01, 0.03, 0.1]
MIN_PX = 200
TRAIN_ON = ("flair", "flair+t1ce", "flair+t1ce+fig")


def lgg_rows(dataset: str, cache_dir: str | Path, data_root: str | Path, per_patient: int = 8):
    """(features, labels 0/1, patients, ids) of the presence subset (``embeddings.presence_subset``) that the
    cache holds; tumour >= MIN_PX is 1, tumour-free 0."""
    from bt_demo.models.medsam import POOLED_DIM
    from train.embeddings import list_items, open_cache, presence_subset

    cache = open_cache(cache_dir) if Path(cache_dir, "manifest.jsonl").exists() else None
    ids, x = cache.pooled() if cache is not None else ([], np.zeros((0, POOLED_DIM), np.float32))
    if not ids:
        return np.zeros((0, POOLED_DIM), np.float32), np.zeros(0, int), np.array([], str), []
    pos = {i: k for k, i in enumerate(ids)}
    subset = presence_subset(list_items(dataset, data_root), per_patient, MIN_PX)
    keep = [it for it in subset if it.id in pos]
    y = np.array([int(it.meta.get("mask_pixels", 0) >= MIN_PX) for it in keep])
    return (x[[pos[it.id] for it in keep]], y, np.array([it.meta["patient"] for it in keep]),
            [it.id for it in keep])


def figshare_rows(cache_dir: str | Path):
    """(features, folds, ids) of every cached figshare slice (all hold a tumour)."""
    from train.embeddings import open_cache

    cache = open_cache(cache_dir)
    ids, x = cache.pooled()
    return x, np.array([int(cache.rows[i]["fold"]) for i in ids]), ids


def _head(c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))


def _logit2(z: np.ndarray) -> np.ndarray:
    return np.stack([np.zeros_like(z), z], 1)


def choose(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[float, float, dict]:
    """(C, temperature, AUC per C) by a grouped 4-fold CV over the training patients."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    from train.classifier import fit_temperature

    best, scores = (-1.0, None, None), {}
    for c in GRID:
        oof = np.zeros(len(y))
        for tr, va in GroupKFold(4).split(x, y, groups):
            oof[va] = _head(c).fit(x[tr], y[tr]).decision_function(x[va])
        scores[str(c)] = float(roc_auc_score(y, oof))
        if scores[str(c)] > best[0]:
            best = (scores[str(c)], c, oof)
    return best[1], float(fit_temperature(_logit2(best[2]), y)), scores


def score(p: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> dict:
    """ROC AUC (when both classes are present), recall of each class at ``threshold``, ECE, n."""
    from sklearn.metrics import roc_auc_score

    from train.classifier import ece

    out: dict = {"n": int(len(y)), "n_tumour": int(np.sum(y))}
    if 0 < y.sum() < len(y):
        out["roc_auc"] = float(roc_auc_score(y, p))
        out["ece"] = float(ece(np.stack([1 - p, p], 1), y))
    if y.sum():
        out["tumour_recall"] = float((p[y == 1] >= threshold).mean())
    if (y == 0).any():
        out["no_tumour_recall"] = float((p[y == 0] < threshold).mean())
    return out


def shipped_cnn(split: dict, data: dict) -> dict:
    """The shipped small CNN's presence probability on the same validation slices (read from the data)."""
    from bt_demo.models.classifier import PRESENCE, ClassifierEngine
    from train.embeddings import list_items, read_image

    eng = ClassifierEngine.load("weights/classifier")
    if isinstance(eng, str):
        return {"unavailable": eng}
    out = {}
    for name, (dataset, root, ids, y) in data.items():
        files = {it.id: it.path for it in list_items(dataset, root)}
        p = np.array([eng.head_probabilities(read_image(dataset, files[i]).astype(np.float32), PRESENCE)["tumour"]
                      for i in ids])
        out[name] = score(p, y)
    return out


def run(train_on: str, flair_cache: str, t1ce_cache: str, fig_cache: str, out: str | Path,
        with_cnn: bool = True, export: str | Path | None = None, data_root: str | Path | None = None,
        split_card: str | Path = "weights/classifier/card.json", log=print) -> dict:
    """One row: fit on ``train_on`` of the card's training patients, report on its validation patients.
    data_root: the folder holding lgg/, lgg_sequences/ and figshare/ (default ../shared/data)."""
    from train.lgg import DATA_ROOT

    root = Path(data_root) if data_root is not None else DATA_ROOT

    if train_on not in TRAIN_ON:
        raise SystemExit(f"--train-on must be one of {', '.join(TRAIN_ON)}")
    t0 = time.perf_counter()
    split = json.loads(Path(split_card).read_text())["split"]["presence"]
    train_p, val_p = set(split["train"]), set(split["val"])
    fl = lgg_rows("lgg", flair_cache, root / "lgg")
    tc = lgg_rows("lgg_t1ce", t1ce_cache, root / "lgg_sequences")
    fx, ffold, fids = figshare_rows(fig_cache)

    def part(rows, pats):
        x, y, g, ids = rows
        k = np.isin(g, list(pats))
        return x[k], y[k], g[k], [i for i, m in zip(ids, k, strict=True) if m]

    if "t1ce" in train_on and not len(tc[1]):
        raise SystemExit(f"no T1-CE embeddings in {t1ce_cache}: python -m train embeddings --dataset lgg_t1ce "
                         "--per-patient 8")
    parts = [part(fl, train_p)] + ([part(tc, train_p)] if "t1ce" in train_on else [])
    xs, ys, gs = [p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts]
    if train_on.endswith("+fig"):
        k = ffold != 4
        xs.append(fx[k])
        ys.append(np.ones(int(k.sum()), int))
        gs.append(np.array([f"figshare_fold{f}" for f in ffold[k]]))  # a fold is a group: no patient in two
    x, y, g = np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)
    log(f"[presence] {train_on}: {len(y)} training slices ({int(y.sum())} tumour), "
        f"{len(set(g.tolist()))} groups")
    c, t, cv = choose(x, y, g)
    head = _head(c).fit(x, y)

    def prob(xv):
        if not len(xv):
            return np.zeros(0)
        return 1.0 / (1.0 + np.exp(-head.decision_function(xv) / t))

    vf, vt = part(fl, val_p), part(tc, val_p)
    kf = ffold == 4
    res = {"train_on": train_on, "setting_C": c, "temperature": t, "cv_auc_by_C": cv,
           "n_train": int(len(y)), "n_train_tumour": int(y.sum()),
           "val_patients": sorted(val_p), "val": {"flair": score(prob(vf[0]), vf[1]),
                                                   "t1ce": score(prob(vt[0]), vt[1]),
                                                   "figshare_fold4": score(prob(fx[kf]), np.ones(int(kf.sum()), int))}}
    if with_cnn:
        res["shipped_cnn"] = shipped_cnn(split, {
            "flair": ("lgg", root / "lgg", vf[3], vf[1]),
            "t1ce": ("lgg_t1ce", root / "lgg_sequences", vt[3], vt[1]),
            "figshare_fold4": ("figshare", root / "figshare", [i for i, m in zip(fids, kf, strict=True) if m],
                               np.ones(int(kf.sum()), int))})
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["command"] = (f"python -m train embed-heads --head presence --train-on {train_on} --out {out}"
                      + (f" --export {export}" if export else ""))
    if export:
        from bt_demo.models.encoder_heads import save_head
        from train.classifier import fold_linear

        w, b = fold_linear(head)
        v = res["val"]
        summary = (f"presence AUC {v['flair'].get('roc_auc', float('nan')):.3f} FLAIR / "
                   f"{v['t1ce'].get('roc_auc', float('nan')):.3f} T1-CE on {len(val_p)} validation patients")
        card = {"model": "tumour-presence head on LiteMedSAM features", "trained_on": train_on,
                "data": "LGG FLAIR and post-contrast T1 slices (TCGA-LGG, Buda et al.; see ../shared/data/README.md)"
                        + ("; figshare folds 1-3 tumour slices (Cheng et al.; CC BY 4.0)" if "fig" in train_on else ""),
                "licence_of_these_weights": "non-commercial research/demo use, with attribution (the LGG data's "
                                            "terms: believed CC BY-NC-SA 4.0; see weights/unet/card.md)",
                "split": "the shipped classifier's presence split (weights/classifier/card.json)",
                "validation": v, "setting_C": c, "temperature": t, "command": res["command"], "summary": summary}
        save_head(export, "presence", w, b, {"classes": ["no_tumour", "tumour"], "temperature": t,
                                             "threshold": 0.5, "setting_C": c, "trained_on": train_on}, card)
        log(f"[presence] exported to {export}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    v = res["val"]
    log(f"[presence] {train_on}: C {c}, T {t:.2f}; FLAIR AUC {v['flair'].get('roc_auc', float('nan')):.3f}, "
        f"T1-CE AUC {v['t1ce'].get('roc_auc', float('nan')):.3f}, figshare fold-4 recall "
        f"{v['figshare_fold4']['tumour_recall']:.3f}")
    return res


def report_lines(root: str | Path) -> list[str]:
    """docs/studies.md rows: one per ``root/presence_*/results.json``, and the shipped CNN on the same slices."""
    runs = [json.loads(p.read_text()) for p in sorted(Path(root).glob("presence_*/results.json"))]
    if not runs:
        return []

    def cells(v: dict) -> str:
        f, t, fig = v["flair"], v["t1ce"], v["figshare_fold4"]
        return (f"{f.get('roc_auc', float('nan')):.3f} | {t.get('roc_auc', float('nan')):.3f} | "
                f"{f.get('tumour_recall', float('nan')):.2f} / {f.get('no_tumour_recall', float('nan')):.2f} | "
                f"{t.get('tumour_recall', float('nan')):.2f} / {t.get('no_tumour_recall', float('nan')):.2f} | "
                f"{fig.get('tumour_recall', float('nan')):.3f} | {f.get('ece', float('nan')):.3f} / "
                f"{t.get('ece', float('nan')):.3f}")

    r0 = runs[0]
    v = r0["val"]
    lines = ["### Presence on every sequence", "",
             f"Validation: the shipped classifier's {len(r0['val_patients'])} presence validation patients "
             f"(FLAIR {v['flair']['n']} slices, {v['flair']['n_tumour']} with tumour; T1-CE {v['t1ce']['n']}, "
             f"{v['t1ce']['n_tumour']}), tumour >= 200 px vs tumour-free, up to 8 of each per patient; figshare "
             f"fold 4 ({v['figshare_fold4']['n']} T1-CE tumour slices). Threshold 0.5 after temperature.", "",
             "| head | trained on | AUC FLAIR | AUC T1-CE | FLAIR recall tumour / free | T1-CE recall tumour / free "
             "| figshare recall | ECE FLAIR / T1-CE |", "|---|---|---|---|---|---|---|---|"]
    cnn = r0.get("shipped_cnn", {})
    if "flair" in cnn:
        lines.append(f"| shipped small CNN (`weights/classifier`) | LGG FLAIR | {cells(cnn)} |")
    for r in runs:
        lines.append(f"| linear on LiteMedSAM pooled stages (C {r['setting_C']}) | {r['train_on']} "
                     f"({r['n_train']} slices) | {cells(r['val'])} |")
    return lines + [""]
