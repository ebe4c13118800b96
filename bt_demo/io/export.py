"""Export a mask (PNG, NIfTI) and a JSON report, for the user to download.

Conventions
-----------
* A mask is ``(H, W)`` = (rows, columns) in the pixels of the uploaded slice;
  bool, or numbers where ``> 0`` is lesion (:func:`bt_demo.image.masks.as_mask`).
* ``spacing`` is ``(row_mm, col_mm)``, both finite and > 0, or ``None``.

NIfTI layout (what :func:`mask_nifti` writes)
---------------------------------------------
The 2-D mask is stored as a 3-D volume ``data`` of shape ``(W, H, 1)``,
``uint8`` 0/1, with ``data[i, j, 0] = mask[j, i]`` and the affine
``diag(-col_mm, -row_mm, 1, 1)`` (qform and sform code 1, units mm). So array
axis ``i`` (the mask's columns) runs to the patient's *left* and ``j`` (its
rows) to *posterior*: DICOM's LPS pixel order, the layout ITK-SNAP, 3D Slicer
and nibabel expect. :func:`bt_demo.io.load_slice` reorients NIfTI to RAS+
and displays it radiologically (anterior at the top, the patient's right on
the image's left), which puts ``data[i, j, 0]`` back at row ``j``, column
``i``: reading the file with ``load_slice`` gives ``pixels == mask`` and
``spacing == (row_mm, col_mm)`` to float32 precision, as NIfTI stores it
(0.9 comes back as 0.8999999762; tested). When the slice came from a NIfTI or
a DICOM that places it (``Slice.affine``), that affine is written instead, so
the mask lies on its slice of the source in any viewer. When ``spacing`` is
``None`` and nothing places the slice, the voxel size is written as unknown
(pixdim 0, qform/sform code 0, no units; ``load_slice`` reads it back with
``spacing None``) and the report says ``"spacing_mm": null``.

Nothing exported carries a file name or a patient field: names are
``mask_<id>.png`` etc. with a random id, the PNG has no text chunks, the NIfTI
``descrip`` is a fixed string, and :func:`build_report` refuses identifying
keys and file-name-like values (the rules of :mod:`bt_demo.io.corrections`).
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bt_demo.errors import InputError
from bt_demo.image.masks import as_mask, check_spacing
from bt_demo.io.corrections import check_deidentified, to_jsonable

__all__ = ["DISCLAIMER", "REPORT_SCHEMA_VERSION", "build_report", "mask_nifti", "mask_png", "measurement_record",
           "write_bundle"]

DISCLAIMER = "Research demo, not for diagnosis."
REPORT_SCHEMA_VERSION = 1


def _mask(mask) -> np.ndarray:
    m = as_mask(mask, "mask")
    if m.size == 0:
        raise InputError(f"mask is empty (shape {m.shape}); nothing to export")
    return m


def mask_png(mask) -> bytes:
    """The mask as an 8-bit gray PNG: 255 = lesion, 0 = background; ``(H, W)`` kept.

    Args:
        mask: ``(H, W)`` bool or numeric (``> 0`` = lesion).
    Returns:
        PNG bytes (no text chunks).
    """
    import cv2

    m = _mask(mask)
    ok, buf = cv2.imencode(".png", m.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise InputError("the mask could not be encoded as PNG")
    return buf.tobytes()


def mask_nifti(mask, spacing=None, affine=None) -> bytes:
    """The mask as ``.nii.gz`` bytes: uint8 0/1, placed where its slice is.

    Args:
        mask: ``(H, W)`` bool or numeric (``> 0`` = lesion).
        spacing: ``(row_mm, col_mm)`` or ``None``.
        affine: the slice's ``(column, row, 0, 1) -> world`` matrix
            (:attr:`bt_demo.io.Slice.affine`) or ``None``. With it the mask
            sits on its slice of the source volume in any viewer (sform and
            qform code 1, "scanner"); without it but with a spacing, the
            module docstring's layout; with neither, the voxel size is written
            as unknown (qform/sform code 0, no units), never as 1 mm.
    Returns:
        gzip-compressed NIfTI-1 bytes of shape ``(W, H, 1)``, ``data[i, j, 0] = mask[j, i]`` (with neither
        affine nor spacing: ``mask[H-1-j, i]``, voxel size 0 = unknown).
    """
    import nibabel as nib

    m = _mask(mask)
    sp = check_spacing(spacing)
    data = np.ascontiguousarray(m.T[:, :, None].astype(np.uint8))
    code = 1
    if affine is not None:
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.isfinite(affine).all():
            raise InputError("the slice's affine must be a finite 4x4 matrix")
    elif sp is not None:
        affine = np.diag([-sp[1], -sp[0], 1.0, 1.0])
    else:
        affine, code = None, 0  # the size is unknown
    if not code:
        # no orientation (nibabel then reads the axes as LAS, Analyze's default) and voxel size 0 = unknown: stored
        # so that such a reader, showing it radiologically (bt_demo.io), gets the mask back as drawn
        data = np.ascontiguousarray(m[::-1, :].T[:, :, None].astype(np.uint8))
    img = nib.Nifti1Image(data, affine if code else None)  # None: nibabel writes no qform/sform (code 0)
    img.header.set_data_dtype(np.uint8)
    img.header.set_xyzt_units("mm" if code else "unknown")
    if code:
        img.header.set_qform(affine, code=code)
        img.header.set_sform(affine, code=code)
    else:
        img.header["pixdim"][1:4] = 0.0
    img.header["descrip"] = b"bt_demo lesion mask (research demo)"
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def measurement_record(m: dict, mask_name: str | None = None) -> dict:
    """The report's ``measurement`` section from a :func:`bt_demo.studies.measure.measure` result.

    Keeps the numbers (area, RANO diameters and their product, bounding box,
    centroid, side of the brain with its caveat) rounded to 0.01, with every
    length's unit spelt out; drops the contour points (the exported mask holds
    the outline). Coordinates ``(x, y)`` are slice pixels whatever the unit.
    """
    if not isinstance(m, dict) or "long_diameter" not in m:
        raise InputError("m must be the dict returned by bt_demo.studies.measure.measure(mask)")

    def r(v):
        return None if v is None else round(float(v), 2)

    def pt(p):
        return None if p is None else [r(p[0]), r(p[1])]

    def axis(a):
        return None if a is None else {"p0_xy_px": pt(a["p0"]), "p1_xy_px": pt(a["p1"]), "length": r(a["length"])}

    unit = m["unit"]
    return {
        "mask": mask_name,
        "unit": unit,
        "spacing_mm": m.get("spacing"),
        "area_px": int(m["area_px"]),
        "area_mm2": r(m.get("area_mm2")),
        "long_diameter": r(m["long_diameter"]),
        "perpendicular_diameter": r(m["short_diameter"]),
        "rano_product": r(m["rano_product"]),
        "product_unit": f"{unit}²",
        "long_axis": axis(m.get("long_axis")),
        "perpendicular_axis": axis(m.get("short_axis")),
        "bbox_xyxy_px": None if m.get("bbox") is None else [int(v) for v in m["bbox"]],
        "centroid_xy_px": pt(m.get("centroid")),
        "components": int(m.get("n_components", 0)),
        "touches_border": bool(m.get("touches_border", False)),
        "side": m.get("side"),
        "midline_x_px": r(m.get("midline_x")),
        "midline_source": m.get("midline_source"),
        "side_caveat": m.get("side_caveat"),
        "method": "RANO-style bidimensional product on this 2-D slice: the longest in-plane diameter and the "
                  "longest diameter perpendicular to it, between pixel centres",
    }


def build_report(*, engines: dict, preprocessing: list, prompts: dict, metrics: dict, areas: list,
                 classifier: dict | None, spacing, shape, app_version: str, extra: dict | None = None,
                 measurement: dict | None = None) -> dict:
    """A JSON-safe report of one session's result.

    Args:
        engines: per engine, what it did (name, weights, timing, ...).
        preprocessing: the steps applied, in order (e.g. ``[{"name": ..., "params": {...}}]``).
        prompts: the clicks / box given (coordinates ``(x, y)`` in slice pixels).
        metrics: e.g. :func:`bt_demo.studies.metrics.pairwise_table` output keyed as you like.
        areas: e.g. :func:`bt_demo.studies.metrics.area_table` rows.
        classifier: probabilities and the like, or ``None``.
        spacing: ``(row_mm, col_mm)`` or ``None``.
        shape: ``(H, W)`` of the slice the masks live on.
        app_version: the app's version text.
        extra: anything else worth keeping (checked like the rest).
        measurement: the exported mask's measurements (:func:`measurement_record`), or ``None``;
            stored as ``report["measurement"]`` when given.

    Returns:
        A dict that ``json.dumps(..., allow_nan=False)`` accepts: NumPy values
        become Python numbers or lists, inf / NaN become ``None``. It has
        ``schema_version``, ``created_utc``, ``disclaimer`` (:data:`DISCLAIMER`),
        ``app_version``, ``image`` (``shape``, ``spacing_mm``) and the arguments.

    Raises:
        InputError: a value that is not JSON-like, an identifying key
            (``PatientName``, anything with ``patient``/``filename``/``path``/``uid``...)
            or a file-name-like value anywhere, or a bad ``shape`` / ``spacing``.
    """
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise InputError(f"shape must be (H, W), two whole numbers, got {shape!r}") from None
    if h < 1 or w < 1:
        raise InputError(f"shape must be (H, W) with both sides >= 1, got {shape!r}")
    sp = check_spacing(spacing)
    if not isinstance(app_version, str):
        raise InputError(f"app_version must be text, got {type(app_version).__name__}")
    parts = {"engines": engines, "preprocessing": preprocessing, "prompts": prompts, "metrics": metrics,
             "areas": areas, "classifier": classifier, "extra": extra if extra is not None else {}}
    for name, kind in (("engines", dict), ("preprocessing", list), ("prompts", dict), ("metrics", dict),
                       ("areas", list), ("extra", dict)):
        if not isinstance(parts[name], kind if kind is dict else (list, tuple)):
            raise InputError(f"{name} must be a {kind.__name__}, got {type(parts[name]).__name__}")
    if classifier is not None and not isinstance(classifier, dict):
        raise InputError(f"classifier must be a dict or None, got {type(classifier).__name__}")
    if measurement is not None:
        if not isinstance(measurement, dict):
            raise InputError(f"measurement must be a dict or None, got {type(measurement).__name__}")
        parts["measurement"] = measurement
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "disclaimer": DISCLAIMER,
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "app_version": app_version,
        "image": {"shape": [h, w], "spacing_mm": None if sp is None else list(sp)},
    }
    for name, value in parts.items():
        report[name] = to_jsonable(value, name)
    check_deidentified(report, "report")
    json.dumps(report, allow_nan=False)  # guaranteed by to_jsonable; fail here rather than at download
    return report


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bundle(folder: str | Path, mask, spacing, report: dict, affine=None, prefix: str = "") -> dict[str, Path]:
    """Write ``mask_<id>.png``, ``mask_<id>.nii.gz`` and ``report_<id>.json`` into ``folder``
    (each name after ``prefix``: "SYNTHETIC_" for a generated slice).

    ``<id>`` is random (12 hex digits), never taken from an upload; the
    written report gets ``"bundle_id": <id>`` (the files' names follow from it).
    The mask's shape must match ``report["image"]["shape"]`` when the report
    has one (reports from :func:`build_report` do).

    Returns:
        ``{"png": path, "nifti": path, "report": path}``.
    """
    m = _mask(mask)
    sp = check_spacing(spacing)
    if not isinstance(report, dict):
        raise InputError(f"report must be a dict (from build_report), got {type(report).__name__}")
    image = report.get("image")
    shape = image.get("shape") if isinstance(image, dict) else None
    if shape is not None and tuple(shape) != m.shape:
        raise InputError(f"the mask is {m.shape[0]}x{m.shape[1]} (H x W) but the report describes a "
                         f"{shape[0]}x{shape[1]} slice; export the mask of the slice the report is about")
    rid = secrets.token_hex(6)
    if prefix and not all(c.isalnum() or c in "_-" for c in prefix):
        raise InputError(f"a file-name prefix may hold letters, digits, '_' and '-' only, got {prefix!r}")
    names = {"png": f"{prefix}mask_{rid}.png", "nifti": f"{prefix}mask_{rid}.nii.gz", "report": f"{prefix}report_{rid}.json"}
    rep = to_jsonable(dict(report), "report")
    check_deidentified(rep, "report")
    rep["bundle_id"] = rid
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in names.items()}
    _atomic_write(paths["png"], mask_png(m))
    _atomic_write(paths["nifti"], mask_nifti(m, sp, affine))
    _atomic_write(paths["report"], (json.dumps(rep, indent=1, allow_nan=False) + "\n").encode("utf-8"))
    return paths
