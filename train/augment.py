"""Augmentations for training: geometry, intensity and clinic-style degradations.

All functions take float32 images in [0, 1] (H, W) and bool masks (H, W) and a
numpy Generator, and return new arrays (no in-place changes).
"""

from __future__ import annotations

import cv2
import numpy as np


def random_affine(img: np.ndarray, masks: list[np.ndarray], rng: np.random.Generator,
                  rot_deg: float = 20, scale=(0.85, 1.2), shift: float = 0.06, flip: bool = True):
    """Rotation, isotropic scale, shift and left-right flip, one warp for image and masks."""
    h, w = img.shape
    ang = rng.uniform(-rot_deg, rot_deg)
    sc = rng.uniform(*scale)
    m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), ang, sc)
    m[0, 2] += rng.uniform(-shift, shift) * w
    m[1, 2] += rng.uniform(-shift, shift) * h
    if flip and rng.random() < 0.5:
        m = np.array([[-1, 0, w - 1], [0, 1, 0]], np.float64) @ np.vstack([m, [0, 0, 1]])
    out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    outm = [cv2.warpAffine(k.astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0) > 0 for k in masks]
    return out, outm


def elastic(img: np.ndarray, masks: list[np.ndarray], rng: np.random.Generator, alpha: float = 6.0, grid: int = 8):
    """Smooth random displacement field (bicubic upsampled coarse grid), ``alpha`` px at most."""
    h, w = img.shape
    d = rng.uniform(-1, 1, size=(2, grid, grid)).astype(np.float32) * alpha
    dx = cv2.resize(d[0], (w, h), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(d[1], (w, h), interpolation=cv2.INTER_CUBIC)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mx, my = xs + dx, ys + dy
    out = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    outm = [cv2.remap(k.astype(np.uint8), mx, my, cv2.INTER_NEAREST, borderValue=0) > 0 for k in masks]
    return out, outm


def intensity(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and gamma, then clip to [0, 1]."""
    x = img
    if rng.random() < 0.8:
        g = float(np.exp(rng.uniform(np.log(0.7), np.log(1.5))))
        x = np.power(np.clip(x, 0, 1), g)
    if rng.random() < 0.8:
        c = rng.uniform(0.75, 1.3)
        b = rng.uniform(-0.1, 0.1)
        x = (x - 0.5) * c + 0.5 + b
    return np.clip(x, 0, 1).astype(np.float32)


def degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a clinic's export does: noise, blur, down-sampling, JPEG-like smoothing."""
    x = img
    h, w = x.shape
    if rng.random() < 0.2:
        f = rng.uniform(0.35, 0.8)
        small = cv2.resize(x, (max(8, int(w * f)), max(8, int(h * f))), interpolation=cv2.INTER_AREA)
        x = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.2:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 1.5))
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0.005, 0.05), x.shape).astype(np.float32)
    return np.clip(x, 0, 1).astype(np.float32)


def crop_around(img: np.ndarray, masks: list[np.ndarray], size: int, rng: np.random.Generator,
                focus: np.ndarray | None = None):
    """A size x size crop; centred near a random pixel of ``focus`` when given and non-empty."""
    h, w = img.shape
    if size >= h and size >= w:
        return img, masks
    if focus is not None and focus.any():
        ys, xs = np.nonzero(focus)
        i = rng.integers(len(ys))
        cy = int(ys[i] + rng.integers(-size // 4, size // 4 + 1))
        cx = int(xs[i] + rng.integers(-size // 4, size // 4 + 1))
    else:
        cy, cx = int(rng.integers(size // 2, h - size // 2 + 1)), int(rng.integers(size // 2, w - size // 2 + 1))
    y0 = int(np.clip(cy - size // 2, 0, h - size))
    x0 = int(np.clip(cx - size // 2, 0, w - size))
    return img[y0:y0 + size, x0:x0 + size], [k[y0:y0 + size, x0:x0 + size] for k in masks]


def augment_pair(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, crop: int | None,
                 p_tumour_crop: float = 0.6, lab_p: float = 0.25):
    """The full training augmentation of one (image, mask) pair.

    Order as in the clinic: geometry and acquisition (intensity, degradation) first, then with probability
    ``lab_p`` a random pipeline of the app's preprocessing lab (``train.lab_augment``), as a user's toggles
    would transform the slice before the model sees it."""
    from train.lab_augment import lab_augment

    x, (m,) = random_affine(img, [mask], rng)
    if rng.random() < 0.2:
        x, (m,) = elastic(x, [m], rng)
    x = intensity(x, rng)
    x = degrade(x, rng)
    x, m = lab_augment(x, m, rng, lab_p)
    if crop:
        focus = m if rng.random() < p_tumour_crop else None
        x, (m,) = crop_around(x, [m], crop, rng, focus)
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(m)
