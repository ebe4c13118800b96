"""What the left column shows, computed from a :class:`~bt_demo.ui.state.Session`: the slice's status line, its
index and window controls, the before/after view of the preprocessing, and the intensity histogram.

Pure presentation, as :mod:`bt_demo.ui.views` (which holds the tabs' views and the shared helpers): every
function reads the session and returns a ``dict`` of output name -> value (or ``gr.update(...)``).
"""

from __future__ import annotations

from collections.abc import Mapping

import gradio as gr
import numpy as np

from bt_demo import render
from bt_demo.ui.views import brain_mask_original, display_gray, esc, fit, processed_in_original

# Which slider/dropdown shows which axis of Slice.index (1-based in the UI).
INDEX_AXES = ("page", "frame", "slice", "volume")
CHANNEL_CHOICES = [("luma (mix of R, G, B)", -1), ("red", 0), ("green", 1), ("blue", 2)]

FORMAT_LABEL = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP", "gif": "GIF", "webp": "WebP",
                "dicom": "DICOM", "nifti": "NIfTI",
                "synthetic": "SYNTHETIC slice (made by the generator, not a patient)"}


# ---------------------------------------------------------------------------
# the slice: info, index controls, window
# ---------------------------------------------------------------------------
def slice_info(s) -> str:
    from bt_demo.io import describe_indices

    sl = s.slice
    h, w = sl.shape
    parts = [f"**{FORMAT_LABEL.get(sl.source, sl.source.upper())}**, {w} × {h} px"]
    where = describe_indices(sl)
    if where:
        parts.append(where)
    if sl.spacing is not None:
        parts.append(f"pixel spacing {sl.spacing[0]:.3g} × {sl.spacing[1]:.3g} mm (from the file)")
    elif s.spacing_mm:
        parts.append(f"pixel spacing {s.spacing_mm:.3g} mm (typed; the file gives none)")
    else:
        parts.append("no pixel spacing in the file: areas in px only (type one below for mm²)")
    if sl.metadata.get("spacing_note"):
        parts.append(esc(sl.metadata["spacing_note"]))
    for n in getattr(s, "notices", ()):  # the file's fields and the picture itself (compute.recompute)
        parts.append(f"⚠ {esc(n)}")
    meta = {k: v for k, v in sl.metadata.items() if k in ("modality", "series_description", "plane", "orientation",
                                                           "field_strength", "slice_thickness", "bits")}
    if meta:
        parts.append(", ".join(f"{k.replace('_', ' ')}: {esc(str(v))}" for k, v in meta.items()))
    return " · ".join(parts)


def index_updates(s) -> dict:
    """Show the selectors the file has (1-based sliders), hide the others."""
    out = {}
    idx = dict(s.slice.index) if s.slice is not None else {}
    for axis in INDEX_AXES:
        if axis in idx and idx[axis][1] > 1:
            chosen, count = idx[axis]
            out[f"idx_{axis}"] = gr.update(visible=True, minimum=1, maximum=count, step=1, value=chosen + 1)
        else:
            out[f"idx_{axis}"] = gr.update(visible=False, value=1)
    if "channel" in idx:
        chosen, count = idx["channel"]
        choices = CHANNEL_CHOICES if count == 3 else [("luma", -1)] + [(f"channel {i + 1}", i) for i in range(count)]
        out["idx_channel"] = gr.update(visible=True, choices=choices, value=chosen)
    else:
        out["idx_channel"] = gr.update(visible=False, value=-1)
    return out


def window_updates(s) -> dict:
    """Centre/width sliders spanning the slice's intensity range, set to the session's window."""
    px = s.slice.pixels
    lo, hi = float(px.min()), float(px.max())
    c, w = s.window
    span = hi - lo
    if not span > 1e-6:  # a constant slice: the sliders still need a range (a zero-width one is a Gradio error)
        span = max(abs(float(w)), 1.0)
    step = 1.0 if span > 50 else span / 200.0
    c_min, c_max = min(lo, c - span / 2), max(hi, c + span / 2)
    w_max = max(2.0 * span, w)
    return {
        "win_center": gr.update(minimum=round(c_min, 6), maximum=round(c_max, 6), step=step, value=round(c, 6)),
        "win_width": gr.update(minimum=round(step, 6), maximum=round(w_max, 6), step=step, value=round(w, 6)),
    }


def slice_view(s) -> dict:
    return {"status": slice_info(s), **index_updates(s), **window_updates(s)}


# ---------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------
def preprocessing_view(s) -> dict:
    p = s.processed
    before = render.to_rgb(display_gray(s))
    after = render.to_rgb(processed_in_original(s))
    names = []
    for item in getattr(p, "steps", ()) or ():
        names.append(str(item[0] if isinstance(item, (tuple, list)) else getattr(item, "name", item)))
    timings = getattr(p, "timings", None) or {}
    total = sum(float(v) for v in timings.values()) if isinstance(timings, Mapping) else 0.0
    geo = p.geometry
    if names:
        info = f"Applied: {', '.join(esc(n) for n in names)} ({1000 * total:.0f} ms)."
    else:
        info = "No preprocessing step is on: every engine sees the windowed slice."
    if getattr(s, "models_see_lab", False):
        info += " The models (U-Net, prompt engine, classifier) see this output, as you asked."
    elif any(n != "crop_brain" for n in names):
        info += (" The models (U-Net, prompt engine, classifier) see the slice as loaded"
                 f"{' through the brain crop' if not geo.is_identity else ''} — the input they were trained on; "
                 "these steps feed the display, K-Means, the histogram and the classical segmenters.")
    if not geo.is_identity:
        y0, x0, y1, x1 = geo.crop
        info += (f" Engines see a {geo.processed_shape[1]} × {geo.processed_shape[0]} px image "
                 f"(crop x {x0}–{x1}, y {y0}–{y1} of the slice); everything shown stays in slice pixels.")
    return {"before_after": (fit(before), fit(after)), "pipeline_info": info}


# ---------------------------------------------------------------------------
# intensity histogram (left column)
# ---------------------------------------------------------------------------
HIST_SCOPES = {"brain": "brain only (estimated brain mask)", "whole": "whole image"}


def intensity_view(s) -> dict:
    """Histogram + CDF of the slice before and after preprocessing, K-Means boundaries and window marked."""
    from bt_demo.image import intensity

    p, sl = s.processed, s.slice
    px = np.asarray(sl.pixels, np.float32)
    lo, hi = float(px.min()), float(px.max())
    span = hi - lo
    before = (px - lo) / span if span > 0 else np.zeros_like(px)
    brain = brain_mask_original(s) if s.hist_scope == "brain" else None
    note = ""
    if brain is not None and not brain.any():
        brain, note = None, " The brain mask is empty on this slice: the whole image is counted."
    if brain is not None:
        after = processed_in_original(s)
    else:
        after = np.asarray(p.image, np.float32)
    c, w = s.window
    level = min(max((c - lo) / span, 0.0), 1.0) if span > 0 else 0.5
    width = min(max(w / span, 1e-3), 2.0) if span > 0 else 1.0
    centers = np.asarray(s.kmeans.centers, np.float64) if s.kmeans is not None else None
    fig = intensity.intensity_figure(before, after, brain, kmeans_centers=centers, window=(level, width))
    # the block's label is the title; the marks are named in the legend rather than by crowded annotations
    import plotly.graph_objects as go

    fig.layout.annotations = ()
    if centers is not None and len(centers) > 1:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="K-Means boundary",
                                 line=dict(color="#CC79A7", dash="dot")))
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="display window",
                             line=dict(color="#E69F00", dash="dash")))
    fig.update_xaxes(title_text="intensity, 0–1 (before: the file's min–max; after: the processed image)")
    fig.update_layout(title=None, height=380, margin=dict(l=55, r=55, t=60, b=45),
                      legend=dict(orientation="h", x=0, y=1.02, xanchor="left", yanchor="bottom",
                                  font=dict(size=11)))
    h = intensity.histogram_cdf(before, after, brain, bins=64)
    scope = "brain pixels" if brain is not None else "whole image"
    b, a = h["before"], h["after"]
    kpart = (f"dotted pink: boundaries between the K = {s.kmeans.k} K-Means clusters (processed intensities)"
             if s.kmeans is not None else "no K-Means result")
    info = (f"Histogram and CDF of the **{scope}** ({b['n']} px), before (grey) and after (blue) preprocessing. "
            f"Median {b['p50']:.2f} → {a['p50']:.2f}; 1st–99th percentile {b['p01']:.2f}–{b['p99']:.2f} → "
            f"{a['p01']:.2f}–{a['p99']:.2f}. Dashed orange: the display window (level {c:.4g}, width {w:.4g} "
            f"in the file's units); {kpart}.{note}")
    return {"intensity_plot": fig, "intensity_info": info}

