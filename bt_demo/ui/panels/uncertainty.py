"""The Uncertainty tab: the U-Net's test-time-augmentation spread, on demand."""

from __future__ import annotations

import gradio as gr

from bt_demo.ui import compute as C
from bt_demo.ui import views
from bt_demo.ui.kit import UNCERTAINTY_OUT, Page, engine_or_reason, handler, need_slice, notify
from bt_demo.ui.state import Session


class _AtThreshold:
    """A U-Net engine seen at this session's threshold (``tta_uncertainty`` reads ``threshold``)."""

    def __init__(self, engine, threshold: float):
        self._engine, self.threshold = engine, float(threshold)

    def probabilities(self, image):
        return self._engine.probabilities(image)


@handler("computing the uncertainty map", heavy=True)
def run_uncertainty(s: Session, engines, n: int = 8) -> dict:
    """The U-Net's test-time-augmentation uncertainty on this processed slice (on demand: ``n`` passes).

    Cached until the image or the preprocessing changes; moving the threshold re-summarises it
    without running the network again. An unavailable U-Net is a warning saying why.
    """
    from bt_demo.studies.uncertainty import tta_uncertainty

    need_slice(s)
    C.ensure_models(s, engines)
    unet, reason = engine_or_reason(engines.unet())
    if unet is None:
        s.unet_reason = reason
        view = views.uncertainty_view(s)
        notify(view, f"The uncertainty map needs the U-Net, which is unavailable: {reason}")
        return view
    p = s.model_input
    if s.uncertainty is None or s.uncertainty_key != p.key:
        thr = s.unet_threshold if s.unet_threshold is not None else unet.threshold
        u = tta_uncertainty(_AtThreshold(unet, thr), p.image, n=int(n))
        geo = p.geometry
        u["uncertainty_orig"] = geo.map_to_original(u["uncertainty"], fill=0.0, order=1)
        u["mean_prob_orig"] = geo.map_to_original(u["mean_prob"], fill=0.0, order=1)
        s.uncertainty, s.uncertainty_key = u, p.key
    return views.uncertainty_view(s)


def build(page: Page) -> None:
    """The Uncertainty tab's contents."""
    eng = page.engines
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=300):
            uncertainty_image = gr.Image(label="U-Net uncertainty (TTA spread)", type="numpy",
                                         format="jpeg", interactive=False,
                                         buttons=["fullscreen"], height=480)
        with gr.Column(scale=2, min_width=240):
            uncertainty_btn = gr.Button("Uncertainty map (TTA)", variant="primary")
            uncertainty_info = gr.Markdown("", label="Uncertainty summary")
    page.add(uncertainty_image=uncertainty_image, uncertainty_info=uncertainty_info)

    page.wire(uncertainty_btn.click, lambda s: run_uncertainty(s, eng), [], UNCERTAINTY_OUT,
              show_progress="full", api_name="uncertainty_map")
