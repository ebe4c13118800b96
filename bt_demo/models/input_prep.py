"""The input mapping a segmentation net was trained with, applied the same way in training and in the app.

``raw``: the slice as the engine receives it. ``median_clahe``: a 3x3 median filter then CLAHE (clip 2,
8 x 8 tiles) on the letterboxed model input, the preprocessing of seed 002. The name is stored in the
model's config (``SegNet.input_prep``), so a weights folder always gets the input it learned from.
"""

from __future__ import annotations

import numpy as np

PREPS = ("raw", "median_clahe")


def prepare(image: np.ndarray, name: str = "raw") -> np.ndarray:
    """float32 (H, W) in [0, 1] at the model's input size -> the same, mapped by ``name``."""
    if name == "raw":
        return image
    if name == "median_clahe":
        import cv2

        u8 = np.clip(np.asarray(image, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        u8 = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(cv2.medianBlur(u8, 3))
        return u8.astype(np.float32) / 255.0
    raise ValueError(f"unknown input preparation {name!r}; options: {', '.join(PREPS)}")


def prepare_batch(images: np.ndarray, name: str = "raw") -> np.ndarray:
    """(N, H, W) or (N, C, H, W) with the image in channel 0 -> the same with the image channel prepared."""
    if name == "raw":
        return images
    out = np.array(images, np.float32, copy=True)
    for i in range(len(out)):
        if out.ndim == 3:
            out[i] = prepare(out[i], name)
        else:
            out[i, 0] = prepare(out[i, 0], name)
    return out
