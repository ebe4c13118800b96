"""Run folders, logging, checkpoints, seeds and devices shared by the training CLIs."""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch


def set_seed(seed: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # augmentation is tiny; OpenCV's pool would fight torch's threads for the 2 cores
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str | None) -> torch.device:
    """'cpu', 'cuda', 'cuda:1' or None/'auto' (CUDA when present)."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but no CUDA device is available; use --device cpu")
    return dev


class Run:
    """A run folder: args.json, train.log, metrics.jsonl, checkpoints."""

    def __init__(self, run_dir: str | Path, args: dict, resume: bool):
        self.dir = Path(run_dir)
        if self.dir.exists() and any(self.dir.iterdir()) and not resume:
            raise SystemExit(f"run folder {self.dir} is not empty; pass --resume to continue it or choose another --run-dir")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "args.json").write_text(json.dumps(args, indent=2, default=str))
        self.log = logging.getLogger(f"train.{self.dir.name}")
        self.log.setLevel(logging.INFO)
        self.log.handlers.clear()
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        for h in (logging.FileHandler(self.dir / "train.log"), logging.StreamHandler(sys.stderr)):
            h.setFormatter(fmt)
            self.log.addHandler(h)

    def metrics(self, **row) -> None:
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row, default=float) + "\n")

    def history(self) -> list[dict]:
        p = self.dir / "metrics.jsonl"
        return [json.loads(l) for l in p.read_text().splitlines() if l.strip()] if p.exists() else []

    @property
    def last_ckpt(self) -> Path:
        return self.dir / "last.pt"

    @property
    def best_ckpt(self) -> Path:
        return self.dir / "best.pt"

    def save(self, state: dict, best: bool) -> None:
        tmp = self.dir / "last.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.last_ckpt)  # atomic: a kill mid-write leaves the previous checkpoint
        if best:
            shutil.copyfile(self.last_ckpt, self.dir / "best.pt.tmp")
            os.replace(self.dir / "best.pt.tmp", self.best_ckpt)


def start_run(args) -> tuple[torch.device, Run]:
    """The start of every training command: torch threads (--threads, 0 = torch's default), the seed, the
    device, and the run folder (--run-dir, --resume) with the arguments and the command line in args.json."""
    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    return pick_device(args.device), Run(args.run_dir, vars(args) | {"argv": sys.argv}, args.resume)


def export_weights(model: torch.nn.Module, out_dir: str | Path, fp16: bool = True) -> Path:
    """save_pretrained a copy of ``model`` (float16 on disk by default) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = copy.deepcopy(model).cpu().eval()
    if fp16:
        m = m.half()
    m.save_pretrained(out)
    readme = out / "README.md"  # the mixin's generic card; ours is card.md
    if readme.exists():
        readme.unlink()
    return out


REPO = Path(__file__).resolve().parents[1]


def portable(obj):
    """``obj`` with this machine's paths into the repository made relative to it, and those into the shared data
    folder beside it written '../shared/...' (the way README names the data).

    Any other path (a temporary folder, another disk) stays as it is: relative to the clone's parent it would name
    nothing a reader of the card can find, and it would change with where the clone lives."""
    if isinstance(obj, str):
        return obj.replace(str(REPO) + "/", "").replace(str(REPO.parent / "shared") + "/", "../shared/")
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v) for v in obj]
    return obj


def machine_info() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0
