"""The Classifier tab: the calibrated four-class view and where the classifier looked (Grad-CAM)."""

from __future__ import annotations

import gradio as gr
import numpy as np

from bt_demo.errors import InputError
from bt_demo.models.classifier import gradcam_choices
from bt_demo.ui import compute as C
from bt_demo.ui import views
from bt_demo.ui.kit import Page, engine_or_reason, handler, need_slice
from bt_demo.ui.state import Session


@handler("computing the heat map")
def show_gradcam(s: Session, engines, class_name) -> dict:
    """Grad-CAM of one head's class: ``class_name`` is 'presence:tumour' or 'type:<tumour type>'."""
    need_slice(s)
    clf, reason = engine_or_reason(engines.classifier())
    if clf is None:
        raise InputError(reason)
    choices = gradcam_choices(clf.type_names)
    if class_name and class_name not in {v for _, v in choices}:
        raise InputError(f"unknown heat map {class_name!r}; choose one of {', '.join(v for _, v in choices)}")
    if s.classification is None or s.classification_key != s.model_input.key:
        C.run_classifier(s, engines)
    s.gradcam_class = class_name or None
    C.run_gradcam(s, clf)
    return views.classifier_view(s)


@handler("computing where the encoder heads looked", heavy=True)
def show_heads_saliency(s: Session, engines) -> dict:
    """The encoder heads' class activation map for the class chosen in the heat-map chooser (one more encoder
    run: a few seconds on a CPU)."""
    from bt_demo.models.classifier import parse_gradcam_choice

    need_slice(s)
    heads, reason = engine_or_reason(engines.encoder_heads())
    if heads is None:
        raise InputError(reason)
    head, cls = parse_gradcam_choice(s.gradcam_class)
    if head not in heads.heads:
        raise InputError(f"the encoder heads have no {head} head; choose another class in the heat-map chooser")
    p = s.model_input
    key = (p.key, s.gradcam_class or "presence:tumour")
    if s.heads_cam is None or s.heads_cam_key != key:
        sal = heads.saliency(p.image, head, None if head == "presence" else cls)
        s.heads_cam = p.geometry.map_to_original(np.asarray(sal, np.float32), fill=0.0, order=1)
        s.heads_cam_key = key
    return views.classifier_view(s)


def build(page: Page) -> None:
    """The Classifier tab's contents."""
    eng = page.engines
    with gr.Row(equal_height=False):
        with gr.Column():
            class_label = gr.Label(label="Four-class view (calibrated)", num_top_classes=4)
            class_info = gr.Markdown("", label="Classifier summary")
            heads_info = gr.Markdown("", label="Heads on the pretrained encoder")
            gradcam_class = gr.Dropdown(choices=[], value=None, label="Heat map (Grad-CAM) of a head's class")
        with gr.Column():
            gradcam_image = gr.Image(label="Where the classifier looked (Grad-CAM)", type="numpy",
                                     format="jpeg", interactive=False, buttons=["fullscreen"])
            heads_cam_btn = gr.Button("Where did the encoder heads look? (class activation map, a few seconds)",
                                      size="sm")
            heads_cam_image = gr.Image(label="Where the encoder heads looked (same class)", type="numpy",
                                       format="jpeg", interactive=False, buttons=["fullscreen"])
    page.add(class_label=class_label, class_info=class_info, gradcam_class=gradcam_class, gradcam_image=gradcam_image,
             heads_info=heads_info, heads_cam_image=heads_cam_image)

    page.wire(gradcam_class.input, lambda s, c: show_gradcam(s, eng, c), [gradcam_class],
              ["class_label", "class_info", "gradcam_image", "gradcam_class", "heads_cam_image"], api_name="gradcam")
    page.wire(heads_cam_btn.click, lambda s: show_heads_saliency(s, eng), [],
              ["heads_cam_image", "heads_info"], api_name="heads_saliency")
