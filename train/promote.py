"""Replace shipped weights only by better ones.

Every training run exports and evaluates its model in ``<run>/candidate``;
:func:`promote` then copies it over the shipped folder (``--out``, for example
``weights/unet``) only when the held-out headline metric of its card beats the
shipped card's (or there is no shipped card, or ``--force``). So the
repository's history gains a new ~5-10 MB ``model.safetensors`` only for a
real improvement.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# the card metric that decides, per task (higher is better for all three)
HEADLINE = {"segmentation": "patient_dice_mean", "clicks": "dice_after_3_clicks", "classification": "macro_f1",
            "generation": "val_loss"}
LOWER_IS_BETTER = {"val_loss"}
FILES = ("config.json", "model.safetensors", "card.json", "card.md", "samples.png", "curves.png")


def headline(card: dict) -> tuple[str, float]:
    key = HEADLINE[card["task"]]
    return key, float(card["metrics"][key])


def promote(candidate: str | Path, out: str | Path, force: bool = False) -> tuple[bool, str]:
    """Copy candidate's files over out when better; returns (promoted, a sentence saying why)."""
    candidate, out = Path(candidate), Path(out)
    new = json.loads((candidate / "card.json").read_text())
    key, new_v = headline(new)
    old_p = out / "card.json"
    if old_p.exists() and not force:
        old = json.loads(old_p.read_text())
        if old.get("task") == new["task"] and key in old.get("metrics", {}):
            old_v = float(old["metrics"][key])
            if (new_v >= old_v) if key in LOWER_IS_BETTER else (new_v <= old_v):
                return False, (f"kept the shipped {out}: its {key} {old_v:.4f} is not beaten by this run's "
                               f"{new_v:.4f} (the candidate stays in {candidate}; --force replaces anyway)")
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if (candidate / name).exists():
            tmp = out / f".{name}.tmp"
            shutil.copyfile(candidate / name, tmp)
            tmp.replace(out / name)
    return True, f"shipped to {out}: {key} {new_v:.4f}"
