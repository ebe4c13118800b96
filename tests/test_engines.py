"""Engines through their real loading code, on tiny random models saved to temp folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bt_demo.image.geometry import Geometry
from bt_demo.models import weights
from bt_demo.models.base import NoImageError, SegResult
from bt_demo.models.classical import RandomWalkerEngine
from bt_demo.models.classifier import ClassifierEngine
from bt_demo.models.click_encoding import click_maps
from bt_demo.models.clicks import ClickEngine
from bt_demo.models.registry import Engines
from bt_demo.models.sizing import Letterbox
from bt_demo.models.unet import UNetEngine
from tests import tiny_models


@pytest.fixture(scope="module")
def wdir(tmp_path_factory):
    weights.clear_cache()
    return tiny_models.make_weights_dir(tmp_path_factory.mktemp("weights"))


def disk_image(shape=(90, 140), centre=(100, 40), r=12):
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    lesion = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= r * r
    img = np.full(shape, 0.3, np.float32)
    img[lesion] = 0.9
    return img, lesion


# -- geometry of model inputs -------------------------------------------------

@pytest.mark.parametrize("shape", [(90, 140), (301, 77), (256, 256), (1024, 999)])
def test_letterbox_round_trip_points_and_maps(shape):
    lb = Letterbox.fit(shape, 64)
    assert max(lb.resized) == 64
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    assert lb.image(img).shape == (64, 64)
    back = lb.unmap(lb.image(img))
    assert back.shape == shape
    # corners of the image map inside the padded square, the centre to the centre
    c = lb.points([[(shape[1] - 1) / 2, (shape[0] - 1) / 2]])[0]
    assert np.allclose(c, [31.5, 31.5], atol=0.6)


def test_click_maps_put_disks_where_clicked():
    m = click_maps((40, 60), [(50, 10), (5, 30)], [1, 0], radius=3)
    assert m.shape == (2, 40, 60)
    assert m[0, 10, 50] == 1 and m[1, 30, 5] == 1
    assert m[0, 30, 5] == 0 and m[1, 10, 50] == 0
    assert m[0].sum() == pytest.approx(np.pi * 9, rel=0.35)
    with pytest.raises(ValueError):
        click_maps((4, 4), [(1, 1)], [2], 1)


# -- loading ------------------------------------------------------------------

def test_unet_loads_and_returns_masks_at_original_size(wdir):
    eng = UNetEngine.load(str(wdir / "unet"))
    assert isinstance(eng, UNetEngine)
    img, _ = disk_image((90, 140))
    geom = Geometry.identity((120, 170)).then_crop((10, 20, 100, 160))
    res = eng.segment(img, geom)
    assert isinstance(res, SegResult)
    assert res.mask.shape == (120, 170) and res.mask.dtype == bool
    assert res.prob.shape == (120, 170) and 0 <= res.prob.min() and res.prob.max() <= 1
    # outside the crop nothing is predicted
    assert not res.mask[:10].any() and not res.mask[:, :20].any()
    # the threshold slider path re-uses the probability map
    prob = eng.probabilities(img)
    r0 = eng.segment(img, geom, threshold=0.0, prob=prob)
    r1 = eng.segment(img, geom, threshold=1.0, prob=prob)
    assert r0.mask[10:100, 20:160].all() and not r1.mask.any() or r1.mask.sum() <= r0.mask.sum()
    with pytest.raises(ValueError):
        eng.segment(img, geom, threshold=1.5, prob=prob)


def test_models_are_loaded_once_per_process(wdir):
    a = weights.load(__import__("bt_demo.models.nets", fromlist=["SegNet"]).SegNet, str(wdir / "unet"), strict=True)
    b = weights.load(__import__("bt_demo.models.nets", fromlist=["SegNet"]).SegNet, str(wdir / "unet"), strict=True)
    assert a.model is b.model


def test_absent_corrupt_and_incompatible_weights_are_unavailable_not_crashes(tmp_path, wdir):
    weights.clear_cache()
    msg = UNetEngine.load(str(tmp_path / "nope"))
    assert isinstance(msg, str) and "unavailable, because" in msg and "does not exist" in msg
    bad = tmp_path / "corrupt"
    tiny_models.make_seg(bad)
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    msg = UNetEngine.load(str(bad))
    assert isinstance(msg, str) and "unavailable, because" in msg
    # a config that does not match the stored tensors (strict loading, never silently dropped)
    mism = tmp_path / "mismatch"
    tiny_models.make_seg(mism)
    cfg = json.loads((mism / "config.json").read_text())
    cfg["decoder_channels"] = [32, 16, 8]
    (mism / "config.json").write_text(json.dumps(cfg))
    msg = UNetEngine.load(str(mism))
    assert isinstance(msg, str) and "unavailable" in msg
    # a click model is not a U-Net
    msg = UNetEngine.load(str(wdir / "clicks"))
    assert isinstance(msg, str) and "clicks" in msg
    msg = ClickEngine.load(str(wdir / "unet"))
    assert isinstance(msg, str) and "segmentation" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "config.json" in ClassifierEngine.load(str(empty))


def test_classifier_two_heads_four_class_view_temperature_and_gradcam(wdir):
    eng = ClassifierEngine.load(str(wdir / "classifier"))
    img, lesion = disk_image((100, 130))
    r = eng.classify(img, notices=("a note",))
    assert eng.class_names == ["no_tumour", "glioma", "meningioma", "pituitary"]
    assert set(r.probabilities) == set(eng.class_names)
    assert set(r.type_probabilities) == {"glioma", "meningioma", "pituitary"}
    assert sum(r.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert sum(r.type_probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    # the four-class view is derived: P(no tumour) = 1 - P(tumour), P(type) = P(tumour) * P(type | tumour)
    assert r.probabilities["no_tumour"] == pytest.approx(1 - r.tumour_probability, abs=1e-6)
    for k, v in r.type_probabilities.items():
        assert r.probabilities[k] == pytest.approx(r.tumour_probability * v, abs=1e-6)
    assert r.notices == ("a note",) and set(r.temperatures) == {"presence", "type"}
    # a higher temperature flattens each head
    t0 = eng.model.tumour_type.temperature
    try:
        eng.model.tumour_type.temperature = 100.0
        flat = eng.classify(img)
    finally:
        eng.model.tumour_type.temperature = t0
    assert max(flat.type_probabilities.values()) <= max(r.type_probabilities.values()) + 1e-6
    assert max(flat.type_probabilities.values()) < 0.4
    for head, cls in (("presence", "tumour"), ("presence", None), ("type", "glioma"), ("type", None)):
        cam = eng.gradcam(img, head, cls)
        assert cam.shape == img.shape and cam.dtype == np.float32 and 0 <= cam.min() and cam.max() <= 1
    with pytest.raises(ValueError, match="choose one of"):
        eng.gradcam(img, "type", "astrocytoma")
    with pytest.raises(ValueError, match="choose 'presence' or 'type'"):
        eng.gradcam(img, "grade")


# -- promptable engines --------------------------------------------------------

def test_click_model_maps_clicks_through_crop_and_letterbox(wdir, monkeypatch):
    eng = ClickEngine.load(str(wdir / "clicks"))
    assert isinstance(eng, ClickEngine)
    with pytest.raises(NoImageError, match="set_image"):
        eng.predict([(1, 1)], [1])
    img, lesion = disk_image((90, 140), centre=(100, 40))
    geom = Geometry.identity((120, 170)).then_crop((10, 20, 100, 160))
    eng.set_image(img, geom)
    seen = {}
    real = eng.model.forward

    def spy(x):
        seen["x"] = x.detach().cpu().numpy()
        return real(x)
    monkeypatch.setattr(eng.model, "forward", spy)
    # click on the lesion centre given in ORIGINAL pixels: (100 + 20, 40 + 10)
    res = eng.predict([(120, 50)], [1])
    assert res.mask.shape == (120, 170)
    pos = seen["x"][0, 1]
    ys, xs = np.nonzero(pos)
    lb = Letterbox.fit((90, 140), eng.model.input_size)
    expect = lb.points([[100, 40]])[0]
    assert abs(xs.mean() - expect[0]) <= 1 and abs(ys.mean() - expect[1]) <= 1
    # the image channel under the click is the bright lesion
    assert seen["x"][0, 0, int(round(expect[1])), int(round(expect[0]))] > 0.8
    with pytest.raises(ValueError):
        eng.predict([], [])


def test_click_model_feeds_previous_mask_back(wdir, monkeypatch):
    eng = ClickEngine.load(str(wdir / "clicks"))
    img, lesion = disk_image((64, 64), centre=(32, 32))
    eng.set_image(img)
    seen = {}
    real = eng.model.forward
    monkeypatch.setattr(eng.model, "forward", lambda x: (seen.__setitem__("x", x.numpy()), real(x))[1])
    prev = SegResult(lesion, "test", 0.0)
    eng.predict([(32, 32)], [1], previous=prev)
    assert seen["x"][0, 3].sum() == pytest.approx(lesion.sum(), rel=0.05)


def test_random_walker_recovers_a_bright_disk_from_one_click():
    eng = RandomWalkerEngine()
    img, lesion = disk_image((120, 160), centre=(60, 70), r=18)
    img = img + np.random.default_rng(0).normal(0, 0.03, img.shape).astype(np.float32)
    eng.set_image(np.clip(img, 0, 1))
    res = eng.predict([(60, 70)], [1])
    inter = (res.mask & lesion).sum()
    assert 2 * inter / (res.mask.sum() + lesion.sum()) > 0.85
    with pytest.raises(ValueError, match="positive point"):
        eng.predict([(5, 5)], [0])


def test_registry_reports_reasons_and_falls_back(tmp_path, wdir):
    weights.clear_cache()
    empty = Engines(weights_dir=str(tmp_path), sam_model="none")
    st = {s.key: s for s in empty.statuses()}
    assert not st["unet"].available and "unavailable, because" in st["unet"].reason
    assert not st["clicks"].available and not st["sam"].available
    assert st["random_walker"].available
    assert empty.default_prompt_engine() == "random_walker"
    full = Engines(weights_dir=str(wdir), sam_model="none")
    assert full.default_prompt_engine() == "clicks"
    a, b = full.new_predictor("clicks"), full.new_predictor("clicks")
    assert a is not b and a.model is b.model  # per-session predictors share one model
    with pytest.raises(KeyError, match="choose one of"):
        full.new_predictor("magic")


def test_import_bt_demo_stays_light():
    import subprocess
    import sys

    code = ("import sys, bt_demo, bt_demo.models.registry, bt_demo.models.unet, bt_demo.models.clicks;"
            "print('torch' in sys.modules, 'gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_slow_engine_load_reports_still_loading_instead_of_blocking(wdir):
    import threading

    eng = Engines(weights_dir=str(wdir), sam_model="none")
    gate = threading.Event()

    def slow():
        gate.wait(5)
        return "SAM unavailable, because test"
    eng._sam_probe = slow
    t = threading.Thread(target=lambda: eng.new_predictor("sam"))
    t.start()
    import time

    for _ in range(100):
        if "sam" in eng._loading:
            break
        time.sleep(0.01)
    assert "still loading" in eng.new_predictor("sam", wait=False)
    assert not isinstance(eng.new_predictor("clicks"), str)
    assert eng.default_prompt_engine(wait=False) == "clicks"
    gate.set()
    t.join()
    assert "because test" in eng.new_predictor("sam")


def test_model_outputs_carry_the_held_out_numbers_of_their_card(tmp_path):
    """A clinician reads how good a model measured next to what it says; a weak classifier says so."""
    import json

    from bt_demo.models import weights as W
    from bt_demo.models.classifier import ClassifierEngine
    from bt_demo.models.unet import UNetEngine
    from tests.tiny_models import make_weights_dir

    wdir = make_weights_dir(tmp_path / "w")
    (wdir / "unet" / "card.json").write_text(json.dumps({"task": "segmentation", "metrics": {
        "n_patients": 10, "patient_dice_mean": 0.834, "fp_rate_tumour_free": 0.05}}))
    (wdir / "classifier" / "card.json").write_text(json.dumps({"task": "classification", "metrics": {
        "presence": {"roc_auc": 0.93, "n_patients": 17, "recall": {"tumour": 0.9, "no_tumour": 0.88}},
        "type": {"cv_macro_f1_mean": 0.38, "cv_macro_f1_sd": 0.05, "n_folds": 4}}}))
    W.clear_cache()
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    seg = UNetEngine.load(str(wdir / "unet")).segment(img)
    assert "10 held-out patients" in seg.extra["card"] and "0.834" in seg.extra["card"]
    cr = ClassifierEngine.load(str(wdir / "classifier")).classify(img)
    assert "ROC AUC 0.93 on 17 held-out LGG patients" in cr.card
    assert "macro-F1 0.38 ± 0.05 over 4 patient-level folds" in cr.card and "too weak to rely on" in cr.card
    (wdir / "classifier" / "card.json").write_text("{not json")
    W.clear_cache()
    assert ClassifierEngine.load(str(wdir / "classifier")).classify(img).card == ""  # a broken card hides nothing else


def test_first_ask_without_waiting_loads_in_the_background(wdir):
    """Building the page asks with wait=False before anything loaded: it must not run the load itself."""
    import threading
    import time

    eng = Engines(weights_dir=str(wdir), sam_model="none")
    gate = threading.Event()

    def slow():
        gate.wait(120)  # released below; long enough for a busy CI machine
        return "SAM unavailable, because test"
    eng._sam_probe = slow
    t0 = time.perf_counter()
    assert "still loading" in eng.new_predictor("sam", wait=False)
    assert time.perf_counter() - t0 < 1.0  # it returned at once, the loader waits on the gate
    from bt_demo.ui.panels import engines as EN

    keys = [k for _, k in EN.engine_choices(eng)]
    assert "sam" in keys and "(loading…)" in dict((k, lab) for lab, k in EN.engine_choices(eng))["sam"]
    *_, loading = EN.refresh_engines(eng)
    assert loading is True
    gate.set()
    for _ in range(200):
        if "sam" in eng._results:
            break
        time.sleep(0.01)
    assert "because test" in eng.new_predictor("sam", wait=False)
    # an engine that cannot load is no longer offered; the Engines tab says why
    assert "sam" not in [k for _, k in EN.engine_choices(eng)]
    for _ in range(600):  # the page's timer polls until the other engines (started by that ask) are ready too
        summary, status, choices, loading = EN.refresh_engines(eng)
        if not loading:
            break
        time.sleep(0.05)
    assert "because test" in status and loading is False and "clicks" in [k for _, k in choices]


def test_sam_hub_id_without_network_gives_up_after_one_short_try(monkeypatch, tmp_path):
    """No network, nothing cached: one connection attempt, not huggingface_hub's 24 s of retries."""
    import socket

    import huggingface_hub.constants as hub_constants

    from bt_demo.models import sam as S

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    tries = []

    def refuse(addr, timeout=None, *a, **k):
        tries.append((addr, timeout))
        raise OSError(101, "Network is unreachable")
    monkeypatch.setattr(socket, "create_connection", refuse)
    weights.clear_cache()
    msg = S.SamEngine.load("facebook/sam2.1-hiera-tiny", device="cpu")
    assert isinstance(msg, str) and "no network" in msg and "--sam-model" in msg
    assert len(tries) == 1 and tries[0][1] <= 3


def test_set_config_changes_the_attribute_and_what_save_pretrained_writes(tmp_path):
    from bt_demo.models.nets import SegNet

    model = SegNet(**tiny_models.TINY_SEG)
    weights.set_config(model, threshold=0.35, min_component_px=12)
    assert model.threshold == 0.35 and model.min_component_px == 12
    assert weights.model_config(model)["threshold"] == 0.35
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["threshold"] == 0.35 and cfg["min_component_px"] == 12
    back = SegNet.from_pretrained(str(tmp_path / "m"))
    assert back.threshold == 0.35 and back.min_component_px == 12
    with pytest.raises(ValueError, match="options: .*threshold"):
        weights.set_config(model, treshold=0.4)  # a typo would be saved and then break from_pretrained
    assert weights.model_config(object()) == {}
