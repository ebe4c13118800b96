"""The Export tab: the chosen mask (PNG + NIfTI) and a JSON report to download; and a corrected mask (the
prompted one, an uploaded file, or painted with the brush) stored, de-identified, for the next training round."""

from __future__ import annotations

import os

import gradio as gr
import numpy as np

from bt_demo import render
from bt_demo.errors import InputError
from bt_demo.ui import compute as C
from bt_demo.ui import views
from bt_demo.ui.kit import MEASURE_OUT, Page, editor_mask, handler, need_slice, notify
from bt_demo.ui.panels.measure import choose_mask, mask_choices
from bt_demo.ui.panels.synthetic import report_record
from bt_demo.ui.state import Session
from bt_demo.ui.views import esc

APP_VERSION = "0.1.0"


# ---------------------------------------------------------------------------
# what a report and a stored correction say
# ---------------------------------------------------------------------------
def _prompts_record(s: Session) -> dict:
    pr = s.prompts
    return {"points_xy": [[round(float(x), 2), round(float(y), 2)] for x, y in pr.points],
            "labels": [int(lab) for lab in pr.labels],
            "box_xyxy": None if pr.box is None else [round(float(v), 2) for v in pr.box],
            "engine": None if s.slot is None else s.slot.name,
            "candidate": None if pr.result is None or not pr.result.candidates else int(pr.result.chosen)}


def _settings_record(s: Session) -> dict:
    return {"window_center_width": [float(v) for v in s.window] if s.window else None,
            "preprocessing": [{"step": n, "params": dict(p)} for n, p in (s.pipeline or [])],
            "unet_threshold": s.unet_threshold, "kmeans_k": int(s.kmeans_k),
            "geometry": s.processed.geometry.to_dict() if s.processed is not None else None,
            "models_saw": "the preprocessing lab's output" if s.models_see_lab
            else "the slice as loaded (through the brain crop when ticked): the input they were trained on"}


def _scalar_facts(extra: dict) -> dict:
    """The small JSON facts of a result's ``extra`` (no tokens, no model ids that may be local folders)."""
    out = {}
    for k, v in dict(extra).items():
        if k in ("sam_token", "model_id"):
            continue
        if isinstance(v, (bool, int, float, str)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v):
            out[k] = list(v)
    return out


def _engines_record(s: Session) -> dict:
    out = {}
    if s.unet_result is not None:
        out["unet"] = {"engine": s.unet_result.engine, **_scalar_facts(s.unet_result.extra)}
        if views.refined_current(s):  # the exported automatic mask is the refined outline (views.automatic_mask)
            out["unet"]["outline"] = {"engine": "decoder on LiteMedSAM's frozen encoder (weights/medsam_seg), "
                                                "kept where the U-Net finds tumour",
                                      "seconds": round(float(s.refined.seconds), 4)}
        else:
            out["unet"]["outline"] = {"engine": s.unet_result.engine,
                                      "why": s.refined_reason or "the refined outline was not ready"}
    if s.prompts.result is not None:
        out["prompted"] = {"engine": s.prompts.result.engine, **_scalar_facts(s.prompts.result.extra)}
    if s.kmeans is not None:
        out["kmeans"] = {"k": int(s.kmeans.k)}
    for key in views.CLASSICAL_NAMES:
        res = s.classical_result(key)
        if res is not None:
            out[key] = {"engine": res.engine, "seconds": round(float(res.seconds), 4),
                        "started_from": res.extra.get("started_from"), "params": dict(res.extra.get("params", {}))}
    return out


def _classifier_record(s: Session) -> dict | None:
    cr = s.classification
    if cr is None:
        return None
    return {"probabilities": {k: round(float(v), 4) for k, v in cr.probabilities.items()},
            "tumour_probability": round(float(cr.tumour_probability), 4),
            "type_given_tumour": {k: round(float(v), 4) for k, v in cr.type_probabilities.items()},
            "top_class": cr.top_class, "temperatures": dict(cr.temperatures), "notices": list(cr.notices),
            "card": cr.card}


# ---------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------
@handler("exporting", heavy=True)
def export(s: Session, which: str = "prompted", engines=None) -> dict:
    """Write the chosen mask (PNG + NIfTI) and a JSON report into this session's temporary folder.

    which: a key of ``compute.MASK_CHOICES`` ("prompted", "unet", "kmeans", "watershed", "chan_vese",
    "geodesic"; a classical mask is computed if needed). It becomes the session's chosen mask (the
    Measure tab follows). The report holds the mask's measurements (area, RANO diameters, centroid,
    box, side) under ``measurement``. File names are random (never the upload's).
    """
    from bt_demo.io import export as bt_export
    from bt_demo.studies import metrics
    from bt_demo.studies.measure import measure

    need_slice(s)
    C.ensure_models(s, engines)  # the report carries the U-Net and classifier results
    if engines is not None and s.unet_result is not None:
        C.run_refined(s, engines)  # and the automatic mask's refined outline (seconds, once per slice)
    choices = C.MASK_CHOICES
    if which not in choices:
        raise InputError(f"choose which mask to export: {', '.join(choices)}")
    s.chosen_mask = which
    mask = C.chosen_mask(s, which)
    masks = views.current_masks(s)
    spacing = s.effective_spacing()
    measured = bt_export.measurement_record(measure(mask, spacing, views.brain_mask_original(s)), choices[which])
    report = bt_export.build_report(
        engines=_engines_record(s), preprocessing=_settings_record(s)["preprocessing"],
        prompts=_prompts_record(s),
        metrics={"pairwise": metrics.pairwise_table(masks, spacing),
                 "agreement": views.agreement_summary(masks) if masks else None},
        areas=metrics.area_table(masks, spacing), classifier=_classifier_record(s), spacing=spacing,
        shape=list(s.slice.shape), app_version=APP_VERSION, measurement=measured,
        extra={"exported_mask": choices[which], "window_center_width": list(s.window),
               "source_format": s.slice.source, "unet_threshold": s.unet_threshold, "kmeans_k": int(s.kmeans_k),
               "nifti_placement": ("on its slice of the source (the source's affine, RAS mm)"
                                   if s.slice.affine is not None else
                                   "pixel spacing only (the source does not place the slice)" if spacing else
                                   "unknown: the source gives no spacing (written as unknown, not 1 mm)")})
    syn = report_record(s)
    if syn is not None:  # a generated slice: its files and report say SYNTHETIC
        report["synthetic"] = syn
    paths = bt_export.write_bundle(s.ensure_workdir(), mask, spacing, report, affine=s.slice.affine,
                                   prefix="SYNTHETIC_" if syn is not None else "")
    files = [str(p) for p in paths.values()]
    _forget_exports(s, keep=files)
    n = int(np.count_nonzero(mask))
    unit = measured["unit"]
    view = {"export_files": files,
            "export_info": f"{choices[which]} mask ({n} px; longest diameter {measured['long_diameter']} "
                           f"{unit} × perpendicular {measured['perpendicular_diameter']} {unit}): {len(files)} "
                           f"files ready to download ({', '.join(sorted(paths))}); the JSON report holds the "
                           "measurements.",
            "_report": report}
    view.update(views.measure_view(s))
    return view


def _forget_exports(s: Session, keep: list[str]) -> None:
    """Only the latest export stays in the session's folder (the page shows only it): a session exporting
    all day must not fill the disk."""
    from bt_demo.ui.scratch import forget_cached

    gone = [old for old in getattr(s, "exports", ()) if old not in keep]
    for old in gone:
        try:
            os.remove(old)
        except OSError:
            pass
    forget_cached([os.path.basename(g) for g in gone])  # and the copies Gradio served them from
    s.exports = tuple(keep)


# ---------------------------------------------------------------------------
# corrections
# ---------------------------------------------------------------------------
def _load_mask_file(path, shape: tuple[int, int]) -> np.ndarray:
    """A user-supplied corrected mask (any image format) -> bool (H, W): tumour where above half its maximum."""
    from bt_demo.io import load_slice

    sl = load_slice(path)
    px = sl.pixels
    if sl.shape != tuple(shape):
        raise InputError(f"the corrected mask is {sl.shape[1]} × {sl.shape[0]} px but the slice is "
                         f"{shape[1]} × {shape[0]} px; export a mask from this slice, edit it, and upload that")
    lo, hi = float(px.min()), float(px.max())
    if hi <= lo:
        return np.zeros(shape, bool) if hi <= 0 else np.ones(shape, bool)
    return px > (lo + hi) / 2.0


@handler("preparing the brush editor")
def editor_start(s: Session) -> dict:
    """Put the slice into the image editor, with the prompted mask's outline drawn on it as a guide.

    The user paints the tumour on the editor's layer (painted = alpha > 0,
    in slice pixels), then accepts with source "painted". The outline is part
    of the background, not of the painted mask.
    """
    need_slice(s)
    bg = render.to_rgb(views.display_gray(s))
    if s.prompts.result is not None and s.prompts.result.mask.any():
        bg = render.draw_contour(bg, s.prompts.result.mask, views.MASK_COLORS[views.PROMPT], 1)
    return {"editor": {"background": bg, "layers": [], "composite": None}}


@handler("storing the correction", heavy=True)
def accept_correction(s: Session, store_root, source: str = "prompted", mask_file=None, editor_value=None,
                      note: str = "", max_records: int = 10000, engines=None) -> dict:
    """Store this slice with the model's (U-Net) mask and the corrected mask, for the next training round.

    source: "prompted" (the prompted mask after the clicks), "upload"
    (``mask_file``, an image of the slice's size) or "painted" (the brush
    layers of the image editor, ``editor_value``). Nothing identifying is
    stored: no file name, no DICOM field; a note with personal details is
    refused. A failed save replaces the status with why (never leaves the
    previous "Stored correction" on screen).
    """
    C.ensure_models(s, engines)  # the stored record carries the U-Net's mask
    try:
        return _accept_correction(s, store_root, source, mask_file, editor_value, note, max_records)
    except (InputError, ValueError) as exc:
        view = {"correction_info": f"⚠️ **Not stored:** {esc(str(exc).rstrip('.'))}."}
        notify(view, str(exc))
        return view


def _accept_correction(s: Session, store_root, source, mask_file, editor_value, note, max_records) -> dict:
    from bt_demo.io.corrections import CorrectionStore, note_problem, shared_store

    need_slice(s)
    if s.slice.source == "synthetic":
        raise InputError("a SYNTHETIC slice is not stored as a correction: the store feeds the next training round "
                         "with real slices only (its mask and slice can be exported instead)")
    note = " ".join(str(note or "").split())[:500]
    why = note_problem(note) if note else None
    if why:
        raise InputError(why)
    shape = s.slice.shape
    if source == "prompted":
        if s.prompts.result is None:
            raise InputError("there is no prompted mask yet: click on the tumour, or upload a corrected mask")
        corrected = s.prompts.result.mask
    elif source == "upload":
        if not mask_file:
            raise InputError("choose the corrected mask file first (a PNG of the slice's size, white = tumour)")
        corrected = _load_mask_file(getattr(mask_file, "name", mask_file), shape)
    elif source == "painted":
        corrected = editor_mask(editor_value, shape)
        if corrected is None:
            raise InputError("nothing is painted yet: paint the tumour with the brush, then accept")
    else:
        raise InputError(f"unknown correction source {source!r}; choose prompted, upload or painted")
    model_mask = s.unet_result.mask if s.unet_result is not None else None
    if s.unet_result is not None:
        engine = s.unet_result.engine
    elif s.prompts.result is not None:
        engine = s.prompts.result.engine
    else:
        engine = ""
    store = shared_store(store_root or CorrectionStore.default_root(), max_records)
    meta = {"app_version": APP_VERSION, "source_format": s.slice.source, "correction_source": source}
    if note:
        meta["note"] = note
    record_id = store.save(image=s.unit, corrected_mask=np.asarray(corrected, bool), model_mask=model_mask,
                           prompts=_prompts_record(s), settings=_settings_record(s),
                           spacing=s.effective_spacing(), engine=engine, meta=meta)
    n = int(np.count_nonzero(corrected))
    text = f"Stored correction **{esc(str(record_id))}** ({n} px corrected mask, source: {source})."
    notify({}, f"Stored correction {record_id}", level="info")
    return {"correction_info": text, "_record_id": record_id}


# ---------------------------------------------------------------------------
# the panel
# ---------------------------------------------------------------------------
def build(page: Page) -> None:
    """The Export tab's contents: export on the left, the correction on the right."""
    eng = page.engines
    with gr.Row(equal_height=False):
        with gr.Column():
            export_which = gr.Radio(choices=mask_choices(), value="prompted", label="Mask to export (and measure)")
            export_btn = gr.Button("Export mask (PNG + NIfTI) and JSON report", variant="primary")
            export_info = gr.Markdown("", label="Export summary")
            export_files = gr.File(label="Exported files", file_count="multiple", interactive=False)
        with gr.Column():
            corr_source = gr.Radio(
                choices=[("prompted mask (after your clicks)", "prompted"),
                         ("uploaded mask file", "upload"), ("painted with the brush", "painted")],
                value="prompted", label="Corrected mask comes from")
            corr_file = gr.File(label="Corrected mask file (same size as the slice, white = tumour)",
                                file_count="single", type="filepath")
            with gr.Accordion("Paint the corrected mask (brush)", open=False):
                editor_btn = gr.Button("Load the slice into the editor "
                                       "(the prompted mask's outline is a guide)", size="sm")
                editor = gr.ImageEditor(
                    label="Corrected mask (paint = tumour, erase = not)", type="numpy",
                    image_mode="RGBA", format="png", sources=(), transforms=(),
                    brush=gr.Brush(colors=[(views.rgb_css(views.MASK_COLORS[views.PROMPT]), 0.7)],
                                   color_mode="fixed", default_size=4),
                    eraser=gr.Eraser(), layers=gr.LayerOptions(allow_additional_layers=False),
                    height=420)
            corr_note = gr.Textbox(label="Note (optional, no patient details)", max_lines=2)
            accept_btn = gr.Button("Accept as correction", variant="primary")
            correction_info = gr.Markdown("", label="Correction status")
    page.add(export_which=export_which, export_info=export_info, export_files=export_files, editor=editor,
             correction_info=correction_info)

    page.wire(export_which.input, choose_mask, [export_which], MEASURE_OUT + ["export_files", "export_info"],
              api_name="export_mask_choice")
    page.wire(export_btn.click, lambda s, w: export(s, w, eng), [export_which],
              ["export_files", "export_info"] + MEASURE_OUT, api_name="export")
    page.wire(editor_btn.click, editor_start, [], ["editor"], api_visibility="private")
    page.wire(accept_btn.click,
              lambda s, src, f, ed, note: accept_correction(s, page.annotations_dir, src, f, ed, note,
                                                            page.max_corrections, eng),
              [corr_source, corr_file, editor, corr_note], ["correction_info"], api_name="accept_correction")
