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
    assert "corrective clicks" not in view.get("prompt_info", "")
    ys, xs = np.nonzero(lesion)
    f = s.display_factor
    s, view = PR.click(s, engines, [(xs.mean() + 0.5) * f - 0.5, (ys.mean() + 0.5) * f - 0.5], "positive")
    assert "corrective clicks tend to make its mask worse" in view["prompt_info"]  # it was trained with boxes only


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


def test_volume_propagation_uses_medsam_when_it_answers_the_prompts(engines, tmp_path):
    """Prompts tab on MedSAM, a box on a slice of an uploaded volume, then the Volume tab's propagate: MedSAM
    carries the mask (the neighbour's box), and the result and its settings name it."""
    import nibabel as nib

    from bt_demo.ui.panels import volume as VP

    z, h, w = 4, 72, 88
    yy, xx = np.mgrid[:h, :w]
    head = ((yy - 36) / 32.0) ** 2 + ((xx - 44) / 40.0) ** 2 < 1
    data = np.zeros((w, h, z), np.float32)  # NIfTI order (x, y, z)
    for k in range(z):
        lesion = ((yy - 34) / 10.0) ** 2 + ((xx - 50 - k) / 12.0) ** 2 < 1
        data[..., k] = (np.where(head, 300.0, 0.0) + np.where(lesion, 500.0, 0.0)).T
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 3.0, 1.0])), str(path))
    assert not isinstance(engines.new_predictor("medsam"), str)  # loaded (the page offers it once it is)
    s, _ = UP.load_file(Session(), engines, str(path))
    s, _ = C.prepare_prompts(s, engines)
    s, _ = PR.switch_engine(s, engines, "medsam")
    s, _ = C.after_new_image(s, engines)
    m = s.slice.pixels >= np.percentile(s.slice.pixels, 95)
    ys, xs = np.nonzero(m)
    s, bv = PR.set_box(s, engines, xs.min() - 3, ys.min() - 3, xs.max() + 3, ys.max() + 3)  # original pixels
    assert s.prompts.result is not None and s.prompts.result.engine == medsam.ENGINE_NAME, bv.get("_messages")
    s, view = VP.propagate(s, engines)
    res = s.volume_results["propagated"]
    assert res.engine.startswith(medsam.ENGINE_NAME) and res.settings["prompt"] == "box"
    k = s.slice.index["slice"][0]
    assert np.array_equal(s.volume_masks["propagated"][k], s.prompts.result.mask)
