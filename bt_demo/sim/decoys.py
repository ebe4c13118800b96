"""Synthetic pictures that are NOT brain MRI, for testing and measuring :mod:`bt_demo.image.looks_like_brain`.

Drawn from random numbers (no real data): a chest-radiograph look, a blank,
a gradient, a page of text, a screenshot, and a photograph-like scene. Each
is float32 ``(H, W)`` in ``[0, 1]``.
"""

from __future__ import annotations

import numpy as np

KINDS = ("chest_xray", "blank", "gradient", "text", "screenshot", "photo")


def _smooth_noise(rng, shape, sigma):
    import cv2

    f = rng.standard_normal(shape).astype(np.float32)
    f = cv2.GaussianBlur(f, (0, 0), sigma)
    return (f - f.mean()) / (f.std() + 1e-6)


def _ellipse(shape, cy, cx, ry, rx):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def chest_xray(side=256, rng=None):
    """A frontal chest radiograph look: a bright body filling the frame, two dark lungs, spine, ribs."""
    rng = rng or np.random.default_rng(0)
    h = w = side
    img = np.full((h, w), 0.75, np.float32) + 0.05 * _smooth_noise(rng, (h, w), side / 20)
    img[:, : int(w * rng.uniform(0.02, 0.06))] = 0.1  # a little air beside the shoulders
    for sx in (-1, 1):
        lung = _ellipse((h, w), h * 0.52, w / 2 + sx * w * 0.2, h * 0.34, w * 0.15)
        img[lung] = 0.22 + 0.05 * rng.random()
    img[:, int(w * 0.47):int(w * 0.53)] = 0.9  # spine and mediastinum
    for k in range(8):  # ribs
        y = int(h * (0.2 + 0.08 * k))
        img[y:y + max(1, side // 90)] += 0.15
    img += 0.02 * rng.standard_normal((h, w)).astype(np.float32)
    return np.clip(img, 0, 1)


def blank(side=256, rng=None):
    rng = rng or np.random.default_rng(0)
    return np.clip(rng.uniform(0.05, 0.95) + 0.003 * rng.standard_normal((side, side)), 0, 1).astype(np.float32)


def gradient(side=256, rng=None):
    rng = rng or np.random.default_rng(0)
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[:side, :side] / side
    g = np.cos(a) * xx + np.sin(a) * yy
    return ((g - g.min()) / (np.ptp(g) + 1e-6)).astype(np.float32)


def text(side=256, rng=None):
    """Dark lines of text on a light page."""
    import cv2

    rng = rng or np.random.default_rng(0)
    img = np.full((side, side), 242, np.uint8)  # cv2 draws text on 8-bit images
    letters = "abcdefghijklmnopqrstuvwxyz     "
    scale = side / 512
    for row in range(int(side / (22 * scale)) - 1):
        line = "".join(rng.choice(list(letters), 40))
        cv2.putText(img, line, (int(8 * scale), int((28 + 22 * row) * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.6 * scale, 25, 1, cv2.LINE_AA)
    return img.astype(np.float32) / 255


def screenshot(side=256, rng=None):
    """Windows, buttons and light text on a dark desktop."""
    import cv2

    rng = rng or np.random.default_rng(0)
    img = np.full((side, side), 38, np.uint8)  # cv2 draws text on 8-bit images
    for _ in range(6):
        x0, y0 = rng.integers(0, side * 3 // 4, 2)
        x1, y1 = x0 + rng.integers(side // 6, side // 2), y0 + rng.integers(side // 8, side // 3)
        cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), int(rng.integers(128, 242)), -1)
    for row in range(side // 14):
        cv2.putText(img, "".join(rng.choice(list("ABCDEFGH ijklmn 0123"), 30)), (4, 10 + 14 * row),
                    cv2.FONT_HERSHEY_PLAIN, 0.7, int(rng.integers(0, 256)), 1)
    return img.astype(np.float32) / 255


def photo(side=256, rng=None):
    """A photograph-like scene: sky, horizon, textured ground, a few objects."""
    import cv2

    rng = rng or np.random.default_rng(0)
    yy = np.mgrid[:side, :side][0] / side
    horizon = rng.uniform(0.3, 0.6)
    img = np.where(yy < horizon, 0.85 - 0.3 * yy, 0.35 + 0.15 * _smooth_noise(rng, (side, side), 2.0))
    img = img.astype(np.float32) + 0.08 * _smooth_noise(rng, (side, side), side / 10)
    for _ in range(5):
        c = (int(rng.integers(0, side)), int(rng.integers(int(side * horizon), side)))
        cv2.circle(img, c, int(rng.integers(side // 20, side // 6)), float(rng.uniform(0, 1)), -1)
    return np.clip(img, 0, 1)


DRAW = {"chest_xray": chest_xray, "blank": blank, "gradient": gradient, "text": text, "screenshot": screenshot,
        "photo": photo}


def decoy(kind: str, side: int = 256, seed: int = 0) -> np.ndarray:
    """One picture of ``kind`` (one of :data:`KINDS`), float32 ``(side, side)`` in ``[0, 1]``."""
    if kind not in DRAW:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    return DRAW[kind](int(side), np.random.default_rng([int(seed), 0x44454359]))
