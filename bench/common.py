"""Timing helpers shared by the bench scripts: median/p95, machine facts, JSON + Markdown out."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def time_it(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
    """Run fn warmup + repeats times; median / p95 / min in milliseconds."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1000)
    ts.sort()
    p95 = ts[min(len(ts) - 1, int(round(0.95 * (len(ts) - 1))))]
    return {"median_ms": round(statistics.median(ts), 2), "p95_ms": round(p95, 2), "min_ms": round(ts[0], 2),
            "repeats": repeats}


def machine() -> dict:
    import importlib.metadata as md

    libs = {}
    for name in ("numpy", "torch", "opencv-python-headless", "scikit-image", "scikit-learn", "transformers",
                 "segmentation-models-pytorch", "timm", "gradio"):
        try:
            libs[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
            "python": platform.python_version(), "libraries": libs}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def write(name: str, rows: list[dict], extra: dict | None = None, path: str | None = None) -> Path:
    out = Path(path) if path else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"bench": name, "machine": machine(), "rows": rows, **(extra or {})}, indent=1))
    return out


def markdown(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)
