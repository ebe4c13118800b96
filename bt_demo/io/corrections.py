"""The correction store: corrected masks kept, de-identified, for the next training round.

Layout (one folder per record, nothing else at the top level)::

    <root>/
      <id>/                  16 lowercase hex digits, secrets.token_hex(8)
        image.png            16-bit gray PNG, value = round(image * 65535)
        corrected_mask.png   8-bit 0 / 255
        model_mask.png       8-bit 0 / 255 (only when the model's mask was given)
        record.json          see below
      .tmp/                  records being written (invisible to ids())

``record.json`` holds ``schema_version`` (:data:`SCHEMA_VERSION`), ``id``,
``created_utc`` (ISO 8601, ``...Z``), ``shape`` ``[H, W]``, ``spacing``
``[row_mm, col_mm]`` or ``null``, ``engine``, ``prompts``, ``settings``,
``meta``, and ``sha256``: the SHA-256 hex digest of each PNG, keyed by its
role (``image``, ``corrected_mask``, ``model_mask``; the file is
``<role>.png``). The PNGs carry no text chunks.

Crash safety. :meth:`CorrectionStore.save` encodes everything in memory,
writes it into ``<root>/.tmp/<id>.<pid>/``, fsyncs every file and that
folder, then ``os.rename``-s the folder to ``<root>/<id>`` (atomic on POSIX)
and fsyncs the root. A crash (even SIGKILL, see ``bench/crash_store.py``)
therefore leaves either no visible record or a complete one. Entries of
``.tmp`` left by a dead process (or older than an hour) are removed when a
store is opened; the writer's pid in the name keeps one process from deleting
another live process's record in flight.

Privacy (the house rule: the store writes no DICOM header fields, and file
names never come from uploads):

* record ids are random (``secrets.token_hex(8)``), never derived from a file;
* ``prompts``, ``settings`` and ``meta`` are refused (:class:`InputError`, a
  ``ValueError``) when any key at any depth looks identifying. Keys are
  compared case-insensitively with ``_``, ``-``, spaces and dots removed:

  - exactly one of :data:`FORBIDDEN_KEYS` (DICOM patient / study / institution
    / people keywords such as ``PatientName``, ``PatientID``,
    ``PatientBirthDate``, ``StudyDate``, ``AccessionNumber``,
    ``InstitutionName``, ``ReferringPhysicianName``), or
  - containing one of :data:`FORBIDDEN_KEY_PARTS`: ``patient``, ``filename``
    (so ``file_name`` too), ``path``, ``uid``. This is deliberately blunt:
    ``pathology`` and ``fluid`` are refused as well; name such keys otherwise
    (``histology``, ``csf``).
* string values (and ``engine``) are refused when they look like a file name
  or a path (ending in an image/archive extension such as ``.dcm``, ``.nii``,
  ``.nii.gz``, ``.png``; starting with ``/``, ``~``, ``C:\\`` or ``file:``), or
  like a DICOM UID (five or more dot-separated numbers).

Bounds. A save that would take the store past ``max_records`` records or
``max_bytes`` bytes raises :class:`StoreFullError` and writes nothing; old
records are never rotated out silently. The bound is exact for one process
(saves are serialised by a lock); several processes sharing a root may
overshoot by the records they save at the same instant.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bt_demo.errors import InputError
from bt_demo.image.masks import as_mask, check_spacing
from bt_demo.process import pid_alive

__all__ = [
    "FORBIDDEN_KEYS",
    "FORBIDDEN_KEY_PARTS",
    "SCHEMA_VERSION",
    "CorrectionStore",
    "CorruptRecordError",
    "Record",
    "StoreError",
    "StoreFullError",
    "check_deidentified",
    "check_store_root",
    "note_problem",
    "shared_store",
    "to_jsonable",
]

SCHEMA_VERSION = 1
"""Version of ``record.json``; :meth:`CorrectionStore.load` refuses others."""

FORBIDDEN_KEYS = frozenset({
    # DICOM patient module and other identity keywords (normalised: lower case, no separators)
    "patientname", "patientid", "patientbirthdate", "patientbirthtime", "patientsex", "patientage",
    "patientaddress", "patientweight", "patientsize", "otherpatientids", "otherpatientnames",
    "issuerofpatientid", "birthdate", "dateofbirth", "dob", "mrn", "medicalrecordnumber", "ssn",
    # study / series / acquisition dates and times, accession
    "studydate", "seriesdate", "acquisitiondate", "contentdate", "studytime", "seriestime",
    "acquisitiontime", "contenttime", "acquisitiondatetime", "instancecreationdate", "instancecreationtime",
    "accessionnumber", "studyid",
    # places, people, devices
    "institutionname", "institutionaddress", "institutionaldepartmentname", "stationname",
    "referringphysicianname", "performingphysicianname", "physiciansofrecord", "requestingphysician",
    "nameofphysiciansreadingstudy", "operatorsname", "deviceserialnumber",
})
"""Keys refused in ``prompts`` / ``settings`` / ``meta`` (compared after
lower-casing and removing ``_``, ``-``, spaces and dots)."""

FORBIDDEN_KEY_PARTS = ("patient", "filename", "path", "uid")
"""Substrings that make any key refused (after the same normalisation)."""

_BAD_VALUE_RE = re.compile(
    r"(\.(dcm|dicom|ima|nii|nii\.gz|gz|zip|tar|tgz|png|jpe?g|tiff?|bmp|gif|webp|nrrd|mha|mhd|mgz|hdr|img|npy|npz"
    r"|h5|pdf)$)"
    r"|(^(/|~|[a-z]:[\\/]|file:))"
    r"|(^\d+(\.\d+){4,}$)",
    re.IGNORECASE,
)
_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_TMP = ".tmp"
_STALE_TMP_S = 3600.0
_MAX_JSON_BYTES = 1 << 20  # prompts + settings + meta, serialised
_ROLES = ("image", "corrected_mask", "model_mask")
_MAX_PIXELS = 4096 * 4096


class StoreError(InputError):
    """The correction store could not do what was asked (the message says why and what to do)."""


class StoreFullError(StoreError):
    """Saving would take the store past its record or byte limit; nothing was written."""


class CorruptRecordError(StoreError):
    """A record's files fail verification (missing, changed, or undecodable)."""


@dataclass(frozen=True, eq=False)
class Record:
    """One stored correction, as :meth:`CorrectionStore.load` returns it.

    Attributes:
        id: 16 lowercase hex digits.
        created_utc: ISO 8601 UTC time of the save, e.g. ``2025-01-31T12:00:00.000000Z``.
        image: float32 ``(H, W)`` in ``[0, 1]`` (16-bit quantised: ``k / 65535``).
        model_mask: bool ``(H, W)`` or ``None`` when not saved.
        corrected_mask: bool ``(H, W)``.
        prompts, settings, meta: the JSON-safe dicts given to ``save``.
        spacing: ``(row_mm, col_mm)`` or ``None``.
        engine: name of the engine whose mask was corrected ("" when not given).
    """

    id: str
    created_utc: str
    image: np.ndarray
    model_mask: np.ndarray | None
    corrected_mask: np.ndarray
    prompts: dict
    settings: dict
    spacing: tuple[float, float] | None
    engine: str
    meta: dict


# ---------------------------------------------------------------------------
# de-identification and JSON safety (also used by bt_demo.io.export)
# ---------------------------------------------------------------------------
def _norm_key(key: str) -> str:
    return re.sub(r"[\s_.\-]", "", key).lower()


def _key_problem(key: str) -> str | None:
    k = _norm_key(key)
    if k in FORBIDDEN_KEYS:
        return "it is a patient / study identifying field"
    for part in FORBIDDEN_KEY_PARTS:
        if part in k:
            return f"it contains {part!r}, which may identify a patient or a file"
    return None


def _value_problem(value: str) -> str | None:
    if _BAD_VALUE_RE.search(value.strip()):
        return "it looks like a file name, a path or a DICOM UID"
    return None


def check_deidentified(obj, where: str = "value") -> None:
    """Refuse identifying keys and file-name-like values anywhere inside ``obj``.

    ``obj``: any nesting of dicts, lists and tuples. Raises :class:`InputError`
    (a ``ValueError``) naming the first offending place, e.g.
    ``meta['dicom']['PatientName']``. See the module docstring for the rules.
    """
    stack = [(obj, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                if isinstance(k, str):
                    why = _key_problem(k)
                    if why:
                        raise InputError(f"{at}[{k!r}] cannot be stored: {why}. Corrections are kept "
                                         "de-identified; remove this entry or rename it")
                    kv = _value_problem(k)
                    if kv:
                        raise InputError(f"{at} has the key {k!r}, which cannot be stored: {kv}. "
                                         "Never use upload names as keys")
                stack.append((v, f"{at}[{k!r}]"))
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(item))
        elif isinstance(item, str):
            why = _value_problem(item)
            if why:
                raise InputError(f"{at} = {item!r} cannot be stored: {why}. Upload names and paths are never "
                                 "kept; leave this value out")


def to_jsonable(obj, where: str = "value"):
    """A JSON-safe copy of ``obj``: dicts (str keys), lists, str, int, float, bool, None.

    Tuples and NumPy arrays become lists, NumPy scalars Python numbers, and
    non-finite floats (inf, NaN) ``None``. Anything else (bytes, objects,
    paths) raises :class:`InputError` naming where it is.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if isinstance(k, (bool, np.bool_)) or not isinstance(k, (str, int, np.integer)):
                raise InputError(f"{where} has a key of type {type(k).__name__}; keys must be text")
            out[str(k)] = to_jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise InputError(f"{where} is an array of {obj.dtype}; only numeric arrays can be stored")
        return to_jsonable(obj.tolist(), where)
    raise InputError(f"{where} is a {type(obj).__name__}; only numbers, text, lists and dicts can be stored")


# ---------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------
def _check_image(image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise InputError(f"image must be a 2-D (H, W) array, got shape {arr.shape}")
    if arr.dtype.kind != "f":
        raise InputError(f"image must be float in [0, 1] (e.g. Slice.unit()), got dtype {arr.dtype}")
    if arr.size == 0 or arr.size > _MAX_PIXELS:
        raise InputError(f"image must have 1 to {_MAX_PIXELS:,} pixels, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError("image contains NaN or infinity; pass the display-normalised slice (Slice.unit())")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise InputError(f"image values must be in [0, 1], got {lo:.4g}..{hi:.4g}; pass the display-normalised "
                         "slice (Slice.unit()), not raw scanner units")
    return np.clip(arr.astype(np.float32), 0.0, 1.0)  # only rounding slack is clipped


def _check_mask(mask, name: str, shape: tuple[int, int]) -> np.ndarray:
    m = as_mask(mask, name)
    if m.shape != shape:
        raise InputError(f"{name} has shape {m.shape} but the image has shape {shape}; "
                         "masks must be in the pixels of the same slice")
    return m


def _check_dict(value, name: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{name} must be a dict or None, got {type(value).__name__}")
    out = to_jsonable(value, name)
    check_deidentified(out, name)
    return out


def _check_id(rid) -> str:
    if not isinstance(rid, str) or not _ID_RE.match(rid):
        raise InputError(f"{rid!r} is not a record id (16 lowercase hex digits)")
    return rid


# ---------------------------------------------------------------------------
# PNG and filesystem helpers
# ---------------------------------------------------------------------------
def _png(arr: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr), [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise StoreError("could not encode a PNG for the correction store")
    return buf.tobytes()


def _unpng(data: bytes, dtype) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 2 or arr.dtype != dtype:
        raise ValueError(f"not a {np.dtype(dtype).itemsize * 8}-bit gray PNG")
    return arr


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------
def check_store_root(root: str | Path) -> Path:
    """Create (if needed) and check the store's folder; a :class:`StoreError` says what is wrong and what to do.

    Refused: a folder that cannot be created, one that exists but is not writable, and one inside
    Gradio's upload cache (whatever is there can be downloaded through the server's file route).
    """
    root = Path(root).expanduser()
    cache = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()
    try:
        inside_cache = root.resolve().is_relative_to(cache)
    except (OSError, RuntimeError):
        inside_cache = False
    if inside_cache:
        raise StoreError(f"the correction store {root} is inside Gradio's upload cache ({cache}), from which files "
                         "can be downloaded; choose another folder (--annotations-dir / BT_ANNOTATIONS_DIR)")
    if root.is_dir():
        if not os.access(root, os.W_OK | os.X_OK):
            raise StoreError(f"the correction store folder {root} exists but is not writable by this server; "
                             "make it writable or choose another folder (--annotations-dir / BT_ANNOTATIONS_DIR)")
    elif root.exists():
        raise StoreError(f"the correction store {root} is a file, not a folder; choose a folder "
                         "(--annotations-dir / BT_ANNOTATIONS_DIR)")
    try:
        (root / _TMP).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"the correction store folder {root} cannot be created ({e.strerror or e}); "
                         "set --annotations-dir / BT_ANNOTATIONS_DIR to a writable folder") from None
    return root


_shared: dict[tuple, "CorrectionStore"] = {}
_shared_lock = threading.Lock()


def shared_store(root: str | Path, max_records: int = 10000) -> "CorrectionStore":
    """The one store object of this process for ``root`` (one lock, so the cap holds under concurrent saves)."""
    key = (str(Path(root).expanduser().resolve()), int(max_records))
    with _shared_lock:
        store = _shared.get(key)
        if store is None:
            store = _shared[key] = CorrectionStore(key[0], max_records=max_records)
        return store


_NOTE_PATTERNS = (
    (re.compile(r"\b\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}\b"), "a date"),
    (re.compile(r"\b\d{1,2}\s+(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+\d{2,4}\b", re.I), "a date"),
    (re.compile(r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+\d{1,2},?\s+\d{2,4}\b", re.I), "a date"),
    (re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+"), "an e-mail address"),
    (re.compile(r"\b(?=[a-z]*\d)(?=\d*[a-z])[a-z\d]{4,}\b", re.I), "an identifier (letters and digits)"),
    (re.compile(r"\d[\d\s-]{3,}\d"), "a long number (an id or phone number)"),
    (re.compile(r"\b(patient|name|dob|born|birth|mrn|ssn|accession|address|phone|mr|mrs|ms|miss|dr)\b\.?", re.I),
     "a word that introduces personal details"),
    (re.compile(r"\b[A-Z][a-z]+\s+[A-Z][a-z]+\b"), "what looks like a person's name (two capitalised words)"),
)


def note_problem(note: str) -> str | None:
    """Why a free-text note cannot go into the de-identified store (None when it can).

    Refused rather than silently edited, so the clinician sees what to take out: dates, e-mail
    addresses, identifiers (letters and digits, or 5+ digits), words that introduce personal
    details (patient, name, DOB, MRN, Mr/Dr...) and two capitalised words in a row (a name).
    """
    for pattern, what in _NOTE_PATTERNS:
        m = pattern.search(note)
        if m:
            return f"the note contains {what} ({m.group(0)!r}); describe the correction without personal details"
    return None


class CorrectionStore:
    """A folder of de-identified corrections, safe against crashes and bounded in size.

    Args:
        root: the folder (created when missing).
        max_records: most records kept, 1 to 10,000,000.
        max_bytes: most bytes of record files kept, 1 MiB to 1 TiB.

    Opening a store removes stale half-written records from ``<root>/.tmp``.
    One instance may be shared by threads (saves are serialised).
    """

    def __init__(self, root: str | Path, max_records: int = 10000, max_bytes: int = 2 * 1024**3) -> None:
        if isinstance(max_records, bool) or not isinstance(max_records, (int, np.integer)) \
                or not 1 <= max_records <= 10_000_000:
            raise ValueError(f"max_records must be a whole number from 1 to 10,000,000, got {max_records!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) \
                or not 1 << 20 <= max_bytes <= 1 << 40:
            raise ValueError(f"max_bytes must be a whole number from 1 MiB ({1 << 20:,}) to 1 TiB ({1 << 40:,}), "
                             f"got {max_bytes!r}")
        self.root = Path(root)
        self.max_records = int(max_records)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        check_store_root(self.root)
        self._clean_tmp()

    def __repr__(self) -> str:
        return f"CorrectionStore({str(self.root)!r}, max_records={self.max_records}, max_bytes={self.max_bytes})"

    @staticmethod
    def default_root() -> Path:
        """Where the app keeps corrections.

        ``$BT_ANNOTATIONS_DIR`` when set; else ``/data/corrections`` when
        ``/data`` exists and is writable (Hugging Face Spaces persistent
        storage); else ``<repo>/corrections``.
        """
        env = os.environ.get("BT_ANNOTATIONS_DIR")
        if env:
            return Path(env).expanduser()
        data = Path("/data")
        if data.is_dir() and os.access(data, os.W_OK | os.X_OK):
            return data / "corrections"
        return Path(__file__).resolve().parents[2] / "corrections"

    # -- listing ------------------------------------------------------------
    def _clean_tmp(self) -> None:
        tmp = self.root / _TMP
        now = time.time()
        for entry in tmp.iterdir():
            parts = entry.name.rsplit(".", 1)
            pid = int(parts[1]) if len(parts) == 2 and parts[1].isdigit() else None
            try:
                age = now - entry.lstat().st_mtime
            except FileNotFoundError:
                continue
            if pid is not None and (pid == os.getpid() or pid_alive(pid)) and age < _STALE_TMP_S:
                continue  # a live writer's record in flight
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def ids(self) -> list[str]:
        """Ids of the complete records, sorted (random ids: the order is not the save order)."""
        out = []
        with os.scandir(self.root) as it:
            for e in it:
                if _ID_RE.match(e.name) and e.is_dir(follow_symlinks=False) \
                        and os.path.isfile(os.path.join(e.path, "record.json")):
                    out.append(e.name)
        return sorted(out)

    def __len__(self) -> int:
        return len(self.ids())

    def __contains__(self, rid) -> bool:
        return isinstance(rid, str) and bool(_ID_RE.match(rid)) and rid in self.ids()

    def size_bytes(self) -> int:
        """Total bytes of the files of the complete records."""
        return self._usage()[1]

    def _usage(self) -> tuple[int, int]:
        """(records, bytes) in one pass over the folder."""
        ids = self.ids()
        total = 0
        for rid in ids:
            try:
                with os.scandir(self.root / rid) as it:
                    for e in it:
                        if e.is_file(follow_symlinks=False):
                            total += e.stat(follow_symlinks=False).st_size
            except FileNotFoundError:  # deleted meanwhile
                continue
        return len(ids), total

    # -- writing ------------------------------------------------------------
    def save(self, *, image, corrected_mask, model_mask=None, prompts=None, settings=None, spacing=None,
             engine: str = "", meta=None) -> str:
        """Store one correction; return its new record id (16 hex digits).

        Args:
            image: float ``(H, W)`` in ``[0, 1]`` (e.g. ``Slice.unit()``); values
                within 1e-3 outside are clipped, further out are refused.
            corrected_mask: the user's mask, ``(H, W)``, bool or numbers (> 0 = lesion).
            model_mask: the engine's mask before correction, same shape, or ``None``.
            prompts, settings, meta: dicts of JSON-safe values (NumPy values
                are converted; inf/NaN become ``null``), checked for identifying
                keys and file-name-like values (module docstring).
            spacing: ``(row_mm, col_mm)`` > 0, or ``None``.
            engine: name of the engine whose mask was corrected (checked like a value).

        Raises:
            InputError: bad shapes, ranges or identifying content; nothing is written.
            StoreFullError: the store is at its limit; nothing is written.
            StoreError: the disk refused the write; nothing visible is left behind.
        """
        img = _check_image(image)
        shape = (int(img.shape[0]), int(img.shape[1]))
        cm = _check_mask(corrected_mask, "corrected_mask", shape)
        mm = None if model_mask is None else _check_mask(model_mask, "model_mask", shape)
        sp = check_spacing(spacing)
        if not isinstance(engine, str) or len(engine) > 200:
            raise InputError(f"engine must be text of at most 200 characters, got {type(engine).__name__}")
        check_deidentified(engine, "engine")
        prompts_j = _check_dict(prompts, "prompts")
        settings_j = _check_dict(settings, "settings")
        meta_j = _check_dict(meta, "meta")
        if len(json.dumps([prompts_j, settings_j, meta_j])) > _MAX_JSON_BYTES:
            raise InputError(f"prompts, settings and meta together exceed {_MAX_JSON_BYTES // 1024} KiB of JSON; "
                             "store summaries, not whole images or probability maps")

        files = {"image.png": _png(np.rint(img.astype(np.float64) * 65535.0).astype(np.uint16)),
                 "corrected_mask.png": _png(cm.astype(np.uint8) * 255)}
        if mm is not None:
            files["model_mask.png"] = _png(mm.astype(np.uint8) * 255)

        with self._lock:
            rid = secrets.token_hex(8)
            while (self.root / rid).exists():  # astronomically unlikely
                rid = secrets.token_hex(8)
            record = {
                "schema_version": SCHEMA_VERSION,
                "id": rid,
                "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "shape": list(shape),
                "spacing": None if sp is None else list(sp),
                "engine": engine,
                "prompts": prompts_j,
                "settings": settings_j,
                "meta": meta_j,
                "image_encoding": "16-bit PNG, value = round(image * 65535)",
                "sha256": {name[:-4]: hashlib.sha256(data).hexdigest() for name, data in files.items()},
            }
            files["record.json"] = json.dumps(record, indent=1, allow_nan=False).encode("utf-8")
            new_bytes = sum(len(d) for d in files.values())
            n, size = self._usage()
            if n >= self.max_records or size + new_bytes > self.max_bytes:
                raise StoreFullError(
                    f"the correction store is full: {n:,} of {self.max_records:,} records, "
                    f"{size / 1e6:,.1f} MB of {self.max_bytes / 1e6:,.1f} MB (this correction needs "
                    f"{new_bytes / 1e3:,.0f} kB). Nothing was saved. Ask the administrator to move the stored "
                    "corrections into training and clear the store, or to raise its limit (python app.py "
                    "--max-corrections N, or BT_MAX_CORRECTIONS)")
            self._commit(rid, files)
        return rid

    def _commit(self, rid: str, files: dict[str, bytes]) -> None:
        tmp_root = self.root / _TMP
        tmp = tmp_root / f"{rid}.{os.getpid()}"
        try:
            tmp_root.mkdir(exist_ok=True)
            tmp.mkdir()
            for name, data in files.items():  # record.json last
                _write_synced(tmp / name, data)
            _fsync_dir(tmp)
            os.rename(tmp, self.root / rid)
            _fsync_dir(self.root)
            _fsync_dir(tmp_root)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(f"the correction could not be written to the store ({e.strerror or e}); "
                             "nothing was saved. Check that the disk has space and the folder is writable") from None

    def delete(self, rid: str) -> None:
        """Remove a record (atomically: it disappears from :meth:`ids` at once)."""
        _check_id(rid)
        src = self.root / rid
        if not src.is_dir():
            raise InputError(f"there is no record {rid} in this store")
        gone = self.root / _TMP / f"{rid}-deleted.{os.getpid()}"
        with self._lock:
            os.rename(src, gone)
            _fsync_dir(self.root)
        shutil.rmtree(gone, ignore_errors=True)

    # -- reading ------------------------------------------------------------
    def load(self, rid: str) -> Record:
        """Read and verify one record.

        Raises:
            InputError: ``rid`` is not an id of this store.
            CorruptRecordError: a file is missing, its SHA-256 differs from
                ``record.json``, or it cannot be decoded.
        """
        _check_id(rid)
        folder = self.root / rid
        if not (folder / "record.json").is_file():
            raise InputError(f"there is no record {rid} in this store")
        try:
            rec = json.loads((folder / "record.json").read_text("utf-8"))
            if not isinstance(rec, dict) or rec.get("schema_version") != SCHEMA_VERSION:
                raise ValueError(f"unknown schema_version {rec.get('schema_version') if isinstance(rec, dict) else None}")
            if rec.get("id") != rid:
                raise ValueError("record.json belongs to another record")
            digests = rec["sha256"]
            if not {"image", "corrected_mask"} <= set(digests) or not set(digests) <= set(_ROLES):
                raise ValueError("record.json lists the wrong files")
            data = {}
            for role, digest in digests.items():
                raw = (folder / f"{role}.png").read_bytes()
                if hashlib.sha256(raw).hexdigest() != digest:
                    raise ValueError(f"{role}.png has changed since it was saved (SHA-256 mismatch)")
                data[role] = raw
            shape = tuple(int(v) for v in rec["shape"])
            image = _unpng(data["image"], np.uint16).astype(np.float32) / np.float32(65535.0)
            masks = {n: _unpng(data[n], np.uint8) > 127 for n in ("corrected_mask", "model_mask") if n in data}
            if image.shape != shape or any(m.shape != shape for m in masks.values()):
                raise ValueError("a file's size differs from the record's shape")
            spacing = rec.get("spacing")
            return Record(id=rid, created_utc=str(rec["created_utc"]), image=image,
                          model_mask=masks.get("model_mask"), corrected_mask=masks["corrected_mask"],
                          prompts=rec.get("prompts") or {}, settings=rec.get("settings") or {},
                          spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
                          engine=str(rec.get("engine", "")), meta=rec.get("meta") or {})
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            raise CorruptRecordError(f"record {rid} is damaged and was skipped ({e}); "
                                     "delete it or restore it from a backup") from None

    def check(self) -> dict:
        """Verify every record: ``{"readable": [ids], "corrupt": {id: reason}}``."""
        readable, corrupt = [], {}
        for rid in self.ids():
            try:
                self.load(rid)
            except CorruptRecordError as e:
                corrupt[rid] = str(e)
            except InputError as e:  # deleted meanwhile
                corrupt[rid] = str(e)
            else:
                readable.append(rid)
        return {"readable": readable, "corrupt": corrupt}
