"""Tiny, randomly initialised models saved the way training saves real ones.

Tests load them through the app's real loading code (weights folders with
config.json + model.safetensors), so no test needs the shipped weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_SEG = dict(encoder_name="tu-test_efficientnet", encoder_depth=3, decoder_channels=[16, 8, 8], input_size=64)
TINY_CLS = dict(backbone="test_efficientnet", input_size=64)


def make_seg(folder: Path, task: str = "segmentation", seed: int = 0, **over) -> Path:
    from bt_demo.models.nets import SegNet

    torch.manual_seed(seed)
    kw = TINY_SEG | {"task": task, "in_channels": 4 if task == "clicks" else 1} | over
    SegNet(**kw).save_pretrained(folder)
    return folder


def make_classifier(folder: Path, seed: int = 0, **over) -> Path:
    from bt_demo.models.nets import ClassifierNet

    torch.manual_seed(seed)
    ClassifierNet(**(TINY_CLS | over)).save_pretrained(folder)
    return folder


def make_weights_dir(root: Path) -> Path:
    """root/{unet,clicks,classifier}: a complete tiny weights folder for the app."""
    root.mkdir(parents=True, exist_ok=True)
    make_seg(root / "unet", "segmentation")
    make_seg(root / "clicks", "clicks")
    make_classifier(root / "classifier")
    return root
