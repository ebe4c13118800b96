"""The recompute path several panels share: the session's slice -> preprocessing -> every automatic panel.

:func:`recompute` runs after an upload, a new slice index, a new window or a preprocessing change: the
U-Net, K-Means and classifier runs (each cached by the processed image's key), and the prompted mask
re-answered when that is cheap. The slow half (SAM's / MedSAM's ``set_image``, the ticked classical
segmenters) is :func:`after_new_image`, chained after those events so the other panels are shown first.
Opening a tab (:func:`show_tab`) brings what it shows up to date. Handlers follow :mod:`bt_demo.ui.kit`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from bt_demo.errors import InputError
from bt_demo.models.classifier import gradcam_choices
from bt_demo.ui import tabs, views, views_slice
from bt_demo.ui.kit import engine_or_reason, handler, notify
from bt_demo.ui.state import PredictorSlot, PromptState, Session

# the tabs that show the U-Net's or the classifier's results
MODEL_TABS = ("compare", "measure", "uncertainty", "export", "classifier")
MASK_CHOICES = dict(views.MASK_KEYS)  # chooser key -> mask name: prompted, U-Net, K-Means, the classical ones


# ---------------------------------------------------------------------------
# the engines' runs (calls into bt_demo; no rendering here)
# ---------------------------------------------------------------------------
def pipeline(s: Session) -> list:
    """The session's preprocessing spec ``[(step, params), ...]`` (the default one until the user changes it)."""
    if s.pipeline is None:
        from bt_demo.image.preprocess import default_pipeline

        s.pipeline = [(name, dict(params)) for name, params in default_pipeline()]
    return s.pipeline


def ensure_slot(s: Session, engines) -> PredictorSlot:
    """This session's predictor; created on first use (or after a deep copy emptied the slot).

    The first available of SAM, the click model, the random walker; SAM is
    not waited for while it is still loading (its first download can take
    minutes), the click model is (it loads in a second or two).
    """
    if s.slot is None:
        from bt_demo.models.registry import FALLBACK_ORDER

        for key in FALLBACK_ORDER:
            slot = new_slot(engines, key, wait=key != "sam")
            if slot.predictor is not None:
                s.slot = slot
                break
    elif s.slot.predictor is None and not s.slot.reason:
        s.slot = new_slot(engines, s.slot.engine_key)
    return s.slot


def new_slot(engines, key: str, wait: bool = True) -> PredictorSlot:
    """A predictor slot for prompt engine ``key`` (empty, with the reason, when it is unavailable)."""
    p = engines.new_predictor(key, wait=wait)
    if isinstance(p, str):
        return PredictorSlot(key, None, p)
    return PredictorSlot(key, p)


def run_unet(s: Session, engines, *, rerun: bool) -> str | None:
    """U-Net mask in original pixels (probabilities cached per model input). Returns the reason if unavailable."""
    unet, reason = engine_or_reason(engines.unet())
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


def run_kmeans(s: Session) -> None:
    """K-Means clusters of the processed slice (cached per image and K) and its tumour candidate in original pixels."""
    from bt_demo.studies import clustering

    p = s.processed
    key = (p.key, int(s.kmeans_k))
    if s.kmeans is None or s.kmeans_key != key:
        s.kmeans = clustering.kmeans_segment(p.image, int(s.kmeans_k), mask=p.brain_mask)
        s.kmeans_key = key
        s.kmeans_mask = p.geometry.map_to_original(np.asarray(clustering.tumour_candidate(s.kmeans), bool),
                                                   fill=False)


def run_classifier(s: Session, engines) -> str | None:
    """The classifier's probabilities and heat map (cached per model input). Returns the reason if unavailable."""
    clf, reason = engine_or_reason(engines.classifier())
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
        run_gradcam(s, clf)
    return None


def run_heads(s: Session, engines) -> bool:
    """The LiteMedSAM-encoder heads on the model input (one encoder run per slice, shared with MedSAM's prompts;
    seconds on a CPU, so only from chained steps, never on the upload's or the click's path). True when the
    classifier tab's heads panel changed."""
    heads, reason = engine_or_reason(engines.encoder_heads())
    if heads is None:
        changed = s.heads_reason != reason
        s.heads, s.heads_key, s.heads_reason = None, None, reason
        return changed
    p = s.model_input
    if s.heads_key == p.key and s.heads is not None:
        return False
    s.heads = heads.classify(p.image, key=p.key, notices=s.notices)
    s.heads_key, s.heads_reason = p.key, None
    return True


@handler("running the classifier heads on the pretrained encoder")  # light: waits for the upload's chain
def fill_heads(s: Session, engines) -> dict:
    """Chained after the Classifier tab opens: the encoder heads, then their panel (nothing when unchanged)."""
    if not s.loaded or not tabs.shown(s, "classifier"):
        return {}
    return views.heads_view(s) if run_heads(s, engines) else {}


# the tabs that show the automatic (U-Net) mask; its refined outline is computed when one of them is open
REFINED_TABS = ("compare", "measure")


def run_refined(s: Session, engines) -> bool:
    """The U-Net's outline redrawn by the decoder on LiteMedSAM's encoder (the encoder run is shared with MedSAM
    and the classifier heads; seconds on a CPU the first time, so only from chained steps and exports).
    True when the automatic mask's panels changed."""
    ref, reason = engine_or_reason(engines.refiner())
    if ref is None:
        changed = s.refined_reason != reason
        s.refined, s.refined_key, s.refined_reason = None, None, reason
        return changed
    p = s.model_input
    if s.refined_key == p.key and s.refined is not None:
        return False
    from bt_demo.image.preprocess import run_pipeline
    from bt_demo.models.medsam_seg import RefineResult

    # the decoder reads the slice as loaded, whatever the lab does: it was trained on whole slices, and through
    # the brain crop its validation Dice fell by 0.060 (python -m train lab-robustness --refined). The U-Net,
    # which gates it, keeps the model input; without steps the two share one encoder run with MedSAM and the heads
    src = p if not p.steps else run_pipeline(s.unit, steps=[])
    r = ref.refine(src.image, key=src.key)
    s.refined = RefineResult(src.geometry.map_to_original(np.asarray(r.mask, bool), fill=False), r.seconds,
                             r.encoder_ran, ref.card_line)
    s.refined_key, s.refined_reason = p.key, None
    return True


@handler("refining the U-Net's outline on the pretrained encoder")  # light: waits for the upload's chain
def fill_refined(s: Session, engines) -> dict:
    """Chained after the Compare or Measure tab opens (and after a new image while one is open): the refined
    automatic mask, then the panels that show it (nothing when unchanged)."""
    if not s.loaded or not any(tabs.shown(s, t) for t in REFINED_TABS):
        return {}
    ensure_models(s, engines)
    if not run_refined(s, engines):
        return {}
    return tabs.draw(s, {}, "compare", "measure")


def run_gradcam(s: Session, clf) -> None:
    """The heat map of the session's chosen class, in original pixels."""
    from bt_demo.models.classifier import parse_gradcam_choice

    p = s.model_input
    head, cls = parse_gradcam_choice(s.gradcam_class)
    heat = clf.gradcam(p.image, head, cls)
    s.gradcam = p.geometry.map_to_original(np.asarray(heat, np.float32), fill=0.0, order=1)


def ensure_models(s: Session, engines) -> None:
    """The U-Net and classifier results for the current image (each cached by the processed image's key)."""
    if engines is not None and s.loaded:
        if s.unet_result is None or s.unet_prob_key != s.model_input.key:
            run_unet(s, engines, rerun=False)
        run_classifier(s, engines)


def run_classical(s: Session, names: Sequence[str]) -> list[str]:
    """Compute the classical segmenters ``names`` whose result is not current; returns those computed.

    They use this session's positive/negative clicks (ORIGINAL pixels, mapped through the processed
    image's geometry by ``run_classical``), else start from the brightest K-Means cluster. A box is
    not used by them.
    """
    from bt_demo.studies.classical_seg import run_classical as run

    if not s.loaded:
        return []
    done = []
    new = dict(s.classical)  # replaced, never changed in place (see Session.snapshot)
    for name in names:
        key = s.classical_key(name)
        item = new.get(name)
        if item is not None and item[0] == key:
            continue
        res = run(name, s.processed.image, [list(p) for p in s.prompts.points], list(s.prompts.labels),
                  geometry=s.processed.geometry, **s.classical_settings(name))
        new[name] = (key, res)
        done.append(name)
    s.classical = new
    return done


def chosen_mask(s: Session, which: str) -> np.ndarray:
    """The mask ``which`` (a key of :data:`MASK_CHOICES`) in original pixels; a classical one is computed if needed."""
    if which not in MASK_CHOICES:
        raise InputError(f"choose which mask to export: {', '.join(MASK_CHOICES)}")
    name = MASK_CHOICES[which]
    if which in views.CLASSICAL_NAMES:
        run_classical(s, [which])
    mask = views.mask_by_key(s, which)
    if mask is None:
        hint = "click on the tumour first" if which == "prompted" else "it is unavailable for this slice"
        raise InputError(f"there is no {name} mask to export: {hint}")
    return mask


# ---------------------------------------------------------------------------
# the prompted mask
# ---------------------------------------------------------------------------
def predict(s: Session, prompts: PromptState, view: dict) -> PromptState:
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


def prompts_fresh(s: Session) -> bool:
    """Does the prompted mask answer the current prompts on the current image with the current engine?"""
    pr = s.prompts
    if pr.empty():
        return pr.result is None
    return (pr.result is not None and s.slot is not None and pr.image_key == s.model_input.key
            and pr.engine_key == s.slot.engine_key)


def refresh_prompts(s: Session, engines, view: dict, *, allow_slow: bool) -> bool:
    """Give the predictor the current image and re-answer the current prompts.

    With ``allow_slow=False`` (the first half of an upload, a preprocessing
    change or an engine switch) this is skipped for SAM and MedSAM, whose image
    encoders take seconds: the chained :func:`prepare_prompts` does it once the
    other panels are shown (a click in the meantime waits for it: ``ui.busy``).
    Returns True when the prompt panel is up to date.
    """
    from bt_demo.models.registry import SLOW_IMAGE_ENGINES

    slot = ensure_slot(s, engines)
    if not allow_slow and slot.engine_key in SLOW_IMAGE_ENGINES and slot.image_key != s.model_input.key:
        if s.prompts.result is not None and s.prompts.image_key != s.model_input.key:
            s.prompts = replace(s.prompts, result=None, image_key=None, engine_key=None)
        return False
    slot.ensure_image(s.model_input)
    if not prompts_fresh(s):
        s.prompts = predict(s, s.prompts, view)
    return True


def preparing_text(s: Session) -> str:
    """What the prompt panel says while a slow engine computes its image embedding (off the click path)."""
    name = s.slot.name if s.slot is not None else "the prompt engine"
    return (f"Preparing {name} for this image (its image encoder takes a few seconds on a CPU)… "
            "Clicks and boxes given now are answered as soon as it is ready.")


def prompt_and_compare(s: Session, view: dict | None = None) -> dict:
    """``view`` with the panels that follow the prompted mask: Prompts, Compare, Measure, Export (shown ones)."""
    view = {} if view is None else view
    return tabs.draw(s, view, "prompts", "compare", "measure", "export")


# ---------------------------------------------------------------------------
# the recompute path
# ---------------------------------------------------------------------------
def _notices(s: Session) -> tuple[str, ...]:
    """Why the slice is unlike the training data: what its file says, then what its pixels look like."""
    from bt_demo.image import domain, looks_like_brain

    return domain.notices(s.slice.metadata) + looks_like_brain.notices(s.unit)


def _model_input(s: Session):
    """What the learned engines get: the slice through the brain crop only, or the lab's output on request."""
    from bt_demo.image.preprocess import model_steps, run_pipeline

    spec = model_steps(s.processed.steps, lab_output=s.models_see_lab)
    return s.processed if spec == s.processed.steps else run_pipeline(s.unit, steps=spec)


def recompute(s: Session, engines, *, new_image: bool) -> dict:
    """unit image -> preprocessing -> every automatic panel (+ prompts when cheap). Returns the full view."""
    from bt_demo.image.preprocess import run_pipeline

    t0 = time.perf_counter()
    s.unit = s.slice.unit(s.window)
    s.notices = _notices(s)
    s.processed = run_pipeline(s.unit, steps=pipeline(s))
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
        run_unet(s, engines, rerun=False)
    t2 = time.perf_counter()
    run_kmeans(s)  # the histogram marks the cluster boundaries
    t3 = time.perf_counter()
    if models_now:
        run_classifier(s, engines)
    t4 = time.perf_counter()
    ready = refresh_prompts(s, engines, view, allow_slow=False)
    t5 = time.perf_counter()
    view.update(views_slice.preprocessing_view(s))
    tabs.draw(s, view, "prompts")
    if not ready and tabs.shown(s, "prompts"):
        view["prompt_info"] = preparing_text(s)
    # hidden tabs are drawn when opened
    tabs.draw(s, view, "compare", "measure", "kmeans", "classifier", "uncertainty", "export")
    view.update(views_slice.intensity_view(s))
    view["export_files"] = None
    t6 = time.perf_counter()
    view["_timings"] = {"preprocess": t1 - t0, "unet": t2 - t1, "kmeans": t3 - t2, "classifier": t4 - t3,
                        "prompts": t5 - t4, "render": t6 - t5, "total": t6 - t0}
    return view


# ---------------------------------------------------------------------------
# chained after a new image, and on opening a tab
# ---------------------------------------------------------------------------
@handler("preparing the prompt engine", heavy=True)
def prepare_prompts(s: Session, engines) -> dict:
    """Chained after an upload / preprocessing change: ``set_image`` (slow for SAM), then re-answer the prompts."""
    if not s.loaded:
        return {}
    ensure_models(s, engines)
    if s.slot is not None and s.slot.image_key == s.model_input.key and prompts_fresh(s):
        return {}  # the first half already answered (every engine but SAM): nothing to redraw
    view: dict = {}
    refresh_prompts(s, engines, view, allow_slow=True)
    return prompt_and_compare(s, view)


@handler("running the classical segmenters", heavy=True)
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
    run_classical(s, stale)
    return views.compare_view(s)


def after_new_image(s: Session, engines) -> tuple[Session, dict]:
    """Chained after an upload or preprocessing change: :func:`prepare_prompts`, then :func:`update_classical`."""
    s, view = prepare_prompts(s, engines)
    s, more = update_classical(s)
    if s.loaded and tabs.shown(s, "classifier"):  # the Classifier tab is open: its encoder heads, now
        s, heads = fill_heads(s, engines)
        more = {**more, **heads}
    if s.loaded and any(tabs.shown(s, t) for t in REFINED_TABS):  # the automatic mask is on screen: refine it
        s, refined = fill_refined(s, engines)
        more = {**more, **refined}
    return s, {**view, **more}


@handler("opening the tab")
def show_tab(s: Session, tab: str, engines=None) -> dict:
    """A tab was opened: draw its panels if they changed while it was hidden (the models' results and the
    ticked classical segmenters, which follow the clicks, are brought up to date first)."""
    if tab in MODEL_TABS:
        ensure_models(s, engines)
    if tab in ("compare", "measure") and tab in s.stale and s.loaded:
        stale = views.stale_classical(s)
        if stale:
            run_classical(s, stale)
    return tabs.redraw(s, tab)
