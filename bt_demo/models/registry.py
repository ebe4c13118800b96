"""Which engines can answer right now, why the others cannot, and which answers clicks.

One ``Engines`` object per process (the app makes it from its flags). Models
load lazily on first use and are cached for the process; promptable engines
are handed out as a *new predictor per session* (they hold that session's
image) sharing the cached model underneath.

Default for clicks: SAM if loadable, else the built-in click model, else the
classical random walker (always available).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

PROMPT_ENGINES = {
    "sam": "SAM / SAM 2",
    "clicks": "built-in click model",
    "random_walker": "random walker (classical)",
}
FALLBACK_ORDER = ("sam", "clicks", "random_walker")


@dataclass(frozen=True)
class EngineStatus:
    key: str
    label: str
    available: bool
    reason: str = ""   # why not, when unavailable; what is loaded, when available


class Engines:
    """Process-wide engine registry.

    weights_dir: folder with unet/, clicks/, classifier/ (None: $BT_WEIGHTS_DIR or <repo>/weights).
    sam_model: hub id or folder for SAM/SAM 2 (None: $BT_SAM_MODEL or bt_demo.models.sam.DEFAULT_SAM_ID);
    "none" disables SAM.
    """

    def __init__(self, weights_dir: str | None = None, sam_model: str | None = None, device: str | None = None):
        from bt_demo.models import weights

        self.weights_dir = str(weights_dir or weights.weights_dir())
        self.sam_model = sam_model if sam_model is not None else os.environ.get("BT_SAM_MODEL")
        self.device = device
        self._lock = threading.Lock()
        self._results: dict[str, object] = {}

    def _path(self, name: str) -> str:
        return os.path.join(self.weights_dir, name)

    def _get(self, key: str, loader):
        with self._lock:
            if key not in self._results:
                try:
                    self._results[key] = loader()
                except Exception as exc:  # noqa: BLE001 - an engine that fails is reported, not raised
                    self._results[key] = f"{key} unavailable, because {type(exc).__name__}: {exc}"
            return self._results[key]

    # -- automatic engines (stateless, shared) ------------------------------
    def unet(self):
        """UNetEngine or a str reason."""
        from bt_demo.models.unet import UNetEngine

        return self._get("unet", lambda: UNetEngine.load(self._path("unet"), self.device))

    def classifier(self):
        from bt_demo.models.classifier import ClassifierEngine

        return self._get("classifier", lambda: ClassifierEngine.load(self._path("classifier"), self.device))

    # -- promptable engines (one predictor per session) ---------------------
    def _sam_probe(self):
        if (self.sam_model or "").lower() in ("none", "off", "disabled"):
            return "SAM unavailable, because it was disabled (--sam-model none)"
        from bt_demo.models import sam

        return sam.SamEngine.load(self.sam_model or sam.default_model_id(self.device), self.device)

    def _clicks_probe(self):
        from bt_demo.models.clicks import ClickEngine

        return ClickEngine.load(self._path("clicks"), self.device)

    def new_predictor(self, key: str):
        """A fresh predictor for one session, or a str reason it is unavailable."""
        if key not in PROMPT_ENGINES:
            raise KeyError(f"unknown engine {key!r}; choose one of {list(PROMPT_ENGINES)}")
        if key == "random_walker":
            from bt_demo.models.classical import RandomWalkerEngine

            return RandomWalkerEngine()
        probe = self._get(key, self._sam_probe if key == "sam" else self._clicks_probe)
        if isinstance(probe, str):
            return probe
        if hasattr(probe, "new_session"):  # SAM: shares model, processor and embedding cache
            return probe.new_session()
        return type(probe)(probe.model)

    def statuses(self) -> list[EngineStatus]:
        """Every engine, available or not, with its reason. Loads what was not tried yet."""
        out = []
        for key, label, obj in (("unet", "U-Net (automatic)", self.unet()),
                                ("classifier", "classifier", self.classifier())):
            out.append(EngineStatus(key, label, not isinstance(obj, str), obj if isinstance(obj, str) else "loaded"))
        for key, label in PROMPT_ENGINES.items():
            p = self.new_predictor(key)
            out.append(EngineStatus(key, label, not isinstance(p, str), p if isinstance(p, str) else getattr(p, "name", label)))
        return out

    def available_prompt_engines(self) -> list[str]:
        return [k for k in FALLBACK_ORDER if not isinstance(self.new_predictor(k), str)]

    def default_prompt_engine(self) -> str:
        """SAM if loadable, else the click model, else the random walker."""
        return self.available_prompt_engines()[0]
