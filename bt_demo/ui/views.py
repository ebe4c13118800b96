"""What each panel shows, computed from a :class:`~bt_demo.ui.state.Session`.

Pure presentation: every function here reads the session (never changes it)
and returns a ``dict`` of output name -> value (or ``gr.update(...)``), the
names being the keys of ``kit.Page.comp`` (the components the panels name). The
pictures come from :mod:`bt_demo.render`, the numbers from :mod:`bt_demo.metrics`.

All images are ``uint8`` RGB arrays in ORIGINAL slice pixels, except the
clickable prompt image, which is upscaled by ``session.display_factor``
(integer, see :func:`bt_demo.render.upscale_for_display`) for small slices.
"""

from __future__ import annotations

import html

import gradio as gr
import numpy as np

from bt_demo import render
from bt_demo.studies import metrics


def esc(text) -> str:
    """Text for Markdown: <, > and & escaped; quotes kept (Gradio's Markdown showed an escaped quote as
    a literal &#x27;, for example in "patient's")."""
    return html.escape(str(text), quote=False)

# Names of the masks in tables, legends and reports, in comparison order.
UNET, PROMPT, KMEANS = "U-Net", "prompted", "K-Means"
WATERSHED, CHAN_VESE, GEODESIC = "watershed", "Chan–Vese", "geodesic contour"
#: classical segmenter key (``bt_demo.classical_seg.CLASSICAL``) -> its name in tables and legends
CLASSICAL_NAMES = {"watershed": WATERSHED, "chan_vese": CHAN_VESE, "geodesic": GEODESIC}
MASK_COLORS = {UNET: render.COLORS["unet"], PROMPT: render.COLORS["prompt"], KMEANS: render.COLORS["kmeans"],
               WATERSHED: render.COLORS["watershed"], CHAN_VESE: render.COLORS["chan_vese"],
               GEODESIC: render.COLORS["geodesic"]}
#: the mask choosers' keys (Measure and Export tabs) -> mask names
MASK_KEYS = {"prompted": PROMPT, "unet": UNET, "kmeans": KMEANS, **CLASSICAL_NAMES}
#: the classical segmenters' overlay titles in the Compare tab
CLASSICAL_TITLES = {"watershed": "Watershed", "chan_vese": "Chan–Vese", "geodesic": "Geodesic"}

PROMPT_MODES = {
    "positive": "+ tumour (positive point)",
    "negative": "− not tumour (negative point)",
    "box": "box (click two corners)",
}


def rgb_css(color) -> str:
    r, g, b = (int(c) for c in color)
    return f"rgb({r},{g},{b})"


def swatch(color, text: str) -> str:
    return (f'<span style="display:inline-flex;align-items:center;margin-right:14px;white-space:nowrap">'
            f'<span style="display:inline-block;width:14px;height:14px;border-radius:3px;margin-right:6px;'
            f'border:1px solid #0006;background:{rgb_css(color)}"></span>{esc(text)}</span>')


MAX_DISPLAY_SIDE = 1024  # larger slices are shown (and sent to the browser) shrunk to this long side


def display_factor(shape: tuple[int, int]) -> float:
    """Display pixels per slice pixel for the clickable image.

    Small slices: the integer upscale of :func:`bt_demo.render.upscale_for_display`;
    slices longer than :data:`MAX_DISPLAY_SIDE`: ``MAX_DISPLAY_SIDE / long side`` (< 1).
    """
    h, w = int(shape[0]), int(shape[1])
    if max(h, w) > MAX_DISPLAY_SIDE:
        return MAX_DISPLAY_SIDE / max(h, w)
    return float(render.upscale_for_display(np.zeros((h, w), np.uint8))[1])


def to_display(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Scale an image by ``factor``: nearest-neighbour blocks up (crisp pixels), area-averaging down."""
    if factor == 1.0:
        return rgb
    if factor > 1.0:
        return render.upscale_for_display(rgb)[0]
    import cv2

    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)


def fit(rgb: np.ndarray) -> np.ndarray:
    """A view image shrunk to at most :data:`MAX_DISPLAY_SIDE` on its long side (never enlarged)."""
    long_side = max(rgb.shape[:2])
    return rgb if long_side <= MAX_DISPLAY_SIDE else to_display(rgb, MAX_DISPLAY_SIDE / long_side)


# ---------------------------------------------------------------------------
# masks, in original pixels
# ---------------------------------------------------------------------------
def refined_current(s) -> bool:
    """Is the session's refined outline (``compute.run_refined``) the one of the slice the models see now?"""
    return (s.refined is not None and s.model_input is not None and s.refined_key == s.model_input.key)


def automatic_mask(s) -> np.ndarray:
    """The automatic mask in original pixels: the decoder's outline on LiteMedSAM's encoder where the U-Net
    finds tumour (``medsam_seg.gate``) once it is ready for this slice, the U-Net's own mask until then."""
    from bt_demo.models.medsam_seg import gate

    u = s.unet_result.mask
    return gate(s.refined.mask, u) if refined_current(s) else u


def current_masks(s) -> dict[str, np.ndarray]:
    """The masks present now, in comparison order: U-Net, prompted, K-Means, then the classical
    segmenters ticked in the Compare tab whose result is current (a stale one is left out)."""
    out: dict[str, np.ndarray] = {}
    if s.unet_result is not None:
        out[UNET] = automatic_mask(s)
    if s.prompts.result is not None:
        out[PROMPT] = s.prompts.result.mask
    if s.kmeans_mask is not None:
        out[KMEANS] = s.kmeans_mask
    for key, name in CLASSICAL_NAMES.items():
        if key in s.classical_on:
            res = s.classical_result(key)
            if res is not None:
                out[name] = res.mask
    return out


def stale_classical(s) -> list[str]:
    """Classical segmenters the session wants (ticked, or chosen for Measure/Export) whose result is not current."""
    wanted = [k for k in CLASSICAL_NAMES if k in s.classical_on or k == s.chosen_mask]
    return [k for k in wanted if s.classical_result(k) is None]


def mask_by_key(s, key: str) -> np.ndarray | None:
    """The mask a chooser key names ("prompted", "unet", "kmeans" or a classical key), or None if absent."""
    if key in CLASSICAL_NAMES:
        res = s.classical_result(key)
        return None if res is None else res.mask
    return current_masks(s).get(MASK_KEYS.get(key, ""))


def brain_mask_original(s) -> np.ndarray | None:
    """The processed image's brain mask in ORIGINAL pixels (bool (H, W)), or None."""
    p = s.processed
    if p is None or getattr(p, "brain_mask", None) is None:
        return None
    return p.geometry.map_to_original(np.asarray(p.brain_mask, bool), fill=False)


def display_gray(s) -> np.ndarray:
    """The original slice with the session's window, uint8 (H, W)."""
    return s.slice.display(s.window)


def processed_in_original(s) -> np.ndarray:
    """The processed image put back into original pixels (float32 (H, W) in [0, 1]; 0 outside a crop)."""
    p = s.processed
    return p.geometry.map_to_original(np.asarray(p.image, np.float32), fill=0.0, order=1)


# ---------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------
def prompt_image(s) -> np.ndarray:
    """The clickable image: processed slice (in original pixels) + prompted mask, upscaled, + points and box."""
    base = render.to_rgb(processed_in_original(s))
    res = s.prompts.result
    if res is not None:
        base = render.overlay_mask(base, res.mask, render.COLORS["prompt"], alpha=s.opacity)
    f = float(s.display_factor)
    big = to_display(base, f)

    def to_disp(xy):
        return [((x + 0.5) * f - 0.5, (y + 0.5) * f - 0.5) for x, y in xy]

    if s.prompts.box is not None:
        x0, y0, x1, y1 = s.prompts.box
        (dx0, dy0), (dx1, dy1) = to_disp([(x0, y0), (x1, y1)])
        big = render.draw_box(big, (dx0, dy0, dx1, dy1), thickness=max(1, int(round(f))))
    if s.box_anchor is not None:
        (ax, ay), = to_disp([s.box_anchor])
        r = max(3, int(round(2 * f)))
        big = render.draw_box(big, (ax - r, ay - r, ax + r, ay + r), thickness=max(1, int(round(f))))
    if s.prompts.points:
        big = render.draw_points(big, to_disp(s.prompts.points), list(s.prompts.labels))
    return big


def prompt_info(s) -> str:
    slot = s.slot
    engine = slot.name if slot is not None and slot.predictor is not None else "none"
    pos = sum(1 for l in s.prompts.labels if l == 1)
    neg = len(s.prompts.labels) - pos
    parts = [f"Engine in use: **{esc(engine)}**", f"{pos} positive, {neg} negative point(s)"]
    if s.prompts.box is not None:
        parts.append("box (" + ", ".join(f"{v:.0f}" for v in s.prompts.box) + ") px")
    if s.box_anchor is not None:
        parts.append(f"box: first corner at ({s.box_anchor[0]:.0f}, {s.box_anchor[1]:.0f}), click the opposite corner")
    res = s.prompts.result
    if res is not None:
        n, mm2 = metrics.area(res.mask, s.effective_spacing())
        area = f"{n} px" + (f" = {mm2:.1f} mm²" if mm2 is not None else "")
        parts.append(f"mask {area}, {1000 * res.seconds:.0f} ms")
        if slot is not None and slot.engine_key == "medsam" and s.prompts.box is not None and s.prompts.points:
            # measured (docs/studies.md, three prompt engines): 0.833 for the box alone, 0.764 after two clicks
            parts.append("⚠ MedSAM as published was trained with boxes only: corrective clicks tend to make its mask "
                         "worse; *MedSAM clicks* takes corrections")
        if res.extra.get("card"):
            parts.append(f"*{esc(res.extra['card'])}*")
    elif s.prompts.empty():
        parts.append("choose *box* and click two opposite corners around the tumour (MedSAM answers boxes)"
                     if slot is not None and slot.engine_key == "medsam" else "click on the tumour to start")
    return " · ".join(parts)


def candidate_update(s) -> dict:
    """SAM's candidate masks, sent only when they differ from what the page shows (``s.shown``): an update
    of a component's properties makes Gradio rebuild the component, on every event it is sent."""
    res = s.prompts.result
    if res is None or len(res.candidates) < 2:
        return _changed(s, "candidates", gr.update(visible=False, choices=[], value=None), None)
    choices = [(f"mask {i + 1}: predicted IoU {sc:.2f}", i) for i, sc in enumerate(res.scores)]
    return _changed(s, "candidates", gr.update(visible=True, choices=choices, value=int(res.chosen)),
                    (tuple(choices), int(res.chosen)))


def prompt_view_engine(s) -> dict:
    """The engine chooser shows the engine this session really uses (sent when that changes)."""
    return {} if s.slot is None else _changed(s, "engine", s.slot.engine_key, s.slot.engine_key)


def mark_shown(s, name: str, key) -> None:
    """The page now shows ``key`` for ``name`` (the dict is replaced, never changed: a failed event's
    restore puts the old one back)."""
    if s.shown is not None:
        s.shown = {**s.shown, name: key}


def _changed(s, name: str, value, key) -> dict:
    """``{name: value}`` unless the page already shows ``key`` for ``name``. A page's session starts with
    what the page was built with; a session without ``shown`` (handler-level callers) always gets it."""
    if s.shown is not None and name in s.shown and s.shown[name] == key:
        return {}
    mark_shown(s, name, key)
    return {name: value}


def prompt_view(s) -> dict:
    return {"prompt_image": prompt_image(s), "prompt_info": prompt_info(s), **candidate_update(s),
            **prompt_view_engine(s)}


# ---------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------
def _r3(v):
    return None if v is None else round(float(v), 3)


def _metrics_frames(masks: dict[str, np.ndarray], spacing):
    import pandas as pd

    pair_cols = ["pair", "Dice", "IoU", "HD95", "precision", "recall"]
    rows = []
    for r in metrics.pairwise_table(masks, spacing):
        hd = "∞ (one mask empty)" if r["hd95"] is None else f"{r['hd95']:.2f} {r['hd95_unit']}"
        rows.append([f"{r['a']} vs {r['b']}", _r3(r["dice"]), _r3(r["iou"]), hd, _r3(r["precision"]),
                     _r3(r["recall"])])
    pairs = pd.DataFrame(rows, columns=pair_cols)
    area_rows = [[r["mask"], r["area_px"], "—" if r["area_mm2"] is None else f"{r['area_mm2']:.1f}"]
                 for r in metrics.area_table(masks, spacing)]
    areas = pd.DataFrame(area_rows, columns=["mask", "area (px)", "area (mm²)"])
    return pairs, areas


def agreement_summary(masks: dict[str, np.ndarray]) -> dict:
    """Which-mask agreement for 1 to 3 masks, the vote count (consensus) for more."""
    return metrics.agreement_summary(masks) if len(masks) <= 3 else metrics.consensus_summary(masks)


def _classical_overlays(s, gray, alpha) -> dict:
    out = {}
    for key, name in CLASSICAL_NAMES.items():
        comp = f"overlay_{key}"
        if key not in s.classical_on:
            out[comp] = gr.update(visible=False)
            continue
        res = s.classical_result(key)
        label = CLASSICAL_TITLES[key]
        if res is None:  # being computed (the chained refresh fills it in): keep the old picture
            out[comp] = gr.update(visible=True, label=f"{label} · updating…")
            continue
        started = res.extra.get("started_from", "")
        how = "from clicks" if started == "clicks" else "no click"
        img = fit(render.overlay_mask(gray, res.mask, MASK_COLORS[name], alpha=alpha, contour=True))
        out[comp] = gr.update(visible=True, value=img, label=f"{label} · {how}")
    return out


def compare_view(s, measure: bool = True) -> dict:
    """The Compare tab's panels (and, with ``measure``, the Measure tab's, which follow the same masks)."""
    gray = display_gray(s)
    masks = current_masks(s)
    alpha = s.opacity
    out = {}
    for name, key in ((UNET, "overlay_unet"), (PROMPT, "overlay_prompt"), (KMEANS, "overlay_kmeans")):
        if name in masks:
            out[key] = fit(render.overlay_mask(gray, masks[name], MASK_COLORS[name], alpha=alpha, contour=True))
        else:
            out[key] = fit(render.to_rgb(gray))
    out.update(_classical_overlays(s, gray, alpha))
    spacing = s.effective_spacing()
    pairs, areas = _metrics_frames(masks, spacing)
    out["metrics_table"] = pairs
    out["area_table"] = areas
    if 1 <= len(masks) <= 3:
        code = metrics.agreement_map(list(masks.values()))
        img, legend = render.agreement_rgb(gray, code, list(masks), alpha=max(alpha, 0.35))
    elif masks:
        votes = metrics.vote_map(list(masks.values()))
        img, legend = render.consensus_rgb(gray, votes, len(masks), alpha=max(alpha, 0.45))
    if masks:
        out["agreement_image"] = fit(img)
        summary = agreement_summary(masks)
        legend_html = "".join(swatch(col, txt) for txt, col in legend)
        frac = summary["agreement_fraction"]
        head = "" if len(masks) <= 3 else f"<div>How many of the {len(masks)} masks call a pixel tumour:</div>"
        out["agreement_legend"] = (f'{head}<div style="line-height:1.9">{legend_html}</div>'
                                   f"<div>All {len(masks)} masks agree on {100 * frac:.0f}% of the pixels any of "
                                   f"them calls tumour ({summary['all_agree_tumour_px']} of {summary['union_px']} "
                                   f"px).</div>")
    else:
        out["agreement_image"] = fit(render.to_rgb(gray))
        out["agreement_legend"] = "<div>No mask yet.</div>"
    missing = [n for n in (UNET, PROMPT, KMEANS) if n not in masks]
    notes = []
    if PROMPT in missing:
        notes.append("prompted: click on the tumour in the Prompts tab")
    if UNET in missing:
        notes.append("U-Net: unavailable (see Engines)")
    shown = [UNET, PROMPT, KMEANS] + [CLASSICAL_NAMES[k] for k in CLASSICAL_NAMES if k in s.classical_on]
    updating = [CLASSICAL_NAMES[k] for k in stale_classical(s) if k in s.classical_on]
    timed = []
    for k in CLASSICAL_NAMES:
        res = s.classical_result(k) if k in s.classical_on else None
        if res is not None:
            how = "your clicks" if res.extra.get("started_from") == "clicks" else "no click: brightest K-Means cluster"
            timed.append(f"{CLASSICAL_NAMES[k]} {1000 * res.seconds:.0f} ms ({how})")
    out["compare_info"] = ("Colours: " + "".join(swatch(MASK_COLORS[n], n) for n in shown)
                           + (f"<br>Missing: {esc('; '.join(notes))}." if notes else "")
                           + (f"<br>Classical segmenters: {esc('; '.join(timed))}." if timed else "")
                           + (f"<br>Updating: {esc(', '.join(updating))} (classical segmenters run "
                              "after the other panels)…" if updating else ""))
    if measure:
        out.update(measure_view(s))
    return out


# ---------------------------------------------------------------------------
# measurement (Measure tab)
# ---------------------------------------------------------------------------
def _scaled_measurement(m: dict, f: float) -> dict:
    """A :func:`bt_demo.measure.measure` result with its pixel coordinates moved onto an image scaled by ``f``."""
    def pt(p):
        return ((p[0] + 0.5) * f - 0.5, (p[1] + 0.5) * f - 0.5)

    out = dict(m)
    out["contours"] = [np.rint((np.asarray(c, np.float64).reshape(-1, 2) + 0.5) * f - 0.5).astype(np.int32)
                       for c in m["contours"] if len(c)]
    if m.get("bbox") is not None:
        x0, y0, x1, y1 = m["bbox"]
        out["bbox"] = (int(round(x0 * f)), int(round(y0 * f)), int(round((x1 + 1) * f - 1)),
                       int(round((y1 + 1) * f - 1)))
    for k in ("long_axis", "short_axis"):
        if m.get(k) is not None:
            out[k] = dict(m[k], p0=pt(m[k]["p0"]), p1=pt(m[k]["p1"]))
    return out


def _fmt(v: float, unit: str) -> str:
    return f"{v:.1f} {unit}" if unit == "mm" else f"{v:.1f} px"


def measurement_markdown(m: dict, name: str, spacing_note: str) -> str:
    """The Measure tab's table for one :func:`bt_demo.measure.measure` result."""
    unit = m["unit"]
    area = f"{m['area_px']} px" + (f" = {m['area_mm2']:.1f} mm²" if m.get("area_mm2") is not None else "")
    rows = [("area", area)]
    if m["area_px"]:
        la, sa = m["long_diameter"], m["short_diameter"]
        rows += [("longest diameter (white line)", _fmt(la, unit)),
                 ("perpendicular diameter (yellow line)", _fmt(sa, unit)),
                 ("product of the two diameters", f"{m['rano_product']:.1f} {unit}²")]
        cx, cy = m["centroid"]
        x0, y0, x1, y1 = m["bbox"]
        rows += [("centroid (x, y)", f"{cx:.1f}, {cy:.1f} px"),
                 ("bounding box", f"x {x0}–{x1}, y {y0}–{y1} px ({x1 - x0 + 1} × {y1 - y0 + 1} px)")]
        side = m.get("side") or "—"
        mid = m.get("midline_x")
        src = "from the brain mask" if "brain mask's centroid" in str(m.get("midline_source")) else "image centre"
        where = f" of the midline (x = {mid:.0f} px, {src})" if mid is not None else ""
        rows += [("side", f"{side}{where}"), ("separate pieces", str(m.get("n_components", 0)))]
        if m.get("touches_border"):
            rows.append(("note", "the mask touches the image border: the tumour may extend beyond the slice"))
    table = "| measure | value |\n|---|---|\n" + "\n".join(f"| {esc(a)} | {esc(b)} |" for a, b in rows)
    caveats = ("*Side: " + esc(m.get("side_caveat") or "") + ".* "
               "*Diameters are between pixel centres on this one 2-D slice (RANO-style bidimensional product); "
               "a RANO assessment uses the slice and sequence where the tumour is largest — research demo, "
               "not for diagnosis.*")
    return (f"**{esc(name)} mask** — lengths in **{unit}** ({esc(spacing_note)}).\n\n"
            f"{table}\n\n{caveats}")


def measure_view(s) -> dict:
    """Measure tab: the chosen mask's contour, box and RANO diameters on the slice, and its numbers."""
    from bt_demo.studies.measure import draw_measurement, measure

    key = s.chosen_mask if s.chosen_mask in MASK_KEYS else "prompted"
    name = MASK_KEYS[key]
    gray = display_gray(s)
    mask = mask_by_key(s, key)
    out = {"measure_which": key, "export_which": key}
    if mask is None:
        if key in CLASSICAL_NAMES and s.processed is not None:
            why = f"the {name} mask is being computed…"
        elif key == "prompted":
            why = "there is no prompted mask yet: click on the tumour in the Prompts tab, or choose another mask"
        elif key == "unet":
            why = "there is no U-Net mask: " + (s.unet_reason or "no slice yet")
        else:
            why = f"there is no {name} mask yet"
        out["measure_image"] = fit(render.to_rgb(gray))
        out["measure_table"] = f"Measurement: {esc(why)}."
        return out
    spacing = s.effective_spacing()
    m = measure(mask, spacing, brain_mask_original(s))
    if spacing is None:
        note = "no pixel spacing: type one under *Window / level and pixel spacing* for mm"
    elif s.slice is not None and s.slice.spacing is not None:
        note = f"pixel spacing {spacing[0]:.3g} × {spacing[1]:.3g} mm from the file"
    else:
        note = f"pixel spacing {spacing[0]:.3g} mm as typed"
    base = render.overlay_mask(gray, mask, MASK_COLORS[name], alpha=0.2, contour=False)
    f = display_factor(gray.shape)
    big = to_display(base, f)
    drawn = draw_measurement(big, _scaled_measurement(m, f), color=MASK_COLORS[name],
                             thickness=max(1, int(round(f))))
    out["measure_image"] = fit(drawn)
    out["measure_table"] = measurement_markdown(m, name, note)
    out["_measurement"] = m
    return out


# ---------------------------------------------------------------------------
# U-Net uncertainty (TTA)
# ---------------------------------------------------------------------------
def _secs(t: float) -> str:
    return f"{1000 * t:.0f} ms" if t < 1 else f"{t:.1f} s"


def uncertainty_view(s) -> dict:
    from bt_demo.studies.uncertainty import summarise

    if s.unet_reason:
        return {"uncertainty_image": None,
                "uncertainty_info": "Uncertainty map unavailable because the U-Net is unavailable: "
                                    f"{esc(s.unet_reason)}"}
    u = s.uncertainty
    if u is None or s.model_input is None or s.uncertainty_key != s.model_input.key:
        return {"uncertainty_image": None,
                "uncertainty_info": "Press **Uncertainty map (TTA)** to run the U-Net on 8 flipped, shifted and "
                                    "scaled copies of this slice (a few seconds on a CPU) and see where its "
                                    "answers spread."}
    thr = float(s.unet_threshold if s.unet_threshold is not None else u["threshold"])
    st = float(u["std_threshold"])
    n_t, high = summarise(u["mean_prob"], u["uncertainty"], thr, st)
    gray = display_gray(s)
    heat = np.clip(u["uncertainty_orig"] / (2 * st), 0.0, 1.0)
    img = render.heatmap_overlay(gray, heat, alpha=0.6, colormap="inferno", mask_below=0.1)
    mask = u["mean_prob_orig"] >= thr
    if mask.any():
        img = render.draw_contour(img, mask, render.COLORS["reference"], 1)
    if n_t:
        head = (f"**{100 * high:.0f}% of the predicted tumour area is uncertain** (TTA spread > {st:.2f} on "
                f"{n_t} px where the mean probability ≥ {thr:.2f}).")
    else:
        head = f"The U-Net predicts no tumour at probability ≥ {thr:.2f} on any of the augmented copies' mean."
    info = (f"{head} Colour: the standard deviation of the U-Net probability over {u['n']} augmented copies "
            f"({esc(', '.join(u['augmentations']))}); bright = above {st:.2f}. White outline: the mean "
            f"mask. Computed in {_secs(u['seconds'])}. A high share means: check the automatic mask by eye.")
    return {"uncertainty_image": fit(to_display(img, display_factor(gray.shape))), "uncertainty_info": info}


# ---------------------------------------------------------------------------
# U-Net, K-Means, classifier
# ---------------------------------------------------------------------------
def unet_view(s) -> dict:
    reason = s.unet_reason
    if reason:
        return {"unet_info": f"U-Net: {esc(reason)}"}
    res = s.unet_result
    if res is None:
        return {"unet_info": "U-Net: no slice yet."}
    n, mm2 = metrics.area(res.mask, s.effective_spacing())
    area = f"{n} px" + (f" = {mm2:.1f} mm²" if mm2 is not None else "")
    thr = res.extra.get("threshold", s.unet_threshold)
    card = res.extra.get("card") or ""
    return {"unet_info": f"U-Net mask at probability ≥ {thr:.2f}: {area}. Moving the threshold re-uses the "
                         "probability map (the network does not run again)." + (f" *{esc(card)}*" if card else "")
                         + " " + refined_text(s)}


def refined_text(s) -> str:
    """What the Compare tab says about the automatic mask's outline (refined on LiteMedSAM's encoder or not)."""
    from bt_demo.models.medsam_seg import NAME

    if s.refined_reason:
        return f"Outline: the U-Net's ({esc(NAME)} is unavailable: {esc(s.refined_reason)})."
    if not refined_current(s):
        return ("Outline: the U-Net's for now; it is redrawn on LiteMedSAM's pretrained encoder once the encoder "
                "has read this slice (a few seconds on a CPU, once per slice).")
    r = s.refined
    n, mm2 = metrics.area(automatic_mask(s), s.effective_spacing())
    area = f"{n} px" + (f" = {mm2:.1f} mm²" if mm2 is not None else "")
    how = "encoder run for this slice" if r.encoder_ran else "the slice's encoder run re-used"
    return (f"**Outline redrawn on LiteMedSAM's pretrained encoder: {area}** (the decoder's outline where the "
            f"U-Net finds tumour; the threshold above sets where it does; {_secs(r.seconds)}, {how})."
            + (f" *{esc(r.card)}; weights/medsam_seg/card.md.*" if r.card else ""))


def kmeans_view(s) -> dict:
    from bt_demo.studies import clustering

    km = s.kmeans
    if km is None:
        return {"kmeans_image": None, "kmeans_info": "K-Means: no slice yet."}
    geo = s.processed.geometry
    colored = np.asarray(clustering.colorize_labels(km.labels, km.k))[..., :3].astype(np.uint8)
    colored_orig = geo.map_to_original(colored, fill=0, order=0)
    inside = geo.map_to_original(np.asarray(km.labels) > 0, fill=False)
    gray = render.to_rgb(display_gray(s))
    # tint the clustered (brain) pixels with their cluster colour; the rest stays the slice
    blend = gray.copy()
    mix = 0.45 * gray[inside].astype(np.float64) + 0.55 * colored_orig[inside].astype(np.float64)
    blend[inside] = np.rint(mix).astype(np.uint8)
    if s.kmeans_mask is not None and s.kmeans_mask.any():
        blend = render.draw_contour(blend, s.kmeans_mask, render.COLORS["reference"], 1)
    n, mm2 = metrics.area(s.kmeans_mask, s.effective_spacing()) if s.kmeans_mask is not None else (0, None)
    area = f"{n} px" + (f" = {mm2:.1f} mm²" if mm2 is not None else "")
    return {"kmeans_image": fit(blend),
            "kmeans_info": f"K = {km.k} clusters; tumour candidate (white outline): {area}."}


def sweep_view(s) -> dict:
    from bt_demo.studies import clustering

    if s.sweep is None:
        return {"sweep_plot": None, "sweep_info": "Press the button to score K = 2…12 on this slice (1–3 s)."}
    fig = clustering.sweep_figure(s.sweep)
    sw = s.sweep
    info = (f"K-selection curves for this slice. Suggested K: **{sw.suggested_k}** ({esc(sw.suggestion_method)}); "
            f"best silhouette at K = {sw.best_silhouette_k}. Set K with the slider above.")
    return {"sweep_plot": fig, "sweep_info": info}


def pretty_class(name: str) -> str:
    from bt_demo.models.classifier import PRETTY

    return PRETTY.get(name, name.replace("_", " "))


def heads_view(s) -> dict:
    """The Classifier tab's second opinion: presence and type from heads on LiteMedSAM's pretrained encoder."""
    title = "**Heads on the pretrained encoder (LiteMedSAM)**"
    if s.heads_reason:
        return {"heads_info": f"{title}: not available, because {esc(s.heads_reason)}. The small CNN above answers."}
    h = s.heads
    if h is None or s.model_input is None or s.heads_key != s.model_input.key:
        return {"heads_info": f"{title}: preparing… (the pretrained image encoder takes a few seconds on a CPU; "
                              "it runs once per slice and MedSAM's prompts reuse it)…"}
    lines = [title]
    if h.tumour_probability is not None:
        lines.append(f"P(tumour) = **{100 * h.tumour_probability:.1f}%** (presence head, trained on FLAIR and "
                     "post-contrast T1).")
    if h.type_probabilities:
        lines.append("Type, if there is one: " + ", ".join(
            f"{esc(pretty_class(k))} {100 * v:.0f}%" for k, v in sorted(h.type_probabilities.items(),
                                                                          key=lambda kv: -kv[1])) + ".")
    lines.append(f"{1000 * h.seconds:.0f} ms" + (" (the encoder ran for this slice)" if h.encoder_ran
                                                  else " (the slice's encoding was reused)") + ".")
    for n in h.notices:
        lines.insert(1, f"⚠ **Unlike the training data:** {esc(n)}")
    if h.card:
        lines.append(f"*{esc(h.card)}*")
    return {"heads_info": "\n\n".join(lines)}


def classifier_view(s) -> dict:
    from bt_demo.models.classifier import TRAINED_ON, gradcam_choices

    reason = s.classifier_reason
    if reason:
        return {"class_label": None, "class_info": f"Classifier: {esc(reason)}",
                "gradcam_image": None, "gradcam_class": gr.update(choices=[], value=None), **heads_view(s)}
    cr = s.classification
    if cr is None:
        return {"class_label": None, "class_info": "Classifier: no slice yet.", "gradcam_image": None,
                "heads_info": ""}
    label = {pretty_class(k): float(v) for k, v in cr.probabilities.items()}
    types = ", ".join(f"{esc(pretty_class(k))} {100 * v:.0f}%"
                      for k, v in sorted(cr.type_probabilities.items(), key=lambda kv: -kv[1]))
    lines = [f"**Is there a tumour?** P(tumour) = **{100 * cr.tumour_probability:.1f}%** "
             f"(presence head, T = {cr.temperatures['presence']:.2f}).",
             f"**Which type, if there is one?** {types} (type head, T = {cr.temperatures['type']:.2f}).",
             "The four-class bars combine them: P(no tumour) = 1 − P(tumour), P(type) = P(tumour) × P(type | tumour). "
             f"Most likely: **{esc(pretty_class(cr.top_class))}**; {1000 * cr.seconds:.0f} ms.",
             f"Trained on: presence — {TRAINED_ON['presence']}; type — {TRAINED_ON['type']}."]
    for n in cr.notices:
        lines.insert(0, f"⚠ **Unlike the training data:** {esc(n)}")
    if cr.card:
        lines.append(f"*{esc(cr.card)}*")
    out = {"class_label": label, "class_info": "\n\n".join(lines), **heads_view(s)}
    choices = gradcam_choices(list(cr.type_probabilities))
    out["gradcam_class"] = gr.update(choices=choices, value=s.gradcam_class or choices[0][1])
    if s.gradcam is not None:
        out["gradcam_image"] = fit(render.heatmap_overlay(display_gray(s), s.gradcam, alpha=0.45, mask_below=0.15))
    else:
        out["gradcam_image"] = None
    current = s.heads_cam_key == (s.model_input.key, s.gradcam_class or "presence:tumour") \
        if s.model_input is not None else False
    out["heads_cam_image"] = (fit(render.heatmap_overlay(display_gray(s), s.heads_cam, alpha=0.45, mask_below=0.15))
                              if s.heads_cam is not None and current else None)
    return out
