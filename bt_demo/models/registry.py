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
    "medsam": "MedSAM (LiteMedSAM, box prompts)",
    "medsam_clicks": "MedSAM clicks (LiteMedSAM decoder fine-tuned for clicks)",
}
# engines whose set_image takes seconds: the UI runs it after the other panels are shown, off the click path
SLOW_IMAGE_ENGINES = ("sam", "medsam", "medsam_clicks")
# The first available engine is the default. The click model comes before MedSAM because it has the better
# validation Dice after 3 clicks in the three-engine protocol table (docs/studies.md, "Three prompt engines";
# `python -m train engine-protocol`); MedSAM and MedSAM clicks stay in the chooser when they load.
FALLBACK_ORDER = ("sam", "clicks", "random_walker", "medsam_clicks", "medsam")


_IMPORT_LOCK = threading.Lock()


def _import_stack() -> None:
    """Import the network libraries the engines share, one thread at a time. Engines load in parallel
    threads, and two threads importing torchvision / smp at once made Python give up on a circular import
    ("_DeadlockError: deadlock detected by _ModuleLock('torchvision.ops.misc')": the U-Net then showed as
    unavailable, seen in the browser). Once imported, this costs nothing."""
    with _IMPORT_LOCK:
        import segmentation_models_pytorch  # noqa: F401 - imports torch, torchvision and timm


@dataclass(frozen=True)
class EngineStatus:
    key: str
    label: str
    available: bool
    reason: str = ""   # why not, when unavailable; what is loaded, when available


class Engines:
    """Process-wide engine registry.

    weights_dir: folder with unet/, clicks/, classifier/, diffusion/ (None: $BT_WEIGHTS_DIR or <repo>/weights).
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
        self._loading: dict[str, threading.Event] = {}

    def _path(self, name: str) -> str:
        return os.path.join(self.weights_dir, name)

    def _get(self, key: str, loader, wait: bool = True):
        """The engine (or reason) for ``key``, loading it on first use.

        Loads of different engines run in parallel; with wait=False a load in
        progress answers "still loading" instead of blocking (SAM's first
        download, or its network time-out offline, can take tens of seconds).
        """
        with self._lock:
            if key in self._results:
                return self._results[key]
            ev = self._loading.get(key)
            owner = ev is None
            if owner:
                ev = self._loading[key] = threading.Event()
        if owner and not wait:
            # nobody is loading it yet: load in the background, never in the caller's thread (building the
            # page asks with wait=False, and SAM's hub lookup offline took 24 s of retries there)
            threading.Thread(target=self._load_into, args=(key, loader, ev), name=f"load-{key}", daemon=True).start()
            return f"{key} is still loading; try again in a moment"
        if not owner:
            if not wait and not ev.is_set():
                return f"{key} is still loading; try again in a moment"
            ev.wait()
            return self._results[key]
        return self._load_into(key, loader, ev)

    def _load_into(self, key: str, loader, ev: threading.Event):
        try:
            _import_stack()
            result = loader()
        except Exception as exc:  # noqa: BLE001 - an engine that fails is reported, not raised
            result = f"{key} unavailable, because {type(exc).__name__}: {exc}"
        with self._lock:
            self._results[key] = result
        ev.set()
        return result

    def preload(self, background: bool = True) -> threading.Thread | None:
        """Load every engine now (in a daemon thread by default) so the first user does not wait."""
        def run():
            for key, loader in (("unet", self._unet_loader), ("classifier", self._cls_loader),
                                ("clicks", self._clicks_probe), ("sam", self._sam_probe),
                                ("medsam", self._medsam_probe), ("medsam_clicks", self._medsam_clicks_probe),
                                ("encoder_heads", self._heads_loader), ("refiner", self._refiner_loader)):
                self._get(key, loader)
        if not background:
            run()
            return None
        t = threading.Thread(target=run, name="engine-preload", daemon=True)
        t.start()
        return t

    def _unet_loader(self):
        from bt_demo.models.unet import UNetEngine

        return UNetEngine.load(self._path("unet"), self.device)

    def _cls_loader(self):
        from bt_demo.models.classifier import ClassifierEngine

        return ClassifierEngine.load(self._path("classifier"), self.device)

    def _gen_loader(self):
        from bt_demo.models.generator import GeneratorEngine

        return GeneratorEngine.load(self._path("diffusion"), self.device)

    def _heads_loader(self):
        from bt_demo.models.encoder_heads import EncoderHeads

        return EncoderHeads.load(self._path("encoder_heads"), self.device)

    def _refiner_loader(self):
        from bt_demo.models.medsam_seg import EncoderDecoderEngine

        return EncoderDecoderEngine.load(self._path("medsam_seg"), self.device)

    def refiner(self, wait: bool = True):
        """EncoderDecoderEngine (the U-Net's mask outlined again on LiteMedSAM's encoder) or a str reason."""
        return self._get("refiner", self._refiner_loader, wait=wait)

    def encoder_heads(self, wait: bool = True):
        """EncoderHeads (presence and type on LiteMedSAM's encoder) or a str reason; loaded on first use."""
        return self._get("encoder_heads", self._heads_loader, wait=wait)

    def generator(self, wait: bool = True):
        """GeneratorEngine (the synthetic-slice generator) or a str reason; loaded on first use."""
        return self._get("generator", self._gen_loader, wait=wait)

    def unet_threshold(self) -> float:
        """The U-Net's probability threshold from its config.json (0.5 when there is none), without loading it."""
        import json

        try:
            return float(json.loads(open(os.path.join(self._path("unet"), "config.json")).read())["threshold"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0.5

    # -- automatic engines (stateless, shared) ------------------------------
    def unet(self):
        """UNetEngine or a str reason."""
        return self._get("unet", self._unet_loader)

    def classifier(self):
        """ClassifierEngine or a str reason."""
        return self._get("classifier", self._cls_loader)

    # -- promptable engines (one predictor per session) ---------------------
    def _sam_probe(self):
        if (self.sam_model or "").lower() in ("none", "off", "disabled"):
            return "SAM unavailable, because it was disabled (--sam-model none)"
        from bt_demo.models import sam

        return sam.SamEngine.load(self.sam_model or sam.default_model_id(self.device), self.device)

    def _clicks_probe(self):
        from bt_demo.models.clicks import ClickEngine

        return ClickEngine.load(self._path("clicks"), self.device)

    def _medsam_probe(self):
        """MedSamEngine, or "MedSAM not offered: <reason>" (missing/altered checkpoint, package absent)."""
        from bt_demo.models import medsam

        return medsam.MedSamEngine.load(self.device)

    def _medsam_clicks_probe(self):
        """MedSamEngine with the fine-tuned click decoder of <weights>/medsam_clicks, or why not."""
        from bt_demo.models import medsam

        folder = self._path("medsam_clicks")
        if not os.path.isfile(os.path.join(folder, "config.json")):
            return f"MedSAM clicks not offered: no fine-tuned decoder in {folder}"
        return medsam.MedSamEngine.load(self.device, clicks=folder)

    def _probe(self, key: str):
        return {"sam": self._sam_probe, "clicks": self._clicks_probe, "medsam": self._medsam_probe,
                "medsam_clicks": self._medsam_clicks_probe}[key]

    def new_predictor(self, key: str, wait: bool = True):
        """A fresh predictor for one session, or a str reason it is unavailable.

        wait=False: if the engine is still loading (see ``preload``), say so instead of blocking.
        """
        if key not in PROMPT_ENGINES:
            raise KeyError(f"unknown engine {key!r}; choose one of {list(PROMPT_ENGINES)}")
        if key == "random_walker":
            from bt_demo.models.classical import RandomWalkerEngine

            return RandomWalkerEngine()
        probe = self._get(key, self._probe(key), wait=wait)
        if isinstance(probe, str):
            return probe
        if hasattr(probe, "new_session"):  # SAM, MedSAM: share model and embedding cache
            return probe.new_session()
        return type(probe)(probe.model)

    def statuses(self, wait: bool = True) -> list[EngineStatus]:
        """Every engine, available or not, with its reason. Loads what was not tried yet
        (wait=False: engines still loading are reported as such)."""
        out = []
        for key, label, loader in (("unet", "U-Net (automatic)", self._unet_loader),
                                   ("classifier", "classifier", self._cls_loader),
                                   ("encoder_heads", "classifier heads on LiteMedSAM's encoder", self._heads_loader),
                                   ("refiner", "U-Net outline refined on LiteMedSAM's encoder", self._refiner_loader)):
            obj = self._get(key, loader, wait=wait)
            out.append(EngineStatus(key, label, not isinstance(obj, str), obj if isinstance(obj, str) else "loaded"))
        for key, label in PROMPT_ENGINES.items():
            p = self.new_predictor(key, wait=wait)
            what = p if isinstance(p, str) else getattr(p, "name", label)
            if not isinstance(p, str) and getattr(p, "card_line", ""):
                what += f" ({p.card_line})"
            out.append(EngineStatus(key, label, not isinstance(p, str), what))
        return out

    def available_prompt_engines(self, wait: bool = True) -> list[str]:
        return [k for k in FALLBACK_ORDER if not isinstance(self.new_predictor(k, wait=wait), str)]

    def default_prompt_engine(self, wait: bool = True) -> str:
        """SAM if loadable, else the click model, else the random walker (always available)."""
        return self.available_prompt_engines(wait=wait)[0]
