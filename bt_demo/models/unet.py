"""The automatic U-Net engine: a processed slice in, a tumour probability map and mask out."""

from __future__ import annotations

import time

import numpy as np

from bt_demo.image.geometry import Geometry
from bt_demo.models import weights
from bt_demo.models.base import SegResult
from bt_demo.models.input_prep import prepare
from bt_demo.models.postprocess import binarize
from bt_demo.models.sizing import Letterbox

DEFAULT_ID = "unet"


def load_unet(model_id: str = DEFAULT_ID, device: str | None = None) -> weights.Loaded:
    from bt_demo.models.nets import SegNet

    loaded = weights.load(SegNet, model_id, device=device, strict=True)
    if loaded.ok and loaded.model.task != "segmentation":
        return weights.Loaded(None, loaded.model_id, f"{loaded.model_id} is a {loaded.model.task!r} model, not a segmentation U-Net")
    return loaded


class UNetEngine:
    """Wraps a loaded SegNet. Thread-safe for inference (no per-call state)."""

    name = "U-Net"

    def __init__(self, model):
        self.model = model

    @classmethod
    def load(cls, model_id: str = DEFAULT_ID, device: str | None = None) -> "UNetEngine | str":
        """The engine, or a string saying why it is unavailable."""
        return weights.engine(cls, load_unet(model_id, device), model_id, "U-Net")

    @property
    def threshold(self) -> float:
        return float(self.model.threshold)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """float32 (h, w) in [0, 1] (processed image) -> tumour probability, float32 (h, w) in [0, 1].

        Any size or aspect ratio: letterboxed into the model's square input and mapped back.
        """
        import torch

        img = np.asarray(image, np.float32)
        if img.ndim != 2:
            raise ValueError(f"expected a 2-D image (h, w), got shape {img.shape}")
        lb = Letterbox.fit(img.shape, self.model.input_size)
        p = next(self.model.parameters())
        x = torch.from_numpy(prepare(lb.image(img), self.model.input_prep))[None, None].to(p.device, p.dtype)
        with torch.inference_mode():
            prob = torch.sigmoid(self.model(x)).float().cpu().numpy()[0, 0]
        return np.clip(lb.unmap(prob, order=1), 0, 1).astype(np.float32)

    def segment(self, image: np.ndarray, geometry: Geometry | None = None, threshold: float | None = None,
                prob: np.ndarray | None = None) -> SegResult:
        """Mask and probability map in ORIGINAL slice pixels.

        threshold: None -> the one chosen on validation (stored in the config).
        prob: a probability map already computed for this processed image
        (the threshold slider re-uses it instead of running the network again).
        """
        t0 = time.perf_counter()
        if prob is None:
            prob = self.probabilities(image)
        thr = self.threshold if threshold is None else float(threshold)
        if not 0.0 <= thr <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {thr}")
        # min_component_px was chosen at the model's input scale; convert to processed pixels.
        scale = max(prob.shape) / self.model.input_size
        mask = binarize(prob, thr, int(round(self.model.min_component_px * scale * scale)))
        geometry = geometry or Geometry.identity(prob.shape)
        return SegResult(geometry.map_to_original(mask, fill=False), self.name, time.perf_counter() - t0,
                         prob=geometry.map_to_original(prob, fill=0.0, order=1),
                         extra={"threshold": thr, "min_component_px": int(self.model.min_component_px),
                                "card": getattr(self, "card_line", "")})
