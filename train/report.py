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

from train import embed_heads
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


def _short_encoder(e: str) -> str:
    return {"tu-mobilenetv3_large_100": "MobileNetV3-L", "efficientnet-b0": "EfficientNet-B0",
            "resnet18": "ResNet-18"}.get(e, e)


def _decoder_name(r: dict) -> str:
    name = {"Unet": "U-Net", "UnetPlusPlus": "U-Net++", "MAnet": "MA-Net (attention)"}.get(r["arch"], r["arch"])
    return name + (" + scSE attention" if r.get("decoder_attention") == "scse" else "")


def seg_study(root: Path, fig_dir: Path) -> list[str]:
    rows = [r for r in _rows(root) if not r["_name"].startswith("aug_") and "val" in r]
    if not rows:
        return ["## Segmentation architecture study", "",
                f"No runs under `{root}` yet (`python -m train segmentation-study`).", ""]
    rows.sort(key=lambda r: -r["val"]["patient_dice_mean"])
    imgs = sorted({r["images_seen"] for r in rows})
    from train.seg_study import default_rows

    missing = [name for name, _ in default_rows() if name not in {r["_name"] for r in rows}]
    lines = ["## Segmentation architecture study (automatic U-Net; seeds 001, 002, 004)", "",
             "Every row: trained **from scratch** on the same 65 LGG training patients and validated on the same 10 "
             "validation patients (the split of the shipped U-Net card; its 10 test patients are not used here), whole "
             "slices at 160² (the app's letterbox), Dice + BCE loss, the app's preprocessing-lab steps as random "
             f"augmentation (25 % of slices), for the same budget of **{', '.join(f'{i:,}' for i in imgs)} training "
             "images** (batches of 16) per row: a fixed image budget, because CPU time on this shared 2-core machine "
             "is too noisy to split fairly (each row's training speed is beside it). Threshold 0.5, no "
             "post-processing. **Every row was cut short by the CPU budget**: none trained to convergence (the "
             "shipped U-Net saw about 34,000 images), so the table ranks early learning. Input *median + CLAHE*: "
             "seed 002's 3 × 3 median then CLAHE on the model input (stored in the weights' config, applied by the "
             "app's engine). Weights above 10 MB (fp16) cannot ship. " +
             ("CPU ms at 256²: the app's engine, one thread, each row measured alone afterwards "
              "(`--remeasure-latency`)." if all(r.get("cpu_ms_256_note") for r in rows) else
              "CPU ms at 256²: the app's engine, measured at the end of each row while other runs shared the two "
              "cores, so noisy (`--remeasure-latency` measures them alone once the study ends)."), "",
             "| decoder | encoder | input | schedule | per-patient Dice mean | median | worst patient | slice Dice "
             "(tumour slices) | FP rate (tumour-free slices) | params (M) | fp16 MB | CPU ms at 256² | train img/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v = r["val"]
        lines.append(f"| {_decoder_name(r)} | {_short_encoder(r['encoder'])} | {r['input_prep'].replace('_', ' + ')} | "
                     f"{r['schedule'].replace('_', '-')} | **{_fmt(v['patient_dice_mean'])}** | "
                     f"{_fmt(v['patient_dice_median'])} | {_fmt(v['patient_dice_worst'])} | "
                     f"{_fmt(v['slice_dice_tumour_mean'])} | {_fmt(v['fp_rate_tumour_free'])} | {r['params'] / 1e6:.1f} | "
                     f"{r['size_mb_fp16']:.1f} | {r['cpu_ms_256']:.0f} | {r['train_images_per_s']:.1f} |")
    ok = [r for r in rows if r["size_mb_fp16"] <= 10]
    best = ok[0] if ok else rows[0]
    pairs = {}
    for r in rows:
        if r["schedule"] == "cosine":
            pairs.setdefault((r["arch"], r.get("decoder_attention"), r["encoder"]), {})[r["input_prep"]] = r["val"]["patient_dice_mean"]
    prep = [f"{_short_encoder(k[2])} {_decoder_name({'arch': k[0], 'decoder_attention': k[1]})}: "
            f"{v['median_clahe'] - v['raw']:+.3f}" for k, v in pairs.items() if {"raw", "median_clahe"} <= set(v)]
    if missing:
        lines += ["", f"**Study in progress:** {len(rows)} of {len(rows) + len(missing)} rows finished; still "
                  f"training (resumable, same command): {', '.join(missing)}. The winner below is provisional."]
    lines += ["", f"**{'Provisional leader' if missing else 'Winner'} under this budget (among weights ≤ 10 MB): "
              f"{_decoder_name(best)} with "
              f"{_short_encoder(best['encoder'])}, {best['input_prep'].replace('_', ' + ')} input** (per-patient Dice "
              f"{best['val']['patient_dice_mean']:.3f}, worst patient {best['val']['patient_dice_worst']:.3f}). "
              "Median + CLAHE input minus raw input, same network: " + ("; ".join(prep) or "–") + ".",
              "", "Commands (one per row, in the order above):", "", "```"]
    lines += [r["command"] for r in rows] + ["```", ""]
    png = _seg_figure(rows, fig_dir / "segmentation_study.png")
    lines += [f"![Per-patient Dice of every row (box plots) and validation curves]({png})", ""]
    return lines


def _seg_figure(rows: list[dict], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    labels = [f"{_decoder_name(r)}\n{_short_encoder(r['encoder'])}, {r['input_prep'].replace('_', '+')}"
              + (" (2-stage)" if r["schedule"] != "cosine" else "") for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(max(11, 1.0 * len(rows) + 5), 4.6), gridspec_kw={"width_ratios": [3, 1.3]})
    ax[0].boxplot([list(r["val"]["per_patient"].values()) for r in rows])
    ax[0].set_xticks(range(1, len(rows) + 1), labels, rotation=60, ha="right", fontsize=6)
    ax[0].set_ylim(0, 1); ax[0].set_ylabel("per-patient Dice (10 validation patients)")
    ax[0].set_title("same image budget per row, from scratch", fontsize=9)
    for r, lab in zip(rows, labels, strict=True):
        h = r.get("history") or []
        ax[1].plot([x["epoch"] for x in h], [x.get("patient_dice_mean", np.nan) for x in h], marker="o", ms=3,
                   label=lab.replace("\n", " "))
    ax[1].set_xlabel("epoch"); ax[1].set_ylabel("validation per-patient Dice"); ax[1].set_title("training curves", fontsize=9)
    ax[1].legend(fontsize=5)
    fig.tight_layout(); fig.savefig(out, dpi=80); plt.close(fig)
    return str(out.relative_to(out.parents[1]))


def lab_robustness(paths: list[tuple[str, Path]]) -> list[str]:
    """The U-Net's Dice change under each preprocessing-lab configuration (python -m train lab-robustness)."""
    docs = [(label, json.loads(p.read_text())) for label, p in paths if p.exists()]
    if not docs:
        return []
    configs = list(docs[0][1]["configs"])
    lines = ["## Preprocessing lab: does the automatic mask hold when a step is ticked?", "",
             f"The U-Net exactly as the app runs it (the lab's pipeline — or, by default since issue 13, only its "
             f"brain crop, `bt_demo.image.preprocess.model_steps` — then the engine with its threshold and clean-up, mapped "
             f"back through any crop) on every slice of the {docs[0][1]['split']} patients; change = mean per-patient "
             f"Dice minus the raw slice's. Bound: {docs[0][1]['bound']}. Decided by these measurements: training with "
             f"the lab's steps as random augmentation (50 % of slices) halved the worst change but left it far outside "
             f"the bound, so each model now gets the input it was trained on and the lab feeds it only on request "
             f"(the checkbox 'Feed the lab's output to the models').", "",
             "| configuration | " + " | ".join(f"{lab}: Dice (change)" for lab, _ in docs) + " |",
             "|---|" + "---|" * len(docs)]
    for c in configs:
        cells = []
        for _, d in docs:
            v = d["configs"].get(c)
            cells.append("–" if v is None else f"{v['patient_dice_mean']:.3f} ({v['change']:+.3f})")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += ["", "Worst |change|: " + "; ".join(f"{lab} {d['worst_abs_change']:.3f} "
                                               f"({'within' if d['within_bound'] else 'OUTSIDE'} the bound)" for lab, d in docs),
              "", "```"] + [d["command"] for _, d in docs] + ["```", ""]
    return lines


def augmentation(root: Path) -> list[str]:
    rows = [r for r in _rows(root, "aug_") if "val" in r]
    if not rows:
        return []
    by = {}
    for r in rows:
        share = int(r["_name"].split("_")[1].replace("synthetic", ""))
        by.setdefault(share, []).append(r)
    lines = ["## Does synthetic data help? (issue 15's experiment)", "",
             f"The same U-Net (the study's configuration) trained on the same 65 patients for the same "
             f"{rows[0]['images_seen']:,} images, with 0 %, 25 % or 50 % of every batch drawn from a pool of synthetic "
             "(slice, mask) pairs (`python -m train synthetic-pool`: masks of the training patients, randomly "
             "flipped/rotated/shifted, slices drawn by the shipped generator); two seeds each; validated on the same "
             "10 validation patients.", "",
             "| synthetic share | per-patient Dice, seed by seed | mean | spread (max - min) | slice Dice (tumour) | FP rate |",
             "|---|---|---|---|---|---|"]
    for share in sorted(by):
        rs = sorted(by[share], key=lambda r: r["_name"])
        d = [r["val"]["patient_dice_mean"] for r in rs]
        lines.append(f"| {share} % | {' / '.join(f'{x:.3f}' for x in d)} | **{np.mean(d):.3f}** | {max(d) - min(d):.3f} | "
                     f"{np.mean([r['val']['slice_dice_tumour_mean'] for r in rs]):.3f} | "
                     f"{np.mean([r['val']['fp_rate_tumour_free'] for r in rs]):.3f} |")
    means = {k: float(np.mean([r["val"]["patient_dice_mean"] for r in v])) for k, v in by.items()}
    spread = max(max(r["val"]["patient_dice_mean"] for r in v) - min(r["val"]["patient_dice_mean"] for r in v)
                 for v in by.values())
    if 0 in means and len(means) > 1:
        diffs = {k: means[k] - means[0] for k in sorted(means) if k}
        helps = [k for k, d in diffs.items() if d > spread]
        lines += ["", "**Answer at this budget:** " + ", ".join(f"{k} % synthetic minus none: {d:+.3f}" for k, d in diffs.items())
                  + f" per-patient Dice, against a seed-to-seed spread of up to {spread:.3f}. "
                  + (f"Synthetic pairs helped ({', '.join(f'{k} %' for k in helps)}) by more than the seeds differ."
                     if helps else "Synthetic pairs did not help by more than two seeds of the same recipe differ.")
                  + " Every row is short (the shipped U-Net saw 10× more images; false-positive rates of 0.3-0.6 show "
                    "it), so this answers the question for an early, data-poor training, not for a converged one."]
    lines += ["", "```"] + [r["command"] for r in sorted(rows, key=lambda r: r["_name"])] + ["```", ""]
    return lines


_PRED = {"epsilon": "the noise (epsilon)", "v_prediction": "the velocity v"}


def generator(weights: Path, eval_json: Path, fig_dir: Path) -> list[str]:
    card_p = weights / "card.json"
    if not card_p.exists():
        return []
    card = json.loads(card_p.read_text())
    tr = card["training"]
    lines = ["## Synthetic slices: the mask-conditioned DDIM generator (`weights/diffusion`)", "",
             f"{card['model']}; trained on the LGG FLAIR slices of the U-Net's {len(card['split']['train'])} training "
             f"patients only, for {tr['train_seconds'] / 3600:.1f} h on {tr.get('threads', 1)} CPU thread(s) "
             f"({tr['images_seen']:,} images, predicting {_PRED.get(tr.get('prediction_type', 'epsilon'))}); "
             f"validation loss {card['metrics']['val_loss']:.4f} on its held-back patients. Every output is SYNTHETIC.",
             ""]
    warm = tr.get("warm_start") or {}
    x0_p = Path("bench/results/diffusion_x0.json")
    if warm and x0_p.exists():
        x0 = json.loads(x0_p.read_text())
        res = x0["results"]
        ts = list(next(iter(res.values()))["x0_mse_by_t"])
        lines += ["Why it predicts v, measured: held-back tumour slices noised to step t, the clean slice estimated "
                  "in one step; MSE (images in [-1, 1]) by t:", "",
                  "| weights | predicts | " + " | ".join(f"t = {t}" for t in ts) + " |", "|---|---|" + "---|" * len(ts)]
        for src, r in res.items():
            lines.append(f"| `{src}` | {_PRED.get(r['prediction_type'])} | "
                         + " | ".join(f"{r['x0_mse_by_t'][t]:.4f}" for t in ts) + " |")
        lines += ["", "```", x0["command"], "```", ""]
    if warm:
        lines += [f"It started from the weights of an earlier run (`{warm['init_from']}`: "
                  f"{warm.get('images_seen') or 0:,} images, {(warm.get('train_seconds') or 0) / 3600:.1f} h, predicting "
                  f"{_PRED.get(warm.get('prediction_type'), '?')}). Predicting the noise, its x0 estimate from a "
                  "noised held-back slice was good up to t = 500 but speckled from t = 800 (x0 = (x_t - sqrt(1-a) eps) / "
                  "sqrt(a) magnifies the noise error about 13× at t = 950), and its DDIM samples were noise on a grey "
                  "background. Predicting the velocity v keeps that estimate well conditioned; one epoch of v training "
                  "from those weights gave brain-like samples with black backgrounds. The two commands, in order "
                  "(the first with its epoch count; the second resumes to the epoch shipped):", "",
                  "```", f"python -m train diffusion --prediction-type {warm.get('prediction_type', 'epsilon')} --size "
                  f"{warm.get('size', '?')} --batch-size {warm.get('batch_size', '?')} --steps-per-epoch "
                  f"{warm.get('steps_per_epoch', '?')} --lr {warm.get('lr', '?')} --epochs {warm.get('epochs', '?')} "
                  f"--run-dir {Path(warm['init_from']).parent}", tr["command"], "```", ""]
    else:
        lines += ["```", tr["command"], "```", ""]
    for pth in card.get("plots", []):
        src = Path(pth)
        if src.exists() and src.suffix == ".png":
            (fig_dir / f"diffusion_{src.name}").write_bytes(src.read_bytes())
            lines += [f"![{src.stem}](studies/diffusion_{src.name})", ""]
    if eval_json.exists():
        ev = json.loads(eval_json.read_text())
        lines += [f"**Realism** (KID ×10³ in our own networks' feature space; {ev['n_real_a']} real slices of half the "
                  f"held-back patients against {ev['n_real_b']} real slices of the other half — the floor — and against "
                  f"{ev['n_synthetic']} synthetic slices drawn for the second half's masks; all at the generator's "
                  f"{ev['size']}² resolution, {ev['steps']} DDIM steps):", "",
                  "| feature space | KID real vs real (floor) | KID synthetic vs real | ratio | C2ST real vs real (floor) "
                  "| C2ST synthetic vs real |", "|---|---|---|---|---|---|"]

        def acc(c):
            return "–" if not c or c.get("accuracy") is None else f"{c['accuracy']:.2f} ± {c['std_over_folds']:.2f}"

        for name, k in ev["realism_kid"].items():
            ratio = "–" if k["ratio_to_floor"] is None else f"{k['ratio_to_floor']:.2f}×"
            lines.append(f"| {name} | {1e3 * k['kid_real_vs_real_floor'][0]:.2f} ± {1e3 * k['kid_real_vs_real_floor'][1]:.2f} | "
                         f"{1e3 * k['kid_synthetic_vs_real'][0]:.2f} ± {1e3 * k['kid_synthetic_vs_real'][1]:.2f} | {ratio} | "
                         f"{acc(k.get('c2st_real_vs_real_floor'))} | {acc(k.get('c2st_synthetic_vs_real'))} |")
        lines += ["", "KID: lower is closer (± is the spread over 100 random subsets of 50). C2ST: balanced accuracy of a "
                  "logistic regression telling the two sets apart, 5 folds split by patient (± over folds); 0.50 means "
                  "the features cannot tell them apart, the floor is what telling two groups of real patients apart "
                  "scores."]
        same, apart = [], []
        for name, k in ev["realism_kid"].items():
            f, c = k.get("c2st_real_vs_real_floor") or {}, k.get("c2st_synthetic_vs_real") or {}
            if f.get("accuracy") is not None and c.get("accuracy") is not None:
                (same if c["accuracy"] <= f["accuracy"] else apart).append(
                    f"{name} ({c['accuracy']:.2f} vs {f['accuracy']:.2f})")
        if same or apart:
            lines += ["", "Read: " + (f"in {', '.join(same)} the synthetic slices are told from real ones no more often "
                                     "than two groups of real patients are told apart" if same else "")
                      + ("; " if same and apart else "") + (f"in {', '.join(apart)} they are told apart more often than "
                                                           "two real patient groups: at that fine texture the generator is not yet realistic"
                                                           if apart else "") + "."]
        a = ev["mask_adherence"]
        lines += ["", f"**Mask adherence** (the shipped U-Net on the synthetic slices, {a['n_tumour_masks']} tumour masks): "
                  f"Dice against the conditioning mask **{a['unet_dice_vs_condition_synthetic']:.3f}** (on the real "
                  f"slices of the same masks, same resolution: {a['unet_dice_real_same_masks']:.3f}); the U-Net finds a "
                  f"tumour on {100 * a['unet_detects_tumour_share_synthetic']:.0f} % of them; slices generated with an "
                  f"empty mask get a U-Net false positive {100 * a['unet_fp_rate_empty_mask_synthetic']:.0f} % of the time "
                  f"(real tumour-free slices: {100 * a['unet_fp_rate_real_tumour_free']:.0f} %). Generation time "
                  "(one slice, 25 steps, alone on the CPU): the README's engines table (`python -m bench engines`).", "",
                  "```", ev["command"], "```", ""]
        lines += ["(The grid of real held-back slices beside synthetic ones for their masks is written to "
                  "`runs/generator_eval_vs_real.png`, outside the repository: no patient image is committed.)", ""]
    return lines


def _worst(m: dict | None):
    return min(m["per_patient"].values()) if m and m.get("per_patient") else None


def _cell(x, nd=3, pct=False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f} %" if pct else f"{x:.{nd}f}"


def seg_shipped(weights: Path, before_dir: Path) -> list[str]:
    """Issue 13: the shipped U-Net and click model before and after, on the same validation and test patients."""
    def load(p: Path):
        return json.loads(p.read_text()) if p.exists() else None

    u_new, c_new = load(weights / "unet" / "card.json"), load(weights / "clicks" / "card.json")
    u_old, c_old = load(before_dir / "unet_card_before_issue13.json"), load(before_dir / "clicks_card_before_issue13.json")
    u_old_val = (load(before_dir / "unet_before_issue13_val.json") or {}).get("metrics")
    c_old_val = (load(before_dir / "clicks_before_issue13_val.json") or {}).get("metrics")
    if not (u_new and u_old and c_new and c_old):
        return []
    u_same = u_new.get("created") == u_old.get("created")
    c_same = c_new.get("created") == c_old.get("created")
    u_new_val = u_new.get("metrics_validation_patients") or (None if not u_same else u_old_val)
    c_new_val = c_new.get("metrics_validation_patients") or (None if not c_same else c_old_val)
    lab_old = u_old["metrics"].get("lab_robustness")  # then the app always fed the lab's output to the models
    lab_new, lab_new_fed = u_new["metrics"].get("lab_robustness"), u_new["metrics"].get("lab_robustness_lab_output")
    lines = ["## Shipped U-Net and click model: before and after issue 13", "",
             f"Same patients before and after: the shipped cards' 10 validation patients (the issue's targets are read "
             f"there; checkpoints and post-processing were chosen on them) and 10 test patients (reported once). "
             f"U-Net now: {u_new['model']}{' (unchanged)' if u_same else ''}, trained with "
             f"`{u_new['training'].get('command', '')}`; click model now: {c_new['model']}"
             f"{' (unchanged)' if c_same else ''}, trained with `{c_new['training'].get('command', '')}`.", "",
             "| U-Net | target | before, val | after, val | before, test | after, test |", "|---|---|---|---|---|---|"]
    rows = [("per-patient Dice, mean", "≥ 0.86", "patient_dice_mean", False),
            ("per-patient Dice, median", "", "patient_dice_median", False),
            ("slice Dice (tumour slices)", "", "slice_dice_tumour_mean", False),
            ("false positives on tumour-free slices", "≤ 3 %", "fp_rate_tumour_free", True)]
    for label, target, key, pct in rows:
        vals = [(m or {}).get(key) for m in (u_old_val, u_new_val, u_old["metrics"], u_new["metrics"])]
        lines.append(f"| {label} | {target} | " + " | ".join(_cell(v, pct=pct) for v in vals) + " |")
    lines.append("| worst patient | ≥ 0.60 | " + " | ".join(_cell(_worst(m)) for m in (u_old_val, u_new_val, u_old["metrics"],
                                                                                       u_new["metrics"])) + " |")
    def lab_cell(lab):
        return "–" if not lab else f"{lab['worst_abs_change']:.3f} ({lab['worst_configuration']})"

    lines.append(f"| worst Dice change under a lab step, as the app runs by default (val) | ≤ 0.03 | {lab_cell(lab_old)} | "
                 f"{lab_cell(lab_new)} | | |")
    lines.append(f"| the same with 'Feed the lab's output to the models' on (val) | | {lab_cell(lab_old)} | "
                 f"{lab_cell(lab_new_fed)} | | |")
    lines += ["", "| click model (next click at the centre of the largest error, cap 20) | target | before, val | after, val | "
              "before, test | after, test |", "|---|---|---|---|---|---|"]
    crow = [(f"Dice after {k} click{'s' if k > 1 else ''}", t, f"dice_after_{k}_clicks", False)
            for k, t in ((1, "≥ 0.87"), (2, ""), (3, "≥ 0.92"), (5, ""), (10, "≥ 0.95"), (20, ""))]
    crow += [("NoC@85", "", "noc85", None), ("NoC@90", "≤ 4", "noc90", None),
             ("never reach 0.85 within 20 clicks", "≤ 3 %", "never_85", True), ("never reach 0.90", "", "never_90", True),
             ("off-centre first click: Dice lost at 1 click", "≤ 0.03", "off_centre_cost_at_1_click", False)]
    for label, target, key, pct in crow:
        vals = [(m or {}).get(key) for m in (c_old_val, c_new_val, c_old["metrics"], c_new["metrics"])]
        nd = 2 if pct is None else 3
        lines.append(f"| {label} | {target} | " + " | ".join(_cell(v, nd=nd, pct=bool(pct)) for v in vals) + " |")
    lines += ["", "Before, val: `python -m train evaluate --weights weights/<unet|clicks> --split val --json-out "
              "bench/results/<unet|clicks>_before_issue13_val.json` on the weights shipped before issue 13; before, test: "
              "their cards (the click card then measured up to 10 clicks). After: the new cards (`python -m train "
              "evaluate`, run at the end of training).", ""]
    eng = load(before_dir / "engines.json")
    if eng:
        ms = {(r["item"], r["size"]): r["median_ms"] for r in eng["rows"]}
        u, c = ms.get(("U-Net probabilities + mask", 256)), ms.get(("click model, 1 click", 256))
        if u and c:
            lines += [f"CPU latency of the shipped models at 256² (`python -m bench engines`, median of 20, no training "
                      f"running): U-Net {u:.0f} ms (target ≤ 100), click model one click {c:.0f} ms (target ≤ 120; "
                      f"zoom-in included).", ""]
    return lines


def _sections(text: str) -> dict[str, list[str]]:
    """The doc's '## ' sections, heading line -> its lines (heading included)."""
    out, cur = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            cur = line
            out[cur] = []
        if cur is not None:
            out[cur].append(line)
    return out


def _kept(old: dict[str, list[str]], prefix: str, new: list[str]) -> list[str]:
    """``new``, unless it has no runs behind it and the existing doc has the section with results: then that."""
    if new and not any("No runs under" in line for line in new):
        return new
    for heading, body in old.items():
        if heading.startswith(prefix) and not any("No runs under" in line for line in body):
            print(f"no runs for '{prefix[3:]}' here: kept the section already in the doc")
            return body
    return new


def carry_sections(old_text: str, lines: list[str]) -> list[str]:
    """``lines`` plus every '## ' section of the old doc that this generator does not write (a study whose
    section another command inserted: the prompt engines, the encoder rows), each placed after the section that
    preceded it in the old doc (at the end when that one is gone too). Nothing the doc said is dropped."""
    old = _sections(old_text)
    new_headings = {line for line in lines if line.startswith("## ")}
    order = list(old)
    out = list(lines)
    for i, heading in enumerate(order):
        if heading in new_headings:
            continue
        body = old[heading]
        while body and not body[-1].strip():
            body = body[:-1]
        at = len(out)
        for prev in reversed(order[:i]):
            if prev in out:
                j = out.index(prev) + 1
                while j < len(out) and not out[j].startswith("## "):
                    j += 1
                at = j
                break
        out[at:at] = body + [""]
        print(f"kept '{heading[3:]}' (not written by this command)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train report", description=__doc__)
    p.add_argument("--out", default="docs/studies.md")
    p.add_argument("--classifier-study", default="runs/study_classifier")
    p.add_argument("--weights", default="weights")
    p.add_argument("--volume-bench", default="bench/results/volume.json")
    p.add_argument("--seg-study", default="runs/study_seg")
    p.add_argument("--lab-robustness", nargs="*",
                   default=["U-Net before issue 13 (the lab's output fed to it, as the app then did)="
                            "bench/results/lab_robustness_unet_before_issue13.json",
                            "shipped U-Net, the lab's output fed to it (option)="
                            "bench/results/lab_robustness_unet_lab_output.json",
                            "shipped U-Net as the app runs it by default (the brain crop only reaches it)="
                            "bench/results/lab_robustness_unet.json"],
                   help="LABEL=JSON pairs from `python -m train lab-robustness`")
    p.add_argument("--generator-eval", default="bench/results/generator_eval.json")
    p.add_argument("--embed-heads", default="runs/study_embed", help="python -m train embed-heads run folders")
    args = p.parse_args(argv)
    out = Path(args.out)
    fig_dir = out.parent / "studies"
    fig_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Studies", "",
             "How the shipped models were chosen: each study trains every candidate under one budget on the same "
             "patient-level split and reports it once. Written by `python -m train report` from the runs' "
             "`results.json`; rerun the commands listed to reproduce a row. Research demo — not for diagnosis.", ""]
    lines += classifier_shipped(Path(args.weights) / "classifier", fig_dir)
    # the studies' runs live in runs/ (not in git): on a machine without them keep what the doc already says
    old = _sections(out.read_text()) if out.exists() else {}
    lines += _kept(old, "## Classifier backbone study", classifier_study(Path(args.classifier_study), fig_dir))
    lines += _kept(old, "## Classifier heads on LiteMedSAM", embed_heads.report_section(
        args.embed_heads, Path(args.weights) / "classifier" / "card.json"))
    lines += _kept(old, "## Segmentation architecture study", seg_study(Path(args.seg_study), fig_dir))
    lines += seg_shipped(Path(args.weights), Path("bench/results"))
    lines += lab_robustness([(lab, Path(pth)) for lab, _, pth in (a.partition("=") for a in args.lab_robustness)])
    lines += generator(Path(args.weights) / "diffusion", Path(args.generator_eval), fig_dir)
    lines += _kept(old, "## Does synthetic data help?", augmentation(Path(args.seg_study)))
    lines += volume_rule(Path(args.volume_bench))
    if out.exists():
        lines = carry_sections(out.read_text(), lines)
    out.write_text(portable("\n".join(lines)) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
