"""Volume mode on this machine: speed and memory, and the numbers on real LGG patients.

python -m bench.bench_volume [--weights-dir weights] [--part speed,lgg] [--json out.json]
python -m bench.bench_volume --cohort 20 --workers 1,2 [--json bench/results/cohort.json]

speed: a 155-slice 240 x 240 volume (the BraTS size; synthetic phantoms, no patient data) segmented with the
U-Net (batched), in a fresh subprocess so its peak memory (ru_maxrss) is the whole cost; and a 30-slice
propagation with the click model.

lgg (needs ../shared/data/lgg and trained weights): each patient's slices stacked into a volume (they carry
no spacing: voxel counts), on the U-Net card's *validation* patients to choose the 3-D post-processing rule
(share of the largest component kept), then on its *test* patients reported once: 3-D Dice through the
volume path (with the card's own post-processing it must equal the card's per-patient Dice), volume error
for patients with >= 2000 tumour voxels, and the propagated 3-D Dice from one simulated click on the middle
tumour slice, with the U-Net gate (bt_demo.volume.segment.GATE_LEVEL, chosen on the validation patients by
the same protocol) and without.

propagation (needs ../shared/data/lgg, trained weights and the LiteMedSAM checkpoint): the propagation engines
side by side on the U-Net card's *validation* patients, from the same start (the click model's mask after one
simulated click on the middle tumour slice), all inside the U-Net gate: the click model (one click at the
neighbour's innermost point), MedSAM as published (the neighbour's box grown by 2 / 5 px) and MedSAM clicks
(box and click, the neighbour's logits as its mask prompt). 3-D Dice against the expert masks and seconds per
slice (the LiteMedSAM encoder runs once per slice; the engines share its cache).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, write

REPO = Path(__file__).resolve().parents[1]
LGG = REPO.parent / "shared" / "data" / "lgg"
SHARES = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
GATE_LEVELS = (None, 0.1, 0.2, 0.3, 0.5)


def _speed_child(wdir: str, n: int, side: int) -> dict:
    """Runs in a subprocess: build a volume, segment it, report time and peak RSS."""
    import torch

    from bt_demo.models.clicks import ClickEngine
    from bt_demo.models.unet import UNetEngine
    from bt_demo.sim.phantom import flair_phantom
    from bt_demo.volume import Volume
    from bt_demo.volume.segment import propagate, segment_volume

    torch.set_num_threads(2)
    unet = UNetEngine.load(str(Path(wdir) / "unet"))
    clicks = ClickEngine.load(str(Path(wdir) / "clicks"))
    base = [flair_phantom((side, side), seed=s) for s in range(8)]
    vol = Volume.from_slices([(base[k % 8][0] * 255).astype(np.uint8) for k in range(n)], spacing=(1.0, 1.0, 1.0))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    segment_volume(vol, unet)  # warm-up (first-call allocations)
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        segment_volume(vol, unet)
        ts.append(time.perf_counter() - t0)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mid = 15
    start = base[mid % 8][1]
    sub = Volume.from_slices([(base[k % 8][0] * 255).astype(np.uint8) for k in range(30)])
    pts = []
    for _ in range(3):
        t0 = time.perf_counter()
        r = propagate(sub, clicks, mid, start, min_area_px=1)
        pts.append(time.perf_counter() - t0)
    return {"segment_s_median": round(float(np.median(ts)), 2), "segment_s_all": [round(t, 2) for t in ts],
            "peak_rss_mb": round(rss1 / 1024, 0), "rss_before_mb": round(rss0 / 1024, 0),
            "propagate_30_s_median": round(float(np.median(pts)), 2),
            "propagated_slices": int(r.mask.reshape(30, -1).any(1).sum()), "shape": [n, side, side]}


def speed(wdir: str) -> dict:
    code = ("import json,sys; from bench.bench_volume import _speed_child; "
            f"print(json.dumps(_speed_child({wdir!r}, 155, 240)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cohort_files(folder: Path, n: int, z: int = 36, side: int = 256) -> list[Path]:
    """``n`` phantom volumes of ``z`` slices (the LGG patients' size) as NIfTI .nii.gz with a rotated affine."""
    import gzip

    import nibabel as nib

    from bt_demo.sim.phantom import flair_phantom

    rot = np.array([[0.0, -0.9, 0, 120], [0.9, 0, 0, -100], [0, 0, 3.0, -50], [0, 0, 0, 1]])
    out = []
    for i in range(n):
        sl = [(flair_phantom((side, side), seed=1000 * i + k)[0] * 1000).astype(np.int16).T for k in range(z)]
        p = folder / f"case{i:03d}.nii.gz"
        p.write_bytes(gzip.compress(nib.Nifti1Image(np.stack(sl, axis=-1), rot).to_bytes(), compresslevel=1, mtime=0))
        out.append(p)
    return out


def _noop(i):
    return i


def cohort(wdir: str, n: int, workers: list[int], noop_tasks: int = 2000) -> dict:
    """Cohort throughput: the same ``n`` volumes in one process without Dask (today's path) and on a
    LocalCluster of each worker count (end to end, cluster start included, and after the cluster has started);
    then the scheduler's overhead per task, from ``noop_tasks`` no-op tasks on 2 workers; then what 1,000
    volumes would cost on 1, 8 and 64 workers, on paper."""
    import os
    import shutil
    import tempfile

    from bt_demo.volume import batch

    tmp = Path(tempfile.mkdtemp(prefix="bt_cohort_"))
    (tmp / "in").mkdir()
    files = _cohort_files(tmp / "in", n)
    settings = batch.Settings(str(Path(wdir).resolve()))
    rows = []
    cores = os.cpu_count() or 1
    # today's path: one process, torch's threads over every core (a fresh process: _engine caches threads)
    code = ("import sys, time; from pathlib import Path; from bt_demo.volume import batch; "
            f"s = batch.Settings({settings.weights_dir!r}, threads={cores}); "
            f"files = sorted(Path({str(tmp / 'in')!r}).glob('*.nii.gz')); t0 = time.perf_counter(); "
            f"batch.run_cohort(files, Path({str(tmp / 'today')!r}), s, workers=0); print(time.perf_counter() - t0)")
    today = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                                 check=True).stdout.strip().splitlines()[-1])
    rows.append({"mode": f"one process, {cores} torch threads (today's command)", "workers": 1,
                 "seconds": round(today, 1), "volumes_per_min": round(60 * n / today, 1)})
    t0 = time.perf_counter()
    batch.run_cohort(files, tmp / "single", settings, workers=0)
    single = time.perf_counter() - t0
    rows.append({"mode": "one process, 1 thread (--workers 0)", "workers": 1, "seconds": round(single, 1),
                 "volumes_per_min": round(60 * n / single, 1)})
    ref = {p.name: (p / "mask.nii.gz").read_bytes() for p in (tmp / "single").iterdir() if p.is_dir()}
    for w in workers:
        t0 = time.perf_counter()
        client = batch.connect(None, w)
        started = time.perf_counter()
        batch.run_cohort(files, tmp / f"w{w}", settings, client=client)
        end = time.perf_counter()
        cluster = client.cluster
        client.close()
        cluster.close()
        same = all((tmp / f"w{w}" / k / "mask.nii.gz").read_bytes() == v for k, v in ref.items())
        rows.append({"mode": f"LocalCluster, {w} worker(s) x 1 thread", "workers": w,
                     "seconds": round(end - t0, 1), "cluster_start_s": round(started - t0, 1),
                     "volumes_per_min": round(60 * n / (end - t0), 1),
                     "volumes_per_min_after_start": round(60 * n / (end - started), 1),
                     "masks_identical_to_1_thread_process": same})
    client = batch.connect(None, 2)
    client.gather(client.map(_noop, range(50)))  # warm
    t0 = time.perf_counter()
    client.gather(client.map(_noop, range(noop_tasks), pure=False))
    per_task = (time.perf_counter() - t0) / noop_tasks
    cluster = client.cluster
    client.close()
    cluster.close()
    per_volume = single / n
    paper = [{"workers": k, "minutes_for_1000": round((1000 * per_volume / k + 1000 * per_task) / 60, 1)}
             for k in (1, 8, 64)]
    shutil.rmtree(tmp, ignore_errors=True)
    return {"volumes": n, "shape_zyx": [36, 256, 256], "rows": rows,
            "scheduler_overhead_ms_per_task": round(per_task * 1000, 2), "seconds_per_volume_one_process":
            round(per_volume, 2), "paper_1000_volumes": paper,
            "paper_note": "1000 x per-volume time / workers + 1000 x the scheduler's per-task overhead (it "
                          "serialises tasks); assumes each worker has a core of this machine's speed and the "
                          "inputs on a shared disk"}


def _dice(a, b) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


def lgg(wdir: str) -> dict:
    from bt_demo.models.clicks import ClickEngine
    from bt_demo.models.unet import UNetEngine
    from bt_demo.sim.clicksim import first_click
    from bt_demo.volume import Volume
    from bt_demo.volume.segment import GATE_LEVEL, postprocess_3d, propagate, propagation_gate, segment_volume
    from train import lgg as L

    card = json.loads((Path(wdir) / "unet" / "card.json").read_text())
    unet = UNetEngine.load(str(Path(wdir) / "unet"))
    clicks = ClickEngine.load(str(Path(wdir) / "clicks"))

    def volumes(patients):
        data = L.load_lgg(LGG, patients=patients)
        for p in patients:
            k = data.patients == p
            order = np.argsort(data.slice_numbers[k])
            yield p, Volume.from_slices(data.images[k][order]), data.masks[k][order]

    def start_of(vol, gt):
        """The middle tumour slice and the click model's mask there after one simulated click."""
        areas = gt.reshape(len(gt), -1).sum(1)
        tumour = np.flatnonzero(areas)
        mid = int(tumour[len(tumour) // 2])
        x, y = first_click(gt[mid])
        clicks.set_image(vol.data[mid] / 255.0)
        return mid, clicks.predict([(x, y)], [1]).mask

    # 1. the rules, on validation patients: the 3-D component share, and the propagation gate's level
    val, gates = {}, {str(lv): [] for lv in GATE_LEVELS}
    for p, vol, gt in volumes(card["split"]["val_patients"]):
        res = segment_volume(vol, unet, min_share=0.0)
        val[p] = (res.mask, gt)
        if gt.any():
            mid, m0 = start_of(vol, gt)
            for lv in GATE_LEVELS:
                g = None if lv is None else propagation_gate(res.prob, level=lv)
                gates[str(lv)].append(_dice(propagate(vol, clicks, mid, m0, gate=g).mask, gt))
    choose = {str(sh): float(np.mean([_dice(postprocess_3d(b, sh), g) for b, g in val.values()])) for sh in SHARES}
    best = max(SHARES, key=lambda sh: (round(choose[str(sh)], 4), -sh))
    gate_val = {k: float(np.mean(v)) for k, v in gates.items()}
    # 2. reported once, on test patients
    rows = []
    for p, vol, gt in volumes(card["split"]["test_patients"]):
        t0 = time.perf_counter()
        res = segment_volume(vol, unet, min_share=0.0)
        t_seg = time.perf_counter() - t0
        rule = postprocess_3d(res.mask, best)
        areas = gt.reshape(len(gt), -1).sum(1)
        row = {"patient": p, "slices": int(len(gt)), "expert_voxels": int(gt.sum()),
               "dice_3d_card_postprocessing": _dice(res.mask, gt), "dice_3d_with_rule": _dice(rule, gt),
               "predicted_voxels": int(rule.sum()), "segment_s": round(t_seg, 2)}
        row["volume_error"] = (row["predicted_voxels"] - row["expert_voxels"]) / max(row["expert_voxels"], 1)
        if areas.any():
            mid, m0 = start_of(vol, gt)
            pr = propagate(vol, clicks, mid, m0, gate=propagation_gate(res.prob))
            row["propagated_dice_3d"] = _dice(pr.mask, gt)
            row["propagated_dice_3d_without_gate"] = _dice(propagate(vol, clicks, mid, m0).mask, gt)
            row["propagated_start_slice_dice"] = _dice(m0, gt[mid])
        rows.append(row)
    big = [r for r in rows if r["expert_voxels"] >= 2000]
    summary = {
        "rule_chosen_on_validation": {"min_component_share_3d": best, "val_mean_dice_by_share": choose},
        "propagation_gate_on_validation": {"val_mean_dice_by_level": gate_val, "shipped_level": GATE_LEVEL},
        "test_patients": len(rows),
        "dice_3d_mean_card_postprocessing": float(np.mean([r["dice_3d_card_postprocessing"] for r in rows])),
        "card_patient_dice_mean": card["metrics"]["patient_dice_mean"],
        "dice_3d_mean_with_rule": float(np.mean([r["dice_3d_with_rule"] for r in rows])),
        "volume_within_10pct": f"{sum(abs(r['volume_error']) <= 0.10 for r in big)} of {len(big)} patients with >= 2000 voxels",
        "volume_error_abs_median_big": float(np.median([abs(r["volume_error"]) for r in big])) if big else None,
        "propagated_dice_3d_mean": float(np.mean([r["propagated_dice_3d"] for r in rows if "propagated_dice_3d" in r])),
        "propagated_dice_3d_mean_without_gate": float(np.mean([r["propagated_dice_3d_without_gate"] for r in rows
                                                               if "propagated_dice_3d" in r])),
    }
    return {"summary": summary, "rows": rows}


def propagation_engines(wdir: str, threads: int = 2) -> dict:
    """Propagation with the click model vs MedSAM on the U-Net card's validation patients (see the docstring)."""
    import torch

    from bt_demo.models import medsam
    from bt_demo.models.clicks import ClickEngine
    from bt_demo.models.sam import EmbeddingCache
    from bt_demo.models.unet import UNetEngine
    from bt_demo.sim.clicksim import first_click
    from bt_demo.volume import Volume
    from bt_demo.volume.segment import propagate, propagation_gate, segment_volume
    from train import lgg as L

    torch.set_num_threads(threads)
    card = json.loads((Path(wdir) / "unet" / "card.json").read_text())
    unet = UNetEngine.load(str(Path(wdir) / "unet"))
    clicks = ClickEngine.load(str(Path(wdir) / "clicks"))
    cache = EmbeddingCache(64)  # one patient's slices: each embedding computed once for all MedSAM rows
    engines = {"clicks": clicks, "medsam": medsam.MedSamEngine("cpu", None, cache)}
    if (Path(wdir) / "medsam_clicks" / "config.json").exists():
        engines["medsam_clicks"] = medsam.MedSamEngine("cpu", str(Path(wdir) / "medsam_clicks"), cache)
    rows_spec = [("clicks", "click", 0), ("medsam", "box", 2), ("medsam", "box", 5),
                 ("medsam_clicks", "box+click", 2), ("medsam_clicks", "box+click", 5), ("medsam_clicks", "click", 0)]
    rows_spec = [r for r in rows_spec if r[0] in engines]
    per = {f"{e} {p} {m}px" if p != "click" else f"{e} {p}": [] for e, p, m in rows_spec}
    secs = {k: [0.0, 0] for k in per}
    pats = card["split"]["val_patients"]
    data = L.load_lgg(LGG, patients=pats)
    for p in pats:
        k = data.patients == p
        order = np.argsort(data.slice_numbers[k])
        vol, gt = Volume.from_slices(data.images[k][order]), data.masks[k][order]
        if not gt.any():
            continue
        res = segment_volume(vol, unet, min_share=0.0)
        gate = propagation_gate(res.prob)
        areas = gt.reshape(len(gt), -1).sum(1)
        tumour = np.flatnonzero(areas)
        mid = int(tumour[len(tumour) // 2])
        x, y = first_click(gt[mid])
        clicks.set_image(vol.data[mid] / 255.0)
        m0 = clicks.predict([(x, y)], [1]).mask
        cache.clear()
        for (e, prompt, margin), key in zip(rows_spec, per, strict=True):
            t0 = time.perf_counter()
            n = []
            pr = propagate(vol, engines[e], mid, m0, gate=gate, prompt=prompt, box_margin=margin,
                           progress=lambda i, _z, n=n: n.append(i))
            secs[key][0] += time.perf_counter() - t0
            secs[key][1] += len(n)
            per[key].append({"patient": p, "dice_3d": _dice(pr.mask, gt), "slices": len(n)})
        print(p, {k: round(v[-1]["dice_3d"], 3) for k, v in per.items()}, flush=True)
    summary = {k: {"mean_dice_3d": float(np.mean([r["dice_3d"] for r in v])), "patients": len(v),
                   "worst_dice_3d": float(np.min([r["dice_3d"] for r in v])),
                   "s_per_slice": round(secs[k][0] / max(secs[k][1], 1), 3)} for k, v in per.items()}
    return {"summary": summary, "rows": per, "threads": threads,
            "note": "U-Net card's validation patients; start: the click model's mask after one simulated click "
                    "on the middle tumour slice; every row inside the U-Net gate; the first MedSAM row of a "
                    "patient pays the encoder for every slice it reaches (the cache is cleared per patient)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_volume", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights-dir", default=str(REPO / "weights"))
    ap.add_argument("--part", default="speed,lgg")
    ap.add_argument("--json", default=None)
    ap.add_argument("--cohort", type=int, default=0, help="cohort throughput on N phantom volumes (skips --part)")
    ap.add_argument("--workers", default="1,2", help="with --cohort: LocalCluster worker counts")
    args = ap.parse_args(argv)
    if args.cohort:
        res = cohort(args.weights_dir, args.cohort, [int(w) for w in args.workers.split(",")])
        print(json.dumps(res, indent=1))
        write("cohort", res["rows"], {k: v for k, v in res.items() if k != "rows"},
              path=args.json or str(RESULTS / "cohort.json"))
        return 0
    args.json = args.json or str(RESULTS / "volume.json")
    parts = args.part.split(",")
    out: dict = {}
    if "speed" in parts:
        out["speed"] = speed(args.weights_dir)
        print(json.dumps(out["speed"], indent=1))
    if "propagation" in parts:
        out["propagation"] = propagation_engines(args.weights_dir)
        print(json.dumps(out["propagation"]["summary"], indent=1))
        write("propagation", [], out["propagation"], path=str(RESULTS / "propagation.json"))
        if parts == ["propagation"]:
            return 0
    if "lgg" in parts:
        if not LGG.is_dir():
            print(f"skipping lgg: {LGG} not found")
        else:
            out["lgg"] = lgg(args.weights_dir)
            print(json.dumps(out["lgg"]["summary"], indent=1))
    write("volume", out.get("lgg", {}).get("rows", []), {k: v for k, v in out.items() if k != "lgg"}
          | ({"lgg_summary": out["lgg"]["summary"]} if "lgg" in out else {}), path=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
