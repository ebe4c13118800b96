"""`python -m train diffusion-x0`: how well a generator estimates the clean slice x0 from one noisy step.

Noises held-back LGG slices (tumour slices of the generator's validation patients) to timestep t with the
training noise schedule and asks the network, in one step, for x0 (from its noise or velocity prediction);
the MSE against the real slice (images in [-1, 1]) by t. This is the check that showed why the first generator
(epsilon prediction) sampled noise: its x0 estimate falls apart at the noisiest steps, where DDIM starts.
Each source: an exported weights folder, or a training checkpoint ``.pt`` (its EMA-averaged weights; its
prediction type from the run's args.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

TIMESTEPS = (20, 100, 300, 500, 800, 950)


def _model(source: str):
    from bt_demo.models.generator import MaskConditionedDiffusion
    from train.diffusion import read_warm_start

    p = Path(source)
    if p.is_dir():
        return MaskConditionedDiffusion.from_pretrained(str(p)).float().eval(), json.loads((p / "card.json").read_text())["split"]["val"]
    a = json.loads((p.parent / "args.json").read_text())
    model = MaskConditionedDiffusion(sample_size=a["size"], block_out_channels=[int(c) for c in a["channels"].split(",")],
                                     attention=not a.get("no_attention"), prediction_type=a.get("prediction_type", "epsilon"))
    model.load_state_dict(read_warm_start(source)[0])
    return model.eval(), json.loads((p.parent / "split.json").read_text())["val"]


@torch.no_grad()
def x0_mse_by_t(model, x: torch.Tensor, m: torch.Tensor, seed: int = 0) -> dict[int, float]:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=model.num_train_timesteps, beta_schedule=model.beta_schedule)
    ab, g, out = sched.alphas_cumprod, torch.Generator().manual_seed(seed), {}
    for t in TIMESTEPS:
        noise = torch.randn(x.shape, generator=g)
        tt = torch.full((len(x),), t)
        xt = sched.add_noise(x, noise, tt)
        o = model(xt, m, tt)
        x0 = (ab[t].sqrt() * xt - (1 - ab[t]).sqrt() * o if model.prediction_type == "v_prediction"
              else (xt - (1 - ab[t]).sqrt() * o) / ab[t].sqrt())
        out[t] = float(torch.mean((x0.clamp(-1, 1) - x) ** 2))
    return out


def main(argv=None) -> int:
    from train.lgg import LGG_DEFAULT

    p = argparse.ArgumentParser(prog="python -m train diffusion-x0", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", help="weights folders or training checkpoints (.pt)")
    p.add_argument("--data", default=str(LGG_DEFAULT))
    p.add_argument("--n", type=int, default=32, help="tumour slices of the validation patients")
    p.add_argument("--out", default="bench/results/diffusion_x0.json")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from train import lgg
    from train.diffusion import to_model

    res = {}
    for src in args.sources:
        model, val = _model(src)
        d = lgg.load_lgg(args.data, patients=val, size=model.sample_size)
        idx = np.nonzero(d.has_tumour)[0]
        idx = idx[np.linspace(0, len(idx) - 1, min(args.n, len(idx))).astype(int)]
        x, m = to_model(d.images[idx]), torch.from_numpy(d.masks[idx].astype(np.float32))[:, None]
        res[src] = {"prediction_type": model.prediction_type, "n_slices": int(len(idx)),
                    "x0_mse_by_t": x0_mse_by_t(model, x, m)}
        print(src, model.prediction_type, {t: round(v, 4) for t, v in res[src]["x0_mse_by_t"].items()})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": res, "command": "python -m train diffusion-x0 "
                               + " ".join(argv if argv is not None else sys.argv[1:])}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
