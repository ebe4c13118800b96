"""The preprocessing lab: every step on every input kind, outputs recomputed with plain
NumPy/OpenCV/SciPy, parameter checks, the pipeline key, and the crop geometry round trip."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
from scipy import ndimage as ndi

from bt_demo.errors import InputError
from bt_demo.image import preprocess as pp
from bt_demo.image.preprocess import Param


# ---------------------------------------------------------------------------
# a phantom the tests draw: ellipse head, bright skull ring, dark CSF gap,
# darker brain, bright lesion disk, noise
# ---------------------------------------------------------------------------
def head_phantom(shape=(256, 256), centre=(128.0, 128.0), axes=(100.0, 115.0), lesion_at=(0.35, -0.3),
                 lesion_r=14, noise=0.02, seed=0):
    """float32 (H, W) in [0, 1] and bool masks {head, ring, brain, lesion}; centre/axes in (x, y) px;
    lesion_at: lesion centre as a fraction of the brain semi-axes from the centre, (x, y)."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    cx, cy = centre
    ax, ay = axes

    def ell(shrink):
        return ((xx - cx) / (ax - shrink)) ** 2 + ((yy - cy) / (ay - shrink)) ** 2 <= 1

    head, inside_ring, brain = ell(0), ell(6), ell(9)
    lx, ly = cx + lesion_at[0] * (ax - 9), cy + lesion_at[1] * (ay - 9)
    lesion = (xx - lx) ** 2 + (yy - ly) ** 2 <= lesion_r ** 2
    img = np.full(shape, 0.02)
    img[head] = 0.9                  # skull / scalp ring
    img[inside_ring] = 0.08          # CSF gap
    img[brain] = 0.4                 # brain
    img[lesion & brain] = 0.85       # lesion
    img = img + np.random.default_rng(seed).normal(0, noise, shape)
    masks = {"head": head, "ring": head & ~inside_ring, "brain": brain, "lesion": lesion & brain,
             "lesion_centre": (lx, ly)}
    return np.clip(img, 0, 1).astype(np.float32), masks


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def _kinds():
    rng = np.random.default_rng(0)
    img, _ = head_phantom()
    big, _ = head_phantom((1024, 1024), (512.0, 512.0), (400.0, 460.0), lesion_r=50, seed=1)
    nonsq, _ = head_phantom((257, 191), (95.0, 128.0), (80.0, 115.0), seed=2)
    return {
        "constant": np.full((48, 40), 0.37, np.float32),
        "tiny32": cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA),
        "large1024": big,
        "nonsquare257x191": nonsq,
        "noise": rng.random((64, 80)).astype(np.float32),
        "from16bit": (np.round(img * 4095) / 4095).astype(np.float32),  # 12-bit data, already in [0, 1]
        "uint8": np.round(img * 255).astype(np.uint8),
        "float64_out_of_range": img.astype(np.float64) * 3000 - 200,
    }


KINDS = _kinds()


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("step", list(pp.STEPS))
def test_every_step_accepts_every_input_kind(step, kind):
    img = KINDS[kind]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = pp.STEPS[step].fn(img)  # default params
    if pp.STEPS[step].changes_geometry:
        out, box = out
        y0, x0, y1, x1 = box
        assert 0 <= y0 < y1 <= img.shape[0] and 0 <= x0 < x1 <= img.shape[1]
        assert out.shape == (y1 - y0, x1 - x0)
    else:
        assert out.shape == img.shape[:2]
    assert out.dtype == np.float32 and out.ndim == 2
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    if kind == "constant":
        assert any("constant" in str(w.message) for w in caught), "a constant image must warn"
        assert np.array_equal(out, img)


@pytest.mark.parametrize("params", [{"method": "snakes"}, {"method": "morphological", "erosion": 0}])
def test_skull_strip_variants_on_awkward_inputs(params):
    for kind in ("tiny32", "nonsquare257x191", "noise", "constant"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = pp.skull_strip(KINDS[kind], **params)
        assert out.shape == KINDS[kind].shape and np.isfinite(out).all() and 0 <= out.min() <= out.max() <= 1


@pytest.mark.parametrize("method", ["median", "gaussian", "bilateral", "nlmeans"])
def test_every_denoise_method_reduces_noise_more_with_strength(method):
    clean, m = head_phantom((96, 96), (48.0, 48.0), (40.0, 44.0), lesion_r=6, noise=0.0)
    noisy = np.clip(clean + np.random.default_rng(3).normal(0, 0.03, clean.shape), 0, 1).astype(np.float32)
    flat = cv2.erode(m["brain"].astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    flat &= ~(cv2.dilate(m["lesion"].astype(np.uint8), np.ones((9, 9), np.uint8)) > 0)
    light = pp.denoise(noisy, method=method, strength=0.0)[flat].std()
    strong = pp.denoise(noisy, method=method, strength=1.0)[flat].std()
    assert strong < light < 0.95 * noisy[flat].std()
    assert strong < 0.6 * noisy[flat].std()
    for kind in ("constant", "tiny32"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            o = pp.denoise(KINDS[kind], method=method, strength=1.0)
        assert o.shape == KINDS[kind].shape and np.isfinite(o).all()


# ---------------------------------------------------------------------------
# outputs recomputed with plain NumPy / OpenCV / SciPy
# ---------------------------------------------------------------------------
SMALL, _ = head_phantom((72, 88), (44.0, 36.0), (38.0, 32.0), lesion_r=6, seed=5)


def test_unsharp_matches_a_scipy_gaussian():
    blur = ndi.gaussian_filter(SMALL.astype(np.float64), 1.5, mode="mirror", truncate=4.0)
    expected = np.clip(SMALL + 0.8 * (SMALL - blur), 0, 1)
    assert np.abs(pp.unsharp(SMALL, radius=1.5, amount=0.8) - expected).max() < 2e-3
    assert np.array_equal(pp.unsharp(SMALL, radius=2.0, amount=0.0), SMALL)


def test_clahe_matches_opencv_on_the_8bit_image():
    u8 = np.round(SMALL * 255).astype(np.uint8)
    expected = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(4, 4)).apply(u8) / 255.0
    assert np.abs(pp.clahe(SMALL, clip_limit=3.0, tile_grid=4) - expected).max() < 1e-6
    # it raises local contrast in a dim, low-contrast image
    dim = (SMALL * 0.3 + 0.1).astype(np.float32)
    assert pp.clahe(dim).std() > 1.3 * dim.std()


def test_median_and_gaussian_denoise_match_scipy():
    med3 = ndi.median_filter(SMALL, size=3, mode="nearest")
    assert np.array_equal(pp.denoise(SMALL, method="median", strength=0.2), med3)
    med5 = ndi.median_filter(SMALL, size=5, mode="nearest")
    assert np.array_equal(pp.denoise(SMALL, method="median", strength=0.5), med5)
    sigma = 0.5 + 2.5 * 0.4
    g = ndi.gaussian_filter(SMALL.astype(np.float64), sigma, mode="mirror", truncate=4.0)
    assert np.abs(pp.denoise(SMALL, method="gaussian", strength=0.4) - g).max() < 2e-3
    # robust noise estimate, then OpenCV's NL-means on the 8-bit image with h = (0.8 + 1.7 s) sigma
    lap = ndi.convolve(SMALL.astype(np.float64), [[1, -2, 1], [-2, 4, -2], [1, -2, 1]])[1:-1, 1:-1]
    sigma = 1.4826 * np.median(np.abs(lap)) / 6
    assert pp.noise_sigma(SMALL) == pytest.approx(sigma, rel=1e-4)
    assert pp.noise_sigma(SMALL) == pytest.approx(0.02, rel=0.3)  # the phantom's noise
    nl = cv2.fastNlMeansDenoising(np.round(SMALL * 255).astype(np.uint8), None, h=255 * sigma * (0.8 + 1.7 * 0.5),
                                  templateWindowSize=5, searchWindowSize=11) / 255.0
    assert np.abs(pp.denoise(SMALL, method="nlmeans", strength=0.5) - nl).max() < 1e-6


def test_percentile_normalisation_matches_numpy():
    img = SMALL.copy()
    img[:5] = 0.0  # true background stays 0
    fg = img[img > 0]
    lo, hi = np.percentile(fg, [2.0, 98.0])
    expected = np.where(img > 0, (np.clip(img, lo, hi) - lo) / (hi - lo), 0.0)
    out = pp.normalize(img, method="percentile", low=2.0, high=98.0)
    assert np.abs(out - expected).max() < 1e-5
    assert out[:5].max() == 0 and out.max() == pytest.approx(1.0)


def test_zscore_normalisation_matches_numpy_and_stays_displayable():
    img = SMALL.copy()
    img[:5] = 0.0
    fg = img[img > 0].astype(np.float64)
    z = (img - fg.mean()) / fg.std()
    expected = np.where(img > 0, np.clip((z + 3) / 6, 0, 1), 0.0)
    out = pp.normalize(img, method="zscore")
    assert np.abs(out - expected).max() < 1e-5
    assert 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("shape", [(256, 256), (257, 191), (32, 32), (5, 7)])
def test_musica_identity_when_power_and_amplification_are_one(shape):
    img = cv2.resize(KINDS["nonsquare257x191"], shape[::-1], interpolation=cv2.INTER_AREA)
    out = pp.musica(img, levels=8, power=1.0, amplification=1.0)
    assert np.abs(out - img).max() < 1e-4


def test_musica_power_law_boosts_fine_detail():
    img = SMALL
    detail = lambda a: np.abs(a - cv2.GaussianBlur(a, (0, 0), 1.0)).mean()  # noqa: E731
    soft = pp.musica(img, levels=3, power=0.7, amplification=1.0)
    boosted = pp.musica(img, levels=3, power=0.5, amplification=2.0)
    assert detail(boosted) > detail(soft) > 1.05 * detail(img)
    assert detail(boosted) > 1.2 * detail(img)
    assert pp.musica_levels((32, 32), 8) == 3 and pp.musica_levels((1024, 700), 5) == 5


# ---------------------------------------------------------------------------
# input conversion
# ---------------------------------------------------------------------------
def test_inputs_are_converted_to_unit_float32():
    u8 = np.array([[0, 51], [102, 255]], np.uint8).repeat(4, 0).repeat(4, 1)
    assert np.allclose(pp.as_unit_float(u8), u8 / 255.0) and pp.as_unit_float(u8).dtype == np.float32
    u16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 10 + 1000)
    out = pp.as_unit_float(u16)
    assert out.min() == 0 and out.max() == 1 and np.allclose(out, (u16 - 1000) / 630.0)
    f = np.linspace(0, 1, 64, dtype=np.float64).reshape(8, 8)
    assert np.array_equal(pp.as_unit_float(f), f.astype(np.float32))
    with pytest.warns(RuntimeWarning, match="NaN"):
        nan = pp.as_unit_float(np.where(f > 0.5, np.nan, f))
    assert np.isfinite(nan).all()
    with pytest.raises(InputError, match=r"\(H, W\)"):
        pp.as_unit_float(np.zeros((8, 8, 3)))
    with pytest.raises(InputError, match="at least 4"):
        pp.run_pipeline(np.zeros((2, 40), np.float32))


# ---------------------------------------------------------------------------
# registry and parameters
# ---------------------------------------------------------------------------
def test_registry_declares_controls_and_default_pipeline():
    assert list(pp.STEPS) == ["crop_brain", "skull_strip", "denoise", "clahe", "musica", "unsharp", "normalize"]
    for step in pp.STEPS.values():
        assert step.label and step.description and callable(step.fn)
        for p in step.params:
            if p.kind in ("float", "int"):
                assert p.min <= p.default <= p.max
            if p.kind == "choice":
                assert p.default in p.choices
    assert [n for n, s in pp.STEPS.items() if s.changes_geometry] == ["crop_brain"]
    assert pp.default_pipeline() == [("normalize", {"method": "percentile", "low": 0.5, "high": 99.5})]
    assert Param("a", "A", True).kind == "bool" and Param("b", "B", 3).kind == "int"
    assert Param("c", "C", 0.5).kind == "float" and Param("d", "D", "x", choices=("x", "y")).kind == "choice"


def test_parameter_validation_messages():
    with pytest.raises(ValueError, match=r"^clahe\.clip_limit must be in \[0\.5, 10\.0\], got 42$"):
        pp.validate_params("clahe", {"clip_limit": 42})
    with pytest.raises(ValueError, match=r"clahe\.tile_grid must be a whole number in \[2, 16\]"):
        pp.validate_params("clahe", {"tile_grid": 7.5})
    with pytest.raises(ValueError, match="denoise.method must be one of median, gaussian, bilateral, nlmeans"):
        pp.validate_params("denoise", {"method": "wavelet"})
    with pytest.raises(ValueError, match="clahe has no parameter 'gamma'; options: clip_limit, tile_grid"):
        pp.validate_params("clahe", {"gamma": 1})
    with pytest.raises(ValueError, match="unsharp.amount must be a number"):
        pp.validate_params("unsharp", {"amount": "lots"})
    with pytest.raises(ValueError, match="finite"):
        pp.validate_params("unsharp", {"amount": float("nan")})
    with pytest.raises(ValueError, match=r"musica\.power must be in \[0\.3, 1\.0\]"):
        pp.musica(SMALL, power=0.1)  # the step functions check too
    # defaults filled, types coerced (a slider's 8.0 is the int 8)
    assert pp.validate_params("clahe", {"tile_grid": 8.0}) == {"clip_limit": 2.0, "tile_grid": 8}
    assert isinstance(pp.validate_params("clahe", {"tile_grid": 8.0})["tile_grid"], int)
    assert isinstance(pp.validate_params("clahe", {"clip_limit": 3})["clip_limit"], float)


def test_unknown_step_lists_the_options():
    with pytest.raises(KeyError) as e:
        pp.get_step("magic")
    for name in pp.STEPS:
        assert name in str(e.value)
    with pytest.raises(KeyError, match="crop_brain, skull_strip"):
        pp.run_pipeline(SMALL, [("magic", {})])
    with pytest.raises(KeyError, match="magic"):
        pp.validate_params("magic", {})


def test_pipeline_runs_in_registry_order_and_rejects_duplicates():
    a = pp.run_pipeline(SMALL, [("normalize", {}), ("clahe", {"clip_limit": 3.0}), ("unsharp", {})])
    assert [n for n, _ in a.steps] == ["clahe", "unsharp", "normalize"]
    expected = pp.normalize(pp.unsharp(pp.clahe(SMALL, clip_limit=3.0)))
    assert np.array_equal(a.image, expected)
    assert set(a.timings) >= {"clahe", "unsharp", "normalize"}
    with pytest.raises(ValueError, match="twice"):
        pp.run_pipeline(SMALL, [("clahe", {}), ("clahe", {"clip_limit": 3.0})])
    ident = pp.run_pipeline(SMALL, [])
    assert ident.geometry.is_identity and np.array_equal(ident.image, SMALL) and ident.steps == ()
    default = pp.run_pipeline(SMALL)
    assert default.steps == tuple(pp.default_pipeline())
    assert np.array_equal(default.image, pp.normalize(SMALL))


def test_pipeline_key_tracks_content_and_params():
    spec = [("clahe", {"clip_limit": 2.0}), ("normalize", {})]
    k = pp.pipeline_key(SMALL, spec)
    assert k == pp.pipeline_key(SMALL.copy(), [("normalize", {}), ("clahe", {"clip_limit": 2})])
    assert k == pp.pipeline_key(SMALL, [("clahe", {}), ("normalize", {"low": 0.5})])  # defaults are explicit
    assert k == pp.run_pipeline(SMALL, spec).key and len(k) == 40
    assert k != pp.pipeline_key(SMALL, [("clahe", {"clip_limit": 2.5}), ("normalize", {})])
    assert k != pp.pipeline_key(SMALL, [("clahe", {"clip_limit": 2.0})])
    changed = SMALL.copy()
    changed[10, 10] += 0.01
    assert k != pp.pipeline_key(changed, spec)
    assert pp.pipeline_key(SMALL, []) != pp.pipeline_key(SMALL.T.copy(), [])  # same bytes, other shape


def test_constant_image_through_the_default_pipeline():
    with pytest.warns(RuntimeWarning, match="constant"):
        out = pp.run_pipeline(np.full((64, 64), 0.25, np.float32))
    assert np.isfinite(out.image).all() and np.allclose(out.image, 0.25) and out.brain_mask.all()


# ---------------------------------------------------------------------------
# masks, skull stripping, crop geometry
# ---------------------------------------------------------------------------
def test_estimate_brain_mask_covers_the_brain_and_drops_the_ring():
    img, m = head_phantom()
    est = pp.estimate_brain_mask(img)
    assert est.dtype == bool and est.shape == img.shape
    assert (est & m["brain"]).sum() > 0.85 * m["brain"].sum()
    assert (est & m["ring"]).sum() < 0.05 * m["ring"].sum()
    assert est[m["lesion"]].all()
    head = pp.head_mask(img)
    assert dice(head, m["head"]) > 0.97
    with pytest.warns(RuntimeWarning, match="constant"):
        assert pp.estimate_brain_mask(np.zeros((16, 16), np.float32)).all()
    assert pp.estimate_brain_mask(KINDS["noise"]).any()
    dot = np.zeros((64, 64), np.float32)
    dot[30, 30] = 1.0
    assert pp.estimate_brain_mask(dot).any()


@pytest.mark.parametrize("method", ["morphological", "snakes"])
def test_skull_strip_removes_the_bright_skull_ring(method):
    img, m = head_phantom()
    out = pp.skull_strip(img, method=method)
    ring = m["ring"]
    assert (out[ring] > 0).mean() < 0.05, "the skull ring is zeroed"
    assert (out[m["brain"]] > 0).mean() > 0.9, "the brain is kept"
    assert np.array_equal(out[m["lesion"]], img[m["lesion"]]), "the lesion is untouched"
    assert (out[~m["head"]] == 0).all()


def test_crop_brain_box_is_the_head_box_plus_margin():
    img, m = head_phantom((240, 300), centre=(95.0, 140.0), axes=(70.0, 80.0), lesion_r=10)
    ys, xs = np.nonzero(m["head"])
    out, box = pp.crop_brain(img, margin=6)
    expected = (max(0, ys.min() - 6), max(0, xs.min() - 6), min(240, ys.max() + 7), min(300, xs.max() + 7))
    assert np.abs(np.array(box) - np.array(expected)).max() <= 2
    assert np.array_equal(out, img[box[0]:box[2], box[1]:box[3]])
    # a head touching the border is clipped to the image, and a speck never gives a degenerate crop
    _, box0 = pp.crop_brain(img, margin=64)
    assert box0[0] == 0 and box0[1] == 0 and box0[3] <= 300
    speck = np.zeros((64, 64), np.float32)
    speck[20:22, 40:42] = 1.0
    with pytest.warns(RuntimeWarning, match="full image"):
        out, box = pp.crop_brain(speck, margin=0)
    assert box == (0, 0, 64, 64) and out.shape == (64, 64)


def test_crop_geometry_round_trip_lands_on_the_lesion():
    # off-centre head in a non-square slice
    img, m = head_phantom((240, 300), centre=(95.0, 140.0), axes=(70.0, 80.0), lesion_at=(0.4, 0.3), lesion_r=10)
    proc = pp.run_pipeline(img, [("crop_brain", {"margin": 8})])
    g = proc.geometry
    assert proc.image.shape != img.shape and not g.is_identity and g.original_shape == img.shape
    # find the lesion in the processed image alone: bright, and thicker than the skull ring
    bright = (proc.image > 0.65).astype(np.uint8)
    blob = cv2.morphologyEx(bright, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (11, 11)))
    ys, xs = np.nonzero(blob)
    cx, cy = xs.mean(), ys.mean()
    # a disk drawn there lands on the lesion in the original slice
    drawn = np.zeros(proc.image.shape, np.uint8)
    cv2.circle(drawn, (int(round(cx)), int(round(cy))), 10, 1, -1)
    back = g.map_to_original(drawn > 0, fill=False)
    assert back.shape == img.shape and back.dtype == bool
    assert dice(back, m["lesion"]) > 0.9
    # the lesion centre in original pixels maps onto the lesion, and back within half a pixel
    lx, ly = m["lesion_centre"]
    p = g.to_processed([lx, ly])
    assert np.hypot(p[0] - cx, p[1] - cy) < 1.5
    assert proc.image[int(round(p[1])), int(round(p[0]))] > 0.65
    assert np.allclose(g.to_original(p), [lx, ly], atol=0.5)
    # the brain mask is in processed pixels and maps back inside the head
    assert proc.brain_mask.shape == proc.image.shape
    assert m["head"][g.map_to_original(proc.brain_mask, fill=False)].mean() > 0.99


def test_hole_filling_matches_scipy():
    from bt_demo.image.masks import fill_holes

    rng = np.random.default_rng(0)
    for _ in range(100):
        shape = (int(rng.integers(4, 40)), int(rng.integers(4, 40)))
        m = rng.random(shape) < rng.uniform(0.2, 0.8)
        assert np.array_equal(fill_holes(m), ndi.binary_fill_holes(m))


def test_models_get_only_the_brain_crop_unless_asked():
    from bt_demo.image.preprocess import default_pipeline, model_steps, validate_params

    spec = [("crop_brain", validate_params("crop_brain", None))] + default_pipeline() + \
        [("clahe", validate_params("clahe", None))]
    assert [n for n, _ in model_steps(spec)] == ["crop_brain"]
    assert [n for n, _ in model_steps(spec, lab_output=True)] == ["crop_brain", "clahe", "normalize"]  # registry order
    assert model_steps([]) == () and model_steps(default_pipeline()) == ()
