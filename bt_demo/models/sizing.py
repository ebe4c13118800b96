"""Fit any slice into a model's square input and map the answer back.

The slice is resized so its longer side equals ``size`` (aspect kept), then
zero-padded to size x size (centred). ``Letterbox`` remembers both so the
output probability map, and any click, go back to the slice's own pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Letterbox:
    in_shape: tuple[int, int]   # (H, W) of the image given
    size: int                   # model input side
    scale: float                # model pixels per input pixel
    resized: tuple[int, int]    # (h, w) after resizing, before padding
    pad: tuple[int, int]        # (top, left) padding

    @classmethod
    def fit(cls, shape: tuple[int, int], size: int) -> "Letterbox":
        h, w = int(shape[0]), int(shape[1])
        scale = size / max(h, w)
        rh, rw = max(1, round(h * scale)), max(1, round(w * scale))
        return cls((h, w), int(size), scale, (rh, rw), ((size - rh) // 2, (size - rw) // 2))

    def image(self, img: np.ndarray) -> np.ndarray:
        """float32 (H, W) -> float32 (size, size); area interpolation when shrinking."""
        import cv2

        img = np.asarray(img, np.float32)
        if img.shape != self.in_shape:
            raise ValueError(f"image shape {img.shape} does not match letterbox {self.in_shape}")
        if self.resized != self.in_shape:
            interp = cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR
            img = cv2.resize(img, (self.resized[1], self.resized[0]), interpolation=interp)
        out = np.zeros((self.size, self.size), np.float32)
        t, l = self.pad
        out[t:t + self.resized[0], l:l + self.resized[1]] = img
        return out

    def points(self, points_xy) -> np.ndarray:
        """(x, y) in the input image -> (x, y) in model pixels."""
        p = np.asarray(points_xy, np.float64).reshape(-1, 2)
        sy = self.resized[0] / self.in_shape[0]
        sx = self.resized[1] / self.in_shape[1]
        out = np.empty_like(p)
        out[:, 0] = (p[:, 0] + 0.5) * sx - 0.5 + self.pad[1]
        out[:, 1] = (p[:, 1] + 0.5) * sy - 0.5 + self.pad[0]
        return out

    def unmap(self, arr: np.ndarray, order: int = 1) -> np.ndarray:
        """model (size, size) map -> (H, W) of the input image (linear for probabilities, nearest for masks)."""
        import cv2

        t, l = self.pad
        crop = np.asarray(arr)[t:t + self.resized[0], l:l + self.resized[1]]
        if crop.shape == self.in_shape:
            return crop.copy()
        src = crop.astype(np.float32)
        interp = cv2.INTER_LINEAR if order == 1 else cv2.INTER_NEAREST
        out = cv2.resize(src, (self.in_shape[1], self.in_shape[0]), interpolation=interp)
        return out.astype(arr.dtype) if arr.dtype != np.float32 else out


@dataclass(frozen=True)
class SquareFit:
    """The head's bounding box (plus a margin) stretched to size x size.

    Used by the classifier: datasets pad or crop their images differently per
    class (in the 4-class set, "no tumour" images are small and non-square,
    the tumour classes 512-px squares), so a letterbox's padding bars would
    let a model learn the source instead of the anatomy. Cropping to the head
    and stretching to the square removes that cue; heads are close to square,
    so the stretch is mild.
    """
    in_shape: tuple[int, int]
    size: int
    box: tuple[int, int, int, int]  # y0, x0, y1, x1 in the input image
    equalize: bool = False  # histogram-equalise the crop: brightness/contrast of the source carry no cue either

    @classmethod
    def fit(cls, img: np.ndarray, size: int, margin: float = 0.04, equalize: bool = False) -> "SquareFit":
        from bt_demo.image.preprocess import head_mask

        img = np.asarray(img, np.float32)
        h, w = img.shape
        box = (0, 0, h, w)
        if h >= 8 and w >= 8 and float(img.max()) > float(img.min()):
            m = head_mask(img)
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            if rows.size and cols.size:
                pad = int(round(margin * max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)))  # of the head
                y0, y1 = max(0, rows[0] - pad), min(h, rows[-1] + 1 + pad)
                x0, x1 = max(0, cols[0] - pad), min(w, cols[-1] + 1 + pad)
                if y1 - y0 >= 8 and x1 - x0 >= 8:
                    box = (int(y0), int(x0), int(y1), int(x1))
        return cls((h, w), int(size), box, bool(equalize))

    def image(self, img: np.ndarray) -> np.ndarray:
        import cv2

        y0, x0, y1, x1 = self.box
        crop = np.asarray(img, np.float32)[y0:y1, x0:x1]
        shrink = crop.shape[0] > self.size or crop.shape[1] > self.size
        out = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if self.equalize:
            lo, hi = float(out.min()), float(out.max())
            if hi > lo:
                u8 = np.rint((out - lo) * (255.0 / (hi - lo))).astype(np.uint8)
                out = cv2.equalizeHist(u8).astype(np.float32) * ((hi - lo) / 255.0) + lo  # same range as given
        return out

    def unmap(self, arr: np.ndarray, order: int = 1) -> np.ndarray:
        """(size, size) map -> (H, W) of the input image; 0 outside the head box."""
        import cv2

        y0, x0, y1, x1 = self.box
        out = np.zeros(self.in_shape, np.float32)
        interp = cv2.INTER_LINEAR if order == 1 else cv2.INTER_NEAREST
        out[y0:y1, x0:x1] = cv2.resize(np.asarray(arr, np.float32), (x1 - x0, y1 - y0), interpolation=interp)
        return out


def fit_square(img: np.ndarray, size: int, how: str = "letterbox"):
    """The classifier's input mapping: ``Letterbox`` or ``SquareFit`` (both have .image and .unmap)."""
    img = np.asarray(img, np.float32)
    if how in ("head_square", "head_equalized"):
        return SquareFit.fit(img, size, equalize=how == "head_equalized")
    return Letterbox.fit(img.shape, size)
