"""The K-Means tab: the clusters of the processed slice, K, and the K-selection curves."""

from __future__ import annotations

import gradio as gr

from bt_demo.errors import InputError
from bt_demo.ui import compute as C
from bt_demo.ui import views, views_slice
from bt_demo.ui.kit import COMPARE_OUT, INTENSITY_OUT, Page, handler, need_slice
from bt_demo.ui.state import Session

K_RANGE = (2, 12)


@handler("re-clustering", heavy=True)
def set_k(s: Session, k) -> dict:
    """Number of K-Means clusters, 2..12."""
    kk = int(round(float(k)))
    if not K_RANGE[0] <= kk <= K_RANGE[1]:
        raise InputError(f"K must be between {K_RANGE[0]} and {K_RANGE[1]}, got {k}")
    s.kmeans_k = kk
    if not s.loaded:
        return {}
    C.run_kmeans(s)
    view = views.kmeans_view(s)
    view.update(views.compare_view(s))
    view.update(views_slice.intensity_view(s))  # the cluster boundaries on the histogram
    return view


@handler("scoring K = 2…12", heavy=True)
def run_sweep(s: Session) -> dict:
    """The K-selection curves for this processed slice (1-3 s; cached until the image changes)."""
    from bt_demo.studies import clustering

    need_slice(s)
    if s.sweep is None or s.sweep_key != s.processed.key:
        s.sweep = clustering.k_sweep(s.processed.image, mask=s.processed.brain_mask)
        s.sweep_key = s.processed.key
    return views.sweep_view(s)


def build(page: Page) -> None:
    """The K-Means tab's contents."""
    k_slider = gr.Slider(K_RANGE[0], K_RANGE[1], value=4, step=1, label="Number of clusters K")
    with gr.Row(equal_height=False):
        kmeans_image = gr.Image(label="K-Means clusters", type="numpy", format="jpeg",
                                interactive=False, buttons=["fullscreen"])
        with gr.Column():
            kmeans_info = gr.Markdown("", label="K-Means summary")
            sweep_btn = gr.Button("Score K = 2…12 (1–3 s)", size="sm")
            sweep_info = gr.Markdown("", label="K sweep summary")
    sweep_plot = gr.Plot(label="K-selection curves")
    page.add(kmeans_image=kmeans_image, kmeans_info=kmeans_info, sweep_info=sweep_info, sweep_plot=sweep_plot)

    page.wire(k_slider.input, set_k, [k_slider], ["kmeans_image", "kmeans_info"] + COMPARE_OUT + INTENSITY_OUT,
              trigger_mode="always_last", api_name="kmeans_k")
    page.wire(sweep_btn.click, run_sweep, [], ["sweep_plot", "sweep_info"], show_progress="full", api_name="k_sweep")
