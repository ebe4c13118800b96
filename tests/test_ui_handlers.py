"""The UI's event handlers, called directly (no browser), with tiny models loaded the app's way.

Every event of the page is exercised: upload (PNG, DICOM, NIfTI + slice
slider), preprocessing toggles and parameters, clicks (+/−), undo, clear, box,
engine switch, SAM-style candidates (a fake predictor), U-Net threshold, K,
K sweep, classifier + Grad-CAM, export, correction store, a corrupt upload,
an empty weights folder, and two sessions interleaving without crosstalk.
"""

from __future__ import annotations

import copy
import json
import threading
import warnings
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from bt_demo.models.base import NoImageError, SegResult
from bt_demo.models.registry import Engines
from bt_demo.sim.phantom import flair_phantom, write_examples
from bt_demo.ui import compute as C
from bt_demo.ui import kit as KIT
from bt_demo.ui import views as V
from bt_demo.ui import views_slice as VS
from bt_demo.ui.panels import classifier as CL
from bt_demo.ui.panels import compare as CMP
from bt_demo.ui.panels import engines as EN
from bt_demo.ui.panels import export as EX
from bt_demo.ui.panels import kmeans as KM
from bt_demo.ui.panels import preprocessing as PP
from bt_demo.ui.panels import prompts as PR
from bt_demo.ui.panels import upload as UP
from bt_demo.ui.state import PredictorSlot, Session
from tests.tiny_models import make_weights_dir

SIDE = 160

# gr.Warning / gr.Info outside a running app only print or warn; the tests read view["_messages"] instead
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers"),
              pytest.mark.usefixtures("one_thread")]


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_weights_dir(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def engines(weights) -> Engines:
    return Engines(weights_dir=str(weights), sam_model="none", device="cpu")


@pytest.fixture(scope="module")
def empty_engines(tmp_path_factory) -> Engines:
    return Engines(weights_dir=str(tmp_path_factory.mktemp("empty_weights")), sam_model="none", device="cpu")


def _png(path: Path, img: np.ndarray) -> Path:
    Image.fromarray(np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def _deepest(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the lesion pixel farthest from its border."""
    from scipy import ndimage

    d = ndimage.distance_transform_edt(mask)
    y, x = np.unravel_index(int(np.argmax(d)), d.shape)
    return float(x), float(y)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A PNG phantom, its lesion mask, and the (x, y) of the lesion's centre."""
    folder = tmp_path_factory.mktemp("phantom")
    img, mask = flair_phantom((SIDE, SIDE), seed=0)
    return _png(folder / "patient_smith_john.png", img), mask, _deepest(mask)


@pytest.fixture(scope="module")
def phantom2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantom2")
    img, mask = flair_phantom((SIDE, SIDE + 24), seed=2, lesion_kind="cystic")
    return _png(folder / "second.png", img), mask, _deepest(mask)


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("examples")
    write_examples(folder)
    return folder


def to_display(s: Session, xy) -> list[float]:
    """Original (x, y) -> what Gradio's SelectData.index would say on the displayed image."""
    f = s.display_factor
    return [round((xy[0] + 0.5) * f - 0.5), round((xy[1] + 0.5) * f - 0.5)]


def loaded(engines, path) -> Session:
    s, view = UP.load_file(Session(), engines, str(path))
    assert not view.get("_messages"), view.get("_messages")
    s, _ = C.prepare_prompts(s, engines)
    return s


def messages(view) -> str:
    return " | ".join(view.get("_messages", []))


# ---------------------------------------------------------------------------
# upload and the slice
# ---------------------------------------------------------------------------
def test_upload_png_fills_every_panel(engines, phantom):
    path, mask, _ = phantom
    s, view = UP.load_file(Session(), engines, str(path))
    assert not view.get("_messages")
    assert s.loaded and s.slice.shape == (SIDE, SIDE) and s.slice.source == "png"
    for key in ("before_after", "prompt_image", "overlay_unet", "overlay_prompt", "overlay_kmeans",
                "agreement_image", "metrics_table", "area_table", "kmeans_image", "class_label", "gradcam_image"):
        assert view.get(key) is not None, key
    before, after = view["before_after"]
    assert before.shape == after.shape == (SIDE, SIDE, 3)
    f = int(s.display_factor)
    assert view["prompt_image"].shape == (SIDE * f, SIDE * f, 3)
    assert s.unet_result.mask.shape == (SIDE, SIDE) and s.kmeans_mask.shape == (SIDE, SIDE)
    assert s.gradcam.shape == (SIDE, SIDE)
    # U-Net and K-Means are there, the prompted mask is not yet: one pair in the Dice table
    assert list(view["metrics_table"]["pair"]) == ["U-Net vs K-Means"]
    assert abs(sum(view["class_label"].values()) - 1) < 1e-4
    assert "PNG" in view["status"] and "160 × 160" in view["status"]
    assert view["idx_slice"]["visible"] is False
    assert s.slot.engine_key == "clicks" and s.slot.image_key == s.model_input.key


def test_upload_dicom_uses_its_spacing(engines, examples):
    s, view = UP.load_file(Session(), engines, str(examples / "phantom_flair.dcm"))
    assert not view.get("_messages")
    assert s.slice.source == "dicom" and s.effective_spacing() == pytest.approx((0.9, 0.9))
    assert "0.9 × 0.9 mm" in view["status"]
    areas = view["area_table"]
    assert all(v != "—" for v in areas["area (mm²)"])
    # the window sliders start at the DICOM's window
    assert view["win_center"]["value"] == pytest.approx(s.slice.window[0])


def test_nifti_slice_slider(engines, examples):
    s, view = UP.load_file(Session(), engines, str(examples / "phantom_volume.nii.gz"))
    assert not view.get("_messages")
    chosen, count = s.slice.index["slice"]
    assert view["idx_slice"]["visible"] is True and view["idx_slice"]["maximum"] == count == 24
    assert view["idx_slice"]["value"] == chosen + 1
    s, _ = PR.click(s, engines, [10, 10], "positive")
    window = s.window
    s, view = UP.select_index(s, engines, None, None, 3, None, None)
    assert not view.get("_messages")
    assert s.slice.index["slice"] == (2, 24)
    assert view["idx_slice"]["value"] == 3
    assert s.prompts.points == () and s.window == window  # new image: prompts cleared, window kept


def test_window_and_spacing(engines, phantom):
    path, _, _ = phantom
    s = loaded(engines, path)
    key = s.processed.key
    s, view = UP.set_window(s, engines, 100, 120)
    assert s.window == (100.0, 120.0) and s.processed.key != key
    s, view = UP.set_window(s, engines, 100, 0)
    assert "width" in messages(view) and s.window == (100.0, 120.0)
    assert s.effective_spacing() is None
    s, view = UP.set_spacing(s, 0.5)
    assert s.effective_spacing() == (0.5, 0.5)
    assert all(v != "—" for v in view["area_table"]["area (mm²)"])
    s, view = UP.set_spacing(s, -3)
    assert messages(view) and s.spacing_mm == 0.5


# ---------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------
def test_step_toggle_and_param_change(engines, phantom):
    from bt_demo.image.preprocess import STEPS, default_pipeline

    path, _, _ = phantom
    s = loaded(engines, path)
    keys = PP.control_keys(STEPS)
    default = {n: p for n, p in default_pipeline()}
    values = []
    for key in keys:
        if key[0] == "enable":
            values.append(key[1] in default)
        else:
            _, step, pname = key
            p = next(p for p in STEPS[step].params if p.name == pname)
            values.append(default.get(step, {}).get(pname, p.default))
    spec = PP.spec_from_controls(STEPS, keys, values)
    assert [n for n, _ in spec] == [n for n, _ in default_pipeline()]

    # toggle a step that is off by default on (or one that is on, off)
    toggled = next(i for i, k in enumerate(keys) if k[0] == "enable")
    values2 = list(values)
    values2[toggled] = not values2[toggled]
    key0 = s.processed.key
    s, view = PP.set_preprocessing(s, engines, PP.spec_from_controls(STEPS, keys, values2))
    assert not view.get("_messages"), messages(view)
    assert s.processed.key != key0 and "before_after" in view and "metrics_table" in view

    # change a numeric parameter of an enabled step
    s, view = PP.set_preprocessing(s, engines, PP.spec_from_controls(STEPS, keys, values))
    key1 = s.processed.key
    numeric = [(i, k) for i, k in enumerate(keys) if k[0] == "param" and k[1] in default
               and next(p for p in STEPS[k[1]].params if p.name == k[2]).kind in ("float", "int")]
    assert numeric, "the default pipeline has a numeric parameter"
    i, (_, step, pname) = numeric[0]
    p = next(p for p in STEPS[step].params if p.name == pname)
    values3 = list(values)
    values3[i] = p.max if values[i] != p.max else p.min
    s, view = PP.set_preprocessing(s, engines, PP.spec_from_controls(STEPS, keys, values3))
    assert not view.get("_messages"), messages(view)
    assert s.processed.key != key1
    assert dict(s.pipeline)[step][pname] == pytest.approx(values3[i])

    # an out-of-range value is refused and the pipeline stays
    before = list(s.pipeline)
    bad = [(step, {**dict(s.pipeline)[step], pname: p.max * 10 + 10})]
    s, view = PP.set_preprocessing(s, engines, bad)
    assert messages(view) and s.pipeline == before


def test_lab_steps_reach_the_models_only_when_asked(engines, phantom):
    """Issue 13: ticking skull stripping + CLAHE changes the display and K-Means but not the U-Net's mask, the
    click model's answer or the classifier, which see the slice they were trained on; the checkbox 'Feed the
    lab's output to the models' gives them the processed slice, and the export says which input they saw."""
    from bt_demo.image.preprocess import validate_params

    path, _, (cx, cy) = phantom
    s = loaded(engines, path)
    s, _ = PR.click(s, engines, to_display(s, (cx, cy)), "positive")
    s, _ = PP.set_preprocessing(s, engines, [])
    raw = (s.unet_prob.copy(), s.prompts.result.mask.copy(), s.classification)
    lab = [(n, validate_params(n, None)) for n in ("skull_strip", "clahe")]
    s, view = PP.set_preprocessing(s, engines, lab)
    assert s.model_input is not s.processed and s.model_input.steps == ()
    assert not np.array_equal(s.processed.image, s.model_input.image)  # the display did change
    assert np.array_equal(s.unet_prob, raw[0]) and np.array_equal(s.prompts.result.mask, raw[1])
    assert s.classification is raw[2]  # cached: its input did not change
    assert "trained on" in view["pipeline_info"]
    s, view = PP.set_models_see_lab(s, engines, True)
    assert s.model_input is s.processed and s.unet_prob_key == s.processed.key
    assert not np.array_equal(s.unet_prob, raw[0])
    assert "as you asked" in view["pipeline_info"]
    assert EX._settings_record(s)["models_saw"] == "the preprocessing lab's output"
    s, _ = PP.set_models_see_lab(s, engines, False)
    assert np.array_equal(s.unet_prob, raw[0]) and "trained on" in EX._settings_record(s)["models_saw"]


# ---------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------
def test_display_to_original_round_trip():
    for f in (1.0, 2.0, 4.0):
        for x, y in ((0, 0), (10, 37), (159, 159)):
            d = [(x + 0.5) * f - 0.5, (y + 0.5) * f - 0.5]
            assert KIT.display_to_original(d, f, (160, 160)) == pytest.approx((x, y))
    assert KIT.display_to_original([10_000, -5], 2.0, (100, 80)) == (79.0, 0.0)


def test_crop_to_brain_keeps_everything_in_slice_pixels(engines, phantom):
    path, mask, (cx, cy) = phantom
    s = loaded(engines, path)
    s, _ = PR.click(s, engines, to_display(s, (cx, cy)), "positive")
    spec = [("crop_brain", {"margin": 2})] + list(s.pipeline)
    s, view = PP.set_preprocessing(s, engines, spec)
    s, view2 = C.prepare_prompts(s, engines)
    geo = s.processed.geometry
    assert not geo.is_identity and s.processed.image.shape != (SIDE, SIDE)
    # the click stays where it was, and is answered again on the cropped image
    assert s.prompts.points[0] == pytest.approx((cx, cy), abs=0.5)
    assert s.prompts.result is not None and s.prompts.image_key == s.model_input.key
    assert s.model_input.geometry.crop == geo.crop  # the models get the same crop, without the intensity steps
    for m in (s.unet_result.mask, s.kmeans_mask, s.prompts.result.mask, s.gradcam):
        assert m.shape == (SIDE, SIDE)
    assert view["before_after"][1].shape == (SIDE, SIDE, 3)
    assert "crop" in view["pipeline_info"]
    # outside the crop the processed view is black: the slice's frame is kept
    y0, x0, y1, x1 = geo.crop
    if y0 > 0:
        assert view["before_after"][1][: y0].max() == 0


def test_large_slice_is_shown_shrunk_and_clicks_map_back(engines, tmp_path, monkeypatch):
    """Slices longer than views.MAX_DISPLAY_SIDE are sent shrunk (here the limit is lowered to keep this fast)."""
    import cv2

    monkeypatch.setattr(V, "MAX_DISPLAY_SIDE", 300)
    small, small_mask = flair_phantom((SIDE, SIDE), seed=3)
    img = cv2.resize(small, (380, 400), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(small_mask.astype(np.uint8), (380, 400), interpolation=cv2.INTER_NEAREST) > 0
    path = _png(tmp_path / "big.png", img)
    s, view = UP.load_file(Session(), engines, str(path))
    assert s.display_factor == pytest.approx(300 / 400)
    assert max(view["prompt_image"].shape[:2]) == 300 and max(view["overlay_unet"].shape[:2]) == 300
    x, y = _deepest(mask)
    s, view = PR.click(s, engines, to_display(s, (x, y)), "positive")
    assert s.prompts.points[0] == pytest.approx((x, y), abs=1.5)
    assert s.prompts.result.mask.shape == (400, 380)


def test_click_positive_negative_undo_clear(engines, phantom):
    path, mask, (cx, cy) = phantom
    s = loaded(engines, path)
    s, view = PR.click(s, engines, to_display(s, (cx, cy)), "positive")
    assert not view.get("_messages"), messages(view)
    assert s.prompts.points[0] == pytest.approx((cx, cy), abs=0.5) and s.prompts.labels == (1,)
    res = s.prompts.result
    assert res is not None and res.mask.shape == (SIDE, SIDE) and res.engine == "click model"
    assert "pair" in view["metrics_table"] and len(view["metrics_table"]) == 3  # 3 masks -> 3 pairs
    assert "1 positive, 0 negative" in view["prompt_info"]
    s, view = PR.click(s, engines, to_display(s, (5, 5)), "negative")
    assert s.prompts.labels == (1, 0) and len(s.history) == 2
    s, view = PR.undo(s, engines)
    assert s.prompts.labels == (1,) and s.prompts.result is res  # restored, not recomputed
    s, view = PR.clear(s, engines)
    assert s.prompts.empty() and s.prompts.result is None and s.history == ()
    assert len(view["metrics_table"]) == 1
    s, view = PR.undo(s, engines)
    assert "nothing to undo" in messages(view)


def test_box_by_two_clicks_and_by_numbers(engines, phantom):
    path, mask, (cx, cy) = phantom
    s = loaded(engines, path)
    ys, xs = np.nonzero(mask)
    s, view = PR.click(s, engines, to_display(s, (xs.min() - 2, ys.min() - 2)), "box")
    assert s.box_anchor is not None and s.prompts.box is None and "first corner" in view["prompt_info"]
    s, view = PR.click(s, engines, to_display(s, (xs.max() + 2, ys.max() + 2)), "box")
    assert s.box_anchor is None
    assert s.prompts.box == pytest.approx((xs.min() - 2, ys.min() - 2, xs.max() + 2, ys.max() + 2), abs=0.5)
    assert s.prompts.result is not None
    # the mask stays inside the box (give or take the engine's resampling)
    x0, y0, x1, y1 = (int(round(v)) for v in s.prompts.box)
    outside = s.prompts.result.mask.copy()
    outside[max(y0 - 3, 0):y1 + 4, max(x0 - 3, 0):x1 + 4] = False
    assert not outside.any()
    s, view = PR.set_box(s, engines, 40, 30, 10, 5)  # corners in any order
    assert s.prompts.box == (10.0, 5.0, 40.0, 30.0)
    s, view = PR.set_box(s, engines, 10, 10, 10, 50)
    assert "box" in messages(view) and s.prompts.box == (10.0, 5.0, 40.0, 30.0)


def test_engine_switch_random_walker_finds_the_lesion(engines, phantom):
    from bt_demo.studies.metrics import dice

    path, mask, (cx, cy) = phantom
    s = loaded(engines, path)
    s, view = PR.click(s, engines, to_display(s, (cx, cy)), "positive")
    s, view = PR.switch_engine(s, engines, "random_walker")
    assert not view.get("_messages"), messages(view)
    assert s.slot.engine_key == "random_walker"
    res = s.prompts.result
    assert res.engine == "random walker (classical)" and "random walker" in view["prompt_info"]
    assert res.mask[int(cy), int(cx)]
    assert dice(res.mask, mask) > 0.5
    s, view = PR.switch_engine(s, engines, "sam")  # disabled with --sam-model none
    assert "SAM unavailable" in messages(view) and s.slot.engine_key == "random_walker"
    assert view["engine"] == "random_walker"  # the chooser goes back to the engine in use


class FakeSam:
    """A SAM-shaped predictor: three candidate discs around the first point, middle one scored best."""

    name = "SAM (fake)"

    def __init__(self):
        self.shape = None
        self.set_calls = 0

    def set_image(self, image, geometry=None, key=None):
        self.shape = tuple(geometry.original_shape) if geometry is not None else image.shape
        self.set_calls += 1

    def predict(self, points, labels, box=None, previous=None, multimask=True):
        if self.shape is None:
            raise NoImageError(self.name)
        if not len(points) and box is None:
            raise ValueError("add a point or a box first")
        x, y = points[0]
        yy, xx = np.mgrid[:self.shape[0], :self.shape[1]]
        d2 = (xx - x) ** 2 + (yy - y) ** 2
        cands = tuple(d2 <= r * r for r in (4, 9, 16))
        scores = (0.5, 0.9, 0.7)
        return SegResult(cands[1], self.name, 0.001, candidates=cands, scores=scores, chosen=1)


class SamFakeEngines(Engines):
    def new_predictor(self, key, **kw):
        if key == "sam":
            return FakeSam()
        return super().new_predictor(key, **kw)


def test_sam_candidates_and_deferred_set_image(weights, phantom):
    eng = SamFakeEngines(weights_dir=str(weights), sam_model="none", device="cpu")
    assert eng.default_prompt_engine() == "sam"
    path, _, (cx, cy) = phantom
    s, view = UP.load_file(Session(), eng, str(path))
    # SAM's set_image is left to the chained prepare_prompts, so the panels come first
    assert s.slot.engine_key == "sam" and s.slot.image_key is None
    assert "Preparing" in view["prompt_info"]
    s, view = C.prepare_prompts(s, eng)
    assert s.slot.image_key == s.model_input.key and s.slot.predictor.set_calls == 1
    s, view = PR.click(s, eng, to_display(s, (cx, cy)), "positive")
    upd = view["candidates"]
    assert upd["visible"] is True and len(upd["choices"]) == 3 and upd["value"] == 1
    assert "0.90" in upd["choices"][1][0]
    s, view = PR.pick_candidate(s, 2)
    assert s.prompts.result.chosen == 2
    assert np.array_equal(s.prompts.result.mask, s.prompts.result.candidates[2])
    s, view = PR.pick_candidate(s, 7)
    assert messages(view) and s.prompts.result.chosen == 2
    # a click does not run set_image again for the same image
    s, view = PR.click(s, eng, to_display(s, (cx + 3, cy)), "positive")
    assert s.slot.predictor.set_calls == 1


# ---------------------------------------------------------------------------
# U-Net threshold, K-Means, classifier
# ---------------------------------------------------------------------------
def test_threshold_rethresholds_the_cached_map(engines, phantom, monkeypatch):
    from bt_demo.models.unet import UNetEngine

    path, _, _ = phantom
    s = loaded(engines, path)
    calls = []
    real = UNetEngine.probabilities
    monkeypatch.setattr(UNetEngine, "probabilities", lambda self, im: calls.append(1) or real(self, im))
    areas = []
    for t in (0.2, 0.5, 0.8):
        s, view = CMP.set_threshold(s, engines, t)
        assert not view.get("_messages")
        assert s.unet_result.extra["threshold"] == t and f"{t:.2f}" in view["unet_info"]
        areas.append(int(s.unet_result.mask.sum()))
    assert calls == []  # the network did not run again
    assert areas[0] >= areas[1] >= areas[2]
    s, view = CMP.set_threshold(s, engines, 1.5)
    assert messages(view) and s.unet_threshold == 0.8


def test_k_change_and_sweep(engines, phantom):
    path, _, _ = phantom
    s = loaded(engines, path)
    s, view = KM.set_k(s, 6)
    assert s.kmeans.k == 6 and "K = 6" in view["kmeans_info"] and "overlay_kmeans" in view
    s, view = KM.set_k(s, 20)
    assert messages(view) and s.kmeans_k == 6
    assert s.sweep is None
    s, view = KM.run_sweep(s)
    assert not view.get("_messages"), messages(view)
    assert view["sweep_plot"] is not None and hasattr(view["sweep_plot"], "to_plotly_json")
    sweep = s.sweep
    s, view = KM.run_sweep(s)
    assert s.sweep is sweep  # cached for the same image


def test_classifier_and_gradcam(engines, phantom):
    path, _, _ = phantom
    s = loaded(engines, path)
    cr = s.classification
    assert set(cr.probabilities) == set(engines.classifier().class_names)
    info = V.classifier_view(s)["class_info"]
    assert "Is there a tumour?" in info and "Which type" in info and "P(no tumour) = 1 − P(tumour)" in info
    assert "Unlike the training data" not in info  # a PNG says nothing against it
    assert s.gradcam_class is None and V.classifier_view(s)["gradcam_class"]["value"] == "presence:tumour"
    other = "type:meningioma"
    s, view = CL.show_gradcam(s, engines, other)
    assert s.gradcam_class == other and s.gradcam.shape == (SIDE, SIDE)
    assert view["gradcam_image"].shape == (SIDE, SIDE, 3)
    assert view["gradcam_class"]["value"] == other
    assert ("tumour (presence head)", "presence:tumour") in view["gradcam_class"]["choices"]
    s, view = CL.show_gradcam(s, engines, "banana")
    assert "banana" in messages(view) and s.gradcam_class == other


def test_classifier_says_when_the_slice_is_unlike_its_training_data(engines):
    """A CT (pydicom's bundled CT_small.dcm) gets its numbers with a notice that they do not apply."""
    from pydicom.data import get_testdata_file

    from bt_demo.models.classifier import domain_notices

    s = loaded(engines, get_testdata_file("CT_small.dcm"))
    info = V.classifier_view(s)["class_info"]
    assert "Unlike the training data" in info and "CT image" in info and "brain MRI only" in info
    assert "CT image" in VS.slice_info(s)  # the status line says it too
    assert domain_notices({"modality": "MR", "body_part": "BRAIN"}) == ()
    assert domain_notices({"modality": "MR"}) == ()
    assert "body part is ABDOMEN" in domain_notices({"modality": "MR", "body_part": "ABDOMEN"})[0]
    assert "segmentation object" in domain_notices({"modality": "SEG"})[0]


# ---------------------------------------------------------------------------
# export and corrections
# ---------------------------------------------------------------------------
def test_export_files_are_valid_and_randomly_named(engines, phantom):
    import nibabel as nib

    from bt_demo.io import load_slice

    path, _, (cx, cy) = phantom
    s = loaded(engines, path)
    s, view = EX.export(s, "prompted")
    assert "no prompted mask" in messages(view)
    s, _ = PR.click(s, engines, to_display(s, (cx, cy)), "positive")
    s, view = EX.export(s, "prompted")
    assert not view.get("_messages"), messages(view)
    files = [Path(f) for f in view["export_files"]]
    assert len(files) == 3 and all(f.is_file() and f.parent == Path(s.workdir) for f in files)
    assert not any("smith" in f.name or "patient" in f.name for f in files)
    png = next(f for f in files if f.suffix == ".png")
    assert np.array_equal(np.asarray(Image.open(png)) > 0, s.prompts.result.mask)
    nii = next(f for f in files if f.name.endswith(".nii.gz"))
    assert nib.load(str(nii)).shape[:2] == (SIDE, SIDE)
    assert np.array_equal(load_slice(nii).pixels > 0, s.prompts.result.mask)
    rep = json.loads(next(f for f in files if f.suffix == ".json").read_text())
    assert rep["prompts"]["labels"] == [1] and rep["extra"]["exported_mask"] == "prompted"
    assert "smith" not in json.dumps(rep)
    s, view2 = EX.export(s, "unet")
    assert set(view2["export_files"]).isdisjoint(view["export_files"])
    # only the latest export stays in the session's folder: exporting all day does not fill the disk
    assert not any(f.exists() for f in files) and {str(p) for p in Path(s.workdir).iterdir()} == set(view2["export_files"])
    workdir = s.workdir
    s.close()
    assert not Path(workdir).exists()


def test_accept_correction_is_stored_without_file_name(engines, phantom, tmp_path):
    from bt_demo.io.corrections import CorrectionStore

    path, mask, (cx, cy) = phantom
    root = tmp_path / "store"
    s = loaded(engines, path)
    s, view = EX.accept_correction(s, str(root), "prompted")
    assert "no prompted mask" in messages(view)
    s, _ = PR.click(s, engines, to_display(s, (cx, cy)), "positive")
    s, view = EX.accept_correction(s, str(root), "prompted", note="left frontal, checked")
    rid = view["_record_id"]
    assert rid in view["correction_info"]
    store = CorrectionStore(root)
    assert store.ids() == [rid]
    rec = store.load(rid)
    assert np.array_equal(rec.corrected_mask, s.prompts.result.mask)
    assert rec.model_mask is not None and np.array_equal(rec.model_mask, s.unet_result.mask)
    text = " ".join(p.read_text() for p in (root / rid).glob("*.json"))
    assert "smith" not in text and "patient" not in text.lower() and str(path.parent) not in text
    # an uploaded corrected mask (the phantom's ground truth)
    mpath = tmp_path / "gt.png"
    Image.fromarray(mask.astype(np.uint8) * 255).save(mpath)
    s, view = EX.accept_correction(s, str(root), "upload", str(mpath))
    assert np.array_equal(store.load(view["_record_id"]).corrected_mask, mask)
    # wrong size -> a message, nothing stored
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "small.png")
    s, view = EX.accept_correction(s, str(root), "upload", str(tmp_path / "small.png"))
    assert "30 × 20" in messages(view) and len(store.ids()) == 2
    # a painted brush layer (ImageEditor value), after loading the slice into the editor
    s, view = EX.editor_start(s)
    assert view["editor"]["background"].shape == (SIDE, SIDE, 3) and view["editor"]["layers"] == []
    s, view = EX.accept_correction(s, str(root), "painted", editor_value={"background": None, "layers": []})
    assert "nothing is painted" in messages(view)
    layer = np.zeros((SIDE, SIDE, 4), np.uint8)
    layer[50:60, 70:90, 3] = 255
    s, view = EX.accept_correction(s, str(root), "painted", editor_value={"background": None, "layers": [layer]})
    assert int(store.load(view["_record_id"]).corrected_mask.sum()) == 200
    # a note with personal details is refused, and the status says so instead of the previous "Stored ..."
    n = len(store.ids())
    s, view = EX.accept_correction(s, str(root), "prompted", note="Patient John Doe, DOB 1970-01-01, MRN 4MR1")
    assert "Not stored" in view["correction_info"] and "Stored correction" not in view["correction_info"]
    assert "a date" in view["correction_info"] and len(store.ids()) == n
    assert "John" not in " ".join(p.read_text() for p in root.rglob("*.json"))


# ---------------------------------------------------------------------------
# bad input, missing models, sessions
# ---------------------------------------------------------------------------
def test_corrupt_upload_keeps_the_session(engines, phantom, tmp_path):
    path, _, _ = phantom
    s = loaded(engines, path)
    before = (s.slice, s.processed, s.unet_result)
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    s, view = UP.load_file(s, engines, str(bad))
    assert messages(view) and "could not be opened" in view["status"]
    assert "still shown" in view["status"] and "Traceback" not in view["status"]
    assert (s.slice, s.processed, s.unet_result) == before
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not an image\n")
    s, view = UP.load_file(Session(), engines, str(text))
    assert messages(view) and not s.loaded
    # events before any upload say what to do
    s2, view = PR.click(Session(), engines, [3, 4], "positive")
    assert "upload" in messages(view)


def test_unexpected_error_is_short_and_restores(engines, phantom, monkeypatch):
    path, _, _ = phantom
    s = loaded(engines, path)
    k = s.kmeans_k

    def boom(*a, **kw):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(C, "run_kmeans", boom)
    with pytest.raises(gr.Error) as info:
        KM.set_k(s, 7)
    assert "secret internals" not in str(info.value) and "still running" in str(info.value)
    assert s.kmeans_k == k


def test_empty_weights_dir_gives_clear_notices(empty_engines, phantom):
    path, mask, (cx, cy) = phantom
    s, view = UP.load_file(Session(), empty_engines, str(path))
    assert s.loaded and s.unet_result is None and s.classification is None
    assert "unavailable, because" in view["unet_info"]
    assert "unavailable, because" in view["class_info"]
    assert s.slot.engine_key == "random_walker"
    s, view = PR.click(s, empty_engines, to_display(s, (cx, cy)), "positive")
    assert s.prompts.result is not None and s.prompts.result.mask[int(cy), int(cx)]
    assert list(view["metrics_table"]["pair"]) == ["prompted vs K-Means"]
    status = EN.engines_status(empty_engines)
    assert status.count("unavailable, because") >= 3 and "random walker" in status
    summary = EN.engines_summary(empty_engines)
    assert "unavailable" in summary and "random walker" in summary and "Engines panel" in summary
    s, view = CL.show_gradcam(s, empty_engines, None)
    assert "classifier unavailable" in messages(view)


def test_session_deepcopy_does_not_copy_models(engines, phantom):
    path, _, (cx, cy) = phantom
    s = loaded(engines, path)
    s, _ = PR.click(s, engines, to_display(s, (cx, cy)), "positive")
    model = s.slot.predictor.model
    c = copy.deepcopy(s)
    assert c.lock is not s.lock and c.workdir is None
    assert isinstance(c.slot, PredictorSlot) and c.slot.predictor is None and c.slot.engine_key == "clicks"
    assert s.slot.predictor.model is model
    assert copy.deepcopy(Session()).slot is None


def test_two_sessions_interleaved_without_crosstalk(engines, phantom, phantom2):
    (p1, _, c1), (p2, _, c2) = phantom, phantom2
    a, b = loaded(engines, p1), loaded(engines, p2)
    assert a.slice.shape != b.slice.shape
    clicks_a = [(c1, "positive"), ((8, 8), "negative"), ((c1[0] + 2, c1[1] + 1), "positive")]
    clicks_b = [(c2, "positive"), ((c2[0] - 3, c2[1]), "positive"), ((5, 9), "negative")]
    for (xa, ma), (xb, mb) in zip(clicks_a, clicks_b, strict=True):
        a, _ = PR.click(a, engines, to_display(a, xa), ma)
        b, _ = PR.click(b, engines, to_display(b, xb), mb)
    # the same clicks in a fresh session, alone, give the same masks
    ref_a, ref_b = loaded(engines, p1), loaded(engines, p2)
    for xa, ma in clicks_a:
        ref_a, _ = PR.click(ref_a, engines, to_display(ref_a, xa), ma)
    for xb, mb in clicks_b:
        ref_b, _ = PR.click(ref_b, engines, to_display(ref_b, xb), mb)
    assert a.prompts.result.mask.shape == a.slice.shape and b.prompts.result.mask.shape == b.slice.shape
    assert np.array_equal(a.prompts.result.mask, ref_a.prompts.result.mask)
    assert np.array_equal(b.prompts.result.mask, ref_b.prompts.result.mask)
    assert a.slot.predictor is not b.slot.predictor

    # and from two threads at once
    out = {}

    def run(name, path, pts):
        s = loaded(engines, path)
        for xy, m in pts:
            s, _ = PR.click(s, engines, to_display(s, xy), m)
        out[name] = s.prompts.result.mask

    threads = [threading.Thread(target=run, args=("a", p1, clicks_a)),
               threading.Thread(target=run, args=("b", p2, clicks_b))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert np.array_equal(out["a"], ref_a.prompts.result.mask)
    assert np.array_equal(out["b"], ref_b.prompts.result.mask)


# ---------------------------------------------------------------------------
# the page itself
# ---------------------------------------------------------------------------
def test_build_demo_every_component_has_a_label(engines, tmp_path):
    from bt_demo.ui.layout import build_demo
    from bt_demo.ui.panels.upload import example_files

    demo = build_demo(engines, annotations_dir=str(tmp_path))
    unlabeled = []
    for block in demo.blocks.values():
        if isinstance(block, gr.components.Component) and not isinstance(block, (gr.State, gr.Dataset, gr.Timer)):
            if isinstance(block, (gr.Button, gr.DownloadButton)):
                continue  # a button's text is its label
            if not getattr(block, "label", None):
                unlabeled.append(type(block).__name__)
    assert unlabeled == []
    names = [p.name for p in example_files()]
    assert all("_mask" not in n for n in names)


def test_no_event_leaves_the_browser_a_loading_status_to_walk_on_every_click(engines, tmp_path):
    """Gradio's front end keeps a loading status for every component an event showed progress on and walks
    them all (a search of the page's tree each) before and after every later request: with Gradio's default
    (every output) a click slowed as the session used more of the page. Our events without a spinner
    register no targets, the others one panel each, never the session state."""
    from bt_demo.ui.layout import build_demo

    demo = build_demo(engines, annotations_dir=str(tmp_path))
    deps = demo.get_config_file()["dependencies"]
    states = {b._id for b in demo.blocks.values() if isinstance(b, gr.State)}
    targets = {d["id"]: d["outputs"] if d["show_progress_on"] is None else d["show_progress_on"] for d in deps}
    every = set().union(*targets.values())
    assert not states & every
    assert len(every) <= 25, f"{len(every)} components can hold a loading status"
    assert all(len(targets[d["id"]]) <= 1 for d in deps)
    click = next(d for d in deps if d["api_name"] == "click_point")
    assert targets[click["id"]] == [] and click["show_progress"] == "hidden"


@pytest.mark.parametrize("kind", ["png16", "nifti_zeros"])
def test_a_constant_slice_that_is_not_8_bit_loads_with_usable_window_sliders(engines, tmp_path, kind):
    """A constant 16-bit PNG or an all-zero NIfTI used to fail with a bare "Error" (slider minimum = maximum)."""
    import nibabel

    if kind == "png16":
        path = tmp_path / "flat.png"
        Image.fromarray(np.full((64, 64), 1234, np.uint16)).save(path)
    else:
        path = tmp_path / "zeros.nii"
        nibabel.save(nibabel.Nifti1Image(np.zeros((32, 32, 3), np.int16), np.eye(4)), path)
    s, view = UP.load_file(Session(), engines, str(path))
    assert s.loaded and "could not be opened" not in view.get("status", "")
    for key in ("win_center", "win_width"):
        upd = view[key]
        assert upd["minimum"] < upd["maximum"] and upd["step"] > 0
        assert upd["minimum"] <= upd["value"] <= upd["maximum"]
