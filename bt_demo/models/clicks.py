"""The built-in click model: our offline promptable segmenter.

A U-Net (SegNet, task "clicks") whose input is the slice plus a positive-click
map, a negative-click map and the previous mask (RITM/DeepEdit style). Every
click is one forward pass; no hub download. Same face as SAM
(``set_image`` / ``predict``), so the UI does not care which engine answers.
"""

from __future__ import annotations

import copy
import threading
import time
import warnings
import weakref
from collections.abc import Sequence

import numpy as np

from bt_demo.image.geometry import Geometry
from bt_demo.models import weights
from bt_demo.models.base import NoImageError, SegResult, box_as_point
from bt_demo.models.click_step import click_input, click_output, run_batch

DEFAULT_ID = "clicks"


_frozen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (frozen TorchScript or None, shape)
_frozen_lock = threading.Lock()


def _forward(model, x: np.ndarray) -> np.ndarray:
    """The click model on one (4, S, S) input -> (S, S) probabilities.

    On the CPU through a traced and frozen copy of the network (batch norm folded into the convolutions, no
    Python per layer), in channels-last memory layout (oneDNN's convolutions run without reordering their
    input): a click's forward pass took 50 ms frozen, 31 ms frozen and channels-last, on one thread (36 and
    20 ms on two; weights/clicks, 256 px, idle 2-core machine), outputs equal to 1e-5. Made once per model;
    where tracing fails, or for another input shape or device, the eager network answers."""
    import torch

    p = next(model.parameters())
    if p.device.type != "cpu" or "forward" in vars(model):  # a forward replaced on the instance runs as it is
        return run_batch(model, [x])[0]
    with _frozen_lock:
        hit = _frozen.get(model)
        if hit is None:
            example = torch.zeros((1, *x.shape), dtype=p.dtype).contiguous(memory_format=torch.channels_last)
            try:
                with torch.inference_mode(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    net = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
                    frozen = torch.jit.freeze(torch.jit.trace(net, example))
            except Exception:  # noqa: BLE001 - the eager network still answers
                frozen = None
            hit = _frozen[model] = (frozen, tuple(example.shape))
    frozen, shape = hit
    if frozen is None or (1, *x.shape) != shape:
        return run_batch(model, [x])[0]
    with torch.inference_mode():
        t = torch.from_numpy(x[None]).to(p.dtype).contiguous(memory_format=torch.channels_last)
        return torch.sigmoid(frozen(t)).float().contiguous().numpy()[0, 0]


class ClickEngine:
    """Promptable engine over a SegNet click model. One instance per session (holds the image)."""

    name = "click model"

    def __init__(self, model):
        if getattr(model, "task", None) != "clicks":
            raise ValueError("ClickEngine needs a SegNet trained with task='clicks'")
        self.model = model
        self._img: np.ndarray | None = None
        self._geom: Geometry | None = None
        self._key: str | None = None

    @classmethod
    def load(cls, model_id: str = DEFAULT_ID, device: str | None = None) -> "ClickEngine | str":
        from bt_demo.models.nets import SegNet

        loaded = weights.load(SegNet, model_id, device=device, strict=True)
        if not loaded.ok:
            return f"click model unavailable, because {loaded.reason}"
        if loaded.model.task != "clicks":
            return f"click model unavailable, because {model_id} is a {loaded.model.task!r} model"
        size = int(getattr(loaded.model, "input_size", 0) or 0)
        if size > 0:  # trace the frozen copy now (engines load in the background), not on the first click
            _forward(loaded.model, np.zeros((4, size, size), np.float32))
        return cls(loaded.model)

    def set_image(self, image: np.ndarray, geometry: Geometry | None = None, key: str | None = None) -> None:
        """image: float32 (h, w) in [0, 1], the processed slice; geometry: original -> processed.

        Cheap here: the click model runs the network per click (on a zoomed crop once a mask exists).
        """
        img = np.asarray(image, np.float32)
        if img.ndim != 2:
            raise ValueError(f"expected a 2-D image (h, w), got shape {img.shape}")
        self._geom = geometry or Geometry.identity(img.shape)
        if tuple(self._geom.processed_shape) != img.shape:
            raise ValueError(f"geometry says processed shape {self._geom.processed_shape}, image is {img.shape}")
        self._img = img  # full resolution: the zoom-in crops from it (click_step.py)
        self._key = key

    def predict(self, points: Sequence[Sequence[float]], labels: Sequence[int], box: Sequence[float] | None = None,
                previous: SegResult | None = None, multimask: bool = False) -> SegResult:
        """points (N, 2) (x, y) and box (x0, y0, x1, y1) in ORIGINAL slice pixels; labels 1/0.

        A box without points acts as a positive click at its centre, and the
        mask is limited to the box. ``previous`` (any engine's result for this
        slice) is fed back as the previous-mask channel. ``multimask`` is
        accepted for the common face; the click model gives one mask.
        """
        if self._img is None:
            raise NoImageError(self.name)
        t0 = time.perf_counter()
        if len(points) != len(labels):
            raise ValueError(f"{len(points)} points but {len(labels)} labels")
        pts, labs, box = box_as_point(points, labels, box)
        if not pts:
            raise ValueError("add a point or a box first")
        geom = self._geom
        proc = self._img
        pp = geom.to_processed(np.asarray(pts, np.float64))
        prev = None
        if previous is not None and previous.mask.shape == tuple(geom.original_shape):
            prev = geom.map_to_processed(previous.mask.astype(np.float32), order=1) >= 0.5
        x, frame = click_input(self.model, proc, pp, labs, prev)
        prob_m = _forward(self.model, x)
        prob_p, mask_p = click_output(self.model, prob_m, frame, labs, proc.shape)
        if box is not None:
            bp = geom.to_processed(np.array([[box[0], box[1]], [box[2], box[3]]]))
            inside = np.zeros_like(mask_p)
            xa, ya = np.floor(bp.min(0)).astype(int)
            xb, yb = np.ceil(bp.max(0)).astype(int)
            inside[max(ya, 0):yb + 1, max(xa, 0):xb + 1] = True
            mask_p &= inside
        return SegResult(geom.map_to_original(mask_p, fill=False), self.name, time.perf_counter() - t0,
                         prob=geom.map_to_original(prob_p, fill=0.0, order=1), candidates=(), scores=(),
                         extra={"n_points": len(pts), "box": list(box) if box else None})
