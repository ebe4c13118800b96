"""The Prompts tab: clicks (positive, negative, a box by two corners or by numbers), undo, clear, the prompt
engine, and SAM's candidate masks. A click is answered by the session's predictor
(:func:`bt_demo.ui.compute.predict`); SAM's / MedSAM's slow ``set_image`` runs in the chained
:func:`bt_demo.ui.compute.prepare_prompts`, never on the click path."""

from __future__ import annotations

import math
from dataclasses import replace

import gradio as gr

from bt_demo.errors import InputError
from bt_demo.ui import compute as C
from bt_demo.ui import views
from bt_demo.ui.kit import PROMPT_OUT, QUIET, Page, display_to_original, handler, need_slice, notify
from bt_demo.ui.panels.engines import engine_choices
from bt_demo.ui.state import PromptState, Session

MAX_HISTORY = 50


def _push(s: Session, new: PromptState) -> None:
    s.history = (s.history + (s.prompts,))[-MAX_HISTORY:]
    s.prompts = new


@handler("answering the click", heavy=True)
def click(s: Session, engines, index_xy, mode: str = "positive") -> dict:
    """A click on the prompt image. ``index_xy``: ``SelectData.index`` ``[x, y]`` in displayed pixels.

    mode: "positive" (tumour), "negative" (not tumour) or "box" (first click
    = one corner, second click = the opposite corner).
    """
    need_slice(s)
    if index_xy is None:
        raise InputError("that click was outside the image; click on the image")
    x, y = display_to_original(index_xy, s.display_factor, s.slice.shape)
    C.ensure_slot(s, engines)
    view: dict = {}
    if mode == "box":
        if s.box_anchor is None:
            s.box_anchor = (x, y)
            view.update(views.prompt_view(s))
            return view
        ax, ay = s.box_anchor
        s.box_anchor = None
        if abs(x - ax) < 1 or abs(y - ay) < 1:
            raise InputError("the box is too thin: click two opposite corners around the tumour")
        box = (min(ax, x), min(ay, y), max(ax, x), max(ay, y))
        new = replace(s.prompts, box=box)
    elif mode in ("positive", "negative"):
        label = 1 if mode == "positive" else 0
        new = replace(s.prompts, points=s.prompts.points + ((x, y),), labels=s.prompts.labels + (label,))
    else:
        raise InputError(f"unknown click mode {mode!r}; choose positive, negative or box")
    new = C.predict(s, new, view)
    _push(s, new)
    return C.prompt_and_compare(s, view)


@handler("setting the box", heavy=True)
def set_box(s: Session, engines, x0, y0, x1, y1) -> dict:
    """A box typed as numbers (original pixels, corners in any order)."""
    need_slice(s)
    try:
        b = [float(v) for v in (x0, y0, x1, y1)]
    except (TypeError, ValueError):
        raise InputError("box corners must be numbers (x0, y0, x1, y1) in slice pixels") from None
    h, w = s.slice.shape
    if not all(math.isfinite(v) for v in b):
        raise InputError("box corners must be finite numbers")
    bx = (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3]))
    bx = (max(bx[0], 0.0), max(bx[1], 0.0), min(bx[2], w - 1.0), min(bx[3], h - 1.0))
    if bx[2] - bx[0] < 1 or bx[3] - bx[1] < 1:
        raise InputError(f"the box must cover part of the {w} × {h} px slice and be at least 1 px wide and high")
    C.ensure_slot(s, engines)
    view: dict = {}
    s.box_anchor = None
    _push(s, C.predict(s, replace(s.prompts, box=bx), view))
    return C.prompt_and_compare(s, view)


@handler("undoing the last prompt")
def undo(s: Session, engines) -> dict:
    """Remove the last point or box (a half-drawn box first)."""
    view: dict = {}
    if s.box_anchor is not None:
        s.box_anchor = None
    elif s.history:
        s.prompts, s.history = s.history[-1], s.history[:-1]
        if s.loaded and not C.prompts_fresh(s):
            C.ensure_slot(s, engines)
            s.prompts = C.predict(s, s.prompts, view)
    else:
        notify(view, "nothing to undo", level="info")
        return view
    if not s.loaded:
        return view
    return C.prompt_and_compare(s, view)


@handler("clearing the prompts")
def clear(s: Session, engines=None) -> dict:
    """Remove every point, the box and the prompted mask."""
    s.prompts, s.history, s.box_anchor = PromptState(), (), None
    if not s.loaded:
        return {}
    return C.prompt_and_compare(s)


@handler("switching the prompt engine", heavy=True)
def switch_engine(s: Session, engines, key: str) -> dict:
    """Use another promptable engine (a key of ``PROMPT_ENGINES``); the current prompts are re-answered.

    An unavailable engine is a warning saying why; the engine in use stays (and the chooser shows it again).
    """
    from bt_demo.models.registry import PROMPT_ENGINES

    if key not in PROMPT_ENGINES:
        raise InputError(f"unknown engine {key!r}; choose one of {', '.join(PROMPT_ENGINES)}")
    views.mark_shown(s, "engine", key)  # the chooser shows the user's pick now
    slot = C.new_slot(engines, key, wait=False)
    view: dict = {}
    if slot.predictor is None:
        notify(view, slot.reason)
        current = s.slot.engine_key if s.slot is not None else None
        view["engine"] = current
        views.mark_shown(s, "engine", current)
        return view
    s.slot = slot
    if not s.loaded:
        return views.prompt_view_engine(s)
    if not C.refresh_prompts(s, engines, view, allow_slow=False):  # MedSAM / SAM: the chained prepare_prompts
        out = C.prompt_and_compare(s, view)
        out["prompt_info"] = C.preparing_text(s)
        return out
    return C.prompt_and_compare(s, view)


@handler("choosing a candidate mask")
def pick_candidate(s: Session, index) -> dict:
    """Pick one of SAM's candidate masks (0-based index into ``SegResult.candidates``)."""
    res = s.prompts.result
    if res is None or not res.candidates:
        raise InputError("there are no candidate masks to choose from (SAM gives three after a single click)")
    if index is None:
        return {}
    s.prompts = replace(s.prompts, result=res.with_choice(int(index)))
    return C.prompt_and_compare(s)


# ---------------------------------------------------------------------------
# the panel
# ---------------------------------------------------------------------------
def build(page: Page) -> list:
    """The Prompts tab's contents. Returns the events after which the prompt engine must be prepared
    (choosing an engine: SAM's / MedSAM's ``set_image`` for the current image)."""
    eng = page.engines
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=300):
            prompt_image = gr.Image(label="Click on the tumour (processed slice)", type="numpy",
                                    format="jpeg", interactive=False, elem_id="prompt-image",
                                    buttons=["fullscreen"], height=520)
            prompt_info = gr.Markdown("", label="Prompt status")
        with gr.Column(scale=1, min_width=210):
            mode = gr.Radio(choices=[(v, k) for k, v in views.PROMPT_MODES.items()],
                            value="positive", label="Click adds")
            with gr.Row():
                undo_btn = gr.Button("Undo last point", size="sm")
                clear_btn = gr.Button("Clear points", size="sm")
            engine = gr.Radio(choices=engine_choices(eng), value=eng.default_prompt_engine(wait=False),
                              label="Prompt engine")
            candidates = gr.Radio(choices=[], value=None, visible=False, type="value",
                                  label="SAM's candidate masks (pick one)")
            with gr.Accordion("Box by coordinates (slice pixels)", open=False):
                with gr.Row():
                    bx0 = gr.Number(label="x0", precision=0, min_width=60)
                    by0 = gr.Number(label="y0", precision=0, min_width=60)
                with gr.Row():
                    bx1 = gr.Number(label="x1", precision=0, min_width=60)
                    by1 = gr.Number(label="y1", precision=0, min_width=60)
                box_btn = gr.Button("Apply box", size="sm")
    page.add(prompt_image=prompt_image, prompt_info=prompt_info, candidates=candidates, engine=engine)

    # a prompt changes panels of other tabs too, but the prompt image lives on this tab: those tabs are
    # drawn when opened (ui.tabs). Every output an event declares costs Gradio a component rebuild per
    # event even when the handler leaves it out, so the prompt events declare only this tab's panels.
    out = PROMPT_OUT

    def on_click(s, m, evt: gr.SelectData):
        return page.adapt(click(s, eng, evt.index, m), out)

    # these happen on the Prompts tab: the classical segmenters (which follow the clicks) run when Compare
    # or Measure is opened (compute.show_tab), so no chained event follows a click
    page.later(lambda: prompt_image.select(on_click, inputs=[page.session, mode], outputs=page.outputs(out),
                                           trigger_mode="multiple",  # never drop a click
                                           api_name="click_point", **QUIET))
    page.wire(undo_btn.click, lambda s: undo(s, eng), [], out, api_name="undo_point")
    page.wire(clear_btn.click, lambda s: clear(s, eng), [], out, api_name="clear_points")
    page.wire(box_btn.click, lambda s, a, b, c, d: set_box(s, eng, a, b, c, d), [bx0, by0, bx1, by1], out,
              api_name="set_box")
    page.wire(candidates.input, pick_candidate, [candidates], out, api_name="pick_candidate")
    return [page.wire(engine.input, lambda s, k: switch_engine(s, eng, k), [engine], out, api_name="choose_engine")]
