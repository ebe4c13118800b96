"""Intensity histograms, classical segmenters, RANO measurements and TTA uncertainty."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from bt_demo.image import intensity
from bt_demo.image.geometry import Geometry
from bt_demo.studies import classical_seg as cs
from bt_demo.studies import measure as ms
from bt_demo.studies import uncertainty as un


def _dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * (a & b).sum() / max(1, a.sum() + b.sum())


def disk_phantom(shape=(160, 176), centre=(90, 75), r=22, seed=0):
    """Dark background, an elliptical "brain" at 0.4, a bright disk at 0.9, noise sigma 0.03.
    Returns (float32 (H, W) in [0, 1], bool disk mask); centre is (x, y)."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    brain = ((xx - w / 2) / (0.42 * w)) ** 2 + ((yy - h / 2) / (0.44 * h)) ** 2 <= 1
    disk = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= r * r
    img = np.where(brain, 0.4, 0.02) + np.where(disk, 0.5, 0.0)
    img = img + np.random.default_rng(seed).normal(0, 0.03, shape)
    return np.clip(img, 0, 1).astype(np.float32), disk


def ellipse_mask(shape, centre, a, b, angle_deg):
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    t = math.radians(angle_deg)
    dx, dy = xx - centre[0], yy - centre[1]
    u = dx * math.cos(t) + dy * math.sin(t)
    v = -dx * math.sin(t) + dy * math.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


# ----------------------------------------------------------------- intensity
def test_histogram_matches_numpy():
    rng = np.random.default_rng(1)
    img = rng.random((40, 50)).astype(np.float32)
    after = np.clip(img * 1.5, 0, 1).astype(np.float32)
    h = intensity.histogram_cdf(img, after, bins=32)
    for key, x in (("before", img), ("after", after)):
        counts, edges = np.histogram(x.astype(np.float64), bins=32, range=(0, 1))
        np.testing.assert_array_equal(h[key]["counts"], counts)
        np.testing.assert_allclose(h["edges"], edges)
        np.testing.assert_allclose(h[key]["cdf"], np.cumsum(counts) / counts.sum())
        assert h[key]["cdf"][-1] == pytest.approx(1.0)


def test_histogram_brain_mask_and_dtypes():
    img8 = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    mask = np.zeros((64, 64), bool)
    mask[10:20, 10:30] = True
    h = intensity.histogram_cdf(img8, brain_mask=mask, bins=16)
    counts, _ = np.histogram(img8[mask] / 255.0, bins=16, range=(0, 1))
    np.testing.assert_array_equal(h["before"]["counts"], counts)
    assert h["before"]["n"] == mask.sum() and h["after"] is None
    img16 = (np.arange(64 * 64) * 16).astype(np.uint16).reshape(64, 64)  # min-max rescaled
    h16 = intensity.histogram_cdf(img16, bins=16)
    assert h16["before"]["counts"].sum() == 64 * 64 and h16["before"]["counts"].min() > 0
    with pytest.raises(ValueError, match="bins"):
        intensity.histogram_cdf(img8, bins=1)
    with pytest.raises(ValueError, match="selects no pixel"):
        intensity.histogram_cdf(img8, brain_mask=np.zeros((64, 64), bool))


def test_constant_image_histogram_and_figure():
    img = np.full((32, 32), 0.3, np.float32)
    h = intensity.histogram_cdf(img, img, bins=10)
    assert np.count_nonzero(h["before"]["counts"]) == 1
    cdf = h["before"]["cdf"]
    assert np.all(np.isfinite(cdf)) and set(np.unique(cdf)) == {0.0, 1.0}
    fig = intensity.intensity_figure(img, img, kmeans_centers=[0.2, 0.6, 0.4], window=(0.5, 0.4), bins=10)
    names = [t.name for t in fig.data]
    assert names == ["before", "before CDF", "after", "after CDF"]
    for t in fig.data:
        assert np.all(np.isfinite(np.asarray(t.y, float)))
    xs = sorted(round(s.x0, 6) for s in fig.layout.shapes)
    assert xs == [0.3, 0.3, 0.5, 0.7]  # two cluster boundaries (0.3, 0.5), window 0.5 +- 0.2
    with pytest.raises(ValueError, match="window width"):
        intensity.intensity_figure(img, window=(0.5, 0.0))


# ------------------------------------------------------------ classical seg
@pytest.fixture(scope="module")
def phantom():
    return disk_phantom()


@pytest.mark.parametrize("name", ["watershed", "chan_vese", "geodesic"])
def test_classical_recovers_disk_with_click(phantom, name):
    img, disk = phantom
    res = cs.run_classical(name, img, points=[(90, 75)], labels=[1])
    assert res.mask.shape == img.shape and res.mask.dtype == bool
    assert _dice(res.mask, disk) >= 0.9, name
    assert res.extra["started_from"] == "clicks" and res.seconds >= 0


@pytest.mark.parametrize("name", ["watershed", "chan_vese", "geodesic"])
def test_classical_recovers_disk_without_click(phantom, name):
    img, disk = phantom
    res = cs.run_classical(name, img)
    assert _dice(res.mask, disk) >= 0.9, name
    assert res.extra["started_from"] == "brightest K-Means cluster"


def test_classical_geometry_maps_back(phantom):
    img, disk = phantom
    big = np.zeros((200, 220), np.float32)
    big[20:180, 30:206] = img  # the processed image is a crop of this "original" slice
    geom = Geometry.identity(big.shape).then_crop((20, 30, 180, 206))
    res = cs.run_classical("watershed", img, points=[(90 + 30, 75 + 20)], labels=[1], geometry=geom)
    truth = np.zeros(big.shape, bool)
    truth[20:180, 30:206] = disk
    assert res.mask.shape == big.shape and _dice(res.mask, truth) >= 0.9


def test_classical_validation(phantom):
    img, _ = phantom
    with pytest.raises(KeyError, match="watershed"):
        cs.run_classical("nope", img)
    with pytest.raises(ValueError, match=r"watershed.sigma must be in \[0.0, 5.0\]"):
        cs.run_classical("watershed", img, sigma=9)
    with pytest.raises(ValueError, match="no parameter"):
        cs.run_classical("chan_vese", img, balloon=1)
    with pytest.raises(ValueError, match="same length"):
        cs.run_classical("watershed", img, points=[(1, 2)], labels=[])
    empty = cs.run_classical("geodesic", np.full((64, 64), 0.5, np.float32))
    assert not empty.mask.any()


# ------------------------------------------------------------------ measure
def test_rano_rotated_ellipse():
    m = ellipse_mask((160, 170), (84.3, 78.6), 30, 15, 37)
    r = ms.measure(m)
    assert r["unit"] == "px"
    assert abs(r["long_diameter"] - 60) <= 2 and abs(r["short_diameter"] - 30) <= 2
    (x0, y0), (x1, y1) = r["long_axis"]["p0"], r["long_axis"]["p1"]
    ang = math.degrees(math.atan2(y1 - y0, x1 - x0)) % 180
    assert abs(ang - 37) <= 3
    (a0, b0), (a1, b1) = r["short_axis"]["p0"], r["short_axis"]["p1"]
    dot = (x1 - x0) * (a1 - a0) + (y1 - y0) * (b1 - b0)
    assert abs(dot) / (r["long_diameter"] * r["short_diameter"]) < 0.02  # perpendicular
    assert r["rano_product"] == pytest.approx(r["long_diameter"] * r["short_diameter"])
    r2 = ms.measure(m, spacing=(2, 2))
    assert r2["unit"] == "mm"
    assert r2["long_diameter"] == pytest.approx(2 * r["long_diameter"], rel=0.02)
    assert r2["short_diameter"] == pytest.approx(2 * r["short_diameter"], rel=0.05)
    assert r2["area_mm2"] == 4 * r["area_px"]
    assert r2["long_axis"]["p0"] == pytest.approx(r["long_axis"]["p0"], abs=1e-6) or \
        r2["long_axis"]["p0"] == pytest.approx(r["long_axis"]["p1"], abs=1e-6)


def test_rano_anisotropic_axis_aligned():
    m = ellipse_mask((120, 140), (70, 60), 30, 15, 0)  # long axis along x
    r = ms.measure(m, spacing=(1, 2))  # row_mm=1 (y), col_mm=2 (x): x lengths double
    assert r["long_diameter"] == pytest.approx(120, abs=2.5)
    assert r["short_diameter"] == pytest.approx(30, abs=2)
    assert r["area_mm2"] == pytest.approx(2 * m.sum())
    m2 = ellipse_mask((120, 140), (70, 60), 30, 25, 0)
    r2 = ms.measure(m2, spacing=(2, 1))  # y doubles: 50 -> 100 mm now longer than 60 mm along x
    assert r2["long_diameter"] == pytest.approx(100, abs=2.5)
    (x0, y0), (x1, y1) = r2["long_axis"]["p0"], r2["long_axis"]["p1"]
    assert abs(x1 - x0) < 3 and abs(y1 - y0) > 45
    assert r2["short_diameter"] == pytest.approx(60, abs=2.5)


def test_measure_edge_cases():
    empty = ms.measure(np.zeros((20, 30), bool), spacing=(1, 1))
    assert empty["area_px"] == 0 and empty["area_mm2"] == 0.0 and empty["bbox"] is None
    assert empty["long_axis"] is None and empty["long_diameter"] == 0.0 and empty["rano_product"] == 0.0
    one = np.zeros((20, 30), bool)
    one[5, 7] = True
    r = ms.measure(one)
    # pixel-centre convention: a single pixel has diameters 0
    assert r["area_px"] == 1 and r["bbox"] == (7, 5, 7, 5) and r["centroid"] == (7.0, 5.0)
    assert r["long_diameter"] == 0.0 and r["short_diameter"] == 0.0
    line = np.zeros((20, 30), bool)
    line[4, 3:13] = True  # 10 px run: centre-to-centre 9
    r = ms.measure(line)
    assert r["long_diameter"] == pytest.approx(9) and r["short_diameter"] == pytest.approx(0, abs=0.6)
    border = np.zeros((40, 40), bool)
    border[0:10, 0:20] = True
    r = ms.measure(border)
    assert r["touches_border"] and r["area_px"] == 200 and r["bbox"] == (0, 0, 19, 9)
    assert r["long_diameter"] == pytest.approx(math.hypot(19, 9))
    assert r["short_diameter"] > 5
    with pytest.raises(ValueError, match="spacing"):
        ms.measure(border, spacing=(0, 1))


def test_measure_side_and_draw():
    brain = np.zeros((64, 64), bool)
    brain[8:56, 8:56] = True
    m = np.zeros((64, 64), bool)
    m[20:30, 10:20] = True
    r = ms.measure(m, brain_mask=brain)
    assert r["side"] == "image left" and "radiological" in r["side_caveat"]
    assert ms.measure(m[:, ::-1], brain_mask=brain)["side"] == "image right"
    rgb = np.zeros((64, 64), np.float32)
    out = ms.draw_measurement(rgb, r)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8 and out.any()
    assert not ms.draw_measurement(rgb, ms.measure(np.zeros((64, 64), bool))).any()


# -------------------------------------------------------------- uncertainty
class FakeEngine:
    """Deterministic stand-in: a blurred threshold of the image."""

    threshold = 0.5

    def probabilities(self, img):
        return cv2.GaussianBlur((np.asarray(img) > 0.65).astype(np.float32), (0, 0), 2.0)


def test_tta_uncertainty_fake_engine():
    h = w = 96
    yy, xx = np.mgrid[:h, :w]
    disk = (xx - 47.5) ** 2 + (yy - 47.5) ** 2 <= 20 ** 2
    img = np.where(disk, 0.9, 0.3).astype(np.float32)
    out = un.tta_uncertainty(FakeEngine(), img, n=8)
    u, p = out["uncertainty"], out["mean_prob"]
    assert u.shape == (h, w) and u.dtype == np.float32 and p.dtype == np.float32
    assert u.min() >= 0 and u.max() <= 0.5 and 0 <= p.min() and p.max() <= 1
    inner = (xx - 47.5) ** 2 + (yy - 47.5) ** 2 <= 12 ** 2
    assert u[inner].max() < 0.02 and p[inner].min() > 0.95
    ring = np.abs(np.hypot(xx - 47.5, yy - 47.5) - 20) < 1.5
    assert u[ring].mean() > 5 * u[inner].mean() + 0.01
    assert out["augmentations"][:2] == ["identity", "hflip"] and out["n"] == 8
    assert 0.0 <= out["high_fraction"] <= 1.0 and out["tumour_px"] > 0
    # flip and whole-pixel shifts invert exactly: an off-centre disk is recovered in place
    off = np.where((xx - 30) ** 2 + (yy - 60) ** 2 <= 15 ** 2, 0.9, 0.3).astype(np.float32)
    o2 = un.tta_uncertainty(FakeEngine(), off, n=6)
    ref = FakeEngine().probabilities(off)
    np.testing.assert_allclose(o2["mean_prob"], ref, atol=1e-4)
    assert o2["uncertainty"].max() < 1e-3
    with pytest.raises(ValueError, match="n must be"):
        un.tta_uncertainty(FakeEngine(), img, n=1)
    with pytest.raises(ValueError, match="std_threshold"):
        un.tta_uncertainty(FakeEngine(), img, std_threshold=0.9)


def test_tta_uncertainty_real_unet_shapes(tmp_path):
    from bt_demo.models.unet import UNetEngine
    from tests.tiny_models import make_seg

    eng = UNetEngine.load(str(make_seg(tmp_path / "unet")))
    assert not isinstance(eng, str), eng
    img, _ = disk_phantom((72, 88))
    out = un.tta_uncertainty(eng, img, n=8, seed=3)
    assert out["uncertainty"].shape == (72, 88) and out["mean_prob"].shape == (72, 88)
    assert 0 <= out["uncertainty"].min() and out["uncertainty"].max() <= 0.5
    assert out["threshold"] == pytest.approx(eng.threshold)


@pytest.mark.parametrize("name", ["watershed", "chan_vese", "geodesic"])
def test_classical_on_flair_phantom_with_click(name):
    """A textured FLAIR-like lesion with a bright scalp around the brain: one click at the lesion suffices."""
    from bt_demo.sim.phantom import flair_phantom

    img, lesion = flair_phantom((192, 192), seed=1)
    ys, xs = np.nonzero(lesion)
    res = cs.run_classical(name, img, points=[(xs.mean(), ys.mean())], labels=[1])
    assert _dice(res.mask, lesion) >= 0.85, name


# ------------------------------------------------- consensus, summaries, report
def test_vote_map_and_consensus_for_many_masks():
    from bt_demo import render
    from bt_demo.studies import metrics

    masks = {}
    for i in range(5):
        m = np.zeros((20, 30), bool)
        m[5:15, 2 + i:12 + i] = True
        masks[f"m{i}"] = m
    votes = metrics.vote_map(masks)
    assert votes.dtype == np.uint8 and votes.max() == 5 and votes[10, 8] == 5 and votes[10, 2] == 1
    np.testing.assert_array_equal(votes, sum(m.astype(np.uint8) for m in masks.values()))
    summ = metrics.consensus_summary(masks)
    union = int(np.any(list(masks.values()), axis=0).sum())
    assert summ["n_masks"] == 5 and summ["union_px"] == union
    assert summ["all_agree_tumour_px"] == 10 * 6 and summ["agreement_fraction"] == pytest.approx(60 / union, abs=1e-4)
    assert sum(summ["votes_px"].values()) == union and summ["majority_px"] == int((votes >= 3).sum())
    img, legend = render.consensus_rgb(np.zeros((20, 30)), votes, 5)
    assert img.shape == (20, 30, 3) and legend[0][0] == "all 5 masks" and legend[-1][0] == "1 of 5 masks"
    assert not img[0, 0].any() and img[10, 8].any()
    with pytest.raises(ValueError, match="1 to 255"):
        metrics.vote_map([])
    with pytest.raises(ValueError, match="votes must be in"):
        render.consensus_rgb(np.zeros((20, 30)), votes, 4)


def test_uncertainty_summarise_matches_tta():
    out = un.tta_uncertainty(FakeEngine(), disk_phantom((64, 64), centre=(32, 32), r=12)[0], n=6)
    n_t, high = un.summarise(out["mean_prob"], out["uncertainty"], out["threshold"], out["std_threshold"])
    assert (n_t, high) == (out["tumour_px"], out["high_fraction"])
    n_hi, _ = un.summarise(out["mean_prob"], out["uncertainty"], 0.9)
    assert n_hi <= n_t
    assert un.summarise(out["mean_prob"], out["uncertainty"], 1.01) == (0, 0.0)


def test_measurement_record_in_report():
    from bt_demo.io import export

    m = ms.measure(ellipse_mask((80, 90), (40, 40), 20, 10, 30), spacing=(0.5, 0.5))
    rec = export.measurement_record(m, "prompted")
    assert rec["unit"] == "mm" and rec["long_diameter"] == pytest.approx(m["long_diameter"], abs=0.01)
    assert rec["perpendicular_diameter"] == pytest.approx(m["short_diameter"], abs=0.01)
    assert rec["rano_product"] == pytest.approx(m["rano_product"], abs=0.01) and "contours" not in rec
    rep = export.build_report(engines={}, preprocessing=[], prompts={}, metrics={}, areas=[], classifier=None,
                              spacing=(0.5, 0.5), shape=(80, 90), app_version="t", measurement=rec)
    assert rep["measurement"]["side_caveat"].startswith("image left/right")
    empty = export.measurement_record(ms.measure(np.zeros((8, 8), bool)), "U-Net")
    assert empty["area_px"] == 0 and empty["long_axis"] is None and empty["unit"] == "px"
    with pytest.raises(ValueError, match="measure"):
        export.measurement_record({"area_px": 3})


# ------------------------------------------------------------ real data (LGG)
LGG = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lgg"


@pytest.mark.realdata
def test_classical_on_lgg_with_one_click():
    """One simulated click (the tumour's deepest point) on real LGG FLAIR tumour slices.

    Fixed, deterministic set: every 10th patient of the sorted list (9 patients), up to 5 tumour
    slices each (>= 100 px of tumour, evenly spaced through the tumour), 45 slices. Each slice goes
    through the app's default preprocessing; the classical segmenters get the click in slice pixels.
    Baseline: a disk of the median tumour radius of these slices at the click.
    Measured (2 busy CPU cores, 2025-11): watershed 0.73, Chan–Vese 0.71, geodesic 0.62, disk 0.56.
    """
    import csv

    from PIL import Image

    from bt_demo.image.preprocess import default_pipeline, run_pipeline
    from bt_demo.sim.clicksim import first_click

    if not (LGG / "slices.csv").is_file():
        pytest.skip(f"real data not found at {LGG} (it is beside the repository in CI)")
    rows = list(csv.DictReader(open(LGG / "slices.csv", newline="")))
    patients = sorted({r["patient"] for r in rows})[::10]
    chosen = []
    for pat in patients:
        tum = sorted((r for r in rows if r["patient"] == pat and int(r["mask_pixels"]) >= 100),
                     key=lambda r: int(r["slice"]))
        if tum:
            idx = np.unique(np.linspace(0, len(tum) - 1, min(5, len(tum))).round().astype(int))
            chosen += [tum[i] for i in idx]
    assert len(chosen) >= 30, len(chosen)
    images = [np.asarray(Image.open(LGG / r["image"]).convert("L"), np.float32) / 255.0 for r in chosen]
    truths = [np.asarray(Image.open(LGG / r["mask"]).convert("L")) > 127 for r in chosen]
    radius = float(np.median([np.sqrt(t.sum() / np.pi) for t in truths]))
    scores = {name: [] for name in (*cs.CLASSICAL, "disk baseline")}
    for img, truth in zip(images, truths, strict=True):
        x, y = first_click(truth)
        yy, xx = np.mgrid[:truth.shape[0], :truth.shape[1]]
        scores["disk baseline"].append(_dice((xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2, truth))
        p = run_pipeline(img, default_pipeline())
        for name in cs.CLASSICAL:
            res = cs.run_classical(name, p.image, [(x, y)], [1], geometry=p.geometry)
            scores[name].append(_dice(res.mask, truth))
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    line = ", ".join(f"{k} {v:.3f}" for k, v in mean.items())
    print(f"\nLGG, {len(chosen)} tumour slices of {len(patients)} patients, one click, mean Dice: {line}")
    card = __import__("pathlib").Path(__file__).resolve().parents[1] / "weights" / "clicks" / "card.json"
    if card.is_file():
        import json

        d1 = json.loads(card.read_text()).get("metrics", {}).get("dice_after_1_clicks")
        if d1 is not None:
            print(f"(the built-in click model's card, on its own test patients: Dice after 1 click {d1:.3f})")
    floors = {"watershed": 0.65, "chan_vese": 0.65, "geodesic": 0.55}
    for name, floor in floors.items():
        assert mean[name] >= floor, f"{name}: {line}"
        assert mean[name] >= mean["disk baseline"] + 0.04, f"{name} is no better than a disk: {line}"


def test_measure_of_a_long_thin_mask_follows_the_mask_not_the_image_size():
    """A 16 px strip along a 20000 px image: the chord search covers the strip's width, not the image's diagonal
    (it used to grow with the square of the length: a 100000 x 16 PNG made one click take 80 s)."""
    strip = np.zeros((16, 20000), bool)
    strip[3:13, 50:19950] = True
    r = ms.measure(strip, spacing=(0.5, 0.5))
    assert r["long_diameter"] == pytest.approx(0.5 * math.hypot(19899, 9), rel=1e-3)
    assert r["short_diameter"] == pytest.approx(0.5 * 9, abs=0.6)
    # the same answers as a compact mask gives (the chord code path is shared)
    small = np.zeros((40, 60), bool)
    small[10:20, 5:55] = True
    assert ms.measure(small)["short_diameter"] == pytest.approx(9, abs=0.6)
