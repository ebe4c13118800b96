"""A segmentation decoder on LiteMedSAM's frozen image encoder (issue 25, part 3: the "U-Net on the
pretrained encoder" rows).

The encoder (TinyViT, distilled from MedSAM; ``bt_demo.models.medsam``) runs once per slice; this decoder
reads three of its outputs, all in LiteMedSAM's padded 256 frame:

    neck   256 x 64 x 64    the image embedding (what SAM's mask decoder reads)
    s1     128 x 128 x 128  the second TinyViT stage: the skip at 128
    image    1 x 256 x 256  the prepared slice itself (min-max [0, 1], padded): the skip at full size

and upsamples 64 -> 128 -> 256 in the U-Net way (conv blocks, skips concatenated), ending in one logit per
pixel of the 256 frame. ``probabilities`` crops the unpadded frame and resizes it back to the slice.

Nothing here imports torch at import time. The weights folder holds ``config.json`` (the architecture and the
post-processing chosen on validation patients) and ``model.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

SKIPS = ("neck", "s1")  # the encoder outputs the decoder reads (medsam.STAGES names)
DEFAULT_WIDTH = 48


def build(width: int = DEFAULT_WIDTH, full_width: int = 16, context: int = 0):
    """The decoder: an nn.Module taking (neck (B, 256, 64, 64), s1 (B, 128, 128, 128), image (B, C, 256, 256))
    and returning logits (B, 1, 256, 256). C = 1 + 2 * context: with context K the full-size skip also reads the
    K slices either side (2.5-D; the encoder still sees the slice alone), ordered -K..+K."""
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class EncoderDecoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.width, self.full_width, self.context = int(width), int(full_width), int(context)
            w, f = self.width, self.full_width
            self.at64 = block(256, 2 * w)
            self.skip128 = nn.Sequential(nn.Conv2d(128, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
            self.at128 = block(2 * w + w, w)
            self.skip256 = nn.Sequential(nn.Conv2d(1 + 2 * self.context, f, 3, padding=1, bias=False), nn.BatchNorm2d(f),
                                         nn.ReLU(inplace=True))
            self.at256 = block(w + f, f)
            self.head = nn.Conv2d(f, 1, 1)

        def forward(self, neck, s1, image):
            x = self.at64(neck.float())
            x = nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = self.at128(torch.cat([x, self.skip128(s1.float())], 1))
            x = nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = self.at256(torch.cat([x, self.skip256(image.float())], 1))
            return self.head(x)

    return EncoderDecoder()


def n_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def save(model, folder: str | Path, config: dict) -> Path:
    """config.json (architecture + whatever the caller adds: post-processing, provenance) and float16
    model.safetensors (BatchNorm running statistics included)."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    cfg = {"architecture": "medsam_encoder_decoder", "width": model.width, "full_width": model.full_width,
           "context": model.context,
           "skips": list(SKIPS)} | config
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def load(folder: str | Path, device: str = "cpu"):
    """(model in eval mode, config) from a folder written by ``save``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("architecture") != "medsam_encoder_decoder":
        raise ValueError(f"{folder}: not a MedSAM-encoder decoder ({cfg.get('architecture')!r})")
    model = build(cfg["width"], cfg["full_width"], int(cfg.get("context", 0)))
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(folder / "model.safetensors")).items()}
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), cfg


def logits_to_probs(logits: np.ndarray, valid_hw: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """float32 (H, W) probabilities of the slice from (256, 256) logits of the padded frame."""
    import cv2

    h, w = int(valid_hw[0]), int(valid_hw[1])
    crop = np.asarray(logits, np.float32)[:h, :w]
    if (h, w) != tuple(shape):
        crop = cv2.resize(crop, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_LINEAR)
    return (1.0 / (1.0 + np.exp(-crop))).astype(np.float32)


def predict_logits(model, neck: Any, s1: Any, image: Any, device: str = "cpu") -> np.ndarray:
    """Logits (B, 256, 256) for batched encoder outputs (numpy or torch, any float dtype)."""
    import torch

    def t(a, lead):
        a = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
        return (a if a.ndim == lead else a[None]).to(device)

    with torch.inference_mode():
        return model(t(neck, 4), t(s1, 4), t(image, 4)).float().cpu().numpy()[:, 0]


# --- the app's engine: the U-Net's automatic mask, outlined again on LiteMedSAM's encoder ---
NAME = "U-Net refined on LiteMedSAM's encoder"


def gate(refined: np.ndarray, detector: np.ndarray) -> np.ndarray:
    """The shipped rule (docs/studies.md, issue 25): the decoder's mask where the U-Net finds tumour on the slice,
    nothing where it finds none. The U-Net detects (it saw every slice in training), the decoder outlines."""
    refined = np.asarray(refined, bool)
    return refined if np.asarray(detector, bool).any() else np.zeros_like(refined)


class RefineResult:
    """The decoder's post-processed mask of one PROCESSED slice (before the gate), its time, whether the
    encoder ran for it (False: MedSAM's prompts or the classifier heads had already encoded the slice), and what
    the weights' card measured."""

    __slots__ = ("mask", "seconds", "encoder_ran", "card")

    def __init__(self, mask: np.ndarray, seconds: float, encoder_ran: bool, card: str = ""):
        self.mask, self.seconds, self.encoder_ran, self.card = mask, float(seconds), bool(encoder_ran), card


class EncoderDecoderEngine:
    """The shipped decoder (``weights/medsam_seg``) on the shared per-slice encoder run (``medsam.slice_outputs``)."""

    name = NAME

    def __init__(self, model, config: dict, card_line: str, device: str = "cpu"):
        self.model, self.config, self.card_line, self.device = model, config, card_line, device
        post = config["postprocessing"]
        self.threshold, self.min_component_px = float(post["threshold"]), int(post["min_component_px"])
        self.context = int(config.get("context", 0))

    @classmethod
    def load(cls, folder: str | Path, device: str | None = None) -> "EncoderDecoderEngine | str":
        """The engine, or why it is not offered (no folder, the LiteMedSAM checkpoint missing, a broken file)."""
        from bt_demo.models import medsam

        p = Path(folder)
        if not (p / "config.json").is_file() or not (p / "model.safetensors").is_file():
            return f"no refining decoder in {p} (python -m train medsam-seg ... --export {p})"
        reason = medsam.checkpoint_status()
        if reason:
            return f"the LiteMedSAM encoder is not available: {reason}"
        dev = medsam.device_of(device)
        try:
            model, cfg = load(p, dev)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            return f"cannot read the refining decoder in {p}: {exc}"
        if int(cfg.get("context", 0)):
            return f"{p} reads neighbouring slices (2.5-D); the app's slice view has none to give it"
        if "postprocessing" not in cfg:
            return f"{p}/config.json has no post-processing (threshold, smallest component)"
        card = ""
        try:
            rows = json.loads((p / "card.json").read_text()).get("rows", {})
            v = rows.get("val", {}).get("decoder where the U-Net finds tumour")
            if v:
                card = (f"validation patients: per-patient Dice {v['patient_dice_mean']:.3f} (U-Net alone "
                        f"{rows['val']['shipped U-Net alone']['patient_dice_mean']:.3f})")
        except (OSError, ValueError, KeyError):
            pass
        return cls(model, cfg, card, dev)

    def refine(self, image: np.ndarray, key: str | None = None) -> RefineResult:
        """The decoder's mask of a PROCESSED slice (bool, its pixels), post-processed as on validation."""
        import time

        from bt_demo.models import medsam
        from bt_demo.models.postprocess import binarize

        t0 = time.perf_counter()
        out = medsam.slice_outputs(image, key=key, device=self.device)
        logits = predict_logits(self.model, out.embedding, out.s1, out.image[None], self.device)[0]
        prob = logits_to_probs(logits, out.valid_hw, np.asarray(image).shape[:2])
        mask = binarize(prob, self.threshold, self.min_component_px)
        return RefineResult(mask, time.perf_counter() - t0, out.encoder_ran, self.card_line)


class RefinedUNet:
    """The automatic mask as the app shows it once a slice's encoder run is there (``gate``): the U-Net detects,
    the decoder on LiteMedSAM's encoder outlines. ``segment`` has the U-Net engine's signature, so the studies
    (lab robustness, failures) measure exactly the shipped rule."""

    name = NAME
    reads_raw = True  # the decoder reads the slice as loaded (``raw``), the U-Net the model input

    def __init__(self, unet, refiner: EncoderDecoderEngine):
        self.unet, self.refiner = unet, refiner

    def segment(self, image: np.ndarray, geometry=None, key: str | None = None, raw: np.ndarray | None = None):
        """SegResult in ORIGINAL pixels. ``image``/``geometry``: the U-Net's PROCESSED input and its map back;
        ``raw``: the slice as loaded (original pixels), which the decoder reads as the app gives it (it was
        trained on whole slices; the brain crop cost it 0.060 Dice). None: the decoder reads ``image`` too."""
        from bt_demo.models.base import SegResult

        u = self.unet.segment(image, geometry)
        if raw is not None:
            r = self.refiner.refine(raw, key=key)
            outline = np.asarray(r.mask, bool)
        else:
            r = self.refiner.refine(image, key=key)
            outline = (geometry.map_to_original(np.asarray(r.mask, bool), fill=False) if geometry is not None
                       else r.mask)
        return SegResult(gate(outline, u.mask), NAME, u.seconds + r.seconds,
                         extra={"threshold": u.extra.get("threshold"), "encoder_ran": r.encoder_ran})
