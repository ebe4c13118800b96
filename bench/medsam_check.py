"""python -m bench.medsam_check: LiteMedSAM's speed on this machine and a box-prompt accuracy check on LGG.

1. Speed: the image encoder (``set_image`` on a cache miss) and ``predict`` with a box (prompt encoder, mask
   decoder, mapping back to the slice) at 1 and 2 torch threads; median and p95 over ``--repeats`` runs.
2. Accuracy: tumour slices of a handful of LGG patients (evenly spaced through the sorted patient list,
   evenly spaced slices within each), a box = the expert mask's bounding box (exact, then each corner
   jittered by a uniform integer in [-5, 5] px with a fixed seed), one positive click at the mask's centroid
   without a box, and the box given again with the first answer as SAM's mask prompt (``previous``, only
   to see whether the published weights, trained without mask prompts, use it). Dice per slice, mean/median.

Writes bench/results/medsam_check.json (numbers, the machine, its load average, the command).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def _dice(a, b) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def _pick(data: Path, n_patients: int, per_patient: int):
    import csv

    rows = [r for r in csv.DictReader((data / "slices.csv").open()) if r["has_tumor"] == "1"]
    pats = sorted({r["patient"] for r in rows})
    chosen = [pats[i] for i in np.linspace(0, len(pats) - 1, n_patients).astype(int)]
    out = []
    for p in chosen:
        pr = sorted((r for r in rows if r["patient"] == p), key=lambda r: int(r["slice"]))
        idx = np.unique(np.linspace(0, len(pr) - 1, min(per_patient, len(pr))).astype(int))
        out += [pr[i] for i in idx]
    return out


def main(argv=None) -> int:
    from train.lgg import LGG_DEFAULT, read_gray

    ap = argparse.ArgumentParser(prog="python -m bench.medsam_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(LGG_DEFAULT))
    ap.add_argument("--patients", type=int, default=6)
    ap.add_argument("--per-patient", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--jitter", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the accuracy part")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--out", default="bench/results/medsam_check.json")
    args = ap.parse_args(argv)
    import torch

    from bt_demo.models import medsam

    eng = medsam.MedSamEngine.load("cpu")
    if isinstance(eng, str):
        print(eng, file=sys.stderr)
        return 2
    data = Path(args.data)
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.exists() else {}
    res: dict = {"command": "python -m bench.medsam_check " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                             "loadavg_start": os.getloadavg()}}
    rows = _pick(data, args.patients, args.per_patient)
    first = read_gray(data / rows[0]["image"], flair=True).astype(np.float32) / 255

    if not args.skip_speed:
        speed = {}
        m0 = read_gray(data / rows[0]["mask"], flair=False) > 127
        ys, xs = np.nonzero(m0)
        box = (xs.min(), ys.min(), xs.max(), ys.max())
        for th in (1, 2):
            torch.set_num_threads(th)
            eng.set_image(first, key=f"speed-warm-up:{th}:{time.time()}")
            enc, dec = [], []
            for r in range(args.repeats):
                t0 = time.perf_counter()
                eng.set_image(first, key=f"speed:{th}:{r}:{time.time()}")  # a new key: a cache miss each time
                enc.append((time.perf_counter() - t0) * 1000)
                for _ in range(3):
                    t0 = time.perf_counter()
                    eng.predict([], [], box=box)
                    dec.append((time.perf_counter() - t0) * 1000)
            speed[f"threads_{th}"] = {
                "encoder_ms_median": round(statistics.median(enc), 1), "encoder_ms_p95": round(float(np.percentile(enc, 95)), 1),
                "predict_ms_median": round(statistics.median(dec), 1), "predict_ms_p95": round(float(np.percentile(dec, 95)), 1),
                "encoder_runs_ms": [round(v, 1) for v in enc]}
            print(f"threads={th}: {speed[f'threads_{th}']}", flush=True)
        res["speed"] = speed

    if args.skip_accuracy:
        for k in ("accuracy", "per_slice", "accuracy_command"):
            if k in old:
                res[k] = old[k]
        return _write(out, res)
    res["accuracy_command"] = res["command"]
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    per = []
    for r in rows:
        img = read_gray(data / r["image"], flair=True).astype(np.float32) / 255
        m = read_gray(data / r["mask"], flair=False) > 127
        ys, xs = np.nonzero(m)
        h, w = m.shape
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], float)
        jit = np.clip(box + rng.integers(-args.jitter, args.jitter + 1, 4), 0, [w - 1, h - 1, w - 1, h - 1])
        eng.set_image(img, key=f"check:{r['image']}")
        exact = eng.predict([], [], box=box)
        row = {"image": r["image"], "patient": r["patient"], "mask_pixels": int(m.sum()),
               "box": _dice(exact.mask, m), "box_jitter": _dice(eng.predict([], [], box=jit).mask, m)}
        cy, cx = np.argwhere(m).mean(0)
        if not m[int(np.rint(cy)), int(np.rint(cx))]:  # centroid outside a crescent: the mask pixel nearest to it
            d = (ys - cy) ** 2 + (xs - cx) ** 2
            cy, cx = ys[d.argmin()], xs[d.argmin()]
        row["point"] = _dice(eng.predict([[cx, cy]], [1], multimask=True).mask, m)
        eng.feed_previous = True
        row["box_with_previous"] = _dice(eng.predict([], [], box=box, previous=exact).mask, m)
        eng.feed_previous = False
        per.append(row)
    acc = {"n_slices": len(per), "patients": sorted({p["patient"] for p in per}), "jitter_px": args.jitter,
           "seed": args.seed}
    for k in ("box", "box_jitter", "point", "box_with_previous"):
        v = [p[k] for p in per]
        acc[k] = {"mean": round(float(np.mean(v)), 4), "median": round(float(np.median(v)), 4),
                  "min": round(float(np.min(v)), 4)}
        print(f"{k}: {acc[k]}", flush=True)
    res["accuracy"] = acc
    res["per_slice"] = per
    if args.skip_speed and "speed" in old:
        res["speed"], res["speed_command"] = old["speed"], old.get("speed_command")
    return _write(out, res)


def _write(out: Path, res: dict) -> int:
    res["machine"]["loadavg_end"] = os.getloadavg()
    if "speed" in res and "speed_command" not in res:
        res["speed_command"] = res["command"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
