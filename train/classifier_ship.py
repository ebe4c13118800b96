"""`python -m train classifier-ship`: assemble a presence run and a type run into ``weights/classifier``.

The type head's numbers are the cross-validation over every ``--type-runs``
folder (one per held-out figshare fold: mean and spread); the shipped type
network is the one whose validation fold is ``--ship-fold``. The presence
head's numbers are its held-out LGG patients'. Both heads are also measured
on the other sources (the presence head on figshare's tumour slices, both on
the Sartaj Testing folder as an external check with its caveat). Writes the
card (``card.json`` / ``card.md``) and plots, then replaces ``--out`` only
when the type macro-F1 beats the shipped card's (``--force`` overrides).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import numpy as np

from train import cls_data, common


def _load_results(run: Path) -> dict:
    p = run / "results.json"
    if not p.exists():
        raise SystemExit(f"{run} has no results.json: train it first (python -m train classifier ...)")
    return json.loads(p.read_text())


def cv_summary(results: list[dict]) -> dict:
    """Mean and spread over folds of the validation metrics of several type runs."""
    def stats(vals):
        return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0

    f1 = [r["val"]["macro_f1"] for r in results]
    acc = [r["val"]["accuracy"] for r in results]
    out = {"n_folds": len(results), "folds": [r["split"]["val_fold"] for r in results],
           "cv_macro_f1_mean": stats(f1)[0], "cv_macro_f1_sd": stats(f1)[1],
           "cv_accuracy_mean": stats(acc)[0], "cv_accuracy_sd": stats(acc)[1],
           "per_fold_macro_f1": {str(r["split"]["val_fold"]): r["val"]["macro_f1"] for r in results},
           "cv_ece_before_temperature_mean": float(np.mean([r["val"]["ece_before_temperature"] for r in results])),
           "cv_ece_mean": float(np.mean([r["val"]["ece"] for r in results])),
           "cv_recall_mean": {k: float(np.mean([r["val"]["recall"][k] for r in results]))
                              for k in results[0]["val"]["recall"]},
           "confusion_matrix_summed": np.sum([r["val"]["confusion_matrix"] for r in results], axis=0).tolist(),
           "cv_degraded_macro_f1_mean": {k: float(np.mean([r["val"]["degraded"][k]["macro_f1"] for r in results]))
                                         for k in results[0]["val"]["degraded"]}}
    out["cv_degraded_drop"] = {k: out["cv_macro_f1_mean"] - v for k, v in out["cv_degraded_macro_f1_mean"].items()}
    return out


def assemble(presence_dir: Path, type_dir: Path):
    """A TumourClassifier holding the two candidates' weights and temperatures."""
    import torch

    from bt_demo.models.nets import ClassifierNet, TumourClassifier

    p = ClassifierNet.from_pretrained(str(presence_dir), strict=True)
    t = ClassifierNet.from_pretrained(str(type_dir), strict=True)
    cfg_p = json.loads((presence_dir / "config.json").read_text())
    cfg_t = json.loads((type_dir / "config.json").read_text())
    model = TumourClassifier(presence=cfg_p, tumour_type=cfg_t)
    with torch.no_grad():
        model.presence.load_state_dict(p.state_dict())
        model.tumour_type.load_state_dict(t.state_dict())
    return model.float().eval()


def external_checks(model, figshare_dir=None, sartaj_dir=None) -> dict:
    """Both heads on the sources they were not trained on (figshare tumour slices; Sartaj Testing)."""
    from train.classifier import class_metrics, logits_of, softmax

    out: dict = {}
    pres = model.presence
    fig = cls_data.figshare(pres.input_size, pres.fit, figshare_dir)
    pf = softmax(logits_of(pres, fig.x) / pres.temperature)[:, 1]
    out["presence_on_figshare_tumour_slices"] = {
        "what": "every figshare slice has a tumour (T1 contrast-enhanced; the presence head was trained on FLAIR)",
        "tumour_recall": float((pf >= 0.5).mean()), "n": int(len(pf))}
    try:
        s_p = cls_data.sartaj_testing(pres.input_size, pres.fit, sartaj_dir)
        s_t = cls_data.sartaj_testing(model.tumour_type.input_size, model.tumour_type.fit, sartaj_dir)
    except FileNotFoundError:
        return out
    y4 = s_p.y  # glioma, meningioma, no_tumour, pituitary
    prob_t = softmax(logits_of(pres, s_p.x) / pres.temperature)[:, 1]
    pres_m = class_metrics(np.stack([1 - prob_t, prob_t], 1), (y4 != 2).astype(int), cls_data.PRESENCE_CLASSES)
    tt = model.tumour_type
    types = softmax(logits_of(tt, s_t.x) / tt.temperature)
    tum = y4 != 2
    ymap = {0: 0, 1: 1, 3: 2}
    type_m = class_metrics(types[tum], np.array([ymap[v] for v in y4[tum]]), cls_data.TYPE_CLASSES)
    four = np.concatenate([(1 - prob_t)[:, None], prob_t[:, None] * types], 1)  # no_tumour, glioma, meningioma, pituitary
    y_four = np.array([{0: 1, 1: 2, 2: 0, 3: 3}[v] for v in y4])
    four_m = class_metrics(four, y_four, ["no_tumour", *cls_data.TYPE_CLASSES])
    out["sartaj_testing"] = {"caveat": cls_data.SARTAJ_CAVEAT, "presence": _brief(pres_m), "type_given_tumour": _brief(type_m),
                             "four_class": _brief(four_m)}
    return out


def _brief(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "degraded"}


def plots(out_dir: Path, cv: dict, presence: dict, names_t: list[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    for a, cm, names, title in ((ax[0], cv["confusion_matrix_summed"], names_t, "type: folds 1-4 held out in turn"),
                                (ax[1], presence["confusion_matrix"], ["no tumour", "tumour"],
                                 "presence: held-out LGG patients")):
        cm = np.array(cm)
        a.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            a.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
        a.set_xticks(range(len(names)), names, rotation=20); a.set_yticks(range(len(names)), names)
        a.set_xlabel("predicted"); a.set_ylabel("true"); a.set_title(title, fontsize=10)
    kinds = ["clean", *cv["cv_degraded_macro_f1_mean"]]
    ty = [cv["cv_macro_f1_mean"], *cv["cv_degraded_macro_f1_mean"].values()]
    pr = [presence["macro_f1"], *[presence["degraded"][k]["macro_f1"] for k in cv["cv_degraded_macro_f1_mean"]]]
    xs = np.arange(len(kinds))
    ax[2].bar(xs - 0.2, ty, 0.4, label="type (CV mean)")
    ax[2].bar(xs + 0.2, pr, 0.4, label="presence")
    ax[2].set_xticks(xs, kinds); ax[2].set_ylim(0, 1); ax[2].set_ylabel("macro-F1"); ax[2].legend(fontsize=8)
    ax[2].set_title("clean vs degraded", fontsize=10)
    fig.tight_layout()
    p = out_dir / "classifier_shipped.png"
    fig.savefig(p, dpi=90); plt.close(fig)
    return [str(p)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train classifier-ship", description=__doc__)
    p.add_argument("--type-runs", nargs="+", required=True, help="type-head run folders, one per held-out fold")
    p.add_argument("--presence-run", required=True)
    p.add_argument("--ship-fold", type=int, default=4, help="the validation fold of the type network shipped")
    p.add_argument("--out", default="weights/classifier")
    p.add_argument("--run-dir", default="runs/classifier_ship")
    p.add_argument("--force", action="store_true")
    p.add_argument("--figshare-dir", default=None, help="default: ../shared/data/figshare")
    p.add_argument("--sartaj-dir", default=None, help="default: ../shared/data/classification/sartaj_4class")
    p.add_argument("--cache-dir", default=str(cls_data.CACHE))
    args = p.parse_args(argv)
    cls_data.CACHE = Path(args.cache_dir)
    type_runs = [Path(r) for r in args.type_runs]
    t_res = [_load_results(r) for r in type_runs]
    ship = [r for r, res in zip(type_runs, t_res, strict=True) if res["split"].get("val_fold") == args.ship_fold]
    if not ship:
        raise SystemExit(f"no type run validated on fold {args.ship_fold} among {args.type_runs}")
    p_run = Path(args.presence_run)
    p_res = _load_results(p_run)
    model = assemble(p_run / "candidate", ship[0] / "candidate")
    run_dir = Path(args.run_dir)
    candidate = run_dir / "candidate"
    common.export_weights(model, candidate)
    cv = cv_summary(t_res)
    shipped_t = next(res for res in t_res if res["split"]["val_fold"] == args.ship_fold)
    pres = p_res["val"]
    presence = {**_brief(pres), "degraded": {k: _brief(v) for k, v in pres["degraded"].items()},
                "n_patients": len(p_res["split"]["val"]), "threshold": 0.5,
                "evaluated_on": "held-out LGG patients' FLAIR slices: tumour >= 200 px vs tumour-free"}
    ext = external_checks(model, args.figshare_dir, args.sartaj_dir)
    metrics = {"macro_f1": cv["cv_macro_f1_mean"], "type": cv | {"shipped_fold": args.ship_fold,
                                                                  "shipped_fold_metrics": _brief(shipped_t["val"])},
               "presence": presence, "other_sources": ext}
    # the headline numbers flat, so card.md lists them
    metrics |= {"type_cv_macro_f1_mean": cv["cv_macro_f1_mean"], "type_cv_macro_f1_sd": cv["cv_macro_f1_sd"],
                "type_cv_accuracy_mean": cv["cv_accuracy_mean"], "type_cv_ece_after_temperature": cv["cv_ece_mean"],
                "type_cv_ece_before_temperature": cv["cv_ece_before_temperature_mean"],
                "type_cv_worst_degraded_drop": max(cv["cv_degraded_drop"].values()),
                "presence_roc_auc": pres["roc_auc"], "presence_recall_tumour": pres["recall"]["tumour"],
                "presence_recall_no_tumour": pres["recall"]["no_tumour"], "presence_ece_after_temperature": pres["ece"],
                "presence_ece_before_temperature": pres["ece_before_temperature"],
                "presence_tumour_recall_on_figshare_t1ce": ext["presence_on_figshare_tumour_slices"]["tumour_recall"]}
    if "sartaj_testing" in ext:
        metrics["sartaj_testing_four_class_macro_f1_external"] = ext["sartaj_testing"]["four_class"]["macro_f1"]
    floors = {"type_macro_f1": common_floor(shipped_t["val"]["macro_f1"]),
              "type_ece_max": round(shipped_t["val"]["ece"] + 0.03, 3),
              "presence_roc_auc": common_floor(pres["roc_auc"]),
              "presence_ece_max": round(pres["ece"] + 0.03, 3)}
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    card = {"model": f"bt_demo tumour classifier (presence: {p_res['backbone']}, type: {shipped_t['backbone']})",
            "task": "classification", "created": now,
            "config": json.loads((candidate / "config.json").read_text()),
            "data": {"type head": cls_data.FIGSHARE_DATA, "presence head": _lgg_data(),
                     "external check": cls_data.SARTAJ_CAVEAT},
            "split": {"type": f"figshare folds 1-4 (author's patient-level split): each held out in turn; "
                              f"the shipped network was trained on the other three and validated on fold {args.ship_fold}",
                      "presence": p_res["split"]},
            "metrics": metrics, "floors": floors,
            "floor_data": {"type_val_fold": args.ship_fold, "presence_val_patients": p_res["split"]["val"]},
            "training": {"command": "python -m train classifier-ship " + " ".join(argv if argv is not None else sys.argv[1:]),
                         "type_commands": [r["command"] for r in t_res], "presence_command": p_res["command"],
                         "type_train_minutes": [r["train_minutes"] for r in t_res],
                         "presence_train_minutes": p_res["train_minutes"], "machine": common.machine_info(),
                         "pretrained": "no: every network here is trained from scratch"},
            "plots": plots(run_dir, cv, presence, cls_data.TYPE_CLASSES),
            "evaluate_command": "python -m pytest tests/test_shipped_models.py -k classifier"}
    from train.evaluate import write_card

    write_card(candidate, card)
    from train.promote import promote

    shipped, why = promote(candidate, args.out, force=args.force)
    print(why)
    print(json.dumps({"type_cv_macro_f1": [round(cv["cv_macro_f1_mean"], 4), round(cv["cv_macro_f1_sd"], 4)],
                      "presence_auc": round(pres["roc_auc"], 4), "presence_recall": pres["recall"]}, indent=1))
    return 0


def common_floor(x: float) -> float:
    from train.evaluate import floor

    return floor(x)


def _lgg_data() -> dict:
    from train.evaluate import LGG_DATA

    return LGG_DATA


if __name__ == "__main__":
    raise SystemExit(main())
