"""Evaluation of the segmentation and click models on LGG patients.

Per-patient Dice = Dice of the patient's stacked slices (Buda et al. 2019),
averaged over patients; per-slice Dice on tumour slices; false-positive rate
= fraction of tumour-free slices with any predicted pixel.
"""

from __future__ import annotations

import numpy as np
import torch

from bt_demo.clicksim import first_click, next_click
from bt_demo.models.click_encoding import click_maps
from bt_demo.models.input_prep import prepare_batch
from bt_demo.models.postprocess import binarize, keep_components_touching


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


@torch.inference_mode()
def click_protocol(model, images_u8: np.ndarray, masks: np.ndarray, n_clicks: int = 5, batch: int = 16,
                   device="cpu", keep_touching: bool = True, cap: int | None = None):
    """Simulated-click evaluation on tumour slices.

    Returns dice (N, n_clicks): Dice after each click, clicks placed by the
    standard protocol (first at the farthest interior point, then at the centre
    of the largest error), previous mask fed back. Mirrors the app's
    ClickEngine: the slice is letterboxed to the model's input size, clicks are
    mapped into it, and the mask comes back to slice pixels, where Dice and
    the next click are computed.
    """
    from bt_demo.models.sizing import Letterbox

    model.eval()
    n = len(images_u8)
    radius = float(getattr(model, "click_radius", 5.0))
    thr = float(getattr(model, "threshold", 0.5))
    dice = np.zeros((n, n_clicks), np.float32)
    if n == 0:
        return dice
    lb = Letterbox.fit(images_u8.shape[1:], int(getattr(model, "input_size", images_u8.shape[1])))
    for s in range(0, n, batch):
        imgs = prepare_batch(np.stack([lb.image(im.astype(np.float32) / 255.0) for im in images_u8[s:s + batch]]),
                             getattr(model, "input_prep", "raw"))
        gts = masks[s:s + batch]
        b = len(imgs)
        pts = [[first_click(g)] for g in gts]
        labs = [[1] for _ in gts]
        prev = np.zeros_like(imgs)
        for c in range(n_clicks):
            mps = [lb.points(np.asarray(pts[i], np.float64)) for i in range(b)]
            x = np.stack([np.concatenate([imgs[i][None], click_maps(imgs[i].shape, mps[i], labs[i], radius),
                                          prev[i][None]]) for i in range(b)])
            prob = torch.sigmoid(model(torch.from_numpy(x).to(device))).float().cpu().numpy()[:, 0]
            for i in range(b):
                pred_m = prob[i] >= thr
                if keep_touching:
                    pred_m = keep_components_touching(pred_m, mps[i], labs[i])
                pred = lb.unmap(pred_m.astype(np.uint8), order=0) > 0
                dice[s + i, c] = _dice(pred, gts[i])
                prev[i] = pred_m.astype(np.float32)
                nc = next_click(pred, gts[i])
                if nc is not None:
                    pts[i].append(nc[0])
                    labs[i].append(nc[1])
                else:  # perfect: repeat the last click so the map stays the same
                    pts[i].append(pts[i][-1])
                    labs[i].append(labs[i][-1])
    return dice


def noc(dice: np.ndarray, target: float) -> float:
    """Mean number of clicks to reach ``target`` Dice; slices that never do count as the cap (= columns)."""
    reached = dice >= target
    first = np.where(reached.any(1), reached.argmax(1) + 1, dice.shape[1])
    return float(first.mean())
