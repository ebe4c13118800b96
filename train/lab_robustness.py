"""`python -m train lab-robustness`: how much the automatic mask moves when a user ticks a lab step.

For every configuration of the preprocessing lab a clinician can reach in one move — no step, the default
pipeline, each step alone with its default parameters, and the combination that failed in the field
(skull stripping + CLAHE) — the U-Net runs exactly as in the app (``run_pipeline`` -> ``UNetEngine.segment``
with the pipeline's geometry, the card's threshold and clean-up) on every slice of the validation patients,
and the per-patient Dice against the expert masks is compared with the raw slice's. The bound the app
promises (issue 13): no configuration changes the mean per-patient Dice by more than 0.03.

By default the models get the app's default input (``bt_demo.image.preprocess.model_steps``: the brain crop only,
the lab's intensity steps feed the display and the classical tools); ``--lab-output`` measures the option
"Feed the lab's output to the models", which the card keeps as ``lab_robustness_lab_output`` so the app can
say what that option costs.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

BOUND = 0.03


class MemoRefiner:
    """A refining decoder whose answers are kept per distinct input (content hash): most lab configurations give
    the models the same input (only the brain crop reaches them by default), so each distinct slice costs one
    encoder run (1-2 s) instead of one per configuration."""

    def __init__(self, refiner):
        self.refiner, self.memo = refiner, {}

    def refine(self, image, key=None):
        import hashlib

        a = np.ascontiguousarray(image, np.float32)
        h = hashlib.blake2b(a.tobytes() + str(a.shape).encode(), digest_size=16).hexdigest()
        if h not in self.memo:
            self.memo[h] = self.refiner.refine(image, key=key)
        return self.memo[h]


def load_engine(weights: str, refined: str | None):
    """The U-Net of ``weights``, or with ``refined`` (a medsam_seg folder) the app's automatic mask: the U-Net
    gating the decoder on LiteMedSAM's encoder (``bt_demo.models.medsam_seg.RefinedUNet``)."""
    from bt_demo.models.unet import UNetEngine

    eng = UNetEngine.load(weights)
    if isinstance(eng, str):
        raise SystemExit(eng)
    if not refined:
        return eng
    from bt_demo.models.medsam_seg import EncoderDecoderEngine, RefinedUNet

    ref = EncoderDecoderEngine.load(refined)
    if isinstance(ref, str):
        raise SystemExit(ref)
    return RefinedUNet(eng, MemoRefiner(ref))


def configurations() -> dict[str, list[tuple[str, dict]]]:
    from bt_demo.image import preprocess

    out = {"none (raw slice)": [], "default pipeline": preprocess.default_pipeline()}
    for name in preprocess.STEPS:
        out[f"{name} alone"] = [(name, preprocess.validate_params(name, None))]
    out["skull_strip + clahe"] = [(n, preprocess.validate_params(n, None)) for n in ("skull_strip", "clahe")]
    return out


def measure(engine, images_u8: np.ndarray, masks: np.ndarray, patients: np.ndarray, configs=None,
            lab_output: bool = False) -> dict:
    """{config: {"patient_dice_mean", "change", "per_patient", "seconds"}} with change = mean - raw mean.

    lab_output: the models see every ticked step (the app's option) instead of the app's default input."""
    from bt_demo.image.preprocess import model_steps, run_pipeline
    from train.seg_eval import seg_metrics

    configs = configs or configurations()
    out = {}
    for label, steps in configs.items():
        t0 = time.perf_counter()
        preds = np.zeros(masks.shape, bool)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, im in enumerate(images_u8):
                raw = im.astype(np.float32) / 255.0
                p = run_pipeline(raw, model_steps(steps, lab_output=lab_output))
                # the refined outline's decoder reads the slice as loaded, as in the app (medsam_seg.RefinedUNet)
                extra = {"raw": raw} if getattr(engine, "reads_raw", False) else {}
                preds[i] = engine.segment(p.image, p.geometry, **extra).mask
        m = seg_metrics(preds, masks, patients)
        out[label] = {"patient_dice_mean": m["patient_dice_mean"], "fp_rate_tumour_free": m["fp_rate_tumour_free"],
                      "slice_dice_tumour_mean": m["slice_dice_tumour_mean"], "per_patient": m["per_patient"],
                      "seconds": round(time.perf_counter() - t0, 1)}
    base = out["none (raw slice)"]["patient_dice_mean"]
    for v in out.values():
        v["change"] = v["patient_dice_mean"] - base
    return out


def main(argv=None) -> int:
    from train import lgg
    from train.lgg import LGG_DEFAULT

    p = argparse.ArgumentParser(prog="python -m train lab-robustness", description=__doc__)
    p.add_argument("--weights", default="weights/unet")
    p.add_argument("--data", default=str(LGG_DEFAULT))
    p.add_argument("--split", default="val", choices=["val", "test"], help="patients of the weights' card split")
    p.add_argument("--out", default=None, help="JSON to write (default: bench/results/lab_robustness_<name>.json)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--card", action="store_true",
                   help="also write the summary into the weights' card.json (metrics.lab_robustness; the app shows it)")
    p.add_argument("--lab-output", action="store_true",
                   help="measure the option 'Feed the lab's output to the models' instead of the app's default")
    p.add_argument("--from-json", default=None, help="with --card: take the measurement from this JSON instead of running")
    p.add_argument("--refined", default=None, metavar="FOLDER",
                   help="measure the app's automatic mask with its outline refined by this decoder on LiteMedSAM's "
                        "encoder (weights/medsam_seg), gated by the U-Net, instead of the U-Net alone (--card then "
                        "writes that folder's card)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    card_p = Path(args.weights) / "card.json"
    card = json.loads(card_p.read_text())
    if args.from_json:
        write_card_summary(card_p, json.loads(Path(args.from_json).read_text()))
        return 0
    eng = load_engine(args.weights, args.refined)
    pats = card["split"][f"{args.split}_patients"]
    data = lgg.load_lgg(args.data, patients=pats)
    res = measure(eng, data.images, data.masks, data.patients, lab_output=args.lab_output)
    worst = max(abs(v["change"]) for v in res.values())
    doc = {"weights": args.weights, "refined": args.refined, "split": args.split, "patients": pats, "n_slices": len(data),
           "bound": BOUND, "lab_output": args.lab_output, "worst_abs_change": worst, "within_bound": worst <= BOUND, "configs": res,
           "command": "python -m train lab-robustness " + " ".join(argv if argv is not None else __import__("sys").argv[1:])}
    suffix = "_lab_output" if args.lab_output else ""
    name = Path(args.weights).name + (f"_{Path(args.refined).name}" if args.refined else "")
    out = Path(args.out or f"bench/results/lab_robustness_{name}{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    for k, v in res.items():
        print(f"{k:24s} per-patient Dice {v['patient_dice_mean']:.4f}  change {v['change']:+.4f}  "
              f"FP {v['fp_rate_tumour_free']:.3f}  ({v['seconds']} s)")
    print(f"worst |change| {worst:.4f} (bound {BOUND}) -> {out}")
    if args.card and args.refined:
        from train.autobox import add_to_card

        worst_cfg = max(res, key=lambda k: abs(res[k]["change"]))
        add_to_card(Path(args.refined), "lab_robustness",
                    f"{args.split} patients ({len(pats)}, {len(data)} slices): worst change of the mean per-patient "
                    f"Dice when one lab configuration is ticked {worst:+.4f} ({worst_cfg}; bound {BOUND}); raw slice "
                    f"{res['none (raw slice)']['patient_dice_mean']:.4f}. Every configuration: "
                    + ", ".join(f"{k} {v['change']:+.4f}" for k, v in res.items()), doc["command"])
    elif args.card:
        write_card_summary(card_p, doc)
    return 0


def write_card_summary(card_p: Path, doc: dict) -> None:
    """metrics.lab_robustness of a card: the worst change, where, and every configuration's change."""
    card = json.loads(card_p.read_text())
    worst_cfg = max(doc["configs"], key=lambda k: abs(doc["configs"][k]["change"]))
    # measurements from before the app's default input existed fed the lab's output to the model
    key = "lab_robustness_lab_output" if doc.get("lab_output", True) else "lab_robustness"
    card.setdefault("metrics", {})[key] = {
        "split": doc["split"], "n_patients": len(doc["patients"]), "bound": doc["bound"],
        "worst_abs_change": round(doc["worst_abs_change"], 4), "worst_configuration": worst_cfg,
        "change_by_configuration": {k: round(v["change"], 4) for k, v in doc["configs"].items()},
        "command": doc["command"]}
    from train.evaluate import write_card  # the one writer of card.json and card.md

    write_card(card_p.parent, card)


if __name__ == "__main__":
    raise SystemExit(main())
