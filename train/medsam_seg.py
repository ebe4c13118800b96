"""python -m train medsam-seg: the segmentation study's "decoder on the pretrained encoder" row (issue 25, part 3).

A U-Net-style decoder (``bt_demo.models.medsam_seg``) trained on LiteMedSAM's FROZEN image encoder: its
embedding (neck, 64 x 64) and second-stage map (s1, 128 x 128) come from the on-disk cache of
``python -m train embeddings`` (computed once; training never runs the encoder), the prepared slice itself is
the full-size skip. Patients are the segmentation study's (``--split-file``, by default the shipped U-Net's
card: the same train / validation patients as every other row); validation measures what the U-Net rows
measure (``train.seg_eval.seg_metrics``: mean per-patient Dice over every slice of each validation patient,
false positives on tumour-free slices), with threshold and smallest component chosen on validation at the
end, as the U-Net's are.

The caches it reads (made first, resumable):

    python -m train embeddings --dataset lgg --split-file weights/unet/card.json --split val --stages s1
    python -m train embeddings --dataset lgg --split-file weights/unet/card.json --split train --stages s1 \\
        --free-per-patient 4

No augmentation: the features are cached, and a flipped slice's embedding is not the flipped embedding.
Fine-tuning the encoder itself (the issue's "fine-tuned" row) costs a forward and backward pass through TinyViT
per sample; ``--measure-finetune`` times one such step so the study can say what a run would cost here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from train import common
from train.embeddings import open_cache, split_patients

DEFAULT_SPLIT = "weights/unet/card.json"


def _mask_256(mask: np.ndarray, valid_hw: tuple[int, int]) -> np.ndarray:
    """The expert mask in LiteMedSAM's padded 256 frame (nearest resize of the slice, zero padding)."""
    import cv2

    h, w = int(valid_hw[0]), int(valid_hw[1])
    m = mask.astype(np.uint8)
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
    out = np.zeros((256, 256), np.float32)
    out[:h, :w] = m > 0
    return out


def neighbour_file(data_root: Path, rel: str, slice_no: int, offset: int) -> Path:
    """The slice ``offset`` away from ``rel`` (``<patient>/<patient>_<n>.<ext>``) in the same patient; past the
    volume's first or last slice, the nearest one that exists (so an edge slice repeats itself)."""
    f = data_root / rel
    stem = f.name[: -len(f"_{slice_no}{f.suffix}")]
    step = -1 if offset > 0 else 1
    for d in range(offset, 0, step):
        g = f.with_name(f"{stem}_{slice_no + d}{f.suffix}")
        if g.exists():
            return g
    return f


class CachedSet:
    """The cached slices of some patients: encoder outputs on disk (mmap), prepared image(s), masks in RAM.

    ``context`` K > 0 adds the K slices either side (read from the data folder, prepared the same way) as
    extra image channels: the 2.5-D row."""

    def __init__(self, cache_dir: str | Path, patients: list[str], data_root: Path, context: int = 0):
        from bt_demo.models import medsam
        from train.lgg import read_gray

        cache = open_cache(cache_dir)
        wanted = set(patients)
        self.cache = cache
        self.ids = [i for i in cache.ids if cache.rows[i].get("patient") in wanted
                    and (cache.dir / "stages" / "s1" / f"{i}.npy").exists()]
        self.ids.sort(key=lambda i: (cache.rows[i]["patient"], int(cache.rows[i]["slice"])))
        self.patients = np.array([cache.rows[i]["patient"] for i in self.ids])
        self.images, self.masks, self.masks256, self.valid = [], [], [], []
        for i in self.ids:
            r = cache.rows[i]
            chans = []
            for d in range(-context, context + 1):
                img = read_gray(neighbour_file(data_root, r["file"], int(r["slice"]), d), flair=True)
                x, v = medsam.prepare(img)
                chans.append(x[0, 0].numpy().astype(np.float16))
                if d == 0:
                    valid = v
            self.images.append(np.stack(chans))
            m = read_gray(data_root / r["mask"], flair=False) > 127
            self.masks.append(m)
            self.masks256.append(_mask_256(m, valid))
            self.valid.append(tuple(valid))
        self.has_tumour = np.array([m.any() for m in self.masks], bool)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, idx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        neck = np.stack([self.cache.embedding(self.ids[i]) for i in idx]).astype(np.float32)
        s1 = np.stack([self.cache.stage("s1", self.ids[i]) for i in idx]).astype(np.float32)
        img = np.stack([self.images[i] for i in idx]).astype(np.float32)
        y = np.stack([self.masks256[i] for i in idx])[:, None]
        return torch.from_numpy(neck), torch.from_numpy(s1), torch.from_numpy(img), torch.from_numpy(y)


def dice_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * y).sum((1, 2, 3))
    return (1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1)).mean()


@torch.inference_mode()
def predict_probs(model, data: CachedSet, batch: int = 16, device="cpu") -> np.ndarray:
    """float32 (N, H, W) probabilities in each slice's own pixels."""
    from bt_demo.models.medsam_seg import logits_to_probs

    model.eval()
    out = []
    for s in range(0, len(data), batch):
        idx = list(range(s, min(len(data), s + batch)))
        neck, s1, img, _ = data.batch(idx)
        logits = model(neck.to(device), s1.to(device), img.to(device)).float().cpu().numpy()[:, 0]
        out.extend(logits_to_probs(lg, data.valid[i], data.masks[i].shape) for lg, i in zip(logits, idx, strict=True))
    return np.stack(out)


def evaluate(model, data: CachedSet, device="cpu", threshold: float = 0.5, min_px: int = 0) -> dict:
    from train.seg_eval import apply_post, seg_metrics

    probs = predict_probs(model, data, device=device)
    return seg_metrics(apply_post(probs, threshold, min_px), np.stack(data.masks), data.patients)


def measure_finetune_step(batch: int = 2, steps: int = 3) -> dict:
    """Seconds per forward+backward through LiteMedSAM's image encoder at 256 (what fine-tuning it costs)."""
    import copy

    from bt_demo.models.medsam import load_model

    enc = copy.deepcopy(load_model("cpu").image_encoder)  # the process-wide model stays frozen
    enc.train().requires_grad_(True)
    x = torch.rand(batch, 3, 256, 256)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = enc(x)
        out.float().mean().backward()
        times.append(time.perf_counter() - t0)
    return {"batch": batch, "s_per_step_median": float(np.median(times)),
            "s_per_sample": float(np.median(times)) / batch, "threads": torch.get_num_threads()}


def evaluate_folder(args) -> int:
    """--evaluate: an exported decoder on the split's patients, with the post-processing stored in it."""
    from bt_demo.models import medsam_seg
    from train.lgg import DATA_ROOT
    from train.seg_eval import apply_post, seg_metrics

    if args.threads:
        torch.set_num_threads(args.threads)
    model, cfg = medsam_seg.load(args.evaluate)
    root = Path(args.data) if args.data else DATA_ROOT / "lgg"
    pats = split_patients(args.split_file, args.split)
    data = CachedSet(args.cache, pats, root, context=int(cfg.get("context", 0)))
    if len(set(data.patients)) != len(pats):
        raise SystemExit(f"{len(set(data.patients))} of {len(pats)} {args.split} patients are in {args.cache}; run "
                         f"python -m train embeddings --dataset lgg --split-file {args.split_file} --split "
                         f"{args.split} --stages s1")
    post = cfg["postprocessing"]
    probs = predict_probs(model, data)
    m = seg_metrics(apply_post(probs, post["threshold"], post["min_component_px"]), np.stack(data.masks), data.patients)
    m["patient_dice_worst"] = float(min(m["per_patient"].values()))
    out = Path(args.evaluate) / f"eval_{args.split}.json"
    out.write_text(json.dumps(common.portable({"split": args.split, "patients": pats, "postprocessing": post,
                                                "metrics": m, "command": "python -m train medsam-seg --evaluate "
                                                f"{args.evaluate} --split {args.split}"}), indent=1, default=float))
    print(f"{args.split}: per-patient Dice {m['patient_dice_mean']:.4f} (worst {m['patient_dice_worst']:.3f}), slice Dice "
          f"{m['slice_dice_tumour_mean']:.4f}, FP {m['fp_rate_tumour_free']:.3f} -> {out}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train medsam-seg", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default="runs/embeddings/lgg", help="the LGG embedding cache (with --stages s1)")
    p.add_argument("--data", default=None, help="LGG folder (default ../shared/data/lgg)")
    p.add_argument("--split-file", default=DEFAULT_SPLIT, help="patient split (default: the shipped U-Net's card)")
    p.add_argument("--run-dir", default="runs/medsam_seg")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--steps-per-epoch", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--tumour-share", type=float, default=0.67, help="share of tumour slices in a batch")
    p.add_argument("--width", type=int, default=48)
    p.add_argument("--context", type=int, default=0,
                   help="2.5-D: also feed the K slices either side to the full-size skip (default 0: the slice alone)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--export", default=None, help="write the best checkpoint as a weights folder here")
    p.add_argument("--evaluate", default=None, metavar="FOLDER",
                   help="only measure an exported folder on --split patients (its own post-processing) and exit")
    p.add_argument("--split", default="test", choices=("val", "test"), help="with --evaluate")
    p.add_argument("--measure-finetune", action="store_true",
                   help="only time a forward+backward step through the encoder and exit")
    args = p.parse_args(argv)
    if args.measure_finetune:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(measure_finetune_step()))
        return 0
    from bt_demo.models import medsam_seg
    from train.lgg import DATA_ROOT
    from train.seg_eval import apply_post, choose_postprocessing, seg_metrics

    if args.evaluate:
        return evaluate_folder(args)
    device, run = common.start_run(args)
    root = Path(args.data) if args.data else DATA_ROOT / "lgg"
    t0 = time.perf_counter()
    tr = CachedSet(args.cache, split_patients(args.split_file, "train"), root, args.context)
    va = CachedSet(args.cache, split_patients(args.split_file, "val"), root, args.context)
    run.log.info(f"train {len(set(tr.patients))} patients / {len(tr)} cached slices ({tr.has_tumour.sum()} tumour), "
                 f"val {len(set(va.patients))} / {len(va)} ({va.has_tumour.sum()} tumour); loaded in "
                 f"{time.perf_counter() - t0:.0f} s")
    if len(tr) == 0 or len(va) == 0:
        raise SystemExit("the cache holds no training or no validation slices with s1 maps; run the embeddings "
                         "commands in this module's help first")
    model = medsam_seg.build(args.width, context=args.context).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    total = args.epochs * args.steps_per_epoch
    warm = max(1, total // 10)
    # warm-up, then cosine to zero over THIS invocation's total: a resume with more --epochs stretches the tail
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / warm) * 0.5 * (
        1 + np.cos(np.pi * min(1.0, max(0, k - warm) / max(1, total - warm)))))
    start_epoch, best = 0, -1.0
    if args.resume and run.last_ckpt.exists():
        st = torch.load(run.last_ckpt, map_location=device, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        start_epoch, best = st["epoch"] + 1, st["best"]
        run.log.info(f"resumed after epoch {st['epoch']} (best val per-patient Dice {best:.4f})")
    rng = np.random.default_rng(args.seed + start_epoch)
    pos, neg = np.nonzero(tr.has_tumour)[0], np.nonzero(~tr.has_tumour)[0]
    bce = torch.nn.BCEWithLogitsLoss()
    for epoch in range(start_epoch, args.epochs):
        model.train()
        te, losses = time.perf_counter(), []
        for _ in range(args.steps_per_epoch):
            n_pos = int(rng.binomial(args.batch_size, args.tumour_share)) if len(neg) else args.batch_size
            idx = np.concatenate([rng.choice(pos, n_pos), rng.choice(neg, args.batch_size - n_pos)]
                                 if len(neg) else [rng.choice(pos, n_pos)])
            neck, s1, img, y = (t.to(device) for t in tr.batch(idx))
            logits = model(neck, s1, img)
            loss = bce(logits, y) + dice_loss(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        m = evaluate(model, va, device)
        better = m["patient_dice_mean"] > best
        best = max(best, m["patient_dice_mean"])
        run.metrics(epoch=epoch, loss=float(np.mean(losses)), seconds=time.perf_counter() - te,
                    **{k: v for k, v in m.items() if k != "per_patient"})
        run.log.info(f"epoch {epoch}: loss {np.mean(losses):.4f}, val per-patient Dice {m['patient_dice_mean']:.4f} "
                     f"(slice {m['slice_dice_tumour_mean']:.3f}, FP {m['fp_rate_tumour_free']:.3f})"
                     f"{' best' if better else ''}, {time.perf_counter() - te:.0f} s")
        run.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                  "epoch": epoch, "best": best, "args": vars(args)}, best=better)

    st = torch.load(run.best_ckpt, map_location=device, weights_only=False)
    model.load_state_dict(st["model"])
    probs = predict_probs(model, va, device=device)
    gt = np.stack(va.masks)
    post, grid = choose_postprocessing(probs, gt, va.patients)
    m = seg_metrics(apply_post(probs, post["threshold"], post["min_component_px"]), gt, va.patients)
    raw = seg_metrics(apply_post(probs, 0.5, 0), gt, va.patients)
    t = time.perf_counter()
    neck, s1, img, _ = va.batch([0])
    for _ in range(5):
        model(neck, s1, img)
    dec_ms = (time.perf_counter() - t) / 5 * 1000
    res = {"row": "decoder on frozen LiteMedSAM encoder (neck + s1 + image skips)"
           + (f", 2.5-D: {args.context} slice(s) either side in the image skip" if args.context else ""), "best_epoch": st["epoch"],
           "parameters": medsam_seg.n_parameters(model), "postprocessing": post,
           "val": m | {"patient_dice_worst": float(min(m["per_patient"].values()))},
           "val_raw_0.5": {k: v for k, v in raw.items() if k != "per_patient"},
           "decoder_ms_per_slice": round(dec_ms, 1), "threads": torch.get_num_threads(),
           "train_slices": len(tr), "val_slices": len(va), "command": "python -m train medsam-seg " + " ".join(sys.argv[1:] if argv is None else argv)}
    (run.dir / "results.json").write_text(json.dumps(common.portable(res), indent=1, default=float))
    run.log.info(f"best epoch {st['epoch']}: val per-patient Dice {m['patient_dice_mean']:.4f} "
                 f"(worst {res['val']['patient_dice_worst']:.3f}, FP {m['fp_rate_tumour_free']:.3f}) at "
                 f"threshold {post['threshold']}, min component {post['min_component_px']} px")
    if args.export:
        medsam_seg.save(model, args.export, {"postprocessing": post, "split_file": args.split_file,
                                             "val": res["val"], "best_epoch": st["epoch"],
                                             "training_command": res["command"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
