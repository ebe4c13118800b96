"""`python -m train failures`: where the automatic U-Net fails, patient by patient.

For every patient of a split (default: the card's validation patients): per-patient Dice; tumour slices
missed entirely; tumour-free slices with a false positive, and how many of those lie in the top or bottom
fifth of the head (where the skull base and vertex look unlike the training slices); Dice on small
(< 400 px) versus large lesions; and the brain's intensity (median and the 99th percentile of the slice,
out of 255) against the training patients' range, to tell intensity outliers. Writes a JSON and prints
the worst patients first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SMALL_PX = 400


def _dice(a, b) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


def analyse(engine, data) -> dict:
    out = {}
    for pid in data.patient_ids:
        k = np.nonzero(data.patients == pid)[0]
        k = k[np.argsort(data.slice_numbers[k])]
        imgs, gts = data.images[k], data.masks[k]
        preds = np.stack([engine.segment(im.astype(np.float32) / 255.0).mask for im in imgs])
        has = gts.reshape(len(gts), -1).any(1)
        got = preds.reshape(len(preds), -1).any(1)
        n = len(k)
        edge = (np.arange(n) < n * 0.2) | (np.arange(n) >= n * 0.8)
        area = gts.reshape(len(gts), -1).sum(1)
        small = has & (area < SMALL_PX)
        large = has & (area >= SMALL_PX)
        head = imgs[imgs > 20]
        out[pid] = {"patient_dice": _dice(preds, gts), "n_slices": n, "n_tumour_slices": int(has.sum()),
                    "tumour_voxels": int(area.sum()), "missed_tumour_slices": int((has & ~got).sum()),
                    "fp_slices": int((~has & got).sum()), "fp_slices_top_or_bottom": int((~has & got & edge).sum()),
                    "dice_small_lesion_slices": float(np.mean([_dice(preds[i], gts[i]) for i in np.nonzero(small)[0]]))
                    if small.any() else None,
                    "dice_large_lesion_slices": float(np.mean([_dice(preds[i], gts[i]) for i in np.nonzero(large)[0]]))
                    if large.any() else None,
                    "fp_px": int((preds & ~gts).sum()), "fn_px": int((~preds & gts).sum()),
                    "head_median_intensity": float(np.median(head)) if head.size else 0.0,
                    "p99_intensity": float(np.percentile(imgs, 99))}
    return out


def main(argv=None) -> int:
    from train import lgg
    from train.lgg import LGG_DEFAULT

    p = argparse.ArgumentParser(prog="python -m train failures", description=__doc__)
    p.add_argument("--weights", default="weights/unet")
    p.add_argument("--data", default=str(LGG_DEFAULT))
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--out", default=None)
    p.add_argument("--refined", default=None, metavar="FOLDER",
                   help="the app's automatic mask with its outline refined on LiteMedSAM's encoder (weights/medsam_seg)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--card", action="store_true", help="with --refined: a summary into that folder's card")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from train.lab_robustness import load_engine

    eng = load_engine(args.weights, args.refined)
    card = json.loads((Path(args.weights) / "card.json").read_text())
    data = lgg.load_lgg(args.data, patients=card["split"][f"{args.split}_patients"])
    res = analyse(eng, data)
    train = lgg.load_lgg(args.data, patients=card["split"]["train_patients"][:20])
    med = [float(np.median(im[im > 20])) for im in train.images if (im > 20).any()]
    ref = {"train_head_median_intensity_p5_p95": [float(np.percentile(med, 5)), float(np.percentile(med, 95))]}
    doc = {"weights": args.weights, "refined": args.refined, "split": args.split, "reference": ref, "patients": res}
    name = Path(args.weights).name + (f"_{Path(args.refined).name}" if args.refined else "")
    out = Path(args.out or f"bench/results/failures_{name}_{args.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"training patients' median head intensity (5th-95th pct of slices): {ref['train_head_median_intensity_p5_p95']}")
    if args.card and args.refined:
        from train.autobox import add_to_card

        worst = sorted(res.items(), key=lambda t: t[1]["patient_dice"])[:3]
        add_to_card(Path(args.refined), "failures",
                    f"{args.split} patients ({len(res)}): worst per-patient Dice "
                    + ", ".join(f"{pid} {r['patient_dice']:.3f} (missed tumour slices {r['missed_tumour_slices']} of "
                                f"{r['n_tumour_slices']}, FP slices {r['fp_slices']})" for pid, r in worst)
                    + f"; patients below 0.5: {sum(r['patient_dice'] < 0.5 for r in res.values())}",
                    "python -m train failures " + " ".join(argv if argv is not None else __import__("sys").argv[1:]))
    for pid, r in sorted(res.items(), key=lambda t: t[1]["patient_dice"]):
        print(f"{pid}: Dice {r['patient_dice']:.3f}, tumour slices {r['n_tumour_slices']} (missed {r['missed_tumour_slices']}), "
              f"FP slices {r['fp_slices']} ({r['fp_slices_top_or_bottom']} top/bottom), small-lesion Dice "
              f"{r['dice_small_lesion_slices'] if r['dice_small_lesion_slices'] is None else round(r['dice_small_lesion_slices'], 3)}, "
              f"large {r['dice_large_lesion_slices'] if r['dice_large_lesion_slices'] is None else round(r['dice_large_lesion_slices'], 3)}, "
              f"FP px {r['fp_px']} / FN px {r['fn_px']}, head median {r['head_median_intensity']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
