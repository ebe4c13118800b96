"""The one coordinate mapping between an original slice and a processed image.

Preprocessing may crop (and resize) the slice. Everything the UI shows
(masks, clicks, boxes) is in the pixels of the *original* slice; engines work
in the *processed* image. ``Geometry`` records the crop box and the scale so
points and masks can go both ways.

Conventions: points are ``(x, y)`` = (column, row) in pixel units, floats
allowed; shapes are ``(H, W)``; boxes are ``(x0, y0, x1, y1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """processed = (original - (x0, y0)) * (sx, sy).

    original_shape: (H, W) of the original slice.
    crop: (y0, x0, y1, x1) in original pixels (end exclusive).
    processed_shape: (H, W) of the processed image.
    """

    original_shape: tuple[int, int]
    crop: tuple[int, int, int, int]
    processed_shape: tuple[int, int]

    @classmethod
    def identity(cls, shape: tuple[int, int]) -> "Geometry":
        h, w = int(shape[0]), int(shape[1])
        return cls((h, w), (0, 0, h, w), (h, w))

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): processed pixels per original pixel."""
        y0, x0, y1, x1 = self.crop
        return self.processed_shape[1] / (x1 - x0), self.processed_shape[0] / (y1 - y0)

    @property
    def is_identity(self) -> bool:
        return self.crop == (0, 0, *self.original_shape) and self.processed_shape == self.original_shape

    def then_crop(self, box: tuple[int, int, int, int]) -> "Geometry":
        """Compose with a further crop (y0, x0, y1, x1) given in *processed* pixels."""
        sx, sy = self.scale
        if abs(sx - 1) > 1e-9 or abs(sy - 1) > 1e-9:
            raise ValueError("crop after resize is not supported; crop first, then resize")
        y0, x0, _, _ = self.crop
        by0, bx0, by1, bx1 = box
        return Geometry(self.original_shape, (y0 + by0, x0 + bx0, y0 + by1, x0 + bx1), (by1 - by0, bx1 - bx0))

    def then_resize(self, shape: tuple[int, int]) -> "Geometry":
        return Geometry(self.original_shape, self.crop, (int(shape[0]), int(shape[1])))

    # -- points -----------------------------------------------------------
    def to_processed(self, points_xy) -> np.ndarray:
        """Original (x, y) -> processed (x, y). Accepts (N, 2) or (2,), returns float64 same shape."""
        p = np.asarray(points_xy, dtype=np.float64)
        y0, x0, _, _ = self.crop
        sx, sy = self.scale
        # Pixel centres map to pixel centres: (x + 0.5) scales, then -0.5.
        out = np.empty_like(p)
        out[..., 0] = (p[..., 0] - x0 + 0.5) * sx - 0.5
        out[..., 1] = (p[..., 1] - y0 + 0.5) * sy - 0.5
        return out

    def to_original(self, points_xy) -> np.ndarray:
        """Processed (x, y) -> original (x, y)."""
        p = np.asarray(points_xy, dtype=np.float64)
        y0, x0, _, _ = self.crop
        sx, sy = self.scale
        out = np.empty_like(p)
        out[..., 0] = (p[..., 0] + 0.5) / sx - 0.5 + x0
        out[..., 1] = (p[..., 1] + 0.5) / sy - 0.5 + y0
        return out

    def box_to_processed(self, box_xyxy) -> np.ndarray:
        b = np.asarray(box_xyxy, dtype=np.float64).reshape(2, 2)
        return self.to_processed(b).reshape(4)

    # -- masks / maps -----------------------------------------------------
    def map_to_original(self, values: np.ndarray, fill: float = 0, order: int = 0) -> np.ndarray:
        """A processed-image array (mask, probability map, label map) -> original pixels.

        order=0 (nearest) for masks and labels, 1 (linear) for probability maps.
        Outside the crop the result is ``fill``. Dtype is kept.
        """
        import cv2

        values = np.asarray(values)
        y0, x0, y1, x1 = self.crop
        ch, cw = y1 - y0, x1 - x0
        if values.shape[:2] != tuple(self.processed_shape):
            raise ValueError(f"array shape {values.shape[:2]} does not match processed shape {self.processed_shape}")
        if (ch, cw) != tuple(self.processed_shape):
            interp = cv2.INTER_NEAREST if order == 0 else cv2.INTER_LINEAR
            src = values.astype(np.float32) if values.dtype == bool or values.dtype.itemsize > 4 or values.dtype == np.int64 else values
            if src.dtype == bool:
                src = src.astype(np.uint8)
            resized = cv2.resize(src, (cw, ch), interpolation=interp)
            inside = resized.astype(values.dtype) if values.dtype != bool else resized > 0.5
        else:
            inside = values
        out = np.full(tuple(self.original_shape) + values.shape[2:], fill, dtype=values.dtype)
        out[y0:y1, x0:x1] = inside
        return out

    def map_to_processed(self, values: np.ndarray, order: int = 0) -> np.ndarray:
        """An original-slice array -> processed pixels (crop, then resize)."""
        import cv2

        values = np.asarray(values)
        y0, x0, y1, x1 = self.crop
        crop = values[y0:y1, x0:x1]
        if crop.shape[:2] == tuple(self.processed_shape):
            return crop.copy()
        interp = cv2.INTER_NEAREST if order == 0 else cv2.INTER_AREA
        src = crop.astype(np.uint8) if crop.dtype == bool else crop
        if src.dtype == np.int64:
            src = src.astype(np.int32)
        resized = cv2.resize(src, (self.processed_shape[1], self.processed_shape[0]), interpolation=interp)
        return resized > 0 if values.dtype == bool else resized.astype(values.dtype)

    def to_dict(self) -> dict:
        return {"original_shape": list(self.original_shape), "crop_y0x0y1x1": list(self.crop),
                "processed_shape": list(self.processed_shape)}
