"""One click of the built-in click model, with FocalClick/RITM-style zoom-in, shared by the app's engine,
training (simulated clicks on the model's own errors) and evaluation, so the three cannot drift apart.

The first click sees the whole (letterboxed) slice. Once there is a previous mask, a model trained with
``zoom_in`` sees a square crop around the mask and every click (expanded by ``ZOOM_EXPAND``, at least
``ZOOM_MIN_SHARE`` of the slice's longer side), resized to its input: the boundary at full resolution,
which is what the last clicks need. Outside the crop the previous mask stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bt_demo.models.click_encoding import click_maps
from bt_demo.models.input_prep import prepare
from bt_demo.models.postprocess import keep_components_touching
from bt_demo.models.sizing import Letterbox

ZOOM_EXPAND = 1.8      # crop side = this x the side of the box around mask and clicks
ZOOM_MIN_SHARE = 0.3   # ... and at least this share of the slice's longer side


def zoom_box(shape: tuple[int, int], prev: np.ndarray, points_xy: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) of a square crop around ``prev`` (bool) and the points, clipped to the image."""
    h, w = shape
    ys, xs = np.nonzero(prev)
    px = np.asarray(points_xy, np.float64).reshape(-1, 2)
    allx = np.concatenate([xs, px[:, 0]]) if len(px) else xs
    ally = np.concatenate([ys, px[:, 1]]) if len(px) else ys
    cx, cy = (allx.min() + allx.max()) / 2, (ally.min() + ally.max()) / 2
    side = max(allx.max() - allx.min() + 1, ally.max() - ally.min() + 1) * ZOOM_EXPAND
    side = int(round(min(max(side, ZOOM_MIN_SHARE * max(h, w)), max(h, w))))
    y0 = int(np.clip(round(cy - side / 2), 0, max(0, h - side)))
    x0 = int(np.clip(round(cx - side / 2), 0, max(0, w - side)))
    return y0, x0, min(h, y0 + side), min(w, x0 + side)


@dataclass(frozen=True)
class ClickFrame:
    """Where the model looked: the crop of the slice (``box``) and its letterbox into the model input."""

    box: tuple[int, int, int, int]
    lb: Letterbox
    model_points: np.ndarray
    prev: np.ndarray | None


def click_input(model, image: np.ndarray, points_xy, labels, prev: np.ndarray | None,
                zoom: bool | None = None) -> tuple[np.ndarray, ClickFrame]:
    """float32 (4, S, S) model input for a processed slice (float32 (H, W) in [0, 1]), clicks (x, y) in its
    pixels, and the previous mask (bool (H, W) or None). ``zoom`` None: as the model was trained."""
    zoom = bool(getattr(model, "zoom_in", False)) if zoom is None else zoom
    h, w = image.shape
    pts = np.asarray(points_xy, np.float64).reshape(-1, 2)
    has_prev = prev is not None and prev.any()
    box = zoom_box((h, w), prev, pts) if (zoom and has_prev) else (0, 0, h, w)
    y0, x0, y1, x1 = box
    lb = Letterbox.fit((y1 - y0, x1 - x0), int(model.input_size))
    img = prepare(lb.image(image[y0:y1, x0:x1]), getattr(model, "input_prep", "raw"))
    mp = lb.points(pts - [x0, y0]) if len(pts) else np.zeros((0, 2))
    maps = click_maps(img.shape, mp, list(labels), float(model.click_radius))
    pm = (lb.image(prev[y0:y1, x0:x1].astype(np.float32)) >= 0.5).astype(np.float32) if has_prev else np.zeros_like(img)
    return np.concatenate([img[None], maps, pm[None]]), ClickFrame(box, lb, mp, prev if has_prev else None)


def click_output(model, prob_model: np.ndarray, frame: ClickFrame, labels, shape: tuple[int, int]):
    """(prob, mask) in the slice's pixels from the model's (S, S) probability for ``frame``."""
    y0, x0, y1, x1 = frame.box
    m = keep_components_touching(prob_model >= float(model.threshold), frame.model_points, list(labels))
    mask_c = frame.lb.unmap(m.astype(np.uint8), order=0) > 0
    prob_c = np.clip(frame.lb.unmap(prob_model, order=1), 0, 1)
    if frame.prev is not None:
        mask = frame.prev.copy()
        prob = frame.prev.astype(np.float32)
    else:
        mask = np.zeros(shape, bool)
        prob = np.zeros(shape, np.float32)
    mask[y0:y1, x0:x1] = mask_c
    prob[y0:y1, x0:x1] = prob_c
    return prob.astype(np.float32), mask


def run_batch(model, inputs: list[np.ndarray]) -> np.ndarray:
    """(N, S, S) probabilities for a list of (4, S, S) inputs."""
    import torch

    p = next(model.parameters())
    with torch.inference_mode():
        x = torch.from_numpy(np.stack(inputs)).to(p.device, p.dtype)
        return torch.sigmoid(model(x)).float().cpu().numpy()[:, 0]
