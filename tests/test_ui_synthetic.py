"""The Synthetic tab: generate a slice for a mask, load it into the panels, and every trace says SYNTHETIC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bt_demo.models.registry import Engines
from bt_demo.sim.phantom import flair_phantom
from bt_demo.ui.panels import export as EX
from bt_demo.ui.panels import synthetic as SP
from bt_demo.ui.panels import upload as UP
from bt_demo.ui.state import Session

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers"), pytest.mark.usefixtures("one_thread")]



def _messages(view) -> str:
    return " ".join(str(m) for m in view.get("_messages", []))


def test_generate_without_a_tumour_then_load_it_like_an_upload(engines, tmp_path):
    s = Session()
    ticks = []
    s, view = SP.generate(s, engines, "none", None, 7, 4, lambda frac, **kw: ticks.append(frac))
    img = view["synthetic_image"]
    assert img.shape == (SP.LOADED_SIZE, SP.LOADED_SIZE, 3) and "SYNTHETIC" in view["synthetic_info"]
    assert ticks[-1] == (4, 4)  # the progress bar follows the DDIM steps
    s2, again = SP.generate(Session(), engines, "none", None, 7, 4)
    assert np.array_equal(again["synthetic_image"], img)  # the same seed draws the same slice
    s, view = SP.load(s, engines)
    assert s.slice.source == "synthetic" and s.slice.shape == (SP.LOADED_SIZE, SP.LOADED_SIZE)
    assert "SYNTHETIC" in view["status"]
    # the export's files and its report say so
    s, ex = EX.export(s, "unet", engines)
    names = [Path(f).name for f in ex["export_files"]]
    assert names and all(n.startswith("SYNTHETIC_") for n in names), names
    report = json.loads(Path(next(f for f in ex["export_files"] if f.endswith(".json"))).read_text())
    assert report["synthetic"]["synthetic"] is True and report["synthetic"]["seed"] == 7
    # never stored as a correction
    s, cv = EX.accept_correction(s, str(tmp_path / "store"), "unet", None, None, "", 100, engines)
    assert "SYNTHETIC" in _messages(cv)
    assert not (tmp_path / "store").exists() or not any(p.is_file() for p in (tmp_path / "store").rglob("*"))


def test_generate_for_the_drawn_or_the_current_mask(engines):
    s = Session()
    s, view = SP.generate(s, engines, "drawn", None, 0, 3)
    assert "draw a tumour shape" in _messages(view) and "synthetic_image" not in view
    canvas = np.zeros((SP.LOADED_SIZE, SP.LOADED_SIZE, 4), np.uint8)
    canvas[100:140, 90:150] = (255, 153, 0, 255)
    s, view = SP.generate(s, engines, "drawn", {"background": None, "layers": [canvas], "composite": None}, 0, 3)
    assert view["synthetic_image"].shape[:2] == (SP.LOADED_SIZE, SP.LOADED_SIZE)
    assert s.synthetic["mask"].any()  # the drawn shape conditioned the generator
    s, view = SP.generate(Session(), engines, "unet", None, 0, 3)
    assert "upload" in _messages(view).lower() or "slice" in _messages(view).lower()
    s, view = SP.generate(s, engines, "none", None, -1, 3)
    assert "seed" in _messages(view)


def test_a_real_upload_after_a_synthetic_one_is_not_marked(engines, tmp_path):
    from PIL import Image

    s = Session()
    s, _ = SP.generate(s, engines, "none", None, 1, 3)
    s, _ = SP.load(s, engines)
    img, _ = flair_phantom((128, 128), seed=2)
    p = tmp_path / "real.png"
    Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(p)
    s, view = UP.load_file(s, engines, str(p))
    assert s.slice.source == "png" and "SYNTHETIC" not in view["status"]
    s, ex = EX.export(s, "unet", engines)
    assert not any(Path(f).name.startswith("SYNTHETIC_") for f in ex["export_files"])


def test_without_generator_weights_the_tab_says_why(tmp_path):
    eng = Engines(weights_dir=str(tmp_path / "none"), sam_model="none", device="cpu")
    s, view = SP.generate(Session(), eng, "none", None, 0, 3)
    assert "generator unavailable" in _messages(view)
