"""Hostile volume uploads, generated here by code (no copied files): the shapes of issue 26.

    python -m bench.hostile_volumes OUT_DIR            # write the files, list them
    python -m bench.hostile_volumes OUT_DIR --measure  # load each in a fresh process: seconds, peak memory added

Each case is ``(name, path, description, expected)``; ``expected`` is "ok" (loads as a volume) or "error"
(refused with a clear message). The measurement runs :func:`bt_demo.volume.load_volume` on each file in a
fresh Python process and reports its wall time and the peak resident memory it added (``ru_maxrss`` after
minus the process's level after imports), as the issue's table does. ``bench.soak_hostile hostile`` sends
the same files through the real server.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import NamedTuple


class Case(NamedTuple):
    name: str
    path: Path
    description: str
    expected: str  # "ok" | "error"


def dicom_bytes(rows: int, cols: int, k: int = 0, *, series_uid: str = "1.2.826.0.1.3680043.8.498.1",
                frames: int | None = None, pixel_frames: int | None = None, gap: float = 3.0) -> bytes:
    """A zero-filled MR DICOM (uint16) at slice position ``k * gap`` mm. ``frames`` writes NumberOfFrames and
    per-frame positions (an enhanced-style multi-frame); ``pixel_frames`` stores that many frames of pixel
    data whatever NumberOfFrames says (a lying header)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    uid = f"{series_uid}.{k + 1}"
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, uid
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "MR", series_uid, series_uid + ".0"
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "PHANTOM", "Phantom^Generated", "", ""
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", "", "", ""
    ds.SeriesNumber, ds.FrameOfReferenceUID = 1, series_uid + ".9"
    ds.InstanceNumber = k + 1
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], gap
    ds.ImagePositionPatient = [0.0, 0.0, k * gap]
    n_pix = 1
    if frames is not None:
        ds.NumberOfFrames = frames
        per = []
        for f in range(min(frames, 4096)):
            pos = Dataset()
            pos.ImagePositionPatient = [0.0, 0.0, f * gap]
            item = Dataset()
            item.PlanePositionSequence = Sequence([pos])
            per.append(item)
        ds.PerFrameFunctionalGroupsSequence = Sequence(per)
        n_pix = frames
    if pixel_frames is not None:
        n_pix = pixel_frames
    ds.PixelData = bytes(rows * cols * 2 * n_pix)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def _series_zip(side: int, n: int, uid: str) -> bytes:
    return _zip([(f"{k:04d}.dcm", dicom_bytes(side, side, k, series_uid=uid)) for k in range(n)])


def _lying_member_size(data: bytes) -> bytes:
    """A zip whose one member's directory entry declares 1 KB although it inflates to much more."""
    raw = bytearray(data)
    cd = raw.rfind(b"PK\x01\x02")
    struct.pack_into("<I", raw, cd + 24, 1024)  # central directory: uncompressed size
    struct.pack_into("<I", raw, 22, 1024)  # local header: uncompressed size
    return bytes(raw)


def make_cases(folder: Path, scale: float = 1.0) -> list[Case]:
    """Write the hostile volume files into ``folder``. ``scale`` < 1 shrinks the counts (for quick tests);
    every shape stays over its limit."""
    folder.mkdir(parents=True, exist_ok=True)
    n = lambda v: max(2, int(v * scale))  # noqa: E731
    cases: list[tuple[str, bytes, str, str]] = []
    inner = _series_zip(512, n(64), "1.2.826.0.1.3680043.8.498.10")
    cases.append(("zip_of_zips_512.zip", _zip([(f"part{i}.zip", inner) for i in range(n(32))]),
                  "a zip of zips of zero-filled 512² DICOM files (nested archive)", "error"))
    inner2 = _series_zip(2048, n(16), "1.2.826.0.1.3680043.8.498.11")
    cases.append(("zip_of_zips_2048.zip", _zip([(f"part{i}.zip", inner2) for i in range(n(8))]),
                  "a small zip of zips of zero-filled 2048² DICOM files (nested archive)", "error"))
    cases.append(("zip_2048.zip", _series_zip(2048, n(256), "1.2.826.0.1.3680043.8.498.12"),
                  "a zip of zero-filled 2048² DICOM files, under the zip's byte limit, over the voxel budget",
                  "error"))
    cases.append(("zip_2048_under_bytes.zip", _series_zip(2048, 40, "1.2.826.0.1.3680043.8.498.16"),
                  "a zip of zero-filled 2048² DICOM files under the byte limit, over the voxel budget", "error"))
    series = [(f"{k:03d}.dcm", dicom_bytes(256, 256, k, series_uid="1.2.826.0.1.3680043.8.498.13"))
              for k in range(20)]
    series.append(("huge.dcm", dicom_bytes(20000, 20000, 20, series_uid="1.2.826.0.1.3680043.8.498.13",
                                           pixel_frames=0)))
    cases.append(("series_one_huge_slice.zip", _zip(series),
                  "a series of 256² slices with one slice whose header declares 20000²", "error"))
    cases.append(("multiframe_lying_count.dcm",
                  dicom_bytes(512, 512, 0, frames=4000, pixel_frames=2, series_uid="1.2.826.0.1.3680043.8.498.14"),
                  "a multi-frame DICOM declaring 4000 frames of 512² with 2 frames of pixel data", "error"))
    cases.append(("inflates_past_declared.zip",
                  _lying_member_size(_zip([("a.dcm", dicom_bytes(1024, 1024, 0)), ("b.dcm", dicom_bytes(1024, 1024, 1))])),
                  "a zip whose member inflates past the size its directory declares", "error"))
    cases.append(("legit_series.zip", _series_zip(256, 24, "1.2.826.0.1.3680043.8.498.15"),
                  "a legitimate 24-slice 256² series in one zip", "ok"))
    out = []
    for name, data, desc, expected in cases:
        p = folder / name
        p.write_bytes(data)
        out.append(Case(name, p, desc, expected))
    return out


_PROBE = r"""
import json, resource, sys, time
from bt_demo.volume import load_volume
from bt_demo.errors import InputError
import numpy, pydicom, nibabel
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
try:
    v = load_volume([sys.argv[1]])
    out = {"result": "loaded", "shape": list(v.shape)}
except InputError as e:
    out = {"result": "refused", "message": str(e)}
out["seconds"] = round(time.perf_counter() - t0, 2)
out["peak_added_mb"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, 1)
print(json.dumps(out))
"""


def measure(cases: list[Case]) -> list[dict]:
    """Each case in a fresh process: refused or loaded, its message, seconds, peak resident memory added."""
    rows = []
    repo = Path(__file__).resolve().parents[1]
    for c in cases:
        r = subprocess.run([sys.executable, "-c", _PROBE, str(c.path)], capture_output=True, text=True, cwd=repo,
                           timeout=600)
        row = {"file": c.name, "bytes": c.path.stat().st_size, "expected": c.expected}
        try:
            row |= json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            row |= {"result": "crashed", "stderr": r.stderr[-300:]}
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hostile_volumes", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--measure", action="store_true", help="load each file in a fresh process and report")
    ap.add_argument("--json", type=Path, default=None, help="write the measured rows here (with --measure)")
    args = ap.parse_args(argv)
    cases = make_cases(args.out)
    for c in cases:
        print(f"{c.name:32s} {c.path.stat().st_size:>12,} B  {c.expected:5s}  {c.description}")
    if args.measure:
        from bench.common import write

        rows = measure(cases)
        for r in rows:
            print(json.dumps(r))
        print(f"wrote {write('hostile_volumes', rows, path=args.json)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
