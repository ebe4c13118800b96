"""The plumbing every panel shares: the handler decorator, messages, small checks, and the page context.

Every public handler (in :mod:`bt_demo.ui.compute` and ``bt_demo.ui.panels.*``) has the shape
``handler(session, ...) -> (session, view)``:

* ``session`` is this tab's :class:`~bt_demo.ui.state.Session` (from ``gr.State``);
  it is updated in place under ``session.lock``; a handler that fails restores
  the snapshot taken when it started, so the session stays as it was.
* ``view`` is a ``dict`` output name -> new value (or ``gr.update``) for the
  panels that changed; :class:`Page` maps the names to components. Keys starting
  with ``_`` are for tests and benchmarks (``_messages``: the warnings shown).
* ``engines`` (where taken) is the process-wide
  :class:`~bt_demo.models.registry.Engines`, never stored in the session.

Bad input (:class:`~bt_demo.errors.InputError`, ``ValueError``) becomes a
``gr.Warning`` and the session is kept; anything unexpected is logged here
with its traceback and shown as a short ``gr.Error`` without one.

Coordinates: Gradio's ``SelectData.index`` is ``[x, y]`` in the pixels of the
displayed (upscaled) image; :func:`display_to_original` converts it once, and
from there on every point and box is ``(x, y)`` in ORIGINAL slice pixels.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gradio as gr
import numpy as np

from bt_demo.errors import InputError
from bt_demo.ui import busy, tabs
from bt_demo.ui.state import Session
from bt_demo.ui.views import CLASSICAL_NAMES, esc

log = logging.getLogger(__name__)

# Output groups: the component names (keys of Page.comp) an event may update.
SLICE_OUT = ["status", "idx_slice", "idx_volume", "idx_page", "idx_frame", "idx_channel", "win_center", "win_width"]
PROMPT_OUT = ["prompt_image", "prompt_info", "candidates", "engine"]
MEASURE_OUT = ["measure_image", "measure_table", "measure_which", "export_which"]
COMPARE_OUT = (["overlay_unet", "overlay_prompt", "overlay_kmeans", "compare_info", "metrics_table", "area_table",
                "agreement_image", "agreement_legend"] + [f"overlay_{name}" for name in CLASSICAL_NAMES] + MEASURE_OUT)
INTENSITY_OUT = ["intensity_plot", "intensity_info"]
UNCERTAINTY_OUT = ["uncertainty_image", "uncertainty_info"]
EVERY_PANEL = (["before_after", "pipeline_info"] + PROMPT_OUT + COMPARE_OUT
               + ["unet_info", "kmeans_image", "kmeans_info", "sweep_plot", "sweep_info", "class_label",
                  "class_info", "gradcam_image", "gradcam_class", "export_files"]
               + INTENSITY_OUT + UNCERTAINTY_OUT)


# The keywords of an event that shows no spinner: no progress, and no loading status for Gradio's front end to
# keep and walk on every later request (see Page.progress_on).
QUIET = {"show_progress": "hidden", "show_progress_on": []}


# ---------------------------------------------------------------------------
# handlers: messages, the decorator, small checks
# ---------------------------------------------------------------------------
def notify(view: dict, text: str, level: str = "warning") -> None:
    """Show ``text`` as a toast (escaped: messages may quote file content) and record it in ``view``."""
    view.setdefault("_messages", []).append(text)
    if level == "info":
        gr.Info(esc(text))
    else:
        gr.Warning(esc(text))


def handler(what: str, heavy: bool = False):
    """Lock the session, snapshot it, and turn failures into messages (see the module docstring).

    heavy: the request does real work (an upload, a click, a segmentation, an export); one whose
    session is still busy with another heavy request is answered with :func:`bt_demo.ui.busy.message`
    after a short wait instead of taking a worker slot to queue.
    """

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(session, *args, **kwargs):
            if not isinstance(session, Session):
                session = Session()
            with busy.turn(session, what, heavy) as my_turn:
                if not my_turn:
                    view: dict = {"_busy": True}
                    notify(view, busy.message(session))
                    return session, view
                snap = session.snapshot()
                try:
                    view = fn(session, *args, **kwargs)
                    # only the tab on screen travels; the others are drawn when opened (ui.tabs)
                    return session, tabs.hold_back(session, view if view is not None else {})
                except (InputError, ValueError) as exc:
                    session.restore(snap)
                    view: dict = {}
                    notify(view, str(exc) or f"could not finish {what}")
                    return session, view
                except gr.Error:
                    session.restore(snap)
                    raise
                except Exception as exc:  # noqa: BLE001 - the server stays up; the log has the traceback
                    session.restore(snap)
                    log.exception("unexpected error while %s", what)
                    raise gr.Error(f"Something went wrong while {what} ({type(exc).__name__}). "
                                   "The app is still running: try again, or reload the page.",
                                   print_exception=False) from None
        return wrapper
    return deco


def need_slice(s: Session) -> None:
    """Raise the "upload a slice first" warning when the session has no slice."""
    if not s.loaded:
        raise InputError("upload a slice first (or pick one of the examples)")


def engine_or_reason(obj) -> tuple[object | None, str | None]:
    """What ``Engines.unet()`` and friends return (the engine, or why it is unavailable) -> (engine, reason)."""
    return (None, obj) if isinstance(obj, str) else (obj, None)


def display_to_original(index_xy: Sequence[float], factor: float, shape: tuple[int, int]) -> tuple[float, float]:
    """Gradio's ``SelectData.index`` ``[x, y]`` on the displayed image -> ``(x, y)`` in original pixels.

    Display pixel ``d`` of an image upscaled by ``factor`` covers original
    pixel ``floor(d / factor)``; its centre maps to ``(d + 0.5) / factor - 0.5``.
    The result is clamped into the slice (``0 <= x <= W - 1``, ``0 <= y <= H - 1``).
    """
    try:
        xd, yd = (float(v) for v in index_xy)
    except (TypeError, ValueError):
        raise InputError("that click could not be read; click on the image again") from None
    if not (math.isfinite(xd) and math.isfinite(yd)):
        raise InputError("that click was outside the image; click on the image")
    f = float(factor) if factor and factor > 0 else 1.0
    h, w = shape
    x = min(max((xd + 0.5) / f - 0.5, 0.0), w - 1.0)
    y = min(max((yd + 0.5) / f - 0.5, 0.0), h - 1.0)
    return x, y


def editor_mask(editor_value, shape: tuple[int, int]) -> np.ndarray | None:
    """The painted layers of a ``gr.ImageEditor`` value (dict with "layers") -> bool ``(H, W)`` mask of ``shape``,
    or None if nothing is painted."""
    if not isinstance(editor_value, dict):
        return None
    layers = [np.asarray(la) for la in (editor_value.get("layers") or []) if la is not None]
    painted = None
    for layer in layers:
        if layer.ndim == 3 and layer.shape[2] == 4:
            m = layer[:, :, 3] > 0
        elif layer.ndim == 3:
            m = layer.max(axis=2) > 0
        else:
            m = layer > 0
        painted = m if painted is None else (painted | m)
    if painted is None or not painted.any():
        return None
    if painted.shape != tuple(shape):
        import cv2

        painted = cv2.resize(painted.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    return painted


# ---------------------------------------------------------------------------
# building the page
# ---------------------------------------------------------------------------
def param_control(p, value):
    """A widget for one parameter spec (``bt_demo.image.preprocess.Param`` or a classical segmenter's):
    slider, dropdown or checkbox."""
    kind = getattr(p, "kind", "float")
    label = p.label
    info = getattr(p, "help", None) or None
    if kind == "bool":
        return gr.Checkbox(value=bool(value), label=label, info=info)
    if kind == "choice":
        return gr.Dropdown(choices=list(p.choices), value=value, label=label, info=info)
    step = p.step if p.step is not None else (1 if kind == "int" else (p.max - p.min) / 100.0)
    return gr.Slider(p.min, p.max, value=value, step=step, label=label, info=info)


class Event:
    """An event declared by a panel, registered with Gradio by :meth:`Page.connect` once every component exists
    (an upload updates panels of tabs built after it). :meth:`then` chains another step after it."""

    def __init__(self, register: Callable[[], object]):
        self._register, self._followers, self.dep = register, [], None

    def then(self, follow: Callable[[object], object]) -> Event:
        """``follow(dependency)`` is called with Gradio's dependency once the event is registered."""
        self._followers.append(follow)
        return self


@dataclass
class Page:
    """What every panel's ``build`` needs: the session state, the engines, the components by name, the settings.

    comp: output name -> component; a handler's ``view`` keys are these names (see the output groups above).
    """

    session: gr.State
    engines: object
    annotations_dir: str | None = None
    max_corrections: int = 10000
    examples_dir: object = None
    comp: dict = field(default_factory=dict)
    _events: list = field(default_factory=list)

    def add(self, **components) -> None:
        """Name components so that any panel's handlers can update them through their ``view``."""
        self.comp.update(components)

    def adapt(self, result, names: Sequence[str]) -> dict:
        """A handler's ``(session, view)`` -> Gradio's ``{component: value}`` for the ``names`` in ``view``."""
        s, view = result
        out = {self.session: s}
        for n in names:
            if n in view:
                out[self.comp[n]] = view[n]
        return out

    def outputs(self, names: Sequence[str]) -> list:
        return [self.session] + [self.comp[n] for n in names]

    def progress_on(self, names: Sequence[str], show_progress: str) -> list:
        """Where an event's spinner goes (Gradio's ``show_progress_on``): nowhere when the event shows no
        progress, else on its first panel only (the one its handler answers for first: the upload box, the
        preprocessing view, the panel whose control was moved).

        Why not Gradio's default (every output): its front end keeps a loading status for every component
        any event of the session has shown progress on, and before and after each later request walks all
        of them (a search of the page's component tree and a copy of the component's props each). With an
        upload's 44 outputs among them, a click spent ~35 ms of the browser's time there (issue 24)."""
        return [] if show_progress == "hidden" or not names else [self.comp[names[0]]]

    def wire(self, trigger, fn, inputs, names, **kw) -> Event:
        """One event: ``trigger`` (or a list of triggers, through ``gr.on``) runs ``fn(session, *inputs)`` and
        updates the components ``names``. Registered by :meth:`connect`, when every component exists."""

        def register():
            out_names = list(dict.fromkeys(names))
            kw.setdefault("show_progress", "minimal")
            kw.setdefault("show_progress_on", self.progress_on(out_names, kw["show_progress"]))
            run = lambda *a: self.adapt(fn(*a), out_names)  # noqa: E731
            if isinstance(trigger, list):
                return gr.on(triggers=trigger, fn=run, inputs=[self.session] + inputs,
                             outputs=self.outputs(out_names), **kw)
            return trigger(run, inputs=[self.session] + inputs, outputs=self.outputs(out_names), **kw)
        return self.later(register)

    def later(self, register: Callable[[], object]) -> Event:
        """Register ``register()`` (which declares one Gradio event and returns its dependency) at :meth:`connect`."""
        ev = Event(register)
        self._events.append(ev)
        return ev

    def connect(self) -> None:
        """Register every declared event, in the order declared, and the steps chained after each."""
        for ev in self._events:
            ev.dep = ev._register()
            for follow in ev._followers:
                follow(ev.dep)
        self._events = []
