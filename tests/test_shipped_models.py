"""The shipped weights still reach the floors written in their model cards.

Runs where ../shared/data exists (CI), skips otherwise. Segmentation and click
models are measured on the card's held-out test patients; the classifier on
the deduplicated Testing folder (leaks from Training dropped).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
WEIGHTS = ROOT / "weights"

pytestmark = pytest.mark.realdata


def _card(name: str) -> dict:
    if not (DATA / "lgg").is_dir():
        pytest.skip(f"real data not found at {DATA} (it is beside the repository in CI)")
    card = WEIGHTS / name / "card.json"
    if not card.exists():
        pytest.skip(f"no shipped weights with a card in weights/{name} yet (train them with `python -m train`)")
    return json.loads(card.read_text())


def test_unet_reaches_card_floor():
    from train.evaluate import evaluate_segnet

    card = _card("unet")
    m = evaluate_segnet(WEIGHTS / "unet", None, str(DATA / "lgg"), patients=card["floor_patients"])
    print({k: round(v, 4) for k, v in m.items() if isinstance(v, float)})
    for key, floor in card["floors"].items():
        assert m[key] >= floor, f"U-Net {key} {m[key]:.4f} fell below the card's floor {floor}"


def test_click_model_reaches_card_floor():
    from train.evaluate import evaluate_segnet

    card = _card("clicks")
    m = evaluate_segnet(WEIGHTS / "clicks", None, str(DATA / "lgg"), patients=card["floor_patients"], n_clicks=3)
    print({k: round(v, 4) for k, v in m.items() if isinstance(v, float)})
    for key, floor in card["floors"].items():
        assert m[key] >= floor, f"click model {key} {m[key]:.4f} fell below the card's floor {floor}"


def test_classifier_reaches_card_floor():
    from bt_demo.models.nets import ClassifierNet
    from train.classes import read_class_folder
    from train.classifier import class_metrics, letterboxed, logits_of, softmax

    card = _card("classifier")
    root = DATA / "classification" / "sartaj_4class"
    model = ClassifierNet.from_pretrained(str(WEIGHTS / "classifier"), strict=True).float().eval()
    train_hashes = set(read_class_folder(root / "Training", model.class_names).hashes)
    test = read_class_folder(root / "Testing", model.class_names, exclude_hashes=train_hashes)
    m = class_metrics(softmax(logits_of(model, letterboxed(test.images, model.input_size, model.fit)) / model.temperature),
                      test.labels, model.class_names)
    print({k: v for k, v in m.items() if k != "confusion_matrix"})
    assert m["macro_f1"] >= card["floors"]["macro_f1"]
    assert m["accuracy"] >= card["floors"]["accuracy"]
    assert m["ece"] <= card["floors"]["ece_max"]
