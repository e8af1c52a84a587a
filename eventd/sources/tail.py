"""Following a file by name: the one tailer both file inputs use.

``sources/audit_log.py`` (kube-apiserver's audit log) and
``sources/falco_file.py`` (Falco's ``file_output``) read a file that another
process appends to, rotates (renames it and creates a new one) or truncates
in place (logrotate ``copytruncate``).  The reading pieces live here so a
rotation or truncation bug is fixed once:

* ``LineSplitter`` turns a byte stream into whole lines without ever handing
  out an unterminated tail (the writer may be in the middle of it) and
  without ever holding more than ``max_line`` bytes of one line (an
  oversize line is skipped by looking for its end, not buffered), each line
  with the stream offset after it (what a checkpoint records).
* ``PlainLog`` is an open file read with ``pread`` at our own offset, with
  the identity a checkpoint needs and the two questions a follower asks:
  was it truncated, and does its name now point at another file?
* ``follow`` is the loop: read what is there, and at the end of the data
  look for truncation (start again at 0) and rotation (finish through the
  descriptor we hold, then return so the caller opens what comes next).

What a source does with the lines (batches, checkpoints, decoding) is the
source's own business, passed in as a ``TailReader``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from eventd.sources.checkpoint import Checkpoint, fingerprint

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

    @property
    def partial(self) -> bool:
        """True while part of a line was read (kept, or an overlong one being
        skipped): what a truncation of the file under us would lose."""
        return bool(self._buf) or (self._skipping and self._counted)

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


class TailReader(Protocol):
    """What a source gives ``follow``: how to consume a file, and when to stop."""

    def stopping(self) -> bool:
        """True once the source was asked to stop."""

    async def read_available(self, file: LogFile) -> bool:
        """Consume ``file`` up to its current end; False if stopping."""

    async def finish(self, file: LogFile) -> bool:
        """Consume the unterminated rest of a file that will not grow
        (``file.splitter.flush()``); False if stopping."""

    def truncated(self, file: PlainLog, was_at: int, lost_partial: bool) -> None:
        """``file`` was truncated under us while we were at ``was_at``; it is
        read again from 0 (``file`` is already there).  ``lost_partial``:
        part of a line had been read, and is lost."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the source stops."""


async def follow(file: PlainLog, reader: TailReader, poll_seconds: float) -> bool:
    """Follow ``file`` by name until it is finished (True) or the source stops (False).

    While data comes it is read at once; at its end, every ``poll_seconds``:
    a truncated file is read again from its start; a file whose name now
    names another file (rotated by renaming; the writer closed it first) is
    read to its end through our descriptor, its unterminated last line
    handed over, and the caller then opens what comes next.  A missing name
    is not a rotation yet: the writer renames, then creates.
    """
    while not reader.stopping():
        if file.truncated():
            was_at, lost_partial = file.offset, file.splitter.partial
            file.start_at(0)
            reader.truncated(file, was_at, lost_partial)
        before = file.offset
        if not await reader.read_available(file):
            return False
        if file.offset != before:
            continue
        if file.replaced():
            return await reader.read_available(file) and await reader.finish(file)
        await reader.sleep(poll_seconds)
    return False


def read_lines(file: LogFile, size: int) -> list[Line] | None:
    """The lines completed by the next ``size`` bytes of ``file``; None at its end."""
    chunk = file.read(size)
    if not chunk:
        return None
    return file.splitter.feed(chunk)
