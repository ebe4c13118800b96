"""Per-session state of the demo: one :class:`Session` per browser tab, kept in ``gr.State``.

Everything a session has computed lives here, never in module globals. The
process-wide :class:`~bt_demo.models.registry.Engines` (shared, read-only
model cache) is *not* part of the session; the session only holds its own
promptable predictor (which holds this session's image) in a
:class:`PredictorSlot`.

Coordinates: every point, box and mask stored here is in the pixels of the
ORIGINAL slice (``(x, y)`` = (column, row) for points; ``(H, W)`` masks), except
where a field says "processed pixels".

``gr.State`` deep-copies its initial value once per new session; a
``Session`` deep-copies into one with the same (shared, read-only) content,
its own lock and an empty predictor slot, so a shared torch model is never
copied. ``Session`` is deliberately not a dataclass: ``gr.State`` would
try to ``dataclasses.asdict`` it for the page config. Handlers mutate
the session in place while holding ``session.lock``, and restore a snapshot
when they fail (see :meth:`Session.snapshot` / :meth:`Session.restore`), so two
events of one tab never lose each other's updates and a failed event leaves
the session as it was.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class PredictorSlot:
    """This session's promptable predictor and the image it currently holds.

    ``engine_key`` is one of ``bt_demo.models.registry.PROMPT_ENGINES``;
    ``predictor`` the object from ``Engines.new_predictor`` (or None when that
    engine is unavailable: ``reason`` says why); ``image_key`` the
    ``Processed.key`` last given to ``set_image`` (None: no image yet).
    The slot is mutated only together with the predictor, so the two never
    disagree, even when a handler fails half-way.
    """

    def __init__(self, engine_key: str, predictor: Any = None, reason: str = ""):
        self.engine_key = engine_key
        self.predictor = predictor
        self.reason = reason
        self.image_key: str | None = None

    @property
    def name(self) -> str:
        return str(getattr(self.predictor, "name", self.engine_key))

    def ensure_image(self, processed) -> bool:
        """``set_image`` the processed image unless the predictor already holds it. True when it ran."""
        if self.predictor is None or processed is None:
            return False
        if self.image_key == processed.key:
            return False
        self.image_key = None
        self.predictor.set_image(processed.image, processed.geometry, key=processed.key)
        self.image_key = processed.key
        return True

    def __deepcopy__(self, memo):  # never copy a model: a copy is an empty slot for the same engine
        return PredictorSlot(self.engine_key, None, self.reason)


@dataclass
class PromptState:
    """Prompts in ORIGINAL slice pixels and the prompted result they produced."""

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    result: Any = None  # SegResult | None
    image_key: str | None = None   # Processed.key the result was computed on
    engine_key: str | None = None  # engine that computed it

    def empty(self) -> bool:
        return not self.points and self.box is None


class Session:
    """What one browser tab has loaded and computed.

    Attributes (all optional until a file is loaded):
        slice: the loaded :class:`bt_demo.imaging.Slice`.
        source_path: the server-side temporary copy of the upload (Gradio's
            cache); used only to re-read another slice/frame of the same file,
            never shown, exported or stored.
        selectors: the chosen indices passed to ``load_slice`` (page, frame,
            slice_index, volume, channel).
        window: (center, width) used for display and for the unit image.
        spacing_mm: pixel spacing typed by the user, used when the file gives none.
        unit: ``slice.unit(window)``, float32 (H, W) in [0, 1], original pixels.
        pipeline: the preprocessing spec, ``[(step name, params), ...]``; None until first
            needed, then ``bt_demo.preprocess.default_pipeline()``.
        processed: ``bt_demo.preprocess.Processed`` of ``unit`` (processed pixels).
        model_input: the ``Processed`` the learned engines get: ``unit`` through
            ``bt_demo.preprocess.model_steps`` (the brain crop only, unless ``models_see_lab``);
            the same object as ``processed`` when the two specs agree.
        models_see_lab: the user asked the models to see the lab's output (default False).
        slot: this session's :class:`PredictorSlot`.
        prompts: current :class:`PromptState`; history: the states before each
            prompt action (for "undo"); box_anchor: first corner of a box being clicked.
        display_factor: integer upscale of the clickable image (display px per original px).
        unet_prob: U-Net probability map in PROCESSED pixels (cached for the threshold slider),
            unet_prob_key: the ``Processed.key`` it belongs to; unet_threshold; unet_result (SegResult);
            unet_reason: why there is no U-Net (None when there is one).
        kmeans_k, kmeans (KMeansResult, processed pixels), kmeans_key, kmeans_mask (original),
            sweep (KSweep or None) and sweep_key.
        classification (ClassResult), classifier_reason, gradcam_class, gradcam (original pixels, float32).
        heads (HeadsResult of the LiteMedSAM-encoder heads), heads_key, heads_reason.
        refined: the U-Net's outline redrawn on LiteMedSAM's encoder (``medsam_seg.RefineResult``, mask in
            ORIGINAL pixels, before the U-Net's gate), refined_key: the model input's key it belongs to,
            refined_reason: why there is no refinement (None when the engine is there).
        opacity: overlay alpha in the comparison views.
        hist_scope: "brain" or "whole": which pixels the intensity histogram counts.
        classical_on: the classical segmenters shown in the comparison (keys of
            ``bt_demo.classical_seg.CLASSICAL``); classical_params: name -> validated params
            (missing: the registry's defaults); classical: name -> (key, SegResult in original
            pixels), a result being current when its key is :meth:`classical_key` now.
        chosen_mask: which mask the Measure and Export tabs use ("prompted", "unet", "kmeans"
            or a classical name).
        uncertainty: the last TTA uncertainty result (maps in ORIGINAL pixels) or None;
            uncertainty_key: the ``Processed.key`` it was computed on.
        tab, stale: the tab on screen and the tabs drawn when next opened (see :mod:`bt_demo.ui.tabs`).
        workdir: per-session temporary folder for exports (created on first export,
            removed when the session ends).
    """

    _FIELDS = ("slice", "source_path", "selectors", "window", "spacing_mm", "unit", "pipeline", "processed",
               "model_input", "models_see_lab",
               "slot", "prompts", "history", "box_anchor", "display_factor", "unet_prob", "unet_prob_key",
               "unet_threshold", "unet_result", "unet_reason", "kmeans_k", "kmeans", "kmeans_key", "kmeans_mask",
               "sweep", "sweep_key", "classification", "classification_key", "classifier_reason", "heads", "heads_key",
               "heads_reason", "heads_cam", "heads_cam_key", "refined", "refined_key", "refined_reason",
               "gradcam_class", "gradcam", "opacity", "hist_scope", "classical_on", "classical_params", "classical",
               "chosen_mask", "uncertainty", "uncertainty_key", "workdir", "volume", "volume_key", "volume_masks",
               "volume_results", "volume_numbers", "volume_which", "volume_k", "volume_gate", "tab", "stale", "shown", "notices",
               "synthetic")

    def __init__(self) -> None:
        self.slice: Any = None
        self.source_path: str | None = None
        self.selectors: dict = {}
        self.window: tuple[float, float] | None = None
        self.spacing_mm: float | None = None
        self.unit: np.ndarray | None = None
        self.pipeline: list | None = None
        self.processed: Any = None
        self.model_input: Any = None
        self.models_see_lab: bool = False
        self.slot: PredictorSlot | None = None
        self.prompts: PromptState = PromptState()
        self.history: tuple[PromptState, ...] = ()
        self.box_anchor: tuple[float, float] | None = None
        self.display_factor: float = 1.0
        self.unet_prob: np.ndarray | None = None
        self.unet_prob_key: str | None = None
        self.unet_threshold: float | None = None
        self.unet_result: Any = None
        self.unet_reason: str | None = None
        self.kmeans_k: int = 4
        self.kmeans: Any = None
        self.kmeans_key: tuple | None = None
        self.kmeans_mask: np.ndarray | None = None
        self.sweep: Any = None
        self.sweep_key: str | None = None
        self.classification: Any = None
        self.classification_key: str | None = None
        self.classifier_reason: str | None = None
        # the classifier heads on LiteMedSAM's encoder (bt_demo.models.encoder_heads): their HeadsResult, the
        # model input's key it belongs to, why they are unavailable
        self.heads: Any = None
        self.heads_key: str | None = None
        self.heads_reason: str | None = None
        self.heads_cam: np.ndarray | None = None  # where the heads looked (original pixels), on request
        self.heads_cam_key: tuple | None = None  # (model input key, heat-map choice) it was computed for
        # the U-Net's outline redrawn by the decoder on LiteMedSAM's encoder (bt_demo.models.medsam_seg)
        self.refined: Any = None
        self.refined_key: str | None = None
        self.refined_reason: str | None = None
        self.gradcam_class: str | None = None
        self.gradcam: np.ndarray | None = None
        self.opacity: float = 0.4
        self.hist_scope: str = "brain"
        self.classical_on: tuple[str, ...] = ()
        self.classical_params: dict[str, dict] = {}
        self.classical: dict[str, tuple] = {}
        self.chosen_mask: str = "prompted"
        self.uncertainty: dict | None = None
        self.uncertainty_key: str | None = None
        self.workdir: str | None = None
        # volume mode (bt_demo.ui.panels.volume): the loaded Volume, what it was loaded from, its masks
        # ("unet" / "propagated" -> bool (Z, H, W)), their VolumeResults, the shown mask and slice
        self.volume: Any = None
        self.volume_key: tuple | None = None
        self.volume_masks: dict = {}
        self.volume_results: dict = {}
        self.volume_numbers: dict | None = None
        self.volume_which: str = "unet"
        self.volume_k: int = 0
        self.volume_gate: np.ndarray | None = None  # bool (Z, H, W): where propagation may go (U-Net region)
        # the tab on screen (None: all count as shown) and the tabs whose panels wait to be drawn (ui.tabs)
        self.tab: str | None = None
        self.stale: frozenset[str] = frozenset()
        # what the page shows of components sent only on change (views._changed): name -> key; None
        # for sessions without a page (handler-level callers: everything is sent)
        self.shown: dict | None = None
        # why this slice is unlike the training data: the file's fields (domain) and its pixels (looks_like_brain)
        self.notices: tuple[str, ...] = ()
        # the last slice the Synthetic tab generated (ui.panels.synthetic): image, mask, seed, steps, ...
        self.synthetic: dict | None = None
        self.exports: tuple[str, ...] = ()  # the latest export's files (older ones are removed)
        self.busy_with: str | None = None  # the heavy request holding the session now (ui.busy)
        self.lock = threading.RLock()

    def __repr__(self) -> str:
        what = "empty" if self.slice is None else f"{self.slice.source} {self.slice.shape}"
        return f"Session({what}, {len(self.prompts.points)} points)"

    # -- gr.State support ------------------------------------------------------
    def __deepcopy__(self, memo) -> "Session":
        """A new session with the same content: a new lock, an empty predictor slot, no workdir.

        Values are shared, not copied: handlers replace field values and never
        change them in place (slices, results and arrays are treated as
        read-only), so sharing is safe; the settings containers are copied.
        """
        new = Session()
        for name in self._FIELDS:
            value = getattr(self, name)
            if name in ("selectors", "pipeline", "classical_params"):
                value = copy.deepcopy(value, memo)
            elif name == "slot":
                value = copy.deepcopy(value, memo) if value is not None else None
            elif name == "workdir":
                value = None
            setattr(new, name, value)
        return new

    # -- transactions ----------------------------------------------------------
    def snapshot(self) -> dict:
        """A shallow copy of every field; handlers replace (never mutate) field values, so this is enough."""
        return {name: getattr(self, name) for name in self._FIELDS if name != "workdir"}

    def restore(self, snap: dict) -> None:
        for name, value in snap.items():
            setattr(self, name, value)

    # -- helpers ---------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self.slice is not None and self.processed is not None

    def effective_spacing(self) -> tuple[float, float] | None:
        """(row_mm, col_mm): the file's spacing, else the typed one, else None."""
        if self.slice is not None and self.slice.spacing is not None:
            return tuple(self.slice.spacing)
        if self.spacing_mm is not None and self.spacing_mm > 0:
            return (float(self.spacing_mm), float(self.spacing_mm))
        return None

    def classical_settings(self, name: str) -> dict:
        """The validated parameters of classical segmenter ``name`` (the registry's defaults unless set)."""
        from bt_demo.studies.classical_seg import validate_classical_params

        return validate_classical_params(name, self.classical_params.get(name))

    def classical_key(self, name: str) -> tuple | None:
        """What a result of ``name`` depends on now: the processed image, the clicks, the parameters."""
        if self.processed is None:
            return None
        params = tuple(sorted(self.classical_settings(name).items()))
        return (self.processed.key, tuple(self.prompts.points), tuple(self.prompts.labels), params)

    def classical_result(self, name: str):
        """The SegResult of ``name`` if it is current (computed for today's image, clicks and parameters), else None."""
        item = self.classical.get(name)
        if item is None or self.processed is None:
            return None
        key, res = item
        return res if key == self.classical_key(name) else None

    def ensure_workdir(self) -> str:
        """This session's private folder (its upload and exports), created on first use."""
        if self.workdir is None or not os.path.isdir(self.workdir):
            from bt_demo.ui.scratch import session_dir

            self.workdir = session_dir()
        return self.workdir

    def close(self) -> None:
        """Remove the session's temporary folder (called when Gradio drops the session)."""
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def delete_session(session: Any) -> None:
    """``gr.State(delete_callback=...)``: clean up a session Gradio is discarding."""
    if isinstance(session, Session):
        try:
            session.close()
        except Exception:  # noqa: BLE001 - cleanup must never raise into Gradio
            log.exception("could not clean up a session")
