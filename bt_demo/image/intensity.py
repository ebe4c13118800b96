"""Intensity histograms and cumulative distributions, before and after preprocessing.

Images here are 2-D ``(H, W)`` grey images, converted by
:func:`bt_demo.image.preprocess.as_unit_float` to float32 in ``[0, 1]`` (uint8 ->
``/ 255``, uint16 / ints / floats outside ``[0, 1]`` -> min-max rescaled, floats
already in ``[0, 1]`` kept). Histograms always use ``bins`` equal bins over
``[0, 1]`` (the same edges as ``np.histogram(x, bins, range=(0, 1))``), so the
"before" and "after" curves share one axis. A constant image gives a single
non-zero bar and a CDF that is a step from 0 to 1, never NaN.

No Gradio import here (``bt_demo`` is the core); plotly is imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["BINS_RANGE", "histogram_cdf", "intensity_figure"]

BINS_RANGE = (2, 1024)  #: allowed number of histogram bins (inclusive)


def _check_bins(bins) -> int:
    if isinstance(bins, (bool, np.bool_)) or not isinstance(bins, (int, np.integer)) \
            or not BINS_RANGE[0] <= bins <= BINS_RANGE[1]:
        raise ValueError(f"bins must be a whole number in [{BINS_RANGE[0]}, {BINS_RANGE[1]}], got {bins!r}")
    return int(bins)


def _values(image, brain_mask, what: str) -> np.ndarray:
    """float64 1-D: the [0, 1] intensities of ``image`` (inside ``brain_mask`` when given)."""
    from bt_demo.image.preprocess import as_unit_float

    img = as_unit_float(image)
    if brain_mask is None:
        return img.ravel().astype(np.float64)
    m = np.asarray(brain_mask)
    if m.shape != img.shape:
        raise ValueError(f"brain_mask shape {m.shape} does not match the {what} image shape {img.shape}; "
                         "give a mask of the same (H, W), or none")
    m = m.astype(bool)
    if not m.any():
        raise ValueError("brain_mask selects no pixel; give a mask that covers the brain, or none for the whole image")
    return img[m].astype(np.float64)


def _one(x: np.ndarray, edges: np.ndarray) -> dict:
    counts, _ = np.histogram(x, bins=edges)
    total = int(counts.sum())
    cdf = np.cumsum(counts).astype(np.float64) / max(total, 1)
    return {"counts": counts.astype(np.int64), "cdf": cdf, "n": total,
            "mean": float(x.mean()), "std": float(x.std()),
            "p01": float(np.percentile(x, 1)), "p50": float(np.percentile(x, 50)), "p99": float(np.percentile(x, 99))}


def histogram_cdf(image_before: np.ndarray, image_after: np.ndarray | None = None,
                  brain_mask: np.ndarray | None = None, bins: int = 128) -> dict:
    """Histogram and CDF of one image, or of an image before and after preprocessing.

    image_before, image_after: 2-D grey images ``(H, W)`` (any dtype, see the
        module docstring), converted to float32 in ``[0, 1]``. ``image_after``
        may have another shape than ``image_before`` (a crop); then the mask is
        applied to ``image_before`` only if its shape matches, else
        ``ValueError``.
    brain_mask: bool ``(H, W)`` or None. When given, only its pixels count
        (brain-only histograms); it must match the shape of each image it is
        applied to, and select at least one pixel (``ValueError`` otherwise).
    bins: whole number in [2, 1024].

    Returns a dict:
        ``edges``: float64 ``(bins + 1,)`` over [0, 1]; ``centers``: float64 ``(bins,)``;
        ``before`` (and ``after`` when given, else None): dict with ``counts``
        int64 ``(bins,)`` (== ``np.histogram(x, bins, range=(0, 1))[0]``),
        ``cdf`` float64 ``(bins,)`` = ``cumsum(counts) / n`` in [0, 1] (last = 1),
        ``n`` pixel count, ``mean``, ``std``, ``p01``, ``p50``, ``p99`` of the values.
    """
    bins = _check_bins(bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = {"edges": edges, "centers": (edges[:-1] + edges[1:]) / 2.0, "bins": bins,
           "brain_only": brain_mask is not None,
           "before": _one(_values(image_before, brain_mask, "before"), edges), "after": None}
    if image_after is not None:
        out["after"] = _one(_values(image_after, brain_mask, "after"), edges)
    return out


def _boundaries(kmeans_centers) -> list[float]:
    c = np.sort(np.asarray(kmeans_centers, dtype=np.float64).ravel())
    if c.size and not np.all(np.isfinite(c)):
        raise ValueError(f"kmeans_centers must be finite numbers in [0, 1], got {c.tolist()}")
    return [float(v) for v in (c[1:] + c[:-1]) / 2.0]


def _window(window) -> tuple[float, float]:
    try:
        centre, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window must be (centre, width) in [0, 1] units, got {window!r}") from None
    if not (np.isfinite(centre) and 0.0 <= centre <= 1.0):
        raise ValueError(f"window centre (level) must be in [0, 1], got {centre!r}")
    if not (np.isfinite(width) and 0.0 < width <= 2.0):
        raise ValueError(f"window width must be in (0, 2], got {width!r}")
    return centre, width


def intensity_figure(before: np.ndarray, after: np.ndarray | None = None, brain_mask: np.ndarray | None = None,
                     kmeans_centers: Sequence[float] | None = None, window: Sequence[float] | None = None,
                     bins: int = 128):
    """A plotly ``Figure``: intensity histograms (bars, left y axis: pixel count) and CDFs
    (lines, right y axis: 0..1) of ``before`` and, when given, ``after``, on one x axis [0, 1].

    before, after, brain_mask, bins: as in :func:`histogram_cdf`.
    kmeans_centers: K-Means centres in [0, 1] units (any order); dotted vertical
        lines mark the cluster boundaries, the midpoints between sorted centres.
    window: ``(centre, width)`` of a window/level in [0, 1] units (centre in
        [0, 1], width in (0, 2]); dashed lines at ``centre ± width / 2`` (clipped to [0, 1]).
    Traces are named "before"/"after" (bars) and "before CDF"/"after CDF" (lines).
    """
    import plotly.graph_objects as go

    h = histogram_cdf(before, after, brain_mask, bins)
    bounds = _boundaries(kmeans_centers) if kmeans_centers is not None else []
    win = _window(window) if window is not None else None
    width = float(h["edges"][1] - h["edges"][0])
    styles = {"before": ("#999999", "#555555"), "after": ("#56B4E9", "#0072B2")}
    # built as one dict, not with add_trace/add_vline: plotly's per-call validation took ~0.2 s of every upload
    traces = []
    for key in ("before", "after"):
        d = h[key]
        if d is None:
            continue
        bar_c, line_c = styles[key]
        traces.append(dict(type="bar", x=h["centers"], y=d["counts"], width=width, name=key, marker_color=bar_c,
                           opacity=0.55, xaxis="x", yaxis="y"))
        # the CDF as a step through the right bin edges: a constant image gives one clean step
        traces.append(dict(type="scatter", x=np.concatenate([[0.0], h["edges"][1:]]),
                           y=np.concatenate([[0.0], d["cdf"]]), name=f"{key} CDF", mode="lines",
                           line=dict(color=line_c, shape="hv"), xaxis="x", yaxis="y2"))

    def vline(x, dash, color):
        return dict(type="line", x0=x, x1=x, y0=0, y1=1, xref="x", yref="paper", line=dict(dash=dash, color=color))

    shapes = [vline(b, "dot", "#CC79A7") for b in bounds]
    notes = []
    if bounds:
        notes.append(dict(x=bounds[-1], y=1.0, yref="paper", text="K-Means boundaries", showarrow=False,
                          xanchor="left", font=dict(color="#CC79A7", size=10)))
    if win is not None:
        lo, hi = max(0.0, win[0] - win[1] / 2.0), min(1.0, win[0] + win[1] / 2.0)
        shapes += [vline(x, "dash", "#E69F00") for x in (lo, hi)]
        notes.append(dict(x=hi, y=0.92, yref="paper", text=f"window {win[1]:.2f} / level {win[0]:.2f}",
                          showarrow=False, xanchor="right", font=dict(color="#E69F00", size=10)))
    layout = dict(barmode="overlay", height=360, margin=dict(l=50, r=50, t=50, b=40), legend=dict(orientation="h"),
                  title=dict(text="intensity histogram and CDF" + (" (brain pixels)" if h["brain_only"] else "")),
                  xaxis=dict(title=dict(text="intensity (0..1)"), range=[0, 1]),
                  yaxis=dict(title=dict(text="pixels")),
                  yaxis2=dict(title=dict(text="cumulative fraction"), range=[0, 1.02], overlaying="y", side="right"),
                  shapes=shapes, annotations=notes)
    return go.Figure(data=traces, layout=layout)
