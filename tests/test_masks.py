"""bt_demo.image.masks: the one mask coercion (and its NaN rule) and the one pixel-spacing check."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bt_demo.errors import InputError
from bt_demo.image.masks import MAX_SPACING_MM, as_mask, check_spacing


# ---------------------------------------------------------------------------
# as_mask
# ---------------------------------------------------------------------------
def test_bool_mask_is_returned_as_is_not_copied():
    m = np.array([[True, False], [False, True]])
    assert as_mask(m) is m


def test_numbers_are_lesion_where_above_zero_and_nan_is_not_lesion():
    f = np.array([[0.0, 0.3, 1.0], [np.nan, -0.5, 2.0], [np.inf, -np.inf, 1e-9]])
    expected = np.array([[False, True, True], [False, False, True], [True, False, True]])
    out = as_mask(f)
    assert out.dtype == bool and out.shape == (3, 3)
    assert np.array_equal(out, expected)
    assert np.array_equal(out, np.nan_to_num(f, nan=0.0, posinf=1.0, neginf=0.0) > 0)  # the rule, in plain NumPy


def test_float_probabilities_are_not_thresholded_at_one_half():
    prob = np.array([[0.0, 0.1], [0.49, 0.9]], np.float32)
    assert np.array_equal(as_mask(prob), prob > 0)  # any probability above 0 counts: threshold before calling


def test_integer_masks_0_255_and_labels():
    u8 = np.array([[0, 255], [1, 0]], np.uint8)
    assert np.array_equal(as_mask(u8), u8 > 0)
    labels = np.array([[0, 2], [-1, 3]], np.int16)
    assert np.array_equal(as_mask(labels), np.array([[False, True], [False, True]]))


def test_nested_lists_and_a_single_channel_are_accepted():
    assert np.array_equal(as_mask([[0, 1], [1, 0]]), np.array([[False, True], [True, False]]))
    m = np.zeros((4, 5, 1), np.uint8)
    m[1, 2, 0] = 1
    out = as_mask(m)
    assert out.shape == (4, 5) and out[1, 2] and out.sum() == 1


@pytest.mark.parametrize("shape", [(4,), (4, 4, 3), (2, 4, 4), (1, 1, 4, 4), ()])
def test_wrong_ndim_is_rejected_with_the_shape(shape):
    with pytest.raises(InputError, match="2-D") as err:
        as_mask(np.zeros(shape, bool), "truth")
    assert str(shape) in str(err.value) and "truth" in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("bad", [np.array([["a", "b"], ["c", "d"]]), np.array([[object(), None]], dtype=object),
                                 np.ones((2, 2), np.complex64)])
def test_non_numeric_dtypes_are_rejected(bad):
    with pytest.raises(InputError, match="numeric or bool"):
        as_mask(bad)


# ---------------------------------------------------------------------------
# check_spacing
# ---------------------------------------------------------------------------
def test_none_is_unknown_spacing():
    assert check_spacing(None) is None


@pytest.mark.parametrize("given, expected", [((0.5, 0.7), (0.5, 0.7)), ([1, 2], (1.0, 2.0)),
                                             (np.array([0.9, 0.9], np.float32), (0.9, 0.9)),
                                             ((MAX_SPACING_MM, 0.1), (100.0, 0.1))])
def test_good_spacing_comes_back_as_two_floats(given, expected):
    out = check_spacing(given)
    assert out == pytest.approx(expected) and all(type(v) is float for v in out) and isinstance(out, tuple)


@pytest.mark.parametrize("bad", [(0, 1), (-1, 1), (1, -0.5), (float("nan"), 1.0), (1, float("inf")),
                                 (-math.inf, 1), (100.5, 1), (1, 250), (1.0,), (1, 2, 3), (), 0.9, "ab", "12",
                                 ("a", 1), (None, 1)])
def test_bad_spacing_is_rejected_with_what_to_pass(bad):
    with pytest.raises(InputError) as err:
        check_spacing(bad)
    msg = str(err.value)
    assert "spacing" in msg and "row_mm, col_mm" in msg and "100" in msg and isinstance(err.value, ValueError)


def test_every_caller_uses_the_one_spacing_rule():
    from bt_demo.io import corrections, export
    from bt_demo.studies import measure, metrics

    m = np.zeros((8, 8), bool)
    m[2:5, 2:5] = True
    for call in (lambda sp: metrics.area(m, sp), lambda sp: export.mask_nifti(m, sp),
                 lambda sp: measure.measure(m, sp)):
        assert call((0.5, 0.5)) is not None
        with pytest.raises(InputError, match="row_mm, col_mm"):
            call((0.5, 150.0))  # over 100 mm: the cap every caller shares now
    assert corrections.check_spacing is check_spacing and metrics.check_spacing is check_spacing
