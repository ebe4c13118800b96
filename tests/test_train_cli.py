"""Every training CLI end to end on a tiny dataset the test generates (no real data)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from bt_demo.models import weights


def _blob_slice(rng, size=64, tumour=True):
    yy, xx = np.mgrid[:size, :size]
    head = ((xx - size / 2) / (size * 0.42)) ** 2 + ((yy - size / 2) / (size * 0.46)) ** 2 <= 1
    img = np.where(head, 90, 5).astype(np.float32) + rng.normal(0, 6, (size, size))
    mask = np.zeros((size, size), bool)
    if tumour:
        cx, cy, r = rng.integers(20, size - 20), rng.integers(20, size - 20), rng.integers(5, 10)
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        img[mask] += 100
    return np.clip(img, 0, 255).astype(np.uint8), mask


@pytest.fixture(scope="module")
def lgg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lgg")
    rng = np.random.default_rng(0)
    for p in range(5):
        pdir = root / f"TCGA_XX_{p:04d}_20000101"
        pdir.mkdir()
        for n in range(1, 7):
            img, mask = _blob_slice(rng, tumour=n % 3 != 0)
            if p == 0:  # one patient in the original Kaggle layout: 3-channel TIFF, FLAIR in channel 1
                stack = np.stack([img // 2, img, img // 3], -1)
                Image.fromarray(stack).save(pdir / f"{pdir.name}_{n}.tif")
                Image.fromarray((mask * 255).astype(np.uint8)).save(pdir / f"{pdir.name}_{n}_mask.tif")
            else:
                Image.fromarray(img).save(pdir / f"{pdir.name}_{n}.png")
                Image.fromarray((mask * 255).astype(np.uint8)).save(pdir / f"{pdir.name}_{n}_mask.png")
    return root


@pytest.fixture(scope="module")
def figshare_root(tmp_path_factory):
    """A figshare-like folder: images/<n>.jpg and labels.csv with patient-level folds 1-4."""
    root = tmp_path_factory.mktemp("figshare")
    (root / "images").mkdir()
    rng = np.random.default_rng(1)
    rows = ["image,figshare_index,label,fold,box_xc,box_yc,box_w,box_h"]
    n = 0
    for fold in (1, 2, 3, 4):
        for label in ("glioma", "meningioma", "pituitary"):
            for _ in range(3):
                n += 1
                img, _ = _blob_slice(rng, size=72)
                Image.fromarray(img).save(root / "images" / f"{n}.jpg")
                rows.append(f"images/{n}.jpg,{n},{label},{fold},0.5,0.5,0.2,0.2")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def class_root(tmp_path_factory):
    """A Sartaj-like Testing folder (with a leak from Training) for the external check."""
    root = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(1)
    for split, n in (("Training", 2), ("Testing", 3)):
        for cname in ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"):
            d = root / split / cname
            d.mkdir(parents=True)
            for i in range(n):
                img, _ = _blob_slice(rng, size=int(rng.integers(48, 80)), tumour=cname != "no_tumor")
                Image.fromarray(np.stack([img] * 3, -1)).save(d / f"{i}.jpg")
    src = root / "Training" / "glioma_tumor" / "0.jpg"
    (root / "Testing" / "glioma_tumor" / "leak.jpg").write_bytes(src.read_bytes())
    return root


TINY = ["--encoder", "tu-test_efficientnet", "--decoder-channels", "16,8,8", "--input-size", "64", "--crop", "0",
        "--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "4", "--n-val", "1", "--n-test", "1",
        "--no-progress", "--threads", "1"]


def test_help_lists_every_command(capsys):
    from train.__main__ import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("segmentation", "clicks", "classifier", "evaluate"):
        assert cmd in out
    assert main(["nonsense"]) == 2


def test_segmentation_cli_writes_loadable_weights_and_card(lgg_root, tmp_path):
    from train.__main__ import main

    out, run = tmp_path / "unet", tmp_path / "run"
    assert main(["segmentation", "--data", str(lgg_root), "--out", str(out), "--run-dir", str(run), *TINY, "--input-size", "48", "--train-size", "48"]) == 0
    for f in ("config.json", "model.safetensors", "card.json", "card.md"):
        assert (out / f).exists(), f
    card = json.loads((out / "card.json").read_text())
    assert card["task"] == "segmentation"
    assert set(card["split"]["test_patients"]).isdisjoint(card["split"]["train_patients"])
    assert 0 <= card["metrics"]["patient_dice_mean"] <= 1
    assert 0 <= card["metrics_validation_patients"]["patient_dice_mean"] <= 1  # where the targets are read
    assert "non-commercial" in card["data"]["licence"]
    assert (run / "last.pt").exists() and (run / "metrics.jsonl").exists() and (run / "curves.png").exists()
    # the app's loader reads what training wrote
    from bt_demo.models.unet import UNetEngine

    weights.clear_cache()
    eng = UNetEngine.load(str(out))
    assert not isinstance(eng, str)
    assert eng.segment(np.zeros((50, 70), np.float32)).mask.shape == (50, 70)
    # --resume continues the finished run without starting over
    assert main(["segmentation", "--data", str(lgg_root), "--out", str(out), "--run-dir", str(run), "--resume", *TINY, "--input-size", "48", "--train-size", "48"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    # a non-empty run folder without --resume is refused
    with pytest.raises(SystemExit):
        main(["segmentation", "--data", str(lgg_root), "--out", str(out), "--run-dir", str(run), *TINY])


def test_clicks_cli(lgg_root, tmp_path):
    from train.__main__ import main

    out, run = tmp_path / "clicks", tmp_path / "run"
    assert main(["clicks", "--data", str(lgg_root), "--out", str(out), "--run-dir", str(run), "--val-clicks", "2", *TINY, "--input-size", "48", "--train-size", "48"]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["task"] == "clicks"
    assert "noc90" in card["metrics"] and 0 <= card["metrics"]["dice_after_1_clicks"] <= 1
    assert "never_90" in card["metrics_validation_patients"] or "noc90" in card["metrics_validation_patients"]
    from bt_demo.models.clicks import ClickEngine

    weights.clear_cache()
    assert not isinstance(ClickEngine.load(str(out)), str)


def test_init_from_a_plain_unet_warm_starts_an_attention_unet_and_refuses_another_encoder(tmp_path):
    """--init-from weights of another decoder copies every shared tensor (the shipped U-Net into the study's
    scSE winner); weights of another encoder are refused instead of silently training from scratch."""
    import argparse

    import torch

    from bt_demo.models.nets import SegNet
    from train.seg_model import build_model
    from train.segmentation import add_args

    torch.manual_seed(0)
    plain = SegNet(input_size=64, decoder_channels=(32, 16, 16, 8, 8))
    plain.save_pretrained(tmp_path / "plain")
    p = argparse.ArgumentParser()
    add_args(p)
    base = ["--input-size", "64", "--decoder-channels", "32,16,16,8,8", "--init-from", str(tmp_path / "plain")]
    same = build_model(p.parse_args(base), 1, "segmentation")
    assert same.net.decoder.blocks[0].attention1.attention.__class__.__name__ == "Identity"
    scse = build_model(p.parse_args([*base, "--decoder-attention", "scse"]), 1, "segmentation")
    theirs, mine = plain.state_dict(), scse.state_dict()
    assert len(mine) > len(theirs)
    assert all(torch.equal(theirs[k], mine[k]) for k in theirs)  # every encoder/decoder tensor carried over
    with pytest.raises(SystemExit, match="tensors fit"):
        build_model(p.parse_args([*base, "--encoder", "resnet18"]), 1, "segmentation")
    with pytest.raises(SystemExit, match="not 'clicks'"):
        build_model(p.parse_args(base), 4, "clicks")


CLS_TINY = ["--backbone", "small_cnn", "--input-size", "48", "--epochs", "2", "--steps-per-epoch", "2",
            "--batch-size", "8", "--no-progress", "--threads", "1"]


def test_classifier_heads_cross_validate_and_ship_two_calibrated_heads(figshare_root, lgg_root, class_root, tmp_path):
    from train.__main__ import main

    cache = ["--cache-dir", str(tmp_path / "cache")]
    type_runs = []
    for fold in (3, 4):
        run = tmp_path / f"type_f{fold}"
        assert main(["classifier", "--head", "type", "--data", str(figshare_root), "--val-fold", str(fold),
                     "--run-dir", str(run), *CLS_TINY, *cache] + (["--degrade-train"] if fold == 4 else [])) == 0
        res = json.loads((run / "results.json").read_text())
        assert res["split"]["val_fold"] == fold and fold not in res["split"]["train_folds"]
        assert res["val"]["n"] == 9 and set(res["val"]["degraded"]) == {"noise", "blur", "downsample"}
        assert res["temperature"] > 0 and "ece_before_temperature" in res["val"] and res["params_m"] > 0
        type_runs.append(str(run))
    with pytest.raises(SystemExit, match="--val-fold 7"):
        main(["classifier", "--head", "type", "--data", str(figshare_root), "--val-fold", "7",
              "--run-dir", str(tmp_path / "bad"), *CLS_TINY, *cache])
    prun = tmp_path / "presence"
    assert main(["classifier", "--head", "presence", "--data", str(lgg_root), "--val-patients", "2",
                 "--run-dir", str(prun), *CLS_TINY, *cache]) == 0
    pres = json.loads((prun / "results.json").read_text())
    assert set(pres["split"]["val"]).isdisjoint(pres["split"]["train"]) and len(pres["split"]["val"]) == 2
    assert "roc_auc" in pres["val"]
    out = tmp_path / "weights"
    assert main(["classifier-ship", "--type-runs", *type_runs, "--presence-run", str(prun), "--out", str(out),
                 "--run-dir", str(tmp_path / "ship"), "--figshare-dir", str(figshare_root),
                 "--sartaj-dir", str(class_root), *cache]) == 0
    card = json.loads((out / "card.json").read_text())
    t = card["metrics"]["type"]
    assert t["n_folds"] == 2 and set(t["per_fold_macro_f1"]) == {"3", "4"}
    assert t["cv_macro_f1_mean"] == pytest.approx(np.mean(list(t["per_fold_macro_f1"].values())))
    sart = card["metrics"]["other_sources"]["sartaj_testing"]
    assert sart["four_class"]["n"] == 12 and "different sources" in sart["caveat"]  # the leak was dropped
    assert card["metrics"]["other_sources"]["presence_on_figshare_tumour_slices"]["n"] == 36
    assert "from scratch" in card["training"]["pretrained"] and (out / "card.md").exists()
    from bt_demo.models.classifier import ClassifierEngine

    weights.clear_cache()
    eng = ClassifierEngine.load(str(out))
    assert not isinstance(eng, str), eng
    cfg = json.loads((out / "config.json").read_text())
    assert eng.model.tumour_type.temperature == pytest.approx(cfg["tumour_type"]["temperature"])
    assert eng.model.presence.temperature == pytest.approx(pres["temperature"])
    r = eng.classify(np.random.default_rng(0).random((60, 80)).astype(np.float32))
    assert sum(r.probabilities.values()) == pytest.approx(1, abs=1e-5)


def test_classifier_study_runs_every_row_once_and_resumes(figshare_root, tmp_path, monkeypatch):
    """The study runner: each row in its own folder; a finished row is not run again."""
    from train.study import run_rows

    argv = ["classifier", "--head", "type", "--data", str(figshare_root), "--cache-dir", str(tmp_path / "cache"),
            "--backbone", "small_cnn", "--input-size", "32", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "4"]
    lines = []
    assert run_rows([("a", argv), ("b", argv + ["--degrade-train"])], tmp_path / "study", jobs=2, log=lines.append) == 0
    assert (tmp_path / "study" / "a" / "results.json").exists() and (tmp_path / "study" / "b" / "results.json").exists()
    assert json.loads((tmp_path / "study" / "b" / "results.json").read_text())["degrade_train"] is True
    lines.clear()
    assert run_rows([("a", argv)], tmp_path / "study", jobs=1, log=lines.append) == 0
    assert lines == ["done already: a"]


def test_pretrained_flag_reaches_timm_and_our_own_cnns_refuse_it(monkeypatch):
    """--pretrained (online users) asks timm for ImageNet weights; offline here, so the call is observed, not run."""
    import timm

    from bt_demo.models.nets import ClassifierNet

    seen = {}
    real = timm.create_model

    def spy(name, pretrained=False, **kw):
        seen["name"], seen["pretrained"] = name, pretrained
        return real(name, pretrained=False, **kw)
    monkeypatch.setattr(timm, "create_model", spy)
    ClassifierNet(backbone="test_efficientnet", class_names=["a", "b"], no_tumour_class=None, pretrained=True)
    assert seen == {"name": "test_efficientnet", "pretrained": True}
    with pytest.raises(ValueError, match="no pretrained weights"):
        ClassifierNet(backbone="small_cnn", class_names=["a", "b"], no_tumour_class=None, pretrained=True)


def test_diffusion_cli_trains_end_to_end_and_the_app_generates_synthetic_slices(lgg_root, tmp_path):
    """A few seconds on the tiny generated set: trains, exports a card and a sample grid, loads, generates."""
    from bt_demo.models.generator import GeneratorEngine
    from train.__main__ import main

    out, run = tmp_path / "diffusion", tmp_path / "run"
    assert main(["diffusion", "--data", str(lgg_root), "--out", str(out), "--run-dir", str(run), "--size", "32",
                 "--channels", "8,16", "--no-attention", "--epochs", "2", "--steps-per-epoch", "2",
                 "--batch-size", "4", "--n-val", "1", "--n-test", "1", "--sample-steps", "2", "--threads", "1"]) == 0
    for f in ("config.json", "model.safetensors", "card.json", "card.md", "samples.png"):
        assert (out / f).exists(), f
    # the grid beside real (patient) slices stays in the run folder, never beside the weights
    assert (run / "samples_vs_real.png").exists() and not (out / "samples_vs_real.png").exists()
    card = json.loads((out / "card.json").read_text())
    assert card["task"] == "generation" and card["metrics"]["val_loss"] > 0 and "SYNTHETIC" in card["metrics"]["note"]
    weights.clear_cache()
    eng = GeneratorEngine.load(str(out))
    assert not isinstance(eng, str), eng
    mask = np.zeros((50, 70), bool)
    mask[20:30, 30:45] = True
    ticks = []
    a = eng.generate(mask, seed=3, steps=3, progress=lambda i, n: ticks.append((i, n)))
    b = eng.generate(mask, seed=3, steps=3)
    assert a.image.shape == (32, 32) and a.synthetic and ticks[-1] == (3, 3)
    assert np.array_equal(a.image, b.image)  # a seed gives the same slice again
    assert 0 <= a.image.min() and a.image.max() <= 1 and a.mask.sum() > 0
    with pytest.raises(ValueError, match="steps must be 1 to 200"):
        eng.generate(None, steps=0)
    # sampled together, each slice is the one its seed gives alone
    batch = eng.generate_batch([mask, None], [3, 4], steps=3)
    assert np.allclose(batch[0], a.image, atol=1e-4) and batch.shape == (2, 32, 32)
    # the generator learnt only the U-Net split's training patients: its held-back ones are the U-Net's val + test
    split = json.loads((run / "split.json").read_text())
    assert len(split["val"]) == 2 and set(split["val"]).isdisjoint(split["train"])
    # it predicts the velocity v (the sampler reads that from the config), and a second run warm-starts from the
    # first one's exported weights (an epsilon model's speckled samples were fixed that way)
    assert json.loads((out / "config.json").read_text())["prediction_type"] == "v_prediction"
    run2 = tmp_path / "run2"
    assert main(["diffusion", "--data", str(lgg_root), "--out", str(tmp_path / "d2"), "--run-dir", str(run2),
                 "--size", "32", "--channels", "8,16", "--no-attention", "--epochs", "1", "--steps-per-epoch", "1",
                 "--batch-size", "4", "--n-val", "1", "--n-test", "1", "--sample-steps", "2", "--threads", "1",
                 "--init-from", str(out)]) == 0
    assert f"warm start from {out}" in (run2 / "train.log").read_text()
    # the one-step x0 check, on an export and on a training checkpoint
    x0 = tmp_path / "x0.json"
    assert main(["diffusion-x0", str(out), str(run / "best.pt"), "--data", str(lgg_root), "--n", "2",
                 "--out", str(x0)]) == 0
    res = json.loads(x0.read_text())["results"]
    assert set(res[str(out)]["x0_mse_by_t"]) == {"20", "100", "300", "500", "800", "950"}
    assert res[str(run / "best.pt")]["prediction_type"] == "v_prediction"
    warm = json.loads((tmp_path / "d2" / "card.json").read_text())["training"]["warm_start"]
    assert warm["init_from"] == str(out) and warm["images_seen"] == 16  # the card says where it started

    # the augmentation experiment's plumbing: a pool of synthetic pairs, mixed into a U-Net study row
    pool = tmp_path / "pool.npz"
    assert main(["synthetic-pool", "--weights", str(out), "--data", str(lgg_root), "--n", "6", "--steps", "2",
                 "--out", str(pool)]) == 0
    z = np.load(pool)
    assert z["images"].shape == (6, 64, 64) and z["images"].dtype == np.uint8 and z["masks"].shape == (6, 64, 64)
    row = tmp_path / "row"
    assert main(["segmentation", "--study", "--data", str(lgg_root), "--run-dir", str(row), *TINY, "--input-size", "48",
                 "--train-size", "48", "--synthetic-pool", str(pool), "--synthetic-share", "0.5", "--split-seed", "0"]) == 0
    res = json.loads((row / "results.json").read_text())
    assert 0 <= res["val"]["patient_dice_mean"] <= 1 and "synthetic pool: 6 pairs" in (row / "train.log").read_text()

    # realism (KID in our own networks' features, with the real-vs-real floor) and mask adherence
    from tests.tiny_models import make_classifier, make_seg

    unet = make_seg(tmp_path / "unet", input_size=64)
    clf = make_classifier(tmp_path / "classifier")
    res_json = tmp_path / "gen_eval.json"
    assert main(["generator-eval", "--weights", str(out), "--unet", str(unet), "--classifier", str(clf),
                 "--data", str(lgg_root), "--steps", "2", "--n-empty", "2", "--out", str(res_json), "--grid", str(tmp_path / "grid.png"),
                 "--cache", str(tmp_path / "syn.npz")]) == 0
    ev = json.loads(res_json.read_text())
    for feats in ("U-Net encoder", "U-Net encoder, all stages", "classifier presence net"):
        k = ev["realism_kid"][feats]
        assert len(k["kid_real_vs_real_floor"]) == 2 and len(k["kid_synthetic_vs_real"]) == 2
        assert "c2st_synthetic_vs_real" in k  # (one patient a side here: no patient-split test, and it says so)
    # a second evaluation of the same weights reuses the generated slices
    cached = np.load(tmp_path / "syn.npz")["syn"]
    assert main(["generator-eval", "--weights", str(out), "--unet", str(unet), "--classifier", str(clf),
                 "--data", str(lgg_root), "--steps", "2", "--n-empty", "2", "--out", str(res_json), "--grid", str(tmp_path / "grid.png"),
                 "--cache", str(tmp_path / "syn.npz")]) == 0
    assert json.loads(res_json.read_text())["n_synthetic"] == len(cached)
    ad = ev["mask_adherence"]
    assert 0 <= ad["unet_dice_vs_condition_synthetic"] <= 1 and 0 <= ad["unet_fp_rate_empty_mask_synthetic"] <= 1
    assert (tmp_path / "grid.png").exists()


def test_portable_paths_are_repo_relative_shared_data_is_dotdot_shared_and_anything_else_stays_absolute():
    from train.common import REPO, portable

    card = {"weights": f"{REPO}/weights/unet", "data": [f"{REPO.parent}/shared/data/lgg"],
            "init_from": f"{REPO.parent}/elsewhere/run/best.pt", "tmp": "/tmp/pytest-of-root/x"}
    assert portable(card) == {"weights": "weights/unet", "data": ["../shared/data/lgg"],
                              "init_from": f"{REPO.parent}/elsewhere/run/best.pt", "tmp": "/tmp/pytest-of-root/x"}
