"""``python -m bt_demo.volume INPUT... --out DIR``: segment volumes without the UI.

Each INPUT is a NIfTI file (.nii / .nii.gz), a zip of one DICOM series, or a folder of DICOM files (one
series; ``--series N`` picks one when there are several). For each, writes into ``DIR/<n>_<stem>/``:
``mask.nii.gz`` (in the source's own grid and affine), ``seg.dcm`` (DICOM SEG, for DICOM sources) and
``report.json`` (volume in mL, slices, extent, RANO diameters on the largest slice, the engine and its
card, the settings). Output folders are named by position and input stem; nothing from DICOM headers.
Exit status 0 when every input worked, 1 when any failed (each failure is printed, the rest go on).

For an archive: split the inputs into shards and run one process per shard and machine (e.g. ``xargs -P``
or a job array), each with ``--threads 1`` per core; every input is independent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _inputs(p: Path) -> list:
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file())
    return [p]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bt_demo.volume", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--weights-dir", default=None, help="folder with unet/ (default: the shipped weights)")
    ap.add_argument("--series", type=int, default=None, help="1-based series to use when a folder holds several")
    ap.add_argument("--threshold", type=float, default=None, help="U-Net threshold (default: the model's)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from bt_demo.errors import InputError
    from bt_demo.models.unet import UNetEngine
    from bt_demo.models.weights import weights_dir
    from bt_demo.volume import load_volume
    from bt_demo.volume.export import dicom_seg, mask_nifti_3d
    from bt_demo.volume.segment import segment_volume, volume_numbers

    wd = Path(args.weights_dir) if args.weights_dir else weights_dir()
    unet = UNetEngine.load(str(wd / "unet"))
    if isinstance(unet, str):
        print(f"error: {unet}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for n, inp in enumerate(args.inputs, 1):
        stem = inp.name.split(".")[0] or "input"
        dst = args.out / f"{n:04d}_{stem}"
        t0 = time.perf_counter()
        try:
            vol = load_volume(_inputs(inp), series_index=args.series)
            res = segment_volume(vol, unet, threshold=args.threshold, batch=args.batch)
            nums = volume_numbers(vol, res.mask)
            dst.mkdir(parents=True, exist_ok=True)
            (dst / "mask.nii.gz").write_bytes(mask_nifti_3d(vol, res.mask))
            files = ["mask.nii.gz"]
            if vol.source.startswith("dicom"):
                (dst / "seg.dcm").write_bytes(dicom_seg(vol, res.mask))
                files.append("seg.dcm")
            report = {"disclaimer": "Research demo, not for diagnosis.", "source_format": vol.source,
                      "shape_zyx": list(vol.shape), "volume": nums | {"areas_px": None},
                      "areas_px_per_slice": nums["areas_px"], "engine": res.engine, "settings": res.settings,
                      "seconds": round(res.seconds, 2), "files": files,
                      "placement": "mask.nii.gz has the source's own voxel grid and affine" if vol.source_affine
                      is not None else "no source geometry"}
            (dst / "report.json").write_text(json.dumps(report, indent=1) + "\n")
            ml = f"{nums['volume_ml']:.2f} mL" if nums["volume_ml"] is not None else f"{nums['voxels']} voxels"
            print(f"{inp}: {ml} in {vol.shape[0]} slices, {time.perf_counter() - t0:.1f} s -> {dst}")
        except (InputError, ValueError, OSError) as e:
            failed += 1
            print(f"{inp}: not processed: {e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
