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
def class_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(1)
    for split, n in (("Training", 6), ("Testing", 3)):
        for cname in ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"):
            d = root / split / cname
            d.mkdir(parents=True)
            for i in range(n):
                img, _ = _blob_slice(rng, size=int(rng.integers(48, 80)), tumour=cname != "no_tumor")
                Image.fromarray(np.stack([img] * 3, -1)).save(d / f"{i}.jpg")
    # a duplicate inside Training and a Testing image that leaks from Training
    src = root / "Training" / "glioma_tumor" / "0.jpg"
    (root / "Training" / "glioma_tumor" / "copy.jpg").write_bytes(src.read_bytes())
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
    from bt_demo.models.clicks import ClickEngine

    weights.clear_cache()
    assert not isinstance(ClickEngine.load(str(out)), str)


def test_classifier_cli_dedupes_and_calibrates(class_root, tmp_path):
    from train.__main__ import main

    out, run = tmp_path / "cls", tmp_path / "run"
    assert main(["classifier", "--train-dir", str(class_root / "Training"), "--test-dir", str(class_root / "Testing"),
                 "--out", str(out), "--run-dir", str(run), "--backbone", "test_efficientnet", "--input-size", "64",
                 "--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "8", "--val-fraction", "0.34",
                 "--no-progress", "--threads", "1"]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["metrics"]["n_test_dropped"]["also_in_training"] == 1
    assert card["metrics"]["n"] == 12
    assert set(card["metrics"]["degraded"]) == {"noise", "blur", "downsample"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["temperature"] > 0 and cfg["class_names"] == ["glioma", "meningioma", "no_tumour", "pituitary"]
    from bt_demo.models.classifier import ClassifierEngine

    weights.clear_cache()
    eng = ClassifierEngine.load(str(out))
    assert not isinstance(eng, str) and eng.model.temperature == pytest.approx(cfg["temperature"])


def test_shipped_weights_are_replaced_only_by_a_better_card(tmp_path):
    from train.promote import promote

    def folder(name, dice):
        d = tmp_path / name
        d.mkdir()
        (d / "card.json").write_text(json.dumps({"task": "segmentation", "metrics": {"patient_dice_mean": dice}}))
        (d / "model.safetensors").write_bytes(name.encode())
        return d

    shipped = tmp_path / "weights_unet"
    assert promote(folder("first", 0.80), shipped)[0]  # nothing shipped yet
    ok, why = promote(folder("worse", 0.78), shipped)
    assert not ok and "0.8000" in why and (shipped / "model.safetensors").read_bytes() == b"first"
    assert promote(folder("better", 0.83), shipped)[0]
    assert (shipped / "model.safetensors").read_bytes() == b"better"
    assert promote(folder("forced", 0.5), shipped, force=True)[0]
    assert json.loads((shipped / "card.json").read_text())["metrics"]["patient_dice_mean"] == 0.5


def test_cards_name_paths_relative_to_the_repository():
    from train.common import REPO, portable

    card = {"data": {"path": str(REPO.parent / "shared" / "data" / "lgg")},
            "evaluate_command": f"python -m train evaluate --weights {REPO / 'weights' / 'unet'}", "n": 3}
    assert portable(card) == {"data": {"path": "../shared/data/lgg"},
                              "evaluate_command": "python -m train evaluate --weights weights/unet", "n": 3}
