"""The tumour classifier engine: calibrated probabilities and a Grad-CAM heat map."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from bt_demo.models import weights
from bt_demo.models.sizing import fit_square

DEFAULT_ID = "classifier"

# Display names for the class folders' names.
PRETTY = {"glioma": "glioma", "meningioma": "meningioma", "pituitary": "pituitary", "no_tumour": "no tumour"}


@dataclass(frozen=True)
class ClassResult:
    """probabilities: class name -> calibrated probability (sums to 1);
    tumour_probability = 1 - P(no tumour); temperature used; seconds."""

    probabilities: dict[str, float]
    tumour_probability: float
    top_class: str
    temperature: float
    seconds: float
    card: str = ""  # the held-out numbers of the model's card, shown beside the probabilities


class ClassifierEngine:
    name = "classifier"

    def __init__(self, model):
        self.model = model

    @classmethod
    def load(cls, model_id: str = DEFAULT_ID, device: str | None = None) -> "ClassifierEngine | str":
        from bt_demo.models.nets import ClassifierNet

        loaded = weights.load(ClassifierNet, model_id, device=device, strict=True)
        if not loaded.ok:
            return f"classifier unavailable, because {loaded.reason}"
        eng = cls(loaded.model)
        eng.card_line = weights.card_summary(model_id)
        return eng

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names)

    def _input(self, image: np.ndarray):
        import torch

        img = np.asarray(image, np.float32)
        if img.ndim != 2:
            raise ValueError(f"expected a 2-D image (h, w), got shape {img.shape}")
        lb = fit_square(img, self.model.input_size, getattr(self.model, "fit", "letterbox"))
        p = next(self.model.parameters())
        return torch.from_numpy(lb.image(img))[None, None].to(p.device, p.dtype), lb

    def classify(self, image: np.ndarray) -> ClassResult:
        """image: float32 (h, w) in [0, 1]. Probabilities after temperature scaling."""
        import torch

        t0 = time.perf_counter()
        x, _ = self._input(image)
        with torch.inference_mode():
            logits = self.model(x).float()[0]
        probs = torch.softmax(logits / self.model.temperature, dim=0).cpu().numpy()
        names = self.class_names
        d = {n: float(p) for n, p in zip(names, probs)}
        tumour = 1.0 - d[self.model.no_tumour_class]
        return ClassResult(d, float(tumour), names[int(np.argmax(probs))], float(self.model.temperature),
                           time.perf_counter() - t0, getattr(self, "card_line", ""))

    def gradcam(self, image: np.ndarray, class_name: str | None = None) -> np.ndarray:
        """Grad-CAM of ``class_name`` (default: the top class) on the last conv features.

        Returns float32 (h, w) in [0, 1] at the input image's size (0 where the
        class has no positive evidence).
        """
        import torch

        x, lb = self._input(image)
        with torch.enable_grad():
            feats = self.model.features(x.detach()).detach().requires_grad_(True)
            logits = self.model.head(feats)[0]
            idx = int(torch.argmax(logits)) if class_name is None else self._index(class_name)
            (grad,) = torch.autograd.grad(logits[idx], feats)
        w = grad.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((w * feats).sum(1))[0].detach().float().cpu().numpy()
        if cam.max() > 0:
            cam = cam / cam.max()
        import cv2

        cam = cv2.resize(cam, (lb.size, lb.size), interpolation=cv2.INTER_LINEAR)
        return np.clip(lb.unmap(cam, order=1), 0, 1).astype(np.float32)

    def _index(self, class_name: str) -> int:
        if class_name not in self.class_names:
            raise ValueError(f"unknown class {class_name!r}; choose one of {self.class_names}")
        return self.class_names.index(class_name)
