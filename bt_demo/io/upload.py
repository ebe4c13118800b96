"""The files of one volume upload, counted against one budget before any pixel is decoded.

A volume upload is several files, a zip of them, or both. Everything the upload holds is counted against
one :class:`UploadBudget` for the whole upload (not per archive): the number of files, the bytes they
expand to, the DICOM header bytes read and the voxels their headers declare. A limit is checked as soon
as a number is known (a zip's directory gives the files and their sizes before any member is inflated),
and the message says which limit and by how much.

Archives are opened **one level deep only**: a zip inside the upload is listed, but an archive inside an
archive (zip, gzip, tar, 7z or rar) is refused. A scanner or PACS exports a series as files or as one zip;
nesting is what turns a few megabytes into gigabytes (the issue-26 corpus: a 3.7 MB zip of zips held the
server for 35 s and 8.7 GB), and a shared budget would still have to open each inner archive to count it.

Zip members are read as streams, capped at the size their directory entry declares: a member that
inflates past that is refused (zipfile's own CRC check catches the rest).
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bt_demo.errors import InputError

_ARCHIVE_MAGIC = {b"PK\x03\x04": "zip", b"PK\x05\x06": "zip", b"\x1f\x8b": "gzip", b"7z\xbc\xaf": "7z",
                  b"Rar!": "rar", b"BZh": "bzip2", b"\xfd7zXZ": "xz"}


def archive_kind(head: bytes) -> str | None:
    """'zip', 'gzip', '7z', 'rar', 'bzip2', 'xz' or 'tar' from a file's first 512 bytes, else None."""
    for magic, kind in _ARCHIVE_MAGIC.items():
        if head.startswith(magic):
            return kind
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


@dataclass(frozen=True)
class UploadLimits:
    """What one volume upload may hold in all (every file and archive member together)."""

    max_files: int = 2048
    max_bytes: int = 768 << 20  # what the files expand to (a 512x512x256 int16 series is 128 MB)
    max_header_bytes: int = 64 << 20  # DICOM headers read in the first pass (enhanced multi-frame headers are big)
    max_voxels: int = 2 * 512 * 512 * 256  # declared by the headers, every series of the upload together


@dataclass
class UploadBudget:
    """Running totals of one upload against its :class:`UploadLimits`; each ``add_*`` raises when over."""

    limits: UploadLimits = field(default_factory=UploadLimits)
    files: int = 0
    bytes: int = 0
    header_bytes: int = 0
    voxels: int = 0

    def add_files(self, n: int, nbytes: int) -> None:
        self.files += n
        self.bytes += nbytes
        if self.files > self.limits.max_files:
            raise InputError(f"this upload holds {self.files:,} files or more; the limit is {self.limits.max_files:,} "
                             f"({self.files - self.limits.max_files:,} too many). Upload one series")
        if self.bytes > self.limits.max_bytes:
            raise InputError(f"this upload expands to {_mb(self.bytes)} or more; the limit is "
                             f"{_mb(self.limits.max_bytes)} ({_mb(self.bytes - self.limits.max_bytes)} over). "
                             "Upload one series, or fewer files")

    def add_header(self, nbytes: int) -> None:
        self.header_bytes += nbytes
        if self.header_bytes > self.limits.max_header_bytes:
            raise InputError(f"the DICOM headers of this upload take {_mb(self.header_bytes)} or more; the limit is "
                             f"{_mb(self.limits.max_header_bytes)}. Upload one series")

    def header_room(self) -> int:
        return max(0, self.limits.max_header_bytes - self.header_bytes)

    def check_voxels(self, voxels: int) -> None:
        """Called once with the sum over all headers (so the message gives the whole figure)."""
        self.voxels = voxels
        if voxels > self.limits.max_voxels:
            raise InputError(f"the images of this upload declare {voxels:,} voxels in all; the limit is "
                             f"{self.limits.max_voxels:,} ({voxels / self.limits.max_voxels:.1f}x over). "
                             "Upload one series, or crop or downsample it")


class _Capped(io.RawIOBase):
    """A read-only stream that refuses to go past ``cap`` bytes (seek and tell pass through)."""

    def __init__(self, fh, cap: int, message: str) -> None:
        self._fh, self._cap, self._message = fh, cap, message

    name = "upload member"  # pydicom reads .name of the stream it parses

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._fh.tell()

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._fh.seek(pos, whence)

    def readinto(self, b) -> int:
        room = self._cap - self._fh.tell()
        if room <= 0 and len(b):
            raise InputError(self._message)
        data = self._fh.read(min(len(b), room))
        b[:len(data)] = data
        return len(data)


@dataclass(frozen=True)
class Member:
    """One file of the upload. ``name`` is for messages only (never written anywhere); ``size`` in bytes."""

    name: str
    size: int
    _open: Callable[[], io.BufferedIOBase]
    in_archive: bool = False

    @contextlib.contextmanager
    def open(self, cap: int | None = None, message: str = "") -> Iterator[io.BufferedIOBase]:
        """A binary stream of the member; with ``cap``, reading past ``cap`` bytes raises InputError(message).
        A damaged archive member (bad CRC, truncated deflate stream) raises InputError."""
        try:
            with self._open() as fh:
                yield fh if cap is None else io.BufferedReader(_Capped(fh, cap, message))
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise InputError(f"{self.name} is damaged ({e}); its archive was not opened. Export it again") from None

    def read(self) -> bytes:
        """All of the member's bytes: at most its declared size (one byte more is refused)."""
        with self.open() as fh:
            data = fh.read(self.size + 1)
        if len(data) > self.size:
            raise InputError(f"{self.name} expands past the size its archive declares; the archive is damaged "
                             "or built to exhaust memory, so it was not opened")
        return data


class Upload(contextlib.AbstractContextManager):
    """The members of one upload: ``with Upload(items) as up: for m in up.members: ...``.

    items: bytes, paths (a file, or a folder whose files are taken), or a mix; a zip is opened one level
    deep. The archives stay open until the ``with`` block ends, so a second pass (the pixels of the chosen
    series) reads members without listing the archive again.
    """

    def __init__(self, items, limits: UploadLimits | None = None) -> None:
        self.budget = UploadBudget(limits or UploadLimits())
        self._stack = contextlib.ExitStack()
        self.members: list[Member] = []
        try:
            for it in items:
                self._add(it)
        except BaseException:
            self._stack.close()
            raise

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _add(self, it) -> None:
        if isinstance(it, (bytes, bytearray, memoryview)):
            data = bytes(it)
            if archive_kind(data[:512]) == "zip":
                self._add_zip(io.BytesIO(data), "the zip")
            else:
                self._add_one(Member(f"file {len(self.members) + 1}", len(data), lambda d=data: io.BytesIO(d)))
            return
        path = Path(os.fspath(it))
        if not path.exists():
            raise InputError(f"{path.name or 'a file'} could not be found on the server; upload it again")
        if path.is_dir():
            for p in sorted(f for f in path.rglob("*") if f.is_file()):
                self._add(p)
            return
        with open(path, "rb") as fh:
            head = fh.read(512)
        if archive_kind(head) == "zip":
            self._add_zip(path, path.name)
        else:
            self._add_one(Member(path.name, path.stat().st_size, lambda p=path: open(p, "rb")))

    def _add_one(self, m: Member) -> None:
        self.budget.add_files(1, m.size)
        self.members.append(m)

    def _add_zip(self, src, name: str) -> None:
        try:
            z = self._stack.enter_context(zipfile.ZipFile(src))
            infos = [i for i in z.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise InputError(f"{name} is damaged and cannot be opened ({e}); export it again") from None
        # the directory gives every member's size before anything is inflated
        self.budget.add_files(len(infos), sum(i.file_size for i in infos))
        for i in infos:
            if i.flag_bits & 0x1:
                raise InputError(f"{name} is encrypted; upload it without a password")
            self.members.append(Member(f"{name}: {i.filename}", i.file_size, lambda z=z, i=i: z.open(i), True))


def refuse_nested_archive(member: Member, head: bytes) -> None:
    """An archive inside the upload's archive is refused (the module docstring says why)."""
    kind = archive_kind(head)
    if kind is not None and member.in_archive:
        raise InputError(f"{member.name} is itself an archive ({kind}); archives inside archives are not opened. "
                         "Unpack it and upload the series' files, or one zip of them")
