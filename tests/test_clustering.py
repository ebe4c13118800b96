"""K-Means: hand-checked small cases, the K sweep against scikit-learn, colours, the
tumour candidate, and a real-data check on LGG FLAIR slices (skips without the data)."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

from bt_demo.errors import InputError
from bt_demo.image.preprocess import estimate_brain_mask, run_pipeline
from bt_demo.studies import clustering as cl

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LEVELS = (0.2, 0.5, 0.8)


def three_levels(noise=0.0, seed=0, shape=(40, 60)):
    """Three vertical bands of known intensity (+ optional Gaussian noise), float32."""
    img = np.zeros(shape, np.float32)
    w = shape[1] // 3
    img[:, :w], img[:, w:2 * w], img[:, 2 * w:] = LEVELS
    if noise:
        img = np.clip(img + np.random.default_rng(seed).normal(0, noise, shape), 0, 1).astype(np.float32)
    return img


def bands(shape=(40, 60)):
    w = shape[1] // 3
    lab = np.zeros(shape, np.int16)
    lab[:, :w], lab[:, w:2 * w], lab[:, 2 * w:] = 1, 2, 3
    return lab


ALL = np.ones((40, 60), bool)


# ---------------------------------------------------------------------------
# kmeans_segment
# ---------------------------------------------------------------------------
def test_three_levels_recovered_exactly_with_ordered_labels():
    r = cl.kmeans_segment(three_levels(), k=3, mask=ALL)
    assert r.k == 3 and r.centers.dtype == np.float32 and r.labels.dtype == np.int16
    assert np.allclose(r.centers, LEVELS, atol=1e-6)
    assert np.array_equal(r.labels, bands())
    assert r.inertia == pytest.approx(0.0, abs=1e-10) and r.mask.all()


def test_noisy_levels_wcss_equals_the_hand_computed_sum_of_squares():
    img = three_levels(noise=0.02)
    r = cl.kmeans_segment(img, k=3, mask=ALL)
    truth = bands()
    assert np.array_equal(r.labels, truth)  # levels 0.3 apart, noise 0.02: no pixel crosses
    x = img.astype(np.float64)
    means = np.array([x[truth == j].mean() for j in (1, 2, 3)])
    assert np.allclose(r.centers, means, atol=1e-6)
    wcss = sum(((x[truth == j] - means[j - 1]) ** 2).sum() for j in (1, 2, 3))
    assert r.inertia == pytest.approx(wcss, rel=1e-6)


def test_label_order_is_stable_across_seeds_and_the_mask_is_respected():
    img = three_levels(noise=0.03, seed=1)
    img[:, 25:28] = 0.95  # a fourth, brightest level
    mask = ALL.copy()
    mask[:5] = False
    results = [cl.kmeans_segment(img, k=4, mask=mask, seed=s) for s in range(5)]
    for r in results:
        assert np.array_equal(r.labels, results[0].labels)
        assert np.all(np.diff(r.centers) > 0)
        assert (r.labels[:5] == 0).all() and (r.labels[5:] > 0).all()
    assert (results[0].labels[5:, 25:28] == 4).all(), "the brightest band is the highest label"


def test_subsampled_fit_matches_the_full_fit_on_many_distinct_values():
    img = three_levels(noise=0.02, shape=(90, 120))  # 10 800 distinct values
    full = cl.kmeans_segment(img, 3, mask=np.ones(img.shape, bool))
    sub = cl.kmeans_segment(img, 3, mask=np.ones(img.shape, bool), max_fit_samples=500)
    assert np.allclose(full.centers, sub.centers, atol=5e-3)
    assert (full.labels == sub.labels).mean() > 0.999


def test_default_mask_is_the_estimated_brain():
    yy, xx = np.mgrid[:96, :96]
    img = np.where((xx - 48) ** 2 + (yy - 48) ** 2 < 38 ** 2, 0.4, 0.02).astype(np.float32)
    img[(xx - 55) ** 2 + (yy - 40) ** 2 < 8 ** 2] = 0.9
    img += np.random.default_rng(0).normal(0, 0.01, img.shape).astype(np.float32)
    r = cl.kmeans_segment(img, 3)
    assert np.array_equal(r.mask, estimate_brain_mask(img))
    assert (r.labels[~r.mask] == 0).all() and (r.labels[r.mask] > 0).all()


def test_k_checks_and_fewer_levels_than_k():
    img = three_levels()
    for bad in (1, 13, 3.5, "four", True):
        with pytest.raises(ValueError, match=r"k must be a whole number in \[2, 12\]"):
            cl.kmeans_segment(img, k=bad, mask=ALL)
    with pytest.warns(RuntimeWarning, match="3 distinct intensities.*k=3 instead of 5"):
        r = cl.kmeans_segment(img, k=5, mask=ALL)
    assert r.k == 3 and np.allclose(r.centers, LEVELS)
    with pytest.raises(ValueError, match="mask shape"):
        cl.kmeans_segment(img, 3, mask=np.ones((10, 10), bool))
    with pytest.raises(InputError, match="no pixel"):
        cl.kmeans_segment(img, 3, mask=np.zeros(img.shape, bool))


def test_constant_image_warns_and_gives_one_cluster():
    img = np.full((32, 32), 0.4, np.float32)
    with pytest.warns(RuntimeWarning):
        r = cl.kmeans_segment(img, k=4)
    assert r.k == 1 and np.allclose(r.centers, [0.4]) and r.inertia == 0.0
    assert (r.labels == 1).all() and np.isfinite(r.centers).all()
    assert not cl.tumour_candidate(r).any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(InputError, match="nothing to cluster"):
            cl.k_sweep(img)


# ---------------------------------------------------------------------------
# colours and the tumour candidate
# ---------------------------------------------------------------------------
def test_colorize_background_black_and_brightness_ordered():
    lab = np.tile(np.arange(5, dtype=np.int16), (3, 1))
    rgb = cl.colorize_labels(lab, 4)
    assert rgb.dtype == np.uint8 and rgb.shape == (3, 5, 3)
    assert (rgb[:, 0] == 0).all(), "background is black"
    colours = rgb[0, 1:].astype(float)
    assert len({tuple(c) for c in colours}) == 4
    luma = colours @ [0.2126, 0.7152, 0.0722]
    assert np.all(np.diff(luma) > 0), "brighter clusters get brighter colours"
    assert luma[0] > 40, "the darkest cluster stays visible against the black background"
    # the brightest cluster keeps its colour whatever k is
    assert np.array_equal(cl.colorize_labels(np.array([[6]]), 6)[0, 0], rgb[0, 4])
    with pytest.raises(ValueError, match="0..4"):
        cl.colorize_labels(lab + 1, 4)
    with pytest.raises(ValueError, match="integer"):
        cl.colorize_labels(lab.astype(float), 4)


def test_tumour_candidate_is_the_brightest_cluster_without_specks():
    img = np.full((64, 64), 0.3, np.float32)
    img[:, 32:] = 0.5
    img[20:30, 10:20] = 0.9      # a 100-px bright blob
    img[50:52, 50:52] = 0.9      # a 4-px speck
    r = cl.kmeans_segment(img, 3, mask=np.ones(img.shape, bool))
    cand = cl.tumour_candidate(r, min_area=20)
    expected = np.zeros(img.shape, bool)
    expected[20:30, 10:20] = True
    assert np.array_equal(cand, expected)
    assert cl.tumour_candidate(r, min_area=0).sum() == 104
    assert not cl.tumour_candidate(r, min_area=101).any()
    with pytest.raises(ValueError, match="min_area"):
        cl.tumour_candidate(r, min_area=-1)


# ---------------------------------------------------------------------------
# the K sweep
# ---------------------------------------------------------------------------
def test_sweep_on_three_noisy_levels():
    img = three_levels(noise=0.01, seed=2)
    sw = cl.k_sweep(img, ks=range(2, 9), mask=ALL)
    assert sw.ks == list(range(2, 9))
    assert sw.suggested_k == 3 and sw.elbow_k == 3 and sw.best_silhouette_k == 3
    assert "elbow" in sw.suggestion_method
    x = img[ALL].astype(np.float64)
    tss = ((x - x.mean()) ** 2).sum()
    for k, w, b in zip(sw.ks, sw.wcss, sw.bcss, strict=True):
        assert w + b == pytest.approx(tss, rel=1e-9)
        r = cl.kmeans_segment(img, k, mask=ALL)
        assert w == pytest.approx(r.inertia, rel=1e-9)
    i3 = sw.ks.index(3)
    assert sw.silhouette[i3] > 0.9, "well separated levels have a silhouette near 1"
    # BCSS by hand for the true partition
    truth = bands()[ALL]
    bcss = sum((truth == j).sum() * (x[truth == j].mean() - x.mean()) ** 2 for j in (1, 2, 3))
    assert sw.bcss[i3] == pytest.approx(bcss, rel=1e-6)
    assert np.all(np.diff(sw.wcss) <= 1e-9), "WCSS never grows with K"


def test_sweep_scores_equal_sklearn_computed_directly():
    img = three_levels(noise=0.05, seed=3)
    sw = cl.k_sweep(img, ks=[2, 3, 4, 5], mask=ALL, silhouette_sample=5000)  # 2400 px: no subsampling
    x = img[ALL][:, None].astype(np.float64)
    for i, k in enumerate(sw.ks):
        lab = cl.kmeans_segment(img, k, mask=ALL).labels[ALL]
        assert sw.silhouette[i] == pytest.approx(silhouette_score(x, lab), rel=1e-6)  # float32 distances
        assert sw.calinski_harabasz[i] == pytest.approx(calinski_harabasz_score(x, lab), rel=1e-9)
        assert sw.davies_bouldin[i] == pytest.approx(davies_bouldin_score(x, lab), rel=1e-9)


def test_sweep_checks_and_skips_impossible_k():
    img = three_levels()  # exactly 3 distinct values
    with pytest.warns(RuntimeWarning, match="K above 3 skipped"):
        sw = cl.k_sweep(img, ks=[5, 2, 3, 3, 4], mask=ALL)
    assert sw.ks == [2, 3]
    with pytest.raises(ValueError, match=r"\[2, 12\]"):
        cl.k_sweep(img, ks=[1, 2], mask=ALL)
    assert cl.elbow([2, 3, 4, 5, 6], [100, 20, 15, 12, 10]) == 3
    assert cl.elbow([2, 3], [5, 1]) == 2


def test_sweep_figure_marks_the_suggested_k():
    sw = cl.k_sweep(three_levels(noise=0.01), ks=range(2, 7), mask=ALL)
    fig = cl.sweep_figure(sw)
    names = [t.name for t in fig.data]
    assert names == ["WCSS", "BCSS", "silhouette", "Calinski-Harabasz", "Davies-Bouldin"]
    assert list(fig.data[0].x) == sw.ks and list(fig.data[0].y) == pytest.approx(sw.wcss)
    vlines = [s for s in fig.layout.shapes if s.x0 == s.x1]
    assert len(vlines) == 4 and all(s.x0 == sw.suggested_k for s in vlines)
    assert f"K = {sw.suggested_k}" in fig.layout.title.text


# ---------------------------------------------------------------------------
# real data: the brightest cluster finds FLAIR lesions far better than chance
# ---------------------------------------------------------------------------
def _lgg_cases(n=40):
    """One tumour slice (mask >= 200 px) from each of n patients spread evenly over the
    sorted patient list; per patient the middle such slice by slice number. Deterministic."""
    rows = [r for r in csv.DictReader(open(DATA / "lgg" / "slices.csv"))
            if r["has_tumor"] == "1" and int(r["mask_pixels"]) >= 200]
    by_patient: dict[str, list[dict]] = {}
    for r in rows:
        by_patient.setdefault(r["patient"], []).append(r)
    patients = sorted(by_patient)
    idx = np.unique(np.linspace(0, len(patients) - 1, min(n, len(patients))).round().astype(int))
    cases = []
    for i in idx:
        rs = sorted(by_patient[patients[i]], key=lambda r: int(r["slice"]))
        cases.append(rs[len(rs) // 2])
    return cases


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


@pytest.mark.realdata
def test_brightest_cluster_overlaps_lgg_expert_masks_far_better_than_chance():
    if not (DATA / "lgg" / "slices.csv").exists():
        pytest.skip(f"LGG data not found at {DATA / 'lgg'} (see shared/data/README.md); real-data check skipped")
    cases = _lgg_cases(40)
    assert len(cases) >= 30 and len({c["patient"] for c in cases}) == len(cases)
    cands, gts = [], []
    for c in cases:
        img = cv2.imread(str(DATA / "lgg" / c["image"]), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
        gt = cv2.imread(str(DATA / "lgg" / c["mask"]), cv2.IMREAD_GRAYSCALE) > 127
        proc = run_pipeline(img)  # the default pipeline: percentile normalisation
        assert proc.geometry.is_identity
        cands.append(cl.tumour_candidate(cl.kmeans_segment(proc.image, k=4)))
        gts.append(gt)
    dice = np.array([_dice(c, g) for c, g in zip(cands, gts, strict=True)])
    mirrored = np.array([_dice(np.fliplr(c), g) for c, g in zip(cands, gts, strict=True)])
    other = np.array([_dice(c, gts[(i + 1) % len(gts)]) for i, c in enumerate(cands)])
    chance = max(mirrored.mean(), other.mean())
    print(f"\nK-Means (k=4, brightest cluster) vs expert FLAIR masks, {len(cases)} LGG patients: "
          f"mean Dice {dice.mean():.3f} (median {np.median(dice):.3f}); chance: mirrored candidate "
          f"{mirrored.mean():.3f}, another patient's mask {other.mean():.3f}")
    assert dice.mean() > 0.2 and dice.mean() > 2 * chance
