"""SAM and SAM 2 as promptable engines, with the face of Meta's ``SamPredictor``.

``set_image`` runs the image encoder once per image (and per preprocessing, via
the caller's ``key``); ``predict`` maps clicks from the ORIGINAL slice to the
prompt frame of the model, runs only the prompt encoder and mask decoder, and
maps the masks back. Both families go through transformers:
``SamModel``/``SamProcessor`` and ``Sam2Model``/``Sam2Processor``; everything that
differs between them lives in ``_Family``.

Which model by default (measured with ``python -m bench.bench_sam``)
---------------------------------------------------------------------
A first click on a new slice costs one image-encoder run plus one
``predict``; later clicks cost ``predict`` only. Image encoder at 1024 x 1024,
random weights of each architecture, torch 2.14.1, 2 threads, on the 2-vCPU
development box while two training jobs shared its cores (load average 3.6 to
5.2), so absolute times are several times worse than on an idle machine; the
candidates ran in turn, round by round, so the ranking is fair
(bench/results/sam_cpu.json):

=========================  ==============================  ======  ===========  ==========
architecture               hub id                          GFLOPs  median (s)   best (s)
=========================  ==============================  ======  ===========  ==========
SAM 2.1 Hiera-T            facebook/sam2.1-hiera-tiny         207     12.4         7.6
SAM 2.1 Hiera-S            facebook/sam2.1-hiera-small        269     13.4        11.0
SlimSAM-77 (pruned ViT-B)  nielsr/slimsam-77-uniform           43     15.8        14.3
SlimSAM-50 (pruned ViT-B)  nielsr/slimsam-50-uniform          192     25.7        17.7
SAM ViT-B (= MedSAM)       facebook/sam-vit-base              742     41.9        28.3
=========================  ==============================  ======  ===========  ==========

SlimSAM needs 5x fewer FLOPs than Hiera-T yet runs slower: SAM's ViT
materialises 4096 x 4096 attention maps with relative-position terms in its
global layers, which is memory-bound on a CPU, while Hiera attends in windows
and through SDPA. (With one thread, an ad-hoc check that ``--threads 1``
repeats gave the same order: Hiera-T 4.9 s, SlimSAM-77 8.3 s.) ``predict``
with the embedding cached (Hiera-T, 256 x 256 slice, 20 clicks, same loaded
box): median 370 ms, p95 1.6 s.

* CPU default: ``facebook/sam2.1-hiera-tiny`` (``DEFAULT_SAM_ID``), the fastest
  first click measured, and a model of its own (trained on SA-1B and SA-V),
  not a pruned copy of SAM like SlimSAM.
* GPU default: ``facebook/sam2.1-hiera-large`` (``DEFAULT_SAM_ID_GPU``), the
  most accurate SAM 2.1 checkpoint; on a GPU every encoder here takes well
  under a second, so accuracy decides. NOT measured here (no GPU on this box).
* ViT-B (and MedSAM, the same architecture; MedSAM was trained with box
  prompts) costs the most per first click on a CPU: use it with a GPU.
* On a CPU shared with other work, 2 torch threads can be much slower than 1
  (OpenMP threads waiting for each other); the app may want
  ``torch.set_num_threads(1)`` there.

Override with ``BT_SAM_MODEL`` or the app's ``--sam-model`` (a hub id or a
local ``save_pretrained`` folder).

Importing this module is cheap: torch and transformers are imported inside the
functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bt_demo.image.geometry import Geometry
from bt_demo.models import weights
from bt_demo.models.base import NoImageError, SegResult, check_gray, check_prompts

log = logging.getLogger(__name__)

DEFAULT_SAM_ID = "facebook/sam2.1-hiera-tiny"
DEFAULT_SAM_ID_GPU = "facebook/sam2.1-hiera-large"
ENV_VAR = "BT_SAM_MODEL"

_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
_OUTSIDE_LOGIT = -1e4  # logit given to original pixels outside the processed crop
_RECENT = 8  # results per session whose low-res logits can be fed back (undo, then refine)


def _hub_unreachable(mid: str, timeout: float = 2.0) -> str:
    """Why a hub id cannot be loaded right now ('' when it can, or when ``mid`` is a local folder).

    A checkpoint in the local Hugging Face cache loads without the network. Otherwise the hub is asked
    once, briefly (HF_HUB_OFFLINE set: not at all), instead of huggingface_hub's retries (24 s offline).
    """
    if Path(mid).exists() or mid.count("/") != 1:
        return ""
    try:
        from huggingface_hub import constants, try_to_load_from_cache

        if isinstance(try_to_load_from_cache(mid, "config.json"), str):
            return ""
        if constants.HF_HUB_OFFLINE:
            return f"{mid} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
        from urllib.parse import urlparse

        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
        port = urlparse(constants.ENDPOINT).port or (443 if constants.ENDPOINT.startswith("https") else 80)
    except Exception:  # noqa: BLE001 - the check is only a shortcut; loading decides
        return ""
    import socket

    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return (f"there is no network to download {mid} ({host}: {exc.strerror or exc}) and no cached copy; "
                "give a local folder with --sam-model, or start with the network once")
    return ""


def default_model_id(device: str | None = None) -> str:
    """$BT_SAM_MODEL if set, else ``DEFAULT_SAM_ID_GPU`` on CUDA and ``DEFAULT_SAM_ID`` otherwise."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return env
    return DEFAULT_SAM_ID_GPU if weights.pick_device(device).type == "cuda" else DEFAULT_SAM_ID


# ---------------------------------------------------------------------------
# families: everything that differs between SAM and SAM 2
# ---------------------------------------------------------------------------
_MODEL_TYPES = {"sam": "sam", "sam2": "sam2", "sam2_video": "sam2"}  # sam2_video: how SAM 2.1 is published


def _family_from_type(model_type: str, where: str) -> str:
    fam = _MODEL_TYPES.get(str(model_type))
    if fam is None:
        known = ", ".join(sorted(_MODEL_TYPES))
        raise ValueError(f"{where} is a {model_type!r} model, not SAM or SAM 2 (model_type must be one of: {known})")
    return fam


def sam_family(model_id_or_config) -> str:
    """"sam" or "sam2", from the config's ``model_type``.

    Accepts a transformers config, a config dict, a local folder holding
    ``config.json``, or a hub id (its cached ``config.json`` when there is one,
    else the name: ids containing "sam2" are SAM 2). Raises ``ValueError`` for
    a config of another kind of model, naming the accepted model types.
    """
    obj = model_id_or_config
    if isinstance(obj, dict):
        return _family_from_type(obj.get("model_type"), "this config")
    if hasattr(obj, "model_type") and not isinstance(obj, (str, os.PathLike)):
        return _family_from_type(obj.model_type, "this config")
    mid = weights.resolve(obj)
    p = Path(mid)
    cfg_path = p / "config.json" if p.is_dir() else None
    if cfg_path is None and not p.exists() and mid.count("/") == 1:
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(mid, "config.json")
            cfg_path = Path(hit) if isinstance(hit, str) else None
        except Exception:  # noqa: BLE001 - the cache is only a hint
            cfg_path = None
    if cfg_path is not None and cfg_path.exists():
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {cfg_path}: {exc}") from exc
        return _family_from_type(cfg.get("model_type"), mid)
    if p.exists():
        raise ValueError(f"no config.json in {mid} (not a saved model folder)")
    name = mid.lower().replace("-", "").replace("_", "")
    return "sam2" if "sam2" in name else "sam"


@dataclass(frozen=True)
class _Family:
    key: str
    label: str
    model_cls: str
    processor_cls: str
    image_processor_cls: str

    def classes(self):
        import transformers

        return getattr(transformers, self.model_cls), getattr(transformers, self.processor_cls)

    def default_processor(self, image_size: int):
        """The processor a checkpoint of this family ships with, sized for ``image_size``."""
        import transformers

        ip_cls = getattr(transformers, self.image_processor_cls)
        _, proc_cls = self.classes()
        low = image_size // 4
        if self.key == "sam":
            ip = ip_cls(size={"longest_edge": image_size}, pad_size={"height": image_size, "width": image_size},
                        mask_size={"longest_edge": low}, mask_pad_size={"height": low, "width": low})
        else:
            ip = ip_cls(size={"height": image_size, "width": image_size}, mask_size={"height": low, "width": low})
        return proc_cls(ip)

    def input_shape(self, processor, encoding) -> tuple[int, int]:
        """(H, W) of the image after the processor's resize, before any padding."""
        if self.key == "sam":
            r = encoding["reshaped_input_sizes"][0]
            return int(r[0]), int(r[1])
        t = int(processor.target_size)  # SAM 2 stretches to a square, points likewise
        return t, t

    def upsample(self, processor, low_res, processed_shape, input_shape):
        """Low-res logits (1, 1, K, h', w') -> float32 logits (K, H, W) at the processed image size."""
        if self.key == "sam":
            out = processor.post_process_masks(low_res, [list(processed_shape)], [list(input_shape)], binarize=False)
        else:
            out = processor.post_process_masks(low_res, [list(processed_shape)], binarize=False)
        return out[0][0]

    def embeddings_for_forward(self, emb):
        return list(emb) if self.key == "sam2" else emb


_FAMILIES = {
    "sam": _Family("sam", "SAM", "SamModel", "SamProcessor", "SamImageProcessor"),
    "sam2": _Family("sam2", "SAM 2", "Sam2Model", "Sam2Processor", "Sam2ImageProcessor"),
}


def _family(family: str) -> _Family:
    try:
        return _FAMILIES[family]
    except KeyError:
        raise KeyError(f"unknown SAM family {family!r}; options: {', '.join(_FAMILIES)}") from None


def model_class(family: str):
    """transformers' model class of ``family`` ("sam": ``SamModel``, "sam2": ``Sam2Model``)."""
    return _family(family).classes()[0]


def default_processor(family: str, image_size: int):
    """The processor a checkpoint of ``family`` ships with, sized for a square input of ``image_size`` px."""
    return _family(family).default_processor(image_size)


# ---------------------------------------------------------------------------
# the one place where points move between the processed image and the model
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFrame:
    """Processed-image pixels <-> the prompt frame of the model's input.

    processed_shape: (H, W) of the processed image given to ``set_image``.
    input_shape: (H', W') the processor resized it to before padding (SAM:
    longest side = the model's input size, aspect kept; SAM 2: stretched to a
    square). Points are ``(x, y)`` pixel coordinates, pixel centres at integers.

    Pixel centres map to pixel centres, as the processors' (half-pixel,
    align_corners=False) resize moves the image: ``x' = (x + 0.5) * W'/W - 0.5``.
    The processors' own point arithmetic is ``x' = x * W'/W``, which puts a
    click up to half a processed pixel up-left of where it was drawn (the
    difference is exactly ``0.5 * (W'/W - 1)`` model pixels); the model adds
    its own half-pixel shift on top of either.
    """

    processed_shape: tuple[int, int]
    input_shape: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): model-input pixels per processed pixel."""
        return self.input_shape[1] / self.processed_shape[1], self.input_shape[0] / self.processed_shape[0]

    def to_model(self, points_xy) -> np.ndarray:
        """Processed (x, y) -> model-input (x, y); (N, 2) or (2,), float64."""
        p = np.asarray(points_xy, dtype=np.float64)
        s = np.array(self.scale)
        return (p + 0.5) * s - 0.5

    def to_processed(self, points_xy) -> np.ndarray:
        """Model-input (x, y) -> processed (x, y); the inverse of ``to_model``."""
        p = np.asarray(points_xy, dtype=np.float64)
        s = np.array(self.scale)
        return (p + 0.5) / s - 0.5

    def box_to_model(self, box_xyxy) -> np.ndarray:
        """(x0, y0, x1, y1) processed -> model input, through the point code."""
        return self.to_model(np.asarray(box_xyxy, dtype=np.float64).reshape(2, 2)).reshape(4)


# ---------------------------------------------------------------------------
# the shared, content-keyed embedding cache
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Embedding:
    """Read-only value of the cache: what the encoder made of one image."""

    embeddings: Any  # SAM: tensor (1, C, h, w); SAM 2: tuple of 3 tensors (high-res first)
    processed_shape: tuple[int, int]
    input_shape: tuple[int, int]


class EmbeddingCache:
    """A thread-safe LRU of image embeddings, shared by every engine of one model on one device."""

    def __init__(self, maxsize: int):
        if int(maxsize) < 1:
            raise ValueError(f"cache_size must be >= 1, got {maxsize}")
        self.maxsize = int(maxsize)
        self._data: OrderedDict[str, _Embedding] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> _Embedding | None:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: str, value: _Embedding) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def resize(self, maxsize: int) -> None:
        if int(maxsize) < 1:
            raise ValueError(f"cache_size must be >= 1, got {maxsize}")
        with self._lock:
            self.maxsize = int(maxsize)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def keys(self) -> list[str]:
        """Oldest first."""
        with self._lock:
            return list(self._data)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._data

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_caches: dict[tuple[str, str], EmbeddingCache] = {}
_processors: dict[tuple[str, str], tuple[Any, str]] = {}
_registry_lock = threading.Lock()


def _shared_cache(model_id: str, device: str, cache_size: int) -> EmbeddingCache:
    with _registry_lock:
        cache = _caches.get((model_id, device))
        if cache is None:
            cache = _caches[(model_id, device)] = EmbeddingCache(cache_size)
        elif cache.maxsize != cache_size:
            cache.resize(cache_size)  # the latest load decides
        return cache


def clear_caches() -> None:
    """Forget shared embeddings and processors (tests; weights.clear_cache() forgets the models)."""
    with _registry_lock:
        for c in _caches.values():
            c.clear()
        _caches.clear()
        _processors.clear()


def _load_processor(family: _Family, mid: str, model) -> tuple[Any, str]:
    """(processor, note) for the model at ``mid``; raises with a reason when it cannot."""
    with _registry_lock:
        hit = _processors.get((family.key, mid))
    if hit is not None:
        return hit
    image_size = int(model.config.prompt_encoder_config.image_size)
    p = Path(mid)
    note = ""
    if p.is_dir() and not any((p / f).exists() for f in _PROCESSOR_FILES):
        processor = family.default_processor(image_size)
        note = (f"no processor files in {mid}; using the default {family.label} processor "
                f"for {image_size} px input")
        log.warning(note)
    else:
        _, proc_cls = family.classes()
        processor = proc_cls.from_pretrained(mid)
    target = int(getattr(processor, "target_size", image_size))
    if target != image_size:
        raise ValueError(f"the processor resizes to {target} px but the model expects {image_size} px")
    with _registry_lock:
        _processors[(family.key, mid)] = (processor, note)
    return processor, note


# ---------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------
@dataclass
class _Current:
    key: str
    entry: _Embedding
    geometry: Geometry
    frame: ModelFrame


def _display_id(model_id: str) -> str:
    p = Path(model_id)
    return p.name if p.is_absolute() else model_id


class SamEngine:
    """SAM or SAM 2 behind the ``PromptPredictor`` face (see ``bt_demo.models.base``).

    One engine holds one session's state (the current image, the last
    prediction). The model, the processor and the embedding cache are shared
    by every engine of the same model id and device, so per-session engines
    are cheap: ``copy.deepcopy(engine)`` (what ``gr.State`` does for each new
    session) and ``engine.new_session()`` give a fresh engine sharing them.

    Attributes: ``name`` (display name), ``model_id``, ``family`` ("sam" or
    "sam2"), ``device``, ``notes`` (facts worth showing, e.g. a default
    processor was used), ``encoder_calls`` (image-encoder runs by this engine).
    """

    def __init__(self, model, processor, family: str, model_id: str, device: str, cache: EmbeddingCache,
                 notes: Sequence[str] = ()):
        self.model = model
        self.processor = processor
        self.family = family
        self._fam = _FAMILIES[family]
        self.model_id = model_id
        self.device = device
        self.cache = cache
        self.notes = tuple(n for n in notes if n)
        self.name = f"{self._fam.label} ({_display_id(model_id)})"
        self.encoder_calls = 0
        self._current: _Current | None = None
        # low-res logits (K, h', w') of this session's recent results on the current image, by token
        self._recent: OrderedDict[str, Any] = OrderedDict()

    # -- construction ------------------------------------------------------
    @classmethod
    def load(cls, model_id: str | None = None, device: str | None = None, cache_size: int = 8) -> "SamEngine | str":
        """The engine, or "SAM unavailable, because ..." (never raises for bad ids, folders or files).

        model_id: a hub id or a local ``save_pretrained`` folder; None ->
        ``default_model_id(device)``. device: "cpu", "cuda", ... or None (CUDA
        when present; half precision on GPU only). cache_size: how many image
        embeddings the shared cache of this model keeps (>= 1).
        """
        if int(cache_size) < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        try:
            mid = weights.resolve(model_id or default_model_id(device))
        except Exception as exc:  # noqa: BLE001 - e.g. a bad $BT_DEVICE
            return f"SAM unavailable, because {type(exc).__name__}: {exc}"
        p = Path(mid)
        looks_local = p.is_absolute() or mid.startswith((".", "weights")) or p.exists()
        if looks_local and not p.exists():
            return f"SAM unavailable, because the folder {mid} does not exist (give a hub id or a save_pretrained folder)"
        try:
            family = _FAMILIES[sam_family(mid)]
        except ValueError as exc:
            return f"SAM unavailable, because {exc}"
        try:
            model_cls, _ = family.classes()
        except Exception as exc:  # noqa: BLE001 - an old transformers without SAM 2
            return f"SAM unavailable, because this transformers has no {family.model_cls}: {exc}"
        offline = _hub_unreachable(mid)
        if offline:
            return f"SAM unavailable, because {offline}"
        loaded = weights.load(model_cls, mid, device=device)
        if not loaded.ok:
            return f"SAM unavailable, because {loaded.reason}"
        mt = getattr(loaded.model.config, "model_type", "")
        if _MODEL_TYPES.get(mt) != family.key:
            return f"SAM unavailable, because {mid} holds a {mt!r} model, not {family.label}"
        try:
            processor, note = _load_processor(family, mid, loaded.model)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a reason
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return f"SAM unavailable, because its processor could not be loaded: {weights._explain(exc, mid)}"
        cache = _shared_cache(mid, loaded.device, int(cache_size))
        return cls(loaded.model, processor, family.key, mid, loaded.device, cache, [note])

    def new_session(self) -> "SamEngine":
        """A fresh engine (no image set) sharing this one's model, processor and cache."""
        return SamEngine(self.model, self.processor, self.family, self.model_id, self.device, self.cache, self.notes)

    def __deepcopy__(self, memo) -> "SamEngine":
        return self.new_session()

    def __copy__(self) -> "SamEngine":
        return self.new_session()

    # -- image ---------------------------------------------------------------
    @property
    def has_image(self) -> bool:
        return self._current is not None

    def set_image(self, image: np.ndarray, geometry: Geometry | None = None, key: str | None = None) -> None:
        """Compute (or fetch from the cache) the image embedding of the PROCESSED slice.

        image: float32 (h, w), values in [0, 1] (clipped), the processed image;
        it is quantised to uint8 and replicated to RGB, as SAM was trained on.
        geometry: the ``Geometry`` from the original slice to ``image``
        (None: identity); its ``processed_shape`` must be (h, w).
        key: cache key naming the image content AND the preprocessing that made
        it; None -> a hash of the quantised pixels and their shape. The
        encoder runs only when (model, key) is not in the shared cache.
        """
        img = check_gray(image, "SAM")
        gray = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
        geometry = geometry or Geometry.identity(gray.shape)
        if tuple(geometry.processed_shape) != gray.shape:
            raise ValueError(f"geometry.processed_shape {tuple(geometry.processed_shape)} does not match the image "
                             f"shape {gray.shape}")
        if key is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(np.asarray(gray.shape, np.int64).tobytes())
            h.update(np.ascontiguousarray(gray).tobytes())
            ckey = "px:" + h.hexdigest()
        else:
            ckey = "key:" + str(key)
        entry = self.cache.get(ckey)
        if entry is None or entry.processed_shape != gray.shape:
            entry = self._encode(gray)
            self.cache.put(ckey, entry)
        self._current = _Current(ckey, entry, geometry, ModelFrame(gray.shape, entry.input_shape))
        self._recent.clear()

    def _encode(self, gray: np.ndarray) -> _Embedding:
        import torch

        rgb = np.repeat(gray[:, :, None], 3, axis=2)
        enc = self.processor(images=rgb, return_tensors="pt", input_data_format="channels_last")
        p = next(self.model.parameters())
        pixel_values = enc["pixel_values"].to(p.device, p.dtype)
        with torch.inference_mode():
            emb = self.model.get_image_embeddings(pixel_values)
        self.encoder_calls += 1
        emb = tuple(emb) if isinstance(emb, (list, tuple)) else emb
        return _Embedding(emb, tuple(gray.shape), self._fam.input_shape(self.processor, enc))

    # -- coordinates ------------------------------------------------------
    def points_to_model(self, points_xy) -> np.ndarray:
        """ORIGINAL slice (x, y) -> the model's prompt frame (x, y), for the current image. (N, 2) float64."""
        cur = self._require_image()
        return cur.frame.to_model(cur.geometry.to_processed(np.asarray(points_xy, np.float64).reshape(-1, 2)))

    def points_from_model(self, points_xy) -> np.ndarray:
        """The model's prompt frame (x, y) -> ORIGINAL slice (x, y); the inverse of ``points_to_model``."""
        cur = self._require_image()
        return cur.geometry.to_original(cur.frame.to_processed(np.asarray(points_xy, np.float64).reshape(-1, 2)))

    def _require_image(self) -> _Current:
        if self._current is None:
            raise NoImageError(self.name)
        return self._current

    # -- prompts -> masks ---------------------------------------------------
    def predict(self, points: Sequence[Sequence[float]], labels: Sequence[int], box: Sequence[float] | None = None,
                previous: SegResult | None = None, multimask: bool = True) -> SegResult:
        """Masks for the clicks on the current image, in ORIGINAL slice pixels.

        points: (N, 2) as (x, y) in original slice pixels (N may be 0 with a box).
        labels: (N,) 1 = tumour, 0 = not tumour.
        box: (x0, y0, x1, y1) in original pixels, or None.
        previous: one of the last 8 results of THIS engine on THIS image (e.g.
        the last one, or an earlier one after an undo); the low-res logits of the
        candidate it shows (kept here, not in the result) are fed back as the
        mask prompt. Anything else is ignored (``extra["refined"]`` says which).
        multimask: three candidates with predicted IoU when there is exactly one
        point and no box (SAM's recommendation for ambiguous prompts); one mask
        otherwise.

        Returns ``SegResult``: mask bool (H, W) = the candidate with the best
        predicted IoU, candidates (K of bool (H, W)), scores (K floats),
        prob float32 (H, W) in [0, 1] = sigmoid of the chosen logits.
        Raises ``NoImageError`` before ``set_image`` and ``ValueError`` for bad
        prompts (none at all, mismatched lengths, labels other than 0/1).
        """
        import torch

        t0 = time.perf_counter()
        cur = self._require_image()
        pts, labs = check_prompts(points, labels)
        bx = None
        if box is not None:
            bx = np.asarray(box, dtype=np.float64).reshape(-1)
            if bx.shape != (4,) or not np.isfinite(bx).all():
                raise ValueError(f"box must be (x0, y0, x1, y1), got {box!r}")
            bx = np.array([min(bx[0], bx[2]), min(bx[1], bx[3]), max(bx[0], bx[2]), max(bx[1], bx[3])])
        if len(pts) == 0 and bx is None:
            raise ValueError("add a point or a box first")

        multi = bool(multimask) and len(pts) == 1 and bx is None
        p = next(self.model.parameters())
        kwargs: dict[str, Any] = {"multimask_output": multi}
        if len(pts):
            mp = cur.frame.to_model(cur.geometry.to_processed(pts))
            kwargs["input_points"] = torch.tensor(mp, dtype=torch.float32, device=p.device)[None, None]
            kwargs["input_labels"] = torch.tensor(labs.astype(np.int64), device=p.device)[None, None]
        if bx is not None:
            mb = cur.frame.box_to_model(cur.geometry.box_to_processed(bx))
            kwargs["input_boxes"] = torch.tensor(mb, dtype=torch.float32, device=p.device)[None, None]
        refined = False
        prev_logits = self._recent.get(previous.extra.get("sam_token", "")) if previous is not None else None
        if prev_logits is not None and 0 <= previous.chosen < len(prev_logits):
            kwargs["input_masks"] = prev_logits[previous.chosen][None, None].to(p.dtype)
            refined = True

        with torch.inference_mode():
            out = self.model(image_embeddings=self._fam.embeddings_for_forward(cur.entry.embeddings), **kwargs)
            low = out.pred_masks  # (1, 1, K, h', w')
            logits = self._fam.upsample(self.processor, low.float().cpu(), cur.frame.processed_shape,
                                        cur.frame.input_shape)
            scores = out.iou_scores[0, 0].float().cpu().numpy().astype(np.float64)

        logits = logits.numpy().astype(np.float32, copy=False)  # (K, h, w) at the processed size
        geo = cur.geometry
        orig = [geo.map_to_original(np.ascontiguousarray(l), fill=_OUTSIDE_LOGIT, order=1) for l in logits]
        cands = tuple(o > 0 for o in orig)
        chosen = int(np.argmax(scores))
        prob = (1.0 / (1.0 + np.exp(-np.clip(orig[chosen], -60, 60)))).astype(np.float32)
        token = uuid.uuid4().hex
        self._recent[token] = low[0, 0].detach().clone()
        while len(self._recent) > _RECENT:
            self._recent.popitem(last=False)
        extra = {"sam_token": token, "model_id": self.model_id, "multimask": multi, "refined": refined,
                 "n_points": int(len(pts)), "box": bx is not None}
        if getattr(out, "object_score_logits", None) is not None:
            extra["object_score"] = float(torch.sigmoid(out.object_score_logits.float().reshape(-1)[0]))
        return SegResult(mask=cands[chosen], engine=self.name, seconds=time.perf_counter() - t0, prob=prob,
                         candidates=cands, scores=tuple(float(s) for s in scores), chosen=chosen, extra=extra)


__all__ = ["DEFAULT_SAM_ID", "DEFAULT_SAM_ID_GPU", "ENV_VAR", "EmbeddingCache", "ModelFrame", "SamEngine", "clear_caches",
           "default_model_id", "default_processor", "model_class", "sam_family"]
