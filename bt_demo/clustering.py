"""K-Means segmentation of brain-pixel intensities, as in the seed study, and the K sweep.

Clusters are fitted on the intensities of brain pixels (background excluded),
labels are ordered by ascending mean intensity so colours stay stable, and the
brightest cluster is the tumour candidate (FLAIR lesions are hyperintense).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

K_RANGE = (2, 12)


@dataclass(frozen=True)
class KMeansResult:
    labels: np.ndarray     # int16 (H, W): 0 outside the mask, 1..k ordered by ascending centre
    centers: np.ndarray    # float32 (k,), ascending
    k: int
    mask: np.ndarray       # bool (H, W): pixels that were clustered
    inertia: float         # WCSS over all clustered pixels


def _check_k(k: int) -> int:
    k = int(k)
    if not K_RANGE[0] <= k <= K_RANGE[1]:
        raise ValueError(f"k must be in [{K_RANGE[0]}, {K_RANGE[1]}], got {k}")
    return k


def _pixels(image, mask):
    from bt_demo.preprocess import as_unit, estimate_brain_mask

    img = as_unit(image)
    if mask is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mask = estimate_brain_mask(img)
    mask = np.asarray(mask, bool)
    if mask.shape != img.shape:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {img.shape}")
    if not mask.any():
        mask = np.ones(img.shape, bool)
    return img, mask, img[mask].astype(np.float64)


def _fit_1d(x: np.ndarray, k: int, seed: int, max_fit_samples: int, n_init: int = 2) -> np.ndarray:
    """Sorted cluster centres of 1-D data (scikit-learn KMeans on a subsample)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    fit = x if len(x) <= max_fit_samples else rng.choice(x, max_fit_samples, replace=False)
    # 1-D data of ~20k points: one thread is fastest, and OpenMP's spinning
    # threads are very slow on a shared 2-core machine.
    with threadpool_limits(1):
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed, max_iter=100).fit(fit[:, None])
    return np.sort(km.cluster_centers_[:, 0])


def _assign(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest sorted centre for each value (1-D: midpoints between centres)."""
    mids = (centers[1:] + centers[:-1]) / 2
    return np.searchsorted(mids, x)


def kmeans_segment(image: np.ndarray, k: int = 3, mask: np.ndarray | None = None, seed: int = 0,
                   max_fit_samples: int = 20000) -> KMeansResult:
    """K-Means on the intensities of ``mask`` pixels (default: the estimated brain).

    image: float32 (H, W) in [0, 1]. k in 2..12; with fewer distinct values than
    k, k is reduced (with a warning).
    """
    k = _check_k(k)
    img, mask, x = _pixels(image, mask)
    distinct = np.unique(np.round(x, 6))
    if len(distinct) < k:
        warnings.warn(f"only {len(distinct)} distinct intensities; using k={max(1, len(distinct))} instead of {k}",
                      RuntimeWarning, stacklevel=2)
        k = max(1, len(distinct))
        centers = distinct.astype(np.float64)
    else:
        centers = _fit_1d(x, k, seed, max_fit_samples)
    idx = _assign(x, centers)
    # recompute centres as the means of the final assignment (exact WCSS)
    centers = np.array([x[idx == j].mean() if np.any(idx == j) else centers[j] for j in range(len(centers))])
    labels = np.zeros(img.shape, np.int16)
    labels[mask] = idx + 1
    inertia = float(((x - centers[idx]) ** 2).sum())
    return KMeansResult(labels, centers.astype(np.float32), int(len(centers)), mask, inertia)


def colorize_labels(labels: np.ndarray, k: int) -> np.ndarray:
    """uint8 (H, W, 3): background black, clusters coloured along viridis (dark -> bright)."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    pal = np.zeros((k + 1, 3), np.uint8)
    for j in range(1, k + 1):
        pal[j] = np.round(np.array(cmap((j - 1) / max(1, k - 1))[:3]) * 255)
    lab = np.clip(np.asarray(labels), 0, k)
    return pal[lab]


def tumour_candidate(result: KMeansResult, min_area: int = 20) -> np.ndarray:
    """bool (H, W): the largest connected component of the brightest cluster
    (the seed study's localisation), if it has at least ``min_area`` px; may be empty."""
    import cv2

    m = result.labels == result.k
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(m.shape, bool)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[best, cv2.CC_STAT_AREA] < min_area:
        return np.zeros(m.shape, bool)
    return lab == best


@dataclass(frozen=True)
class KSweep:
    ks: list[int]
    wcss: list[float]
    bcss: list[float]
    silhouette: list[float]
    calinski_harabasz: list[float]
    davies_bouldin: list[float]
    suggested_k: int
    suggestion_method: str
    best_silhouette_k: int
    elbow_k: int


def elbow(ks: list[int], wcss: list[float]) -> int:
    """The "kneedle" elbow: the K farthest below the chord joining the first and last
    points of the min-max normalised WCSS curve."""
    x = np.asarray(ks, float)
    y = np.asarray(wcss, float)
    if len(x) < 3 or y.max() - y.min() < 1e-12:
        return int(x[0])
    xn = (x - x[0]) / (x[-1] - x[0])
    yn = (y - y.min()) / (y.max() - y.min())
    chord = yn[0] + (yn[-1] - yn[0]) * xn
    return int(x[int(np.argmax(chord - yn))])


def k_sweep(image: np.ndarray, ks=range(2, 13), mask: np.ndarray | None = None, seed: int = 0,
            silhouette_sample: int = 2000, max_fit_samples: int = 10000) -> KSweep:
    """Per K: WCSS (inertia), BCSS (= TSS - WCSS), silhouette (on a random sample),
    Calinski-Harabasz and Davies-Bouldin (scikit-learn, on the same sample).

    Suggested K: the WCSS elbow (kneedle); the best-silhouette K is reported beside it.
    """
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score
    from threadpoolctl import threadpool_limits

    ks = [_check_k(k) for k in ks]
    img, mask, x = _pixels(image, mask)
    rng = np.random.default_rng(seed)
    sample = x if len(x) <= silhouette_sample else rng.choice(x, silhouette_sample, replace=False)
    tss = float(((x - x.mean()) ** 2).sum())
    out = {"wcss": [], "bcss": [], "silhouette": [], "calinski_harabasz": [], "davies_bouldin": []}
    for k in ks:
        centers = _fit_1d(x, k, seed, max_fit_samples, n_init=1)
        idx = _assign(x, centers)
        centers = np.array([x[idx == j].mean() if np.any(idx == j) else centers[j] for j in range(k)])
        wcss = float(((x - centers[idx]) ** 2).sum())
        s_idx = _assign(sample, centers)
        n_lab = len(np.unique(s_idx))
        ok = 1 < n_lab < len(sample)
        out["wcss"].append(wcss)
        out["bcss"].append(tss - wcss)
        with threadpool_limits(1):
            sil = float(silhouette_score(sample[:, None], s_idx)) if ok else float("nan")
        out["silhouette"].append(sil)
        out["calinski_harabasz"].append(float(calinski_harabasz_score(sample[:, None], s_idx)) if ok else float("nan"))
        out["davies_bouldin"].append(float(davies_bouldin_score(sample[:, None], s_idx)) if ok else float("nan"))
    sil = np.asarray(out["silhouette"])
    best_sil = int(ks[int(np.nanargmax(sil))]) if np.isfinite(sil).any() else ks[0]
    ek = elbow(ks, out["wcss"])
    return KSweep(list(ks), **out, suggested_k=ek, suggestion_method="elbow of WCSS (kneedle)",
                  best_silhouette_k=best_sil, elbow_k=ek)


def sweep_figure(sweep: KSweep):
    """plotly Figure: WCSS/BCSS, silhouette, Calinski-Harabasz, Davies-Bouldin vs K, suggested K marked."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    fig = make_subplots(rows=2, cols=2, subplot_titles=("WCSS (inertia) and BCSS", "silhouette (higher is better)",
                                                        "Calinski-Harabasz (higher is better)",
                                                        "Davies-Bouldin (lower is better)"))
    ks = sweep.ks
    fig.add_trace(go.Scatter(x=ks, y=sweep.wcss, name="WCSS", mode="lines+markers"), 1, 1)
    fig.add_trace(go.Scatter(x=ks, y=sweep.bcss, name="BCSS", mode="lines+markers"), 1, 1)
    fig.add_trace(go.Scatter(x=ks, y=sweep.silhouette, name="silhouette", mode="lines+markers"), 1, 2)
    fig.add_trace(go.Scatter(x=ks, y=sweep.calinski_harabasz, name="Calinski-Harabasz", mode="lines+markers"), 2, 1)
    fig.add_trace(go.Scatter(x=ks, y=sweep.davies_bouldin, name="Davies-Bouldin", mode="lines+markers"), 2, 2)
    for r in (1, 2):
        for c in (1, 2):
            fig.add_vline(x=sweep.suggested_k, line_dash="dash", line_color="gray", row=r, col=c)
    fig.update_layout(height=520, margin=dict(l=40, r=20, t=60, b=40), legend=dict(orientation="h"),
                      title=f"suggested K = {sweep.suggested_k} ({sweep.suggestion_method}); "
                            f"best silhouette at K = {sweep.best_silhouette_k}")
    fig.update_xaxes(title_text="K", dtick=1)
    return fig
