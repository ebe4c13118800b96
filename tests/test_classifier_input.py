"""The classifier sees the head, not the file's framing: padding, aspect ratio and brightness carry no cue."""

from __future__ import annotations

import numpy as np

from bt_demo.models.sizing import fit_square
from bt_demo.sim.phantom import flair_phantom


def _head():
    img, _ = flair_phantom((180, 180), seed=3)
    return img


def _corr(a, b) -> float:
    """Correlation of the coarse (32 x 32) pictures: layout, not pixel noise."""
    import cv2

    sa, sb = (cv2.resize(x, (32, 32), interpolation=cv2.INTER_AREA).ravel() for x in (a, b))
    return float(np.corrcoef(sa, sb)[0, 1])


def test_padding_and_framing_do_not_change_the_input():
    head = _head()
    framed = np.zeros((300, 220), np.float32)  # the same head, off-centre in a non-square canvas
    framed[70:250, 15:195] = head
    fa, fb = fit_square(head, 128, "head_equalized"), fit_square(framed, 128, "head_equalized")
    assert (fb.box[0] - 70, fb.box[1] - 15, fb.box[2] - 70, fb.box[3] - 15) == fa.box  # the same head box
    a, b = fa.image(head), fb.image(framed)
    assert a.shape == b.shape == (128, 128)
    assert _corr(a, b) > 0.95
    # a letterbox keeps the framing: the two inputs differ clearly
    la = fit_square(head, 128, "letterbox").image(head)
    lb = fit_square(framed, 128, "letterbox").image(framed)
    assert _corr(la, lb) < 0.8


def test_brightness_and_contrast_are_equalised_away():
    head = _head()
    brighter = head ** 0.5  # a brighter export of the same anatomy (the 4-class Testing images are brighter)

    def mean_level(how, img):
        x = fit_square(img, 128, how).image(img)
        return float(((x - x.min()) / np.ptp(x)).mean())

    plain = abs(mean_level("head_square", head) - mean_level("head_square", brighter))
    equalised = abs(mean_level("head_equalized", head) - mean_level("head_equalized", brighter))
    assert plain > 0.1 and equalised < 0.03


def test_heat_maps_come_back_to_the_slice_and_are_zero_outside_the_head():
    framed = np.zeros((300, 220), np.float32)
    framed[70:250, 15:195] = _head()
    f = fit_square(framed, 128, "head_equalized")
    back = f.unmap(np.ones((128, 128), np.float32))
    assert back.shape == (300, 220)
    assert back[:40].max() == 0 and back[:, 205:].max() == 0  # outside the head box
    assert back[160, 100] == 1.0


def test_a_constant_image_is_fitted_whole_without_errors():
    f = fit_square(np.full((40, 60), 0.5, np.float32), 32, "head_equalized")
    assert f.box == (0, 0, 40, 60) and np.isfinite(f.image(np.full((40, 60), 0.5, np.float32))).all()
