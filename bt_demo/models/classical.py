"""Classical promptable fallback: scikit-image's random walker seeded by the clicks.

Used for point prompts when neither SAM nor the click model can be loaded.
Positive clicks seed the tumour, negative clicks and the slice border seed the
background (and, with a box, everything outside the box).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from bt_demo.image.geometry import Geometry
from bt_demo.models.base import NoImageError, SegResult, box_as_point
from bt_demo.models.postprocess import keep_components_touching

WORK_SIDE = 160  # random walker cost grows fast with size; solve on a reduced grid


class RandomWalkerEngine:
    name = "random walker (classical)"

    def __init__(self, beta: float = 130.0, seed_radius: int = 2):
        self.beta = float(beta)
        self.seed_radius = int(seed_radius)
        self._img = None
        self._geom: Geometry | None = None
        self._scale = 1.0

    def set_image(self, image: np.ndarray, geometry: Geometry | None = None, key: str | None = None) -> None:
        import cv2

        img = np.asarray(image, np.float32)
        if img.ndim != 2:
            raise ValueError(f"expected a 2-D image (h, w), got shape {img.shape}")
        self._geom = geometry or Geometry.identity(img.shape)
        self._proc_shape = img.shape
        self._scale = min(1.0, WORK_SIDE / max(img.shape))
        if self._scale < 1:
            img = cv2.resize(img, (max(2, round(img.shape[1] * self._scale)), max(2, round(img.shape[0] * self._scale))),
                             interpolation=cv2.INTER_AREA)
        self._img = cv2.GaussianBlur(img, (0, 0), 0.8)

    def predict(self, points: Sequence[Sequence[float]], labels: Sequence[int], box: Sequence[float] | None = None,
                previous: SegResult | None = None, multimask: bool = False) -> SegResult:
        """points (x, y) and box in ORIGINAL pixels; labels 1/0. One mask."""
        import cv2
        from skimage.segmentation import random_walker

        if self._img is None:
            raise NoImageError(self.name)
        t0 = time.perf_counter()
        pts, labs, box = box_as_point(points, labels, box)
        if not any(l == 1 for l in labs):
            raise ValueError("add a positive point (on the tumour) or a box first")
        h, w = self._img.shape
        seeds = np.zeros((h, w), np.int32)
        seeds[0, :] = seeds[-1, :] = seeds[:, 0] = seeds[:, -1] = 2
        if box is not None:
            b = self._geom.to_processed(np.array([[box[0], box[1]], [box[2], box[3]]])) * self._scale
            outside = np.ones((h, w), bool)
            xa, ya = np.floor(b.min(0)).astype(int)
            xb, yb = np.ceil(b.max(0)).astype(int)
            outside[max(ya, 0):yb + 1, max(xa, 0):xb + 1] = False
            seeds[outside] = 2
        wp = self._geom.to_processed(np.asarray(pts, np.float64)) * self._scale
        for (x, y), l in zip(wp, labs, strict=False):
            xi, yi = int(round(x)), int(round(y))
            if 0 <= xi < w and 0 <= yi < h:
                cv2.circle(seeds, (xi, yi), self.seed_radius, 1 if l == 1 else 2, -1)
        if not (seeds == 1).any():
            raise ValueError("the positive points are outside the image")
        prob = random_walker(self._img, seeds, beta=self.beta, mode="cg_j", tol=1e-3, return_full_prob=True)[0]
        prob = np.nan_to_num(prob.astype(np.float32))
        mask = keep_components_touching(prob >= 0.5, wp, labs)
        ph, pw = self._proc_shape
        mask_p = cv2.resize(mask.astype(np.uint8), (pw, ph), interpolation=cv2.INTER_NEAREST) > 0
        prob_p = cv2.resize(prob, (pw, ph), interpolation=cv2.INTER_LINEAR)
        return SegResult(self._geom.map_to_original(mask_p, fill=False), self.name, time.perf_counter() - t0,
                         prob=self._geom.map_to_original(prob_p, fill=0.0, order=1),
                         extra={"beta": self.beta, "n_points": len(pts)})
