"""Parameter specs: what a preprocessing step or a classical segmenter takes, and the one check of given values.

A :class:`Param` declares a name, a label, a default and an inclusive range (or choices), enough for the UI to
build a slider, dropdown or checkbox. :func:`check_params` validates what a caller gives against the specs when a
step or segmenter is configured (MONAI's habit): unknown names and values out of range raise ``ValueError`` with
the allowed range, so the call itself takes only the image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Param", "check_params", "coerce"]


@dataclass(frozen=True)
class Param:
    """One parameter of a step or a segmenter, enough for the UI to build a slider/dropdown/checkbox.

    ``min``/``max`` are inclusive bounds for numeric kinds; ``choices`` for a
    dropdown. ``kind`` is derived: "choice" when ``choices`` is set, else
    "bool" / "int" / "float" from the type of ``default``.
    """

    name: str
    label: str
    default: float | int | str | bool
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None
    help: str = ""

    @property
    def kind(self) -> str:
        if self.choices is not None:
            return "choice"
        if isinstance(self.default, bool):
            return "bool"
        if isinstance(self.default, int):
            return "int"
        return "float"


def coerce(owner: str, p: Param, value) -> float | int | str | bool:
    """``value`` checked against ``p`` and given its kind (int, float, bool or a choice); ``ValueError`` naming
    ``owner.name`` and the allowed range or choices otherwise."""
    where = f"{owner}.{p.name}"
    kind = p.kind
    if kind == "choice":
        if not isinstance(value, str) or value not in p.choices:
            raise ValueError(f"{where} must be one of {', '.join(p.choices)}; got {value!r}")
        return value
    if kind == "bool":
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, (int, np.integer)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"{where} must be true or false; got {value!r}")
    if isinstance(value, (bool, np.bool_)) or value is None:
        raise ValueError(f"{where} must be a number in [{p.min}, {p.max}]; got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number in [{p.min}, {p.max}]; got {value!r}") from None
    if not np.isfinite(x):
        raise ValueError(f"{where} must be a finite number in [{p.min}, {p.max}]; got {value!r}")
    if kind == "int":
        if abs(x - round(x)) > 1e-9:
            raise ValueError(f"{where} must be a whole number in [{p.min}, {p.max}]; got {value!r}")
        x = int(round(x))
    if (p.min is not None and x < p.min) or (p.max is not None and x > p.max):
        raise ValueError(f"{where} must be in [{p.min}, {p.max}], got {value!r}")
    return x


def check_params(owner: str, specs: Sequence[Param], params: Mapping | None) -> dict:
    """Every parameter of ``specs`` as a new dict: given ones checked by :func:`coerce`, missing ones at their
    default. ``ValueError`` for a name ``specs`` lacks (the message lists the options) or a bad value
    (``"clahe.clip_limit must be in [0.5, 10.0], got 42"``); ``owner`` names the step or segmenter."""
    given = dict(params or {})
    unknown = sorted(set(given) - {p.name for p in specs})
    if unknown:
        raise ValueError(f"{owner} has no parameter {', '.join(map(repr, unknown))}; "
                         f"options: {', '.join(p.name for p in specs) or '(none)'}")
    return {p.name: coerce(owner, p, given[p.name]) if p.name in given else p.default for p in specs}
