"""The synthetic-slice generator: a small mask-conditioned diffusers ``UNet2DModel`` sampled with DDIM.

Everything it makes is SYNTHETIC: a FLAIR-like slice drawn to match a tumour mask (an empty mask means "no
tumour"), for teaching and for augmentation experiments, never a patient's image. The network sees the noisy
image and the mask as two channels and predicts the velocity v (``prediction_type="v_prediction"``; an
epsilon model is also loadable); ``diffusers.DDIMScheduler`` does the sampling (not written by hand here).
Why v: with epsilon prediction the first, noisiest DDIM steps divide the predicted noise by sqrt(alpha_bar)
(about 0.08 at t=950), so a small noise error becomes a speckled x0 the sampler never recovers from; v keeps
the x0 estimate well conditioned at every noise level (measured: see train/diffusion.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from bt_demo.models import weights

DEFAULT_ID = "diffusion"


class MaskConditionedDiffusion(nn.Module, PyTorchModelHubMixin, library_name="bt_demo",
                               tags=["medical-imaging", "diffusion", "synthetic-data"]):
    """``forward(noisy, mask, t)`` -> predicted v (or noise, per ``prediction_type``); images in [-1, 1], mask in
    {0, 1}, (B, 1, S, S) each."""

    def __init__(self, sample_size: int = 64, block_out_channels: list[int] | tuple[int, ...] = (32, 64, 128, 128),
                 layers_per_block: int = 1, num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
                 attention: bool = True, prediction_type: str = "v_prediction"):
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
        self.prediction_type = prediction_type
        from diffusers import UNet2DModel

        n = len(block_out_channels)
        down = ["DownBlock2D"] * (n - 1) + (["AttnDownBlock2D"] if attention else ["DownBlock2D"])
        up = (["AttnUpBlock2D"] if attention else ["UpBlock2D"]) + ["UpBlock2D"] * (n - 1)
        self.sample_size = int(sample_size)
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_schedule = str(beta_schedule)
        self.unet = UNet2DModel(sample_size=self.sample_size, in_channels=2, out_channels=1,
                                block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                                down_block_types=tuple(down), up_block_types=tuple(up),
                                norm_num_groups=min(32, min(block_out_channels)))

    def forward(self, noisy: torch.Tensor, mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(torch.cat([noisy, mask], dim=1), t).sample

    def scheduler(self):
        """A fresh DDIM scheduler matching the training noise schedule."""
        from diffusers import DDIMScheduler

        return DDIMScheduler(num_train_timesteps=self.num_train_timesteps, beta_schedule=self.beta_schedule,
                             clip_sample=True, prediction_type=self.prediction_type)


@dataclass(frozen=True)
class Synthetic:
    """image: float32 (S, S) in [0, 1]; mask: bool (S, S) the conditioning mask; seed, steps, seconds."""

    image: np.ndarray
    mask: np.ndarray
    seed: int
    steps: int
    seconds: float
    synthetic: bool = True


def mask_to_model(mask: np.ndarray | None, size: int) -> np.ndarray:
    """Any (H, W) mask -> bool (size, size) (nearest, aspect kept by letterboxing); None -> empty."""
    if mask is None:
        return np.zeros((size, size), bool)
    from bt_demo.models.sizing import Letterbox

    m = np.asarray(mask).astype(np.float32) > 0
    if m.ndim != 2 or not m.size:
        raise ValueError(f"the mask must be a 2-D array, got shape {m.shape}")
    lb = Letterbox.fit(m.shape, size)
    return lb.image(m.astype(np.float32)) >= 0.5


class GeneratorEngine:
    """Loads ``weights/diffusion`` and makes synthetic slices."""

    name = "synthetic-slice generator (DDIM)"

    def __init__(self, model: MaskConditionedDiffusion):
        self.model = model
        self.card_line = ""

    @classmethod
    def load(cls, model_id: str = DEFAULT_ID, device: str | None = None) -> "GeneratorEngine | str":
        return weights.engine(cls, weights.load(MaskConditionedDiffusion, model_id, device=device, strict=True),
                              model_id, "generator")

    @property
    def size(self) -> int:
        return self.model.sample_size

    def generate(self, mask: np.ndarray | None = None, seed: int = 0, steps: int = 25,
                 progress: Callable[[int, int], None] | None = None) -> Synthetic:
        """A synthetic slice for ``mask`` (any (H, W); letterboxed to the model's size; None = no tumour).

        seed: reproducible noise; steps: DDIM steps (1-200; 25 is the default trade-off)."""
        steps = int(steps)
        if not 1 <= steps <= 200:
            raise ValueError(f"steps must be 1 to 200, got {steps}")
        t0 = time.perf_counter()
        m = mask_to_model(mask, self.size)
        p = next(self.model.parameters())
        cond = torch.from_numpy(m.astype(np.float32))[None, None].to(p.device, p.dtype)
        g = torch.Generator().manual_seed(int(seed))
        x = torch.randn((1, 1, self.size, self.size), generator=g).to(p.device, p.dtype)
        sched = self.model.scheduler()
        sched.set_timesteps(steps)
        with torch.inference_mode():
            for i, t in enumerate(sched.timesteps):
                out = self.model(x, cond, t.reshape(1).to(p.device))
                x = sched.step(out, t, x, generator=g).prev_sample
                if progress is not None:
                    progress(i + 1, steps)
        img = ((x[0, 0].float().clamp(-1, 1) + 1) / 2).cpu().numpy().astype(np.float32)
        return Synthetic(img, m, int(seed), steps, time.perf_counter() - t0)

    def generate_batch(self, masks: list[np.ndarray | None], seeds: list[int], steps: int = 25) -> np.ndarray:
        """float32 (N, S, S) in [0, 1]: one synthetic slice per mask, each from its own seed (as ``generate``
        would draw it: DDIM with eta 0 is deterministic given the starting noise), sampled together."""
        steps = int(steps)
        if not 1 <= steps <= 200:
            raise ValueError(f"steps must be 1 to 200, got {steps}")
        if len(masks) != len(seeds):
            raise ValueError(f"{len(masks)} masks but {len(seeds)} seeds")
        if not masks:
            return np.zeros((0, self.size, self.size), np.float32)
        p = next(self.model.parameters())
        cond = torch.from_numpy(np.stack([mask_to_model(m, self.size) for m in masks]).astype(np.float32))[:, None]
        x = torch.cat([torch.randn((1, 1, self.size, self.size), generator=torch.Generator().manual_seed(int(s)))
                       for s in seeds])
        cond, x = cond.to(p.device, p.dtype), x.to(p.device, p.dtype)
        sched = self.model.scheduler()
        sched.set_timesteps(steps)
        with torch.inference_mode():
            for t in sched.timesteps:
                out = self.model(x, cond, t.reshape(1).expand(len(x)).to(p.device))
                x = sched.step(out, t, x).prev_sample
        return ((x[:, 0].float().clamp(-1, 1) + 1) / 2).cpu().numpy().astype(np.float32)
