"""Rendering: what a user sees on the slice, checked pixel by pixel against plain NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bt_demo import render as R
from bt_demo.studies.metrics import agreement_map

H, W = 40, 60  # non-square on purpose: catches (x, y) / (row, col) swaps


def gray_image(h=H, w=W):
    """A uint8 gray ramp, never 0 or 255, so black/white drawing is visible."""
    rows = np.linspace(40, 200, h)[:, None]
    cols = np.linspace(0, 20, w)[None, :]
    return np.rint(rows + cols).astype(np.uint8)


def rect_mask(h=H, w=W, r0=10, r1=25, c0=15, c1=40):
    m = np.zeros((h, w), bool)
    m[r0:r1, c0:c1] = True
    return m


def blend(gray_rgb, color, alpha):
    return np.rint((1 - alpha) * gray_rgb.astype(np.float64) + alpha * np.asarray(color, float)).astype(np.uint8)


def changed(a, b):
    return (a != b).any(axis=2)


# ---------------------------------------------------------------------------
# colours and to_rgb
# ---------------------------------------------------------------------------
def test_colors_table_has_the_named_entries():
    for key in ("unet", "prompt", "kmeans", "reference", "positive", "negative", "box",
                "agree", "only_a", "only_b", "only_c"):
        c = R.COLORS[key]
        assert len(c) == 3 and all(0 <= v <= 255 for v in c)
    # the three engines are told apart by colour
    assert len({R.COLORS["unet"], R.COLORS["prompt"], R.COLORS["kmeans"]}) == 3
    assert R.COLORS["positive"] != R.COLORS["negative"]


def test_to_rgb_inputs():
    g = gray_image()
    rgb = R.to_rgb(g)
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    assert all(np.array_equal(rgb[:, :, k], g) for k in range(3))
    f = np.array([[0.0, 0.5, 1.0, np.nan, 2.0, -1.0]])
    assert R.to_rgb(f)[0, :, 0].tolist() == [0, 128, 255, 0, 255, 0]
    src = np.zeros((4, 5, 3), np.uint8)
    out = R.to_rgb(src)
    out[0, 0] = 9
    assert src[0, 0, 0] == 0  # a copy
    assert R.to_rgb(np.array([[True, False]]))[0, :, 0].tolist() == [255, 0]
    with pytest.raises(ValueError, match="uint16"):
        R.to_rgb(np.zeros((4, 4), np.uint16))
    with pytest.raises(ValueError):
        R.to_rgb(np.zeros((4, 4, 2), np.uint8))


# ---------------------------------------------------------------------------
# overlay_mask / draw_contour
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("thickness", [1, 3])
def test_overlay_leaves_outside_unchanged_and_blends_inside(thickness):
    g = gray_image()
    m = rect_mask()
    color, alpha = R.COLORS["unet"], 0.4
    out = R.overlay_mask(g, m, color=color, alpha=alpha, thickness=thickness)
    base = R.to_rgb(g)
    far = ~ndimage.binary_dilation(m, iterations=thickness + 1)
    np.testing.assert_array_equal(out[far], base[far])
    inner = ndimage.binary_erosion(m, iterations=thickness + 1)
    np.testing.assert_array_equal(out[inner], blend(base[inner], color, alpha))
    # the contour is drawn at full opacity on the mask border
    assert tuple(out[10, 20]) == color and tuple(out[24, 39]) == color


def test_overlay_thin_contour_is_exactly_the_mask_border():
    g = gray_image()
    m = rect_mask()
    out = R.overlay_mask(g, m, color=(255, 0, 0), alpha=0.0, thickness=1)
    base = R.to_rgb(g)
    border = m & ~ndimage.binary_erosion(m)
    assert np.array_equal(changed(out, base), border)
    assert np.all(out[border] == (255, 0, 0))
    interior = m & ~border
    np.testing.assert_array_equal(out[interior], base[interior])  # alpha 0: gray inside


def test_overlay_without_contour_is_pure_blend():
    g = gray_image()
    m = rect_mask()
    out = R.overlay_mask(g, m, color=R.COLORS["prompt"], alpha=0.5, contour=False)
    expected = R.to_rgb(g)
    expected[m] = blend(expected[m], R.COLORS["prompt"], 0.5)
    np.testing.assert_array_equal(out, expected)


def test_overlay_mask_formats_agree_and_empty_mask_is_identity():
    g = gray_image()
    m = rect_mask()
    a = R.overlay_mask(g, m)
    np.testing.assert_array_equal(a, R.overlay_mask(g, m.astype(np.uint8)))
    np.testing.assert_array_equal(a, R.overlay_mask(g, m.astype(np.uint8) * 255))
    np.testing.assert_array_equal(R.overlay_mask(g, np.zeros((H, W), bool)), R.to_rgb(g))
    # chaining: an RGB overlay can take another overlay
    two = R.overlay_mask(a, rect_mask(r0=30, r1=35), color=R.COLORS["prompt"])
    np.testing.assert_array_equal(two[:26], a[:26])


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_overlay_bad_alpha(alpha):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        R.overlay_mask(gray_image(), rect_mask(), alpha=alpha)


def test_shape_mismatch_names_both_shapes():
    g = gray_image()
    small = np.zeros((H, W - 1), bool)
    for call in (
        lambda: R.overlay_mask(g, small),
        lambda: R.draw_contour(g, small, (255, 0, 0)),
        lambda: R.heatmap_overlay(g, small.astype(float)),
        lambda: R.overlay_labels(g, small.astype(int)),
        lambda: R.agreement_rgb(g, small.astype(np.uint8), ["A", "B"]),
    ):
        with pytest.raises(ValueError) as err:
            call()
        assert f"({H}, {W})" in str(err.value) and f"({H}, {W - 1})" in str(err.value)


def test_bad_color_and_thickness():
    with pytest.raises(ValueError, match="0..255"):
        R.overlay_mask(gray_image(), rect_mask(), color=(300, 0, 0))
    with pytest.raises(ValueError, match="thickness"):
        R.draw_contour(gray_image(), rect_mask(), (255, 0, 0), thickness=0)


# ---------------------------------------------------------------------------
# overlay_labels
# ---------------------------------------------------------------------------
def test_overlay_labels_blends_each_label_and_keeps_background():
    g = gray_image()
    labels = np.zeros((H, W), np.int32)
    labels[0:10, 0:10] = 1
    labels[20:30, 30:50] = 2
    pal = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8)
    out = R.overlay_labels(g, labels, pal, alpha=0.5)
    base = R.to_rgb(g)
    np.testing.assert_array_equal(out[labels == 0], base[labels == 0])
    np.testing.assert_array_equal(out[labels == 1], blend(base[labels == 1], (255, 0, 0), 0.5))
    np.testing.assert_array_equal(out[labels == 2], blend(base[labels == 2], (0, 0, 255), 0.5))
    default = R.overlay_labels(g, labels)
    assert not np.array_equal(default[labels == 1][0], default[labels == 2][0])
    with pytest.raises(ValueError, match="rows"):
        R.overlay_labels(g, labels, pal[:2])
    with pytest.raises(ValueError, match=">= 0"):
        R.overlay_labels(g, labels - 1)


def test_label_palette_sizes_distinct():
    for k in (1, 3, 7, 12):
        pal = R.label_palette(k)
        assert pal.shape == (k + 1, 3) and pal.dtype == np.uint8
        assert len({tuple(c) for c in pal[1:]}) == k


# ---------------------------------------------------------------------------
# points and boxes
# ---------------------------------------------------------------------------
def test_draw_points_puts_colour_at_x_y_not_swapped():
    g = gray_image()  # H=40 rows, W=60 columns
    r = 6
    out = R.draw_points(g, [(50, 10), (12, 30)], [1, 0], radius=r)
    base = R.to_rgb(g)
    d = r // 2  # off the "+" arms, inside the disc
    assert tuple(out[10 + d, 50 + d]) == R.COLORS["positive"]    # row y=10, column x=50
    assert tuple(out[30 + d, 12 + d]) == R.COLORS["negative"]
    assert tuple(out[30 - d, 12 - d]) == R.COLORS["negative"]
    # the swapped location (row 12, column 30) is untouched
    np.testing.assert_array_equal(out[12 - d:12 + d + 1, 30 - d:30 + d + 1], base[12 - d:12 + d + 1, 30 - d:30 + d + 1])
    # the marker stays within radius + 1 (outer black ring) of its centre
    rows, cols = np.nonzero(changed(out, base))
    near_pos = (abs(rows - 10) <= r + 1) & (abs(cols - 50) <= r + 1)
    near_neg = (abs(rows - 30) <= r + 1) & (abs(cols - 12) <= r + 1)
    assert np.all(near_pos | near_neg)


def test_draw_points_plus_and_minus_differ():
    g = gray_image()
    pos = R.draw_points(g, [(30, 20)], [1], radius=6)
    neg = R.draw_points(g, [(30, 20)], [0], radius=6)
    # the vertical arm of the "+" is white; a "−" has none
    assert tuple(pos[20 - 2, 30]) == (255, 255, 255)
    assert tuple(neg[20 - 2, 30]) == R.COLORS["negative"]
    assert tuple(neg[20, 30 + 2]) == (255, 255, 255)


@pytest.mark.parametrize("side,radius", [(64, 3), (640, 10)])
def test_draw_points_default_radius_scales_with_image(side, radius):
    g = np.full((side, side), 128, np.uint8)
    out = R.draw_points(g, [(side // 2, side // 2)], [1])
    rows, cols = np.nonzero(changed(out, R.to_rgb(g)))
    # disc of the radius plus a 1-pixel black ring on each side
    assert cols.max() - cols.min() + 1 == 2 * radius + 3
    assert rows.max() - rows.min() + 1 == 2 * radius + 3


def test_draw_points_outside_is_ignored_and_errors():
    g = gray_image()
    out = R.draw_points(g, [(-5, 10), (W + 3, 10), (10, H), (float("nan"), 3)], [1, 0, 1, 1])
    np.testing.assert_array_equal(out, R.to_rgb(g))
    np.testing.assert_array_equal(R.draw_points(g, [], []), R.to_rgb(g))
    with pytest.raises(ValueError, match="label"):
        R.draw_points(g, [(1, 1), (2, 2)], [1])
    with pytest.raises(ValueError, match="1 .tumour. or 0"):
        R.draw_points(g, [(1, 1)], [2])


def test_draw_box_outline_only_and_corner_order():
    g = gray_image()
    out = R.draw_box(g, (10, 5, 30, 20), color=(255, 0, 0))
    base = R.to_rgb(g)
    expected = np.zeros((H, W), bool)
    expected[5:21, 10:31] = True
    expected[6:20, 11:30] = False     # outline of rows 5..20, columns 10..30
    assert np.array_equal(changed(out, base), expected)
    assert np.all(out[expected] == (255, 0, 0))
    np.testing.assert_array_equal(R.draw_box(g, (30, 20, 10, 5), color=(255, 0, 0)), out)
    with pytest.raises(ValueError, match="box"):
        R.draw_box(g, (1, 2, 3))


# ---------------------------------------------------------------------------
# heat maps
# ---------------------------------------------------------------------------
def _cmap_rgb(value_u8, name):
    import cv2

    lut = cv2.applyColorMap(np.array([[value_u8]], np.uint8), getattr(cv2, R.COLORMAPS[name]))
    return lut[0, 0, ::-1]


def test_heatmap_nan_is_zero_and_blend_formula():
    g = gray_image()
    heat = np.zeros((H, W))
    heat[5, 5] = np.nan
    heat[6, 6] = 1.0
    out = R.heatmap_overlay(g, heat, alpha=0.45, colormap="inferno")
    base = R.to_rgb(g)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[5, 5], blend(base[5, 5], _cmap_rgb(0, "inferno"), 0.45))
    np.testing.assert_array_equal(out[6, 6], blend(base[6, 6], _cmap_rgb(255, "inferno"), 0.45))


def test_heatmap_mask_below_leaves_cold_pixels():
    g = gray_image()
    heat = np.tile(np.linspace(0, 1, W), (H, 1))
    heat[0, 0] = np.nan
    out = R.heatmap_overlay(g, heat, alpha=0.6, colormap="jet", mask_below=0.5)
    base = R.to_rgb(g)
    cold = np.nan_to_num(heat) < 0.5
    np.testing.assert_array_equal(out[cold], base[cold])
    assert changed(out, base)[~cold].mean() > 0.9


def test_heatmap_unknown_colormap_lists_options():
    with pytest.raises(ValueError) as err:
        R.heatmap_overlay(gray_image(), np.zeros((H, W)), colormap="rainbow")
    for name in ("inferno", "jet", "viridis", "magma"):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="mask_below"):
        R.heatmap_overlay(gray_image(), np.zeros((H, W)), mask_below=2)


# ---------------------------------------------------------------------------
# agreement map
# ---------------------------------------------------------------------------
def test_agreement_rgb_two_masks():
    g = gray_image()
    a = rect_mask(c0=10, c1=30)
    b = rect_mask(c0=20, c1=45)
    code = agreement_map([a, b])
    out, legend = R.agreement_rgb(g, code, ["U-Net", "prompt"], alpha=0.5)
    base = R.to_rgb(g)
    assert legend == [
        ("both: U-Net & prompt", R.COLORS["agree"]),
        ("only U-Net", R.COLORS["only_a"]),
        ("only prompt", R.COLORS["only_b"]),
    ]
    np.testing.assert_array_equal(out[code == 0], base[code == 0])
    for k, (_, color) in zip((3, 1, 2), legend, strict=True):
        np.testing.assert_array_equal(out[code == k], blend(base[code == k], color, 0.5))


def test_agreement_rgb_three_masks_and_bad_codes():
    g = gray_image()
    code = np.zeros((H, W), np.uint8)
    code[:, :8] = np.arange(8)[None, :]
    out, legend = R.agreement_rgb(g, code, ["U-Net", "prompt", "K-Means"])
    assert len(legend) == 7 and len({c for _, c in legend}) == 7
    assert legend[0][0] == "all three: U-Net, prompt & K-Means"
    assert len({tuple(out[0, k]) for k in range(1, 8)}) == 7
    with pytest.raises(ValueError, match="0..3"):
        R.agreement_rgb(g, code, ["U-Net", "prompt"])


# ---------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------
def test_side_by_side_joins_with_dark_gap_and_resizes():
    a = R.to_rgb(gray_image())                       # 40 x 60
    b = np.full((20, 10, 3), 200, np.uint8)          # resized to 40 x 20
    out = R.side_by_side([a, b], gap=4)
    assert out.shape == (H, W + 4 + 20, 3)
    np.testing.assert_array_equal(out[:, :W], a)
    gap = out[:, W:W + 4]
    assert gap.max() < 64 and np.all(gap == gap[0, 0])
    assert np.all(out[:, W + 4:] == 200)
    with pytest.raises(ValueError):
        R.side_by_side([])


def test_upscale_for_display():
    g = gray_image(10, 8)
    big, f = R.upscale_for_display(g, min_side=64)
    assert f == 8.0 and big.shape == (80, 64)
    np.testing.assert_array_equal(big[::8, ::8], g)
    np.testing.assert_array_equal(big[7::8, 7::8], g)
    same, f1 = R.upscale_for_display(R.to_rgb(g), min_side=8)
    assert f1 == 1.0 and same.shape == (10, 8, 3)
    mask, fm = R.upscale_for_display(np.eye(10, 8, dtype=bool), min_side=64)
    assert mask.dtype == bool and fm == f


# ---------------------------------------------------------------------------
# purity
# ---------------------------------------------------------------------------
def test_inputs_are_not_modified():
    g = gray_image()
    rgb = R.to_rgb(g)
    m = rect_mask().astype(np.uint8) * 255
    heat = np.linspace(0, 1, H * W).reshape(H, W)
    heat[0, 0] = np.nan
    labels = (rect_mask() * 2).astype(np.int32)
    pts = [(5.0, 5.0)]
    code = agreement_map([rect_mask(), rect_mask(c0=20)])
    originals = [a.copy() for a in (g, rgb, m, heat, labels, code)]
    R.overlay_mask(g, m)
    R.overlay_mask(rgb, m)
    R.draw_contour(rgb, m, (1, 2, 3))
    R.draw_points(rgb, pts, [1])
    R.draw_box(rgb, (1, 1, 5, 5))
    R.heatmap_overlay(rgb, heat)
    R.overlay_labels(rgb, labels)
    R.agreement_rgb(rgb, code, ["a", "b"])
    R.side_by_side([rgb, g])
    R.upscale_for_display(rgb)
    for before, after in zip(originals, (g, rgb, m, heat, labels, code), strict=True):
        np.testing.assert_array_equal(before, after)
    assert pts == [(5.0, 5.0)]
