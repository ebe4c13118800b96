"""The preprocessing lab: every step on every input kind, parameters, geometry round trip."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from bt_demo import preprocess as pp
from bt_demo.phantom import flair_phantom


def _kinds():
    rng = np.random.default_rng(0)
    img, _ = flair_phantom((96, 96), seed=3)
    return {
        "constant": np.full((40, 40), 0.5, np.float32),
        "tiny32": img[::3, ::3][:32, :32].copy(),
        "large1024": cv2.resize(img, (1024, 1024), interpolation=cv2.INTER_LINEAR),
        "nonsquare": cv2.resize(img, (191, 257), interpolation=cv2.INTER_AREA),
        "noise": rng.random((64, 80)).astype(np.float32),
        "from16bit": (np.round(img * 65535) / 65535).astype(np.float32),
        "out_of_range_float64": (img * 3 - 1).astype(np.float64),
    }


KINDS = _kinds()


@pytest.mark.parametrize("step", list(pp.STEPS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_step_accepts_every_input_kind(step, kind):
    img = KINDS[kind]
    if kind == "large1024" and step == "skull_strip":
        params = {"method": "morphological"}
    else:
        params = {}
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        out = pp.run_pipeline(img, [(step, params)])
    assert out.image.dtype == np.float32 and out.image.ndim == 2
    assert np.isfinite(out.image).all() and out.image.min() >= 0 and out.image.max() <= 1
    assert out.brain_mask.shape == out.image.shape and out.brain_mask.dtype == bool


def test_constant_image_warns_instead_of_nan():
    with pytest.warns(RuntimeWarning, match="constant"):
        out = pp.clahe(np.full((32, 32), 0.3, np.float32))
    assert np.allclose(out, 0.3)


def test_steps_match_plain_opencv_numpy():
    img, _ = flair_phantom((128, 128), seed=1)
    # unsharp: img + a * (img - blur)
    exp = np.clip(img + 0.8 * (img - cv2.GaussianBlur(img, (0, 0), 1.5)), 0, 1)
    assert np.allclose(pp.unsharp(img, 1.5, 0.8), exp, atol=1e-6)
    # CLAHE on the 16-bit copy
    c = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(np.round(img * 65535).astype(np.uint16))
    assert np.allclose(pp.clahe(img, 2.0, 8), c / 65535.0, atol=1e-6)
    # median 3x3
    med = cv2.medianBlur(np.round(img * 65535).astype(np.uint16), 3) / 65535.0
    assert np.allclose(pp.denoise(img, "median", 1.0), med, atol=1e-6)
    # percentile normalisation over non-zero pixels
    fg = img[img > 0]
    lo, hi = np.percentile(fg, [2, 98])
    exp = np.clip((img - lo) / (hi - lo), 0, 1)
    exp[img == 0] = 0
    assert np.allclose(pp.normalize(img, "percentile", 2, 98), exp, atol=1e-6)
    z = pp.normalize(img, "zscore")
    inside = img > 0
    zz = (img[inside] - fg.mean()) / fg.std()
    assert np.allclose(z[inside], np.clip((zz + 3) / 6, 0, 1), atol=1e-5)


def test_musica_identity_and_contrast_boost():
    img, _ = flair_phantom((128, 128), seed=2)
    assert np.abs(pp.musica(img, levels=4, power=1.0, amplification=1.0) - img).max() < 1e-4
    boosted = pp.musica(img, levels=4, power=0.5, amplification=1.5)
    lap = lambda a: np.abs(cv2.Laplacian(a, cv2.CV_32F)).mean()  # noqa: E731
    assert lap(boosted) > lap(img)


def test_parameter_validation_messages():
    with pytest.raises(ValueError, match=r"clahe.clip_limit must be in \[0.5, 10.0\], got 42"):
        pp.validate_params("clahe", {"clip_limit": 42})
    with pytest.raises(ValueError, match="must be one of"):
        pp.validate_params("denoise", {"method": "wavelet"})
    with pytest.raises(ValueError, match="no parameter"):
        pp.validate_params("clahe", {"gamma": 1})
    with pytest.raises(KeyError, match="choose one of"):
        pp.get_step("magic")
    assert pp.validate_params("clahe", {"tile_grid": 7.6}) == {"clip_limit": 2.0, "tile_grid": 8}
    with pytest.raises(ValueError, match="twice"):
        pp.run_pipeline(np.zeros((32, 32), np.float32), [("clahe", {}), ("clahe", {})])


def test_registry_declares_controls_and_default_pipeline():
    for step in pp.STEPS.values():
        assert step.label and step.description
        for p in step.params:
            assert p.kind in ("float", "int", "choice", "bool")
            if p.kind in ("float", "int"):
                assert p.min <= p.default <= p.max
    assert [n for n, _ in pp.default_pipeline()] == [n for n, s in pp.STEPS.items() if s.default_enabled]
    assert [s for s in pp.STEPS.values() if s.changes_geometry] == [pp.STEPS["crop_brain"]]


def test_steps_run_in_registry_order_and_key_tracks_params():
    img, _ = flair_phantom((64, 64))
    a = pp.run_pipeline(img, [("normalize", {}), ("clahe", {})])
    b = pp.run_pipeline(img, [("clahe", {}), ("normalize", {})])
    assert [n for n, _ in a.steps] == ["clahe", "normalize"] and np.array_equal(a.image, b.image)
    assert a.key == b.key
    c = pp.run_pipeline(img, [("clahe", {"clip_limit": 3.0}), ("normalize", {})])
    assert c.key != a.key
    assert pp.run_pipeline(img, []).geometry.is_identity


def _off_centre_head():
    img = np.zeros((200, 260), np.float32)
    yy, xx = np.mgrid[:200, :260]
    head = ((xx - 170) / 70) ** 2 + ((yy - 110) / 80) ** 2 <= 1
    img[head] = 0.4
    lesion = (xx - 190) ** 2 + (yy - 90) ** 2 <= 12 ** 2
    img[lesion] = 0.9
    return img, lesion


def test_crop_geometry_round_trip_lands_on_the_same_anatomy():
    img, lesion = _off_centre_head()
    out = pp.run_pipeline(img, [("crop_brain", {"margin": 5})])
    g = out.geometry
    assert out.image.shape != img.shape and not g.is_identity
    # the lesion centre in original pixels maps to the lesion in the processed image and back
    p = g.to_processed([190.0, 90.0])
    assert out.image[int(round(p[1])), int(round(p[0]))] > 0.8
    assert np.allclose(g.to_original(p), [190.0, 90.0], atol=0.5)
    # a disk drawn on the processed image at the lesion lands on the lesion in the original
    drawn = np.zeros(out.image.shape, np.uint8)
    cv2.circle(drawn, (int(round(p[0])), int(round(p[1]))), 12, 1, -1)
    back = g.map_to_original(drawn > 0, fill=False)
    assert back.shape == img.shape
    dice = 2 * (back & lesion).sum() / (back.sum() + lesion.sum())
    assert dice > 0.9


def test_skull_strip_removes_bright_skull_ring():
    img, _ = flair_phantom((128, 128), seed=0)
    head = pp.head_mask(img)
    out = pp.skull_strip(img, "morphological", erosion=6)
    ring = head & ~(cv2.erode(head.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0)
    assert out[ring].mean() < 0.5 * img[ring].mean()
    inner = cv2.erode(head.astype(np.uint8), np.ones((31, 31), np.uint8)) > 0
    assert np.allclose(out[inner], img[inner])
