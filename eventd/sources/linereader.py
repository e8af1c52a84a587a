"""Log files as a tailer sees them: complete lines, open files, rotated backups.

``LineSplitter`` turns a byte stream into whole lines without ever handing
out an unterminated tail (the writer may be in the middle of it) and without
ever holding more than ``max_line`` bytes of one line (an oversize line is
skipped by looking for its end, not buffered).

``PlainLog`` and ``GzipLog`` are open files read sequentially from our own
offset, with the identity a checkpoint needs.  ``rotated_files`` lists the
backups lumberjack leaves next to the live file.
"""

from __future__ import annotations

import calendar
import gzip
import os
import re
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import structlog

from eventd.sources.checkpoint import Checkpoint, fingerprint

log = structlog.get_logger(__name__)

#: Bytes of a file's start that identify it.  An audit line carries its
#: auditID within its first ~120 bytes, so this covers it with a wide margin.
HEAD_BYTES = 1024

#: A line: its bytes (``None`` when it was longer than allowed and skipped)
#: and the offset just after its newline.
Line = tuple[bytes | None, int]


class LineSplitter:
    """Split a byte stream into complete lines, keeping a torn tail back.

    ``end`` is the stream offset after the last byte fed.  ``mid_line``
    starts inside a line (tailing from the end of a file): its rest is
    dropped silently up to the next newline.
    """

    __slots__ = ("_buf", "_counted", "_skipping", "end", "max_line")

    def __init__(self, offset: int, max_line: int, *, mid_line: bool = False) -> None:
        self.end = offset
        self.max_line = max_line
        self._buf = bytearray()
        self._skipping = mid_line
        self._counted = not mid_line

    @property
    def held(self) -> int:
        """Bytes of an incomplete line kept in memory."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Line]:
        """The lines completed by ``data``, without their newlines."""
        out: list[Line] = []
        start = self.end
        self.end = start + len(data)
        limit = self.max_line
        i = 0
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                return out
            if self._counted:
                out.append((None, start + nl + 1))
            self._skipping, self._counted = False, True
            i = nl + 1
        elif self._buf:
            nl = data.find(b"\n")
            if nl < 0:
                self._hold(data, 0)
                return out
            if len(self._buf) + nl > limit:
                out.append((None, start + nl + 1))
            else:
                self._buf += data[:nl]
                out.append((bytes(self._buf), start + nl + 1))
            self._buf.clear()
            i = nl + 1
        last = data.rfind(b"\n", i)
        if last >= 0:
            pos = start + i
            for line in data[i:last].split(b"\n"):
                pos += len(line) + 1
                out.append((line if len(line) <= limit else None, pos))
            i = last + 1
        if i < len(data):
            self._hold(data, i)
        return out

    def flush(self) -> Line | None:
        """The unterminated rest, once the stream is known to be complete."""
        if self._skipping:
            counted = self._counted
            self._skipping, self._counted = False, True
            return (None, self.end) if counted else None
        if self._buf:
            line = bytes(self._buf)
            self._buf.clear()
            return line, self.end
        return None

    def _hold(self, data: bytes, i: int) -> None:
        if len(self._buf) + len(data) - i > self.max_line:
            self._buf.clear()
            self._skipping = True
        else:
            self._buf += memoryview(data)[i:]


class LogFile:
    """An open log file read sequentially from ``offset``."""

    path: Path
    device: int
    inode: int
    #: Content bytes already read (decompressed bytes for gzip).
    offset: int
    #: The first ``HEAD_BYTES`` of the content, or all of it while shorter.
    head: bytes
    mtime_ns: int
    splitter: LineSplitter
    #: True for the live file: it grows, may be truncated, and is finished
    #: only when its path names another file.
    follow: bool = False
    _fp: tuple[bytes, str] = (b"", fingerprint(b""))

    def read(self, size: int) -> bytes:
        raise NotImplementedError

    def start_at(self, offset: int) -> None:
        """Continue reading at ``offset`` (a line boundary)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def checkpoint(self, offset: int) -> Checkpoint:
        """The position ``offset`` in this file."""
        head, fp = self._fp
        if head is not self.head:
            head, fp = self.head, fingerprint(self.head)
            self._fp = head, fp
        return Checkpoint(str(self.path), self.device, self.inode, offset, fp, len(head), self.mtime_ns)


class PlainLog(LogFile):
    """A regular file, read with ``pread`` at our own offset.

    The open descriptor keeps a renamed or deleted file readable: that is how
    the rest of a rotated file is read after its name moved on.
    """

    def __init__(self, path: Path, max_line: int, offset: int | None = 0, *, follow: bool = False) -> None:
        """``offset=None`` starts at the current end, at the next line start."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            self.head = os.pread(fd, HEAD_BYTES, 0)
            mid_line = False
            if offset is None:
                offset = st.st_size
                mid_line = offset > 0 and os.pread(fd, 1, offset - 1) != b"\n"
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.path = path
        self.device, self.inode, self.mtime_ns = st.st_dev, st.st_ino, st.st_mtime_ns
        self.follow = follow
        self.offset = offset
        self._max_line = max_line
        self.splitter = LineSplitter(offset, max_line, mid_line=mid_line)

    def read(self, size: int) -> bytes:
        data = os.pread(self.fd, size, self.offset)
        if data:
            self.offset += len(data)
            if len(self.head) < HEAD_BYTES:
                self.head = os.pread(self.fd, HEAD_BYTES, 0)
        return data

    def start_at(self, offset: int) -> None:
        self.head = os.pread(self.fd, HEAD_BYTES, 0)
        self.offset = offset
        self.splitter = LineSplitter(offset, self._max_line)

    def size(self) -> int:
        st = os.fstat(self.fd)
        self.mtime_ns = st.st_mtime_ns
        return st.st_size

    def truncated(self) -> bool:
        """True if the file was truncated under us (logrotate ``copytruncate``).

        The size dropping below our offset shows it; so does a start that
        changed, for a file that was truncated and then grew past us.
        """
        if self.size() < self.offset:
            return True
        n = len(self.head)
        return n > 0 and os.pread(self.fd, n, 0) != self.head

    def replaced(self) -> bool:
        """True once ``path`` names another file (rotated by renaming).

        A missing path is not a replacement yet: the writer renames, then
        creates, and we wait for the new file.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) != (self.device, self.inode)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class GzipLog(LogFile):
    """A compressed backup, read as its decompressed content.

    A damaged archive (a crash during compression) ends where it becomes
    unreadable, with a warning, rather than stopping the tailer on it.
    """

    def __init__(self, path: Path, max_line: int, offset: int, stamp_ms: int) -> None:
        raw = open(path, "rb")  # noqa: SIM115 - owned by the GzipFile, closed in close()
        try:
            st = os.fstat(raw.fileno())
            self._gz = gzip.GzipFile(fileobj=raw, mode="rb")
        except BaseException:
            raw.close()
            raise
        self._raw = raw
        self.path = path
        self.device, self.inode = st.st_dev, st.st_ino
        self.mtime_ns = stamp_ms * 1_000_000
        self._max_line = max_line
        self._broken = False
        self.head = self._guarded_read(HEAD_BYTES)
        self.start_at(offset)

    def read(self, size: int) -> bytes:
        data = self._guarded_read(size)
        self.offset += len(data)
        return data

    def start_at(self, offset: int) -> None:
        if not self._broken:
            try:
                offset = self._gz.seek(offset)  # stops at the end of a shorter content
            except (EOFError, zlib.error, gzip.BadGzipFile) as err:
                self._damaged(err)
        self.offset = offset
        self.splitter = LineSplitter(offset, self._max_line)

    def close(self) -> None:
        self._gz.close()
        self._raw.close()

    def _guarded_read(self, size: int) -> bytes:
        if self._broken:
            return b""
        try:
            return self._gz.read(size)
        except (EOFError, zlib.error, gzip.BadGzipFile) as err:
            self._damaged(err)
            return b""

    def _damaged(self, err: Exception) -> None:
        self._broken = True
        log.warning("audit_log_backup_damaged", file=str(self.path), error=str(err))


@dataclass(frozen=True, slots=True)
class Backup:
    """A rotated file: ``<stem>-<YYYY-MM-DDTHH-MM-SS.mmm><ext>[.gz]``."""

    path: Path
    #: The rotation time in the name (UTC, lumberjack's default), in ms.
    stamp_ms: int
    gz: bool


def rotated_files(live: Path) -> list[Backup]:
    """The backups of ``live``, oldest first.

    While a backup is being compressed both forms exist; the plain one is
    complete and preferred (lumberjack deletes it only after the ``.gz``).
    """
    pattern = _backup_pattern(live.name)
    found: dict[int, Backup] = {}
    try:
        names = os.listdir(live.parent)
    except FileNotFoundError:
        return []
    for name in names:
        m = pattern.fullmatch(name)
        if m is None:
            continue
        year, month, day, hour, minute, second, ms, gz = m.groups()
        stamp = calendar.timegm((int(year), int(month), int(day), int(hour), int(minute), int(second)))
        backup = Backup(live.parent / name, stamp * 1000 + int(ms), gz is not None)
        other = found.get(backup.stamp_ms)
        if other is None or (other.gz and not backup.gz):
            found[backup.stamp_ms] = backup
    return [found[k] for k in sorted(found)]


@lru_cache(maxsize=8)
def _backup_pattern(name: str) -> re.Pattern[str]:
    # lumberjack splits the extension like Go's filepath.Ext: from the last dot.
    dot = name.rfind(".")
    stem, ext = (name[:dot], name[dot:]) if dot > 0 else (name, "")
    stamp = r"(\d{4})-(\d\d)-(\d\d)T(\d\d)-(\d\d)-(\d\d)\.(\d{3})"
    return re.compile(f"{re.escape(stem)}-{stamp}{re.escape(ext)}(\\.gz)?")


def distinctive(head: bytes) -> bool:
    """True if files starting with ``head`` are one file: it holds a whole
    line (audit lines differ by auditID and time) or ``HEAD_BYTES``.  Every
    torn first line starts like ``{"kind":"Event","apiVersion":...``."""
    return len(head) >= HEAD_BYTES or b"\n" in head


def read_head(backup: Backup) -> bytes:
    """The first ``HEAD_BYTES`` of a backup's content (empty if unreadable)."""
    try:
        if backup.gz:
            with gzip.open(backup.path, "rb") as f:
                return f.read(HEAD_BYTES)
        with open(backup.path, "rb") as f:
            return f.read(HEAD_BYTES)
    except (OSError, EOFError, zlib.error):
        return b""
