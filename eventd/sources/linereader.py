"""Rotated backups of a followed log: which there are, and reading them.

lumberjack (the API server's log writer) renames the live file to
``<stem>-<UTC time><ext>`` and may gzip it later.  ``rotated_files`` lists
those backups oldest first, ``GzipLog`` reads a compressed one as its
content, and ``distinctive``/``read_head`` tell whether a checkpointed file
is one of them.  Following the live file itself is ``sources/tail.py``.
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

from eventd.sources.tail import HEAD_BYTES, Line, LineSplitter, LogFile, PlainLog

__all__ = [
    "HEAD_BYTES",
    "Backup",
    "GzipLog",
    "Line",
    "LineSplitter",
    "LogFile",
    "PlainLog",
    "distinctive",
    "read_head",
    "rotated_files",
]

log = structlog.get_logger(__name__)


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
