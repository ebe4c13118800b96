"""Only the tab on screen is sent back; a hidden tab shows the current state as soon as it is opened."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bt_demo.sim.phantom import flair_phantom
from bt_demo.ui import compute as C
from bt_demo.ui.panels import compare as CMP
from bt_demo.ui.panels import prompts as PR
from bt_demo.ui.panels import upload as UP
from bt_demo.ui.state import Session

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers"),
              pytest.mark.usefixtures("one_thread")]



@pytest.fixture(scope="module")
def slice_png(tmp_path_factory):
    img, mask = flair_phantom((128, 128), seed=4)
    path = tmp_path_factory.mktemp("tabs") / "slice.png"
    Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(path)
    ys, xs = np.nonzero(mask)
    return path, (float(xs.mean()), float(ys.mean()))


def on_prompts_tab() -> Session:
    s = Session()
    s.tab = "prompts"  # as the page's gr.State starts
    return s


def display(s, xy):
    f = s.display_factor
    return [round((xy[0] + 0.5) * f - 0.5), round((xy[1] + 0.5) * f - 0.5)]


def test_upload_and_click_send_the_visible_panels_and_opening_a_tab_shows_the_current_masks(engines, slice_png):
    path, centre = slice_png
    s, view = UP.load_file(on_prompts_tab(), engines, str(path))
    # the left column and the Prompts tab travel; the hidden tabs do not
    assert view["prompt_image"] is not None and view["before_after"] is not None and "status" in view
    assert not {"overlay_unet", "metrics_table", "kmeans_image", "class_label", "measure_image"} & set(view)

    s, view = PR.click(s, engines, display(s, centre), "positive")
    assert "1 positive, 0 negative" in view["prompt_info"] and "prompt_image" in view
    assert "metrics_table" not in view and "overlay_prompt" not in view

    # opening Compare shows the Dice table with the prompted mask of the click made while it was hidden
    # (and the U-Net, which waits for the chained after_new_image or for a tab that shows it)
    s, view = C.show_tab(s, "compare", engines)
    pairs = list(view["metrics_table"]["pair"])
    assert "U-Net vs prompted" in pairs and view["overlay_prompt"] is not None
    assert "prompt_image" not in view
    s, again = C.show_tab(s, "compare", engines)  # nothing changed since: nothing is redrawn
    assert again == {}

    # the other hidden tabs are drawn when opened, with this slice's results
    s, view = C.show_tab(s, "classifier", engines)
    assert abs(sum(view["class_label"].values()) - 1) < 1e-4
    s, view = C.show_tab(s, "measure", engines)
    assert "prompted mask" in view["measure_table"]
    s, view = C.show_tab(s, "kmeans", engines)
    assert view["kmeans_image"] is not None

    # back on Prompts: it was drawn after the click and has not changed since
    s, view = C.show_tab(s, "prompts", engines)
    assert view == {}  # nothing happened to the prompts while away


def test_a_change_made_on_another_tab_is_shown_when_prompts_is_opened_again(engines, slice_png):
    path, centre = slice_png
    s, _ = UP.load_file(on_prompts_tab(), engines, str(path))
    s, view = C.after_new_image(s, engines)  # chained after every upload: the models for the hidden tabs
    assert s.unet_result is not None and s.classification is not None and "prompt_image" not in view
    s, _ = C.show_tab(s, "compare", engines)
    s, view = CMP.set_opacity(s, 0.8)  # on Compare: the overlays follow, the hidden prompt image waits
    assert "overlay_unet" in view and "prompt_image" not in view
    s, view = C.show_tab(s, "prompts", engines)
    assert view["prompt_image"] is not None


def test_handler_callers_without_a_tab_get_every_panel(engines, slice_png):
    path, centre = slice_png
    s, view = UP.load_file(Session(), engines, str(path))
    assert {"prompt_image", "overlay_unet", "metrics_table", "kmeans_image", "class_label", "measure_image"} <= set(view)
