"""The Measure tab: the chosen mask's contour, box and RANO diameters, and its numbers. The chosen mask is
shared with the Export tab (either chooser changes both)."""

from __future__ import annotations

import gradio as gr

from bt_demo.errors import InputError
from bt_demo.ui import compute as C
from bt_demo.ui import views
from bt_demo.ui.kit import MEASURE_OUT, Page, handler
from bt_demo.ui.state import Session


@handler("choosing the mask to measure")
def choose_mask(s: Session, which: str) -> dict:
    """The mask the Measure and Export tabs use (a key of ``compute.MASK_CHOICES``); a classical one is computed
    if needed."""
    if which not in C.MASK_CHOICES:
        raise InputError(f"choose a mask: {', '.join(C.MASK_CHOICES)}")
    s.chosen_mask = which
    # the files of the previous choice leave the export panel: they are not this mask's
    stale = {"export_files": None, "export_info": ""}
    if not s.loaded:
        return {"measure_which": which, "export_which": which, **stale}
    if which in views.CLASSICAL_NAMES:
        C.run_classical(s, [which])
    return views.measure_view(s) | stale


def mask_choices() -> list[tuple[str, str]]:
    """(label, key) of the masks a user can measure and export."""
    return [(name, key) for key, name in views.MASK_KEYS.items()]


def build(page: Page) -> None:
    """The Measure tab's contents."""
    measure_which = gr.Radio(choices=mask_choices(), value="prompted", label="Mask to measure (and export)")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            measure_image = gr.Image(label="Measurement: contour, box and RANO diameters",
                                     type="numpy", format="jpeg", interactive=False,
                                     buttons=["fullscreen"], height=460)
        with gr.Column(scale=1, min_width=260):
            measure_table = gr.Markdown("Measurement: upload a slice first.",
                                        label="Measurements", elem_id="measure-table")
    page.add(measure_which=measure_which, measure_image=measure_image, measure_table=measure_table)

    page.wire(measure_which.input, choose_mask, [measure_which], MEASURE_OUT + ["export_files", "export_info"],
              api_name="measure_mask")
