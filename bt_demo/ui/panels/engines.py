"""Which engines answer: the summary line at the top of the page and the Engines panel on the left, refreshed on
page load and by a timer while models load in the background (the prompt-engine chooser follows)."""

from __future__ import annotations

import gradio as gr

from bt_demo.ui.kit import QUIET, Page
from bt_demo.ui.views import esc


def _loading(st) -> bool:
    return not st.available and "still loading" in str(st.reason)


def engines_summary(engines, wait: bool = True) -> str:
    """One line for the top of the page: which engines answer, and the default prompt engine."""
    from bt_demo.models.registry import PROMPT_ENGINES

    sts = engines.statuses(wait=wait)
    marks = []
    for st in sts:
        if st.key in ("unet", "classifier"):
            state = "available" if st.available else ("loading…" if _loading(st) else "unavailable")
            marks.append(f"{st.label}: {state}")
    prompt = next((st.key for st in sts if st.key in PROMPT_ENGINES and st.available), "random_walker")
    missing = any(not st.available for st in sts if st.key in ("unet", "classifier"))
    tail = " (the Engines panel on the left says why)" if missing else ""
    return "Engines: " + " · ".join(marks) + f" · clicks answered by the {PROMPT_ENGINES[prompt]}{tail}."


def engine_choices(engines) -> list[tuple[str, str]]:
    """(label, key) of the prompt engines a user can pick now: available ones, and those still loading
    (marked); an engine that cannot load is not offered (the Engines panel on the left says why)."""
    from bt_demo.models.registry import PROMPT_ENGINES

    out = []
    for key, label in PROMPT_ENGINES.items():
        p = engines.new_predictor(key, wait=False)
        if not isinstance(p, str):
            out.append((label, key))
        elif "still loading" in p:
            out.append((f"{label} (loading…)", key))
    return out


def refresh_engines(engines) -> tuple:
    """(summary line, Engines panel, prompt-engine choices, keep polling?) — called on page load and by a
    timer until every engine has finished loading, so the page updates itself when SAM is ready."""
    sts = engines.statuses(wait=False)
    return (engines_summary(engines, wait=False), engines_status(engines, wait=False), engine_choices(engines),
            any(_loading(st) for st in sts))


def engines_status(engines, wait: bool = True) -> str:
    """Markdown: every engine, available, loading, or "unavailable, because ..."."""
    lines = []
    for st in engines.statuses(wait=wait):
        if _loading(st):
            lines.append(f"- ⏳ **{esc(st.label)}**: still loading (this page updates when it is ready)")
        elif st.available:
            detail = "" if st.reason in ("", "loaded") else f" ({esc(str(st.reason))})"
            lines.append(f"- ✅ **{esc(st.label)}**: available{detail}")
        else:
            reason = str(st.reason)
            lines.append(f"- ⛔ **{esc(st.label)}**: {esc(reason)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# the panel
# ---------------------------------------------------------------------------
def build_summary(page: Page) -> None:
    """The one-line summary at the top of the page (wait=False: an engine still loading is shown as such)."""
    page.add(engines_line=gr.Markdown(engines_summary(page.engines, wait=False), label="Engines summary",
                                      elem_classes=["hint"]))


def build(page: Page, demo: gr.Blocks) -> None:
    """The Engines panel; the summary, this panel and the prompt-engine chooser refresh on page load and every
    2 s while an engine is still loading."""
    eng = page.engines
    with gr.Accordion("Engines: which models answer, and why others do not", open=False):
        engines_md = gr.Markdown(engines_status(eng, wait=False), label="Engines status")

    def refresh():
        summary, status, choices, loading = refresh_engines(eng)
        return summary, status, gr.update(choices=choices), gr.Timer(active=loading)

    def register():
        engines_timer = gr.Timer(2.0, active=True)
        for trig in (demo.load, engines_timer.tick):
            trig(refresh, inputs=None, outputs=[page.comp["engines_line"], engines_md, page.comp["engine"],
                                                engines_timer],
                 api_visibility="private", **QUIET)
    page.later(register)
