"""K-Means segmentation of brain-pixel intensities (as in the seed study) and the K sweep.

Clusters are fitted with scikit-learn's ``KMeans`` on the 1-D intensities of
the masked (brain) pixels; labels are ordered by ascending centre so colours
are stable (label 0 = outside the mask, 1 = darkest cluster, k = brightest),
and the brightest cluster is the tumour candidate (FLAIR lesions are bright).

Image convention: float32 ``(H, W)`` in ``[0, 1]`` (other dtypes/ranges are
converted by :func:`bt_demo.image.preprocess.as_unit_float`); masks are bool
``(H, W)``. No Gradio, and plotly only inside :func:`sweep_figure`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from bt_demo.errors import InputError

__all__ = ["KMeansResult", "kmeans_segment", "colorize_labels", "tumour_candidate", "KSweep", "k_sweep",
           "sweep_figure", "elbow", "K_RANGE"]

K_RANGE = (2, 12)
"""Allowed K, inclusive."""

# viridis (matplotlib's, sampled at 0, 1/8, ..., 1) as RGB 0..255; interpolated linearly.
_VIRIDIS = np.array([
    [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=np.float64)
_PALETTE_START = 0.15  # skip viridis' near-black purple: background is black


@dataclass(frozen=True, eq=False)
class KMeansResult:
    """labels: int16 ``(H, W)``: 0 outside ``mask``, 1..k clusters by ascending centre.
    centers: float32 ``(k,)`` ascending, in image intensity units ([0, 1]).
    k: clusters actually used (may be below the K asked for, see :func:`kmeans_segment`).
    mask: bool ``(H, W)``, the pixels clustered.
    inertia: WCSS, the sum over clustered pixels of (intensity - its centre)^2.
    """

    labels: np.ndarray
    centers: np.ndarray
    k: int
    mask: np.ndarray
    inertia: float


def _check_k(k) -> int:
    if isinstance(k, (bool, np.bool_)):
        raise ValueError(f"k must be a whole number in [{K_RANGE[0]}, {K_RANGE[1]}], got {k!r}")
    try:
        kf = float(k)
    except (TypeError, ValueError):
        raise ValueError(f"k must be a whole number in [{K_RANGE[0]}, {K_RANGE[1]}], got {k!r}") from None
    if not np.isfinite(kf) or kf != round(kf) or not K_RANGE[0] <= kf <= K_RANGE[1]:
        raise ValueError(f"k must be a whole number in [{K_RANGE[0]}, {K_RANGE[1]}], got {k!r}")
    return int(round(kf))


def _check_positive_int(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {v!r}")
    return int(v)


def _pixels(image, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit image, bool mask, float64 intensities of the masked pixels)."""
    from bt_demo.image.preprocess import as_unit_float, estimate_brain_mask

    img = as_unit_float(image)
    if mask is None:
        mask = estimate_brain_mask(img)
    else:
        mask = np.asarray(mask)
        if mask.shape != img.shape:
            raise ValueError(f"mask shape {mask.shape} does not match image shape {img.shape}")
        mask = mask.astype(bool)
        if not mask.any():
            raise InputError("the mask selects no pixel; give a mask that covers the brain, or none to "
                             "estimate it from the image")
    return img, mask, img[mask].astype(np.float64)


def _fit_centres(x: np.ndarray, k: int, seed: int, max_fit_samples: int) -> np.ndarray:
    """Sorted KMeans centres (float64 (k,)) of 1-D data ``x`` with >= k distinct values.

    When ``x`` has at most ``max_fit_samples`` distinct values (always for
    images that came from 8-bit data), the fit runs on the distinct values
    weighted by their counts: exactly the KMeans objective on all pixels, and
    fast. Otherwise on a seeded random subsample of ``max_fit_samples`` pixels
    (topped up with the distinct extremes so that k clusters always exist).
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    values, counts = np.unique(x, return_counts=True)
    if len(values) <= max_fit_samples:
        fit_x, weight = values, counts.astype(np.float64)
    else:
        rng = np.random.default_rng(seed)
        fit_x = rng.choice(x, max_fit_samples, replace=False)
        if len(np.unique(fit_x)) < k:
            fit_x = np.concatenate([fit_x, np.quantile(values, np.linspace(0, 1, k))])
        weight = None
    # 1-D data of a few thousand points: one thread is fastest, and OpenMP's
    # spinning threads are slow on a small shared machine.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on ties is handled by the caller's checks
        km = KMeans(n_clusters=k, n_init=3, init="k-means++", random_state=seed, max_iter=300)
        km.fit(fit_x[:, None], sample_weight=weight)
    return np.sort(km.cluster_centers_[:, 0])


def _assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """0-based index of the nearest of the ascending ``centres`` for each value (1-D: midpoints)."""
    return np.searchsorted((centres[1:] + centres[:-1]) / 2.0, x).astype(np.int64)


def kmeans_segment(image: np.ndarray, k: int = 4, mask: np.ndarray | None = None, seed: int = 0,
                   max_fit_samples: int = 20000) -> KMeansResult:
    """K-Means clusters of the intensities of the ``mask`` pixels.

    image: float32 ``(H, W)`` in ``[0, 1]`` (others converted).
    k: number of clusters, a whole number in [2, 12] (``ValueError`` otherwise).
        With fewer distinct intensities than k inside the mask, k is reduced to
        that number with a ``RuntimeWarning`` (a constant image gives k = 1).
    mask: bool ``(H, W)``; None -> :func:`bt_demo.image.preprocess.estimate_brain_mask`.
        An all-False mask raises :class:`InputError`.
    seed: seeds k-means++ and the subsample, so results are reproducible.
    max_fit_samples: most points the KMeans fit sees (see below).

    Fit: scikit-learn ``KMeans`` (k-means++, 3 inits) on the distinct masked
    intensities weighted by their counts, or on a random subsample of
    ``max_fit_samples`` pixels when there are more distinct values; then every
    masked pixel goes to its nearest centre. Centres are sorted ascending and
    labels follow them, so label k is always the brightest cluster.
    """
    k = _check_k(k)
    max_fit_samples = _check_positive_int("max_fit_samples", max_fit_samples, 2)
    img, mask, x = _pixels(image, mask)
    distinct = np.unique(x)
    if len(distinct) < k:
        warnings.warn(f"only {len(distinct)} distinct intensit{'y' if len(distinct) == 1 else 'ies'} "
                      f"inside the mask: using k={len(distinct)} instead of {k}", RuntimeWarning, stacklevel=2)
        k = len(distinct)
        centres = distinct.astype(np.float64)
    else:
        centres = _fit_centres(x, k, seed, max_fit_samples)
    idx = _assign(x, centres)
    labels = np.zeros(img.shape, np.int16)
    labels[mask] = idx + 1
    inertia = float(np.sum((x - centres[idx]) ** 2))
    return KMeansResult(labels, centres.astype(np.float32), int(k), mask, inertia)


def colorize_labels(labels: np.ndarray, k: int) -> np.ndarray:
    """A label map as an RGB picture.

    labels: integer ``(H, W)`` with values in 0..k (0 = background).
    k: number of clusters (>= 1).
    Returns uint8 ``(H, W, 3)``: background black; clusters 1..k take evenly
    spaced colours along viridis (from dark blue-purple to yellow, skipping its
    near-black start), so the darkest cluster is blue-ish and the brightest is
    always yellow whatever k is.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2 or not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
        raise ValueError(f"labels must be an integer (H, W) array, got dtype {lab.dtype} shape {lab.shape}")
    k = _check_positive_int("k", k, 1)
    if lab.size and (lab.min() < 0 or lab.max() > k):
        raise ValueError(f"labels must lie in 0..{k} (0 = background), got {lab.min()}..{lab.max()}")
    t = np.linspace(_PALETTE_START, 1.0, k) if k > 1 else np.array([1.0])
    pos = t * (len(_VIRIDIS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_VIRIDIS) - 2)
    frac = (pos - lo)[:, None]
    colours = (1 - frac) * _VIRIDIS[lo] + frac * _VIRIDIS[lo + 1]
    palette = np.zeros((k + 1, 3), np.uint8)
    palette[1:] = np.clip(np.rint(colours), 0, 255).astype(np.uint8)
    return palette[lab.astype(np.int64)]


def tumour_candidate(result: KMeansResult, min_area: int = 20) -> np.ndarray:
    """The brightest cluster without its specks: bool ``(H, W)``, may be empty.

    Keeps the 8-connected components of label ``result.k`` that have at least
    ``min_area`` pixels (``min_area`` >= 0). With a single cluster (k = 1,
    nothing stands out) the candidate is empty.
    """
    import cv2

    min_area = _check_positive_int("min_area", min_area, 0)
    labels = np.asarray(result.labels)
    if result.k < 2:
        return np.zeros(labels.shape, bool)
    m = (labels == result.k).astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    return keep[lab]


@dataclass(frozen=True)
class KSweep:
    """Cluster-quality scores per K (lists aligned with ``ks``).

    wcss: within-cluster sum of squares (the KMeans inertia), all masked pixels.
    bcss: between-cluster sum of squares, TSS - WCSS on the same pixels.
    silhouette: mean silhouette (scikit-learn's ``silhouette_score`` on the
        precomputed float32 distances |xi - xj|, computed once for all K) of a
        seeded random sample of ``silhouette_sample`` masked pixels (all of them
        when fewer); in [-1, 1], higher is better. 0.0 where undefined (the
        sample falls in a single cluster).
    calinski_harabasz / davies_bouldin: scikit-learn's scores on the pixels the
        fit saw (all masked pixels when at most ``max_fit_samples``, else a seeded
        sample of that size); CH higher is better, DB lower is better.
    suggested_k: the elbow (= ``elbow_k``). ``suggestion_method`` says how:
        the maximum distance below the chord of the min-max normalised WCSS
        curve (the "kneedle" idea). ``best_silhouette_k`` is reported beside it.
    """

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


SUGGESTION_METHOD = "elbow: largest gap below the chord of the normalised WCSS curve (kneedle)"


def elbow(ks, wcss) -> int:
    """The "kneedle" elbow of a decreasing WCSS curve.

    Both axes are min-max normalised; the elbow is the K whose point lies
    farthest below the straight chord joining the first and last points. With
    fewer than 3 points, or a flat curve, the first K is returned.
    """
    x = np.asarray(list(ks), float)
    y = np.asarray(list(wcss), float)
    if len(x) != len(y):
        raise ValueError(f"ks and wcss must have the same length, got {len(x)} and {len(y)}")
    if len(x) < 3 or y.max() - y.min() <= 1e-12 * max(1.0, abs(y.max())):
        return int(x[0])
    xn = (x - x[0]) / (x[-1] - x[0])
    yn = (y - y.min()) / (y.max() - y.min())
    chord = yn[0] + (yn[-1] - yn[0]) * xn
    return int(x[int(np.argmax(chord - yn))])


def k_sweep(image: np.ndarray, ks=range(2, 13), mask: np.ndarray | None = None, seed: int = 0,
            silhouette_sample: int = 3000, max_fit_samples: int = 20000) -> KSweep:
    """Fit K-Means for every K in ``ks`` and score each (see :class:`KSweep`).

    image: float32 ``(H, W)`` in ``[0, 1]``; mask: bool ``(H, W)`` or None
    (-> estimated brain), as in :func:`kmeans_segment`, with the same fit.
    ks: whole numbers in [2, 12]; duplicates are dropped and K is sorted. K
    values above the number of distinct masked intensities are dropped with a
    ``RuntimeWarning``; if none is left (a constant image) :class:`InputError`
    is raised, since there is nothing to compare.
    """
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score
    from threadpoolctl import threadpool_limits

    ks = sorted({_check_k(k) for k in ks})
    if not ks:
        raise ValueError(f"ks is empty; give K values in [{K_RANGE[0]}, {K_RANGE[1]}]")
    silhouette_sample = _check_positive_int("silhouette_sample", silhouette_sample, 2)
    max_fit_samples = _check_positive_int("max_fit_samples", max_fit_samples, 2)
    img, mask, x = _pixels(image, mask)
    n_distinct = len(np.unique(x))
    usable = [k for k in ks if k <= n_distinct]
    if not usable:
        raise InputError(f"the image has {n_distinct} distinct intensit{'y' if n_distinct == 1 else 'ies'} "
                         "inside the mask: there is nothing to cluster; load a slice with visible structure")
    if len(usable) < len(ks):
        warnings.warn(f"only {n_distinct} distinct intensities inside the mask: K above {n_distinct} skipped",
                      RuntimeWarning, stacklevel=2)
    rng = np.random.default_rng(seed)
    sil_x = x if len(x) <= silhouette_sample else rng.choice(x, silhouette_sample, replace=False)
    fit_x = x if len(x) <= max_fit_samples else rng.choice(x, max_fit_samples, replace=False)
    tss = float(np.sum((x - x.mean()) ** 2))
    # 1-D distances of the silhouette sample, once for every K (float32: 36 MB at 3000 px)
    sil_d = np.abs(sil_x[:, None].astype(np.float32) - sil_x[None, :].astype(np.float32))
    out = {"wcss": [], "bcss": [], "silhouette": [], "calinski_harabasz": [], "davies_bouldin": []}
    for k in usable:
        centres = _fit_centres(x, k, seed, max_fit_samples)
        wcss = float(np.sum((x - centres[_assign(x, centres)]) ** 2))
        out["wcss"].append(wcss)
        out["bcss"].append(max(0.0, tss - wcss))
        s_lab = _assign(sil_x, centres)
        n_s = len(np.unique(s_lab))
        with threadpool_limits(1):
            sil = float(silhouette_score(sil_d, s_lab, metric="precomputed")) if 1 < n_s < len(sil_x) else 0.0
        out["silhouette"].append(sil)
        f_lab = _assign(fit_x, centres)
        n_f = len(np.unique(f_lab))
        ok = 1 < n_f < len(fit_x)
        out["calinski_harabasz"].append(float(calinski_harabasz_score(fit_x[:, None], f_lab)) if ok else 0.0)
        out["davies_bouldin"].append(float(davies_bouldin_score(fit_x[:, None], f_lab)) if ok else 0.0)
    best_sil = int(usable[int(np.argmax(out["silhouette"]))])
    ek = elbow(usable, out["wcss"])
    return KSweep(list(usable), **out, suggested_k=ek, suggestion_method=SUGGESTION_METHOD,
                  best_silhouette_k=best_sil, elbow_k=ek)


def sweep_figure(sweep: KSweep):
    """A plotly ``Figure``: 2 x 2 panels of WCSS & BCSS, silhouette, Calinski-Harabasz and
    Davies-Bouldin against K, with the suggested K marked by a dashed line in each."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=2, subplot_titles=(
        "WCSS (inertia) and BCSS", "silhouette (higher is better)",
        "Calinski-Harabasz (higher is better)", "Davies-Bouldin (lower is better)"))
    ks = list(sweep.ks)
    fig.add_trace(go.Scatter(x=ks, y=sweep.wcss, name="WCSS", mode="lines+markers"), 1, 1)
    fig.add_trace(go.Scatter(x=ks, y=sweep.bcss, name="BCSS", mode="lines+markers"), 1, 1)
    fig.add_trace(go.Scatter(x=ks, y=sweep.silhouette, name="silhouette", mode="lines+markers"), 1, 2)
    fig.add_trace(go.Scatter(x=ks, y=sweep.calinski_harabasz, name="Calinski-Harabasz", mode="lines+markers"), 2, 1)
    fig.add_trace(go.Scatter(x=ks, y=sweep.davies_bouldin, name="Davies-Bouldin", mode="lines+markers"), 2, 2)
    for r in (1, 2):
        for c in (1, 2):
            fig.add_vline(x=sweep.suggested_k, line_dash="dash", line_color="gray", row=r, col=c)
    fig.update_layout(height=520, margin=dict(l=40, r=20, t=70, b=40), legend=dict(orientation="h"),
                      title=f"suggested K = {sweep.suggested_k} (WCSS elbow); "
                            f"best silhouette at K = {sweep.best_silhouette_k}")
    fig.update_xaxes(title_text="K", dtick=1)
    return fig
