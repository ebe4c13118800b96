"""The image-study panels of the app, through their handlers (no browser), with tiny models.

Intensity histogram (shown on upload, brain/whole switch, K-Means and window
marked), classical segmenters in the comparison (chosen, parameters, clicks
used, refreshed after a click), the measurement of the chosen mask (table,
drawing, units, export report) and the TTA uncertainty map (tiny U-Net, and
no U-Net at all).
"""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from bt_demo.models.registry import Engines
from bt_demo.sim.phantom import flair_phantom
from bt_demo.ui import compute as C
from bt_demo.ui.panels import compare as CMP
from bt_demo.ui.panels import export as EX
from bt_demo.ui.panels import kmeans as KM
from bt_demo.ui.panels import measure as MS
from bt_demo.ui.panels import preprocessing as PP
from bt_demo.ui.panels import prompts as PR
from bt_demo.ui.panels import uncertainty as UN
from bt_demo.ui.panels import upload as UP
from bt_demo.ui.state import Session

SIDE = 160

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers"),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def empty_engines(tmp_path_factory) -> Engines:
    return Engines(weights_dir=str(tmp_path_factory.mktemp("empty_weights")), sam_model="none", device="cpu")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A PNG FLAIR-like phantom, its lesion mask and the (x, y) of the lesion's deepest pixel."""
    from scipy import ndimage

    img, mask = flair_phantom((SIDE, SIDE), seed=0)
    path = tmp_path_factory.mktemp("phantom") / "slice.png"
    Image.fromarray(np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)
    d = ndimage.distance_transform_edt(mask)
    y, x = np.unravel_index(int(np.argmax(d)), d.shape)
    return path, mask, (float(x), float(y))


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * (a & b).sum() / max(1, a.sum() + b.sum())


def to_display(s: Session, xy) -> list[float]:
    f = s.display_factor
    return [round((xy[0] + 0.5) * f - 0.5), round((xy[1] + 0.5) * f - 0.5)]


def loaded(engines, path) -> Session:
    s, view = UP.load_file(Session(), engines, str(path))
    assert not view.get("_messages"), view.get("_messages")
    s, _ = C.prepare_prompts(s, engines)
    return s


def messages(view) -> str:
    return " | ".join(view.get("_messages", []))


def value(update):
    """The value of a plain value or of a ``gr.update(...)`` dict."""
    return update.get("value") if isinstance(update, dict) and update.get("__type__") == "update" else update


# ---------------------------------------------------------------------------
# intensity histogram
# ---------------------------------------------------------------------------
def test_histogram_is_shown_on_upload_and_follows_scope_k_and_preprocessing(engines, phantom):
    path, _, _ = phantom
    s, view = UP.load_file(Session(), engines, str(path))
    fig = view["intensity_plot"]
    assert [t.name for t in fig.data] == ["before", "before CDF", "after", "after CDF", "K-Means boundary",
                                          "display window"]  # the last two: legend entries of the marks
    k = s.kmeans.k
    assert len(fig.layout.shapes) == (k - 1) + 2  # K-Means boundaries + the two window edges
    assert "brain pixels" in view["intensity_info"] and "K = " in view["intensity_info"]
    n_brain = int(np.sum(fig.data[0].y))
    assert 0 < n_brain < SIDE * SIDE

    s, view = PP.set_histogram_scope(s, "whole")
    assert s.hist_scope == "whole" and "whole image" in view["intensity_info"]
    assert int(np.sum(view["intensity_plot"].data[0].y)) == SIDE * SIDE

    s, view = KM.set_k(s, 6)
    assert len(view["intensity_plot"].layout.shapes) == (s.kmeans.k - 1) + 2

    # a preprocessing change redraws the "after" curve
    before_after = np.asarray(view["intensity_plot"].data[2].y)
    s, view = PP.set_preprocessing(s, engines, [("clahe", {})])
    assert not view.get("_messages"), messages(view)
    assert not np.array_equal(np.asarray(view["intensity_plot"].data[2].y), before_after)

    s, view = PP.set_histogram_scope(s, "everything")
    assert "choose what the histogram counts" in messages(view) and s.hist_scope == "whole"


# ---------------------------------------------------------------------------
# classical segmenters in the comparison
# ---------------------------------------------------------------------------
def test_classical_segmenter_chosen_appears_in_table_overlay_and_agreement(engines, phantom):
    path, lesion, (cx, cy) = phantom
    s = loaded(engines, path)
    # nothing classical runs on upload (upload-to-panels stays as fast as before)
    assert s.classical == {} and s.classical_on == ()
    s, view = CMP.set_classical(s, ["watershed"])
    assert not view.get("_messages"), messages(view)
    res = s.classical_result("watershed")
    assert res is not None and res.extra["started_from"] == "brightest K-Means cluster"
    assert res.mask.shape == (SIDE, SIDE)
    pairs = list(view["metrics_table"]["pair"])
    assert "U-Net vs watershed" in pairs and "K-Means vs watershed" in pairs
    assert "watershed" in list(view["area_table"]["mask"])
    ov = view["overlay_watershed"]
    assert ov["visible"] is True and ov["value"].shape == (SIDE, SIDE, 3) and "no click" in ov["label"]
    assert view["overlay_chan_vese"]["visible"] is False

    # a click: the click answer comes at once (watershed marked as updating), the chained refresh uses the click
    s, view = PR.click(s, engines, to_display(s, (cx, cy)), "positive")
    assert "Updating: watershed" in view["compare_info"]
    assert "U-Net vs watershed" not in list(view["metrics_table"]["pair"])
    s, view = C.update_classical(s)
    res = s.classical_result("watershed")
    assert res.extra["started_from"] == "clicks" and dice(res.mask, lesion) >= 0.8
    assert "U-Net vs watershed" in list(view["metrics_table"]["pair"])
    assert "from clicks" in view["overlay_watershed"]["label"]
    s, again = C.update_classical(s)
    assert again == {}  # nothing stale: nothing recomputed or redrawn

    # all three snakes + U-Net, prompted, K-Means = 6 masks: the agreement map counts votes
    s, view = CMP.set_classical(s, ["watershed", "chan_vese", "geodesic"])
    assert not view.get("_messages"), messages(view)
    assert len(view["metrics_table"]) == 15
    for name in ("chan_vese", "geodesic"):
        assert s.classical_result(name).extra["started_from"] == "clicks"
        assert dice(s.classical_result(name).mask, lesion) >= 0.75, name
    assert "How many of the 6 masks" in view["agreement_legend"]
    assert view["agreement_image"].shape == (SIDE, SIDE, 3)


def test_classical_parameters_validated_and_used(engines, phantom):
    path, _, (cx, cy) = phantom
    s = loaded(engines, path)
    keys = CMP.classical_param_keys()
    from bt_demo.studies.classical_seg import CLASSICAL

    defaults = [p.default for name in CLASSICAL for p in CLASSICAL[name].params]
    assert len(keys) == len(defaults)
    vals = list(defaults)
    vals[keys.index(("chan_vese", "iterations"))] = 5
    s, view = CMP.set_classical(s, ["chan_vese"], vals)
    assert not view.get("_messages") and s.classical_settings("chan_vese")["iterations"] == 5
    assert s.classical_result("chan_vese").extra["params"]["iterations"] == 5
    bad = list(vals)
    bad[keys.index(("watershed", "sigma"))] = 99
    s, view = CMP.set_classical(s, ["chan_vese", "watershed"], bad)
    assert "watershed.sigma must be in" in messages(view)
    assert s.classical_on == ("chan_vese",) and s.classical_settings("watershed")["sigma"] == 1.0  # unchanged
    s, view = CMP.set_classical(s, ["nope"])
    assert "unknown classical segmenter" in messages(view)


def test_classical_uses_clicks_through_a_crop(engines, phantom):
    """Clicks are in slice pixels; with crop-to-brain the classical mask still comes back in slice pixels."""
    from bt_demo.image.preprocess import STEPS

    crop = next(n for n, st in STEPS.items() if st.changes_geometry)
    path, lesion, (cx, cy) = phantom
    s = loaded(engines, path)
    s, view = PP.set_preprocessing(s, engines, [(crop, {})])
    assert not view.get("_messages") and not s.processed.geometry.is_identity
    s, _ = PR.click(s, engines, to_display(s, (cx, cy)), "positive")
    s, view = CMP.set_classical(s, ["watershed"])
    res = s.classical_result("watershed")
    assert res.mask.shape == (SIDE, SIDE) and res.mask[int(cy), int(cx)]
    assert dice(res.mask, lesion) >= 0.8


def test_classical_failure_is_a_message(engines, phantom, monkeypatch):
    import bt_demo.studies.classical_seg as cs

    path, _, _ = phantom
    s = loaded(engines, path)

    def bad(*a, **kw):
        raise ValueError("points must be finite")

    monkeypatch.setattr(cs, "run_classical", bad)
    s, view = CMP.set_classical(s, ["watershed"])
    assert "points must be finite" in messages(view) and s.classical_on == ()

    def boom(*a, **kw):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(cs, "run_classical", boom)
    with pytest.raises(gr.Error) as info:
        CMP.set_classical(s, ["geodesic"])
    assert "secret internals" not in str(info.value) and s.classical_on == ()


# ---------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------
def test_measurement_shown_in_px_then_mm_and_in_the_report(engines, phantom):
    from bt_demo.studies.measure import measure

    path, lesion, (cx, cy) = phantom
    s, view = UP.load_file(Session(), engines, str(path))
    assert "no prompted mask yet" in view["measure_table"]
    assert view["measure_image"].shape[:2] == (SIDE, SIDE)  # the slice, nothing drawn

    # the K-Means mask: numbers in px, drawing on the (upscaled) slice
    s, view = MS.choose_mask(s, "kmeans")
    assert view["measure_which"] == "kmeans" and view["export_which"] == "kmeans"
    m = view["_measurement"]
    ref = measure(s.kmeans_mask)
    assert m["long_diameter"] == pytest.approx(ref["long_diameter"]) and m["unit"] == "px"
    md = view["measure_table"]
    for text in ("K-Means mask", "lengths in **px**", "longest diameter", "perpendicular diameter",
                 "product of the two diameters", "centroid", "bounding box", "side", "radiological convention"):
        assert text in md, text
    assert f"{ref['long_diameter']:.1f} px" in md
    f = s.display_factor
    img = view["measure_image"]
    assert img.shape == (int(SIDE * f), int(SIDE * f), 3)

    # typed pixel spacing: mm, and the lengths scale
    s, view = UP.set_spacing(s, 0.5)
    m2 = view["_measurement"]
    assert m2["unit"] == "mm" and m2["long_diameter"] == pytest.approx(0.5 * ref["long_diameter"], rel=0.02)
    assert "lengths in **mm**" in view["measure_table"] and "mm²" in view["measure_table"]

    # a classical mask chosen to measure is computed on demand; export writes its measurement into the report
    s, _ = PR.click(s, engines, to_display(s, (cx, cy)), "positive")
    s, view = MS.choose_mask(s, "watershed")
    assert "watershed mask" in view["measure_table"] and s.classical_result("watershed") is not None
    s, view = EX.export(s, "watershed")
    assert not view.get("_messages"), messages(view)
    rep_path = next(Path(p) for p in view["export_files"] if p.endswith(".json"))
    rep = json.loads(rep_path.read_text())
    meas = rep["measurement"]
    want = measure(s.classical_result("watershed").mask, (0.5, 0.5))
    assert meas["mask"] == "watershed" and meas["unit"] == "mm" and meas["product_unit"] == "mm²"
    assert meas["long_diameter"] == pytest.approx(want["long_diameter"], abs=0.01)
    assert meas["perpendicular_diameter"] == pytest.approx(want["short_diameter"], abs=0.01)
    assert meas["rano_product"] == pytest.approx(want["rano_product"], abs=0.05)
    assert meas["area_mm2"] == pytest.approx(0.25 * want["area_px"], abs=0.01)
    assert meas["side"] in ("image left", "image right", "midline") and "radiological" in meas["side_caveat"]
    assert "contours" not in meas and rep["engines"]["watershed"]["started_from"] == "clicks"
    assert "longest diameter" in view["export_info"]
    assert view["export_which"] == "watershed" and s.chosen_mask == "watershed"

    # exporting the prompted mask switches the Measure tab to it
    s, view = EX.export(s, "prompted")
    assert "prompted mask" in view["measure_table"] and view["measure_which"] == "prompted"

    s, view = MS.choose_mask(s, "everything")
    assert "choose a mask" in messages(view)


def test_measure_with_no_unet(empty_engines, phantom):
    path, _, _ = phantom
    s, _ = UP.load_file(Session(), empty_engines, str(path))
    s, view = MS.choose_mask(s, "unet")
    assert "no U-Net mask" in view["measure_table"] and "unavailable" in view["measure_table"]
    s, view = EX.export(s, "unet")
    assert "no U-Net mask to export" in messages(view)


# ---------------------------------------------------------------------------
# uncertainty
# ---------------------------------------------------------------------------
def test_uncertainty_with_tiny_unet(engines, phantom, monkeypatch):
    import bt_demo.studies.uncertainty as un

    path, _, _ = phantom
    s, view = UP.load_file(Session(), engines, str(path))
    assert view["uncertainty_image"] is None and "Press **Uncertainty map (TTA)**" in view["uncertainty_info"]
    calls = []
    real = un.tta_uncertainty
    monkeypatch.setattr(un, "tta_uncertainty", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    s, view = UN.run_uncertainty(s, engines)
    assert not view.get("_messages"), messages(view)
    img = view["uncertainty_image"]
    f = s.display_factor  # shown upscaled, like the clickable image
    assert img.shape == (int(SIDE * f), int(SIDE * f), 3) and img.dtype == np.uint8
    info = view["uncertainty_info"]
    assert ("of the predicted tumour area is uncertain" in info) or ("predicts no tumour" in info)
    assert "8 augmented copies" in info and s.uncertainty["uncertainty_orig"].shape == (SIDE, SIDE)
    assert 0.0 <= s.uncertainty["high_fraction"] <= 1.0
    # cached: pressing again does not run the network again; the threshold re-summarises
    s, _ = UN.run_uncertainty(s, engines)
    assert len(calls) == 1
    s, view = CMP.set_threshold(s, engines, 0.95)
    assert "≥ 0.95" in view["uncertainty_info"] and len(calls) == 1
    # an intensity step does not reach the U-Net (it sees the slice it was trained on): the map stays
    s, view = PP.set_preprocessing(s, engines, [])
    assert view["uncertainty_image"] is not None
    # a change of the U-Net's input (the brain crop) invalidates it
    s, view = PP.set_preprocessing(s, engines, [("crop_brain", {"margin": 2})])
    assert view["uncertainty_image"] is None and "Press" in view["uncertainty_info"]


def test_uncertainty_without_unet_says_why(empty_engines, phantom):
    path, _, _ = phantom
    s, view = UP.load_file(Session(), empty_engines, str(path))
    assert "Uncertainty map unavailable because the U-Net is unavailable" in view["uncertainty_info"]
    s, view = UN.run_uncertainty(s, empty_engines)
    assert "needs the U-Net, which is unavailable" in messages(view)
    assert view["uncertainty_image"] is None and "unavailable because" in view["uncertainty_info"]
    s, view = UN.run_uncertainty(Session(), empty_engines)
    assert "upload a slice first" in messages(view)


# ---------------------------------------------------------------------------
# sessions and the page
# ---------------------------------------------------------------------------
def test_studies_state_is_per_session(engines, phantom):
    import copy

    path, _, _ = phantom
    a = loaded(engines, path)
    a, _ = CMP.set_classical(a, ["watershed"])
    a, _ = PP.set_histogram_scope(a, "whole")
    b = copy.deepcopy(Session())
    assert b.classical_on == () and b.classical == {} and b.hist_scope == "brain" and b.uncertainty is None
    c = copy.deepcopy(a)
    c, _ = CMP.set_classical(c, [])
    assert a.classical_on == ("watershed",) and c.classical_on == ()


def test_new_events_have_api_names(engines, tmp_path):
    from bt_demo.ui.layout import build_demo

    demo = build_demo(engines, annotations_dir=str(tmp_path))
    fns = {f.api_name: f for f in demo.fns.values()}
    for name in ("intensity_histogram", "classical_segmenters", "measure_mask", "export_mask_choice",
                 "uncertainty_map"):
        assert name in fns, name
    # internal steps: the hidden tabs drawn when opened; the classical segmenters run in the chained prepare step
    assert fns["show_compare"].api_visibility == "private" and "refresh_classical" not in fns
    labels = {getattr(b, "label", None) for b in demo.blocks.values()}
    for label in ("Intensity histogram and CDF, before / after preprocessing", "Histogram counts",
                  "Classical segmenters beside the models", "Mask to measure (and export)", "Measurements",
                  "U-Net uncertainty (TTA spread)", "Uncertainty summary"):
        assert label in labels, label
