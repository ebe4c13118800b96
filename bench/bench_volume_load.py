"""How fast legitimate volumes load (``bt_demo.volume.load_volume`` alone), to check that the header-first
loader of issue 26 costs nothing on real uploads.

    python -m bench.bench_volume_load [--repeats 5] [--code-dir DIR] [--json out.json]

Files (generated here, or shipped inside nibabel's and pydicom's own packages; no patient data):
- the 155-slice 240 x 240 int16 volume of ``bench.bench_volume`` (phantoms) as a NIfTI .nii.gz, and as a
  155-file DICOM series in one zip;
- nibabel's ``example4d.nii.gz`` and ``anatomical.nii``;
- pydicom's example ``MR_small.dcm`` as a 64-file series in a folder.

Each file is loaded in a fresh process per repeat (the first load of a process pays imports; we time the
load only) and reports the median seconds and the peak resident memory the load added. ``--code-dir`` runs
another checkout's ``bt_demo`` on the same files (the before/after of a change).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from bt_demo.volume import load_volume
import nibabel, pydicom, numpy
items = json.loads(sys.argv[2])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
v = load_volume(items if len(items) > 1 else items[0])
dt = time.perf_counter() - t0
print(json.dumps({"s": dt, "shape": list(v.shape),
                  "mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}))
"""


def _files(folder: Path) -> dict[str, list[str]]:
    import nibabel as nib
    from pydicom.data import get_testdata_file

    from bench.hostile_volumes import dicom_bytes
    from bt_demo.sim.phantom import flair_phantom

    base = [flair_phantom((240, 240), seed=s)[0] for s in range(8)]
    vol = np.stack([(base[k % 8] * 1000).astype(np.int16) for k in range(155)], axis=-1)  # (x, y, z)
    nii = folder / "phantom_155.nii.gz"
    nii.write_bytes(gzip.compress(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 1.0, 1.0])).to_bytes(), compresslevel=1))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for k in range(155):
            z.writestr(f"{k:04d}.dcm", _with_pixels(dicom_bytes(240, 240, k, gap=1.0), vol[:, :, k].T))
    dz = folder / "phantom_155_dicom.zip"
    dz.write_bytes(buf.getvalue())
    data = Path(nib.__file__).parent / "tests" / "data"
    mr = folder / "mr_small_series"
    mr.mkdir()
    for k, raw in enumerate(_mr_small_series(get_testdata_file("MR_small.dcm"), 64)):
        (mr / f"{k:03d}").write_bytes(raw)
    return {"phantom_155 .nii.gz": [str(nii)], "phantom_155 DICOM zip": [str(dz)],
            "nibabel example4d.nii.gz": [str(data / "example4d.nii.gz")],
            "nibabel anatomical.nii": [str(data / "anatomical.nii")],
            "pydicom MR_small x 64 (folder)": [str(p) for p in sorted(mr.rglob("*")) if p.is_file()]}


def _mr_small_series(path: str, n: int) -> list[bytes]:
    """pydicom's example MR slice repeated ``n`` times along its normal (3 mm apart): a folder of a series."""
    import pydicom
    from pydicom.uid import generate_uid

    base = pydicom.dcmread(path)
    iop = np.array([float(v) for v in base.ImageOrientationPatient])
    normal, ipp0, uid = np.cross(iop[:3], iop[3:]), np.array([float(v) for v in base.ImagePositionPatient]), generate_uid()
    out = []
    for k in range(n):
        base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        base.SeriesInstanceUID, base.InstanceNumber = uid, k + 1
        base.ImagePositionPatient = [f"{v:.4f}" for v in ipp0 + 3.0 * k * normal]
        buf = io.BytesIO()
        base.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def _with_pixels(raw: bytes, px: np.ndarray) -> bytes:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(raw))
    ds.PixelData = np.ascontiguousarray(px.astype(np.uint16)).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def run(code_dir: Path, repeats: int, folder: Path) -> list[dict]:
    rows = []
    for name, items in _files(folder).items():
        runs = []
        for _ in range(repeats):
            r = subprocess.run([sys.executable, "-c", _CHILD, str(code_dir), json.dumps(items)],
                               capture_output=True, text=True, cwd=folder)
            if r.returncode:
                runs = [{"error": r.stderr.strip().splitlines()[-1][:200]}]
                break
            runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        if "error" in runs[0]:
            rows.append({"file": name, "error": runs[0]["error"]})
            continue
        rows.append({"file": name, "shape_zyx": runs[0]["shape"],
                     "load_s_median": round(statistics.median(x["s"] for x in runs), 3),
                     "peak_added_mb_median": round(statistics.median(x["mb"] for x in runs), 1)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_volume_load", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--code-dir", type=Path, default=REPO, help="the checkout whose bt_demo is measured")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from bench.common import write

    with tempfile.TemporaryDirectory(prefix="bt_volload_") as tmp:
        rows = run(args.code_dir.resolve(), args.repeats, Path(tmp))
    for r in rows:
        print(json.dumps(r))
    print(f"wrote {write('volume_load', rows, {'code_dir': str(args.code_dir)}, path=args.json)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
