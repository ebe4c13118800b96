"""The page: one ``gr.Blocks`` assembled from the panels (``bt_demo.ui.panels``), each of which builds its
components and declares its events right below them.

``build_demo(engines, annotations_dir)`` returns the Blocks; ``app.py`` queues and launches it (with
:data:`THEME` and :data:`CSS`). Every component has a ``label`` (a browser test finds it by that label).
What crosses panels is wired here: a new image (upload, index, window, preprocessing, a synthetic slice,
an engine switch) is followed by the prompt engine's preparation, and opening a tab draws its panels.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from bt_demo.ui import compute, tabs
from bt_demo.ui.kit import COMPARE_OUT, PROMPT_OUT, QUIET, Page
from bt_demo.ui.panels import (
    classifier,
    compare,
    export,
    kmeans,
    measure,
    preprocessing,
    prompts,
    synthetic,
    uncertainty,
    upload,
    volume,
)
from bt_demo.ui.panels import engines as engines_panel
from bt_demo.ui.state import Session, delete_session

NOTICE = ("**Research demo — not for diagnosis.** The bundled examples are synthetic (no patient data); the models are small research models. "
          "Nothing you upload is stored unless you press *Accept as correction*.")

SESSION_TTL_S = 2 * 3600

CSS = """
.tab-container button[role=tab] {padding: 0 8px !important;}  /* every tab in one row at 1500 px: none behind "..." */
.notice {background: #fff4d6; border: 1px solid #e6a700; border-radius: 8px; padding: 6px 12px;}
.notice p {margin: 0; color: #5a4300;}
.dark .notice {background: #3a3000;} .dark .notice p {color: #ffe7a0;}
#prompt-image img {cursor: crosshair;}
.legend {font-size: 0.92em;}
footer {display: none !important;}
.hint p {font-size: 0.85em; opacity: 0.8; margin: 0;}
"""
THEME = gr.themes.Soft(primary_hue="sky", neutral_hue="slate")

# the right column's tabs, in order: (title, id, panel); short titles: every tab fits the row at 1500 px
TABS = (("Prompts", "prompts", prompts), ("Compare", "compare", compare), ("Measure", "measure", measure),
        ("Uncertainty", "uncertainty", uncertainty), ("K-Means", "kmeans", kmeans),
        ("Classifier", "classifier", classifier), ("Export", "export", export), ("Volume", "volume", volume),
        ("Synthetic", "synthetic", synthetic))


def build_demo(engines, annotations_dir: str | None = None, examples_dir: str | Path | None = None,
               max_corrections: int = 10000) -> gr.Blocks:
    """The whole screen for one process-wide ``Engines`` (kept out of ``gr.State``).

    annotations_dir: the correction store's folder (None: ``CorrectionStore.default_root()``).
    max_corrections: the store's cap on records (``--max-corrections``).
    examples_dir: folder of example files (default ``assets/examples``).
    Building the page loads no model: engines still loading are shown as such, and the page refreshes.
    """
    # Gradio's cache (uploads are moved out of it at once; exports and images served) is swept every
    # 10 minutes of files older than 15 minutes
    with gr.Blocks(title="Brain-tumour MRI lab (research demo)", delete_cache=(600, 900)) as demo:
        page = Page(_session_state(), engines, annotations_dir, max_corrections, examples_dir)
        gr.Markdown("## Brain-tumour MRI lab: segment, compare, classify", label="Title")
        gr.Markdown(NOTICE, label="Notice", elem_classes=["notice"])
        engines_panel.build_summary(page)

        new_image = []  # the events after which the prompt engine prepares for the new image
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=340):  # left: the slice and its preprocessing
                new_image += upload.build(page)
                engines_panel.build(page, demo)
                new_image += upload.build_controls(page)
                preprocessing.build_view(page)
            with gr.Column(scale=6, min_width=420):  # right: what the engines say
                with gr.Tabs(overflow_behavior="wrap") as tab_row:  # never hidden behind an unlabelled "..."
                    for title, tab_id, panel in TABS:
                        with gr.Tab(title, id=tab_id):
                            new_image += panel.build(page) or []
        # below: the preprocessing steps, from the registry
        new_image += preprocessing.build_steps(page)

        for tab in tab_row.children:
            if isinstance(tab, gr.Tab):
                _wire_tab(page, tab)
        for event in new_image:
            event.then(lambda dep: _then_prepare(page, dep))
        page.connect()
    return demo


def _session_state() -> gr.State:
    """This tab's ``Session``: freed when its browser tab closes, or after SESSION_TTL_S without any event
    (API clients that never open a heartbeat are never "closed")."""
    first = Session()
    first.tab = "prompts"  # the tab a page opens on; hidden tabs are drawn when opened (ui.tabs)
    first.shown = {"candidates": None}  # SAM's candidates start hidden; sent when they change (views._changed)
    return gr.State(first, delete_callback=delete_session, time_to_live=SESSION_TTL_S)


def _wire_tab(page: Page, tab: gr.Tab) -> None:
    """Opening a tab draws its panels if they changed while it was hidden."""
    ev = page.wire(tab.select, lambda s, _t=tab.id: compute.show_tab(s, _t, page.engines), [],
                   list(tabs.PANELS.get(tab.id, ())), show_progress="hidden", api_name=f"show_{tab.id}",
                   api_visibility="private")
    if tab.id == "classifier":  # the encoder heads take seconds: they fill in after the tab is shown
        ev.then(lambda dep: dep.then(lambda s: page.adapt(compute.fill_heads(s, page.engines), ["heads_info"]),
                                     inputs=[page.session], outputs=page.outputs(["heads_info"]),
                                     api_name="fill_heads", api_visibility="private", **QUIET))
    if tab.id in compute.REFINED_TABS:  # so does the automatic mask's outline on the same encoder run
        names = COMPARE_OUT + ["unet_info"]
        ev.then(lambda dep: dep.then(lambda s: page.adapt(compute.fill_refined(s, page.engines), names),
                                     inputs=[page.session], outputs=page.outputs(names),
                                     api_name=f"fill_refined_{tab.id}", api_visibility="private", **QUIET))


def _then_prepare(page: Page, dep):
    """After a new image: SAM's image encoder runs here, after the other panels are shown, then the classical
    segmenters; one chained event, not two (each is a round trip the next upload or click waits behind)."""
    names = PROMPT_OUT + COMPARE_OUT + ["heads_info", "unet_info"]
    return dep.then(lambda s: page.adapt(compute.after_new_image(s, page.engines), names), inputs=[page.session],
                    outputs=page.outputs(names), api_name="prepare_prompts", api_visibility="undocumented",
                    **QUIET)
