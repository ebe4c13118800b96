"""SAM / SAM 2 engine: tiny random models saved with save_pretrained and loaded the way the app does.

Random weights give random masks, so these tests check what does not depend
on training: shapes and sizes, where clicks land, when the encoder runs, what
is cached, and that every broken model id becomes a reason, not an exception.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bench import bench_sam as B  # noqa: E402
from bt_demo.image.geometry import Geometry  # noqa: E402
from bt_demo.models import sam as S  # noqa: E402
from bt_demo.models import weights  # noqa: E402
from bt_demo.models.base import NoImageError, PromptPredictor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZES = {"sam": 64, "sam2": 128}  # model input size (px) of the tiny models


# ---------------------------------------------------------------------------
# tiny models
# ---------------------------------------------------------------------------
def _decoder_and_prompt(size: int) -> dict:
    return {"prompt_encoder_config": {"hidden_size": 32, "image_size": size, "patch_size": 16, "mask_input_channels": 16},
            "mask_decoder_config": {"hidden_size": 32, "mlp_dim": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                                    "iou_head_hidden_dim": 16}}


def tiny_config(family: str, video: bool = False):
    size = SIZES[family]
    if family == "sam":
        vision = {"hidden_size": 32, "output_channels": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "image_size": size, "patch_size": 16, "window_size": 2, "global_attn_indexes": [1],
                  "num_pos_feats": 16, "mlp_dim": 64}
        return transformers.SamConfig(vision_config=vision, **_decoder_and_prompt(size))
    backbone = {"model_type": "sam2_hiera_det_model", "hidden_size": 8, "num_attention_heads": 1,
                "image_size": [size, size], "blocks_per_stage": [1, 1, 2, 1], "embed_dim_per_stage": [8, 16, 32, 64],
                "num_attention_heads_per_stage": [1, 1, 1, 1], "window_size_per_stage": [4, 4, 4, 4],
                "global_attention_blocks": [3], "window_positional_embedding_background_size": [2, 2]}
    vision = {"model_type": "sam2_vision_model", "backbone_config": backbone, "backbone_channel_list": [64, 32, 16, 8],
              "backbone_feature_sizes": [[size // 4] * 2, [size // 8] * 2, [size // 16] * 2], "fpn_hidden_size": 32}
    if video:
        return transformers.Sam2VideoConfig(vision_config=vision, image_size=size, **_decoder_and_prompt(size))
    return transformers.Sam2Config(vision_config=vision, **_decoder_and_prompt(size))


def save_tiny(folder: Path, family: str, processor: bool = True, video: bool = False) -> Path:
    torch.manual_seed(0)
    cfg = tiny_config(family, video)
    cls = transformers.Sam2VideoModel if video else getattr(transformers, S._FAMILIES[family].model_cls)
    model = cls(cfg)
    with torch.no_grad():  # the default init (std 0.02) makes every output ~0; give prompts a visible effect
        for prm in model.parameters():
            prm.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    if processor:
        S._FAMILIES[family].default_processor(SIZES[family]).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {fam: save_tiny(tmp_path_factory.mktemp(fam), fam) for fam in ("sam", "sam2")}


@pytest.fixture(autouse=True)
def _fresh_caches():
    S.clear_caches()
    yield
    S.clear_caches()


def load(folders, family, **kw) -> S.SamEngine:
    eng = S.SamEngine.load(str(folders[family]), device="cpu", **kw)
    assert isinstance(eng, S.SamEngine), eng
    return eng


def phantom(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = 0.2 + 0.6 * (((yy - shape[0] / 2) ** 2 + (xx - shape[1] / 3) ** 2) < (min(shape) / 4) ** 2)
    return np.clip(img + 0.05 * rng.standard_normal(shape), 0, 1).astype(np.float32)


# a non-square original slice, cropped to a non-square processed image with odd sides
ORIG = (83, 121)
CROP = (7, 12, 70, 101)  # (y0, x0, y1, x1) -> processed (63, 89)
FAMILIES = ["sam", "sam2"]


# ---------------------------------------------------------------------------
# import cost, family detection, defaults
# ---------------------------------------------------------------------------
def test_import_does_not_load_torch_or_transformers():
    code = "import sys, bt_demo.models.sam; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_sam_family(folders, tmp_path):
    assert S.sam_family(str(folders["sam"])) == "sam"
    assert S.sam_family(str(folders["sam2"])) == "sam2"
    assert S.sam_family(tiny_config("sam2")) == "sam2"
    assert S.sam_family({"model_type": "sam2_video"}) == "sam2"
    assert S.sam_family({"model_type": "sam"}) == "sam"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert'.*sam2"):
        S.sam_family(str(tmp_path))


def test_default_model_id_env_override(monkeypatch):
    monkeypatch.delenv(S.ENV_VAR, raising=False)
    assert S.default_model_id("cpu") == S.DEFAULT_SAM_ID
    monkeypatch.setenv(S.ENV_VAR, "someone/sam-custom")
    assert S.default_model_id("cpu") == "someone/sam-custom"


# ---------------------------------------------------------------------------
# masks, candidates, prompts
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_masks_come_back_at_original_size(folders, family):
    eng = load(folders, family)
    assert isinstance(eng, PromptPredictor)
    geo = Geometry.identity(ORIG).then_crop(CROP)
    img = phantom(geo.processed_shape)
    eng.set_image(img, geo)

    one = eng.predict([[50.0, 40.0]], [1])
    assert one.mask.shape == ORIG and one.mask.dtype == bool
    assert len(one.candidates) == 3 and len(one.scores) == 3
    assert all(c.shape == ORIG and c.dtype == bool for c in one.candidates)
    assert one.chosen == int(np.argmax(one.scores))
    assert np.array_equal(one.mask, one.candidates[one.chosen])
    assert one.prob.shape == ORIG and one.prob.dtype == np.float32
    assert 0.0 <= one.prob.min() and one.prob.max() <= 1.0
    y0, x0, y1, x1 = CROP
    outside = np.ones(ORIG, bool)
    outside[y0:y1, x0:x1] = False
    assert not one.mask[outside].any() and one.prob[outside].max() < 1e-6
    assert one.engine == eng.name and one.seconds > 0

    two = eng.predict([[50.0, 40.0], [30.0, 60.0]], [1, 0])
    assert len(two.candidates) == 1 and len(two.scores) == 1 and two.mask.shape == ORIG
    single = eng.predict([[50.0, 40.0]], [1], multimask=False)
    assert len(single.candidates) == 1
    boxed = eng.predict([], [], box=(20, 15, 80, 60))
    assert len(boxed.candidates) == 1 and boxed.mask.shape == ORIG
    flipped = eng.predict([], [], box=(80, 60, 20, 15))  # corners in any order
    assert np.array_equal(flipped.prob, boxed.prob)
    both = eng.predict([[50.0, 40.0]], [1], box=(20, 15, 80, 60))
    assert len(both.candidates) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_predict_before_set_image_says_what_to_call(folders, family):
    eng = load(folders, family)
    with pytest.raises(NoImageError, match="set_image"):
        eng.predict([[1.0, 1.0]], [1])


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_prompts_are_value_errors(folders, family):
    eng = load(folders, family)
    eng.set_image(phantom((40, 50)))
    with pytest.raises(ValueError, match="add a point or a box first"):
        eng.predict([], [])
    with pytest.raises(ValueError, match="2 points but 1 labels"):
        eng.predict([[1, 1], [2, 2]], [1])
    with pytest.raises(ValueError, match="labels must be 1"):
        eng.predict([[1, 1]], [2])
    with pytest.raises(ValueError, match="box"):
        eng.predict([], [], box=(1, 2, 3))
    with pytest.raises(ValueError, match="2-D"):
        eng.set_image(np.zeros((4, 5, 3), np.float32))
    with pytest.raises(ValueError, match="processed_shape"):
        eng.set_image(phantom((40, 50)), Geometry.identity((41, 50)))


@pytest.mark.parametrize("family", FAMILIES)
def test_previous_result_refines_only_on_the_same_image(folders, family):
    eng = load(folders, family)
    eng.set_image(phantom((60, 70)))
    pts, labs = [[30.0, 30.0], [10.0, 50.0]], [1, 0]
    first = eng.predict(pts[:1], labs[:1])
    refined = eng.predict(pts, labs, previous=first)
    plain = eng.predict(pts, labs)
    assert refined.extra["refined"] and not plain.extra["refined"]
    assert np.abs(refined.prob - plain.prob).max() > 1e-5  # the mask prompt reached the decoder
    # the candidate the user picked is the one fed back
    alt = first.with_choice((first.chosen + 1) % 3)
    from_alt = eng.predict(pts, labs, previous=alt)
    assert from_alt.extra["refined"] and np.abs(from_alt.prob - refined.prob).max() > 1e-5
    again = eng.predict(pts, labs, previous=first)  # an earlier result (after an undo) still works
    np.testing.assert_allclose(again.prob, refined.prob, atol=1e-6)
    # a result from another engine, or from before set_image, is ignored
    other = eng.new_session()
    other.set_image(phantom((60, 70)))
    assert not other.predict(pts, labs, previous=first).extra["refined"]
    eng.set_image(phantom((60, 70), seed=1))
    assert not eng.predict(pts, labs, previous=refined).extra["refined"]


# ---------------------------------------------------------------------------
# the embedding cache
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_embedding_computed_once_per_image_and_preprocessing(folders, family):
    eng = load(folders, family)
    img = phantom((45, 66))
    eng.set_image(img)
    assert eng.encoder_calls == 1
    entry = eng._current.entry
    before = [t.clone() for t in (entry.embeddings if isinstance(entry.embeddings, tuple) else (entry.embeddings,))]
    eng.predict([[20.0, 20.0]], [1])
    eng.predict([[20.0, 20.0], [40.0, 10.0]], [1, 0])
    assert eng.encoder_calls == 1
    after = entry.embeddings if isinstance(entry.embeddings, tuple) else (entry.embeddings,)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))  # cached values stay read-only
    eng.set_image(img.copy())  # same content, no key: the content hash finds it
    assert eng.encoder_calls == 1
    eng.set_image(img, key="slice-3|clahe=2.0")  # other preprocessing key -> new embedding
    assert eng.encoder_calls == 2
    eng.set_image(img, key="slice-3|clahe=2.0")
    assert eng.encoder_calls == 2
    eng.set_image(phantom((45, 66), seed=5))  # other content
    assert eng.encoder_calls == 3
    # another session of the same model shares the cache
    other = copy.deepcopy(eng)
    assert other.model is eng.model and other.cache is eng.cache and not other.has_image
    with pytest.raises(NoImageError):
        other.predict([[1.0, 1.0]], [1])
    other.set_image(img)
    assert other.encoder_calls == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_lru_evicts_beyond_cache_size(folders, family):
    eng = load(folders, family, cache_size=2)
    a, b, c = (phantom((30, 40), seed=s) for s in range(3))
    for im in (a, b, c):
        eng.set_image(im)
    assert eng.encoder_calls == 3 and len(eng.cache) == 2
    eng.set_image(c)  # most recent: cached
    assert eng.encoder_calls == 3
    eng.set_image(a)  # evicted: computed again
    assert eng.encoder_calls == 4
    eng.set_image(b)  # evicted when `a` came back
    assert eng.encoder_calls == 5 and len(eng.cache) == 2


def test_cache_size_is_checked(folders):
    with pytest.raises(ValueError, match="cache_size"):
        S.SamEngine.load(str(folders["sam"]), device="cpu", cache_size=0)


# ---------------------------------------------------------------------------
# coordinates: original slice -> processed image -> model prompt frame
# ---------------------------------------------------------------------------
GEOMETRIES = [
    Geometry.identity((97, 141)).then_crop((3, 5, 96, 140)),  # odd, wide
    Geometry.identity((257, 63)).then_crop((10, 2, 250, 61)),  # odd, tall
    Geometry.identity((120, 90)).then_crop((10, 5, 110, 85)).then_resize((50, 41)),  # crop then shrink
    Geometry.identity((64, 64)),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("geo", GEOMETRIES, ids=["wide", "tall", "resized", "identity"])
def test_click_lands_where_it_was_clicked(family, geo):
    """A bright dot drawn at an original pixel is where the mapped click points, in the model's input."""
    fam = S._FAMILIES[family]
    proc = fam.default_processor(1024)
    y0, x0, y1, x1 = geo.crop
    h, w = geo.original_shape
    sx, sy = geo.scale
    for x, y in [(x0 + 2, y0 + 3), ((x0 + x1) // 2, (y0 + y1) // 2), (x1 - 3, y1 - 2)]:
        orig = np.zeros((h, w), np.float32)
        orig[y - 1: y + 2, x - 1: x + 2] = 1.0  # a 3x3 dot centred on (x, y)
        processed = geo.map_to_processed(orig, order=1)
        rgb = np.repeat(np.round(processed * 255).astype(np.uint8)[:, :, None], 3, axis=2)
        enc = proc(images=rgb, input_points=[[[1.0, 1.0]]] if family == "sam" else [[[[1.0, 1.0]]]],
                   input_labels=[[1]] if family == "sam" else [[[1]]], return_tensors="pt",
                   input_data_format="channels_last")
        frame = S.ModelFrame(processed.shape, fam.input_shape(proc, enc))
        rh, rw = frame.input_shape
        px = enc["pixel_values"][0, 0, :rh, :rw].numpy()  # the resized image, without SAM's padding
        wgt = np.clip(px - px.min(), 0, None)
        wgt = np.where(wgt > 0.5 * wgt.max(), wgt, 0)
        yy, xx = np.mgrid[: px.shape[0], : px.shape[1]]
        seen = np.array([(wgt * xx).sum() / wgt.sum(), (wgt * yy).sum() / wgt.sum()])  # pixel-index centre
        mapped = frame.to_model(geo.to_processed([x, y]))
        # both are pixel-index coordinates of the model input (SAM's prompt encoder adds the half pixel)
        total = np.array([frame.scale[0] * sx, frame.scale[1] * sy])  # model px per original px
        err_original_px = np.abs(mapped - seen) / total
        assert (err_original_px <= 0.5).all(), (x, y, mapped, seen)

        # the processor's own arithmetic differs from ours by the half-pixel shift only
        pp = geo.to_processed([x, y])
        enc2 = proc(images=rgb, input_points=[[[*pp]]] if family == "sam" else [[[[*pp]]]],
                    input_labels=[[1]] if family == "sam" else [[[1]]], return_tensors="pt",
                    input_data_format="channels_last")
        theirs = enc2["input_points"].reshape(-1).numpy()
        np.testing.assert_allclose(frame.to_model(pp) - theirs, 0.5 * (np.array(frame.scale) - 1), atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("geo", GEOMETRIES, ids=["wide", "tall", "resized", "identity"])
def test_points_go_there_and_back(folders, family, geo):
    eng = load(folders, family)
    eng.set_image(phantom(geo.processed_shape), geo)
    y0, x0, y1, x1 = geo.crop
    pts = np.array([[x0, y0], [x1 - 1, y1 - 1], [x0 + 0.5, y1 - 1.25], [(x0 + x1) / 2, (y0 + y1) / 2]], float)
    model_pts = eng.points_to_model(pts)
    side = SIZES[family]
    assert (model_pts > -0.05 * side).all() and (model_pts < side).all()
    np.testing.assert_allclose(eng.points_from_model(model_pts), pts, atol=1e-6)


# ---------------------------------------------------------------------------
# loading: every failure is a reason, never an exception
# ---------------------------------------------------------------------------
def _unavailable(result) -> str:
    assert isinstance(result, str), result
    assert result.startswith("SAM unavailable, because "), result
    return result


def test_absent_folder(tmp_path):
    msg = _unavailable(S.SamEngine.load(str(tmp_path / "nope"), device="cpu"))
    assert "does not exist" in msg


def test_corrupt_weights(folders, tmp_path):
    bad = tmp_path / "corrupt"
    bad.mkdir()
    for f in folders["sam"].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "model.safetensors").write_bytes(b"\x00\x01 this is not a safetensors file" * 10)
    _unavailable(S.SamEngine.load(str(bad), device="cpu"))


def test_config_of_another_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    msg = _unavailable(S.SamEngine.load(str(tmp_path), device="cpu"))
    assert "'bert'" in msg


def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    msg = _unavailable(S.SamEngine.load(str(tmp_path), device="cpu"))
    assert "config.json" in msg


def test_broken_or_mismatched_processor(folders, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folders["sam"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    for name in S._PROCESSOR_FILES:
        if (broken / name).exists():
            (broken / name).write_text("{ not json")
    msg = _unavailable(S.SamEngine.load(str(broken), device="cpu"))
    assert "processor" in msg

    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    for f in folders["sam"].iterdir():
        (mismatched / f.name).write_bytes(f.read_bytes())
    for name in S._PROCESSOR_FILES:
        (mismatched / name).unlink(missing_ok=True)
    S._FAMILIES["sam"].default_processor(1024).save_pretrained(mismatched)  # the model is 64 px
    msg = _unavailable(S.SamEngine.load(str(mismatched), device="cpu"))
    assert "1024" in msg and "64" in msg


def test_hub_id_without_network_is_a_quick_reason(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    weights.clear_cache()
    t0 = time.perf_counter()
    msg = _unavailable(S.SamEngine.load("facebook/sam-vit-base", device="cpu"))
    assert time.perf_counter() - t0 < 30  # a guard against hanging on the network, not a benchmark
    assert "facebook/sam-vit-base" in msg


def test_folder_without_processor_files_uses_the_family_default(tmp_path):
    """A SAM 2 video checkpoint (how SAM 2.1 is published) saved without processor files."""
    folder = save_tiny(tmp_path / "video", "sam2", processor=False, video=True)
    eng = S.SamEngine.load(str(folder), device="cpu")
    assert isinstance(eng, S.SamEngine), eng
    assert eng.family == "sam2" and any("default SAM 2 processor" in n for n in eng.notes)
    geo = Geometry.identity(ORIG).then_crop(CROP)
    eng.set_image(phantom(geo.processed_shape), geo)
    res = eng.predict([[50.0, 40.0]], [1])
    assert res.mask.shape == ORIG and len(res.candidates) == 3


# ---------------------------------------------------------------------------
# benchmark helper (architectures from configs, no download)
# ---------------------------------------------------------------------------
def test_encoder_benchmark_builds_candidates_from_configs():
    rows = B.encoder_benchmark(["slimsam-77"], size=64, repeats=1)
    assert rows[0]["name"] == "slimsam-77" and rows[0]["encoder_ms_median"] > 0 and rows[0]["params_m"] > 0
    with pytest.raises(ValueError, match="options"):
        B.encoder_benchmark(["sam-vit-gigantic"])
    small = B.CANDIDATES["sam2.1-hiera-small"].config(1024)
    assert small.vision_config.backbone_config.blocks_per_stage == [1, 2, 11, 2]
    assert B.CANDIDATES["sam-vit-base"].config(1024).vision_config.hidden_size == 768
