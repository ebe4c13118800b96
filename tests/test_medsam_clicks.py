"""python -m train medsam-clicks end to end on a tiny generated LGG-layout dataset: cache its embeddings, train
two steps, export an override folder, load it the way the app does, resume; and the batched click step."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bt_demo.models import medsam


def _need_checkpoint():
    reason = medsam.checkpoint_status()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI installs requirements.txt, so MedSAM must load here: {reason}")
        pytest.skip(f"MedSAM checkpoint not usable here: {reason}")


def phantom(shape, square, seed=0):
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


def _lgg(root):
    """Four patients, five tumour slices, in the plain LGG layout (<patient>/<patient>_<n>.png + _mask.png);
    one slice is not square, so the 256 frame has padding."""
    from PIL import Image

    specs = [("TCGA_AA_0001_20000101", 1, (64, 64), (20, 18, 14)), ("TCGA_AA_0001_20000101", 2, (64, 64), (22, 20, 12)),
             ("TCGA_BB_0002_20000101", 1, (60, 90), (18, 40, 16)), ("TCGA_CC_0003_20000101", 1, (64, 64), (30, 24, 10)),
             ("TCGA_DD_0004_20000101", 1, (64, 64), (16, 30, 15))]
    for k, (pat, n, shape, sq) in enumerate(specs):
        pdir = root / pat
        pdir.mkdir(parents=True, exist_ok=True)
        img, truth = phantom(shape, sq, seed=k)
        Image.fromarray((img * 255).astype(np.uint8)).save(pdir / f"{pat}_{n}.png")
        Image.fromarray(truth.astype(np.uint8) * 255).save(pdir / f"{pat}_{n}_mask.png")


def test_decode_is_the_engine_step_and_batches_padded_clicks(one_thread):
    """decode on a batch with different click counts (padded with label -1) answers each sample as decode on
    that sample alone; the engine's predict gives the same logits as decode."""
    _need_checkpoint()
    import torch

    from bt_demo.models.medsam_decode import decode, pad_points

    net = medsam.load_model("cpu")
    pe, md = net.prompt_encoder, net.mask_decoder
    img, truth = phantom((96, 96), (30, 40, 20))
    emb = torch.from_numpy(medsam.embed(img))[None]
    clicks = [[(50, 40)], [(50, 40), (45, 35), (80, 80)]]
    labels = [[1], [1, 1, 0]]
    # in the 256 frame (96 -> 256)
    scale = 256 / 96
    mp = [[((x + 0.5) * scale - 0.5, (y + 0.5) * scale - 0.5) for x, y in c] for c in clicks]
    p, lab = pad_points(mp, labels)
    assert p.shape == (2, 3, 2) and lab[0].tolist() == [1, -1, -1]
    with torch.inference_mode():
        low, iou = decode(pe, md, emb.expand(2, -1, -1, -1), torch.from_numpy(p), torch.from_numpy(lab))
        assert low.shape == (2, 1, 256, 256) and iou.shape == (2, 1)
        one, _ = decode(pe, md, emb, torch.from_numpy(p[1:]), torch.from_numpy(lab[1:]))
    assert torch.allclose(low[1], one[0], atol=1e-4)
    eng = medsam.MedSamEngine.load("cpu")
    eng.set_image(img, key="decode-test")
    res = eng.predict(clicks[1], labels[1], multimask=False)
    with torch.inference_mode():
        alone, _ = decode(pe, md, emb, torch.tensor([mp[1]], dtype=torch.float32), torch.tensor([labels[1]]))
    import cv2

    want = cv2.resize(alone[0, 0].numpy(), (96, 96), interpolation=cv2.INTER_LINEAR) > 0
    assert (res.mask == want).mean() > 0.995


def test_trainer_end_to_end_export_load_resume(tmp_path, one_thread):
    _need_checkpoint()
    from safetensors import safe_open

    from train import embeddings, medsam_clicks

    root, cache, run, out = tmp_path / "lgg", tmp_path / "emb", tmp_path / "run", tmp_path / "export"
    _lgg(root)
    res = embeddings.build_cache("lgg", root, cache, only_tumour=True, log=lambda s: None)
    assert res["computed"] == 5
    args = ["--data", str(root), "--cache", str(cache), "--run-dir", str(run), "--out", str(out), "--threads", "1",
            "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "3", "--max-sim-rounds", "2",
            "--val-clicks", "2", "--n-val", "1", "--n-test", "1", "--warmup", "1", "--lr", "1e-3",
            "--box-share", "0.3"]
    assert medsam_clicks.main(args) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 2 and rows[0]["best"]
    assert 0 <= rows[0]["dice_after_1_clicks"] <= 1 and rows[0]["n_val_slices"] >= 1
    split = json.loads((run / "split.json").read_text())
    assert len(split["val"]) == 1 and len(split["test"]) == 1 and len(split["train"]) == 2
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]

    # the export: only prompt encoder / mask decoder tensors, float16, within budget, with its card
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mask_prompt"] is True and cfg["base_sha256"] == medsam.CHECKPOINT_SHA256
    assert (out / "model.safetensors").stat().st_size <= 10 * 1024 * 1024
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert keys and all(k.startswith(("prompt_encoder.", "mask_decoder.")) for k in keys)
        assert all(str(f.get_tensor(k).dtype) == "torch.float16" for k in keys if "weight" in k)
    card = json.loads((out / "card.json").read_text())
    assert card["base_model"]["sha256"] == medsam.CHECKPOINT_SHA256 and card["split"]["val_patients"] == split["val"]
    assert "dice_after_1_clicks" in card["metrics"] and (out / "card.md").exists()

    # loaded the way the app does, it answers a click differently from LiteMedSAM as published
    tuned = medsam.MedSamEngine.load("cpu", clicks=out)
    base = medsam.MedSamEngine.load("cpu")
    assert not isinstance(tuned, str) and not isinstance(base, str)
    assert tuned.feed_previous and not base.feed_previous
    img, truth = phantom((64, 64), (20, 18, 14))
    for eng in (tuned, base):
        eng.set_image(img, key="medsam-clicks-test")
    a = tuned.predict([[25, 27]], [1])
    b = base.predict([[25, 27]], [1], multimask=False)
    assert a.mask.shape == (64, 64) and not np.allclose(a.prob, b.prob, atol=1e-3)
    again = tuned.predict([[25, 27], [5, 5]], [1, 0], previous=a)  # the previous answer goes in as the mask prompt
    assert again.extra["refined"]

    # resume: the step count, the optimizer and the RNG continue
    more = list(args)
    more[more.index("--epochs") + 1] = "2"
    assert medsam_clicks.main(more + ["--resume"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and rows[-1]["step"] == 4
    with pytest.raises(SystemExit, match="not empty"):
        medsam_clicks.main(args)  # a used run folder without --resume is refused


def test_engine_protocol_puts_three_engines_side_by_side_and_picks_the_default(tmp_path, one_thread):
    """python -m train engine-protocol on the generated dataset: every row on the same slices with a cap of 20,
    the default chosen by Dice after 3 clicks among the three engines, the test split written into the card."""
    _need_checkpoint()
    import shutil

    from tests.tiny_models import make_seg
    from train import embeddings, engine_protocol, medsam_clicks

    root, cache, wdir = tmp_path / "lgg", tmp_path / "emb", tmp_path / "weights"
    _lgg(root)
    embeddings.build_cache("lgg", root, cache, only_tumour=True, log=lambda s: None)
    make_seg(wdir / "clicks", "clicks")
    assert medsam_clicks.main(["--data", str(root), "--cache", str(cache), "--run-dir", str(tmp_path / "run"),
                               "--out", str(wdir / "medsam_clicks"), "--threads", "1", "--epochs", "1",
                               "--steps-per-epoch", "1", "--batch-size", "2", "--max-sim-rounds", "1",
                               "--val-clicks", "1", "--n-val", "1", "--n-test", "1", "--warmup", "1"]) == 0
    common = ["--data", str(root), "--cache", str(cache), "--weights-dir", str(wdir), "--threads", "1",
              "--n-val", "1", "--n-test", "1"]
    assert engine_protocol.main(common + ["--out", str(tmp_path / "val.json")]) == 0
    res = json.loads((tmp_path / "val.json").read_text())
    assert set(res["rows"]) == {k for k, _, _ in engine_protocol.ROWS} and res["cap"] == 20
    for r in res["rows"].values():
        assert len(r["dice_curve"]) == 20 and 1 <= r["noc90"] <= 20 and r["n_slices"] == res["n_slices"] >= 1
    best = max(engine_protocol.DEFAULT_CANDIDATES, key=lambda k: res["rows"][k]["dice_after_3_clicks"])
    assert res["default_engine_by_dice_at_3"] == best
    assert "| click model (weights/clicks) |" in res["table_markdown"]
    shutil.copy(wdir / "medsam_clicks" / "card.json", tmp_path / "card_before.json")
    assert engine_protocol.main(common + ["--split", "test", "--rows", "medsam_clicks,medsam_clicks_box", "--card",
                                          "--out", str(tmp_path / "test.json")]) == 0
    card = json.loads((wdir / "medsam_clicks" / "card.json").read_text())
    assert card["metrics"]["evaluated_on"].startswith("test patients") and "box_then_1_click_dice" in card["metrics"]
    assert card["metrics_validation_patients"]["n_slices"] >= 1  # the validation numbers are kept beside them
