"""The tumour classifier engine: two calibrated heads and a Grad-CAM for each.

*Is there a tumour on this slice?* (presence head) and *which type?* (type
head, meaningful given a tumour). The four-class view is derived from them:
P(no tumour) = 1 - P(tumour), P(type) = P(tumour) * P(type | tumour).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from bt_demo.image.domain import notices as domain_notices  # noqa: F401 - the UI asks the classifier module for them
from bt_demo.models import weights
from bt_demo.models.sizing import fit_square

DEFAULT_ID = "classifier"
PRESENCE, TYPE = "presence", "type"

# Display names for the class names.
PRETTY = {"glioma": "glioma", "meningioma": "meningioma", "pituitary": "pituitary", "no_tumour": "no tumour",
          "tumour": "tumour"}


# what the heads learned from, said beside their numbers
TRAINED_ON = {PRESENCE: "brain MRI, FLAIR (LGG patients)", TYPE: "brain MRI, T1 contrast-enhanced (figshare)"}
def gradcam_choices(type_names: list[str]) -> list[tuple[str, str]]:
    """(label, value) for the heat-map chooser: value 'head:class'."""
    return [("tumour (presence head)", f"{PRESENCE}:tumour"),
            *[(f"{PRETTY.get(t, t)} (type head)", f"{TYPE}:{t}") for t in type_names]]


def parse_gradcam_choice(value: str | None) -> tuple[str, str | None]:
    """'type:glioma' -> ('type', 'glioma'); None or '' -> ('presence', 'tumour')."""
    if not value:
        return PRESENCE, "tumour"
    head, _, cls = str(value).partition(":")
    if head not in (PRESENCE, TYPE) or not cls:
        raise ValueError(f"unknown heat map {value!r}; choose 'presence:tumour' or 'type:<tumour type>'")
    return head, cls


@dataclass(frozen=True)
class ClassResult:
    """tumour_probability: P(tumour) of the presence head; type_probabilities: P(type | tumour) of the type head;
    probabilities: the derived four-class view (no_tumour + types, sums to 1); top_class: its most likely class;
    temperatures: per head; notices: why the slice may be unlike the training data; card: per-head held-out
    numbers (shown under the probabilities)."""

    probabilities: dict[str, float]
    tumour_probability: float
    type_probabilities: dict[str, float]
    top_class: str
    temperatures: dict[str, float]
    seconds: float
    card: str = ""
    notices: tuple[str, ...] = field(default_factory=tuple)

    @property
    def top_type(self) -> str:
        return max(self.type_probabilities, key=self.type_probabilities.get)


class ClassifierEngine:
    name = "classifier"

    def __init__(self, model):
        self.model = model
        self.card_line = ""

    @classmethod
    def load(cls, model_id: str = DEFAULT_ID, device: str | None = None) -> "ClassifierEngine | str":
        from bt_demo.models.nets import TumourClassifier

        return weights.engine(cls, weights.load(TumourClassifier, model_id, device=device, strict=True), model_id,
                              "classifier")

    @property
    def type_names(self) -> list[str]:
        return self.model.type_names

    @property
    def class_names(self) -> list[str]:
        """The four-class view's names: 'no_tumour' and the types."""
        return ["no_tumour", *self.type_names]

    def _net(self, head: str):
        if head not in (PRESENCE, TYPE):
            raise ValueError(f"unknown head {head!r}; choose {PRESENCE!r} or {TYPE!r}")
        return self.model.presence if head == PRESENCE else self.model.tumour_type

    def _input(self, net, image: np.ndarray):
        import torch

        img = np.asarray(image, np.float32)
        if img.ndim != 2:
            raise ValueError(f"expected a 2-D image (h, w), got shape {img.shape}")
        lb = fit_square(img, net.input_size, net.fit)
        p = next(net.parameters())
        return torch.from_numpy(lb.image(img))[None, None].to(p.device, p.dtype), lb

    def head_probabilities(self, image: np.ndarray, head: str) -> dict[str, float]:
        """Calibrated probabilities of one head: {'no_tumour', 'tumour'} or the types (given a tumour)."""
        import torch

        net = self._net(head)
        x, _ = self._input(net, image)
        with torch.inference_mode():
            logits = net(x).float()[0]
        probs = torch.softmax(logits / net.temperature, dim=0).cpu().numpy()
        return {n: float(v) for n, v in zip(net.class_names, probs, strict=True)}

    def classify(self, image: np.ndarray, notices: tuple[str, ...] = ()) -> ClassResult:
        """image: float32 (h, w), any range (each net standardises its input). notices: the caller's
        reasons why the slice is unlike the training data (shown beside the numbers)."""
        t0 = time.perf_counter()
        pres = self.head_probabilities(image, PRESENCE)
        types = self.head_probabilities(image, TYPE)
        p_t = pres["tumour"]
        four = {"no_tumour": 1.0 - p_t, **{k: p_t * v for k, v in types.items()}}
        top = max(four, key=four.get)
        temps = {PRESENCE: float(self.model.presence.temperature), TYPE: float(self.model.tumour_type.temperature)}
        return ClassResult(four, float(p_t), types, top, temps, time.perf_counter() - t0, self.card_line,
                           tuple(notices))

    def gradcam(self, image: np.ndarray, head: str = PRESENCE, class_name: str | None = None) -> np.ndarray:
        """Grad-CAM of ``class_name`` of ``head`` (default: 'tumour' for presence, the top type for type)
        on that net's last conv features.

        Returns float32 (h, w) in [0, 1] at the input image's size (0 where the
        class has no positive evidence).
        """
        import cv2
        import torch

        net = self._net(head)
        x, lb = self._input(net, image)
        if class_name is None and head == PRESENCE:
            class_name = "tumour"
        with torch.enable_grad():
            feats = net.features(x.detach()).detach().requires_grad_(True)
            logits = net.head(feats)[0]
            idx = int(torch.argmax(logits)) if class_name is None else self._index(net, class_name)
            (grad,) = torch.autograd.grad(logits[idx], feats)
        w = grad.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((w * feats).sum(1))[0].detach().float().cpu().numpy()
        if cam.max() > 0:
            cam = cam / cam.max()
        cam = cv2.resize(cam, (net.input_size, net.input_size), interpolation=cv2.INTER_LINEAR)
        return np.clip(lb.unmap(cam, order=1), 0, 1).astype(np.float32)

    @staticmethod
    def _index(net, class_name: str) -> int:
        if class_name not in net.class_names:
            raise ValueError(f"unknown class {class_name!r}; choose one of {net.class_names}")
        return net.class_names.index(class_name)
