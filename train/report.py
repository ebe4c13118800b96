"""`python -m train report`: write ``docs/studies.md`` (and its PNG figures) from the studies' run folders.

Each section is built from the ``results.json`` files the runs wrote, so every
number in the document comes from a run whose exact command is listed beside
it. Sections whose runs are absent are left out (with a line saying so).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from train.common import portable

DEG = ("noise", "blur", "downsample")


def _rows(root: Path, prefix: str = "") -> list[dict]:
    out = []
    for p in sorted(root.glob(f"{prefix}*/results.json")):
        r = json.loads(p.read_text())
        r["_name"] = p.parent.name
        out.append(r)
    return out


def _fmt(x, nd=3) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def classifier_study(root: Path, fig_dir: Path) -> list[str]:
    rows = [r for r in _rows(root, "type_") if r.get("head") == "type"]
    if not rows:
        return ["## Classifier backbone study", "", f"No runs under `{root}` yet (`python -m train classifier-study`).", ""]
    budget = sorted({r["time_budget_s"] for r in rows})
    rows.sort(key=lambda r: -r["val"]["macro_f1"])
    lines = ["## Classifier backbone study (type head; seeds 000 and 003)", "",
             f"Every row: trained **from scratch** (no ImageNet weights can be downloaded here) on figshare folds 1-3, "
             f"validated on fold {rows[0]['split']['val_fold']} (the dataset author's patient-level split), input "
             f"{rows[0]['input_size']}², for the same budget of **{', '.join(f'{b:g}' for b in budget)} s of training "
             "on one CPU thread** (the speed of the first steps sets the step count, so a slower network sees fewer "
             "images: the *images seen* column), 3 epochs of that budget, best epoch by validation macro-F1. Two runs "
             "shared the 2-core machine at a time, with other work beside them, so the step counts carry some timing "
             "noise. Degraded: the validation inputs with Gaussian noise σ = 0.05, blur σ = 1.5 px, or 2× "
             "down-sampling. *Deg. training*: noise, blur and down-sampling at several strengths during training. "
             "Every run here was cut short by the CPU budget; none trained to convergence.", "",
             "| backbone | deg. training | macro-F1 clean | noise | blur | 2× down | worst drop | ECE before → after T | "
             "params (M) | CPU ms/img (128²) | train min | images seen | img/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v = r["val"]
        d = {k: v["degraded"][k]["macro_f1"] for k in DEG}
        lines.append(f"| {r['backbone']} | {'yes' if r['degrade_train'] else 'no'} | **{_fmt(v['macro_f1'])}** | "
                     f"{_fmt(d['noise'])} | {_fmt(d['blur'])} | {_fmt(d['downsample'])} | "
                     f"{_fmt(v['macro_f1'] - min(d.values()))} | {_fmt(v['ece_before_temperature'], 2)} → "
                     f"{_fmt(v['ece'], 2)} | {r['params_m']:.2f} | {r['ms_per_image_cpu']:.1f} | {r['train_minutes']:.1f} | "
                     f"{r['images_seen']:,} | {r['images_per_s']:.1f} |")
    best = rows[0]
    chance = [r for r in rows if r["val"]["macro_f1"] < 0.4]
    deg_gain = {bb: (on["val"]["macro_f1"], off["val"]["macro_f1"]) for bb in {r["backbone"] for r in rows}
                for on in rows if on["backbone"] == bb and on["degrade_train"]
                for off in rows if off["backbone"] == bb and not off["degrade_train"]}
    lines += ["", f"**Winner under this budget: {best['backbone']}{' with' if best['degrade_train'] else ' without'} "
              f"degradation training** (macro-F1 {best['val']['macro_f1']:.3f}, largest drop under degradation "
              f"{best['val']['macro_f1'] - min(best['val']['degraded'][k]['macro_f1'] for k in DEG):.3f}). "
              f"{len(chance)} of {len(rows)} rows stayed near chance (macro-F1 < 0.4: a three-class guess scores "
              "0.2-0.3): in the same CPU minutes the large networks saw a few thousand images, too few to learn "
              "from scratch; their degraded columns say nothing then. Degradation training, clean macro-F1 with / "
              "without: " + ", ".join(f"{bb} {a:.2f} / {b:.2f}" for bb, (a, b) in sorted(deg_gain.items())) + ".",
              "", "Commands (one per row, in the order above):", "", "```"]
    lines += [r["command"] for r in rows] + ["```", ""]
    m = rows[0]["machine"]
    lines += [f"Machine: {m['cpu_count']} CPU cores, {m['platform']}, Python {m['python']}, torch {m['torch']}; "
              f"{sum(r['train_minutes'] for r in rows):.0f} training minutes in all "
              "(`python -m train classifier-study --time-budget 240 --epochs 3`).", ""]
    png = _study_figure(rows, fig_dir / "classifier_study.png")
    lines += [f"![Clean vs degraded macro-F1 and confusion matrices of the study]({png})", ""]
    return lines


def _study_figure(rows: list[dict], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    fig = plt.figure(figsize=(max(10, 1.1 * n), 7.5))
    ax = fig.add_subplot(2, 1, 1)
    labels = [f"{r['backbone']}{' +deg' if r['degrade_train'] else ''}" for r in rows]
    xs = np.arange(n)
    for i, (key, name) in enumerate([("clean", "clean"), *[(k, k) for k in DEG]]):
        vals = [r["val"]["macro_f1"] if key == "clean" else r["val"]["degraded"][key]["macro_f1"] for r in rows]
        ax.bar(xs + (i - 1.5) * 0.2, vals, 0.2, label=name)
    ax.set_xticks(xs, labels, rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0, 1); ax.set_ylabel("macro-F1 (fold held out)"); ax.legend(fontsize=8, ncol=4)
    ax.set_title("type head: clean vs degraded validation inputs (same CPU budget per row)", fontsize=10)
    for j, r in enumerate(rows[: min(n, 6)]):
        a = fig.add_subplot(2, 6, 7 + j)
        cm = np.array(r["val"]["confusion_matrix"])
        a.imshow(cm, cmap="Blues")
        for (i2, j2), v in np.ndenumerate(cm):
            a.text(j2, i2, str(v), ha="center", va="center", fontsize=7,
                   color="white" if v > cm.max() / 2 else "black")
        a.set_xticks(range(3), ["gli", "men", "pit"], fontsize=7); a.set_yticks(range(3), ["gli", "men", "pit"], fontsize=7)
        a.set_title(labels[j], fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=80); plt.close(fig)
    return str(out.relative_to(out.parents[1]))


def classifier_shipped(weights: Path, fig_dir: Path) -> list[str]:
    card_p = weights / "card.json"
    if not card_p.exists():
        return []
    card = json.loads(card_p.read_text())
    m = card["metrics"]
    if "type" not in m:
        return []
    t, p = m["type"], m["presence"]
    t_drops = " / ".join(f"{t['cv_degraded_drop'][k]:+.3f}" for k in DEG)
    p_deg = " / ".join(f"{p['degraded'][k]['macro_f1']:.3f}" for k in DEG)
    lines = ["## Shipped classifier (`weights/classifier`)", "",
             f"{card['model']}. Type head: cross-validated over figshare folds "
             f"{', '.join(map(str, t['folds']))} (each held out in turn, trained on the others).", "",
             "| head | data it is measured on | metric | value |", "|---|---|---|---|",
             f"| type | figshare, {t['n_folds']} patient-level folds | macro-F1 mean ± SD | "
             f"**{t['cv_macro_f1_mean']:.3f} ± {t['cv_macro_f1_sd']:.3f}** |",
             f"| type | same | accuracy mean ± SD | {t['cv_accuracy_mean']:.3f} ± {t['cv_accuracy_sd']:.3f} |",
             f"| type | same | recall glioma / meningioma / pituitary | "
             f"{' / '.join(f'{v:.2f}' for v in t['cv_recall_mean'].values())} |",
             f"| type | same | ECE before → after temperature (mean) | {t['cv_ece_before_temperature_mean']:.3f} → "
             f"{t['cv_ece_mean']:.3f} |",
             f"| type | same | macro-F1 drop: noise / blur / 2× down | {t_drops} |",
             f"| presence | LGG FLAIR, {p['n_patients']} held-out patients (tumour ≥ 200 px vs none) | ROC AUC | "
             f"**{p['roc_auc']:.3f}** |",
             f"| presence | same | recall tumour / no tumour (threshold 0.5) | {p['recall']['tumour']:.3f} / "
             f"{p['recall']['no_tumour']:.3f} |",
             f"| presence | same | ECE before → after temperature | {p['ece_before_temperature']:.3f} → {p['ece']:.3f} |",
             f"| presence | same | macro-F1 clean / noise / blur / 2× down | {p['macro_f1']:.3f} / {p_deg} |"]
    other = m.get("other_sources", {})
    fs = other.get("presence_on_figshare_tumour_slices")
    if fs:
        lines.append(f"| presence | figshare T1-CE (all tumour; a sequence it never saw) | tumour recall | "
                     f"{fs['tumour_recall']:.3f} (n = {fs['n']}) |")
    st = other.get("sartaj_testing")
    if st:
        lines += [f"| presence | Sartaj Testing (external; caveat below) | ROC AUC | {st['presence'].get('roc_auc', float('nan')):.3f} |",
                  f"| type | Sartaj Testing, tumour images | macro-F1 | {st['type_given_tumour']['macro_f1']:.3f} |",
                  f"| four-class | Sartaj Testing | macro-F1 / accuracy | {st['four_class']['macro_f1']:.3f} / "
                  f"{st['four_class']['accuracy']:.3f} |",
                  "", f"*{st['caveat']}.*"]
    lines += ["", "Commands:", "", "```", *card["training"]["type_commands"], card["training"]["presence_command"],
              card["training"]["command"], "```", ""]
    for pth in card.get("plots", []):
        src = Path(pth)
        if src.exists():
            dst = fig_dir / src.name
            dst.write_bytes(src.read_bytes())
            lines += [f"![Confusion matrices and clean vs degraded bars of the shipped classifier](studies/{src.name})", ""]
    return lines


def volume_rule(bench_json: Path) -> list[str]:
    """The 3-D post-processing rule of volume mode, chosen on validation patients (bench/bench_volume.py)."""
    if not bench_json.exists():
        return []
    d = json.loads(bench_json.read_text())
    ls = d.get("lgg_summary")
    if not ls:
        return []
    ch = ls["rule_chosen_on_validation"]
    lines = ["## Volume mode: the 3-D post-processing rule", "",
             "Each LGG patient's slices stacked into a volume (`python -m bench.bench_volume`), the shipped U-Net "
             "on every slice with its own per-slice clean-up, then the 26-connected 3-D components smaller than a "
             "share of the largest one dropped. The share was chosen on the U-Net card's **validation** patients "
             "(ties: the smallest share) and reported once on its **test** patients.", "",
             "| share of the largest component kept | validation mean 3-D Dice |", "|---|---|"]
    lines += [f"| {float(k):g}{' (chosen)' if float(k) == ch['min_component_share_3d'] else ''} | {v:.4f} |"
              for k, v in ch["val_mean_dice_by_share"].items()]
    pg = ls.get("propagation_gate_on_validation")
    if pg:
        lines += ["", "Propagation (one simulated click on the middle tumour slice, carried up and down the series) "
                  "kept inside the U-Net's region, probability ≥ level grown 3 px; the level chosen on the same "
                  "validation patients:", "", "| gate level | validation mean 3-D Dice |", "|---|---|"]
        lines += [f"| {'no gate' if k == 'None' else k}{' (shipped)' if k == str(pg['shipped_level']) else ''} | {v:.4f} |"
                  for k, v in pg["val_mean_dice_by_level"].items()]
    lines += ["", f"Test patients ({ls['test_patients']}): 3-D Dice {ls['dice_3d_mean_card_postprocessing']:.4f} "
              f"through the volume path with the card's post-processing (the card says {ls['card_patient_dice_mean']:.4f}: "
              f"the same numbers), {ls['dice_3d_mean_with_rule']:.4f} with the chosen rule; tumour volume within 10 % "
              f"of the expert's for {ls['volume_within_10pct']}; propagation from one simulated click on the middle "
              f"tumour slice: mean 3-D Dice {ls['propagated_dice_3d_mean']:.3f} with the gate "
              f"({ls.get('propagated_dice_3d_mean_without_gate', float('nan')):.3f} without).", ""]
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train report", description=__doc__)
    p.add_argument("--out", default="docs/studies.md")
    p.add_argument("--classifier-study", default="runs/study_classifier")
    p.add_argument("--weights", default="weights")
    p.add_argument("--volume-bench", default="bench/results/volume.json")
    args = p.parse_args(argv)
    out = Path(args.out)
    fig_dir = out.parent / "studies"
    fig_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Studies", "",
             "How the shipped models were chosen: each study trains every candidate under one budget on the same "
             "patient-level split and reports it once. Written by `python -m train report` from the runs' "
             "`results.json`; rerun the commands listed to reproduce a row. Research demo — not for diagnosis.", ""]
    lines += classifier_shipped(Path(args.weights) / "classifier", fig_dir)
    lines += classifier_study(Path(args.classifier_study), fig_dir)
    lines += volume_rule(Path(args.volume_bench))
    out.write_text(portable("\n".join(lines)) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
