"""The image-content check: quiet on brain slices, a notice (never a refusal) on pictures that are not brain MRI."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bt_demo.image import looks_like_brain as L
from bt_demo.sim.decoys import KINDS, decoy
from bt_demo.sim.phantom import flair_phantom


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", [(256, 256), (200, 320), (512, 512)])
def test_brain_phantoms_get_no_notice(seed, shape):
    for kind in ("solid", "cystic"):
        img, _ = flair_phantom(shape, seed=seed, lesion_kind=kind)
        assert L.notices(img) == (), L.facts(img)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(3))
def test_pictures_that_are_not_brain_mri_get_a_notice(kind, seed):
    (text,) = L.notices(decoy(kind, 256, seed))
    assert "does not look like a brain MRI slice" in text and "trained on brain MRI only" in text


def test_the_notice_shows_on_the_status_line_and_beside_the_classifier(tmp_path):
    from bt_demo.models.registry import Engines
    from bt_demo.ui.panels import upload as UP
    from bt_demo.ui.state import Session
    from tests.tiny_models import make_weights_dir

    engines = Engines(weights_dir=str(make_weights_dir(tmp_path / "w")), sam_model="none", device="cpu")
    xray = tmp_path / "chest.png"
    Image.fromarray(np.rint(decoy("chest_xray", 128, 0) * 255).astype(np.uint8)).save(xray)
    s, view = UP.load_file(Session(), engines, str(xray))
    assert s.loaded  # read like any slice: a notice, not a refusal
    assert "does not look like a brain MRI slice" in view["status"]
    assert "Unlike the training data" in view["class_info"]
    brain = tmp_path / "brain.png"
    Image.fromarray(np.rint(flair_phantom((128, 128), seed=1)[0] * 255).astype(np.uint8)).save(brain)
    s, view = UP.load_file(s, engines, str(brain))
    assert "does not look like" not in view["status"] and "Unlike the training data" not in view["class_info"]
