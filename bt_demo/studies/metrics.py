"""Mask metrics and agreement maps: how far two (or three) segmentations agree.

Conventions (the same everywhere in this module):

- A mask is a 2-D array of shape ``(H, W)`` (rows, columns). ``bool`` masks
  are used as they are; any other dtype (``uint8`` 0/1 or 0/255, float
  probabilities already thresholded, ...) counts a pixel as tumour where the
  value is ``> 0`` (NaN counts as background). Masks that are compared must
  have the same shape; otherwise :class:`~bt_demo.errors.InputError` (a
  ``ValueError``) names both shapes.
- ``spacing`` is ``(row_mm, col_mm)``: the physical size of one pixel along
  the rows (y) and the columns (x), both finite and > 0, or ``None`` when the
  slice carries no spacing (distances are then in pixels, areas in mm² are
  ``None``).
- Every overlap metric comes from the four counts ``(tp, fp, fn, tn)``
  computed once by :func:`confusion`. In :func:`compare_masks` the first mask
  ``a`` plays the *prediction* and the second ``b`` the *reference*.

Empty-mask decisions (each one is tested):

=====================  ==========  ===================  =====================
quantity               both empty  only ``a`` empty     only ``b`` empty
=====================  ==========  ===================  =====================
Dice, IoU              1.0         0.0                  0.0
precision tp/(tp+fp)   1.0         0.0                  0.0 (tp = 0)
recall    tp/(tp+fn)   1.0         0.0 (tp = 0)         0.0
HD95                   0.0         ``inf``              ``inf``
=====================  ==========  ===================  =====================

Two empty masks agree perfectly on "no tumour", hence 1.0 and a distance of
0. With one empty mask there is no boundary to measure to, so HD95 is
``float("inf")``; every JSON view (:meth:`MaskMetrics.as_dict`,
:func:`pairwise_table`) turns non-finite numbers into ``None`` (``null``).

The empty cases of precision and recall follow from one rule: an empty
prediction is a perfect "no tumour" call only when the reference is empty too
(precision = recall = 1.0); otherwise it has found nothing (0.0). Likewise an
empty reference gives recall 1.0 only if the prediction is empty as well.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from bt_demo.errors import InputError
from bt_demo.image.masks import as_mask, check_spacing

__all__ = [
    "MaskMetrics",
    "agreement_labels",
    "agreement_map",
    "agreement_summary",
    "area",
    "area_table",
    "compare_masks",
    "confusion",
    "consensus_summary",
    "dice",
    "hausdorff95",
    "iou",
    "pairwise_table",
    "vote_map",
]

_ROUND = 4  # decimals of the floats in the JSON tables


# ---------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------
def _pair(a, b, names: tuple[str, str] = ("a", "b")) -> tuple[np.ndarray, np.ndarray]:
    a = as_mask(a, names[0])
    b = as_mask(b, names[1])
    if a.shape != b.shape:
        raise InputError(
            f"masks have different shapes: {names[0]} is {a.shape}, {names[1]} is {b.shape}; "
            "both must be in the pixels of the same slice"
        )
    return a, b


def _json_float(x: float, ndigits: int | None = None) -> float | None:
    """inf / NaN -> None; optionally rounded."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    return round(x, ndigits) if ndigits is not None else x


# ---------------------------------------------------------------------------
# counts and overlap metrics
# ---------------------------------------------------------------------------
def confusion(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int, int]:
    """Pixel counts ``(tp, fp, fn, tn)`` of a prediction against a reference.

    pred, ref: masks of the same shape ``(H, W)`` (bool, or any dtype with
    tumour where ``> 0``). tp = pred & ref, fp = pred & ~ref,
    fn = ~pred & ref, tn = the rest; the four add up to ``H * W``.
    Raises :class:`InputError` (``ValueError``) naming both shapes when they differ.
    """
    p, r = _pair(pred, ref, ("pred", "ref"))
    return _counts(p, r)


def _counts(p: np.ndarray, r: np.ndarray) -> tuple[int, int, int, int]:
    n_p = int(np.count_nonzero(p))
    n_r = int(np.count_nonzero(r))
    tp = int(np.count_nonzero(p & r))
    fp = n_p - tp
    fn = n_r - tp
    tn = int(p.size) - tp - fp - fn
    return tp, fp, fn, tn


def _dice_c(tp: int, fp: int, fn: int) -> float:
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2.0 * tp / denom


def _iou_c(tp: int, fp: int, fn: int) -> float:
    denom = tp + fp + fn
    return 1.0 if denom == 0 else tp / denom


def _precision_c(tp: int, fp: int, fn: int) -> float:
    # Empty prediction: perfect only if the reference is empty too.
    if tp + fp == 0:
        return 1.0 if fn == 0 else 0.0
    return tp / (tp + fp)


def _recall_c(tp: int, fp: int, fn: int) -> float:
    # Empty reference: perfect only if the prediction is empty too.
    if tp + fn == 0:
        return 1.0 if fp == 0 else 0.0
    return tp / (tp + fn)


def dice(a, b) -> float:
    """Dice = 2|A∩B| / (|A| + |B|) in [0, 1]; both empty -> 1.0, exactly one empty -> 0.0.

    a, b: masks of the same shape ``(H, W)``.
    """
    tp, fp, fn, _ = confusion(a, b)
    return _dice_c(tp, fp, fn)


def iou(a, b) -> float:
    """IoU (Jaccard) = |A∩B| / |A∪B| in [0, 1]; both empty -> 1.0, exactly one empty -> 0.0.

    a, b: masks of the same shape ``(H, W)``.
    """
    tp, fp, fn, _ = confusion(a, b)
    return _iou_c(tp, fp, fn)


# ---------------------------------------------------------------------------
# Hausdorff distance
# ---------------------------------------------------------------------------
def _boundary(m: np.ndarray) -> np.ndarray:
    """Contour pixels: pixels of ``m`` with at least one 4-neighbour outside ``m``.

    Pixels on the edge of the array count as boundary (outside = background),
    as in MONAI's ``get_mask_edges`` (``binary_erosion`` with its default
    cross-shaped structure, ``border_value=0``).
    """
    from scipy import ndimage

    return m & ~ndimage.binary_erosion(m, border_value=0)


def _hd95(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float] | None) -> float:
    any_a, any_b = bool(a.any()), bool(b.any())
    if not any_a and not any_b:
        return 0.0
    if any_a != any_b:
        return math.inf
    from scipy import ndimage

    # Work on the bounding box of A ∪ B. This is exact, not an approximation:
    # outside that box both masks are background, which is precisely what the
    # erosion's border_value=0 assumes, and every boundary pixel (the only
    # points we measure from and to) lies inside the box, where the Euclidean
    # distance transform is exact. So no margin is needed.
    union = a | b
    rows = np.flatnonzero(union.any(axis=1))
    cols = np.flatnonzero(union.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    ea = _boundary(a[r0:r1, c0:c1])
    eb = _boundary(b[r0:r1, c0:c1])
    # Distance from every pixel to the nearest boundary pixel of the other mask.
    to_b = ndimage.distance_transform_edt(~eb, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~ea, sampling=spacing)
    d_ab = to_b[ea]  # each boundary point of A -> nearest boundary point of B
    d_ba = to_a[eb]
    return float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))


def hausdorff95(a, b, spacing: tuple[float, float] | None = None) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the boundaries of ``a`` and ``b``.

    a, b: masks of the same shape ``(H, W)``.
    spacing: ``(row_mm, col_mm)`` -> result in mm; ``None`` -> in pixels.

    Convention (MONAI ``compute_hausdorff_distance(percentile=95)``): the
    boundary of a mask is its pixels with a 4-neighbour outside it; for every
    boundary pixel of ``a`` take the Euclidean distance (between pixel centres,
    scaled by ``spacing``) to the nearest boundary pixel of ``b``, and vice
    versa; the result is the **maximum of the two directed 95th percentiles**
    (``numpy.percentile``, linear interpolation), not the percentile of the
    pooled distances. Returns 0.0 when both masks are empty and
    ``float("inf")`` when exactly one is (no boundary to measure to).
    """
    a, b = _pair(a, b)
    return _hd95(a, b, check_spacing(spacing))


# ---------------------------------------------------------------------------
# all metrics at once
# ---------------------------------------------------------------------------
def area(mask, spacing: tuple[float, float] | None = None) -> tuple[int, float | None]:
    """Area of a mask: ``(pixels, mm²)``; mm² = row_mm * col_mm * pixels, or ``None`` without spacing."""
    m = as_mask(mask)
    sp = check_spacing(spacing)
    n = int(np.count_nonzero(m))
    return n, (None if sp is None else n * sp[0] * sp[1])


@dataclass(frozen=True)
class MaskMetrics:
    """Every number comparing mask ``a`` (prediction) with mask ``b`` (reference).

    dice, iou, precision, recall: in [0, 1] (empty-mask cases: module docstring).
    hd95: in ``hd95_unit`` ("mm" when a spacing was given, else "px"); may be inf.
    area_a_px, area_b_px: pixel counts; area_a_mm2, area_b_mm2: mm² or None.
    tp, fp, fn, tn: the pixel counts everything else is computed from.
    """

    dice: float
    iou: float
    precision: float
    recall: float
    hd95: float
    hd95_unit: str
    area_a_px: int
    area_b_px: int
    area_a_mm2: float | None
    area_b_mm2: float | None
    tp: int
    fp: int
    fn: int
    tn: int

    def as_dict(self, ndigits: int | None = None) -> dict:
        """JSON-safe dict: inf / NaN -> None; floats rounded to ``ndigits`` when given."""
        out = {}
        for key, value in asdict(self).items():
            if isinstance(value, float):
                value = _json_float(value, ndigits)
            out[key] = value
        return out


def compare_masks(a, b, spacing: tuple[float, float] | None = None) -> MaskMetrics:
    """Compare prediction ``a`` with reference ``b`` (same shape ``(H, W)``).

    spacing: ``(row_mm, col_mm)`` or None (then HD95 in px, mm² areas None).
    The counts are computed once; see the module docstring for empty masks.
    """
    a, b = _pair(a, b)
    sp = check_spacing(spacing)
    tp, fp, fn, tn = _counts(a, b)
    n_a, n_b = tp + fp, tp + fn
    mm2 = None if sp is None else sp[0] * sp[1]
    return MaskMetrics(
        dice=_dice_c(tp, fp, fn),
        iou=_iou_c(tp, fp, fn),
        precision=_precision_c(tp, fp, fn),
        recall=_recall_c(tp, fp, fn),
        hd95=_hd95(a, b, sp),
        hd95_unit="px" if sp is None else "mm",
        area_a_px=n_a,
        area_b_px=n_b,
        area_a_mm2=None if mm2 is None else n_a * mm2,
        area_b_mm2=None if mm2 is None else n_b * mm2,
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
    )


def _named_masks(masks: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    if not isinstance(masks, Mapping):
        raise InputError(f"{what} takes a mapping name -> mask, got {type(masks).__name__}")
    out: dict[str, np.ndarray] = {}
    for name, m in masks.items():
        arr = as_mask(m, f"mask {name!r}")
        if out:
            first, ref = next(iter(out.items()))
            if arr.shape != ref.shape:
                raise InputError(
                    f"masks have different shapes: {first!r} is {ref.shape}, {name!r} is {arr.shape}; "
                    "all must be in the pixels of the same slice"
                )
        out[str(name)] = arr
    return out


def pairwise_table(masks: Mapping[str, np.ndarray], spacing: tuple[float, float] | None = None) -> list[dict]:
    """One JSON-safe row per unordered pair of masks, pairs in insertion order.

    For names ``[A, B, C]`` the rows are (A, B), (A, C), (B, C); fewer than two
    masks give ``[]``. Each row is ``{"a": name, "b": name}`` followed by
    :meth:`MaskMetrics.as_dict` of ``compare_masks(masks[a], masks[b])``
    (``a`` = prediction, ``b`` = reference for precision/recall): dice, iou,
    precision, recall, hd95, hd95_unit, area_a_px, area_b_px, area_a_mm2,
    area_b_mm2, tp, fp, fn, tn. Floats rounded to 4 decimals, inf -> None.
    """
    named = _named_masks(masks, "pairwise_table")
    sp = check_spacing(spacing)
    rows = []
    for na, nb in itertools.combinations(named, 2):
        row = {"a": na, "b": nb}
        row.update(compare_masks(named[na], named[nb], sp).as_dict(ndigits=_ROUND))
        rows.append(row)
    return rows


def area_table(masks: Mapping[str, np.ndarray], spacing: tuple[float, float] | None = None) -> list[dict]:
    """One row per mask, in insertion order: ``{"mask": name, "area_px": int, "area_mm2": float | None}``.

    area_mm2 is rounded to 4 decimals, and None when ``spacing`` is None.
    """
    named = _named_masks(masks, "area_table")
    sp = check_spacing(spacing)
    rows = []
    for name, m in named.items():
        px, mm2 = area(m, sp)
        rows.append({"mask": name, "area_px": px, "area_mm2": _json_float(mm2, _ROUND)})
    return rows


# ---------------------------------------------------------------------------
# agreement between 1..3 masks
# ---------------------------------------------------------------------------
def _same_shape_masks(masks, who: str, most: int) -> list[np.ndarray]:
    """1 to ``most`` masks as bool arrays of one shape, or InputError saying what is wrong."""
    masks = list(masks)
    if not 1 <= len(masks) <= most:
        raise InputError(f"{who} takes 1 to {most} masks, got {len(masks)}")
    arrs = [as_mask(m, f"mask {i}") for i, m in enumerate(masks)]
    for i, m in enumerate(arrs[1:], start=1):
        if m.shape != arrs[0].shape:
            raise InputError(
                f"masks have different shapes: mask 0 is {arrs[0].shape}, mask {i} is {m.shape}; "
                "all must be in the pixels of the same slice"
            )
    return arrs


def agreement_map(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Bit code of which masks cover each pixel: ``uint8`` ``(H, W)``.

    masks: 1 to 3 masks of the same shape (a Mapping is taken by its values,
    in insertion order). Bit ``i`` (value ``2**i``) is set where ``masks[i]``
    is tumour. For two masks: 0 = neither, 1 = only A, 2 = only B, 3 = both;
    for three, 7 = all three, 3 = A and B but not C, and so on.
    Raises :class:`InputError` (``ValueError``) for 0 or more than 3 masks,
    or masks of different shapes.
    """
    if isinstance(masks, Mapping):
        masks = list(masks.values())
    if isinstance(masks, np.ndarray) and masks.ndim != 3:
        raise InputError(
            f"agreement_map takes a list of 1 to 3 masks (or an (N, H, W) stack), got an array of shape {masks.shape}"
        )
    arrs = _same_shape_masks(masks, "agreement_map", 3)
    code = np.zeros(arrs[0].shape, dtype=np.uint8)
    for i, m in enumerate(arrs):
        code |= m.astype(np.uint8) << i
    return code


def agreement_labels(names: Sequence[str]) -> dict[int, str]:
    """Readable text for every non-zero code of :func:`agreement_map`, in legend order.

    Order: the all-agree code first, then "only <name>" for each mask, then
    (three masks) the pairs. Examples for ``["U-Net", "prompt"]``:
    ``{3: "both: U-Net & prompt", 1: "only U-Net", 2: "only prompt"}``;
    for three names, code 3 reads ``"U-Net & prompt, not K-Means"``.
    One name gives ``{1: name}``.
    """
    names = [str(n) for n in names]
    n = len(names)
    if not 1 <= n <= 3:
        raise InputError(f"agreement takes 1 to 3 masks, got {n} names")
    if n == 1:
        return {1: names[0]}
    full = (1 << n) - 1
    labels = {}
    labels[full] = f"both: {names[0]} & {names[1]}" if n == 2 else f"all three: {names[0]}, {names[1]} & {names[2]}"
    for i, name in enumerate(names):
        labels[1 << i] = f"only {name}"
    if n == 3:
        for i, j in itertools.combinations(range(3), 2):
            k = 3 - i - j
            labels[(1 << i) | (1 << j)] = f"{names[i]} & {names[j]}, not {names[k]}"
    return labels


def agreement_summary(masks: Mapping[str, np.ndarray]) -> dict:
    """Pixel counts of where 1 to 3 named masks agree and disagree (JSON-safe).

    Returns::

        {
          "names": [name, ...],                 # insertion order = bit order
          "total_px": H * W,
          "union_px": pixels any mask covers,
          "all_agree_tumour_px": pixels every mask covers,
          "all_agree_background_px": pixels no mask covers,
          "some_disagree_px": union_px - all_agree_tumour_px,
          "only_px": {name: pixels only that mask covers, ...},
          "agreement_fraction": all_agree_tumour_px / union_px (1.0 if union empty),
          "regions": [{"code": int, "label": str, "masks": [names], "px": int}, ...],
        }

    ``regions`` lists every non-zero code of :func:`agreement_map` in the
    order of :func:`agreement_labels`. With two masks ``agreement_fraction``
    is their IoU.
    """
    named = _named_masks(masks, "agreement_summary")
    names = list(named)
    code = agreement_map(list(named.values()))
    counts = np.bincount(code.ravel(), minlength=1 << len(names))
    full = (1 << len(names)) - 1
    total = int(code.size)
    background = int(counts[0])
    union = total - background
    all_tumour = int(counts[full])
    regions = []
    for k, label in agreement_labels(names).items():
        regions.append({
            "code": int(k),
            "label": label,
            "masks": [nm for i, nm in enumerate(names) if k >> i & 1],
            "px": int(counts[k]),
        })
    return {
        "names": names,
        "total_px": total,
        "union_px": union,
        "all_agree_tumour_px": all_tumour,
        "all_agree_background_px": background,
        "some_disagree_px": union - all_tumour,
        "only_px": {nm: int(counts[1 << i]) for i, nm in enumerate(names)},
        "agreement_fraction": round(1.0 if union == 0 else all_tumour / union, _ROUND),
        "regions": regions,
    }


# ---------------------------------------------------------------------------
# consensus of any number of masks
# ---------------------------------------------------------------------------
def vote_map(masks) -> np.ndarray:
    """How many masks call each pixel tumour: ``uint8`` ``(H, W)`` in ``0..len(masks)``.

    masks: 1 to 255 masks of the same shape (a Mapping is taken by its values).
    For 1 to 3 masks :func:`agreement_map` also says *which* masks; this works
    for any number. Raises :class:`InputError` for none, too many, or mixed shapes.
    """
    if isinstance(masks, Mapping):
        masks = list(masks.values())
    arrs = _same_shape_masks(masks, "vote_map", 255)
    votes = np.zeros(arrs[0].shape, dtype=np.uint8)
    for m in arrs:
        votes += m.astype(np.uint8)
    return votes


def consensus_summary(masks: Mapping[str, np.ndarray]) -> dict:
    """Where any number of named masks agree (JSON-safe); :func:`agreement_summary` for 1 to 3 masks.

    Returns::

        {
          "names": [name, ...], "n_masks": n, "total_px": H * W,
          "union_px": pixels any mask covers,
          "all_agree_tumour_px": pixels every mask covers,
          "majority_px": pixels more than half of the masks cover,
          "some_disagree_px": union_px - all_agree_tumour_px,
          "agreement_fraction": all_agree_tumour_px / union_px (1.0 if union empty),
          "votes_px": {"1": px covered by exactly one mask, ..., "n": ...},
        }
    """
    named = _named_masks(masks, "consensus_summary")
    names = list(named)
    votes = vote_map(list(named.values()))
    n = len(names)
    counts = np.bincount(votes.ravel(), minlength=n + 1)
    total = int(votes.size)
    union = total - int(counts[0])
    all_tumour = int(counts[n])
    return {
        "names": names,
        "n_masks": n,
        "total_px": total,
        "union_px": union,
        "all_agree_tumour_px": all_tumour,
        "majority_px": int(counts[n // 2 + 1:].sum()),
        "some_disagree_px": union - all_tumour,
        "agreement_fraction": round(1.0 if union == 0 else all_tumour / union, _ROUND),
        "votes_px": {str(k): int(counts[k]) for k in range(1, n + 1)},
    }
