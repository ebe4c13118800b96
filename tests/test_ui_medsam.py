"""MedSAM in the app (issue 22 part 2), through the handlers the page calls, on the real LiteMedSAM
checkpoint: offered in the chooser, its embedding off the click path (the switch answers at once and says
it is preparing; the chained prepare computes it), a box answered where it was drawn, the engine named in
the prompt panel, the comparison and the export report, and a click during preparation waiting for it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bt_demo.models import medsam
from bt_demo.models.registry import Engines
from bt_demo.ui import compute as C
from bt_demo.ui.panels import export as EX
from bt_demo.ui.panels import prompts as PR
from bt_demo.ui.panels import upload as UP
from bt_demo.ui.state import Session
from tests.tiny_models import make_weights_dir

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers"),
              pytest.mark.skipif(bool(medsam.checkpoint_status()), reason=medsam.checkpoint_status() or "-")]


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> Engines:
    return Engines(weights_dir=str(make_weights_dir(tmp_path_factory.mktemp("w"))), sam_model="none", device="cpu")


@pytest.fixture(scope="module")
def slice_with_lesion(tmp_path_factory):
    """A non-square synthetic slice: a gray head on black with a bright oval lesion; its mask; its box."""
    h, w = 180, 240
    yy, xx = np.mgrid[:h, :w]
    head = ((yy - 90) / 80.0) ** 2 + ((xx - 120) / 105.0) ** 2 < 1
    lesion = ((yy - 70) / 18.0) ** 2 + ((xx - 150) / 24.0) ** 2 < 1
    rng = np.random.default_rng(0)
    img = np.where(head, 0.35, 0.0) + np.where(lesion, 0.45, 0.0) + rng.normal(0, 0.02, (h, w)) * head
    path = tmp_path_factory.mktemp("slice") / "slice.png"
    Image.fromarray(np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)
    ys, xs = np.nonzero(lesion)
    return path, lesion, (xs.min() - 4, ys.min() - 4, xs.max() + 4, ys.max() + 4)


def _dice(a, b) -> float:
    return 2 * float(np.logical_and(a, b).sum()) / max(1, int(a.sum() + b.sum()))


def test_medsam_is_offered_with_its_citation_and_answers_a_box_where_it_was_drawn(engines, slice_with_lesion):
    path, lesion, box = slice_with_lesion
    assert "medsam" in engines.available_prompt_engines()
    status = {st.key: st for st in engines.statuses()}["medsam"]
    assert status.available and "LiteMedSAM" in status.reason and "Apache-2.0" in status.reason
    s, _ = UP.load_file(Session(), engines, str(path))
    s, _ = C.prepare_prompts(s, engines)
    s, view = PR.switch_engine(s, engines, "medsam")
    # the switch answers without the embedding and says it is preparing; the chained event computes it
    assert s.slot.engine_key == "medsam" and s.slot.image_key is None
    assert "Preparing MedSAM" in view["prompt_info"]
    s, view = C.after_new_image(s, engines)
    assert s.slot.image_key == s.model_input.key
    assert "choose *box*" in view["prompt_info"]
    s, view = PR.set_box(s, engines, box[2], box[3], box[0], box[1])  # corners in any order
    res = s.prompts.result
    assert res.engine == medsam.ENGINE_NAME and res.mask.shape == lesion.shape
    assert _dice(res.mask, lesion) > 0.8
    assert "MedSAM (LiteMedSAM)" in view["prompt_info"] and "Apache-2.0" in view["prompt_info"]
    s, view = EX.export(s, "prompted", engines)
    report = next(Path(f) for f in view["export_files"] if str(f).endswith(".json"))
    rep = json.loads(report.read_text())
    assert rep["prompts"]["engine"] == medsam.ENGINE_NAME, rep["prompts"]
    assert medsam.ENGINE_NAME in json.dumps(rep.get("engines", rep))


def test_a_click_given_while_medsam_prepares_waits_for_it(engines, slice_with_lesion):
    path, lesion, box = slice_with_lesion
    s, _ = UP.load_file(Session(), engines, str(path))
    s, _ = PR.switch_engine(s, engines, "medsam")
    done = threading.Event()

    def prepare():
        C.after_new_image(s, engines)
        done.set()

    t = threading.Thread(target=prepare)
    t.start()
    while s.busy_with is None and not done.is_set():
        time.sleep(0.01)
    t0 = time.perf_counter()
    s2, view = PR.set_box(s, engines, *box)  # heavy: it would be turned away after 1 s, but waits for MedSAM
    t.join()
    assert not any("Still working" in m for m in view.get("_messages", [])), view.get("_messages")
    assert s2.prompts.result is not None and _dice(s2.prompts.result.mask, lesion) > 0.8
    assert time.perf_counter() - t0 < 60
