"""The Synthetic tab: draw or pick a tumour mask, generate a matching SYNTHETIC FLAIR-like slice with the
DDIM generator, and load it into the other panels like an upload.

Everything made here is marked synthetic: the panel's title and image, the status line once loaded
(source "synthetic"), exported file names (``SYNTHETIC_...``) and the JSON report (``"synthetic": true``
with the generator, seed and steps). A synthetic slice is never stored as a correction. Handlers take
the session first and return ``(session, view)`` like the rest of the UI (:mod:`bt_demo.ui.kit`).
"""

from __future__ import annotations

import gradio as gr
import numpy as np

from bt_demo import render
from bt_demo.errors import InputError
from bt_demo.ui.compute import chosen_mask
from bt_demo.ui.kit import EVERY_PANEL, SLICE_OUT, Page, editor_mask, handler, need_slice
from bt_demo.ui.panels.upload import adopt_slice
from bt_demo.ui.state import Session
from bt_demo.ui.views import esc

SOURCES = {"none": "none (a slice without tumour)", "drawn": "the mask drawn below",
           "prompted": "the current prompted mask", "unet": "the current U-Net mask"}
LOADED_SIZE = 256  # a generated slice is brought to the LGG slice size the U-Net and click model learnt on
DEFAULT_STEPS = 25


def _mask_for(s: Session, source: str, editor_value) -> np.ndarray | None:
    if source == "none":
        return None
    if source == "drawn":
        m = editor_mask(editor_value, (LOADED_SIZE, LOADED_SIZE))
        if m is None:
            raise InputError("draw a tumour shape on the canvas first (or choose another mask)")
        return m
    if source not in ("prompted", "unet"):
        raise InputError(f"choose the mask to draw from: {', '.join(SOURCES.values())}")
    need_slice(s)
    m = chosen_mask(s, source)
    if m is None or not np.asarray(m).any():
        raise InputError(f"{SOURCES[source]} is empty: make one first (or choose another mask)")
    return np.asarray(m, bool)


def _show(img01: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The synthetic slice at display size, the conditioning mask outlined, and a SYNTHETIC banner burnt in."""
    import cv2

    big = cv2.resize(img01, (LOADED_SIZE, LOADED_SIZE), interpolation=cv2.INTER_LINEAR)
    rgb = render.to_rgb(np.clip(big, 0, 1))
    if mask is not None and mask.any():
        m = cv2.resize(mask.astype(np.uint8), (LOADED_SIZE, LOADED_SIZE), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        rgb = np.ascontiguousarray(rgb)
        cv2.drawContours(rgb, contours, -1, (255, 170, 0), 1)
    rgb = np.ascontiguousarray(rgb)
    cv2.rectangle(rgb, (0, 0), (112, 16), (200, 0, 0), -1)
    cv2.putText(rgb, "SYNTHETIC", (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return rgb


@handler("generating a synthetic slice", heavy=True)
def generate(s: Session, engines, source: str, editor_value, seed, steps, progress=None) -> dict:
    """A synthetic slice for the chosen mask (``SOURCES`` key), ``seed`` (whole number) and DDIM ``steps``."""
    gen = engines.generator()
    if isinstance(gen, str):
        raise InputError(gen)
    try:
        seed, steps = int(seed), int(steps)
    except (TypeError, ValueError):
        raise InputError("seed and steps must be whole numbers") from None
    if not 0 <= seed < 2**31:
        raise InputError("the seed must be a whole number from 0 to 2147483647")
    mask = _mask_for(s, source, editor_value)
    cb = None
    if progress is not None:
        def cb(i, n):
            progress((i, n), desc="DDIM steps", unit="steps")
    syn = gen.generate(mask, seed=seed, steps=steps, progress=cb)
    s.synthetic = {"image": syn.image, "mask": syn.mask, "seed": syn.seed, "steps": syn.steps,
                   "source": source, "seconds": syn.seconds, "generator": getattr(gen, "card_line", "")}
    info = (f"**SYNTHETIC** slice ({gen.size} × {gen.size} px, shown at {LOADED_SIZE}), drawn for "
            f"{esc(SOURCES[source])}, seed {syn.seed}, {syn.steps} DDIM steps, {syn.seconds:.1f} s. "
            "Not a patient's image: for teaching and augmentation experiments only.")
    card = getattr(gen, "card_line", "")
    if card:
        info += f"\n\n{esc(card)}"
    return {"synthetic_image": _show(syn.image, syn.mask), "synthetic_info": info}


def as_slice(syn: dict):
    """The generated image as a ``Slice`` the other panels read like an upload (source "synthetic")."""
    import cv2

    from bt_demo.io import Slice

    big = cv2.resize(syn["image"], (LOADED_SIZE, LOADED_SIZE), interpolation=cv2.INTER_LINEAR)
    px = np.clip(big, 0, 1) * 255.0
    meta = {"format": "SYNTHETIC", "synthetic": "true", "generator": syn.get("generator", "") or "DDIM generator",
            "seed": str(syn["seed"]), "ddim_steps": str(syn["steps"]), "conditioning_mask": SOURCES[syn["source"]]}
    return Slice(px.astype(np.float32), None, (127.5, 255.0), "synthetic", meta)


@handler("loading the synthetic slice", heavy=True)
def load(s: Session, engines) -> dict:
    """Make the last generated slice the session's slice: every panel follows, marked SYNTHETIC."""
    if not s.synthetic:
        raise InputError("generate a synthetic slice first")
    return adopt_slice(s, engines, as_slice(s.synthetic), None)


def is_synthetic(s: Session) -> bool:
    return s.slice is not None and s.slice.source == "synthetic"


def report_record(s: Session) -> dict | None:
    """What an export's JSON report says about a synthetic slice (None for a real one)."""
    if not is_synthetic(s):
        return None
    m = dict(s.slice.metadata)
    return {"synthetic": True, "note": "SYNTHETIC slice made by the generator; not a patient's image",
            "generator": m.get("generator"), "seed": int(m.get("seed", 0)), "ddim_steps": int(m.get("ddim_steps", 0)),
            "conditioning_mask": m.get("conditioning_mask")}


# ---------------------------------------------------------------------------
# the panel
# ---------------------------------------------------------------------------
def build(page: Page) -> list:
    """The Synthetic tab's contents: generate (a progress bar over the DDIM steps), then load like an upload.
    Returns the events that bring a new image."""
    eng, session = page.engines, page.session
    gr.Markdown("Make a **SYNTHETIC** FLAIR-like slice for a tumour shape (the DDIM generator "
                "trained on the LGG training patients): for teaching and augmentation "
                "experiments, never a patient's image. Everything made here is marked "
                "synthetic.", label="Synthetic slices", elem_classes=["hint"])
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=260):
            syn_source = gr.Radio(choices=[(v, k) for k, v in SOURCES.items()], value="none",
                                  label="Tumour mask to draw the slice for")
            syn_draw = gr.ImageEditor(
                label="Draw a tumour shape (used with 'the mask drawn below')",
                value={"background": np.zeros((LOADED_SIZE, LOADED_SIZE, 3), np.uint8),
                       "layers": [], "composite": None},
                type="numpy", image_mode="RGBA", sources=(), height=280,
                brush=gr.Brush(colors=["#ff9900"], color_mode="fixed", default_size=12),
                eraser=gr.Eraser(), layers=gr.LayerOptions(allow_additional_layers=False))
            with gr.Row():
                syn_seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                syn_steps = gr.Slider(5, 100, value=DEFAULT_STEPS, step=1, label="DDIM steps")
            syn_btn = gr.Button("Generate a synthetic slice", variant="primary")
        with gr.Column(scale=3, min_width=300):
            syn_image = gr.Image(label="SYNTHETIC slice (generated, not a patient)", type="numpy",
                                 format="png", interactive=False, height=300)
            syn_info = gr.Markdown("", label="Synthetic slice summary")
            syn_load = gr.Button("Load it into the other panels (marked SYNTHETIC)", size="sm")

    def syn_generate(s, src, drawn, seed, steps, progress=gr.Progress()):
        s, view = generate(s, eng, src, drawn, seed, steps, progress)
        return {session: s, **({syn_image: view["synthetic_image"]} if "synthetic_image" in view else {}),
                **({syn_info: view["synthetic_info"]} if "synthetic_info" in view else {})}

    syn_btn.click(syn_generate, [session, syn_source, syn_draw, syn_seed, syn_steps], [session, syn_image, syn_info],
                  api_name="generate_synthetic", concurrency_id="generator", concurrency_limit=1,
                  show_progress_on=[syn_image])  # one spinner (kit.Page.progress_on)
    return [page.wire(syn_load.click, lambda s: load(s, eng), [], SLICE_OUT + EVERY_PANEL, api_name="load_synthetic")]
