"""`python -m train generator-eval`: is the synthetic-slice generator realistic, and does it draw the tumour
where it was asked?

Realism: Inception-based FID/KID need weights that cannot be downloaded here, so the kernel distance (KID,
torchmetrics' estimator, polynomial kernel) is computed in the feature space of the project's own networks:
the shipped U-Net's encoder (deepest stage, averaged over space) and the shipped classifier's presence
network (last feature map, averaged). Real slices are the generator's held-back validation patients at
the generator's resolution, split by patient into halves A and B; KID(real B, real A) is the floor (what
two real samples differ by), KID(synthetic, real A) the measure, the synthetic slices drawn for the masks
of half B (same tumour sizes and places as the real half they replace).

KID's estimate is noisy on a few hundred slices, and an "average brain" can sit close to the real mean. So
realism is also measured by a classifier two-sample test (C2ST): a logistic regression on the same features
tries to tell synthetic from real, cross-validated by patient (a synthetic slice belongs to the patient
whose mask drew it). 0.5 = indistinguishable; the floor is the same test between the two real halves
(different patients). A third feature space, every U-Net encoder stage averaged and concatenated, keeps
the fine texture the deepest stage averages away.

Mask adherence: the shipped U-Net segments every synthetic slice; its Dice against the conditioning mask,
beside the same U-Net's Dice on the real slices of those masks (what a perfect generator would reach),
and its false-positive rate on slices generated with an empty mask ("no tumour").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


class _Features(torch.nn.Module):
    """Images (B, 1, S, S) in [0, 1] -> (B, C) features of one of our networks, for torchmetrics' KID."""

    def __init__(self, net, kind: str, size: int):
        super().__init__()
        self.net, self.kind, self.size = net, kind, size

    def forward(self, x):
        from bt_demo.models.nets import standardize

        x = torch.nn.functional.interpolate(x.float(), size=(self.size, self.size), mode="bilinear", align_corners=False)
        with torch.inference_mode():
            if self.kind == "unet":
                f = self.net.net.encoder(standardize(x))[-1]
            elif self.kind == "unet_all":  # every stage (skip the input itself), averaged over space
                return torch.cat([g.float().mean(dim=(2, 3)) for g in self.net.net.encoder(standardize(x))[1:]], 1)
            else:
                f = self.net.features(x)
        return f.float().mean(dim=(2, 3))


def features(f: torch.nn.Module, imgs: np.ndarray) -> np.ndarray:
    return np.concatenate([f(torch.from_numpy(imgs[i:i + 32])[:, None]).numpy() for i in range(0, len(imgs), 32)])


def c2st(fa: np.ndarray, fb: np.ndarray, groups_a: np.ndarray, groups_b: np.ndarray, folds: int = 5) -> dict:
    """Classifier two-sample test: accuracy of telling set a from set b, logistic regression on standardised
    features, folds split by patient (no patient in both training and test), balanced accuracy so unequal
    set sizes do not count. ~0.5: the features cannot tell them apart."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_pat = min(len(set(groups_a)), len(set(groups_b)))
    if n_pat < 2:
        return {"accuracy": None, "why": "fewer than 2 patients on a side"}
    x = np.concatenate([fa, fb])
    y = np.r_[np.zeros(len(fa)), np.ones(len(fb))]
    g = np.r_[np.asarray(groups_a, str), np.char.add("b:", np.asarray(groups_b, str))]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    acc = cross_val_score(clf, x, y, groups=g, scoring="balanced_accuracy",
                          cv=StratifiedGroupKFold(n_splits=min(folds, n_pat), shuffle=True, random_state=0))
    return {"accuracy": float(acc.mean()), "std_over_folds": float(acc.std()), "folds": int(len(acc))}


def kid(real: np.ndarray, other: np.ndarray, subset_size: int = 50, subsets: int = 100):
    """(mean, std) of KID between two (N, C) feature sets (from ``features``: extracted once, shared with C2ST)."""
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance

    with warnings.catch_warnings():  # "features kept in memory": a few hundred vectors here
        warnings.simplefilter("ignore", UserWarning)
        # a custom feature module gets update()'s input as is: the identity over features already extracted
        m = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=subsets,
                                    subset_size=min(subset_size, len(real), len(other)))
    m.update(torch.from_numpy(real), real=True)
    m.update(torch.from_numpy(other), real=False)
    mean, std = m.compute()
    return float(mean), float(std)


def _dice(a, b) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train generator-eval", description=__doc__)
    p.add_argument("--weights", default="weights/diffusion")
    p.add_argument("--unet", default="weights/unet")
    p.add_argument("--classifier", default="weights/classifier")
    p.add_argument("--data", default=None)
    p.add_argument("--steps", type=int, default=25, help="DDIM steps, as the app's default")
    p.add_argument("--n-empty", type=int, default=64, help="slices generated with an empty mask (false positives)")
    p.add_argument("--out", default="bench/results/generator_eval.json")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--grid", default="runs/generator_eval_vs_real.png",
                   help="PNG of real held-back slices beside synthetic ones (patient data: keep it out of git)")
    p.add_argument("--cache", default="",
                   help="keep the generated slices in this .npz and reuse them for the same weights, steps and masks")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from bt_demo.models.classifier import ClassifierEngine
    from bt_demo.models.generator import GeneratorEngine
    from bt_demo.models.unet import UNetEngine
    from train import lgg
    from train.lgg import LGG_DEFAULT

    gen = GeneratorEngine.load(args.weights)
    unet = UNetEngine.load(args.unet)
    for e in (gen, unet):
        if isinstance(e, str):
            raise SystemExit(e)
    card = json.loads((Path(args.weights) / "card.json").read_text())
    val = list(card["split"]["val"])
    data = lgg.load_lgg(args.data or str(LGG_DEFAULT), patients=val)
    s = gen.size
    import cv2

    def at_generator_res(u8: np.ndarray) -> np.ndarray:
        return np.stack([cv2.resize(im.astype(np.float32) / 255.0, (s, s), interpolation=cv2.INTER_AREA) for im in u8])

    half_a = [pt for i, pt in enumerate(sorted(val)) if i % 2 == 0]
    in_a = np.isin(data.patients, half_a)
    real_a, real_b = at_generator_res(data.images[in_a]), at_generator_res(data.images[~in_a])
    masks_b = data.masks[~in_a]
    pats_a, pats_b = data.patients[in_a], data.patients[~in_a]
    t0 = time.perf_counter()
    cache = Path(args.cache) if args.cache else None
    key = f"{Path(args.weights).resolve()}|{(Path(args.weights) / 'model.safetensors').stat().st_mtime}|{args.steps}|{len(masks_b)}"
    if cache and cache.exists() and str(np.load(cache)["key"]) == key:
        z = np.load(cache)  # the same weights, steps and masks: the slices DDIM (eta 0) would draw again
        syn, empty, gen_s = z["syn"], z["empty"], float(z["gen_s"])
    else:
        syn = np.concatenate([gen.generate_batch(list(masks_b[i:i + 16]), list(range(i, min(i + 16, len(masks_b)))),
                                                 steps=args.steps) for i in range(0, len(masks_b), 16)])
        gen_s = time.perf_counter() - t0
        empty = gen.generate_batch([None] * args.n_empty, list(range(10_000, 10_000 + args.n_empty)), steps=args.steps)
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(cache, syn=syn, empty=empty, gen_s=gen_s, key=key)
    feats = {"U-Net encoder": _Features(unet.model.float().eval(), "unet", unet.model.input_size),
             "U-Net encoder, all stages": _Features(unet.model.float().eval(), "unet_all", unet.model.input_size)}
    clf = ClassifierEngine.load(args.classifier)
    if not isinstance(clf, str):
        pres = clf.model.presence.float().eval()
        feats["classifier presence net"] = _Features(pres, "classifier", pres.input_size)
    realism = {}
    for name, f in feats.items():
        fa, fb, fs = features(f, real_a), features(f, real_b), features(f, syn)
        floor, meas = kid(fa, fb), kid(fa, fs)
        realism[name] = {"kid_real_vs_real_floor": floor, "kid_synthetic_vs_real": meas,
                         "ratio_to_floor": meas[0] / floor[0] if floor[0] > 0 else None,
                         "c2st_real_vs_real_floor": c2st(fa, fb, pats_a, pats_b),
                         "c2st_synthetic_vs_real": c2st(fa, fs, pats_a, pats_b)}

    # mask adherence through the shipped U-Net, at the slice size the U-Net was trained on
    full = data.images.shape[1]

    def unet_masks(imgs01: np.ndarray) -> np.ndarray:
        return np.stack([unet.segment(cv2.resize(im, (full, full), interpolation=cv2.INTER_LINEAR)).mask for im in imgs01])

    pred_syn = unet_masks(syn)
    pred_real = unet_masks(real_b)  # the real slices of the same masks, through the same 64-px round trip
    tum = masks_b.reshape(len(masks_b), -1).any(1)
    adherence = {"n_tumour_masks": int(tum.sum()),
                 "unet_dice_vs_condition_synthetic": float(np.mean([_dice(pred_syn[i], masks_b[i]) for i in np.nonzero(tum)[0]])),
                 "unet_dice_real_same_masks": float(np.mean([_dice(pred_real[i], masks_b[i]) for i in np.nonzero(tum)[0]])),
                 "unet_detects_tumour_share_synthetic": float(pred_syn[tum].reshape(int(tum.sum()), -1).any(1).mean())}
    adherence["unet_fp_rate_empty_mask_synthetic"] = float(unet_masks(empty).reshape(args.n_empty, -1).any(1).mean())
    adherence["unet_fp_rate_real_tumour_free"] = float(pred_real[~tum].reshape(int((~tum).sum()), -1).any(1).mean())
    doc = {"weights": args.weights, "steps": args.steps, "size": s, "real_patients_a": half_a,
           "real_patients_b": sorted(set(val) - set(half_a)), "n_real_a": int(in_a.sum()), "n_real_b": int((~in_a).sum()),
           "n_synthetic": int(len(syn)), "generation_seconds_per_slice_batched": gen_s / max(1, len(syn)),
           "realism_kid": realism, "mask_adherence": adherence,
           "command": "python -m train generator-eval " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    _grid(syn, real_b, masks_b, Path(args.grid))  # real slices: kept out of the repository (runs/ is ignored)
    print(json.dumps({k: doc[k] for k in ("realism_kid", "mask_adherence")}, indent=1))
    return 0


def _grid(syn, real, masks, path: Path, n: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tum = np.nonzero(masks.reshape(len(masks), -1).any(1))[0]
    idx = tum[np.linspace(0, len(tum) - 1, n).astype(int)] if len(tum) >= n else np.arange(min(n, len(masks)))
    fig, ax = plt.subplots(2, len(idx), figsize=(1.6 * len(idx), 3.6))
    for j, i in enumerate(idx):
        for row, img in ((0, real[i]), (1, syn[i])):
            ax[row, j].imshow(img, cmap="gray", vmin=0, vmax=1)
            small = np.asarray(masks[i], np.float32)
            import cv2

            small = cv2.resize(small, img.shape[::-1], interpolation=cv2.INTER_AREA)
            if small.max() > 0:
                ax[row, j].contour(small, levels=[0.5], colors="orange", linewidths=0.6)
            ax[row, j].axis("off")
    ax[0, 0].set_title("real (held-out)", fontsize=8, loc="left")
    ax[1, 0].set_title("SYNTHETIC, same mask", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
