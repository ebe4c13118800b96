"""The page: one ``gr.Blocks``, layout in ``with`` blocks, the event wiring below it.

``build_demo(engines, annotations_dir)`` returns the Blocks; ``app.py``
queues and launches it (with :data:`THEME` and :data:`CSS`). Every component
has a ``label`` (a browser test finds it by that label). Handlers live in
:mod:`bt_demo.ui.handlers`; each event here only adapts Gradio's arguments
and maps the handler's ``view`` dict onto components.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np

from bt_demo.ui import handlers as H
from bt_demo.ui import synthetic_panel as SP
from bt_demo.ui import tabs as T
from bt_demo.ui import volume_panel as VP
from bt_demo.ui import views as V
from bt_demo.ui.state import Session, delete_session

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO_ROOT / "assets" / "examples"

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

# Image file suffixes of the examples (the masks beside them are for trying "upload a corrected mask").
_EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii", ".nii.gz")


def example_files(folder: Path | str | None = None) -> list[Path]:
    folder = Path(folder) if folder else EXAMPLES_DIR
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.iterdir()):
        name = p.name.lower()
        if p.is_file() and name.endswith(_EXAMPLE_SUFFIXES) and "_mask" not in name:
            out.append(p)
    # the plain 256 px PNG first: the quickest to try
    out.sort(key=lambda p: (p.name != "phantom_flair.png", p.name))
    return out


def _example_label(p: Path) -> str:
    name = p.name
    kinds = {".png": "PNG", ".tif": "16-bit TIFF", ".dcm": "DICOM", ".nii.gz": "NIfTI volume"}
    for suffix, kind in kinds.items():
        if name.endswith(suffix):
            return f"{name} ({kind})"
    return name


def build_demo(engines, annotations_dir: str | None = None, examples_dir: str | Path | None = None,
               max_corrections: int = 10000) -> gr.Blocks:
    """The whole screen for one process-wide ``Engines`` (kept out of ``gr.State``).

    annotations_dir: the correction store's folder (None: ``CorrectionStore.default_root()``).
    max_corrections: the store's cap on records (``--max-corrections``).
    examples_dir: folder of example files (default ``assets/examples``).
    """
    from bt_demo.studies.classical_seg import CLASSICAL
    from bt_demo.image.preprocess import STEPS, default_pipeline

    # wait=False: an engine still loading (see Engines.preload) is shown as such; the page refreshes on load
    statuses_md = H.engines_status(engines, wait=False)
    summary_md = H.engines_summary(engines, wait=False)
    default_engine = engines.default_prompt_engine(wait=False)
    default_threshold = engines.unet_threshold()  # from its config: building the page loads no model
    default_steps = {name: dict(params) for name, params in default_pipeline()}
    keys = H.control_keys(STEPS)
    mask_choices = [(name, key) for key, name in V.MASK_KEYS.items()]

    # Gradio's cache (uploads are moved out of it at once; exports and images served) is swept every
    # 10 minutes of files older than 15 minutes
    with gr.Blocks(title="Brain-tumour MRI lab (research demo)", delete_cache=(600, 900)) as demo:
        # a session is freed when its browser tab closes, or after SESSION_TTL_S without any event
        # (API clients that never open a heartbeat are never "closed")
        first = Session()
        first.tab = "prompts"  # the tab a page opens on; hidden tabs are drawn when opened (ui.tabs)
        session = gr.State(first, delete_callback=delete_session, time_to_live=SESSION_TTL_S)

        gr.Markdown("## Brain-tumour MRI lab: segment, compare, classify", label="Title")
        gr.Markdown(NOTICE, label="Notice", elem_classes=["notice"])
        engines_line = gr.Markdown(summary_md, label="Engines summary", elem_classes=["hint"])

        with gr.Row(equal_height=False):
            # ---------------- left: the slice and its preprocessing -----------------
            with gr.Column(scale=4, min_width=340):
                upload = gr.File(label="Upload an MRI slice", file_count="single", type="filepath", height=110)
                gr.Markdown("PNG, JPEG, TIFF, BMP, DICOM or NIfTI (.nii / .nii.gz); the format is read from the "
                            "content, not the name.", label="Accepted formats", elem_classes=["hint"])
                examples = example_files(examples_dir)
                if examples:
                    gr.Examples(examples=[[str(p)] for p in examples], inputs=[upload],
                                label="Examples (synthetic phantoms, no patient data)",
                                example_labels=[_example_label(p) for p in examples],
                                cache_examples=False, examples_per_page=8)
                status = gr.Markdown("No slice loaded yet: upload a file or pick an example.", label="Slice")
                with gr.Accordion("Engines: which models answer, and why others do not", open=False):
                    engines_md = gr.Markdown(statuses_md, label="Engines status")
                idx_slice = gr.Slider(1, 2, value=1, step=1, label="Slice (1 = most inferior)", visible=False)
                idx_volume = gr.Slider(1, 2, value=1, step=1, label="Volume", visible=False)
                idx_page = gr.Slider(1, 2, value=1, step=1, label="Page", visible=False)
                idx_frame = gr.Slider(1, 2, value=1, step=1, label="Frame", visible=False)
                idx_channel = gr.Dropdown(choices=V.CHANNEL_CHOICES, value=-1, label="Colour channel", visible=False)
                with gr.Accordion("Window / level and pixel spacing", open=False):
                    win_center = gr.Slider(0, 255, value=127.5, label="Window centre (level)")
                    win_width = gr.Slider(1, 510, value=255, label="Window width")
                    spacing = gr.Number(value=None, label="Pixel spacing (mm), used when the file gives none",
                                        minimum=0, maximum=100, step=0.01)

                # views travel as JPEG: ~2 ms to encode a 512 px view against ~35 ms for PNG (exports stay PNG)
                before_after = gr.ImageSlider(label="Before / after preprocessing (drag the handle)",
                                              type="numpy", format="jpeg", max_height=420, interactive=False)
                pipeline_info = gr.Markdown("", label="Preprocessing summary")
                with gr.Group():
                    hist_scope = gr.Radio(choices=[(v, k) for k, v in V.HIST_SCOPES.items()], value="brain",
                                          label="Histogram counts")
                    intensity_plot = gr.Plot(label="Intensity histogram and CDF, before / after preprocessing")
                intensity_info = gr.Markdown("", label="Intensity summary", elem_classes=["hint"])

            # ---------------- right: what the engines say ---------------------------
            with gr.Column(scale=6, min_width=420):
                with gr.Tabs(overflow_behavior="wrap") as tab_row:  # never hidden behind an unlabelled "..."
                    with gr.Tab("Prompts", id="prompts"):
                        with gr.Row(equal_height=False):
                            with gr.Column(scale=3, min_width=300):
                                prompt_image = gr.Image(label="Click on the tumour (processed slice)", type="numpy",
                                                        format="jpeg", interactive=False, elem_id="prompt-image",
                                                        buttons=["fullscreen"], height=520)
                                prompt_info = gr.Markdown("", label="Prompt status")
                            with gr.Column(scale=1, min_width=210):
                                mode = gr.Radio(choices=[(v, k) for k, v in V.PROMPT_MODES.items()],
                                                value="positive", label="Click adds")
                                with gr.Row():
                                    undo_btn = gr.Button("Undo last point", size="sm")
                                    clear_btn = gr.Button("Clear points", size="sm")
                                engine = gr.Radio(choices=H.engine_choices(engines),
                                                  value=default_engine, label="Prompt engine")
                                candidates = gr.Radio(choices=[], value=None, visible=False, type="value",
                                                      label="SAM's candidate masks (pick one)")
                                with gr.Accordion("Box by coordinates (slice pixels)", open=False):
                                    with gr.Row():
                                        bx0 = gr.Number(label="x0", precision=0, min_width=60)
                                        by0 = gr.Number(label="y0", precision=0, min_width=60)
                                    with gr.Row():
                                        bx1 = gr.Number(label="x1", precision=0, min_width=60)
                                        by1 = gr.Number(label="y1", precision=0, min_width=60)
                                    box_btn = gr.Button("Apply box", size="sm")
                    with gr.Tab("Compare", id="compare"):
                        with gr.Row():
                            overlay_unet = gr.Image(label="U-Net (automatic)", type="numpy", format="jpeg",
                                                    interactive=False, buttons=["fullscreen"])
                            overlay_prompt = gr.Image(label="Prompted mask", type="numpy", format="jpeg",
                                                      interactive=False, buttons=["fullscreen"])
                            overlay_kmeans = gr.Image(label="K-Means candidate", type="numpy", format="jpeg",
                                                      interactive=False, buttons=["fullscreen"])
                        with gr.Row():
                            classical_overlays = {
                                name: gr.Image(label=V.CLASSICAL_TITLES[name], type="numpy", format="jpeg",
                                               interactive=False, buttons=["fullscreen"], visible=False)
                                for name in CLASSICAL}
                        compare_info = gr.HTML("", label="Mask colours", elem_classes=["legend"])
                        with gr.Row():
                            opacity = gr.Slider(0, 1, value=0.4, step=0.05, label="Overlay opacity")
                            threshold = gr.Slider(0.05, 0.95, value=default_threshold, step=0.01,
                                                  label="U-Net probability threshold")
                        classical_group = gr.CheckboxGroup(
                            choices=[(CLASSICAL[k].label, k) for k in CLASSICAL], value=[],
                            label="Classical segmenters beside the models",
                            info="Computed when ticked (watershed ~0.1 s, each snake ~0.3–0.7 s); they start from "
                                 "your clicks, or without clicks from the brightest K-Means cluster.")
                        classical_controls = []
                        with gr.Accordion("Classical segmenters: parameters", open=False):
                            with gr.Row(equal_height=False):
                                for name, entry in CLASSICAL.items():
                                    with gr.Column(min_width=200):
                                        gr.Markdown(f"**{entry.label}**: {entry.description}",
                                                    label=f"{entry.label} description", elem_classes=["hint"])
                                        for prm in entry.params:
                                            classical_controls.append(_param_control(prm, prm.default))
                        unet_info = gr.Markdown("", label="U-Net summary")
                        metrics_table = gr.Dataframe(label="Agreement between masks (Dice, IoU, HD95)",
                                                     interactive=False, wrap=True)
                        area_table = gr.Dataframe(label="Mask areas", interactive=False)
                        with gr.Row(equal_height=False):
                            agreement_image = gr.Image(label="Agreement map", type="numpy", format="jpeg",
                                                       interactive=False, buttons=["fullscreen"], scale=3,
                                                       min_width=240)
                            agreement_legend = gr.HTML("", label="Agreement legend", elem_classes=["legend"],
                                                       scale=2, min_width=160)
                    with gr.Tab("Measure", id="measure"):
                        measure_which = gr.Radio(choices=mask_choices, value="prompted",
                                                 label="Mask to measure (and export)")
                        with gr.Row(equal_height=False):
                            with gr.Column(scale=1, min_width=300):
                                measure_image = gr.Image(label="Measurement: contour, box and RANO diameters",
                                                         type="numpy", format="jpeg", interactive=False,
                                                         buttons=["fullscreen"], height=460)
                            with gr.Column(scale=1, min_width=260):
                                measure_table = gr.Markdown("Measurement: upload a slice first.",
                                                            label="Measurements", elem_id="measure-table")
                    with gr.Tab("Uncertainty", id="uncertainty"):
                        with gr.Row(equal_height=False):
                            with gr.Column(scale=3, min_width=300):
                                uncertainty_image = gr.Image(label="U-Net uncertainty (TTA spread)", type="numpy",
                                                             format="jpeg", interactive=False,
                                                             buttons=["fullscreen"], height=480)
                            with gr.Column(scale=2, min_width=240):
                                uncertainty_btn = gr.Button("Uncertainty map (TTA)", variant="primary")
                                uncertainty_info = gr.Markdown("", label="Uncertainty summary")
                    with gr.Tab("K-Means", id="kmeans"):
                        k_slider = gr.Slider(2, 12, value=4, step=1, label="Number of clusters K")
                        with gr.Row(equal_height=False):
                            kmeans_image = gr.Image(label="K-Means clusters", type="numpy", format="jpeg",
                                                    interactive=False, buttons=["fullscreen"])
                            with gr.Column():
                                kmeans_info = gr.Markdown("", label="K-Means summary")
                                sweep_btn = gr.Button("Score K = 2…12 (1–3 s)", size="sm")
                                sweep_info = gr.Markdown("", label="K sweep summary")
                        sweep_plot = gr.Plot(label="K-selection curves")
                    with gr.Tab("Classifier", id="classifier"):
                        with gr.Row(equal_height=False):
                            with gr.Column():
                                class_label = gr.Label(label="Four-class view (calibrated)",
                                                       num_top_classes=4)
                                class_info = gr.Markdown("", label="Classifier summary")
                                gradcam_class = gr.Dropdown(choices=[], value=None,
                                                            label="Heat map (Grad-CAM) of a head's class")
                            gradcam_image = gr.Image(label="Where the classifier looked (Grad-CAM)", type="numpy",
                                                     format="jpeg", interactive=False, buttons=["fullscreen"])
                    with gr.Tab("Export", id="export"):  # short names: every tab fits the row at 1500 px
                        with gr.Row(equal_height=False):
                            with gr.Column():
                                export_which = gr.Radio(choices=mask_choices, value="prompted",
                                                        label="Mask to export (and measure)")
                                export_btn = gr.Button("Export mask (PNG + NIfTI) and JSON report", variant="primary")
                                export_info = gr.Markdown("", label="Export summary")
                                export_files = gr.File(label="Exported files", file_count="multiple",
                                                       interactive=False)
                            with gr.Column():
                                corr_source = gr.Radio(
                                    choices=[("prompted mask (after your clicks)", "prompted"),
                                             ("uploaded mask file", "upload"), ("painted with the brush", "painted")],
                                    value="prompted", label="Corrected mask comes from")
                                corr_file = gr.File(label="Corrected mask file (same size as the slice, white = tumour)",
                                                    file_count="single", type="filepath")
                                with gr.Accordion("Paint the corrected mask (brush)", open=False):
                                    editor_btn = gr.Button("Load the slice into the editor "
                                                           "(the prompted mask's outline is a guide)", size="sm")
                                    editor = gr.ImageEditor(
                                        label="Corrected mask (paint = tumour, erase = not)", type="numpy",
                                        image_mode="RGBA", format="png", sources=(), transforms=(),
                                        brush=gr.Brush(colors=[(V.rgb_css(V.MASK_COLORS[V.PROMPT]), 0.7)],
                                                       color_mode="fixed", default_size=4),
                                        eraser=gr.Eraser(), layers=gr.LayerOptions(allow_additional_layers=False),
                                        height=420)
                                corr_note = gr.Textbox(label="Note (optional, no patient details)", max_lines=2)
                                accept_btn = gr.Button("Accept as correction", variant="primary")
                                correction_info = gr.Markdown("", label="Correction status")
                    with gr.Tab("Volume", id="volume"):
                        with gr.Row(equal_height=False):
                            with gr.Column(scale=2, min_width=260):
                                series_files = gr.File(
                                    label="DICOM series: several files or a zip (else the uploaded NIfTI volume)",
                                    file_count="multiple", type="filepath", height=90)
                                series_choice = gr.Number(value=0, precision=0, minimum=0,
                                                          label="Series number when the files hold several "
                                                                "(0: list them)")
                                vol_btn = gr.Button("Segment the whole volume (U-Net)", variant="primary")
                                prop_btn = gr.Button("Propagate the clicked slice's mask through the series",
                                                     size="sm")
                                volume_which = gr.Radio(choices=[(v, k) for k, v in VP.MASKS.items()], value="unet",
                                                        label="Volume mask shown")
                                volume_info = gr.Markdown("No volume yet: segment one with the button above.",
                                                          label="Volume summary")
                                vol_export_btn = gr.Button("Export the 3-D mask (NIfTI, DICOM SEG) and report",
                                                           size="sm")
                                volume_export_info = gr.Markdown("", label="Volume export summary")
                                volume_files = gr.File(label="Exported volume files", file_count="multiple",
                                                       interactive=False)
                            with gr.Column(scale=3, min_width=300):
                                volume_slice = gr.Slider(1, 2, value=1, step=1, label="Volume slice", visible=False)
                                volume_image = gr.Image(label="Volume slice and its mask", type="numpy",
                                                        format="jpeg", interactive=False, buttons=["fullscreen"])
                                volume_plot = gr.BarPlot(x="slice", y="area (px)", height=220,
                                                         label="Tumour area per slice (drag across it to jump)")

                    with gr.Tab("Synthetic", id="synthetic"):
                        gr.Markdown("Make a **SYNTHETIC** FLAIR-like slice for a tumour shape (the DDIM generator "
                                    "trained on the LGG training patients): for teaching and augmentation "
                                    "experiments, never a patient's image. Everything made here is marked "
                                    "synthetic.", label="Synthetic slices", elem_classes=["hint"])
                        with gr.Row(equal_height=False):
                            with gr.Column(scale=2, min_width=260):
                                syn_source = gr.Radio(choices=[(v, k) for k, v in SP.SOURCES.items()], value="none",
                                                      label="Tumour mask to draw the slice for")
                                syn_draw = gr.ImageEditor(
                                    label="Draw a tumour shape (used with 'the mask drawn below')",
                                    value={"background": np.zeros((SP.LOADED_SIZE, SP.LOADED_SIZE, 3), np.uint8),
                                           "layers": [], "composite": None},
                                    type="numpy", image_mode="RGBA", sources=(), height=280,
                                    brush=gr.Brush(colors=["#ff9900"], color_mode="fixed", default_size=12),
                                    eraser=gr.Eraser(), layers=gr.LayerOptions(allow_additional_layers=False))
                                with gr.Row():
                                    syn_seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                                    syn_steps = gr.Slider(5, 100, value=SP.DEFAULT_STEPS, step=1, label="DDIM steps")
                                syn_btn = gr.Button("Generate a synthetic slice", variant="primary")
                            with gr.Column(scale=3, min_width=300):
                                syn_image = gr.Image(label="SYNTHETIC slice (generated, not a patient)", type="numpy",
                                                     format="png", interactive=False, height=300)
                                syn_info = gr.Markdown("", label="Synthetic slice summary")
                                syn_load = gr.Button("Load it into the other panels (marked SYNTHETIC)", size="sm")

        # ---------------- below: the preprocessing steps, from the registry -----------
        gr.Markdown("### Preprocessing steps (applied in this order; the views and classical tools above follow; the models see the slice as loaded unless the last box is ticked)",
                    label="Preprocessing heading")
        controls = []
        per_row = 4
        names = list(STEPS)
        for start in range(0, len(names), per_row):
            with gr.Row(equal_height=False):
                for name in names[start:start + per_row]:
                    step = STEPS[name]
                    with gr.Column(min_width=220):
                        with gr.Group():
                            cb = gr.Checkbox(value=name in default_steps, label=step.label, info=step.description)
                            controls.append(cb)
                            if step.params:
                                with gr.Accordion(f"{step.label}: parameters", open=False):
                                    for p in step.params:
                                        value = default_steps.get(name, {}).get(p.name, p.default)
                                        controls.append(_param_control(p, value))
                for _ in range(per_row - len(names[start:start + per_row])):
                    gr.Column(min_width=220)  # keep the grid aligned
        # measured (train lab-robustness): intensity steps move the models' answers, so by default the
        # models see the slice they were trained on and the lab feeds the display and the classical tools
        models_see_lab = gr.Checkbox(
            value=False, label="Feed the lab's output to the models",
            info="Off (default): the U-Net, the prompt engine and the classifier see the slice as loaded (through "
                 "the brain crop when ticked), the input they were trained on; the steps above shape the display, "
                 "K-Means, the histogram and the classical segmenters. On: the models see the processed slice "
                 "(the U-Net's Dice can fall, see its line).")

        # ------------------------------------------------------------------
        # wiring
        # ------------------------------------------------------------------
        comp = {
            "status": status, "idx_slice": idx_slice, "idx_volume": idx_volume, "idx_page": idx_page,
            "idx_frame": idx_frame, "idx_channel": idx_channel, "win_center": win_center, "win_width": win_width,
            "before_after": before_after, "pipeline_info": pipeline_info,
            "prompt_image": prompt_image, "prompt_info": prompt_info, "candidates": candidates, "engine": engine,
            "overlay_unet": overlay_unet, "overlay_prompt": overlay_prompt, "overlay_kmeans": overlay_kmeans,
            "compare_info": compare_info, "metrics_table": metrics_table, "area_table": area_table,
            "agreement_image": agreement_image, "agreement_legend": agreement_legend, "unet_info": unet_info,
            "kmeans_image": kmeans_image, "kmeans_info": kmeans_info, "sweep_plot": sweep_plot,
            "sweep_info": sweep_info, "class_label": class_label, "class_info": class_info,
            "gradcam_image": gradcam_image, "gradcam_class": gradcam_class,
            "export_files": export_files, "export_info": export_info, "correction_info": correction_info,
            "upload": upload, "volume_info": volume_info, "volume_image": volume_image, "volume_plot": volume_plot,
            "volume_slice": volume_slice, "volume_which": volume_which, "volume_files": volume_files,
            "volume_export_info": volume_export_info,
            "editor": editor,
            "intensity_plot": intensity_plot, "intensity_info": intensity_info,
            "measure_image": measure_image, "measure_table": measure_table, "measure_which": measure_which,
            "export_which": export_which, "uncertainty_image": uncertainty_image,
            "uncertainty_info": uncertainty_info,
            **{f"overlay_{name}": img for name, img in classical_overlays.items()},
        }
        slice_out = ["status", "idx_slice", "idx_volume", "idx_page", "idx_frame", "idx_channel",
                     "win_center", "win_width"]
        prompt_out = ["prompt_image", "prompt_info", "candidates", "engine"]
        measure_out = ["measure_image", "measure_table", "measure_which", "export_which"]
        compare_out = (["overlay_unet", "overlay_prompt", "overlay_kmeans", "compare_info", "metrics_table",
                        "area_table", "agreement_image", "agreement_legend"]
                       + [f"overlay_{name}" for name in CLASSICAL] + measure_out)
        intensity_out = ["intensity_plot", "intensity_info"]
        uncertainty_out = ["uncertainty_image", "uncertainty_info"]
        every_panel = (["before_after", "pipeline_info"] + prompt_out + compare_out
                       + ["unet_info", "kmeans_image", "kmeans_info", "sweep_plot", "sweep_info", "class_label",
                          "class_info", "gradcam_image", "gradcam_class", "export_files"]
                       + intensity_out + uncertainty_out)

        def wire(trigger, fn, inputs, names, **kw):
            """One event: ``trigger`` (or a list of triggers, through ``gr.on``) runs ``fn(session, *inputs)``."""
            names = list(dict.fromkeys(names))
            outputs = [session] + [comp[n] for n in names]

            def adapt(result):
                s, view = result
                out = {session: s}
                for n in names:
                    if n in view:
                        out[comp[n]] = view[n]
                return out

            kw.setdefault("show_progress", "minimal")
            if isinstance(trigger, list):
                return gr.on(triggers=trigger, fn=lambda *a: adapt(fn(*a)), inputs=[session] + inputs,
                             outputs=outputs, **kw)
            return trigger(lambda *a: adapt(fn(*a)), inputs=[session] + inputs, outputs=outputs, **kw)

        def adapt_prompts(result):
            s, view = result
            out = {session: s}
            for n in prompt_out + compare_out:
                if n in view:
                    out[comp[n]] = view[n]
            return out

        def then_prepare(dep):
            # SAM's image encoder runs here, after the other panels are shown, then the classical segmenters:
            # one chained event, not two (each is a round trip the next upload or click waits behind)
            return dep.then(lambda s: adapt_prompts(H.after_new_image(s, engines)), inputs=[session],
                            outputs=[session] + [comp[n] for n in prompt_out + compare_out],
                            show_progress="hidden", api_name="prepare_prompts", api_visibility="undocumented")

        # 0. a tab opened: draw its panels if they changed while hidden
        for tab in tab_row.children:
            if isinstance(tab, gr.Tab):
                wire(tab.select, lambda s, _t=tab.id: H.show_tab(s, _t, engines), [], list(T.PANELS.get(tab.id, ())),
                     show_progress="hidden", api_name=f"show_{tab.id}", api_visibility="private")

        # 7. engines: refresh what is loaded when a page opens (models load in the background)
        engines_timer = gr.Timer(2.0, active=True)

        def refresh():
            summary, status, choices, loading = H.refresh_engines(engines)
            return summary, status, gr.update(choices=choices), gr.Timer(active=loading)
        for trig in (demo.load, engines_timer.tick):
            trig(refresh, inputs=None, outputs=[engines_line, engines_md, engine, engines_timer],
                 show_progress="hidden", api_visibility="private")

        # 1. the slice
        then_prepare(wire(upload.change, lambda s, f: H.load_file(s, engines, f), [upload],
                          ["upload"] + slice_out + every_panel, api_name="upload_slice"))
        index_inputs = [idx_page, idx_frame, idx_slice, idx_volume, idx_channel]
        for ctl in (idx_page, idx_frame, idx_slice, idx_volume):
            then_prepare(wire(ctl.input, lambda s, *v: H.select_index(s, engines, *v), index_inputs,
                              slice_out + every_panel, trigger_mode="always_last", api_visibility="private"))
        then_prepare(wire(idx_channel.input, lambda s, *v: H.select_index(s, engines, *v), index_inputs,
                          slice_out + every_panel, api_visibility="private"))
        for ctl in (win_center, win_width):
            then_prepare(wire(ctl.input, lambda s, c, w: H.set_window(s, engines, c, w), [win_center, win_width],
                              every_panel, trigger_mode="always_last", api_visibility="private"))
        for trig in (spacing.submit, spacing.blur):
            wire(trig, H.set_spacing, [spacing],
                 ["status", "unet_info", "kmeans_info"] + prompt_out + compare_out, api_visibility="private")

        # 2. preprocessing: any control recomputes everything from the processed image
        def on_pipeline(s, *values):
            return H.set_preprocessing(s, engines, H.spec_from_controls(STEPS, keys, values))

        for ctl in controls:
            trig = ctl.input  # user changes only (dragging, typing, ticking); never our own updates
            then_prepare(wire(trig, on_pipeline, controls, every_panel, trigger_mode="always_last",
                              api_visibility="private"))

        then_prepare(wire(models_see_lab.input, lambda s, on: H.set_models_see_lab(s, engines, on), [models_see_lab],
                          every_panel, api_visibility="private"))

        # 3. prompts
        def on_click(s, m, evt: gr.SelectData):
            return adapt_prompts(H.click(s, engines, evt.index, m))

        # these happen on the Prompts tab: the classical segmenters (which follow the clicks) run when Compare
        # or Measure is opened (H.show_tab), so no chained event follows a click
        prompt_image.select(on_click, inputs=[session, mode],
                            outputs=[session] + [comp[n] for n in prompt_out + compare_out],
                            show_progress="hidden", trigger_mode="multiple",  # never drop a click
                            api_name="click_point")
        wire(undo_btn.click, lambda s: H.undo(s, engines), [], prompt_out + compare_out, api_name="undo_point")
        wire(clear_btn.click, lambda s: H.clear(s, engines), [], prompt_out + compare_out, api_name="clear_points")
        wire(box_btn.click, lambda s, a, b, c, d: H.set_box(s, engines, a, b, c, d),
             [bx0, by0, bx1, by1], prompt_out + compare_out, api_name="set_box")
        then_prepare(wire(engine.input, lambda s, k: H.switch_engine(s, engines, k), [engine],
                          prompt_out + compare_out, api_name="choose_engine"))
        wire(candidates.input, H.pick_candidate, [candidates], prompt_out + compare_out, api_name="pick_candidate")

        # 4. compare, K-Means
        wire(opacity.input, H.set_opacity, [opacity], prompt_out + compare_out, trigger_mode="always_last",
         api_visibility="private")
        wire(threshold.input, lambda s, t: H.set_threshold(s, engines, t), [threshold],
             ["unet_info"] + compare_out + uncertainty_out, trigger_mode="always_last",
         api_name="unet_threshold")
        wire(k_slider.input, H.set_k, [k_slider], ["kmeans_image", "kmeans_info"] + compare_out + intensity_out,
             trigger_mode="always_last", api_name="kmeans_k")

        # 4b. image studies: histogram, classical segmenters, measurement, uncertainty
        wire(hist_scope.input, H.set_histogram_scope, [hist_scope], intensity_out, api_name="intensity_histogram")
        wire([classical_group.input] + [c.input for c in classical_controls],
             lambda s, chosen, *vals: H.set_classical(s, chosen, vals), [classical_group] + classical_controls,
             compare_out, trigger_mode="always_last", show_progress="full", api_name="classical_segmenters")
        wire(measure_which.input, H.choose_mask, [measure_which], measure_out + ["export_files", "export_info"],
             api_name="measure_mask")
        wire(export_which.input, H.choose_mask, [export_which], measure_out + ["export_files", "export_info"],
             api_name="export_mask_choice")
        wire(uncertainty_btn.click, lambda s: H.run_uncertainty(s, engines), [], uncertainty_out,
             show_progress="full", api_name="uncertainty_map")
        wire(sweep_btn.click, H.run_sweep, [], ["sweep_plot", "sweep_info"], show_progress="full", api_name="k_sweep")

        # 5. classifier
        wire(gradcam_class.input, lambda s, c: H.show_gradcam(s, engines, c), [gradcam_class],
             ["class_label", "class_info", "gradcam_image", "gradcam_class"],
         api_name="gradcam")

        # 6. export and corrections
        wire(export_btn.click, lambda s, w: H.export(s, w, engines), [export_which], ["export_files", "export_info"] + measure_out, api_name="export")
        wire(editor_btn.click, H.editor_start, [], ["editor"], api_visibility="private")
        wire(accept_btn.click,
             lambda s, src, f, ed, note: H.accept_correction(s, annotations_dir, src, f, ed, note, max_corrections,
                                                             engines),
             [corr_source, corr_file, editor, corr_note], ["correction_info"],
             api_name="accept_correction")

        # 7. volume mode (slow work: progress bars; the probabilities are not kept)
        vol_out = ["volume_info", "volume_image", "volume_plot", "volume_slice", "volume_which"]

        def vol_segment(s, files, choice, progress=gr.Progress()):
            s, view = VP.segment(s, engines, files, choice, progress)
            return {session: s, **{comp[n]: view[n] for n in vol_out if n in view}}

        def vol_propagate(s, files, choice, progress=gr.Progress()):
            s, view = VP.propagate(s, engines, files, choice, progress)
            return {session: s, **{comp[n]: view[n] for n in vol_out if n in view}}
        vol_outputs = [session] + [comp[n] for n in vol_out]
        vol_btn.click(vol_segment, [session, series_files, series_choice], vol_outputs, api_name="segment_volume",
                      concurrency_id="volume", concurrency_limit=1)
        prop_btn.click(vol_propagate, [session, series_files, series_choice], vol_outputs,
                       api_name="propagate_volume", concurrency_id="volume", concurrency_limit=1)
        wire(volume_slice.input, lambda s, k: VP.show(s, k, None), [volume_slice], vol_out,
             trigger_mode="always_last", api_visibility="private")
        wire(volume_which.input, lambda s, w: VP.show(s, None, w), [volume_which], vol_out, api_visibility="private")

        def vol_jump(s, evt: gr.SelectData):
            s, view = VP.jump(s, evt.index)
            return {session: s, **{comp[n]: view[n] for n in vol_out if n in view}}
        volume_plot.select(vol_jump, [session], vol_outputs, api_visibility="private")
        wire(vol_export_btn.click, lambda s: VP.export(s, engines), [], ["volume_files", "volume_export_info"],
             api_name="export_volume")
        # 8. synthetic slices: generate (progress bar over the DDIM steps), then load like an upload
        def syn_generate(s, src, drawn, seed, steps, progress=gr.Progress()):
            s, view = SP.generate(s, engines, src, drawn, seed, steps, progress)
            return {session: s, **({syn_image: view["synthetic_image"]} if "synthetic_image" in view else {}),
                    **({syn_info: view["synthetic_info"]} if "synthetic_info" in view else {})}
        syn_btn.click(syn_generate, [session, syn_source, syn_draw, syn_seed, syn_steps], [session, syn_image, syn_info],
                      api_name="generate_synthetic", concurrency_id="generator", concurrency_limit=1)
        then_prepare(wire(syn_load.click, lambda s: SP.load(s, engines), [], slice_out + every_panel,
                          api_name="load_synthetic"))
    return demo


def _param_control(p, value):
    """A widget for one ``bt_demo.preprocess.Param``: slider, dropdown or checkbox."""
    kind = getattr(p, "kind", "float")
    label = p.label
    info = getattr(p, "help", None) or None
    if kind == "bool":
        return gr.Checkbox(value=bool(value), label=label, info=info)
    if kind == "choice":
        return gr.Dropdown(choices=list(p.choices), value=value, label=label, info=info)
    step = p.step if p.step is not None else (1 if kind == "int" else (p.max - p.min) / 100.0)
    return gr.Slider(p.min, p.max, value=value, step=step, label=label, info=info)

