"""The Compare tab: the U-Net, prompted and K-Means masks (and the ticked classical segmenters) side by side,
their agreement (Dice, IoU, HD95, areas, a map), the overlay opacity and the U-Net's threshold."""

from __future__ import annotations

from collections.abc import Sequence

import gradio as gr

from bt_demo.errors import InputError
from bt_demo.ui import compute as C
from bt_demo.ui import views
from bt_demo.ui.kit import COMPARE_OUT, PROMPT_OUT, UNCERTAINTY_OUT, Page, handler, param_control
from bt_demo.ui.state import Session


@handler("changing the opacity")
def set_opacity(s: Session, alpha) -> dict:
    """Opacity of the mask overlays, 0..1."""
    a = float(alpha)
    if not 0.0 <= a <= 1.0:
        raise InputError(f"opacity must be between 0 and 1, got {alpha}")
    s.opacity = a
    if not s.loaded:
        return {}
    return C.prompt_and_compare(s)


@handler("re-thresholding the U-Net mask")
def set_threshold(s: Session, engines, threshold) -> dict:
    """Re-threshold the cached U-Net probability map (the network does not run again)."""
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise InputError(f"threshold must be between 0 and 1, got {threshold}")
    s.unet_threshold = t
    if not s.loaded:
        return {}
    C.run_unet(s, engines, rerun=False)
    view = views.unet_view(s)
    view.update(views.compare_view(s))
    view.update(views.uncertainty_view(s))
    return view


def classical_param_keys() -> list[tuple[str, str]]:
    """The order of the classical segmenters' parameter controls :func:`build` makes: ``(segmenter, param)``."""
    from bt_demo.studies.classical_seg import CLASSICAL

    return [(name, p.name) for name, entry in CLASSICAL.items() for p in entry.params]


@handler("running the classical segmenters", heavy=True)
def set_classical(s: Session, chosen, values: Sequence = ()) -> dict:
    """The "Classical segmenters" choice and their parameter controls.

    chosen: keys of ``bt_demo.classical_seg.CLASSICAL`` to show in the comparison (others are hidden).
    values: the parameter controls' values in :func:`classical_param_keys` order (empty: keep the
    current parameters). A value out of its range is a warning and nothing changes.
    The chosen segmenters run now (watershed ~0.1 s, each snake 0.3–0.7 s on a 256² slice).
    """
    from bt_demo.studies.classical_seg import CLASSICAL, validate_classical_params

    chosen = [c for c in (chosen or [])]
    unknown = [c for c in chosen if c not in CLASSICAL]
    if unknown:
        raise InputError(f"unknown classical segmenter {unknown[0]!r}; choose from {', '.join(CLASSICAL)}")
    params = {name: dict(p) for name, p in s.classical_params.items()}
    if values:
        keys = classical_param_keys()
        if len(values) != len(keys):
            raise ValueError(f"{len(values)} parameter values for {len(keys)} controls")
        given: dict[str, dict] = {}
        for (name, pname), v in zip(keys, values, strict=True):
            given.setdefault(name, {})[pname] = v
        for name, p in given.items():
            params[name] = validate_classical_params(name, p)
    s.classical_params = params
    s.classical_on = tuple(name for name in CLASSICAL if name in chosen)
    if not s.loaded:
        return {}
    C.run_classical(s, views.stale_classical(s))
    return views.compare_view(s)


# ---------------------------------------------------------------------------
# the panel
# ---------------------------------------------------------------------------
def _overlay(label: str, **kw):
    return gr.Image(label=label, type="numpy", format="jpeg", interactive=False, buttons=["fullscreen"], **kw)


def build(page: Page) -> None:
    """The Compare tab's contents."""
    from bt_demo.studies.classical_seg import CLASSICAL

    eng = page.engines
    with gr.Row():
        page.add(overlay_unet=_overlay("U-Net (automatic)"), overlay_prompt=_overlay("Prompted mask"),
                 overlay_kmeans=_overlay("K-Means candidate"))
    with gr.Row():
        page.add(**{f"overlay_{name}": _overlay(views.CLASSICAL_TITLES[name], visible=False) for name in CLASSICAL})
    compare_info = gr.HTML("", label="Mask colours", elem_classes=["legend"])
    with gr.Row():
        opacity = gr.Slider(0, 1, value=0.4, step=0.05, label="Overlay opacity")
        # from the U-Net's config: building the page loads no model
        threshold = gr.Slider(0.05, 0.95, value=eng.unet_threshold(), step=0.01, label="U-Net probability threshold")
    classical_group = gr.CheckboxGroup(
        choices=[(CLASSICAL[k].label, k) for k in CLASSICAL], value=[],
        label="Classical segmenters beside the models",
        info="Computed when ticked (watershed ~0.1 s, each snake ~0.3–0.7 s); they start from "
             "your clicks, or without clicks from the brightest K-Means cluster.")
    classical_controls = []
    with gr.Accordion("Classical segmenters: parameters", open=False):
        with gr.Row(equal_height=False):
            for entry in CLASSICAL.values():
                with gr.Column(min_width=200):
                    gr.Markdown(f"**{entry.label}**: {entry.description}",
                                label=f"{entry.label} description", elem_classes=["hint"])
                    classical_controls += [param_control(prm, prm.default) for prm in entry.params]
    unet_info = gr.Markdown("", label="U-Net summary")
    metrics_table = gr.Dataframe(label="Agreement between masks (Dice, IoU, HD95)", interactive=False, wrap=True)
    area_table = gr.Dataframe(label="Mask areas", interactive=False)
    with gr.Row(equal_height=False):
        agreement_image = _overlay("Agreement map", scale=3, min_width=240)
        agreement_legend = gr.HTML("", label="Agreement legend", elem_classes=["legend"], scale=2, min_width=160)
    page.add(compare_info=compare_info, unet_info=unet_info, metrics_table=metrics_table, area_table=area_table,
             agreement_image=agreement_image, agreement_legend=agreement_legend)

    page.wire(opacity.input, set_opacity, [opacity], PROMPT_OUT + COMPARE_OUT, trigger_mode="always_last",
              api_visibility="private")
    page.wire(threshold.input, lambda s, t: set_threshold(s, eng, t), [threshold],
              ["unet_info"] + COMPARE_OUT + UNCERTAINTY_OUT, trigger_mode="always_last", api_name="unet_threshold")
    page.wire([classical_group.input] + [c.input for c in classical_controls],
              lambda s, chosen, *vals: set_classical(s, chosen, vals), [classical_group] + classical_controls,
              COMPARE_OUT, trigger_mode="always_last", show_progress="full", api_name="classical_segmenters")
