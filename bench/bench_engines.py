"""Engine latency on this machine: U-Net, classifier, click model, random walker, generator, MedSAM.

python -m bench.bench_engines [--repeats N] [--weights-dir weights] [--json out.json]

Uses the shipped weights when present; otherwise builds each model's default
architecture with random weights (same cost). Times are per call on a
phantom slice, median and p95 over repeated runs, torch on the CPU with the
default thread count.
"""

# ruff: noqa: B023 - every lambda in a loop here is timed by time_it at once, in its own iteration

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bench.common import markdown, time_it, write


def _phantom(size: int) -> tuple[np.ndarray, tuple[int, int]]:
    try:
        from bt_demo.sim.phantom import flair_phantom

        img, lesion = flair_phantom((size, size), seed=0)
        ys, xs = np.nonzero(lesion)
        return img, (int(xs.mean()), int(ys.mean()))
    except ImportError:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:size, :size]
        img = 0.3 + 0.05 * rng.standard_normal((size, size))
        c = (int(size * 0.6), int(size * 0.4))
        img[(xx - c[0]) ** 2 + (yy - c[1]) ** 2 < (size // 12) ** 2] = 0.9
        return np.clip(img, 0, 1).astype(np.float32), c


def _engines(weights_dir: str | None):
    """(unet, classifier, clicks, source) from shipped weights, else default architectures."""
    from bt_demo.models.classifier import ClassifierEngine
    from bt_demo.models.clicks import ClickEngine
    from bt_demo.models.unet import UNetEngine

    wd = Path(weights_dir) if weights_dir else None
    u = UNetEngine.load(str(wd / "unet")) if wd else "no dir"
    c = ClassifierEngine.load(str(wd / "classifier")) if wd else "no dir"
    k = ClickEngine.load(str(wd / "clicks")) if wd else "no dir"
    source = {}
    if any(isinstance(e, str) for e in (u, c, k)):
        from bt_demo.models.nets import SegNet
        from tests.tiny_models import make_classifier

        tmp = Path(tempfile.mkdtemp())
        if isinstance(u, str):
            SegNet().save_pretrained(tmp / "unet"); u = UNetEngine.load(str(tmp / "unet")); source["unet"] = "random init"
        if isinstance(k, str):
            SegNet(task="clicks", in_channels=4).save_pretrained(tmp / "clicks"); k = ClickEngine.load(str(tmp / "clicks"))
            source["clicks"] = "random init"
        if isinstance(c, str):
            make_classifier(tmp / "cls", backbone="small_cnn", input_size=128); c = ClassifierEngine.load(str(tmp / "cls"))
            source["classifier"] = "random init"
    return u, c, k, source


def _generator_rows(weights_dir: str | None, repeats: int) -> list[dict]:
    """The synthetic-slice generator: one slice at the app's default 25 DDIM steps (and 50), at the shipped
    model's size; the same channels at 128² with random weights (the cost of a larger generator)."""
    from bt_demo.models import weights
    from bt_demo.models.generator import GeneratorEngine, MaskConditionedDiffusion

    gen = GeneratorEngine.load(str(Path(weights_dir) / "diffusion")) if weights_dir else "no dir"
    label = "shipped"
    if isinstance(gen, str):
        gen, label = GeneratorEngine(MaskConditionedDiffusion(sample_size=64).eval()), "random init"
    mask = np.zeros((256, 256), bool)
    mask[100:150, 90:160] = True
    rows = [{"item": f"synthetic slice, {steps} DDIM steps", "size": gen.size, "weights": label,
             **time_it(lambda: gen.generate(mask, seed=0, steps=steps), repeats)} for steps in (25, 50)]
    cfg = weights.model_config(gen.model)
    big = GeneratorEngine(MaskConditionedDiffusion(**(cfg | {"sample_size": 128})).eval())
    rows.append({"item": "synthetic slice, 25 DDIM steps (same network at 128²)", "size": 128, "weights": "random init",
                 **time_it(lambda: big.generate(mask, seed=0, steps=25), repeats)})
    return rows


def _medsam_rows(weights_dir: str | None, repeats: int, threads: int = 2) -> list[dict]:
    """LiteMedSAM at ``threads`` torch threads (issue 22's budget): the image encoder (``set_image`` on a new
    slice, i.e. a cache miss), the mask decoder for a box, and the fine-tuned click decoder (weights/medsam_clicks)
    for 1 and 3 clicks with the previous answer as the mask prompt. Empty when the checkpoint does not verify."""
    import torch

    from bt_demo.models import medsam

    eng = medsam.MedSamEngine.load("cpu")
    if isinstance(eng, str):
        print(f"skipping MedSAM rows: {eng}")
        return []
    n0 = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for size in (256, 512):
            img, (cx, cy) = _phantom(size)
            calls = iter(range(10 ** 6))  # a new key each call: the encoder runs every time (no cache hit)
            rows.append({"item": f"MedSAM image encoder (set_image, {threads} threads)", "size": size,
                         "weights": "LiteMedSAM", **time_it(lambda: eng.set_image(img, key=f"b{next(calls)}"),
                                                            max(3, repeats // 4))})
            eng.set_image(img, key="bench")
            r = size // 8
            box = (cx - r, cy - r, cx + r, cy + r)
            rows.append({"item": f"MedSAM decoder, box ({threads} threads)", "size": size, "weights": "LiteMedSAM",
                         **time_it(lambda: eng.predict(None, None, box=box), repeats)})
            rows += _encoder_head_rows(weights_dir, img, size, threads, repeats)
            folder = Path(weights_dir or "") / "medsam_clicks"
            if (folder / "config.json").exists():
                mc = medsam.MedSamEngine.load("cpu", clicks=folder)
                mc.set_image(img, key="bench")
                first = mc.predict([(cx, cy)], [1])
                rows.append({"item": f"MedSAM clicks decoder, 1 click ({threads} threads)", "size": size,
                             "weights": "shipped", **time_it(lambda: mc.predict([(cx, cy)], [1]), repeats)})
                pts = [(cx, cy), (cx + size // 20, cy), (cx - size // 10, cy + size // 10)]
                rows.append({"item": f"MedSAM clicks decoder, 3 clicks + previous ({threads} threads)", "size": size,
                             "weights": "shipped",
                             **time_it(lambda: mc.predict(pts, [1, 1, 0], previous=first), repeats)})
    finally:
        torch.set_num_threads(n0)
    return rows


def _encoder_head_rows(weights_dir: str | None, img: np.ndarray, size: int, threads: int, repeats: int) -> list[dict]:
    """What the shipped heads on LiteMedSAM's encoder add once the slice is encoded (key "bench", cached by the
    caller): the classifier heads (weights/encoder_heads) and the U-Net's refining decoder (weights/medsam_seg)."""
    from bt_demo.models.encoder_heads import EncoderHeads
    from bt_demo.models.medsam_seg import EncoderDecoderEngine

    rows = []
    root = Path(weights_dir or Path(__file__).resolve().parents[1] / "weights")
    heads = EncoderHeads.load(root / "encoder_heads")
    if not isinstance(heads, str):
        rows.append({"item": f"classifier heads on LiteMedSAM's encoder, slice encoded ({threads} threads)",
                     "size": size, "weights": "shipped", **time_it(lambda: heads.classify(img, key="bench"), repeats)})
    ref = EncoderDecoderEngine.load(root / "medsam_seg")
    if not isinstance(ref, str):
        rows.append({"item": f"U-Net outline decoder on LiteMedSAM's encoder, slice encoded ({threads} threads)",
                     "size": size, "weights": "shipped", **time_it(lambda: ref.refine(img, key="bench"), repeats)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--weights-dir", default=str(Path(__file__).resolve().parents[1] / "weights"))
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from bt_demo.models.classical import RandomWalkerEngine

    unet, cls, clicks, source = _engines(args.weights_dir)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        img, (cx, cy) = _phantom(size)
        rows.append({"item": "U-Net probabilities + mask", "size": size,
                     **time_it(lambda: unet.segment(img), args.repeats)})
        rows.append({"item": "classifier (calibrated probs)", "size": size, **time_it(lambda: cls.classify(img), args.repeats)})
        rows.append({"item": "classifier Grad-CAM (one head)", "size": size,
                     **time_it(lambda: cls.gradcam(img, "presence"), max(3, args.repeats // 4))})
        # what the app does for a new slice: both heads' probabilities and a Grad-CAM of each head
        rows.append({"item": "classifier call + both Grad-CAMs", "size": size,
                     **time_it(lambda: (cls.classify(img), cls.gradcam(img, "presence"), cls.gradcam(img, "type")),
                               args.repeats)})
        clicks.set_image(img)
        first = clicks.predict([(cx, cy)], [1])
        rows.append({"item": "click model, 1 click", "size": size, **time_it(lambda: clicks.predict([(cx, cy)], [1]), args.repeats)})
        pts = [(cx, cy), (cx + size // 20, cy), (cx - size // 10, cy + size // 10)]
        rows.append({"item": "click model, 3 clicks + previous", "size": size,
                     **time_it(lambda: clicks.predict(pts, [1, 1, 0], previous=first), args.repeats)})
        # cost against the number of clicks: each click adds a disk to the click maps, one forward pass regardless
        rng = np.random.default_rng(0)
        for n in (5, 10, 20):
            many = [(cx, cy)] + [(int(x), int(y)) for x, y in rng.integers(size // 8, size - size // 8, size=(n - 1, 2))]
            labs = [1] + [int(v) for v in rng.integers(0, 2, size=n - 1)]
            rows.append({"item": f"click model, {n} clicks + previous", "size": size,
                         **time_it(lambda: clicks.predict(many, labs, previous=first), max(5, args.repeats // 2))})
        rw = RandomWalkerEngine()
        rw.set_image(img)
        rows.append({"item": "random walker, 1 click", "size": size, **time_it(lambda: rw.predict([(cx, cy)], [1]), max(5, args.repeats // 2))})
    for r in rows:
        r["weights"] = source.get({"U": "unet", "c": "classifier"}.get(r["item"][0], "clicks"), "shipped") if not r["item"].startswith("random") else "-"
    rows += _generator_rows(args.weights_dir, max(3, args.repeats // 5))
    rows += _medsam_rows(args.weights_dir, args.repeats)
    print(markdown(rows, ["item", "size", "median_ms", "p95_ms", "weights"]))
    out = write("engines", rows, {"weights_source": source}, args.json)
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
