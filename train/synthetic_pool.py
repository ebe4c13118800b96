"""`python -m train synthetic-pool`: synthetic (slice, mask) pairs for the augmentation experiment.

Masks come from the U-Net's *training* patients (the generator learnt only those patients too), each
randomly flipped, shifted and rotated so the pool is not a copy of the real masks; every slice is drawn by
the shipped generator at its own resolution and brought to the LGG slice size (linear up-sampling, the
masks nearest). Saved as one ``.npz`` (uint8 images, bool masks, seeds) that ``python -m train
segmentation --synthetic-pool`` mixes into training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from train import lgg
    from train.lgg import LGG_DEFAULT

    p = argparse.ArgumentParser(prog="python -m train synthetic-pool", description=__doc__)
    p.add_argument("--weights", default="weights/diffusion")
    p.add_argument("--data", default=str(LGG_DEFAULT))
    p.add_argument("--n", type=int, default=480, help="pairs to make")
    p.add_argument("--empty-share", type=float, default=0.2, help="share of pairs without a tumour")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--out", default="runs/synthetic_pool.npz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    import cv2
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from bt_demo.models.generator import GeneratorEngine

    gen = GeneratorEngine.load(args.weights)
    if isinstance(gen, str):
        raise SystemExit(gen)
    card = json.loads((Path(args.weights) / "card.json").read_text())
    data = lgg.load_lgg(args.data, patients=card["split"]["train"])
    rng = np.random.default_rng(args.seed)
    tum = np.nonzero(data.has_tumour)[0]
    size = data.images.shape[1]
    masks = []
    for _ in range(args.n):
        if rng.random() < args.empty_share:
            masks.append(np.zeros((size, size), bool))
            continue
        m = data.masks[int(rng.choice(tum))].astype(np.uint8)
        if rng.random() < 0.5:
            m = m[:, ::-1]
        ang, dx, dy = rng.uniform(-20, 20), rng.uniform(-15, 15), rng.uniform(-15, 15)
        mat = cv2.getRotationMatrix2D((size / 2, size / 2), ang, 1.0)
        mat[:, 2] += (dx, dy)
        masks.append(cv2.warpAffine(np.ascontiguousarray(m), mat, (size, size), flags=cv2.INTER_NEAREST) > 0)
    seeds = [args.seed * 1_000_000 + i for i in range(args.n)]
    t0 = time.perf_counter()
    imgs = []
    for i in range(0, args.n, 16):
        small = gen.generate_batch(masks[i:i + 16], seeds[i:i + 16], steps=args.steps)
        imgs += [np.clip(cv2.resize(s, (size, size), interpolation=cv2.INTER_LINEAR) * 255 + 0.5, 0, 255).astype(np.uint8)
                 for s in small]
        print(f"{min(args.n, i + 16)}/{args.n} in {time.perf_counter() - t0:.0f} s", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=np.stack(imgs), masks=np.stack(masks), seeds=np.array(seeds),
                        command=np.array("python -m train synthetic-pool " + " ".join(argv if argv is not None else sys.argv[1:])))
    print(f"{args.n} synthetic pairs -> {out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
