"""Evaluation of the segmentation and click models on LGG patients.

Per-patient Dice = Dice of the patient's stacked slices (Buda et al. 2019),
averaged over patients; per-slice Dice on tumour slices; false-positive rate
= fraction of tumour-free slices with any predicted pixel.
"""

from __future__ import annotations

import numpy as np
import torch

from bt_demo.models.input_prep import prepare_batch
from bt_demo.models.postprocess import binarize
from bt_demo.sim.clicksim import first_click, next_click


@torch.inference_mode()
def predict_probs(model, images_u8: np.ndarray, batch: int = 16, device="cpu") -> np.ndarray:
    """float32 (N, H, W) tumour probabilities for uint8 (N, H, W) slices at the model's size."""
    from bt_demo.models.sizing import Letterbox

    model.eval()
    out = []
    # the same letterbox as the app's engine, so validation measures what the app shows
    lb = Letterbox.fit(images_u8.shape[1:], int(getattr(model, "input_size", images_u8.shape[1])))
    for i in range(0, len(images_u8), batch):
        xs = prepare_batch(np.stack([lb.image(im.astype(np.float32) / 255.0) for im in images_u8[i:i + batch]]),
                           getattr(model, "input_prep", "raw"))
        x = torch.from_numpy(xs)[:, None].to(device)
        probs = torch.sigmoid(model(x)).float().cpu().numpy()[:, 0]
        out.append(np.stack([np.clip(lb.unmap(pr, order=1), 0, 1) for pr in probs]))
    return np.concatenate(out) if out else np.zeros((0,) + images_u8.shape[1:], np.float32)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


def seg_metrics(pred: np.ndarray, gt: np.ndarray, patients: np.ndarray) -> dict:
    """pred, gt: bool (N, H, W); patients (N,). Returns a dict of summary metrics."""
    per_patient = {}
    for p in sorted(set(patients.tolist())):
        k = patients == p
        per_patient[p] = _dice(pred[k], gt[k])
    has = gt.reshape(len(gt), -1).any(1)
    slice_dice = [_dice(pred[i], gt[i]) for i in np.nonzero(has)[0]]
    fp = pred.reshape(len(pred), -1).any(1)[~has]
    return {
        "patient_dice_mean": float(np.mean(list(per_patient.values()))),
        "patient_dice_median": float(np.median(list(per_patient.values()))),
        "slice_dice_tumour_mean": float(np.mean(slice_dice)) if slice_dice else float("nan"),
        "fp_rate_tumour_free": float(fp.mean()) if len(fp) else float("nan"),
        "n_patients": len(per_patient),
        "n_slices": int(len(gt)),
        "n_tumour_slices": int(has.sum()),
        "per_patient": per_patient,
    }


def apply_post(probs: np.ndarray, threshold: float, min_px: int) -> np.ndarray:
    return np.stack([binarize(p, threshold, min_px) for p in probs]) if len(probs) else probs.astype(bool)


def choose_postprocessing(probs, gt, patients, thresholds=(0.3, 0.4, 0.5, 0.6, 0.7),
                          min_pxs=(0, 10, 25, 50, 100, 200)) -> tuple[dict, list[dict]]:
    """Grid-search threshold and small-component size on per-patient Dice (validation only)."""
    rows = []
    for t in thresholds:
        for m in min_pxs:
            r = seg_metrics(apply_post(probs, t, m), gt, patients)
            rows.append({"threshold": t, "min_component_px": m, "patient_dice_mean": r["patient_dice_mean"],
                         "fp_rate_tumour_free": r["fp_rate_tumour_free"]})
    best = max(rows, key=lambda r: (round(r["patient_dice_mean"], 4), -r["fp_rate_tumour_free"]))
    return best, rows


def random_interior_click(target: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """A random tumour pixel at least 2 px inside (a user's off-centre first click)."""
    import cv2

    inner = cv2.erode(target.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    ys, xs = np.nonzero(inner if inner.any() else target)
    i = int(rng.integers(len(ys)))
    return int(xs[i]), int(ys[i])


@torch.inference_mode()
def click_protocol(model, images_u8: np.ndarray, masks: np.ndarray, n_clicks: int = 5, batch: int = 16,
                   device="cpu", first: str = "centre", seed: int = 0):
    """Simulated-click evaluation on tumour slices, through the app's own click step (``click_step.py``).

    Returns dice (N, n_clicks): Dice after each click. The standard protocol: the first click at the
    interior point farthest from the boundary (``first="random"``: a random interior pixel instead), each
    next one at the centre of the largest error region, the previous mask fed back, threshold of the
    model (0.5), in the slice's own pixels; the model's zoom-in as in the app.
    """
    from bt_demo.models.click_step import click_input, click_output, run_batch

    model.eval()
    n = len(images_u8)
    dice = np.zeros((n, n_clicks), np.float32)
    rng = np.random.default_rng(seed)
    for s in range(0, n, batch):
        imgs = [im.astype(np.float32) / 255.0 for im in images_u8[s:s + batch]]
        gts = masks[s:s + batch]
        b = len(imgs)
        pts = [[first_click(g) if first == "centre" else random_interior_click(g, rng)] for g in gts]
        labs = [[1] for _ in gts]
        prev: list[np.ndarray | None] = [None] * b
        for c in range(n_clicks):
            inputs, frames = zip(*[click_input(model, imgs[i], pts[i], labs[i], prev[i]) for i in range(b)], strict=True)
            probs = run_batch(model, list(inputs))
            for i in range(b):
                _, pred = click_output(model, probs[i], frames[i], labs[i], imgs[i].shape)
                dice[s + i, c] = _dice(pred, gts[i])
                prev[i] = pred
                nc = next_click(pred, gts[i])
                if nc is not None:
                    pts[i].append(nc[0])
                    labs[i].append(nc[1])
                else:  # perfect: repeat the last click so the input stays the same
                    pts[i].append(pts[i][-1])
                    labs[i].append(labs[i][-1])
    return dice


def click_summary(dice: np.ndarray) -> dict:
    """The interactive-segmentation numbers of a (N, cap) Dice table."""
    cap = dice.shape[1]
    return {**{f"dice_after_{k}_clicks": float(dice[:, k - 1].mean()) for k in (1, 2, 3, 5, 10, 20) if k <= cap},
            "noc85": noc(dice, 0.85), "noc90": noc(dice, 0.90), "noc_cap": cap,
            "never_85": float((dice.max(1) < 0.85).mean()), "never_90": float((dice.max(1) < 0.90).mean()),
            "n_slices": int(len(dice))}


def noc(dice: np.ndarray, target: float) -> float:
    """Mean number of clicks to reach ``target`` Dice; slices that never do count as the cap (= columns)."""
    reached = dice >= target
    first = np.where(reached.any(1), reached.argmax(1) + 1, dice.shape[1])
    return float(first.mean())
