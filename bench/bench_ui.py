"""Latency of the UI's handlers (what a click or an upload costs on the server), median and p95.

    python bench/bench_ui.py                      # weights/ if complete, else same-size random models
    python bench/bench_ui.py --weights-dir weights --repeats 7

Measures, on the 256 x 256 phantom (assets/examples/phantom_flair.png):

* upload -> every automatic panel (read, preprocess, U-Net, K-Means,
  classifier + Grad-CAM, render): ``panels.upload.load_file`` on a fresh session;
* the chained ``prepare_prompts`` (the predictor's ``set_image``);
* a click -> prompted mask + comparison (click model, then random walker);
* a preprocessing change, a U-Net threshold change, a K change, the K sweep.

Without trained weights it builds random models of the *shipped architectures*
(train/ defaults: MobileNetV3-large U-Nets at 256 px, a MobileNetV3-large
classifier at 192 px), so the timings are those of the real network sizes.
Threads are capped as ``app.py`` caps them (cores // concurrency).
Writes bench/results/ui_latency.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def same_size_weights(root: Path) -> Path:
    """Random models with the shipped architectures (see train/segmentation.py, train/classifier.py)."""
    from tests.tiny_models import make_classifier, make_seg

    seg = dict(encoder_name="tu-mobilenetv3_large_100", encoder_depth=5, decoder_channels=[128, 64, 48, 32, 16],
               input_size=256)
    make_seg(root / "unet", "segmentation", **seg)
    make_seg(root / "clicks", "clicks", **seg)
    make_classifier(root / "classifier", backbone="mobilenetv3_large_100", input_size=192)
    return root


def main(argv=None) -> int:
    import app

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="as app.py --threads (0: cores // concurrency)")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    threads = app.limit_threads(args.threads, args.concurrency)

    import numpy as np
    from PIL import Image
    from scipy import ndimage

    from bench.common import time_it, write
    from bt_demo.models.registry import Engines
    from bt_demo.ui import compute as C
    from bt_demo.ui.panels import compare as CMP
    from bt_demo.ui.panels import kmeans as KM
    from bt_demo.ui.panels import preprocessing as PP
    from bt_demo.ui.panels import prompts as PR
    from bt_demo.ui.panels import upload as UP
    from bt_demo.ui.state import Session

    example = REPO / "assets" / "examples" / "phantom_flair.png"
    mask = np.asarray(Image.open(example.with_name("phantom_flair_mask.png"))) > 0
    d = ndimage.distance_transform_edt(mask)
    cy, cx = np.unravel_index(int(np.argmax(d)), d.shape)

    tmp = tempfile.TemporaryDirectory()
    wdir = Path(args.weights_dir) if args.weights_dir else REPO / "weights"
    kind = "trained weights"
    if not all((wdir / m / "config.json").exists() for m in ("unet", "clicks", "classifier")):
        wdir, kind = same_size_weights(Path(tmp.name) / "w"), "random weights, shipped architectures"
    engines = Engines(weights_dir=str(wdir), sam_model="none", device="cpu")
    print(f"models: {kind} ({wdir}); threads {threads}")

    def display(s, x, y):
        f = s.display_factor
        return [(x + 0.5) * f - 0.5, (y + 0.5) * f - 0.5]

    def loaded():
        s, _ = UP.load_file(Session(), engines, str(example))
        s, _ = C.prepare_prompts(s, engines)
        return s

    rows = []

    def add(name, fn, repeats=args.repeats):
        r = time_it(fn, repeats=repeats, warmup=1)
        rows.append({"event": name, **r})
        print(f"{name:<52} median {r['median_ms']:8.1f} ms   p95 {r['p95_ms']:8.1f} ms")

    add("upload -> all automatic panels (load_file)", lambda: UP.load_file(Session(), engines, str(example)))
    parts = []
    for _ in range(args.repeats):
        _, v = UP.load_file(Session(), engines, str(example))
        parts.append(v["_timings"])
    breakdown = {k: round(1000 * float(np.median([t[k] for t in parts])), 1) for k in parts[0]}
    print("  breakdown (median ms):", breakdown)

    s0, _ = UP.load_file(Session(), engines, str(example))
    add("chained prepare_prompts (new predictor + set_image)", lambda: C.prepare_prompts(fresh_slot(s0), engines))

    s = loaded()
    add("click -> mask + comparison (click model)",
        lambda: PR.click(copy_session(s), engines, display(s, cx, cy), "positive"))
    s_rw, _ = PR.switch_engine(loaded(), engines, "random_walker")
    add("click -> mask + comparison (random walker)",
        lambda: PR.click(copy_session(s_rw), engines, display(s_rw, cx, cy), "positive"))

    from bt_demo.image.preprocess import default_pipeline

    spec = list(default_pipeline()) + [("clahe", {})]
    add("preprocessing change (+CLAHE) -> every panel",
        lambda: PP.set_preprocessing(loaded_fresh_pipeline(s), engines, spec))
    add("U-Net threshold change (cached probabilities)", lambda: CMP.set_threshold(s, engines, 0.4))
    add("K change (K-Means re-fit)", lambda: KM.set_k(s, 5 if s.kmeans_k != 5 else 6))
    add("K sweep 2..12", lambda: KM.run_sweep(uncached_sweep(s)), repeats=max(2, args.repeats // 2))

    out = write("ui_latency", rows, {"models": kind, "threads": threads, "image": "phantom_flair.png 256x256",
                                      "upload_breakdown_ms": breakdown}, args.out)
    print(f"wrote {out}")
    return 0


def copy_session(s):
    """A session with the same content and its own (fresh) predictor slot."""
    import copy

    c = copy.deepcopy(s)
    if s.slot is not None:
        c.slot = s.slot  # the same predictor, already holding this image: a click is what we time
    return c


def fresh_slot(s):
    import copy

    c = copy.deepcopy(s)
    c.slot = None
    return c


def loaded_fresh_pipeline(s):
    import copy

    c = copy.deepcopy(s)
    c.slot = s.slot
    return c


def uncached_sweep(s):
    s.sweep, s.sweep_key = None, None
    return s


if __name__ == "__main__":
    raise SystemExit(main())
