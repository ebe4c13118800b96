"""Tiny, randomly initialised models saved the way training saves real ones.

Tests load them through the app's real loading code (weights folders with
config.json + model.safetensors), so no test needs the shipped weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_SEG = dict(encoder_name="tu-test_efficientnet", encoder_depth=3, decoder_channels=[16, 8, 8], input_size=64)
TINY_HEAD = dict(backbone="test_efficientnet", input_size=64, fit="head_equalized")
TINY_CLS = dict(presence=TINY_HEAD | {"class_names": ["no_tumour", "tumour"], "no_tumour_class": "no_tumour"},
                tumour_type=TINY_HEAD | {"class_names": ["glioma", "meningioma", "pituitary"], "no_tumour_class": None})


def make_seg(folder: Path, task: str = "segmentation", seed: int = 0, **over) -> Path:
    from bt_demo.models.nets import SegNet

    torch.manual_seed(seed)
    kw = TINY_SEG | {"task": task, "in_channels": 4 if task == "clicks" else 1} | over
    SegNet(**kw).save_pretrained(folder)
    return folder


def make_classifier(folder: Path, seed: int = 0, **over) -> Path:
    """A two-head TumourClassifier; ``over`` updates both heads' configs (e.g. backbone=..., input_size=...)."""
    from bt_demo.models.nets import TumourClassifier

    torch.manual_seed(seed)
    TumourClassifier(presence=TINY_CLS["presence"] | over, tumour_type=TINY_CLS["tumour_type"] | over).save_pretrained(folder)
    return folder


def make_generator(folder: Path, seed: int = 0) -> Path:
    """A tiny mask-conditioned diffusion generator (32 px, random weights), saved as training saves one."""
    from bt_demo.models.generator import MaskConditionedDiffusion

    torch.manual_seed(seed)
    MaskConditionedDiffusion(sample_size=32, block_out_channels=[8, 16], attention=False).save_pretrained(folder)
    return folder


def make_weights_dir(root: Path) -> Path:
    """root/{unet,clicks,classifier,diffusion}: a complete tiny weights folder for the app."""
    root.mkdir(parents=True, exist_ok=True)
    make_seg(root / "unet", "segmentation")
    make_seg(root / "clicks", "clicks")
    make_classifier(root / "classifier")
    make_generator(root / "diffusion")
    return root
