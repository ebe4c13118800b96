"""`python -m train evaluate`: measure a weights folder on held-out data and write its model card.

Writes ``card.json`` and ``card.md`` beside the weights and plots (PNG) under
the run folder. Segmentation and click models are measured on the run's *test*
patients (never used for training, checkpoint or post-processing choice).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import numpy as np

from train import lgg

LGG_DATA = {
    "name": "LGG MRI Segmentation (Buda et al.), FLAIR-only development subset (85 patients)",
    "source": "TCGA-LGG via Kaggle mateuszbuda/lgg-mri-segmentation; copied from GitHub hua2980/brain-tumor-segmentation @ 383f3c2",
    "licence": "Not stated in the source repository; the Kaggle page is believed to give CC BY-NC-SA 4.0. "
               "Treat these weights as non-commercial research/demo use, with attribution.",
    "citation": "Buda M, Saha A, Mazurowski MA. Computers in Biology and Medicine 109 (2019). doi:10.1016/j.compbiomed.2019.05.002",
}
NOT_FOR_DIAGNOSIS = "Research demo only. Not a medical device; not for diagnosis or treatment decisions."


def floor(x: float, margin: float = 0.03) -> float:
    """A floor a little under a measured value, for the regression test."""
    return round(max(0.0, x - margin), 3)


def write_plots(run_dir: Path, per_patient: dict | None, key: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    hist_p = run_dir / "metrics.jsonl"
    if hist_p.exists():
        hist = [json.loads(l) for l in hist_p.read_text().splitlines() if l.strip()]
        if hist:
            fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
            ep = [h["epoch"] for h in hist]
            ax[0].plot(ep, [h["loss"] for h in hist]); ax[0].set_title("training loss"); ax[0].set_xlabel("epoch")
            ax[1].plot(ep, [h.get(key, np.nan) for h in hist]); ax[1].set_title(f"validation {key}"); ax[1].set_xlabel("epoch")
            fig.tight_layout(); fig.savefig(run_dir / "curves.png", dpi=90); plt.close(fig)
            out.append(str(run_dir / "curves.png"))
    if per_patient:
        fig, ax = plt.subplots(figsize=(9, 3.2))
        names = list(per_patient)
        ax.bar(range(len(names)), [per_patient[n] for n in names])
        ax.set_xticks(range(len(names)), [n.split("_")[1] + "_" + n.split("_")[2] if n.count("_") >= 2 else n for n in names],
                      rotation=70, fontsize=7)
        ax.set_ylim(0, 1); ax.set_title("test Dice per patient (stacked slices)")
        fig.tight_layout(); fig.savefig(run_dir / "dice_per_patient.png", dpi=90); plt.close(fig)
        out.append(str(run_dir / "dice_per_patient.png"))
    return out


def write_card(weights: Path, card: dict) -> None:
    from train.common import portable

    card = portable(card)  # a card travels with the weights: no paths of the machine that trained them
    (weights / "card.json").write_text(json.dumps(card, indent=1, default=str))
    lines = [f"# {card['model']}", "", NOT_FOR_DIAGNOSIS, "", f"Task: {card['task']}", ""]
    lines += ["## Data", ""] + [f"- {k}: {v}" for k, v in card["data"].items()] + [""]
    lines += ["## Held-out metrics (reported once)", ""]
    lines += [f"- {k}: {v}" for k, v in card["metrics"].items() if not isinstance(v, (dict, list))] + [""]
    if card.get("metrics_validation_patients"):
        lines += ["## Validation patients (checkpoint and post-processing were chosen on them: flattering)", ""]
        lines += [f"- {k}: {v}" for k, v in card["metrics_validation_patients"].items()
                  if not isinstance(v, (dict, list))] + [""]
    lines += ["## Floors checked by tests/test_shipped_models.py", ""] + (
        [f"- {k}: {v}" for k, v in card["floors"].items()] or ["- none for this task"]) + [""]
    tr = card.get("training", {})
    lines += ["## Training", ""] + [f"- {k}: {v}" for k, v in tr.items() if not isinstance(v, (dict, list))]
    lines += [f"- {k}: " + ", ".join(f"{a}={b}" for a, b in v.items()) for k, v in tr.items()
              if isinstance(v, dict) and v and k != "machine"] + [""]
    lines += ["## Reproduce", "", "```", card.get("training", {}).get("command", ""), card["evaluate_command"], "```", ""]
    (weights / "card.md").write_text("\n".join(lines))


def evaluate_segnet(weights: Path, run_dir: Path, data_root: str, patients: list[str] | None = None,
                    device: str = "cpu", n_clicks: int = 20) -> dict:
    """Metrics of a SegNet folder (task segmentation or clicks) on the given (default: test) patients."""
    from bt_demo.models.nets import SegNet
    from train.seg_eval import apply_post, click_protocol, click_summary, predict_probs, seg_metrics

    model = SegNet.from_pretrained(str(weights), strict=True).float().eval()
    if patients is None:
        patients = json.loads((run_dir / "split.json").read_text())["test"]
    data = lgg.load_lgg(data_root, patients=patients)
    if model.task == "segmentation":
        probs = predict_probs(model, data.images, device=device)
        scale = max(data.images.shape[1:]) / model.input_size  # as the app's engine converts it
        min_px = int(round(model.min_component_px * scale * scale))
        m = seg_metrics(apply_post(probs, model.threshold, min_px), data.masks, data.patients)
        m_raw = seg_metrics(probs >= 0.5, data.masks, data.patients)
        m["patient_dice_mean_without_postprocessing"] = m_raw["patient_dice_mean"]
        return m
    t = data.has_tumour
    dice = click_protocol(model, data.images[t], data.masks[t], n_clicks=n_clicks, device=device)
    off = click_protocol(model, data.images[t], data.masks[t], n_clicks=min(n_clicks, 10), device=device,
                         first="random")
    s_off = click_summary(off)
    return {"n_tumour_slices": int(t.sum()), "n_patients": len(set(data.patients.tolist())), **click_summary(dice),
            "off_centre_first_click": {k: s_off[k] for k in ("dice_after_1_clicks", "dice_after_3_clicks",
                                                              "dice_after_10_clicks") if k in s_off},
            "off_centre_cost_at_1_click": float(dice[:, 0].mean() - off[:, 0].mean()),
            "dice_curve": [float(v) for v in dice.mean(0)]}


def measure_only(args, argv: list[str]) -> int:
    """--json-out: a shipped U-Net or click model on its card's validation or test patients, e.g. before and after
    a new model replaces it on the same patients."""
    from train.lgg import LGG_DEFAULT

    card = json.loads((Path(args.weights) / "card.json").read_text())
    patients = card["split"][f"{args.split}_patients"]
    m = evaluate_segnet(Path(args.weights), None, args.data or str(LGG_DEFAULT), patients=patients, device=args.device)
    out = {"weights": args.weights, "split": args.split, "patients": patients, "card_created": card.get("created"),
           "command": "python -m train evaluate " + " ".join(argv), "metrics": m}
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in m.items() if not isinstance(v, (dict, list))}, indent=1))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train evaluate", description=__doc__)
    p.add_argument("--weights", required=True, help="weights folder (config.json + model.safetensors)")
    p.add_argument("--run-dir", default=None,
                   help="the training run folder (split.json, train_info.json, metrics.jsonl); required to write a card")
    p.add_argument("--json-out", default=None,
                   help="U-Net / click model: only measure on the card's --split patients and write this JSON (no card)")
    p.add_argument("--split", choices=("test", "val"), default="test", help="with --json-out: which patients of the card")
    p.add_argument("--data", default=None, help="data root (LGG folder, or the class-folder root for the classifier)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.json_out:
        return measure_only(args, argv if argv is not None else sys.argv[1:])
    if not args.run_dir:
        p.error("--run-dir is required to write a card (or give --json-out to only measure)")
    weights, run_dir = Path(args.weights), Path(args.run_dir)
    cfg = json.loads((weights / "config.json").read_text())
    info = json.loads((run_dir / "train_info.json").read_text()) if (run_dir / "train_info.json").exists() else {}
    eval_cmd = "python -m train evaluate " + " ".join(argv if argv is not None else sys.argv[1:])
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if "class_names" in cfg:
        from train.classifier import evaluate_classifier

        card = evaluate_classifier(weights, run_dir, args.data, info, eval_cmd)
    else:
        from train.lgg import LGG_DEFAULT

        data_root = args.data or str(LGG_DEFAULT)
        split = json.loads((run_dir / "split.json").read_text())
        m = evaluate_segnet(weights, run_dir, data_root, device=args.device)
        task = cfg.get("task", "segmentation")
        if task == "segmentation":
            floors = {"patient_dice_mean": floor(m["patient_dice_mean"]),
                      "slice_dice_tumour_mean": floor(m["slice_dice_tumour_mean"])}
            key = "patient_dice_mean"
        else:
            floors = {"dice_after_1_clicks": floor(m["dice_after_1_clicks"]),
                      "dice_after_3_clicks": floor(m["dice_after_3_clicks"])}
            key = "dice_after_3_clicks"
        plots = write_plots(run_dir, m.get("per_patient"), key)
        card = {"model": f"bt_demo {'U-Net' if task == 'segmentation' else 'click model'} ({cfg.get('encoder_name')})",
                "task": task, "created": now, "config": cfg, "data": LGG_DATA | {"path": data_root},
                "split": {"method": "sklearn GroupShuffleSplit by patient (test first, then validation)",
                          "train_patients": split["train"], "val_patients": split["val"], "test_patients": split["test"]},
                "metrics": {"evaluated_on": "test patients", **m}, "floors": floors,
                "floor_patients": split["test"], "training": info, "plots": plots, "evaluate_command": eval_cmd}
        if split.get("val"):  # the issue targets are read here (checkpoint and post-processing were chosen on them)
            card["metrics_validation_patients"] = evaluate_segnet(weights, run_dir, data_root, patients=split["val"],
                                                                  device=args.device)
    write_card(weights, card)
    print(json.dumps({k: v for k, v in card["metrics"].items() if not isinstance(v, (dict, list))}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
