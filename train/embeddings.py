"""python -m train embeddings: a resumable on-disk cache of LiteMedSAM image embeddings (issue 22, part 3).

Every slice of a dataset goes through ``bt_demo.models.medsam.encode`` once (the same preparation the app's
MedSAM engine uses); what it made is kept under ``runs/embeddings/<dataset>/``:

    cache.json           what the cache holds (checkpoint SHA-256, preparation, dtype, stage list)
    emb/<id>.npy         float16 (256, 64, 64): the embedding, the mask decoder's input (2 MiB each)
    pooled/<id>.npy      float32 (1856,): mean- and max-pooled encoder stages (medsam.pool_stages)
    stages/<s>/<id>.npy  float16 stage maps kept with --stages (e.g. s1: 128 x 128 x 128, 4 MiB): the skips of a
                         decoder trained on the frozen encoder (train/medsam_unet.py)
    manifest.jsonl       one line per slice computed: id, data file, its SHA-256, the checkpoint's SHA-256,
                         the unpadded 256 frame (valid_hw), original shape, patient/slice/label/fold, has_tumour
    pooled.npz           ids, features (N, 1856) float32 and the manifest rows: the side file for classifier
                         probes, rewritten every 200 slices and at the end of each run

An entry counts only while its data file's SHA-256 and the checkpoint's SHA-256 are those in its manifest
line and its files exist; anything else is computed again. Files are written to a temporary name and then
renamed, and the manifest line is appended last, so a run killed at any point resumes where it was.

Datasets (roots under ../shared/data; nothing is ever copied into the repository):

    lgg        LGG FLAIR slices (slices.csv: patient, slice, image, mask, mask_pixels, has_tumor)
    lgg_t1ce   the same patients' post-contrast T1 (lgg_sequences/slices.csv; masks are the FLAIR masks)
    figshare   T1-CE 512 x 512 slices, folds 1-4 (labels.csv: image, figshare_index, label, fold, ...)

Example: ``python -m train embeddings --dataset lgg --only-tumour --threads 1``; the segmentation study's
validation patients with the s1 skip: ``--split-file weights/unet/card.json --split val --stages s1``. Read it back with
``open_cache("runs/embeddings/lgg")``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bt_demo.models.medsam_weights import file_sha256

PREP = "litemedsam-infer-v1: longest side 256 (INTER_AREA), min-max [0,1], 3 channels, pad bottom/right to 256"
DATASETS = ("lgg", "lgg_t1ce", "figshare")
POOLED_EVERY = 200


@dataclass(frozen=True)
class Item:
    """One slice of a dataset: a stable id, its image file and what the manifest records about it."""

    id: str
    path: Path
    has_tumour: bool
    meta: dict = field(default_factory=dict)


def default_root(dataset: str) -> Path:
    from train.lgg import DATA_ROOT

    return DATA_ROOT / {"lgg": "lgg", "lgg_t1ce": "lgg_sequences", "figshare": "figshare"}[dataset]


def _truthy(v) -> bool:
    return str(v).strip().lower() in ("1", "true", "yes")


def list_items(dataset: str, root: str | Path) -> list[Item]:
    """Every slice of ``dataset`` under ``root``, sorted (patient, slice) or by figshare index."""
    root = Path(root)
    if dataset not in DATASETS:
        raise SystemExit(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if not root.is_dir():
        raise SystemExit(f"data folder not found: {root}")
    items = []
    if dataset in ("lgg", "lgg_t1ce"):
        table = root / "slices.csv"
        if table.exists():
            with table.open(newline="") as f:
                for r in csv.DictReader(f):
                    iid = f"{r['patient']}_{int(r['slice'])}"  # the same id in lgg and lgg_t1ce: pairs line up
                    meta = {"patient": r["patient"], "slice": int(r["slice"]), "mask": r["mask"]}
                    if r.get("mask_pixels") not in (None, ""):
                        meta["mask_pixels"] = int(float(r["mask_pixels"]))
                    items.append(Item(iid, root / r["image"], _truthy(r["has_tumor"]), meta))
        elif dataset == "lgg":  # the plain LGG layout without a table
            from train.lgg import find_slices, read_gray

            for pat, n, ip, mp in find_slices(root):
                items.append(Item(f"{pat}_{n}", ip, bool((read_gray(mp, flair=False) > 127).any()),
                                  {"patient": pat, "slice": n, "mask": str(mp.relative_to(root))}))
        else:
            raise SystemExit(f"no slices.csv in {root}")
        items.sort(key=lambda it: (it.meta["patient"], it.meta["slice"]))
    else:
        table = root / "labels.csv"
        if not table.exists():
            raise SystemExit(f"no labels.csv in {root}")
        with table.open(newline="") as f:
            for r in csv.DictReader(f):
                idx = int(r["figshare_index"])
                items.append(Item(f"figshare_{idx}", root / r["image"], True,
                                  {"figshare_index": idx, "label": r["label"], "fold": int(r["fold"])}))
        items.sort(key=lambda it: it.meta["figshare_index"])
    return items


def _spread(xs: list[Item], k: int) -> list[Item]:
    """Up to ``k`` of ``xs``, evenly spaced over the list (all of them when there are no more than k)."""
    if len(xs) <= k:
        return xs
    idx = np.unique(np.round(np.linspace(0, len(xs) - 1, k)).astype(int))
    return [xs[i] for i in idx]


def presence_subset(items: list[Item], per_patient: int, min_px: int = 200) -> list[Item]:
    """The presence study's slices: per patient up to ``per_patient`` slices with at least ``min_px`` tumour
    pixels and as many tumour-free ones, each spread evenly over the patient's slices.

    Returned round-robin over patients (every patient's first pick, then every second pick, ...), so that a run
    stopped part-way still holds a set balanced across patients and classes. Slices with a little tumour
    (0 < pixels < min_px) are left out: the study does not score them as either class.
    """
    by_patient: dict[str, list[Item]] = {}
    for it in items:
        by_patient.setdefault(it.meta.get("patient", ""), []).append(it)

    picks = []
    for pat in sorted(by_patient):
        xs = by_patient[pat]
        pos = [it for it in xs if it.has_tumour and it.meta.get("mask_pixels", min_px) >= min_px]
        neg = [it for it in xs if not it.has_tumour]
        pos, neg = _spread(pos, per_patient), _spread(neg, per_patient)
        picks.append([x for pair in zip(pos, neg, strict=False) for x in pair] + pos[len(neg):] + neg[len(pos):])
    out = []
    for rank in range(max((len(p) for p in picks), default=0)):
        out.extend(p[rank] for p in picks if rank < len(p))
    return out


def split_patients(split_file: str | Path, split: str) -> list[str]:
    """The patient ids of ``split`` (train / val / test) in a run's split.json ({"val": [...]}) or a model card
    (card.json: {"split": {"val_patients": [...]}}), so a cache covers exactly a study's patients."""
    d = json.loads(Path(split_file).read_text())
    for cand in (d.get(split), (d.get("split") or {}).get(f"{split}_patients")):
        if isinstance(cand, list) and cand:
            return [str(x) for x in cand]
    raise SystemExit(f"{split_file}: no {split!r} patient list")


def free_subset(items: list[Item], per_patient: int) -> list[Item]:
    """Every tumour slice and, per patient, up to ``per_patient`` tumour-free slices spread over the patient."""
    by_patient: dict[str, list[Item]] = {}
    for it in items:
        if not it.has_tumour:
            by_patient.setdefault(it.meta.get("patient", ""), []).append(it)
    keep = {it.id for it in items if it.has_tumour}
    for xs in by_patient.values():
        keep.update(it.id for it in _spread(xs, per_patient))
    return [it for it in items if it.id in keep]


def read_image(dataset: str, path: Path) -> np.ndarray:
    """uint8 (H, W) gray: the FLAIR channel of an LGG stack, else the file as gray."""
    if dataset == "lgg":
        from train.lgg import read_gray

        return read_gray(path, flair=True)
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def _rel(path: Path, root) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


def read_manifest(out: Path) -> dict[str, dict]:
    """id -> the last manifest line written for it (a torn last line is skipped)."""
    rows: dict[str, dict] = {}
    p = out / "manifest.jsonl"
    if p.exists():
        for line in p.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and "id" in r:
                rows[r["id"]] = r
    return rows


def _valid(row: dict | None, out: Path, file_hash: str, ckpt: str, stages: tuple[str, ...] = ()) -> bool:
    return (row is not None and row.get("file_sha256") == file_hash and row.get("checkpoint_sha256") == ckpt
            and row.get("prep") == PREP and (out / "emb" / f"{row['id']}.npy").exists()
            and (out / "pooled" / f"{row['id']}.npy").exists()
            and all((out / "stages" / s / f"{row['id']}.npy").exists() for s in stages))


def write_pooled(out: Path, rows: dict[str, dict], ckpt: str) -> int:
    """Gather pooled/<id>.npy of the valid manifest rows into pooled.npz (ids, features, rows as JSON)."""
    ids, feats, keep = [], [], []
    for iid, r in sorted(rows.items()):
        p = out / "pooled" / f"{iid}.npy"
        if r.get("checkpoint_sha256") != ckpt or not p.exists():
            continue
        ids.append(iid)
        feats.append(np.load(p))
        keep.append(r)
    from bt_demo.models.medsam import POOLED_DIM

    x = np.stack(feats).astype(np.float32) if feats else np.zeros((0, POOLED_DIM), np.float32)
    tmp = out / "pooled.npz.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, ids=np.array(ids), features=x, rows=np.array([json.dumps(r) for r in keep]))
    os.replace(tmp, out / "pooled.npz")
    return len(ids)


def build_cache(dataset: str, root: str | Path, out: str | Path, only_tumour: bool = False,
                limit: int | None = None, per_patient: int | None = None, log=print,
                patients: list[str] | None = None, free_per_patient: int | None = None,
                stages: tuple[str, ...] = ()) -> dict:
    """Compute what is missing from the cache at ``out``; returns counts (computed, reused, total, seconds)."""
    from bt_demo.models import medsam

    out = Path(out)
    ckpt_path = medsam.verify_checkpoint()
    ckpt = medsam.CHECKPOINT_SHA256
    items = list_items(dataset, root)
    known = {n for n, _c, _s in medsam.STAGES}
    if set(stages) - known:
        raise SystemExit(f"unknown stage(s) {sorted(set(stages) - known)}; choose from {sorted(known)}")
    if patients is not None:
        wanted = set(patients)
        items = [it for it in items if it.meta.get("patient") in wanted]
    if free_per_patient is not None:
        items = free_subset(items, free_per_patient)
    if only_tumour:
        items = [it for it in items if it.has_tumour]
    if per_patient:
        items = presence_subset(items, per_patient)
    if limit is not None:
        items = items[:max(0, int(limit))]
    (out / "emb").mkdir(parents=True, exist_ok=True)
    (out / "pooled").mkdir(parents=True, exist_ok=True)
    for st in stages:
        (out / "stages" / st).mkdir(parents=True, exist_ok=True)
    info = {"dataset": dataset, "root": str(Path(root).resolve()), "checkpoint": str(ckpt_path),
            "checkpoint_sha256": ckpt, "prep": PREP, "embedding": {"dtype": "float16", "shape": list(medsam.EMBED_SHAPE)},
            "pooled": {"dtype": "float32", "dim": medsam.POOLED_DIM,
                       "layout": "per stage in order: channel means then channel maxima over the unpadded frame",
                       "stages": [{"name": n, "channels": c, "side": s} for n, c, s in medsam.STAGES]}}
    (out / "cache.json").write_text(json.dumps(info, indent=2))
    rows = read_manifest(out)
    todo = []
    for it in items:
        h = file_sha256(it.path)
        if not _valid(rows.get(it.id), out, h, ckpt, stages):
            todo.append((it, h))
    reused = len(items) - len(todo)
    log(f"[embeddings] {dataset}: {len(items)} slices, {reused} already cached, {len(todo)} to compute -> {out}")
    t_start = time.perf_counter()
    times = []
    with open(out / "manifest.jsonl", "a") as man:
        for i, (it, h) in enumerate(todo, 1):
            t0 = time.perf_counter()
            img = read_image(dataset, it.path)
            enc = medsam.encode(img, stages=True)
            _save_npy(out / "emb" / f"{it.id}.npy", enc.embedding.astype(np.float16))
            _save_npy(out / "pooled" / f"{it.id}.npy", medsam.pool_stages(enc.stages, enc.valid_hw))
            for st in stages:
                _save_npy(out / "stages" / st / f"{it.id}.npy", enc.stages[st].astype(np.float16))
            row = {"id": it.id, "file": _rel(it.path, root), "file_sha256": h,
                   "checkpoint_sha256": ckpt, "prep": PREP, "shape": list(img.shape),
                   "valid_hw": list(enc.valid_hw), "has_tumour": it.has_tumour, **it.meta}
            man.write(json.dumps(row) + "\n")
            man.flush()
            rows[it.id] = row
            times.append(time.perf_counter() - t0)
            if i % 25 == 0 or i == len(todo):
                rate = float(np.median(times[-25:]))
                log(f"[embeddings] {dataset}: {i}/{len(todo)} computed, median {rate:.2f} s/slice (last 25), "
                    f"about {rate * (len(todo) - i) / 60:.0f} min left")
                sys.stdout.flush()
            if i % POOLED_EVERY == 0:
                write_pooled(out, rows, ckpt)
    n_pooled = write_pooled(out, rows, ckpt)
    secs = time.perf_counter() - t_start
    res = {"dataset": dataset, "total": len(items), "computed": len(todo), "reused": reused,
           "seconds": round(secs, 1), "s_per_slice_median": round(float(np.median(times)), 3) if times else None,
           "pooled_rows": n_pooled, "out": str(out)}
    log(f"[embeddings] done: {json.dumps(res)}")
    return res


class EmbeddingCache:
    """Read side of a cache folder: ``ids``, ``rows`` (manifest), ``embedding(id)`` float16 (256, 64, 64),
    ``pooled()`` -> (ids, float32 (N, 1856)). Only entries made with the current checkpoint are listed."""

    def __init__(self, out: str | Path):
        from bt_demo.models.medsam import CHECKPOINT_SHA256

        self.dir = Path(out)
        rows = read_manifest(self.dir)
        self.rows = {k: r for k, r in rows.items()
                     if r.get("checkpoint_sha256") == CHECKPOINT_SHA256 and r.get("prep") == PREP
                     and (self.dir / "emb" / f"{k}.npy").exists()}
        self.ids = sorted(self.rows)

    def __len__(self) -> int:
        return len(self.ids)

    def embedding(self, iid: str, mmap: bool = True) -> np.ndarray:
        return np.load(self.dir / "emb" / f"{iid}.npy", mmap_mode="r" if mmap else None)

    def stage(self, name: str, iid: str, mmap: bool = True) -> np.ndarray:
        """float16 (C, S, S): a stage map kept with --stages (FileNotFoundError when it was not kept)."""
        return np.load(self.dir / "stages" / name / f"{iid}.npy", mmap_mode="r" if mmap else None)

    def pooled(self) -> tuple[list[str], np.ndarray]:
        x = np.stack([np.load(self.dir / "pooled" / f"{i}.npy") for i in self.ids]) if self.ids else np.zeros((0, 0))
        return list(self.ids), x.astype(np.float32)


def open_cache(out: str | Path) -> EmbeddingCache:
    return EmbeddingCache(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train embeddings", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--root", default=None, help="data folder (default: ../shared/data/<lgg|lgg_sequences|figshare>)")
    p.add_argument("--out", default=None, help="cache folder (default: runs/embeddings/<dataset>)")
    p.add_argument("--only-tumour", action="store_true", help="only slices whose expert mask holds tumour")
    p.add_argument("--per-patient", type=int, default=None, metavar="K",
                   help="the presence study's subset: per patient up to K slices with >= 200 tumour pixels and K "
                        "tumour-free ones, spread over the patient and computed round-robin across patients")
    p.add_argument("--limit", type=int, default=None, help="only the first N slices (after --only-tumour)")
    p.add_argument("--split-file", default=None,
                   help="a split.json or card.json naming patient lists (with --split): only those patients")
    p.add_argument("--split", choices=("train", "val", "test"), default=None)
    p.add_argument("--free-per-patient", type=int, default=None, metavar="K",
                   help="every tumour slice and up to K tumour-free slices per patient (LGG)")
    p.add_argument("--stages", default="", help="comma-separated stage maps to keep as well (e.g. s1)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if (args.split_file is None) != (args.split is None):
        p.error("--split-file and --split go together")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    from bt_demo.models.medsam import CheckpointError

    root = Path(args.root) if args.root else default_root(args.dataset)
    out = Path(args.out) if args.out else Path("runs") / "embeddings" / args.dataset
    try:
        build_cache(args.dataset, root, out, only_tumour=args.only_tumour, limit=args.limit,
                    per_patient=args.per_patient, log=lambda s: print(s, flush=True),
                    patients=split_patients(args.split_file, args.split) if args.split else None,
                    free_per_patient=args.free_per_patient,
                    stages=tuple(x for x in args.stages.split(",") if x))
    except CheckpointError as exc:
        print(f"MedSAM not available: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
