"""Event handlers: thin orchestration between the widgets and ``bt_demo``.

Every public handler has the shape ``handler(session, ...) -> (session, view)``:

* ``session`` is this tab's :class:`~bt_demo.ui.state.Session` (from ``gr.State``);
  it is updated in place under ``session.lock``; a handler that fails restores
  the snapshot taken when it started, so the session stays as it was.
* ``view`` is a ``dict`` output name -> new value (or ``gr.update``) for the
  panels that changed; ``layout`` maps the names to components. Keys starting
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
import os
import time
from collections.abc import Sequence
from dataclasses import replace

import gradio as gr
import numpy as np

from bt_demo import render
from bt_demo.errors import InputError
from bt_demo.models.classifier import gradcam_choices
from bt_demo.ui import busy, tabs, views
from bt_demo.ui.views import esc
from bt_demo.ui.state import PredictorSlot, PromptState, Session

log = logging.getLogger(__name__)

APP_VERSION = "0.1.0"
K_RANGE = (2, 12)
MAX_HISTORY = 50


# ---------------------------------------------------------------------------
# plumbing
# ---------------------------------------------------------------------------
def notify(view: dict, text: str, level: str = "warning") -> None:
    """Show ``text`` as a toast (escaped: messages may quote file content) and record it in ``view``."""
    view.setdefault("_messages", []).append(text)
    if level == "info":
        gr.Info(esc(text))
    else:
        gr.Warning(esc(text))


def _handler(what: str, heavy: bool = False):
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


def _need_slice(s: Session) -> None:
    if not s.loaded:
        raise InputError("upload a slice first (or pick one of the examples)")


def _engine_or_reason(obj) -> tuple[object | None, str | None]:
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


# ---------------------------------------------------------------------------
# computing (calls into bt_demo; no rendering here)
# ---------------------------------------------------------------------------
def _pipeline(s: Session) -> list:
    if s.pipeline is None:
        from bt_demo.image.preprocess import default_pipeline

        s.pipeline = [(name, dict(params)) for name, params in default_pipeline()]
    return s.pipeline


def _ensure_slot(s: Session, engines) -> PredictorSlot:
    """This session's predictor; created on first use (or after a deep copy emptied the slot).

    The first available of SAM, the click model, the random walker; SAM is
    not waited for while it is still loading (its first download can take
    minutes), the click model is (it loads in a second or two).
    """
    if s.slot is None:
        from bt_demo.models.registry import FALLBACK_ORDER

        for key in FALLBACK_ORDER:
            slot = _new_slot(engines, key, wait=key != "sam")
            if slot.predictor is not None:
                s.slot = slot
                break
    elif s.slot.predictor is None and not s.slot.reason:
        s.slot = _new_slot(engines, s.slot.engine_key)
    return s.slot


def _new_slot(engines, key: str, wait: bool = True) -> PredictorSlot:
    p = engines.new_predictor(key, wait=wait)
    if isinstance(p, str):
        return PredictorSlot(key, None, p)
    return PredictorSlot(key, p)


def _run_unet(s: Session, engines, *, rerun: bool) -> str | None:
    """U-Net mask in original pixels (probabilities cached per model input). Returns the reason if unavailable."""
    unet, reason = _engine_or_reason(engines.unet())
    s.unet_reason = reason
    if unet is None:
        s.unet_result, s.unet_prob, s.unet_prob_key = None, None, None
        return reason
    p = s.model_input
    if rerun or s.unet_prob is None or s.unet_prob_key != p.key:
        s.unet_prob = unet.probabilities(p.image)
        s.unet_prob_key = p.key
    if s.unet_threshold is None:
        s.unet_threshold = unet.threshold
    s.unet_result = unet.segment(p.image, p.geometry, threshold=s.unet_threshold, prob=s.unet_prob)
    return None


def _run_kmeans(s: Session) -> None:
    from bt_demo.studies import clustering

    p = s.processed
    key = (p.key, int(s.kmeans_k))
    if s.kmeans is None or s.kmeans_key != key:
        s.kmeans = clustering.kmeans_segment(p.image, int(s.kmeans_k), mask=p.brain_mask)
        s.kmeans_key = key
        s.kmeans_mask = p.geometry.map_to_original(np.asarray(clustering.tumour_candidate(s.kmeans), bool),
                                                   fill=False)


def _run_classifier(s: Session, engines) -> str | None:
    clf, reason = _engine_or_reason(engines.classifier())
    s.classifier_reason = reason
    if clf is None:
        s.classification, s.gradcam, s.classification_key = None, None, None
        return reason
    p = s.model_input
    if s.classification is None or s.classification_key != p.key:
        s.classification = clf.classify(p.image, notices=s.notices)
        s.classification_key = p.key
        if s.gradcam_class not in {v for _, v in gradcam_choices(clf.type_names)}:
            s.gradcam_class = None
        _run_gradcam(s, clf)
    return None


def _notices(s: Session) -> tuple[str, ...]:
    """Why the slice is unlike the training data: what its file says, then what its pixels look like."""
    from bt_demo.image import domain, looks_like_brain

    return domain.notices(s.slice.metadata) + looks_like_brain.notices(s.unit)


def _run_gradcam(s: Session, clf) -> None:
    from bt_demo.models.classifier import parse_gradcam_choice

    p = s.model_input
    head, cls = parse_gradcam_choice(s.gradcam_class)
    heat = clf.gradcam(p.image, head, cls)
    s.gradcam = p.geometry.map_to_original(np.asarray(heat, np.float32), fill=0.0, order=1)


def _predict(s: Session, prompts: PromptState, view: dict) -> PromptState:
    """Run this session's predictor on ``prompts``; returns them with the new result (None if it declined)."""
    slot = s.slot
    if slot is None or slot.predictor is None:
        notify(view, slot.reason if slot is not None else "no prompt engine is available")
        return replace(prompts, result=None, image_key=None, engine_key=None)
    if prompts.empty():
        return replace(prompts, result=None, image_key=None, engine_key=None)
    slot.ensure_image(s.model_input)
    previous = s.prompts.result if (s.prompts.image_key == s.model_input.key
                                    and s.prompts.engine_key == slot.engine_key) else None
    try:
        res = slot.predictor.predict([list(p) for p in prompts.points], list(prompts.labels), box=prompts.box,
                                     previous=previous, multimask=True)
    except ValueError as exc:  # e.g. only negative points so far: keep the prompts, no mask yet
        notify(view, str(exc), level="info")
        return replace(prompts, result=None, image_key=None, engine_key=None)
    return replace(prompts, result=res, image_key=s.model_input.key, engine_key=slot.engine_key)


def _prompts_fresh(s: Session) -> bool:
    pr = s.prompts
    if pr.empty():
        return pr.result is None
    return (pr.result is not None and s.slot is not None and pr.image_key == s.model_input.key
            and pr.engine_key == s.slot.engine_key)


def _refresh_prompts(s: Session, engines, view: dict, *, allow_slow: bool) -> bool:
    """Give the predictor the current image and re-answer the current prompts.

    With ``allow_slow=False`` (the first half of an upload, a preprocessing
    change or an engine switch) this is skipped for SAM and MedSAM, whose image
    encoders take seconds: the chained :func:`prepare_prompts` does it once the
    other panels are shown (a click in the meantime waits for it: ``ui.busy``).
    Returns True when the prompt panel is up to date.
    """
    from bt_demo.models.registry import SLOW_IMAGE_ENGINES

    slot = _ensure_slot(s, engines)
    if not allow_slow and slot.engine_key in SLOW_IMAGE_ENGINES and slot.image_key != s.model_input.key:
        if s.prompts.result is not None and s.prompts.image_key != s.model_input.key:
            s.prompts = replace(s.prompts, result=None, image_key=None, engine_key=None)
        return False
    slot.ensure_image(s.model_input)
    if not _prompts_fresh(s):
        s.prompts = _predict(s, s.prompts, view)
    return True


def _model_input(s: Session):
    """What the learned engines get: the slice through the brain crop only, or the lab's output on request."""
    from bt_demo.image.preprocess import model_steps, run_pipeline

    spec = model_steps(s.processed.steps, lab_output=s.models_see_lab)
    return s.processed if spec == s.processed.steps else run_pipeline(s.unit, steps=spec)


def _recompute(s: Session, engines, *, new_image: bool) -> dict:
    """unit image -> preprocessing -> every automatic panel (+ prompts when cheap). Returns the full view."""
    from bt_demo.image.preprocess import run_pipeline

    t0 = time.perf_counter()
    s.unit = s.slice.unit(s.window)
    s.notices = _notices(s)
    s.processed = run_pipeline(s.unit, steps=_pipeline(s))
    s.model_input = _model_input(s)
    s.display_factor = views.display_factor(s.slice.shape)
    if new_image:
        s.prompts, s.history, s.box_anchor = PromptState(), (), None
    if s.sweep_key != s.processed.key:
        s.sweep, s.sweep_key = None, None
    view: dict = {}
    # the U-Net and the classifier feed only hidden tabs when Prompts is on screen: they run in the
    # chained after_new_image (or when such a tab opens), after the visible panels are shown
    models_now = any(tabs.shown(s, t) for t in MODEL_TABS)
    t1 = time.perf_counter()
    if models_now:
        _run_unet(s, engines, rerun=False)
    t2 = time.perf_counter()
    _run_kmeans(s)  # the histogram marks the cluster boundaries
    t3 = time.perf_counter()
    if models_now:
        _run_classifier(s, engines)
    t4 = time.perf_counter()
    ready = _refresh_prompts(s, engines, view, allow_slow=False)
    t5 = time.perf_counter()
    view.update(views.preprocessing_view(s))
    tabs.draw(s, view, "prompts")
    if not ready and tabs.shown(s, "prompts"):
        view["prompt_info"] = _preparing_text(s)
    # hidden tabs are drawn when opened
    tabs.draw(s, view, "compare", "measure", "kmeans", "classifier", "uncertainty", "export")
    view.update(views.intensity_view(s))
    view["export_files"] = None
    t6 = time.perf_counter()
    view["_timings"] = {"preprocess": t1 - t0, "unet": t2 - t1, "kmeans": t3 - t2, "classifier": t4 - t3,
                        "prompts": t5 - t4, "render": t6 - t5, "total": t6 - t0}
    return view


MODEL_TABS = ("compare", "measure", "uncertainty", "export", "classifier")


def _preparing_text(s: Session) -> str:
    """What the prompt panel says while a slow engine computes its image embedding (off the click path)."""
    name = s.slot.name if s.slot is not None else "the prompt engine"
    return (f"Preparing {name} for this image (its image encoder takes a few seconds on a CPU)… "
            "Clicks and boxes given now are answered as soon as it is ready.")


def _ensure_models(s: Session, engines) -> None:
    """The U-Net and classifier results for the current image (each cached by the processed image's key)."""
    if engines is not None and s.loaded:
        if s.unet_result is None or s.unet_prob_key != s.model_input.key:
            _run_unet(s, engines, rerun=False)
        _run_classifier(s, engines)


def _prompt_and_compare(s: Session, view: dict | None = None) -> dict:
    view = {} if view is None else view
    return tabs.draw(s, view, "prompts", "compare", "measure", "export")


# ---------------------------------------------------------------------------
# 1. the slice
# ---------------------------------------------------------------------------
def _load(source, selectors: dict):
    from bt_demo.io import load_slice

    return load_slice(source, **selectors)


def _adopt_upload(s: Session, path) -> str:
    """The upload, moved out of Gradio's cache into this session's private folder (named ``upload_N``, never
    the uploaded name): the cached copy could be fetched by anyone holding its path, and outlived the session.
    Files outside Gradio's cache (examples, tests, the API with a local path) are read where they are."""
    import shutil

    from bt_demo.ui.scratch import in_gradio_cache

    if not path or not in_gradio_cache(path) or not os.path.isfile(path) or _is_example(path):
        return path
    dst = os.path.join(s.ensure_workdir(), f"upload_{time.monotonic_ns()}")
    try:
        shutil.move(path, dst)
    except OSError:
        return path
    parent = os.path.dirname(path)
    try:
        os.rmdir(parent)  # Gradio keeps each upload in a folder of its own (named by a hash)
    except OSError:
        pass
    return dst


def _is_example(path) -> bool:
    """A bundled example (synthetic, shared by every session): Gradio serves it again, so it stays."""
    from bt_demo.ui.layout import EXAMPLES_DIR

    ex = EXAMPLES_DIR / os.path.basename(str(path))
    try:
        return ex.is_file() and ex.stat().st_size == os.path.getsize(path) and ex.read_bytes() == open(path, "rb").read()
    except OSError:
        return False


def _forget_upload(s: Session, path) -> None:
    """Delete a file this session adopted (an upload in its private folder); anything else is left alone."""
    if s.workdir and path and os.path.dirname(str(path)) == s.workdir and os.path.basename(str(path)).startswith("upload_"):
        try:
            os.remove(path)
        except OSError:
            pass


@_handler("reading the file", heavy=True)
def load_file(s: Session, engines, path) -> dict:
    """A new upload (or example): read it, reset prompts, compute every panel.

    path: the server-side path Gradio gives for the upload (``gr.File(type="filepath")``),
    or None when the file box was cleared (nothing changes then).
    On an unreadable file the previous slice stays and the status line says why.
    """
    view: dict = {}
    if path is None or (isinstance(path, (list, tuple)) and not path):
        return view
    if isinstance(path, (list, tuple)):
        path = path[0]
    path = _adopt_upload(s, getattr(path, "name", path))
    try:
        sl = _load(path, {})
    except InputError as exc:
        _forget_upload(s, path)
        keep = " The previous image is still shown." if s.loaded else ""
        view["status"] = f"⚠️ **This file could not be opened:** {esc(str(exc).rstrip('.'))}.{keep}"
        view["upload"] = None  # the upload box must not keep showing the refused file's name
        notify(view, str(exc))
        return view
    view.update(adopt_slice(s, engines, sl, str(path)))
    return view


def adopt_slice(s: Session, engines, sl, path: str | None) -> dict:
    """Make ``sl`` the session's slice (an upload read from ``path``, or a generated one with None):
    prompts reset, every panel recomputed."""
    if s.source_path and s.source_path != path:
        _forget_upload(s, s.source_path)
    s.slice, s.source_path, s.selectors = sl, path, {}
    s.window = tuple(sl.window)
    view = _recompute(s, engines, new_image=True)
    view.update(views.slice_view(s))
    return view


@_handler("changing the slice", heavy=True)
def select_index(s: Session, engines, page=None, frame=None, slice_=None, volume=None, channel=None) -> dict:
    """Slice/page/frame/volume sliders (1-based, as shown) and the channel choice.

    Only the axes the loaded file has are used. The display window is kept
    (so scrolling through a volume does not change brightness); prompts are cleared.
    """
    _need_slice(s)
    given = {"page": page, "frame": frame, "slice": slice_, "volume": volume}
    arg = {"page": "page", "frame": "frame", "slice": "slice_index", "volume": "volume"}
    selectors = {}
    for axis, (chosen, count) in s.slice.index.items():
        if axis == "channel":
            ch = -1 if channel is None else int(channel)
            selectors["channel"] = None if ch < 0 else ch
        elif given.get(axis) is not None:
            v = int(round(float(given[axis]))) - 1
            selectors[arg[axis]] = min(max(v, 0), count - 1)
    sl = _load(s.source_path, selectors)
    s.slice, s.selectors = sl, selectors
    view = _recompute(s, engines, new_image=True)
    view.update(views.slice_view(s))
    return view


@_handler("changing the window", heavy=True)
def set_window(s: Session, engines, center, width) -> dict:
    """Window/level (centre, width in the file's units); prompts are kept and re-answered."""
    _need_slice(s)
    try:
        c, w = float(center), float(width)
    except (TypeError, ValueError):
        raise InputError("window centre and width must be numbers") from None
    if not (math.isfinite(c) and math.isfinite(w)) or w <= 0:
        raise InputError(f"window width must be above 0 (got {width})")
    s.window = (c, w)
    return _recompute(s, engines, new_image=False)


@_handler("setting the pixel spacing")
def set_spacing(s: Session, spacing_mm) -> dict:
    """Pixel spacing in mm typed by the user; used only when the file gives none. Empty/0 clears it."""
    v = None
    if spacing_mm not in (None, ""):
        v = float(spacing_mm)
        if not math.isfinite(v) or v < 0 or v > 100:
            raise InputError(f"pixel spacing must be between 0 and 100 mm, got {spacing_mm}")
        v = v or None
    s.spacing_mm = v
    if not s.loaded:
        return {}
    view = {"status": views.slice_info(s)}
    view.update(_prompt_and_compare(s))
    view.update(views.unet_view(s))
    view.update(views.kmeans_view(s))
    return view


# ---------------------------------------------------------------------------
# 2. preprocessing
# ---------------------------------------------------------------------------
def control_keys(steps) -> list[tuple]:
    """The order of the preprocessing controls ``layout`` builds from the registry.

    ``("enable", step)`` for each step's checkbox, then ``("param", step, param)``
    for each of its parameters. :func:`spec_from_controls` reads values in this order.
    """
    keys = []
    for name, step in steps.items():
        keys.append(("enable", name))
        for p in step.params:
            keys.append(("param", name, p.name))
    return keys


def spec_from_controls(steps, keys: Sequence[tuple], values: Sequence) -> list[tuple[str, dict]]:
    """Checkbox and parameter values -> the pipeline spec ``[(step, params), ...]`` in registry order."""
    if len(keys) != len(values):
        raise ValueError(f"{len(values)} control values for {len(keys)} controls")
    enabled, params = set(), {}
    for key, value in zip(keys, values):
        if key[0] == "enable":
            if value:
                enabled.add(key[1])
        else:
            _, step, pname = key
            params.setdefault(step, {})[pname] = value
    spec = []
    for name, step in steps.items():
        if name in enabled:
            pv = {}
            for p in step.params:
                v = params.get(name, {}).get(p.name, p.default)
                if p.kind == "int" and v is not None:
                    v = int(round(float(v)))
                elif p.kind == "float" and v is not None:
                    v = float(v)
                elif p.kind == "bool":
                    v = bool(v)
                pv[p.name] = v
            spec.append((name, pv))
    return spec


@_handler("applying the preprocessing", heavy=True)
def set_preprocessing(s: Session, engines, spec: Sequence[tuple[str, dict]]) -> dict:
    """A new pipeline spec (from the step checkboxes and parameter controls); every panel is recomputed.

    Parameters are checked with ``bt_demo.preprocess.validate_params``; a bad
    value is a warning and the previous pipeline stays.
    """
    from bt_demo.image.preprocess import STEPS, validate_params

    clean = []
    for name, params in spec:
        if name not in STEPS:
            raise InputError(f"unknown preprocessing step {name!r}; choose one of {', '.join(STEPS)}")
        checked = validate_params(name, dict(params))
        clean.append((name, dict(checked if isinstance(checked, dict) else params)))
    s.pipeline = clean
    if not s.loaded:
        return {}
    return _recompute(s, engines, new_image=False)


@_handler("changing what the models see", heavy=True)
def set_models_see_lab(s: Session, engines, on: bool) -> dict:
    """Feed the lab's output to the U-Net, the prompt engine and the classifier (on) or the slice they were
    trained on, through the brain crop only (off, the default); every panel is recomputed."""
    s.models_see_lab = bool(on)
    if not s.loaded:
        return {}
    return _recompute(s, engines, new_image=False)


# ---------------------------------------------------------------------------
# 3. prompts
# ---------------------------------------------------------------------------
@_handler("preparing the prompt engine", heavy=True)
def prepare_prompts(s: Session, engines) -> dict:
    """Chained after an upload / preprocessing change: ``set_image`` (slow for SAM), then re-answer the prompts."""
    if not s.loaded:
        return {}
    _ensure_models(s, engines)
    if s.slot is not None and s.slot.image_key == s.model_input.key and _prompts_fresh(s):
        return {}  # the first half already answered (every engine but SAM): nothing to redraw
    view: dict = {}
    _refresh_prompts(s, engines, view, allow_slow=True)
    return _prompt_and_compare(s, view)


def _push(s: Session, new: PromptState) -> None:
    s.history = (s.history + (s.prompts,))[-MAX_HISTORY:]
    s.prompts = new


@_handler("answering the click", heavy=True)
def click(s: Session, engines, index_xy, mode: str = "positive") -> dict:
    """A click on the prompt image. ``index_xy``: ``SelectData.index`` ``[x, y]`` in displayed pixels.

    mode: "positive" (tumour), "negative" (not tumour) or "box" (first click
    = one corner, second click = the opposite corner).
    """
    _need_slice(s)
    if index_xy is None:
        raise InputError("that click was outside the image; click on the image")
    x, y = display_to_original(index_xy, s.display_factor, s.slice.shape)
    _ensure_slot(s, engines)
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
    new = _predict(s, new, view)
    _push(s, new)
    return _prompt_and_compare(s, view)


@_handler("setting the box", heavy=True)
def set_box(s: Session, engines, x0, y0, x1, y1) -> dict:
    """A box typed as numbers (original pixels, corners in any order)."""
    _need_slice(s)
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
    _ensure_slot(s, engines)
    view: dict = {}
    s.box_anchor = None
    _push(s, _predict(s, replace(s.prompts, box=bx), view))
    return _prompt_and_compare(s, view)


@_handler("undoing the last prompt")
def undo(s: Session, engines) -> dict:
    """Remove the last point or box (a half-drawn box first)."""
    view: dict = {}
    if s.box_anchor is not None:
        s.box_anchor = None
    elif s.history:
        s.prompts, s.history = s.history[-1], s.history[:-1]
        if s.loaded and not _prompts_fresh(s):
            _ensure_slot(s, engines)
            s.prompts = _predict(s, s.prompts, view)
    else:
        notify(view, "nothing to undo", level="info")
        return view
    if not s.loaded:
        return view
    return _prompt_and_compare(s, view)


@_handler("clearing the prompts")
def clear(s: Session, engines=None) -> dict:
    """Remove every point, the box and the prompted mask."""
    s.prompts, s.history, s.box_anchor = PromptState(), (), None
    if not s.loaded:
        return {}
    return _prompt_and_compare(s)


@_handler("switching the prompt engine", heavy=True)
def switch_engine(s: Session, engines, key: str) -> dict:
    """Use another promptable engine (a key of ``PROMPT_ENGINES``); the current prompts are re-answered.

    An unavailable engine is a warning saying why; the engine in use stays (and the chooser shows it again).
    """
    from bt_demo.models.registry import PROMPT_ENGINES

    if key not in PROMPT_ENGINES:
        raise InputError(f"unknown engine {key!r}; choose one of {', '.join(PROMPT_ENGINES)}")
    slot = _new_slot(engines, key, wait=False)
    view: dict = {}
    if slot.predictor is None:
        notify(view, slot.reason)
        current = s.slot.engine_key if s.slot is not None else None
        view["engine"] = current
        return view
    s.slot = slot
    if not s.loaded:
        return views.prompt_view_engine(s)
    if not _refresh_prompts(s, engines, view, allow_slow=False):  # MedSAM / SAM: the chained prepare_prompts
        out = _prompt_and_compare(s, view)
        out["prompt_info"] = _preparing_text(s)
        return out
    return _prompt_and_compare(s, view)


@_handler("choosing a candidate mask")
def pick_candidate(s: Session, index) -> dict:
    """Pick one of SAM's candidate masks (0-based index into ``SegResult.candidates``)."""
    res = s.prompts.result
    if res is None or not res.candidates:
        raise InputError("there are no candidate masks to choose from (SAM gives three after a single click)")
    if index is None:
        return {}
    s.prompts = replace(s.prompts, result=res.with_choice(int(index)))
    return _prompt_and_compare(s)


@_handler("changing the opacity")
def set_opacity(s: Session, alpha) -> dict:
    a = float(alpha)
    if not 0.0 <= a <= 1.0:
        raise InputError(f"opacity must be between 0 and 1, got {alpha}")
    s.opacity = a
    if not s.loaded:
        return {}
    return _prompt_and_compare(s)


# ---------------------------------------------------------------------------
# 4. U-Net threshold, K-Means
# ---------------------------------------------------------------------------
@_handler("re-thresholding the U-Net mask")
def set_threshold(s: Session, engines, threshold) -> dict:
    """Re-threshold the cached U-Net probability map (the network does not run again)."""
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise InputError(f"threshold must be between 0 and 1, got {threshold}")
    s.unet_threshold = t
    if not s.loaded:
        return {}
    _run_unet(s, engines, rerun=False)
    view = views.unet_view(s)
    view.update(views.compare_view(s))
    view.update(views.uncertainty_view(s))
    return view


@_handler("re-clustering", heavy=True)
def set_k(s: Session, k) -> dict:
    """Number of K-Means clusters, 2..12."""
    kk = int(round(float(k)))
    if not K_RANGE[0] <= kk <= K_RANGE[1]:
        raise InputError(f"K must be between {K_RANGE[0]} and {K_RANGE[1]}, got {k}")
    s.kmeans_k = kk
    if not s.loaded:
        return {}
    _run_kmeans(s)
    view = views.kmeans_view(s)
    view.update(views.compare_view(s))
    view.update(views.intensity_view(s))  # the cluster boundaries on the histogram
    return view


@_handler("scoring K = 2…12", heavy=True)
def run_sweep(s: Session) -> dict:
    """The K-selection curves for this processed slice (1-3 s; cached until the image changes)."""
    from bt_demo.studies import clustering

    _need_slice(s)
    if s.sweep is None or s.sweep_key != s.processed.key:
        s.sweep = clustering.k_sweep(s.processed.image, mask=s.processed.brain_mask)
        s.sweep_key = s.processed.key
    return views.sweep_view(s)


# ---------------------------------------------------------------------------
# 5. classifier
# ---------------------------------------------------------------------------
@_handler("computing the heat map")
def show_gradcam(s: Session, engines, class_name) -> dict:
    """Grad-CAM of one head's class: ``class_name`` is 'presence:tumour' or 'type:<tumour type>'."""
    _need_slice(s)
    clf, reason = _engine_or_reason(engines.classifier())
    if clf is None:
        raise InputError(reason)
    choices = gradcam_choices(clf.type_names)
    if class_name and class_name not in {v for _, v in choices}:
        raise InputError(f"unknown heat map {class_name!r}; choose one of {', '.join(v for _, v in choices)}")
    if s.classification is None or s.classification_key != s.model_input.key:
        _run_classifier(s, engines)
    s.gradcam_class = class_name or None
    _run_gradcam(s, clf)
    return views.classifier_view(s)


# ---------------------------------------------------------------------------
# 6. export and corrections
# ---------------------------------------------------------------------------
MASK_CHOICES = dict(views.MASK_KEYS)  # chooser key -> mask name: prompted, U-Net, K-Means, the classical ones


def _chosen_mask(s: Session, which: str) -> np.ndarray:
    if which not in MASK_CHOICES:
        raise InputError(f"choose which mask to export: {', '.join(MASK_CHOICES)}")
    name = MASK_CHOICES[which]
    if which in views.CLASSICAL_NAMES:
        _run_classical(s, [which])
    mask = views.mask_by_key(s, which)
    if mask is None:
        hint = "click on the tumour first" if which == "prompted" else "it is unavailable for this slice"
        raise InputError(f"there is no {name} mask to export: {hint}")
    return mask


def _prompts_record(s: Session) -> dict:
    pr = s.prompts
    return {"points_xy": [[round(float(x), 2), round(float(y), 2)] for x, y in pr.points],
            "labels": [int(l) for l in pr.labels],
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
    if s.prompts.result is not None:
        out["prompted"] = {"engine": s.prompts.result.engine, **_scalar_facts(s.prompts.result.extra)}
    if s.kmeans is not None:
        out["kmeans"] = {"k": int(s.kmeans.k)}
    for key, name in views.CLASSICAL_NAMES.items():
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


@_handler("exporting", heavy=True)
def export(s: Session, which: str = "prompted", engines=None) -> dict:
    """Write the chosen mask (PNG + NIfTI) and a JSON report into this session's temporary folder.

    which: a key of :data:`MASK_CHOICES` ("prompted", "unet", "kmeans", "watershed", "chan_vese",
    "geodesic"; a classical mask is computed if needed). It becomes the session's chosen mask (the
    Measure tab follows). The report holds the mask's measurements (area, RANO diameters, centroid,
    box, side) under ``measurement``. File names are random (never the upload's).
    """
    from bt_demo.io import export as bt_export
    from bt_demo.studies import metrics
    from bt_demo.studies.measure import measure

    _need_slice(s)
    _ensure_models(s, engines)  # the report carries the U-Net and classifier results
    if which not in MASK_CHOICES:
        raise InputError(f"choose which mask to export: {', '.join(MASK_CHOICES)}")
    s.chosen_mask = which
    mask = _chosen_mask(s, which)
    masks = views.current_masks(s)
    spacing = s.effective_spacing()
    measured = bt_export.measurement_record(measure(mask, spacing, views.brain_mask_original(s)),
                                            MASK_CHOICES[which])
    report = bt_export.build_report(
        engines=_engines_record(s), preprocessing=_settings_record(s)["preprocessing"],
        prompts=_prompts_record(s),
        metrics={"pairwise": metrics.pairwise_table(masks, spacing),
                 "agreement": views.agreement_summary(masks) if masks else None},
        areas=metrics.area_table(masks, spacing), classifier=_classifier_record(s), spacing=spacing,
        shape=list(s.slice.shape), app_version=APP_VERSION, measurement=measured,
        extra={"exported_mask": MASK_CHOICES[which], "window_center_width": list(s.window),
               "source_format": s.slice.source, "unet_threshold": s.unet_threshold, "kmeans_k": int(s.kmeans_k),
               "nifti_placement": ("on its slice of the source (the source's affine, RAS mm)"
                                   if s.slice.affine is not None else
                                   "pixel spacing only (the source does not place the slice)" if spacing else
                                   "unknown: the source gives no spacing (written as unknown, not 1 mm)")})
    from bt_demo.ui.synthetic_panel import report_record

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
            "export_info": f"{MASK_CHOICES[which]} mask ({n} px; longest diameter {measured['long_diameter']} "
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


def _editor_mask(editor_value, shape: tuple[int, int]) -> np.ndarray | None:
    """The painted layers of a ``gr.ImageEditor`` value (dict with "layers") -> bool mask, or None if unpainted."""
    if not isinstance(editor_value, dict):
        return None
    layers = [np.asarray(l) for l in (editor_value.get("layers") or []) if l is not None]
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


@_handler("preparing the brush editor")
def editor_start(s: Session) -> dict:
    """Put the slice into the image editor, with the prompted mask's outline drawn on it as a guide.

    The user paints the tumour on the editor's layer (painted = alpha > 0,
    in slice pixels), then accepts with source "painted". The outline is part
    of the background, not of the painted mask.
    """
    _need_slice(s)
    bg = render.to_rgb(views.display_gray(s))
    if s.prompts.result is not None and s.prompts.result.mask.any():
        bg = render.draw_contour(bg, s.prompts.result.mask, views.MASK_COLORS[views.PROMPT], 1)
    return {"editor": {"background": bg, "layers": [], "composite": None}}


@_handler("storing the correction", heavy=True)
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
    _ensure_models(s, engines)  # the stored record carries the U-Net's mask
    try:
        return _accept_correction(s, store_root, source, mask_file, editor_value, note, max_records)
    except (InputError, ValueError) as exc:
        view = {"correction_info": f"⚠️ **Not stored:** {esc(str(exc).rstrip('.'))}."}
        notify(view, str(exc))
        return view


def _accept_correction(s: Session, store_root, source, mask_file, editor_value, note, max_records) -> dict:
    from bt_demo.io.corrections import CorrectionStore, note_problem, shared_store

    _need_slice(s)
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
        corrected = _editor_mask(editor_value, shape)
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
# 6b. image studies: intensity histogram, classical segmenters, measurement, uncertainty
# ---------------------------------------------------------------------------
def _run_classical(s: Session, names: Sequence[str]) -> list[str]:
    """Compute the classical segmenters ``names`` whose result is not current; returns those computed.

    They use this session's positive/negative clicks (ORIGINAL pixels, mapped through the processed
    image's geometry by ``run_classical``), else start from the brightest K-Means cluster. A box is
    not used by them.
    """
    from bt_demo.studies.classical_seg import run_classical

    if not s.loaded:
        return []
    done = []
    new = dict(s.classical)  # replaced, never changed in place (see Session.snapshot)
    for name in names:
        key = s.classical_key(name)
        item = new.get(name)
        if item is not None and item[0] == key:
            continue
        res = run_classical(name, s.processed.image, [list(p) for p in s.prompts.points], list(s.prompts.labels),
                            geometry=s.processed.geometry, **s.classical_settings(name))
        new[name] = (key, res)
        done.append(name)
    s.classical = new
    return done


@_handler("running the classical segmenters", heavy=True)
def update_classical(s: Session) -> dict:
    """Chained after anything that changes the image or the clicks: bring the ticked classical
    segmenters (and a classical mask chosen for Measure/Export) up to date, then redraw the
    comparison. Returns ``{}`` when nothing needed computing (so nothing is redrawn)."""
    if not s.loaded:
        return {}
    stale = views.stale_classical(s)
    if not stale:
        return {}
    if not (tabs.shown(s, "compare") or tabs.shown(s, "measure")):
        s.stale = s.stale | {"compare", "measure"}  # computed when one of them is opened (show_tab)
        return {}
    _run_classical(s, stale)
    return views.compare_view(s)


def after_new_image(s: Session, engines) -> tuple[Session, dict]:
    """Chained after an upload or preprocessing change: :func:`prepare_prompts`, then :func:`update_classical`."""
    s, view = prepare_prompts(s, engines)
    s, more = update_classical(s)
    return s, {**view, **more}


@_handler("opening the tab")
def show_tab(s: Session, tab: str, engines=None) -> dict:
    """A tab was opened: draw its panels if they changed while it was hidden (the models' results and the
    ticked classical segmenters, which follow the clicks, are brought up to date first)."""
    if tab in MODEL_TABS:
        _ensure_models(s, engines)
    if tab in ("compare", "measure") and tab in s.stale and s.loaded:
        stale = views.stale_classical(s)
        if stale:
            _run_classical(s, stale)
    return tabs.redraw(s, tab)


def classical_param_keys() -> list[tuple[str, str]]:
    """The order of the classical segmenters' parameter controls ``layout`` builds: ``(segmenter, param)``."""
    from bt_demo.studies.classical_seg import CLASSICAL

    return [(name, p.name) for name, entry in CLASSICAL.items() for p in entry.params]


@_handler("running the classical segmenters", heavy=True)
def set_classical(s: Session, chosen, values: Sequence = ()) -> dict:
    """The "Classical segmenters" choice and their parameter controls.

    chosen: keys of ``bt_demo.classical_seg.CLASSICAL`` to show in the comparison (others are hidden).
    values: the parameter controls' values in :func:`classical_param_keys` order (empty: keep the
    current parameters). A value out of its range is a warning and nothing changes.
    The chosen segmenters run now (watershed ~0.1 s, each snake 0.3–0.7 s on a 256² slice).
    """
    from bt_demo.studies.classical_seg import CLASSICAL, validate_classical_params

    chosen = [c for c in (chosen or [])]
    unknown = [c for c in chosen if c not in CLASSICAL]
    if unknown:
        raise InputError(f"unknown classical segmenter {unknown[0]!r}; choose from {', '.join(CLASSICAL)}")
    params = {name: dict(p) for name, p in s.classical_params.items()}
    if values:
        keys = classical_param_keys()
        if len(values) != len(keys):
            raise ValueError(f"{len(values)} parameter values for {len(keys)} controls")
        given: dict[str, dict] = {}
        for (name, pname), v in zip(keys, values):
            given.setdefault(name, {})[pname] = v
        for name, p in given.items():
            params[name] = validate_classical_params(name, p)
    s.classical_params = params
    s.classical_on = tuple(name for name in CLASSICAL if name in chosen)
    if not s.loaded:
        return {}
    _run_classical(s, views.stale_classical(s))
    return views.compare_view(s)


@_handler("choosing the mask to measure")
def choose_mask(s: Session, which: str) -> dict:
    """The mask the Measure and Export tabs use (a key of :data:`MASK_CHOICES`); a classical one is computed if needed."""
    if which not in MASK_CHOICES:
        raise InputError(f"choose a mask: {', '.join(MASK_CHOICES)}")
    s.chosen_mask = which
    # the files of the previous choice leave the export panel: they are not this mask's
    stale = {"export_files": None, "export_info": ""}
    if not s.loaded:
        return {"measure_which": which, "export_which": which, **stale}
    if which in views.CLASSICAL_NAMES:
        _run_classical(s, [which])
    return views.measure_view(s) | stale


@_handler("drawing the histogram")
def set_histogram_scope(s: Session, scope: str) -> dict:
    """Histogram of the brain only ("brain") or of the whole image ("whole")."""
    if scope not in views.HIST_SCOPES:
        raise InputError(f"choose what the histogram counts: {', '.join(views.HIST_SCOPES)}")
    s.hist_scope = scope
    if not s.loaded:
        return {}
    return views.intensity_view(s)


class _AtThreshold:
    """A U-Net engine seen at this session's threshold (``tta_uncertainty`` reads ``threshold``)."""

    def __init__(self, engine, threshold: float):
        self._engine, self.threshold = engine, float(threshold)

    def probabilities(self, image):
        return self._engine.probabilities(image)


@_handler("computing the uncertainty map", heavy=True)
def run_uncertainty(s: Session, engines, n: int = 8) -> dict:
    """The U-Net's test-time-augmentation uncertainty on this processed slice (on demand: ``n`` passes).

    Cached until the image or the preprocessing changes; moving the threshold re-summarises it
    without running the network again. An unavailable U-Net is a warning saying why.
    """
    from bt_demo.studies.uncertainty import tta_uncertainty

    _need_slice(s)
    _ensure_models(s, engines)
    unet, reason = _engine_or_reason(engines.unet())
    if unet is None:
        s.unet_reason = reason
        view = views.uncertainty_view(s)
        notify(view, f"The uncertainty map needs the U-Net, which is unavailable: {reason}")
        return view
    p = s.model_input
    if s.uncertainty is None or s.uncertainty_key != p.key:
        thr = s.unet_threshold if s.unet_threshold is not None else unet.threshold
        u = tta_uncertainty(_AtThreshold(unet, thr), p.image, n=int(n))
        geo = p.geometry
        u["uncertainty_orig"] = geo.map_to_original(u["uncertainty"], fill=0.0, order=1)
        u["mean_prob_orig"] = geo.map_to_original(u["mean_prob"], fill=0.0, order=1)
        s.uncertainty, s.uncertainty_key = u, p.key
    return views.uncertainty_view(s)


# ---------------------------------------------------------------------------
# 7. engines
# ---------------------------------------------------------------------------
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
