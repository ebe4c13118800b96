"""Find, load and cache model weights; report *why* an engine is unavailable.

A model id is a local folder (``weights/unet``) or a Hugging Face hub id
(``user/repo``). Loading is lazy, once per process per (class, id, device),
thread-safe, and never raises to the caller: ``load`` returns a ``Loaded``
with either the model or the reason it could not be loaded.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def weights_dir() -> Path:
    """The folder holding our models: $BT_WEIGHTS_DIR or <repo>/weights."""
    return Path(os.environ.get("BT_WEIGHTS_DIR") or REPO_ROOT / "weights")


def resolve(model_id: str | os.PathLike) -> str:
    """A short name ("unet") means weights_dir()/unet; a path or hub id is kept."""
    s = str(model_id)
    if "/" not in s and "\\" not in s and not Path(s).exists():
        return str(weights_dir() / s)
    return s


def pick_device(prefer: str | None = None):
    import torch

    prefer = prefer or os.environ.get("BT_DEVICE")
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Loaded:
    """A model or the reason there is none. ``model`` is in eval mode on ``device``."""

    model: Any | None
    model_id: str
    reason: str = ""
    device: str = "cpu"

    @property
    def ok(self) -> bool:
        return self.model is not None


_cache: dict[tuple, Loaded] = {}
_lock = threading.Lock()


def _explain(exc: BaseException, model_id: str) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = msg.lower()
    if not Path(model_id).exists() and any(w in low for w in ("offline", "connect", "resolve", "network", "internet")):
        return f"cannot download {model_id} (no network?): {msg[:200]}"
    return f"{type(exc).__name__}: {msg[:300]}"


def load(cls, model_id: str | os.PathLike, device: str | None = None, **kwargs) -> Loaded:
    """``cls.from_pretrained(model_id)`` once per process, strict about mismatched weights.

    Absent folders, corrupt files, incompatible configs and missing network all
    come back as ``Loaded(model=None, reason=...)``.
    """
    mid = resolve(model_id)
    key = (cls.__module__, cls.__qualname__, mid, device, tuple(sorted(kwargs.items())))
    with _lock:
        if key in _cache:
            return _cache[key]
        loaded = _load_uncached(cls, mid, device, **kwargs)
        _cache[key] = loaded
        return loaded


def _load_uncached(cls, mid: str, device: str | None, **kwargs) -> Loaded:
    p = Path(mid)
    looks_local = p.is_absolute() or mid.startswith((".", "weights")) or p.exists()
    if looks_local and not p.exists():
        return Loaded(None, mid, f"weights folder {mid} does not exist (train it with `python -m train ...`)")
    if looks_local and not (p / "config.json").exists():
        return Loaded(None, mid, f"no config.json in {mid} (not a saved model folder)")
    try:
        import torch  # noqa: F401 - a missing or broken torch becomes the reason, like any load failure

        dev = pick_device(device)
        model = cls.from_pretrained(mid, **kwargs)
        model = model.to(dev).eval()
        model = model.half() if dev.type == "cuda" and getattr(cls, "_half_on_gpu", True) else model.float()
        for prm in model.parameters():
            prm.requires_grad_(False)
        return Loaded(model, mid, "", str(dev))
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a reason, never a crash
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return Loaded(None, mid, _explain(exc, mid))


def clear_cache() -> None:
    """Forget loaded models (tests, and the app when the weights folder changes)."""
    with _lock:
        _cache.clear()


def model_config(model) -> dict:
    """A copy of the config ``model.save_pretrained`` writes to config.json (its ``__init__`` arguments, with what
    :func:`set_config` changed since); ``{}`` for a module without huggingface_hub's ``PyTorchModelHubMixin``."""
    from dataclasses import asdict, is_dataclass

    cfg = getattr(model, "_hub_mixin_config", None)  # where the mixin keeps the arguments it will save
    if cfg is None:
        return {}
    return dict(asdict(cfg) if is_dataclass(cfg) else cfg)


def set_config(model, **values) -> None:
    """Record settings chosen after a model was built (a threshold, a temperature, a click radius) so that the
    folder ``save_pretrained`` writes reloads with them: each becomes the attribute of that name AND its entry in
    config.json. The one place the trainers change a saved config.

    model: an ``nn.Module`` with huggingface_hub's ``PyTorchModelHubMixin``; every name must be a parameter of its
    ``__init__`` (``from_pretrained`` passes config.json back to ``__init__``), else ``ValueError`` listing them.
    """
    import inspect

    cfg = getattr(model, "_hub_mixin_config", None)
    if not isinstance(cfg, dict):
        raise ValueError(f"{type(model).__name__} has no save_pretrained config (PyTorchModelHubMixin) to set")
    allowed = [n for n in inspect.signature(type(model).__init__).parameters if n != "self"]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"{type(model).__name__} has no __init__ parameter {', '.join(unknown)}; "
                         f"options: {', '.join(allowed)}")
    for name, value in values.items():
        setattr(model, name, value)
        cfg[name] = value


def input_line(card: dict) -> str:
    """Which input a segmentation or click model sees: the lab's output, its own mapping, how robust it is."""
    cfg = card.get("config") or {}
    line = ("Input: the slice as loaded, through the brain crop when ticked (the input it was trained on); "
            "the lab's other steps reach it only with 'Feed the lab's output to the models' on")
    if cfg.get("input_prep") == "median_clahe":
        line += "; then its own 3×3 median + CLAHE"
    if cfg.get("zoom_in"):
        line += "; after the first click it looks at a zoomed crop around the mask"
    lab = (card.get("metrics") or {}).get("lab_robustness_lab_output")
    if lab and lab["worst_abs_change"] <= lab["bound"]:
        line += (f"; fed the lab's output, its Dice moves by at most {lab['worst_abs_change']:.3f} "
                 f"({lab['n_patients']} validation patients)")
    elif lab:
        line += (f"; careful with that option: fed the lab's output, its Dice falls by up to "
                 f"{lab['worst_abs_change']:.2f} under '{lab['worst_configuration']}' ({lab['n_patients']} "
                 "validation patients)")
    return line + "."


def card_summary(model_id: str | os.PathLike) -> str:
    """One sentence of the held-out numbers in ``card.json`` beside local weights ('' when there is none).

    Shown next to every model output, so a clinician reads how good the model
    measured before reading what it says.
    """
    import json

    p = Path(resolve(model_id)) / "card.json"
    try:
        card = json.loads(p.read_text())
        m, task = card["metrics"], card["task"]
        if task == "segmentation":
            return (f"Measured on {m['n_patients']} held-out patients: mean per-patient Dice {m['patient_dice_mean']:.3f}, "
                    f"tumour-free slices with a false positive {100 * m['fp_rate_tumour_free']:.0f}%. " + input_line(card))
        if task == "clicks":
            line = (f"Measured on {m['n_tumour_slices']} held-out tumour slices: Dice {m['dice_after_1_clicks']:.3f} "
                    f"after 1 click, {m['dice_after_3_clicks']:.3f} after 3")
            if "dice_after_10_clicks" in m:
                line += f", {m['dice_after_10_clicks']:.3f} after 10"
            return line + ". " + input_line(card)
        if task == "generation":
            size = (card.get("config") or {}).get("sample_size")
            n_pat = len((card.get("split") or {}).get("train") or [])
            return (f"A generator of SYNTHETIC {f'{size}² ' if size else ''}FLAIR-like slices"
                    f"{f', trained on {n_pat} LGG patients' if n_pat else ''} (validation loss {m['val_loss']:.4f} on "
                    "held-out patients); how real they look is measured in docs/studies.md.")
        if task == "classification":
            pr, ty = m["presence"], m["type"]
            line = (f"Presence: ROC AUC {pr['roc_auc']:.2f} on {pr['n_patients']} held-out LGG patients (FLAIR), "
                    f"recall {pr['recall']['tumour']:.2f} tumour / {pr['recall']['no_tumour']:.2f} no tumour. "
                    f"Type: macro-F1 {ty['cv_macro_f1_mean']:.2f} ± {ty['cv_macro_f1_sd']:.2f} over "
                    f"{ty['n_folds']} patient-level folds (figshare T1 contrast-enhanced).")
            fig = m.get("other_sources", {}).get("presence_on_figshare_tumour_slices")
            if fig and fig["tumour_recall"] < 0.8:
                line += (f" On T1 contrast-enhanced tumour slices the presence head finds only "
                         f"{100 * fig['tumour_recall']:.0f}%: read P(tumour) on FLAIR.")
            if ty["cv_macro_f1_mean"] < 0.7 or pr["roc_auc"] < 0.8:
                line += " That is too weak to rely on."
            return line
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return ""


def engine(engine_cls, loaded: Loaded, model_id: str | os.PathLike, label: str):
    """``engine_cls(model)`` with its card line, or the sentence saying why ``label`` is unavailable: the
    one way every engine's ``load`` turns a loaded folder into an engine."""
    if not loaded.ok:
        return f"{label} unavailable, because {loaded.reason}"
    eng = engine_cls(loaded.model)
    eng.card_line = card_summary(model_id)
    return eng
