"""The Volume tab: segment the whole series, read its numbers, propagate a clicked slice, export in 3-D.

Handlers take the session (``Session``) first and return ``(session, view)`` like the rest of the UI (see
:mod:`bt_demo.ui.kit`); all algorithm work lives in :mod:`bt_demo.volume`.
"""

from __future__ import annotations

import json
import os
import secrets

import gradio as gr
import numpy as np

from bt_demo import render
from bt_demo.errors import InputError
from bt_demo.ui.kit import Page, engine_or_reason, handler, notify
from bt_demo.ui.state import Session
from bt_demo.ui.views import esc, fit, to_display

MASKS = {"unet": "U-Net (every slice)", "propagated": "propagated from a clicked slice"}
# what each propagating engine gets on the next slice from the neighbour's mask (bt_demo.volume.segment.propagate):
# the prompt and the box margin in px, chosen on the U-Net card's validation patients
# (`python -m bench.bench_volume --part propagation`: MedSAM box 0.860 at 5 px vs 0.859 at 2; MedSAM clicks
# 0.871 at 2 px vs 0.866 at 5; the click model 0.866)
PROPAGATION_PROMPT = {"clicks": ("click", 0), "medsam": ("box", 5), "medsam_clicks": ("box+click", 2)}


def _load(s: Session, series_files, series_choice, progress=None) -> None:
    """The session's volume: from the DICOM series files when given, else from the current upload.

    While other sessions' loads hold the server's memory budget (bt_demo.io.memory), the progress bar says
    that this one is waiting for them."""
    from bt_demo.volume import load_volume

    files = [getattr(f, "name", f) for f in (series_files or [])]
    key = ("files", tuple(files), series_choice) if files else ("upload", s.source_path, series_choice)
    if s.volume is not None and s.volume_key == key:
        return
    if not files and not s.source_path:
        raise InputError("upload a NIfTI volume (or a multi-frame DICOM) first, or drop the files of a DICOM "
                         "series (or a zip of them) into the box above")
    src = files or [s.source_path]
    choice = int(series_choice) if series_choice and int(series_choice) > 0 else None
    def waiting(seconds: float, in_use: int) -> None:
        if progress is not None:
            progress(None, desc=f"waiting for memory: other volumes are loading ({in_use / 2**20:,.0f} MB in use, "
                                f"{seconds:.0f} s)")
    s.volume = load_volume(src, series_index=choice, on_wait=waiting)
    s.volume_key = key
    s.volume_masks, s.volume_results, s.volume_gate = {}, {}, None
    s.volume_k = int(np.argmax(s.volume.data.reshape(len(s.volume.data), -1).mean(1)))


def _view(s: Session, which: str | None = None) -> dict:
    import pandas as pd

    from bt_demo.volume.segment import volume_numbers

    vol = s.volume
    if vol is None:
        return {"volume_info": "No volume yet: segment one with the button above.", "volume_image": None,
                "volume_plot": None}
    which = which or s.volume_which
    mask = s.volume_masks.get(which)
    k = int(np.clip(s.volume_k, 0, vol.shape[0] - 1))
    unit = _display_unit(vol, k)
    img = render.to_rgb(unit) if mask is None else render.overlay_mask(unit, mask[k], alpha=0.4)
    out = {"volume_image": fit(to_display(img, _factor(vol))),
           "volume_slice": {"__type__": "update", "minimum": 1, "maximum": vol.shape[0], "value": k + 1,
                            "visible": True}}
    if mask is None:
        out["volume_info"] = (f"{vol.shape[0]} slices of {vol.shape[2]} × {vol.shape[1]} px "
                              f"({esc(vol.metadata.get('format', vol.source))}). No {esc(MASKS[which])} mask yet.")
        out["volume_plot"] = None
        return out
    n = volume_numbers(vol, mask)
    s.volume_numbers = n
    size = f"**{n['volume_ml']:.2f} mL**" if n["volume_ml"] is not None else \
        f"**{n['voxels']:,} voxels** (the file gives no spacing, so no mL)"
    lines = [f"{esc(MASKS[which])}: tumour volume {size} in {len(set(np.flatnonzero(n['areas_px'])))} slices."]
    if n["largest_slice"] is not None:
        ext = f"slices {n['extent_slices'][0] + 1}–{n['extent_slices'][1] + 1}"
        if n["extent_mm"] is not None:
            ext += f" ({n['extent_mm']:.1f} mm)"
        r = n["rano"]
        lines.append(f"Extent: {ext}; largest area on slice **{n['largest_slice'] + 1}**, where the RANO diameters "
                     f"are {r['long_diameter']:.1f} × {r['short_diameter']:.1f} {esc(r['unit'])}.")
    res = s.volume_results.get(which)
    if res is not None:
        lines.append(f"{esc(res.engine)}, {res.seconds:.1f} s; settings: "
                     f"{esc(json.dumps({k: v for k, v in res.settings.items() if k != 'card'}))}.")
        if res.settings.get("card"):
            lines.append(f"*{esc(res.settings['card'])}*")
    out["volume_info"] = "\n\n".join(lines)
    out["volume_plot"] = pd.DataFrame({"slice": np.arange(1, vol.shape[0] + 1), "area (px)": n["areas_px"]})
    return out


def _display_unit(vol, k: int) -> np.ndarray:
    """Slice ``k`` as uint8 under the window the engines use (only this slice is scaled)."""
    from bt_demo.volume.segment import unit_volume

    return (unit_volume(vol, slices=k) * 255).astype(np.uint8)


def _factor(vol) -> float:
    from bt_demo.ui.views import display_factor

    return display_factor(vol.shape[1:])


@handler("segmenting the volume", heavy=True)
def segment(s: Session, engines, series_files=None, series_choice=None, progress=None) -> dict:
    """Load the volume (upload or series files), run the U-Net over every slice, show the numbers."""
    from bt_demo.volume.segment import propagation_gate, segment_volume

    unet, reason = engine_or_reason(engines.unet())
    if unet is None:
        raise InputError(reason)
    _load(s, series_files, series_choice, progress)

    def tick(i, n):
        if progress is not None:
            progress((i, n), desc="U-Net, slice by slice", unit="slices")
    res = segment_volume(s.volume, unet, progress=tick)
    s.volume_gate = propagation_gate(res.prob)  # 1 byte a voxel: what propagation may cover
    res = type(res)(res.mask, None, res.engine, res.seconds, res.settings)  # the probabilities are not kept
    s.volume_masks = {**s.volume_masks, "unet": res.mask}
    s.volume_results = {**s.volume_results, "unet": res}
    s.volume_which = "unet"
    if res.mask.any():
        s.volume_k = int(np.argmax(res.mask.reshape(len(res.mask), -1).sum(1)))
    return _view(s) | {"volume_which": "unet"}


@handler("propagating the mask", heavy=True)
def propagate(s: Session, engines, series_files=None, series_choice=None, progress=None) -> dict:
    """Carry the prompted mask of the slice shown in the Prompts tab up and down the series."""
    from bt_demo.volume.segment import propagate as run

    if not s.loaded or s.prompts.result is None:
        raise InputError("click on the tumour in the Prompts tab first (on a slice of this volume); "
                         "its mask is carried up and down the series")
    if "slice" not in s.slice.index:
        raise InputError("the slice in the Prompts tab is not from a volume; upload a NIfTI volume to propagate")
    _load(s, None if s.volume_key and s.volume_key[0] == "upload" else series_files, series_choice, progress)
    if s.volume_key[0] != "upload" or s.volume_key[1] != s.source_path:
        raise InputError("the clicked slice must come from the same upload as the volume")
    k = int(s.slice.index["slice"][0])
    mask = np.asarray(s.prompts.result.mask, bool)
    if mask.shape != s.volume.shape[1:]:
        raise InputError("the clicked slice and the volume's slices differ in size")
    # the engine answering the Prompts tab carries its mask on, when it can propagate; else the click model
    key = s.slot.engine_key if s.slot is not None and s.slot.engine_key in PROPAGATION_PROMPT else "clicks"
    p = engines.new_predictor(key)
    if isinstance(p, str):
        raise InputError(p)

    if s.volume_gate is None or s.volume_gate.shape != s.volume.shape:
        unet, _ = engine_or_reason(engines.unet())
        if unet is not None:  # the U-Net's region keeps propagation from running past the tumour's end
            from bt_demo.volume.segment import propagation_gate, unet_probabilities, unit_volume

            s.volume_gate = propagation_gate(unet_probabilities(unet, unit_volume(s.volume)))

    def tick(i, n):
        if progress is not None:
            progress((i, n), desc="propagating", unit="slices")
    prompt, margin = PROPAGATION_PROMPT[key]
    res = run(s.volume, p, k, mask, gate=s.volume_gate, prompt=prompt, box_margin=margin, progress=tick)
    s.volume_masks = {**s.volume_masks, "propagated": res.mask}
    s.volume_results = {**s.volume_results, "propagated": res}
    s.volume_which, s.volume_k = "propagated", k
    return _view(s) | {"volume_which": "propagated"}


@handler("showing the slice")
def show(s: Session, k=None, which=None) -> dict:
    if s.volume is None:
        return {}
    if which in MASKS:
        s.volume_which = which
    if k is not None:
        s.volume_k = int(k) - 1
    return _view(s)


@handler("jumping to the slice")
def jump(s: Session, index) -> dict:
    """A selection on the area plot (a slice number, or a range: the largest slice in it)."""
    if s.volume is None or index is None:
        return {}
    lo, hi = (index if isinstance(index, (list, tuple)) and len(index) == 2 else (index, index))
    lo, hi = int(np.floor(float(lo))), int(np.ceil(float(hi)))
    areas = np.asarray((s.volume_numbers or {}).get("areas_px") or [0] * s.volume.shape[0])
    lo, hi = max(1, lo), min(len(areas), max(hi, lo))
    seg = areas[lo - 1:hi]
    s.volume_k = lo - 1 + (int(np.argmax(seg)) if seg.size and seg.max() > 0 else (hi - lo) // 2)
    return _view(s)


@handler("exporting the volume", heavy=True)
def export(s: Session, engines) -> dict:
    """The chosen 3-D mask as NIfTI (source grid), DICOM SEG (DICOM sources) and a JSON report."""
    from bt_demo.io.export import DISCLAIMER
    from bt_demo.volume.export import dicom_seg, mask_nifti_3d
    from bt_demo.volume.segment import volume_numbers

    which = s.volume_which
    mask = s.volume_masks.get(which) if s.volume is not None else None
    if mask is None:
        raise InputError("segment the volume (or propagate a clicked slice) first")
    vol = s.volume
    rid = secrets.token_hex(6)
    d = s.ensure_workdir()
    files = {}
    files["nifti"] = os.path.join(d, f"volume_mask_{rid}.nii.gz")
    with open(files["nifti"], "wb") as f:
        f.write(mask_nifti_3d(vol, mask))
    seg_note = None
    if vol.source.startswith("dicom"):
        try:  # a series missing an attribute a SEG must copy: the mask and the numbers still go out
            seg = dicom_seg(vol, mask, engine=s.volume_results[which].engine)
        except InputError as e:
            seg_note = str(e)
        else:
            files["seg"] = os.path.join(d, f"volume_seg_{rid}.dcm")
            with open(files["seg"], "wb") as f:
                f.write(seg)
    res = s.volume_results.get(which)
    n = volume_numbers(vol, mask)
    report = {"disclaimer": DISCLAIMER, "bundle_id": rid, "volume": {
        "mask": MASKS[which], "volume_ml": n["volume_ml"], "voxels": n["voxels"], "slices": n["slices"],
        "extent_slices": n["extent_slices"], "extent_mm": n["extent_mm"], "largest_slice": n["largest_slice"],
        "rano_on_largest_slice": n["rano"], "spacing_mm": n["spacing_mm"],
        "spacing_note": None if vol.spacing else "the source gives no spacing: voxels only, written as unknown",
        "areas_px_per_slice": n["areas_px"], "engine": res.engine if res else None,
        "engine_settings": res.settings if res else None, "source_format": vol.source,
        "placement": "the NIfTI mask has the source's own voxel grid and affine" if vol.source_affine is not None
        else "no source geometry"}}
    if seg_note:
        report["seg_not_written"] = seg_note
    files["report"] = os.path.join(d, f"volume_report_{rid}.json")
    with open(files["report"], "w") as f:
        json.dump(report, f, indent=1, default=str)
    notify({}, "Exported the 3-D mask", level="info")
    kinds = ", ".join(os.path.basename(p) for p in files.values())
    info = f"Exported {esc(kinds)}."
    if seg_note:
        info += f" No DICOM SEG: {esc(seg_note)}"
    return {"volume_files": list(files.values()), "volume_export_info": info}


# ---------------------------------------------------------------------------
# the panel
# ---------------------------------------------------------------------------
VOL_OUT = ["volume_info", "volume_image", "volume_plot", "volume_slice", "volume_which"]


def build(page: Page) -> None:
    """The Volume tab's contents (slow work: progress bars; one volume job at a time in the process)."""
    eng, session = page.engines, page.session
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=260):
            series_files = gr.File(
                label="DICOM series: several files or a zip (else the uploaded NIfTI volume)",
                file_count="multiple", type="filepath", height=90)
            series_choice = gr.Number(value=0, precision=0, minimum=0,
                                      label="Series number when the files hold several (0: list them)")
            vol_btn = gr.Button("Segment the whole volume (U-Net)", variant="primary")
            prop_btn = gr.Button("Propagate the clicked slice's mask through the series (with the Prompts tab's "
                                 "engine when it is MedSAM, else the click model)", size="sm")
            volume_which = gr.Radio(choices=[(v, k) for k, v in MASKS.items()], value="unet",
                                    label="Volume mask shown")
            volume_info = gr.Markdown("No volume yet: segment one with the button above.", label="Volume summary")
            vol_export_btn = gr.Button("Export the 3-D mask (NIfTI, DICOM SEG) and report", size="sm")
            volume_export_info = gr.Markdown("", label="Volume export summary")
            volume_files = gr.File(label="Exported volume files", file_count="multiple", interactive=False)
        with gr.Column(scale=3, min_width=300):
            volume_slice = gr.Slider(1, 2, value=1, step=1, label="Volume slice", visible=False)
            volume_image = gr.Image(label="Volume slice and its mask", type="numpy",
                                    format="jpeg", interactive=False, buttons=["fullscreen"])
            volume_plot = gr.BarPlot(x="slice", y="area (px)", height=220,
                                     label="Tumour area per slice (drag across it to jump)")
    page.add(volume_info=volume_info, volume_image=volume_image, volume_plot=volume_plot, volume_slice=volume_slice,
             volume_which=volume_which, volume_files=volume_files, volume_export_info=volume_export_info)
    vol_outputs = page.outputs(VOL_OUT)

    def vol_segment(s, files, choice, progress=gr.Progress()):
        return page.adapt(segment(s, eng, files, choice, progress), VOL_OUT)

    def vol_propagate(s, files, choice, progress=gr.Progress()):
        return page.adapt(propagate(s, eng, files, choice, progress), VOL_OUT)

    def vol_jump(s, evt: gr.SelectData):
        return page.adapt(jump(s, evt.index), VOL_OUT)

    spin = {"show_progress_on": page.progress_on(VOL_OUT, "full")}  # not the session (kit.Page.progress_on)
    vol_btn.click(vol_segment, [session, series_files, series_choice], vol_outputs, api_name="segment_volume",
                  concurrency_id="volume", concurrency_limit=1, **spin)
    prop_btn.click(vol_propagate, [session, series_files, series_choice], vol_outputs,
                   api_name="propagate_volume", concurrency_id="volume", concurrency_limit=1, **spin)
    page.wire(volume_slice.input, lambda s, k: show(s, k, None), [volume_slice], VOL_OUT,
              trigger_mode="always_last", api_visibility="private")
    page.wire(volume_which.input, lambda s, w: show(s, None, w), [volume_which], VOL_OUT, api_visibility="private")
    volume_plot.select(vol_jump, [session], vol_outputs, api_visibility="private", **spin)
    page.wire(vol_export_btn.click, lambda s: export(s, eng), [], ["volume_files", "volume_export_info"],
              api_name="export_volume")
