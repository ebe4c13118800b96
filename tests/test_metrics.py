"""Mask metrics: values checked by hand or against plain NumPy brute force."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from bt_demo.studies import metrics as M


def square(shape, r0, c0, size_r, size_c=None):
    m = np.zeros(shape, dtype=bool)
    m[r0:r0 + size_r, c0:c0 + (size_r if size_c is None else size_c)] = True
    return m


# ---------------------------------------------------------------------------
# brute force reference (no scipy): boundary by explicit neighbour test,
# all pairwise distances, max of the two directed 95th percentiles.
# ---------------------------------------------------------------------------
def brute_boundary(m):
    p = np.pad(m, 1, constant_values=False)
    inner = p[1:-1, 1:-1]
    all_in = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return inner & ~all_in


def brute_hd95(a, b, spacing=(1.0, 1.0)):
    pa = np.argwhere(brute_boundary(a)) * np.asarray(spacing, dtype=float)
    pb = np.argwhere(brute_boundary(b)) * np.asarray(spacing, dtype=float)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


def blob(rng, shape, thr):
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.5)
    return noise > thr * noise.std()


# ---------------------------------------------------------------------------
# confusion
# ---------------------------------------------------------------------------
def test_confusion_counts_by_hand():
    pred = np.array([[1, 1, 0, 0],
                     [1, 0, 0, 0]], dtype=bool)
    ref = np.array([[1, 0, 1, 0],
                    [1, 0, 1, 0]], dtype=bool)
    # tp: (0,0),(1,0); fp: (0,1); fn: (0,2),(1,2); tn: the other 3
    assert M.confusion(pred, ref) == (2, 1, 2, 3)


def test_confusion_non_bool_means_positive():
    pred = np.array([[255, 0], [1, 0]], dtype=np.uint8)
    ref = np.array([[0.7, -1.0], [np.nan, 2.0]])
    # pred True at (0,0),(1,0); ref True at (0,0),(1,1)
    assert M.confusion(pred, ref) == (1, 1, 1, 1)


def test_confusion_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError) as err:
        M.confusion(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    assert "(4, 4)" in str(err.value) and "(4, 5)" in str(err.value)


def test_non_2d_mask_is_rejected():
    with pytest.raises(ValueError, match="2-D"):
        M.dice(np.zeros((4, 4, 3), bool), np.zeros((4, 4, 3), bool))


# ---------------------------------------------------------------------------
# Dice, IoU, precision, recall
# ---------------------------------------------------------------------------
def test_two_squares_of_known_overlap():
    a = square((20, 20), 0, 0, 10)   # 100 px
    b = square((20, 20), 5, 0, 10)   # 100 px, overlap rows 5..9 -> 50 px
    assert M.dice(a, b) == pytest.approx(2 * 50 / 200)
    assert M.iou(a, b) == pytest.approx(50 / 150)


def test_identical_masks_are_perfect():
    a = square((16, 16), 3, 4, 5)
    m = M.compare_masks(a, a.astype(np.uint8) * 255)
    assert (m.dice, m.iou, m.precision, m.recall, m.hd95) == (1.0, 1.0, 1.0, 1.0, 0.0)


@pytest.mark.parametrize("fn", [M.dice, M.iou])
def test_empty_masks(fn):
    empty = np.zeros((8, 8), bool)
    full = np.ones((8, 8), bool)
    assert fn(empty, empty) == 1.0
    assert fn(empty, full) == 0.0
    assert fn(full, empty) == 0.0


def test_precision_recall_prediction_is_first_argument():
    pred = square((20, 20), 0, 0, 10)                  # 100 px
    ref = square((20, 20), 5, 0, 10, 15)               # 150 px, overlap 50 px
    m = M.compare_masks(pred, ref)
    assert m.precision == pytest.approx(50 / 100)
    assert m.recall == pytest.approx(50 / 150)
    swapped = M.compare_masks(ref, pred)
    assert swapped.precision == pytest.approx(50 / 150)
    assert swapped.recall == pytest.approx(50 / 100)


def test_precision_recall_empty_conventions():
    empty = np.zeros((6, 6), bool)
    some = square((6, 6), 1, 1, 2)
    both_empty = M.compare_masks(empty, empty)
    assert (both_empty.precision, both_empty.recall) == (1.0, 1.0)
    pred_empty = M.compare_masks(empty, some)       # missed the tumour
    assert (pred_empty.precision, pred_empty.recall) == (0.0, 0.0)
    ref_empty = M.compare_masks(some, empty)        # found a tumour that is not there
    assert (ref_empty.precision, ref_empty.recall) == (0.0, 0.0)


def test_one_pixel_masks():
    a = np.zeros((10, 10), bool)
    a[2, 3] = True
    b = np.zeros((10, 10), bool)
    b[5, 7] = True
    m = M.compare_masks(a, b)
    assert (m.dice, m.iou, m.tp, m.fp, m.fn, m.tn) == (0.0, 0.0, 0, 1, 1, 98)
    assert m.hd95 == pytest.approx(5.0)              # 3-4-5 triangle
    assert M.hausdorff95(a, b, spacing=(2.0, 1.0)) == pytest.approx(math.hypot(3 * 2.0, 4 * 1.0))
    assert M.hausdorff95(a, a) == 0.0


# ---------------------------------------------------------------------------
# HD95
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [1, 3, 6])
def test_shifted_square_hd95_equals_shift(shift):
    a = square((40, 40), 10, 10, 12)
    b_rows = square((40, 40), 10 + shift, 10, 12)
    b_cols = square((40, 40), 10, 10 + shift, 12)
    assert M.hausdorff95(a, b_rows) == pytest.approx(shift)
    assert M.hausdorff95(a, b_cols) == pytest.approx(shift)
    # spacing (row_mm, col_mm) = (2, 1): a shift along rows is twice as long in mm
    assert M.hausdorff95(a, b_rows, spacing=(2.0, 1.0)) == pytest.approx(2.0 * shift)
    assert M.hausdorff95(a, b_cols, spacing=(2.0, 1.0)) == pytest.approx(1.0 * shift)


def test_hd95_empty_cases():
    empty = np.zeros((8, 8), bool)
    some = square((8, 8), 2, 2, 3)
    assert M.hausdorff95(empty, empty) == 0.0
    assert M.hausdorff95(empty, some) == math.inf
    assert M.hausdorff95(some, empty, spacing=(1.0, 1.0)) == math.inf


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("spacing", [None, (2.0, 0.7)])
def test_hd95_matches_brute_force_on_random_blobs(seed, spacing):
    rng = np.random.default_rng(seed)
    shape = (28, 23)
    a = blob(rng, shape, 0.3)
    b = blob(rng, shape, 0.1)
    if not a.any() or not b.any():  # pragma: no cover - the seeds give non-empty blobs
        pytest.skip("empty blob")
    expected = brute_hd95(a, b, (1.0, 1.0) if spacing is None else spacing)
    assert M.hausdorff95(a, b, spacing=spacing) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_hd95_masks_touching_the_image_edge():
    # Pixels on the image edge are boundary (outside the image = background).
    a = np.ones((9, 7), bool)
    b = np.zeros((9, 7), bool)
    b[0:5, :] = True
    assert M.hausdorff95(a, b) == pytest.approx(brute_hd95(a, b))
    assert M.hausdorff95(a, b) > 0


def test_hd95_is_max_of_directed_percentiles_not_pooled():
    # A is a big square, B a single pixel at its centre: A->B distances are
    # large for every A boundary pixel, B->A is one distance. Pooled and max
    # conventions differ here; we document and take the max (MONAI).
    a = square((31, 31), 5, 5, 21)
    b = np.zeros((31, 31), bool)
    b[15, 15] = True
    pa = np.argwhere(brute_boundary(a)).astype(float)
    d_ab = np.sqrt(((pa - [15, 15]) ** 2).sum(1))
    d_ba = np.array([10.0])  # centre to the nearest side
    expected = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    assert M.hausdorff95(a, b) == pytest.approx(expected)
    assert M.hausdorff95(b, a) == pytest.approx(expected)  # symmetric


@pytest.mark.parametrize("bad", [(0, 1), (1.0,), (-1, 1), (float("nan"), 1.0), (1, float("inf")), "ab"])
def test_bad_spacing_is_rejected(bad):
    a = square((8, 8), 1, 1, 3)
    with pytest.raises(ValueError, match="spacing"):
        M.hausdorff95(a, a, spacing=bad)


# ---------------------------------------------------------------------------
# MaskMetrics, area, tables
# ---------------------------------------------------------------------------
def test_compare_masks_units_and_areas():
    a = square((20, 20), 0, 0, 10)
    b = square((20, 20), 0, 2, 10)
    px = M.compare_masks(a, b)
    assert px.hd95_unit == "px" and px.area_a_mm2 is None and px.area_b_mm2 is None
    mm = M.compare_masks(a, b, spacing=(0.5, 0.8))
    assert mm.hd95_unit == "mm"
    assert mm.hd95 == pytest.approx(2 * 0.8)
    assert (mm.area_a_px, mm.area_b_px) == (100, 100)
    assert mm.area_a_mm2 == pytest.approx(100 * 0.4)
    assert mm.tp + mm.fp + mm.fn + mm.tn == 400


def test_as_dict_is_json_safe():
    some = square((8, 8), 2, 2, 3)
    d = M.compare_masks(some, np.zeros((8, 8), bool)).as_dict()
    assert d["hd95"] is None  # inf -> null
    json.dumps(d, allow_nan=False)
    assert d["area_a_px"] == 9 and d["dice"] == 0.0


def test_area():
    m = square((10, 10), 1, 1, 3, 4)
    assert M.area(m) == (12, None)
    px, mm2 = M.area(m.astype(np.uint8) * 255, spacing=(0.5, 0.8))
    assert px == 12 and mm2 == pytest.approx(12 * 0.4)


def test_pairwise_table_three_masks():
    a = square((20, 20), 0, 0, 10)
    b = square((20, 20), 5, 0, 10)
    c = np.zeros((20, 20), bool)
    rows = M.pairwise_table({"U-Net": a, "prompt": b, "K-Means": c})
    assert len(rows) == 3
    assert [(r["a"], r["b"]) for r in rows] == [("U-Net", "prompt"), ("U-Net", "K-Means"), ("prompt", "K-Means")]
    assert rows[0]["iou"] == 0.3333          # rounded to 4 decimals
    assert rows[0]["dice"] == 0.5
    assert rows[0]["hd95"] == pytest.approx(5.0)
    assert rows[1]["hd95"] is None           # one empty -> inf -> null
    assert rows[0]["hd95_unit"] == "px"
    text = json.dumps(rows, allow_nan=False)
    assert "Infinity" not in text and "NaN" not in text


def test_pairwise_table_one_mask_is_empty_list_and_shapes_checked():
    assert M.pairwise_table({"only": np.zeros((4, 4), bool)}) == []
    with pytest.raises(ValueError) as err:
        M.pairwise_table({"A": np.zeros((4, 4)), "B": np.zeros((5, 4))})
    assert "(4, 4)" in str(err.value) and "(5, 4)" in str(err.value)


def test_area_table():
    rows = M.area_table({"A": square((10, 10), 0, 0, 3), "B": np.zeros((10, 10))}, spacing=(0.5, 0.5))
    assert rows == [{"mask": "A", "area_px": 9, "area_mm2": 2.25}, {"mask": "B", "area_px": 0, "area_mm2": 0.0}]
    assert M.area_table({"A": square((10, 10), 0, 0, 3)})[0]["area_mm2"] is None


# ---------------------------------------------------------------------------
# agreement
# ---------------------------------------------------------------------------
def test_agreement_map_two_masks_by_hand():
    a = np.array([[1, 1, 0, 0]], dtype=bool)
    b = np.array([[1, 0, 1, 0]], dtype=np.uint8) * 255
    code = M.agreement_map([a, b])
    assert code.dtype == np.uint8
    assert code.tolist() == [[3, 1, 2, 0]]


def test_agreement_map_three_masks_by_hand():
    a = np.array([[1, 0, 0, 1, 1, 0, 1, 0]], bool)
    b = np.array([[0, 1, 0, 1, 0, 1, 1, 0]], bool)
    c = np.array([[0, 0, 1, 0, 1, 1, 1, 0]], bool)
    assert M.agreement_map([a, b, c]).tolist() == [[1, 2, 4, 3, 5, 6, 7, 0]]


def test_agreement_map_rejects_bad_counts_and_shapes():
    m = np.zeros((3, 3), bool)
    with pytest.raises(ValueError, match="1 to 3"):
        M.agreement_map([])
    with pytest.raises(ValueError, match="1 to 3"):
        M.agreement_map([m, m, m, m])
    with pytest.raises(ValueError) as err:
        M.agreement_map([m, np.zeros((3, 4), bool)])
    assert "(3, 3)" in str(err.value) and "(3, 4)" in str(err.value)


def test_agreement_summary_counts_by_hand():
    a = np.array([[1, 1, 1, 0, 0, 0]], bool)
    b = np.array([[1, 1, 0, 1, 0, 0]], bool)
    s = M.agreement_summary({"U-Net": a, "prompt": b})
    assert s["names"] == ["U-Net", "prompt"]
    assert s["total_px"] == 6
    assert s["union_px"] == 4
    assert s["all_agree_tumour_px"] == 2
    assert s["all_agree_background_px"] == 2
    assert s["some_disagree_px"] == 2
    assert s["only_px"] == {"U-Net": 1, "prompt": 1}
    assert s["agreement_fraction"] == 0.5
    labels = {r["label"]: r["px"] for r in s["regions"]}
    assert labels == {"both: U-Net & prompt": 2, "only U-Net": 1, "only prompt": 1}
    json.dumps(s, allow_nan=False)


def test_agreement_summary_three_masks_and_empty():
    a = np.array([[1, 1, 0, 0]], bool)
    b = np.array([[1, 1, 1, 0]], bool)
    c = np.array([[1, 0, 0, 0]], bool)
    s = M.agreement_summary({"A": a, "B": b, "C": c})
    assert s["all_agree_tumour_px"] == 1
    assert s["only_px"] == {"A": 0, "B": 1, "C": 0}
    assert {r["label"]: r["px"] for r in s["regions"]}["A & B, not C"] == 1
    empty = M.agreement_summary({"A": np.zeros((2, 2)), "B": np.zeros((2, 2))})
    assert empty["union_px"] == 0 and empty["agreement_fraction"] == 1.0


def test_inputs_not_modified():
    a = square((12, 12), 2, 2, 5)
    b = square((12, 12), 4, 3, 5).astype(np.uint8) * 255
    a0, b0 = a.copy(), b.copy()
    M.compare_masks(a, b, spacing=(1.0, 1.0))
    M.pairwise_table({"a": a, "b": b})
    M.agreement_summary({"a": a, "b": b})
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)
