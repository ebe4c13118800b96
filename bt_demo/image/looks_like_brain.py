"""Does the picture itself look like an MRI slice of a head? An image-content check, never a block.

:mod:`bt_demo.image.domain` reads what a file says (DICOM Modality, BodyPartExamined);
a PNG or JPEG says nothing, so this looks at the pixels. A head slice is one
dominant, rounded, solid bright shape (:func:`bt_demo.image.preprocess.head_mask`)
on a dark, quiet background, with a noisy soft-tissue interior (solidity is
measured but not used: skull-base slices are as concave as any decoy). A chest radiograph
fills the frame, a blank or a gradient has no such shape, a screenshot or a
page of text is many small sharp parts on a light background, a photograph has
a bright busy background. Each failed rule gives one reason; the notice goes
beside the classifier's numbers and on the status line, like the file's own.

The thresholds were chosen on real slices (``python -m bench.bench_domain``
measures the false-notice rate on ``../shared/data`` and the hit rate on
synthetic non-brain images; see the README).
"""

from __future__ import annotations

import numpy as np

SIDE = 256  # the check runs on the image shrunk to this long side: ~2 ms, any upload size

# rules (see bench/bench_domain.py for the measured rates)
MIN_STD = 0.03            # below: a blank (or almost constant) picture
MAX_FILL = 0.92           # the bright shape covers more of the frame than a head ever does
MAX_BORDER = 0.55         # share of the frame's edge the shape touches (a cropped head touches some)
MAX_FLAT = 0.15           # share of the shape's pixels in perfectly flat 3x3 patches (drawn fills; MRI is noisy)
MAX_BACKGROUND = 0.30     # median brightness around the shape, relative to the shape's (MRI air is dark)
MIN_FILL = 0.03           # a shape this small is not a head slice
MAX_PARTS = 40            # separate bright parts of >= 0.02 % of the frame (text, icons, a screenshot)


def _shrink(img: np.ndarray) -> np.ndarray:
    import cv2

    h, w = img.shape
    f = SIDE / max(h, w)
    if f >= 1:
        return img
    return cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def facts(image: np.ndarray) -> dict:
    """Measurements of a 2-D grey image (any range; converted to [0, 1]) that the rules use."""
    import cv2

    from bt_demo.image.masks import otsu_u8, smooth
    from bt_demo.image.preprocess import as_unit_float, head_mask

    img = _shrink(as_unit_float(np.asarray(image, np.float32)))
    out = {"std": float(img.std())}
    if out["std"] < 1e-6:
        return out | {"fill": 1.0, "border": 1.0, "solidity": 1.0, "background": 1.0, "flat": 1.0, "parts": 0}
    mask = head_mask(img)
    out["fill"] = float(mask.mean())
    edge = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    out["border"] = float(edge.mean())
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = sum(cv2.contourArea(cv2.convexHull(c)) for c in contours)
    out["solidity"] = float(min(1.0, mask.sum() / hull)) if hull > 0 else 0.0
    inside = float(np.median(img[mask])) if mask.any() else 1.0
    outside = float(np.median(img[~mask])) if (~mask).any() else inside
    out["background"] = outside / max(inside, 1e-6)
    u8_raw = np.rint(img * 255).astype(np.uint8)
    lo, hi = cv2.erode(u8_raw, np.ones((3, 3), np.uint8)), cv2.dilate(u8_raw, np.ones((3, 3), np.uint8))
    out["flat"] = float((hi == lo)[mask].mean()) if mask.any() else 1.0
    u8, t = otsu_u8(smooth(img))
    n, _, stats, _ = cv2.connectedComponentsWithStats((u8 > t).astype(np.uint8), connectivity=8)
    out["parts"] = int((stats[1:, cv2.CC_STAT_AREA] >= max(2, 0.0002 * img.size)).sum())
    return out


def reasons(f: dict) -> list[str]:
    """The rules a picture with :func:`facts` ``f`` breaks, in words; [] when it looks like a head slice."""
    if f["std"] < MIN_STD:
        return ["it is almost blank"]
    out = []
    if f["fill"] > MAX_FILL or f["border"] > MAX_BORDER:
        out.append("the bright part fills the frame instead of one head on a dark background")
    elif f["fill"] < MIN_FILL:
        out.append("there is no head-sized bright shape")
    if f["flat"] > MAX_FLAT:
        out.append("the bright part is flat drawn colour, not tissue texture")
    if f["background"] > MAX_BACKGROUND:
        out.append("the background is not dark")
    if f["parts"] > MAX_PARTS:
        out.append(f"it has {f['parts']} separate bright parts (like text or a screenshot)")
    return out


def notices(image: np.ndarray) -> tuple[str, ...]:
    """() for a picture that looks like a head MRI slice, else one notice saying why it does not."""
    why = reasons(facts(image))
    if not why:
        return ()
    return (f"The picture does not look like a brain MRI slice ({'; '.join(why)}); the models here were trained "
            "on brain MRI only, so their answers may not apply.",)
