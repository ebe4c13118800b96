"""K-Means: hand-checked small cases, the K sweep, and a real-data check."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from bt_demo.clustering import colorize_labels, elbow, k_sweep, kmeans_segment, sweep_figure, tumour_candidate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def three_levels(noise=0.0, seed=0):
    img = np.zeros((60, 90), np.float32)
    img[:, :30], img[:, 30:60], img[:, 60:] = 0.2, 0.5, 0.9
    if noise:
        img = img + np.random.default_rng(seed).normal(0, noise, img.shape).astype(np.float32)
    return img


def test_three_levels_recovered_exactly_with_ordered_labels_and_hand_wcss():
    img = three_levels()
    r = kmeans_segment(img, 3, mask=np.ones(img.shape, bool))
    assert np.allclose(r.centers, [0.2, 0.5, 0.9], atol=1e-6)
    assert (r.labels[:, :30] == 1).all() and (r.labels[:, 30:60] == 2).all() and (r.labels[:, 60:] == 3).all()
    assert r.inertia == pytest.approx(0.0, abs=1e-8)
    noisy = three_levels(0.02)
    r = kmeans_segment(noisy, 3, mask=np.ones(noisy.shape, bool))
    hand = sum(((noisy[r.labels == j] - noisy[r.labels == j].mean()) ** 2).sum() for j in (1, 2, 3))
    assert r.inertia == pytest.approx(hand, rel=1e-5)


def test_background_excluded_and_label_order_stable_across_seeds():
    img = three_levels(0.01)
    mask = np.ones(img.shape, bool)
    mask[:5] = False
    a = kmeans_segment(img, 3, mask=mask, seed=0)
    b = kmeans_segment(img, 3, mask=mask, seed=7)
    assert (a.labels[:5] == 0).all()
    assert np.array_equal(a.labels, b.labels)
    rgb = colorize_labels(a.labels, 3)
    assert rgb.shape == img.shape + (3,) and (rgb[:5] == 0).all()
    assert len({tuple(rgb[10, c]) for c in (5, 45, 80)}) == 3


def test_sweep_metrics_against_hand_and_sklearn():
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    img = three_levels(0.02, seed=1)
    mask = np.ones(img.shape, bool)
    s = k_sweep(img, ks=range(2, 7), mask=mask, silhouette_sample=10 ** 6)
    x = img[mask].astype(np.float64)
    tss = ((x - x.mean()) ** 2).sum()
    for w, b in zip(s.wcss, s.bcss):
        assert w + b == pytest.approx(tss, rel=1e-9)
    i3 = s.ks.index(3)
    assert s.silhouette[i3] > 0.9
    assert s.suggested_k == 3 and s.best_silhouette_k == 3
    r = kmeans_segment(img, 3, mask=mask)
    lab = r.labels[mask]
    assert s.calinski_harabasz[i3] == pytest.approx(calinski_harabasz_score(x[:, None], lab), rel=1e-6)
    assert s.davies_bouldin[i3] == pytest.approx(davies_bouldin_score(x[:, None], lab), rel=1e-6)
    fig = sweep_figure(s)
    assert len(fig.data) == 5


def test_elbow_on_a_known_curve():
    assert elbow([1, 2, 3, 4, 5, 6], [100, 60, 20, 17, 15, 14]) == 3
    assert elbow([2, 3, 4], [5.0, 5.0, 5.0]) == 2


def test_k_out_of_range_and_constant_image():
    with pytest.raises(ValueError, match=r"k must be in \[2, 12\]"):
        kmeans_segment(three_levels(), 13)
    with pytest.warns(RuntimeWarning):
        r = kmeans_segment(np.full((30, 30), 0.4, np.float32), 4)
    assert r.k == 1 and not tumour_candidate(r).any() or tumour_candidate(r).sum() <= 900


@pytest.mark.realdata
def test_brightest_cluster_overlaps_lgg_expert_masks_better_than_chance():
    if not (DATA / "lgg" / "slices.csv").exists():
        pytest.skip(f"real data not found at {DATA}")
    from PIL import Image

    from bt_demo.preprocess import run_pipeline

    rows = [r for r in csv.DictReader(open(DATA / "lgg" / "slices.csv")) if r["has_tumor"] == "1" and int(r["mask_pixels"]) >= 200]
    by_patient = {}
    for r in rows:  # the largest tumour slice of each patient, deterministic
        if r["patient"] not in by_patient or int(r["mask_pixels"]) > int(by_patient[r["patient"]]["mask_pixels"]):
            by_patient[r["patient"]] = r
    chosen = [by_patient[p] for p in sorted(by_patient)][:40]
    dice, chance = [], []
    for r in chosen:
        img = np.asarray(Image.open(DATA / "lgg" / r["image"]), np.float32) / 255.0
        gt = np.asarray(Image.open(DATA / "lgg" / r["mask"])) > 127
        proc = run_pipeline(img)
        cand = tumour_candidate(kmeans_segment(proc.image, 3))
        dice.append(2 * (cand & gt).sum() / max(1, cand.sum() + gt.sum()))
        flipped = np.fliplr(cand)  # same candidate, other hemisphere
        chance.append(2 * (flipped & gt).sum() / max(1, flipped.sum() + gt.sum()))
    m, c = float(np.mean(dice)), float(np.mean(chance))
    print(f"K-Means brightest cluster vs expert mask on {len(chosen)} LGG slices: mean Dice {m:.3f} (mirrored: {c:.3f})")
    assert m > 0.4 and m > 3 * c
