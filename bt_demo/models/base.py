"""The result type every segmenter returns and the face every promptable engine shows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from bt_demo.errors import InputError


@dataclass(frozen=True)
class SegResult:
    """One segmenter's answer, always in the ORIGINAL slice's pixels.

    mask: bool (H, W). prob: float32 (H, W) in [0, 1] or None.
    engine: display name (e.g. "U-Net", "click model", "SAM facebook/sam-vit-base").
    seconds: wall time of the call that produced it.
    candidates: for multimask engines, the alternative masks (bool (H, W)) and
    their predicted IoU scores; ``mask`` is ``candidates[chosen]``.
    extra: small JSON-safe facts (threshold used, low-res logits are NOT here).
    """

    mask: np.ndarray
    engine: str
    seconds: float
    prob: np.ndarray | None = None
    candidates: tuple[np.ndarray, ...] = ()
    scores: tuple[float, ...] = ()
    chosen: int = 0
    extra: dict = field(default_factory=dict)

    def with_choice(self, i: int) -> "SegResult":
        """The same result with candidate ``i`` as the mask (SAM's multimask output)."""
        if not self.candidates:
            raise ValueError("this result has no candidate masks to choose from")
        if not 0 <= i < len(self.candidates):
            raise ValueError(f"candidate must be in [0, {len(self.candidates) - 1}], got {i}")
        return SegResult(self.candidates[i], self.engine, self.seconds, self.prob, self.candidates, self.scores, i, self.extra)


@runtime_checkable
class PromptPredictor(Protocol):
    """What the UI needs from SAM, SAM 2, the click model and the classical fallback.

    ``set_image`` does the heavy work once per image and preprocessing;
    ``predict`` is called on every click and must be cheap.
    """

    name: str

    def set_image(self, image: np.ndarray, geometry=None, key: str | None = None) -> None:
        """image: float32 (h, w) in [0, 1], the PROCESSED image; geometry: bt_demo.image.geometry.Geometry
        from the original slice to it (None: identity); key: content key for caches."""

    def predict(self, points: Sequence[Sequence[float]], labels: Sequence[int], box: Sequence[float] | None = None,
                previous: SegResult | None = None, multimask: bool = True) -> SegResult:
        """points (N, 2) as (x, y) in ORIGINAL slice pixels; labels (N,) 1 positive / 0 negative;
        box (x0, y0, x1, y1) in original pixels or None; previous: the last result (refinement)."""


class NoImageError(RuntimeError):
    """predict() before set_image()."""

    def __init__(self, engine: str):
        super().__init__(f"{engine}: call set_image(image) before predict(); no image has been set")


def check_prompts(points, labels) -> tuple[np.ndarray, np.ndarray]:
    """Points and labels as a promptable engine gets them -> float64 (N, 2) (x, y) and (N,) of 0/1.

    None or empty points give (0, 2). Raises InputError (a ValueError) for another shape, a count that
    differs from the labels', labels other than 0/1, or non-finite points. Where the points may lie is the
    engine's business (each knows its slice).
    """
    pts = np.asarray(points if points is not None else [], dtype=np.float64)
    if pts.size == 0:
        pts = np.zeros((0, 2))
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise InputError(f"points must be (N, 2) as (x, y), got shape {pts.shape}")
    labs = np.asarray(labels if labels is not None else [], dtype=np.float64).reshape(-1)
    if len(labs) != len(pts):
        raise InputError(f"{len(pts)} points but {len(labs)} labels")
    if not np.isin(labs, (0, 1)).all():
        raise InputError(f"click labels must be 1 (tumour) or 0 (not tumour), got {sorted(set(labs.tolist()))}")
    if not np.isfinite(pts).all():
        raise InputError("clicks must be finite numbers")
    return pts, labs


def check_gray(image, who: str) -> np.ndarray:
    """A 2-D numeric, finite gray image as float32; InputError (a ValueError) naming ``who`` otherwise."""
    img = np.asarray(image)
    if img.ndim != 2 or img.shape[0] < 1 or img.shape[1] < 1:
        raise InputError(f"{who} needs a 2-D gray image (h, w), got shape {img.shape}")
    if not (np.issubdtype(img.dtype, np.floating) or np.issubdtype(img.dtype, np.integer) or img.dtype == bool):
        raise InputError(f"{who} needs a numeric image, got dtype {img.dtype}")
    img = img.astype(np.float32, copy=False)
    if not np.isfinite(img).all():
        raise InputError("the image contains NaN or infinite values; normalise it to [0, 1] first")
    return img


def box_as_point(points, labels, box) -> tuple[list, list, tuple | None]:
    """Points, labels and box as the click engines take them: lists of floats/ints, the box ordered
    (x0, y0, x1, y1), and the box's centre added as a positive click when no click is positive (engines
    without a box input read a box as "the tumour is in here")."""
    pts = [tuple(map(float, p)) for p in points]
    labs = [int(v) for v in labels]
    if box is not None:
        x0, y0, x1, y1 = map(float, box)
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        if not any(v == 1 for v in labs):
            pts.append(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
            labs.append(1)
    return pts, labs, box
