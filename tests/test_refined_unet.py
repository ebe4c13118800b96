"""The automatic mask's outline redrawn on LiteMedSAM's encoder (issue 25's shipped U-Net row): the gate, the
engine on the shared encoder run, the Compare tab showing the U-Net's mask first and the refined outline once
the chained step has run, the export naming which outline it holds, and the U-Net alone when the encoder is
missing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bt_demo.models import medsam, medsam_seg


def _need_checkpoint():
    reason = medsam.checkpoint_status()
    if reason:
        pytest.skip(f"MedSAM checkpoint not usable here: {reason}")


def _decoder_folder(folder, threshold=0.5, min_px=0, card=True, everywhere=True):
    """A tiny decoder; ``everywhere``: its last layer makes it say 'tumour' on every pixel (so the gate alone
    decides), else random weights (an outline that depends on the input)."""
    import torch

    torch.manual_seed(0)
    model = medsam_seg.build(width=4, full_width=4)
    if everywhere:
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.bias.fill_(5.0)
    medsam_seg.save(model, folder, {"postprocessing": {"threshold": threshold, "min_component_px": min_px}})
    if card:
        row = {"patient_dice_mean": 0.9, "patient_dice_median": 0.9, "patient_dice_worst": 0.8,
               "slice_dice_tumour_mean": 0.8, "fp_rate_tumour_free": 0.01}
        (folder / "card.json").write_text(json.dumps({"rows": {"val": {
            "decoder where the U-Net finds tumour": row, "shipped U-Net alone": row | {"patient_dice_mean": 0.85}}}}))
    return folder


def test_gate_keeps_the_outline_only_where_the_unet_finds_tumour():
    outline = np.zeros((8, 8), bool)
    outline[2:5, 2:5] = True
    found = np.zeros((8, 8), bool)
    assert not medsam_seg.gate(outline, found).any()  # the U-Net finds nothing: nothing, whatever the outline
    found[7, 7] = True
    assert (medsam_seg.gate(outline, found) == outline).all()  # it finds something: the decoder's outline


def test_shipped_decoder_loads_with_its_post_processing_and_card():
    _need_checkpoint()
    eng = medsam_seg.EncoderDecoderEngine.load("weights/medsam_seg")
    assert not isinstance(eng, str), eng
    assert 0 < eng.threshold < 1 and eng.min_component_px >= 0
    assert "per-patient Dice" in eng.card_line  # the page quotes what its card measured


def test_a_missing_or_wrong_folder_is_refused_with_its_reason(tmp_path, monkeypatch):
    got = medsam_seg.EncoderDecoderEngine.load(tmp_path / "nothing")
    assert isinstance(got, str) and "no refining decoder" in got
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architecture": "something else"}))
    (bad / "model.safetensors").write_bytes(b"not a tensor file")
    got = medsam_seg.EncoderDecoderEngine.load(bad)
    assert isinstance(got, str) and ("cannot read" in got or "not available" in got)
    monkeypatch.setenv(medsam.ENV_CHECKPOINT, str(tmp_path / "gone.pth"))
    got = medsam_seg.EncoderDecoderEngine.load(_decoder_folder(tmp_path / "ok"))
    assert isinstance(got, str) and "LiteMedSAM encoder is not available" in got


def test_the_refinement_reuses_the_slice_encoder_run(tmp_path):
    """One encoder run per slice: the heads / MedSAM's prompts and the refining decoder share it."""
    _need_checkpoint()
    import torch

    torch.set_num_threads(1)
    eng = medsam_seg.EncoderDecoderEngine.load(_decoder_folder(tmp_path / "dec"))
    rng = np.random.default_rng(1)
    img = np.clip(rng.normal(0.3, 0.05, (70, 90)), 0, 1).astype(np.float32)
    n0 = medsam.encoder_calls()
    first = eng.refine(img, key="refine-slice")
    assert first.encoder_ran and medsam.encoder_calls() == n0 + 1
    assert first.mask.shape == img.shape and first.mask.all()  # the slice's own pixels, not the 256 frame
    again = eng.refine(img, key="refine-slice")
    assert not again.encoder_ran and medsam.encoder_calls() == n0 + 1
    pooled, ran = medsam.slice_features(img, key="refine-slice")
    assert not ran and pooled.shape == (medsam.POOLED_DIM,)


def _session_on_phantom(tmp_path, eng, tab):
    from PIL import Image

    from bt_demo.sim.phantom import flair_phantom
    from bt_demo.ui.panels import upload as UP
    from bt_demo.ui.state import Session

    img, _ = flair_phantom((96, 96), seed=3)
    path = tmp_path / "slice.png"
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    s = Session()
    s.tab = tab
    return UP.load_file(s, eng, str(path))


def test_compare_tab_shows_the_unet_first_then_the_refined_outline(tmp_path):
    """The upload draws the U-Net's mask at once and says the outline is being redrawn; the chained step
    replaces it (on a slice where the U-Net finds tumour), and the threshold still gates it."""
    _need_checkpoint()
    from bt_demo.models.registry import Engines
    from bt_demo.ui import compute as C
    from bt_demo.ui import views
    from bt_demo.ui.panels import compare as CMP
    from tests.tiny_models import make_weights_dir

    wdir = make_weights_dir(tmp_path / "w")
    _decoder_folder(wdir / "medsam_seg")
    eng = Engines(weights_dir=str(wdir), sam_model="none", device="cpu")
    s, view = _session_on_phantom(tmp_path, eng, "compare")
    assert "for now" in view["unet_info"] and s.refined is None
    s, _ = CMP.set_threshold(s, eng, float(np.quantile(s.unet_prob, 0.95)))  # the tiny U-Net: a few pixels
    unet_mask = s.unet_result.mask.copy()
    assert unet_mask.any()
    s, view = C.after_new_image(s, eng)
    assert "redrawn on LiteMedSAM" in view["unet_info"] and "per-patient Dice 0.900" in view["unet_info"]
    auto = views.current_masks(s)[views.UNET]
    assert auto.sum() > 4 * unet_mask.sum()  # the decoder's outline (all of the slice, by construction)
    s, again = C.fill_refined(s, eng)
    assert again == {}  # nothing changed: nothing is sent
    s, view = CMP.set_threshold(s, eng, 0.999)  # the U-Net finds nothing: the gate empties the automatic mask
    if not s.unet_result.mask.any():
        assert not views.current_masks(s)[views.UNET].any()


def test_export_names_the_outline_it_holds(tmp_path):
    _need_checkpoint()
    from bt_demo.models.registry import Engines
    from bt_demo.ui.panels import compare as CMP
    from bt_demo.ui.panels import export as EX
    from tests.tiny_models import make_weights_dir

    wdir = make_weights_dir(tmp_path / "w")
    _decoder_folder(wdir / "medsam_seg")
    eng = Engines(weights_dir=str(wdir), sam_model="none", device="cpu")
    s, _ = _session_on_phantom(tmp_path, eng, "export")
    s, _ = CMP.set_threshold(s, eng, 0.01)
    s, view = EX.export(s, "unet", eng)  # the Compare tab was never opened: the export refines first
    report = next(f for f in s.exports if f.endswith(".json"))
    rec = json.loads(open(report).read())["engines"]["unet"]["outline"]
    assert "LiteMedSAM" in rec["engine"] and rec["seconds"] > 0


def test_missing_encoder_leaves_the_unet_outline_and_says_so(tmp_path, monkeypatch):
    from bt_demo.models.registry import Engines
    from bt_demo.ui import compute as C
    from bt_demo.ui import views
    from tests.tiny_models import make_weights_dir

    wdir = make_weights_dir(tmp_path / "w")
    _decoder_folder(wdir / "medsam_seg")
    monkeypatch.setenv(medsam.ENV_CHECKPOINT, str(tmp_path / "gone.pth"))
    eng = Engines(weights_dir=str(wdir), sam_model="none", device="cpu")
    s, _ = _session_on_phantom(tmp_path, eng, "compare")
    s, view = C.fill_refined(s, eng)
    assert s.refined is None and "unavailable" in view["unet_info"] and "missing" in view["unet_info"]
    assert (views.current_masks(s)[views.UNET] == s.unet_result.mask).all()
    st = {x.key: x for x in eng.statuses()}
    assert not st["refiner"].available and st["unet"].available


def test_lab_robustness_measures_the_refined_mask_with_one_encoder_run_per_distinct_input(tmp_path):
    """``python -m train lab-robustness --refined``: configurations that give the models the same input (the lab's
    intensity steps do not reach them by default) cost no second encoder run."""
    _need_checkpoint()
    import torch

    from bt_demo.image import preprocess
    from bt_demo.models.medsam_seg import RefinedUNet
    from bt_demo.sim.phantom import flair_phantom
    from tests.tiny_models import make_weights_dir
    from train.lab_robustness import load_engine, measure

    torch.set_num_threads(1)
    wdir = make_weights_dir(tmp_path / "w")
    eng = load_engine(str(wdir / "unet"), str(_decoder_folder(tmp_path / "dec")))
    assert isinstance(eng, RefinedUNet)
    pairs = [flair_phantom((64, 64), seed=k) for k in range(2)]
    imgs = np.stack([(im * 255).astype(np.uint8) for im, _ in pairs])
    masks = np.stack([m.astype(bool) for _, m in pairs])
    configs = {"none (raw slice)": [], "denoise alone": [("denoise", preprocess.validate_params("denoise", None))]}
    n0 = medsam.encoder_calls()
    res = measure(eng, imgs, masks, np.array(["p0", "p1"]), configs=configs)
    assert medsam.encoder_calls() == n0 + 2  # two slices, two configurations, one input each
    assert res["denoise alone"]["change"] == pytest.approx(0.0)


def test_the_brain_crop_does_not_move_the_refined_outline(tmp_path):
    """The decoder reads the slice as loaded (trained on whole slices; cropped, it lost 0.06 Dice): ticking the
    brain crop changes the U-Net's input, not the outline the decoder draws."""
    _need_checkpoint()
    from bt_demo.image import preprocess
    from bt_demo.models.registry import Engines
    from bt_demo.ui import compute as C
    from tests.tiny_models import make_weights_dir

    wdir = make_weights_dir(tmp_path / "w")
    _decoder_folder(wdir / "medsam_seg", threshold=0.5, everywhere=False)
    eng = Engines(weights_dir=str(wdir), sam_model="none", device="cpu")
    s, _ = _session_on_phantom(tmp_path, eng, "compare")
    ref = eng.refiner()  # random weights: put the threshold at the median probability, so the outline is partial
    o = medsam.slice_outputs(s.model_input.image, key=s.model_input.key)
    lg = medsam_seg.predict_logits(ref.model, o.embedding, o.s1, o.image[None])[0]
    ref.threshold = float(np.median(medsam_seg.logits_to_probs(lg, o.valid_hw, s.model_input.image.shape)))
    C.run_refined(s, eng)
    before = s.refined.mask.copy()
    assert before.any() and not before.all()  # an outline that depends on the input
    s.pipeline = list(C.pipeline(s)) + [("crop_brain", preprocess.validate_params("crop_brain", None))]
    C.recompute(s, eng, new_image=False)
    assert s.model_input.steps  # the U-Net now sees the crop
    assert C.run_refined(s, eng)  # a new model input: the outline is looked up again ...
    assert not s.refined.encoder_ran and (s.refined.mask == before).all()  # ... from the same encoder run
