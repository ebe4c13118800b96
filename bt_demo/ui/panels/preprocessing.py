"""The preprocessing lab: the before/after view and the intensity histogram (left column), and below the columns
the steps from the registry (``bt_demo.image.preprocess.STEPS``) with their parameters, and whether the models
see the lab's output. A change recomputes every panel (:func:`bt_demo.ui.compute.recompute`)."""

from __future__ import annotations

from collections.abc import Sequence

import gradio as gr

from bt_demo.errors import InputError
from bt_demo.ui import compute as C
from bt_demo.ui import views_slice
from bt_demo.ui.kit import EVERY_PANEL, INTENSITY_OUT, Page, handler, param_control
from bt_demo.ui.state import Session


def control_keys(steps) -> list[tuple]:
    """The order of the preprocessing controls :func:`build_steps` builds from the registry.

    ``("enable", step)`` for each step's checkbox, then ``("param", step, param)``
    for each of its parameters. :func:`spec_from_controls` reads values in this order.
    """
    keys = []
    for name, step in steps.items():
        keys.append(("enable", name))
        for p in step.params:
            keys.append(("param", name, p.name))
    return keys


def spec_from_controls(steps, keys: Sequence[tuple], values: Sequence) -> list[tuple[str, dict]]:
    """Checkbox and parameter values -> the pipeline spec ``[(step, params), ...]`` in registry order."""
    if len(keys) != len(values):
        raise ValueError(f"{len(values)} control values for {len(keys)} controls")
    enabled, params = set(), {}
    for key, value in zip(keys, values, strict=True):
        if key[0] == "enable":
            if value:
                enabled.add(key[1])
        else:
            _, step, pname = key
            params.setdefault(step, {})[pname] = value
    spec = []
    for name, step in steps.items():
        if name in enabled:
            pv = {}
            for p in step.params:
                v = params.get(name, {}).get(p.name, p.default)
                if p.kind == "int" and v is not None:
                    v = int(round(float(v)))
                elif p.kind == "float" and v is not None:
                    v = float(v)
                elif p.kind == "bool":
                    v = bool(v)
                pv[p.name] = v
            spec.append((name, pv))
    return spec


@handler("applying the preprocessing", heavy=True)
def set_preprocessing(s: Session, engines, spec: Sequence[tuple[str, dict]]) -> dict:
    """A new pipeline spec (from the step checkboxes and parameter controls); every panel is recomputed.

    Parameters are checked with ``bt_demo.preprocess.validate_params``; a bad
    value is a warning and the previous pipeline stays.
    """
    from bt_demo.image.preprocess import STEPS, validate_params

    clean = []
    for name, params in spec:
        if name not in STEPS:
            raise InputError(f"unknown preprocessing step {name!r}; choose one of {', '.join(STEPS)}")
        checked = validate_params(name, dict(params))
        clean.append((name, dict(checked if isinstance(checked, dict) else params)))
    s.pipeline = clean
    if not s.loaded:
        return {}
    return C.recompute(s, engines, new_image=False)


@handler("changing what the models see", heavy=True)
def set_models_see_lab(s: Session, engines, on: bool) -> dict:
    """Feed the lab's output to the U-Net, the prompt engine and the classifier (on) or the slice they were
    trained on, through the brain crop only (off, the default); every panel is recomputed."""
    s.models_see_lab = bool(on)
    if not s.loaded:
        return {}
    return C.recompute(s, engines, new_image=False)


@handler("drawing the histogram")
def set_histogram_scope(s: Session, scope: str) -> dict:
    """Histogram of the brain only ("brain") or of the whole image ("whole")."""
    if scope not in views_slice.HIST_SCOPES:
        raise InputError(f"choose what the histogram counts: {', '.join(views_slice.HIST_SCOPES)}")
    s.hist_scope = scope
    if not s.loaded:
        return {}
    return views_slice.intensity_view(s)


# ---------------------------------------------------------------------------
# the panels
# ---------------------------------------------------------------------------
def build_view(page: Page) -> None:
    """The before/after slider and the intensity histogram (left column)."""
    # views travel as JPEG: ~2 ms to encode a 512 px view against ~35 ms for PNG (exports stay PNG)
    before_after = gr.ImageSlider(label="Before / after preprocessing (drag the handle)",
                                  type="numpy", format="jpeg", max_height=420, interactive=False)
    pipeline_info = gr.Markdown("", label="Preprocessing summary")
    with gr.Group():
        hist_scope = gr.Radio(choices=[(v, k) for k, v in views_slice.HIST_SCOPES.items()], value="brain",
                              label="Histogram counts")
        intensity_plot = gr.Plot(label="Intensity histogram and CDF, before / after preprocessing")
    intensity_info = gr.Markdown("", label="Intensity summary", elem_classes=["hint"])
    page.add(before_after=before_after, pipeline_info=pipeline_info, intensity_plot=intensity_plot,
             intensity_info=intensity_info)

    page.wire(hist_scope.input, set_histogram_scope, [hist_scope], INTENSITY_OUT, api_name="intensity_histogram")


def build_steps(page: Page, per_row: int = 4) -> list:
    """The steps, ``per_row`` to a row, each a checkbox and its parameters, then "Feed the lab's output to the
    models". Returns the events that bring a new image."""
    from bt_demo.image.preprocess import STEPS, default_pipeline

    eng = page.engines
    default_steps = {name: dict(params) for name, params in default_pipeline()}
    gr.Markdown("### Preprocessing steps (applied in this order; the views and classical tools above follow; the models see the slice as loaded unless the last box is ticked)",
                label="Preprocessing heading")
    controls = []
    names = list(STEPS)
    for start in range(0, len(names), per_row):
        with gr.Row(equal_height=False):
            for name in names[start:start + per_row]:
                step = STEPS[name]
                with gr.Column(min_width=220):
                    with gr.Group():
                        controls.append(gr.Checkbox(value=name in default_steps, label=step.label,
                                                    info=step.description))
                        if step.params:
                            with gr.Accordion(f"{step.label}: parameters", open=False):
                                for p in step.params:
                                    value = default_steps.get(name, {}).get(p.name, p.default)
                                    controls.append(param_control(p, value))
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

    keys = control_keys(STEPS)

    def on_pipeline(s, *values):
        return set_preprocessing(s, eng, spec_from_controls(STEPS, keys, values))

    # .input: user changes only (dragging, typing, ticking); never our own updates
    new_image = [page.wire(ctl.input, on_pipeline, controls, EVERY_PANEL, trigger_mode="always_last",
                           api_visibility="private") for ctl in controls]
    new_image.append(page.wire(models_see_lab.input, lambda s, on: set_models_see_lab(s, eng, on), [models_see_lab],
                               EVERY_PANEL, api_visibility="private"))
    return new_image
