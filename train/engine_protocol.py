"""python -m train engine-protocol: the three prompt engines side by side on the same validation slices (issue 22).

Every tumour slice of the click model's validation patients (``train.lgg.patient_split``, --n-val 10 --n-test 10
--seed 0: the split of weights/clicks/card.json) whose LiteMedSAM embedding is cached
(``python -m train embeddings --dataset lgg --only-tumour``). Each engine runs the click protocol of
``train/seg_eval`` with a cap of 20 interactions, in each slice's original pixels, through the app's own steps:

- **click model** (``weights/clicks``): ``seg_eval.click_protocol`` (the click step the app runs);
- **MedSAM box** (LiteMedSAM as published): the expert box with each corner moved by up to 5 px (uniform), then
  up to 19 corrective clicks at the centre of the largest error (the published decoder gets no mask prompt,
  as ``MedSamEngine`` does for it);
- **MedSAM clicks** (``weights/medsam_clicks``, the fine-tuned prompt encoder and mask decoder): clicks only,
  the previous answer's logits as the mask prompt, one mask per click (its config's rules in the engine);
  also its box row (the jittered box, then corrective clicks).

Both click engines also get the off-centre row: the first click at a random interior pixel (seeded) instead of
the most interior one. The table says Dice after 1 / 3 / 5 / 10 / 20 interactions, NoC@85 / NoC@90 (cap 20;
a slice that never reaches the level counts as 20) and the share of slices that never reach 0.85.

The app's default prompt engine is the one with the best Dice after 3 clicks here
(``bt_demo.models.registry.FALLBACK_ORDER`` states the order this table chose).

    python -m train engine-protocol --threads 2                  # -> runs/engine_protocol/val.json + table
    python -m train engine-protocol --threads 2 --split test     # once, for the cards: test patients
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

CAP = 20
ROWS = (  # (key, engine label, prompt, how the row is run)
    ("clicks", "click model (weights/clicks)", "clicks, first at the most interior point"),
    ("clicks_offcentre", "click model (weights/clicks)", "clicks, first at a random interior pixel"),
    ("medsam_box", "MedSAM (LiteMedSAM as published)", "box jittered ±5 px, then corrective clicks"),
    ("medsam_points", "MedSAM (LiteMedSAM as published)", "clicks, first at the most interior point"),
    ("medsam_clicks", "MedSAM clicks (weights/medsam_clicks)", "clicks, first at the most interior point"),
    ("medsam_clicks_offcentre", "MedSAM clicks (weights/medsam_clicks)", "clicks, first at a random interior pixel"),
    ("medsam_clicks_box", "MedSAM clicks (weights/medsam_clicks)", "box jittered ±5 px, then corrective clicks"),
)
DEFAULT_CANDIDATES = ("clicks", "medsam_box", "medsam_clicks")  # the three engines of the issue


def table_row(dice: np.ndarray) -> dict:
    """The protocol's numbers for a (N, CAP) Dice table (column c: after c + 1 interactions)."""
    from train.seg_eval import click_summary

    out = click_summary(dice)
    out["dice_curve"] = [round(float(v), 4) for v in dice.mean(0)]
    return out


def choose_default(rows: dict) -> str:
    """The engine key (of DEFAULT_CANDIDATES present in ``rows``) with the best Dice after 3 interactions."""
    have = [k for k in DEFAULT_CANDIDATES if k in rows]
    return max(have, key=lambda k: rows[k]["dice_after_3_clicks"])


def markdown(res: dict) -> str:
    """The table for docs/studies.md."""
    lines = ["| engine | prompt | Dice @1 | @3 | @5 | @10 | @20 | NoC@85 | NoC@90 | never 0.85 | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, label, prompt in ROWS:
        r = res["rows"].get(key)
        if r is None:
            continue
        lines.append(f"| {label} | {prompt} | {r['dice_after_1_clicks']:.3f} | {r['dice_after_3_clicks']:.3f} | "
                     f"{r['dice_after_5_clicks']:.3f} | {r['dice_after_10_clicks']:.3f} | "
                     f"{r['dice_after_20_clicks']:.3f} | {r['noc85']:.2f} | {r['noc90']:.2f} | "
                     f"{100 * r['never_85']:.1f} % | {r['seconds']:.0f} |")
    return "\n".join(lines)


def update_card(folder: Path, res: dict) -> Path:
    """The MedSAM clicks card with its test-patient protocol (reported once): the click rows become its
    held-out metrics, what was there (the validation patients the epoch was chosen on) is kept beside them."""
    from train.evaluate import write_card

    card = json.loads((folder / "card.json").read_text())
    old = card.get("metrics", {})
    if "validation patients" in str(old.get("evaluated_on", "")):
        card["metrics_validation_patients"] = {k: v for k, v in old.items() if k != "evaluated_on"}
    rows = res["rows"]
    card["metrics"] = {"evaluated_on": f"test patients ({res['n_patients']}, {res['n_slices']} tumour slices), the "
                                      f"click protocol of train/seg_eval, cap {res['cap']}; reported once",
                       **{k: v for k, v in rows["medsam_clicks"].items() if k != "dice_curve"},
                       **({"off_centre_first_click_dice": rows["medsam_clicks_offcentre"]["dice_after_1_clicks"]}
                          if "medsam_clicks_offcentre" in rows else {}),
                       **({"box_jitter_5px_dice": rows["medsam_clicks_box"]["dice_after_1_clicks"],
                           "box_then_1_click_dice": rows["medsam_clicks_box"]["dice_after_2_clicks"]}
                          if "medsam_clicks_box" in rows else {})}
    card["evaluate_command"] = res["command"]
    write_card(folder, card)
    return folder / "card.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train engine-protocol", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="LGG folder (default ../shared/data/lgg)")
    p.add_argument("--cache", default="runs/embeddings/lgg", help="embedding cache of `python -m train embeddings`")
    p.add_argument("--weights-dir", default="weights")
    p.add_argument("--out", default=None, help="default runs/engine_protocol/<split>.json")
    p.add_argument("--rows", default=",".join(k for k, _, _ in ROWS), help="which rows to run (comma-separated)")
    p.add_argument("--split", default="val", choices=["val", "test"],
                   help="val: the patients the default engine is chosen on; test: reported once, for the cards")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already in the output file (same slices) and run only the missing ones")
    p.add_argument("--card", action="store_true",
                   help="with --split test: write the MedSAM clicks rows into weights/medsam_clicks/card.json "
                        "(its held-out metrics; the validation numbers move to metrics_validation_patients)")
    p.add_argument("--limit", type=int, default=0, help="at most this many slices (0: all; for a quick look)")
    p.add_argument("--box-jitter", type=float, default=5.0)
    p.add_argument("--n-val", type=int, default=10, help="the click model's split (its card: 10 / 10, seed 0)")
    p.add_argument("--n-test", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    from bt_demo.models import medsam
    from bt_demo.models.clicks import ClickEngine
    from train.embeddings import open_cache
    from train.lgg import LGG_DEFAULT, read_gray
    from train.medsam_clicks import click_eval, load_items, split_patients
    from train.seg_eval import click_protocol

    torch.set_num_threads(max(1, args.threads))
    data = args.data or str(LGG_DEFAULT)
    split = split_patients(data, args.n_val, args.n_test, 0)
    items = load_items(args.cache, data, split[args.split])
    if args.limit:
        items = items[:args.limit]
    if not items:
        raise SystemExit(f"no cached tumour slices of {args.split} patients in {args.cache}; run "
                         "`python -m train embeddings --dataset lgg --only-tumour` first")
    wanted = [k.strip() for k in args.rows.split(",") if k.strip()]
    wdir = Path(args.weights_dir)
    res = {"command": "python -m train engine-protocol " + " ".join(argv if argv is not None else sys.argv[1:]),
           "cap": CAP, "n_slices": len(items), "n_patients": len({it.patient for it in items}),
           "split": args.split, "patients": split[args.split], "box_jitter_px": args.box_jitter, "seed": args.seed,
           "threads": args.threads, "rows": {}}
    dest = Path(args.out or f"runs/engine_protocol/{args.split}.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if args.resume and dest.exists():
        old = json.loads(dest.read_text())
        if old.get("n_slices") == res["n_slices"] and old.get("patients") == res["patients"]:
            res["rows"] = old.get("rows", {})
            res["command"] = old.get("command", res["command"]) + " ; resumed: " + res["command"]
            wanted = [k for k in wanted if k not in res["rows"]]
            print(f"resuming: {len(res['rows'])} rows kept, to run: {', '.join(wanted) or 'none'}", flush=True)

    def record(key: str, dice: np.ndarray, t0: float) -> None:
        res["rows"][key] = table_row(dice) | {"seconds": round(time.perf_counter() - t0, 1)}
        r = res["rows"][key]
        print(f"{key}: @1 {r['dice_after_1_clicks']:.4f} @3 {r['dice_after_3_clicks']:.4f} "
              f"@10 {r['dice_after_10_clicks']:.4f} NoC90 {r['noc90']:.2f} ({r['seconds']:.0f} s)", flush=True)
        dest.write_text(json.dumps(res, indent=1))  # after every row: a stopped run keeps what it measured

    if any(k.startswith("clicks") for k in wanted):
        eng = ClickEngine.load(str(wdir / "clicks"))
        if isinstance(eng, str):
            raise SystemExit(eng)
        files = open_cache(args.cache).rows
        imgs = [read_gray(Path(data) / files[it.id]["file"], flair=True) for it in items]
        for key, first in (("clicks", "centre"), ("clicks_offcentre", "random")):
            if key not in wanted:
                continue
            t0 = time.perf_counter()
            if len({im.shape for im in imgs}) == 1:
                dice = click_protocol(eng.model, np.stack(imgs), np.stack([it.mask for it in items]),
                                      n_clicks=CAP, first=first, seed=args.seed)
            else:  # slices of different sizes: one at a time
                dice = np.concatenate([click_protocol(eng.model, im[None], it.mask[None], n_clicks=CAP,
                                                      first=first, seed=args.seed + i)
                                       for i, (im, it) in enumerate(zip(imgs, items, strict=True))])
            record(key, dice, t0)

    def heads(folder: str | None):
        """(prompt encoder, mask decoder, config) as the app's MedSamEngine loads them."""
        eng = medsam.MedSamEngine.load("cpu", clicks=folder)
        if isinstance(eng, str):
            raise SystemExit(eng)
        return eng.prompt_encoder.eval(), eng.mask_decoder.eval(), eng.config

    if any(k.startswith("medsam") and not k.startswith("medsam_clicks") for k in wanted):
        pe, md, _ = heads(None)
        if "medsam_box" in wanted:
            t0 = time.perf_counter()
            record("medsam_box", click_eval(pe, md, items, CAP - 1, feed_previous=False, mode="box",
                                            jitter=args.box_jitter, seed=args.seed), t0)
        if "medsam_points" in wanted:
            t0 = time.perf_counter()
            record("medsam_points", click_eval(pe, md, items, CAP, feed_previous=False, multimask_single=True), t0)
    if any(k.startswith("medsam_clicks") for k in wanted):
        folder = wdir / "medsam_clicks"
        if not (folder / "config.json").exists():
            raise SystemExit(f"no fine-tuned decoder in {folder}; run `python -m train medsam-clicks` first")
        pe, md, cfg = heads(str(folder))
        feed, multi = bool(cfg.get("mask_prompt", False)), bool(cfg.get("multimask", True))
        for key, kw in (("medsam_clicks", {}), ("medsam_clicks_offcentre", {"first": "random", "seed": args.seed}),
                        ("medsam_clicks_box", {"mode": "box", "jitter": args.box_jitter, "seed": args.seed})):
            if key not in wanted:
                continue
            t0 = time.perf_counter()
            n = CAP - 1 if kw.get("mode") == "box" else CAP
            record(key, click_eval(pe, md, items, n, feed_previous=feed, multimask_single=multi, **kw), t0)

    if args.split == "val" and any(k in res["rows"] for k in DEFAULT_CANDIDATES):
        res["default_engine_by_dice_at_3"] = choose_default(res["rows"])
    res["table_markdown"] = markdown(res)
    dest.write_text(json.dumps(res, indent=1))
    if args.card and args.split == "test" and "medsam_clicks" in res["rows"]:
        print(f"card: {update_card(wdir / 'medsam_clicks', res)}")
    print(res["table_markdown"])
    print(f"default prompt engine by Dice after 3 interactions: {res.get('default_engine_by_dice_at_3')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
