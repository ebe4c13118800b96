"""Classifier heads on LiteMedSAM's frozen encoder (bt_demo.models.encoder_heads): the folder format, one
encoder run per slice shared with MedSAM's prompts, the Classifier tab filling them in after it is shown, and
the small CNN staying in place when the encoder is missing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bt_demo.models import medsam
from bt_demo.models.encoder_heads import EncoderHeads, save_head


def _need_checkpoint():
    reason = medsam.checkpoint_status()
    if reason:
        pytest.skip(f"MedSAM checkpoint not usable here: {reason}")


def _heads_folder(folder, seed=0):
    rng = np.random.default_rng(seed)
    d = medsam.POOLED_DIM
    save_head(folder, "type", rng.normal(0, 0.01, (3, d)), rng.normal(0, 0.1, 3),
              {"classes": ["glioma", "meningioma", "pituitary"], "temperature": 1.5}, {"summary": "type test"})
    save_head(folder, "presence", rng.normal(0, 0.01, (1, d)), np.array([0.2]),
              {"classes": ["no_tumour", "tumour"], "temperature": 2.0, "threshold": 0.5}, {"summary": "presence test"})
    return folder


def test_heads_folder_keeps_both_heads_and_gives_calibrated_probabilities(tmp_path):
    _need_checkpoint()
    folder = _heads_folder(tmp_path / "heads")
    cfg = json.loads((folder / "config.json").read_text())
    assert set(cfg["heads"]) == {"type", "presence"} and cfg["base_sha256"] == medsam.CHECKPOINT_SHA256
    heads = EncoderHeads.load(folder)
    assert isinstance(heads, EncoderHeads), heads
    f = np.random.default_rng(1).normal(size=medsam.POOLED_DIM).astype(np.float32)
    p, types = heads.probabilities(f)
    from safetensors.numpy import load_file

    t = load_file(str(folder / "model.safetensors"))
    z = float(t["presence.weight"][0] @ f + t["presence.bias"][0]) / 2.0
    assert p == pytest.approx(1 / (1 + np.exp(-z)), rel=1e-5)
    zt = (t["type.weight"] @ f + t["type.bias"]) / 1.5
    want = np.exp(zt - zt.max()) / np.exp(zt - zt.max()).sum()
    assert list(types) == ["glioma", "meningioma", "pituitary"]
    np.testing.assert_allclose(list(types.values()), want, rtol=1e-5)
    assert "type test" in heads.card_line and "Apache-2.0" in heads.card_line
    # rewriting one head keeps the other
    save_head(folder, "presence", np.zeros((1, medsam.POOLED_DIM)), np.array([3.0]),
              {"classes": ["no_tumour", "tumour"], "temperature": 1.0}, {})
    p2, types2 = EncoderHeads.load(folder).probabilities(f)
    assert p2 == pytest.approx(1 / (1 + np.exp(-3.0))) and types2 == pytest.approx(types)


@pytest.mark.parametrize("damage", ["missing", "other_base", "wrong_width"])
def test_a_bad_heads_folder_is_refused_with_its_reason(tmp_path, damage):
    _need_checkpoint()
    folder = _heads_folder(tmp_path / "heads")
    if damage == "missing":
        folder = tmp_path / "nothing"
        want = "no encoder heads"
    elif damage == "other_base":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["base_sha256"] = "0" * 64
        (folder / "config.json").write_text(json.dumps(cfg))
        want = "another LiteMedSAM checkpoint"
    else:
        save_head(folder, "type", np.zeros((3, 10)), np.zeros(3), {"classes": ["a", "b", "c"], "temperature": 1}, {})
        want = "does not read"
    got = EncoderHeads.load(folder)
    assert isinstance(got, str) and want in got


def test_missing_encoder_leaves_the_small_cnn_classifier_in_place(tmp_path, monkeypatch):
    from bt_demo.models.registry import Engines
    from tests.tiny_models import make_weights_dir

    wdir = make_weights_dir(tmp_path / "w")
    _heads_folder(wdir / "encoder_heads")
    monkeypatch.setenv(medsam.ENV_CHECKPOINT, str(tmp_path / "gone.pth"))
    eng = Engines(weights_dir=str(wdir), sam_model="none", device="cpu")
    got = eng.encoder_heads()
    assert isinstance(got, str) and "LiteMedSAM encoder is not available" in got and "missing" in got
    assert not isinstance(eng.classifier(), str)  # the small CNN still answers
    st = {s.key: s for s in eng.statuses()}
    assert not st["encoder_heads"].available and st["classifier"].available


def test_one_encoder_run_per_slice_serves_the_heads_and_medsam(tmp_path):
    """The heads' features and MedSAM's embedding come from one encoder run (the same content key)."""
    _need_checkpoint()
    import torch

    torch.set_num_threads(1)
    heads = EncoderHeads.load(_heads_folder(tmp_path / "heads"))
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(0.3, 0.05, (80, 96)), 0, 1).astype(np.float32)
    img[30:50, 40:60] = 0.9
    n0 = medsam.encoder_calls()
    first = heads.classify(img, key="shared-slice")
    assert first.encoder_ran and medsam.encoder_calls() == n0 + 1
    eng = medsam.MedSamEngine.load("cpu")
    eng.set_image(img, key="shared-slice")
    assert medsam.encoder_calls() == n0 + 1 and eng.encoder_calls == 0  # MedSAM reused it
    again = heads.classify(img, key="shared-slice")
    assert not again.encoder_ran and again.tumour_probability == pytest.approx(first.tumour_probability)
    eng.set_image(img * 0.5 + 0.1, key="another-slice")  # MedSAM first this time: the heads reuse its run
    n1 = medsam.encoder_calls()
    assert not heads.classify(img * 0.5 + 0.1, key="another-slice").encoder_ran and medsam.encoder_calls() == n1


def test_classifier_tab_shows_preparing_then_fills_in_the_heads(tmp_path):
    """The upload draws the CNN's answer at once and says the heads are preparing; the chained step fills
    them in (handler level, as the page calls them)."""
    _need_checkpoint()
    from PIL import Image

    from bt_demo.models.registry import Engines
    from bt_demo.sim.phantom import flair_phantom
    from bt_demo.ui import compute as C
    from bt_demo.ui.panels import upload as UP
    from bt_demo.ui.state import Session
    from tests.tiny_models import make_weights_dir

    wdir = make_weights_dir(tmp_path / "w")
    _heads_folder(wdir / "encoder_heads")
    eng = Engines(weights_dir=str(wdir), sam_model="none", device="cpu")
    img, _ = flair_phantom((96, 96), seed=3)
    path = tmp_path / "slice.png"
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    s = Session()
    s.tab = "classifier"
    s, view = UP.load_file(s, eng, str(path))
    assert view["class_info"].startswith("**Is there a tumour?**") or "P(tumour)" in view["class_info"]
    assert "preparing" in view["heads_info"]
    s, view = C.after_new_image(s, eng)
    assert "P(tumour) = **" in view["heads_info"] and "glioma" in view["heads_info"].lower()
    assert "encoder ran" in view["heads_info"]
    s, again = C.fill_heads(s, eng)
    assert again == {}  # nothing changed: nothing is sent
    from bt_demo.ui.panels import classifier as CL

    assert view.get("heads_cam_image") is None
    s, cam = CL.show_heads_saliency(s, eng)  # the button: the heads' map of the chosen class, on the slice
    assert cam["heads_cam_image"] is not None and s.heads_cam.shape == s.slice.shape
    s, other = CL.show_gradcam(s, eng, "type:meningioma")  # another class: the old map is not shown for it
    assert other["heads_cam_image"] is None
    s.tab = "prompts"
    s, hidden = UP.load_file(s, eng, str(path))
    assert "heads_info" not in hidden  # a hidden tab's panels wait until it opens


def test_saliency_splits_the_logit_over_locations_and_has_the_slices_size(tmp_path):
    """The class activation map of a linear head adds up to its logit (minus the bias); the shown saliency has
    the slice's size, is scaled to 1, and refuses a class the head does not have."""
    _need_checkpoint()
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(0.3, 0.03, (90, 120)), 0, 1).astype(np.float32)
    img[20:45, 70:100] = 0.95
    heads = EncoderHeads.load(_heads_folder(tmp_path / "heads"))
    contrib = heads.contributions(img, "presence")
    f, _ = medsam.slice_features(img, key="saliency-test")
    logit = float(heads.w["presence"][0] @ f)
    assert contrib.sum() == pytest.approx(logit, rel=0.05, abs=0.05)
    sal = heads.saliency(img, "type", "meningioma")
    assert sal.shape == img.shape and sal.dtype == np.float32 and 0 <= sal.min() and sal.max() == pytest.approx(1)
    with pytest.raises(ValueError, match="unknown class"):
        heads.saliency(img, "type", "astrocytoma")
