"""The click model's zoom-in, the models' own input preparation and the lab-step augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from bt_demo.models.click_step import ZOOM_MIN_SHARE, click_input, click_output, zoom_box
from bt_demo.models.input_prep import prepare
from tests.tiny_models import make_seg


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_zoom_box_holds_the_mask_and_every_click_and_stays_inside_the_slice():
    prev = _disk((256, 240), 60, 200, 12)
    pts = np.array([[230.0, 40.0], [190.0, 75.0]])
    y0, x0, y1, x1 = zoom_box((256, 240), prev, pts)
    assert 0 <= y0 < y1 <= 256 and 0 <= x0 < x1 <= 240
    ys, xs = np.nonzero(prev)
    assert y0 <= ys.min() and ys.max() < y1 and x0 <= xs.min() and xs.max() < x1
    assert all(x0 <= x < x1 and y0 <= y < y1 for x, y in pts)
    assert min(y1 - y0, x1 - x0) >= int(ZOOM_MIN_SHARE * 256) - 1  # never a tiny crop


@pytest.fixture(scope="module")
def zoom_model(tmp_path_factory):
    from bt_demo.models.nets import SegNet

    folder = make_seg(tmp_path_factory.mktemp("w") / "clicks", "clicks", zoom_in=True)
    return SegNet.from_pretrained(str(folder)).eval()


def test_first_click_sees_the_whole_slice_and_later_clicks_a_crop_around_the_mask(zoom_model):
    img = np.random.default_rng(0).random((200, 200)).astype(np.float32)
    x, frame = click_input(zoom_model, img, [(100.0, 100.0)], [1], None)
    assert x.shape == (4, 64, 64) and frame.box == (0, 0, 200, 200)
    prev = _disk((200, 200), 100, 100, 10)
    x2, frame2 = click_input(zoom_model, img, [(100.0, 100.0), (112.0, 100.0)], [1, 1], prev)
    y0, x0, y1, x1 = frame2.box
    assert (y1 - y0) < 200 and (x1 - x0) < 200  # zoomed in
    assert x2[3].sum() > x[3].sum()  # the previous mask is fed back (empty the first time)
    # outside the crop the previous answer stays; inside it comes from the model
    prob_m = np.zeros((64, 64), np.float32)
    prev_far = prev.copy()
    prev_far[0:5, 0:5] = True  # a remote piece outside the crop survives
    _, frame3 = click_input(zoom_model, img, [(100.0, 100.0)], [1], prev)
    frame3 = type(frame3)(frame3.box, frame3.lb, frame3.model_points, prev_far)
    _, mask = click_output(zoom_model, prob_m, frame3, [1], img.shape)
    assert mask[0:5, 0:5].all()
    by0, bx0, by1, bx1 = frame3.box
    assert not mask[by0:by1, bx0:bx1].any()  # the model said "nothing" inside the crop


def test_click_engine_with_zoom_returns_masks_in_slice_pixels(zoom_model):
    from bt_demo.models.base import SegResult
    from bt_demo.models.clicks import ClickEngine

    eng = ClickEngine(zoom_model)
    img = np.random.default_rng(1).random((180, 220)).astype(np.float32)
    eng.set_image(img)
    r1 = eng.predict([(110, 90)], [1])
    assert r1.mask.shape == (180, 220) and r1.prob.shape == (180, 220)
    prev = SegResult(_disk((180, 220), 90, 110, 15), "test", 0.0)
    r2 = eng.predict([(110, 90), (140, 90)], [1, 0], previous=prev)
    assert r2.mask.shape == (180, 220)


def test_model_input_preparation_is_stored_and_applied(tmp_path):
    from bt_demo.models.nets import SegNet
    from bt_demo.models.unet import UNetEngine

    raw = SegNet.from_pretrained(str(make_seg(tmp_path / "a", seed=3)))
    prep = SegNet.from_pretrained(str(make_seg(tmp_path / "b", seed=3, input_prep="median_clahe")))
    assert prep.input_prep == "median_clahe" and raw.input_prep == "raw"
    img = np.clip(np.random.default_rng(2).normal(0.3, 0.1, (96, 96)), 0, 1).astype(np.float32)
    assert not np.allclose(prepare(img, "median_clahe"), img)
    assert np.array_equal(prepare(img, "raw"), img)
    # same weights, different input mapping -> a different answer: the engine applies the config's mapping
    assert not np.allclose(UNetEngine(raw.eval()).probabilities(img), UNetEngine(prep.eval()).probabilities(img))
    with pytest.raises(ValueError, match="input_prep"):
        SegNet(encoder_name="tu-test_efficientnet", encoder_depth=3, decoder_channels=[16, 8, 8], input_prep="sharpen")


def test_lab_augmentation_keeps_the_mask_aligned_with_a_cropped_slice():
    from train.lab_augment import lab_augment

    rng = np.random.default_rng(0)
    from bt_demo.sim.phantom import flair_phantom

    x, m = flair_phantom(seed=4)
    assert lab_augment(x, m, rng, 0.0)[0] is x  # p = 0: untouched
    shapes = set()
    for _ in range(30):
        xa, ma = lab_augment(x, m, rng, 1.0)
        assert xa.shape == ma.shape and 0 <= xa.min() and xa.max() <= 1
        shapes.add(xa.shape)
        if ma.any():  # the tumour stays under its mask after any crop
            assert xa[ma].mean() > xa[~ma].mean() - 0.2
    assert len(shapes) > 1  # some pipelines cropped to the brain
