"""Raw bytes before any reader: the upload read under its size cap, the format told from its content, and
gzip decompressed only as far as needed (a gzip bomb never reaches memory)."""

from __future__ import annotations

import math
import os
import struct
import zlib

from bt_demo.errors import InputError
from bt_demo.io.nifti import nifti_header_info
from bt_demo.io.slice import MAX_FILE_BYTES

__all__ = ["describe_unknown", "gunzip_bounded", "may_be_dicom_without_preamble", "read_upload", "sniff"]

# Cap for gzip content that is not NIfTI (whose size the header bounds instead).
_MAX_GUNZIP_OTHER_BYTES = 128 << 20
_SUPPORTED_TEXT = "PNG, JPEG, TIFF, BMP, GIF, WebP, DICOM (.dcm) or NIfTI (.nii / .nii.gz)"


def read_upload(data) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    elif isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not path:
            raise InputError("no file was given; upload an image file")
        if not os.path.exists(path):
            raise InputError("the uploaded file could not be found on the server; please upload it again")
        if os.path.isdir(path):
            raise InputError("a folder was given, not a file; upload one image file")
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise InputError(_too_big_file_message(size))
        with open(path, "rb") as fh:
            raw = _read_stream(fh)
    elif hasattr(data, "read"):
        raw = _read_stream(data)
    elif data is None:
        raise InputError("no file was given; upload an image file")
    else:
        raise InputError(f"cannot read an upload of type {type(data).__name__}; give bytes, a path or a binary file")
    if len(raw) > MAX_FILE_BYTES:
        raise InputError(_too_big_file_message(len(raw)))
    if not raw:
        raise InputError("the file is empty (0 bytes); upload an image file")
    return raw


def _read_stream(fh) -> bytes:
    """Read a binary stream from its current position, in chunks (never one huge up-front buffer)."""
    chunks, total = [], 0
    while True:
        chunk = fh.read(16 << 20)
        if isinstance(chunk, str):
            raise InputError("the file was opened as text; open it in binary mode ('rb')")
        if not chunk:
            break
        chunks.append(bytes(chunk))
        total += len(chunk)
        if total > MAX_FILE_BYTES:
            raise InputError(_too_big_file_message(total))
    return b"".join(chunks)


def _too_big_file_message(size: int) -> str:
    return (f"the file is too large ({size / 2**20:,.0f} MB; the limit is {MAX_FILE_BYTES / 2**20:,.0f} MB); "
            "upload a single slice or a smaller volume")


# ---------------------------------------------------------------------------
# Format detection
# ---------------------------------------------------------------------------


def sniff(raw: bytes) -> str | None:
    """Format key from magic bytes, or None. DICOM's "DICM" at 128 wins over
    anything in its preamble (dual-personality DICOM/TIFF files)."""
    if len(raw) >= 132 and raw[128:132] == b"DICM":
        return "dicom"
    if raw.startswith(b"\x1f\x8b"):
        return "gzip"
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if raw.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if raw[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if raw[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "webp"
    if raw[:2] == b"BM" and len(raw) >= 26:
        return "bmp"
    if len(raw) >= 4:
        for order in "<>":
            size = struct.unpack(order + "i", raw[:4])[0]
            if size == 348:
                return "nifti1"
            if size == 540:
                return "nifti2"
    return None


def describe_unknown(raw: bytes) -> str:
    head = raw[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if raw.startswith(b"PK\x03\x04") or raw.startswith(b"PK\x05\x06"):
        what = "a ZIP archive; unzip it and upload one image from inside"
    elif head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head[:200]:
        what = "a web page (HTML), not an image; save the image itself, not the page"
    elif raw.startswith(b"%PDF"):
        what = "a PDF document; export the image from it as PNG"
    elif head.startswith(b"<?xml") or head.startswith(b"<svg"):
        what = "an XML/SVG document, not a pixel image"
    elif _looks_like_text(raw[:4096]):
        what = "a text file, not an image"
    else:
        what = "not an image format we recognise"
    return f"this file is {what}. Supported formats: {_SUPPORTED_TEXT}."


def _looks_like_text(chunk: bytes) -> bool:
    if not chunk or b"\x00" in chunk:
        return False
    try:
        text = chunk.decode("utf-8")
    except UnicodeDecodeError:
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * len(text)


def may_be_dicom_without_preamble(raw: bytes) -> bool:
    """A bare DICOM dataset starts with a group 0002 or 0008 tag (either byte order)."""
    if len(raw) < 8:
        return False
    return raw[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


# ---------------------------------------------------------------------------
# gzip, decompressed incrementally and only as far as needed
# ---------------------------------------------------------------------------


class _Gunzip:
    """Incremental gzip reader: ``fill(n)`` decompresses until ``n`` bytes are out."""

    _CHUNK = 1 << 20

    def __init__(self, raw: bytes) -> None:
        self._src = memoryview(raw)
        self._pos = 0
        self._d = zlib.decompressobj(31)
        self._pending = b""
        self.out = bytearray()
        self.ended = False

    def fill(self, n: int) -> None:
        try:
            self._fill(n)
        except zlib.error:
            if not self.out:
                raise InputError("this .gz file is damaged and cannot be decompressed") from None
            self.ended = True  # keep what was decoded; the reader reports truncation if it matters

    def _fill(self, n: int) -> None:
        while len(self.out) < n and not self.ended:
            if self._d.eof:
                rest = self._d.unused_data + bytes(self._src[self._pos:self._pos + 2])
                if rest.startswith(b"\x1f\x8b"):  # another gzip member follows
                    self._pending = self._d.unused_data
                    self._d = zlib.decompressobj(31)
                    continue
                self.ended = True
                break
            if self._d.unconsumed_tail:
                chunk = self._d.unconsumed_tail
            elif self._pending:
                chunk, self._pending = self._pending, b""
            else:
                chunk = bytes(self._src[self._pos:self._pos + self._CHUNK])
                self._pos += len(chunk)
                if not chunk:
                    self.ended = True  # input ended before the gzip stream did (truncated)
                    break
            want = min(n - len(self.out), self._CHUNK)
            self.out += self._d.decompress(chunk, want)


def _nifti_vox_offset(head: bytes, kind: str) -> int:
    """Where a NIfTI's image data starts, from the first bytes of its header (0 when unreadable)."""
    import struct

    if len(head) < 348 + (192 if kind == "nifti2" else 0):
        return 0
    endian = "<" if struct.unpack("<i", head[:4])[0] in (348, 540) else ">"
    try:
        v = struct.unpack(endian + "f", head[108:112])[0] if kind == "nifti1" else struct.unpack(endian + "q", head[168:176])[0]
        return max(0, int(v)) if math.isfinite(v) else 0
    except (struct.error, OverflowError, ValueError):
        return 0


def gunzip_bounded(raw: bytes) -> bytes:
    g = _Gunzip(raw)
    g.fill(1024)
    head = bytes(g.out)
    kind = sniff(head) if head else None
    if kind in ("nifti1", "nifti2"):
        # the header and its extensions end where the image data starts (vox_offset)
        g.fill(min(_nifti_vox_offset(head, kind), MAX_FILE_BYTES))
        hdr_info = nifti_header_info(bytes(g.out), 1 if kind == "nifti1" else 2)
        # Only as many bytes as the header says the image needs: trailing data is never inflated.
        g.fill(hdr_info.needed_bytes)
        del g.out[hdr_info.needed_bytes:]
        return bytes(g.out)
    if kind in ("png", "jpeg", "tiff", "bmp", "gif", "webp", "dicom") or may_be_dicom_without_preamble(head):
        g.fill(_MAX_GUNZIP_OTHER_BYTES + 1)
        if len(g.out) > _MAX_GUNZIP_OTHER_BYTES:
            raise InputError(f"this compressed file expands to more than {_MAX_GUNZIP_OTHER_BYTES >> 20} MB; "
                             "upload the image uncompressed")
        return bytes(g.out)
    if kind == "gzip":
        raise InputError("this file is compressed twice (gzip inside gzip); decompress it and upload the image")
    if not head:
        raise InputError("this .gz file contains nothing (or is damaged); upload the uncompressed image")
    raise InputError("this .gz file does not contain an image we recognise (a NIfTI .nii.gz is expected). "
                     f"Supported formats: {_SUPPORTED_TEXT}.")
