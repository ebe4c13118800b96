"""``python -m bt_demo.volume INPUT... --out DIR``: segment a cohort of volumes without the UI, on Dask.

Each INPUT is a NIfTI file (.nii / .nii.gz), a zip of one DICOM series, a folder of DICOM files (one series;
``--series N`` picks one when there are several), a cohort folder (whose entries are such inputs) or a CSV
list of paths (column ``path``, else the first column). For each input, writes into ``DIR/<n>_<stem>/``:
``mask.nii.gz`` (in the source's own grid and affine), ``seg.dcm`` (DICOM SEG, for DICOM sources) and
``report.json`` (volume in mL, slices, extent, RANO diameters on the largest slice, the engine, its card and
weights hash, the settings); and ``DIR/summary.csv``, one row per input (status, error, mL, slices, extent,
engine, weights hash, seconds). Output folders are named by position and input stem; nothing from DICOM
headers. Exit status 0 when every input worked (or was done earlier), 1 when any failed.

Runs one task per input on a Dask ``LocalCluster`` of ``--workers`` processes x 1 thread (default: one per
core), or on an existing Dask cluster with ``--scheduler tcp://HOST:PORT`` (many machines; each worker needs
this package installed and the weights folder at the same path). The U-Net is loaded once per worker. A task
that fails or loses its worker is retried once, then listed as failed; the rest go on. Outputs are written to
a temporary folder and renamed when complete, so a crash leaves nothing half-written; running the same
command again skips the inputs whose report.json names the same weights and settings (``--force`` redoes
them). ``--workers 0`` runs everything in this process, without Dask.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bt_demo.volume", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--weights-dir", default=None, help="folder with unet/ (default: the shipped weights)")
    ap.add_argument("--series", type=int, default=None, help="1-based series to use when a folder holds several")
    ap.add_argument("--threshold", type=float, default=None, help="U-Net threshold (default: the model's)")
    ap.add_argument("--batch", type=int, default=8, help="slices per U-Net call")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="LocalCluster worker processes, 1 thread each (default: one per core; 0: no Dask)")
    ap.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler (tcp://HOST:PORT)")
    ap.add_argument("--memory-per-worker", default="3GiB", help="LocalCluster memory limit per worker")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per task (default 1)")
    ap.add_argument("--force", action="store_true", help="redo inputs already done with the same weights and settings")
    args = ap.parse_args(argv)
    from bt_demo.models.weights import weights_dir
    from bt_demo.volume import batch

    wd = Path(args.weights_dir) if args.weights_dir else weights_dir()
    if not (wd / "unet" / "model.safetensors").exists():
        print(f"error: no U-Net weights in {wd / 'unet'}; give --weights-dir", file=sys.stderr)
        return 2
    settings = batch.Settings(str(wd.resolve()), args.series, args.threshold, args.batch, args.threads)
    inputs = batch.expand_inputs(args.inputs)
    progress = batch.Progress(len(inputs))
    client = None
    if args.scheduler or args.workers > 0:
        try:
            client = batch.connect(args.scheduler, args.workers, args.memory_per_worker)
        except ConnectionError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        rows = batch.run_cohort(inputs, args.out, settings, force=args.force, on_row=progress, client=client)
    finally:
        progress.close()
        if client is not None:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()
    for r in rows:
        if r["status"] == "failed":
            print(f"{r['input']}: not processed: {r['error']}", file=sys.stderr)
    failed = sum(r["status"] == "failed" for r in rows)
    print(f"{len(rows)} inputs: {sum(r['status'] == 'ok' for r in rows)} segmented, "
          f"{sum(r['status'] == 'done earlier' for r in rows)} done earlier, {failed} failed, "
          f"{sum(r['status'] == 'duplicate' for r in rows)} duplicates -> {args.out / 'summary.csv'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
