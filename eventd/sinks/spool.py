"""A durable, bounded write-ahead spool of alert records, on local disk.

A sink appends every alert here *before* it tries to deliver it, and
acknowledges records only once the destination has confirmed them.  So an
outage of the destination, a restart or a ``kill -9`` of eventd loses nothing:
the next start replays what was not acknowledged (at-least-once delivery).

On disk, one directory holds:

* segment files ``<first sequence>.seg``, append-only, a few MiB each.  A
  record is a 20-byte header (magic ``EvS1``, payload length, CRC32 of
  sequence and payload, a 64-bit sequence number) followed by the payload.
  Sequence numbers only grow, even across restarts; they are the
  ``position`` of a record.
* ``ack``: the sequence of the oldest record not yet acknowledged, with a
  CRC, replaced atomically (write a temporary file, rename).
* ``lock``: an exclusive ``flock`` so two processes never share a spool
  (the kernel releases it when a process dies, even by ``kill -9``).

Whole segments are deleted once every record in them is acknowledged.

Recovery: opening replays every segment and verifies each record's CRC.  A
torn tail (a power loss mid-write) is truncated, garbage in the middle of a
segment is skipped by searching for the next valid header, and each such
region is counted (``sink_dropped{reason="spool_corrupt"}``); the spool never
refuses to open because of its content.

Durability trade-off: every append is one ``pwrite`` into the page cache, so a
crash of the *process* (``kill -9``, OOM kill) loses nothing once ``append``
returned.  ``fsync`` is what protects against a *machine* crash or power loss;
it costs a disk flush (milliseconds on many volumes), so it runs after
``fsync_every`` appends or when ``fsync_interval`` seconds have passed since
the last one (checked on append, and by ``sync()``, which a sink calls when
idle).  ``fsync_interval=0`` syncs every record: safest, slowest.  The ack
file is not fsynced: losing an acknowledgement only means a redelivery.

Size: the bound is on the bytes of unacknowledged records (headers
included).  Acknowledged records stay on disk until their segment is freed,
so the directory can hold up to one segment more than ``max_bytes``.

Thread safety: every public method takes one lock; the asyncio side calls
them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from eventd.metrics import Metrics

log = structlog.get_logger(__name__)

FullPolicy = Literal["drop_oldest", "drop_newest"]

MAGIC = b"EvS1"
#: magic, payload length, crc32(sequence + payload), sequence
_HEADER = struct.Struct(">4sIIQ")
HEADER_SIZE = _HEADER.size
_SEQ = struct.Struct(">Q")
_ACK = struct.Struct(">QI")
SEGMENT_SUFFIX = ".seg"
ACK_FILE = "ack"
LOCK_FILE = "lock"
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class SpoolError(Exception):
    """The spool directory cannot be used (another process holds it)."""


@dataclass(slots=True)
class _Segment:
    base: int
    path: Path
    size: int


def _frame(seq: int, record: bytes) -> bytes:
    seq_bytes = _SEQ.pack(seq)
    crc = zlib.crc32(record, zlib.crc32(seq_bytes))
    return _HEADER.pack(MAGIC, len(record), crc, seq) + record


def _parse_at(data: bytes, pos: int, after_seq: int) -> tuple[int, int] | None:
    """``(sequence, end)`` of a valid record at ``pos``, or None."""
    if pos + HEADER_SIZE > len(data):
        return None
    magic, length, crc, seq = _HEADER.unpack_from(data, pos)
    end = pos + HEADER_SIZE + length
    if magic != MAGIC or end > len(data) or seq <= after_seq:
        return None
    body = memoryview(data)[pos + HEADER_SIZE : end]
    if zlib.crc32(body, zlib.crc32(_SEQ.pack(seq))) != crc:
        return None
    return seq, end


def scan_segment(data: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """Valid records ``(offset, end, sequence)`` in ``data`` and the number of
    corrupt regions skipped (a torn tail is one region)."""
    records: list[tuple[int, int, int]] = []
    regions = 0
    pos, last_seq = 0, -1
    while pos < len(data):
        parsed = _parse_at(data, pos, last_seq)
        if parsed is None:
            regions += 1
            pos = _resync(data, pos + 1, last_seq)
            continue
        seq, end = parsed
        records.append((pos, end, seq))
        pos, last_seq = end, seq
    return records, regions


def _resync(data: bytes, start: int, after_seq: int) -> int:
    """Offset of the next valid record at or after ``start`` (``len(data)`` if none)."""
    while (found := data.find(MAGIC, start)) != -1:
        if _parse_at(data, found, after_seq) is not None:
            return found
        start = found + 1
    return len(data)


class Spool:
    """See the module docstring.  Positions are record sequence numbers."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        full_policy: FullPolicy,
        metrics: Metrics,
        name: str,
        *,
        segment_bytes: int = 4 * 1024 * 1024,
        fsync_interval: float = 1.0,
        fsync_every: int = 256,
    ) -> None:
        if max_bytes <= HEADER_SIZE:
            raise ValueError(f"spool max_bytes must exceed {HEADER_SIZE}")
        if full_policy not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"unknown spool full policy {full_policy!r}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.full_policy = full_policy
        self.name = name
        # A segment never much larger than the bound: freeing it frees space.
        self._segment_bytes = max(min(segment_bytes, max_bytes // 4), 1)
        self._fsync_interval = fsync_interval
        self._fsync_every = max(fsync_every, 1)
        self._lock = threading.Lock()
        self._dropped = {
            reason: metrics.sink_dropped.labels(name, reason)
            for reason in ("spool_full", "disk_full", "io_error", "spool_corrupt")
        }
        self._bytes_gauge = metrics.spool_bytes.labels(name)
        self._alerts_gauge = metrics.spool_alerts.labels(name)
        metrics.spool_capacity_bytes.labels(name).set(max_bytes)

        self._segments: list[_Segment] = []
        self._read_fds: dict[int, int] = {}
        self._active_fd: int | None = None
        self._cursor = 0  # byte offset of the first unacknowledged record in segments[0]
        self._head = 0  # lowest sequence not acknowledged
        self._next_seq = 0
        self._depth = 0
        self._bytes = 0
        self._unsynced = 0
        self._dir_dirty = False
        self._last_sync = time.monotonic()
        self._write_failing = False
        #: Corrupt regions found on open (torn tails, garbage); for tests and logs.
        self.corrupt_regions = 0

        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._take_lock()
        try:
            self._recover()
        except BaseException:
            self.close()
            raise
        self._publish()

    # ------------------------------------------------------------ public API

    @property
    def depth(self) -> int:
        """Records appended and not yet acknowledged (or dropped)."""
        return self._depth

    @property
    def size_bytes(self) -> int:
        """Bytes of those records, headers included: what ``max_bytes`` bounds."""
        return self._bytes

    def append(self, record: bytes) -> bool:
        """Store ``record`` durably (see the fsync policy); False if it was dropped."""
        framed = HEADER_SIZE + len(record)
        with self._lock:
            self._check_open()
            if framed > self.max_bytes or (
                self._bytes + framed > self.max_bytes and self.full_policy == "drop_newest"
            ):
                self._dropped["spool_full"].inc()
                return False
            if self._bytes + framed > self.max_bytes:
                dropped = 0
                while self._bytes + framed > self.max_bytes and self._pop() is not None:
                    dropped += 1
                self._dropped["spool_full"].inc(dropped)
                self._persist_head()
            try:
                self._write(_frame(self._next_seq, record))
            except OSError as err:
                reason = "disk_full" if err.errno in _DISK_FULL else "io_error"
                self._dropped[reason].inc()
                if not self._write_failing:
                    log.warning("spool_write_failed", sink=self.name, reason=reason, error=str(err))
                self._write_failing = True
                self._publish()
                return False
            if self._write_failing:
                log.info("spool_write_recovered", sink=self.name)
                self._write_failing = False
            self._next_seq += 1
            self._depth += 1
            self._bytes += framed
            self._unsynced += 1
            if (
                self._unsynced >= self._fsync_every
                or time.monotonic() - self._last_sync >= self._fsync_interval
            ):
                self._sync_logged()
            self._publish()
            return True

    def peek(self, n: int) -> list[tuple[int, bytes]]:
        """Up to ``n`` unacknowledged records, oldest first: ``(position, record)``."""
        out: list[tuple[int, bytes]] = []
        with self._lock:
            self._check_open()
            for index, segment in enumerate(self._segments):
                offset = self._cursor if index == 0 else 0
                while offset < segment.size and len(out) < n:
                    seq, length = self._header(segment, offset)
                    if seq >= self._head:
                        body = os.pread(self._reader(segment), length, offset + HEADER_SIZE)
                        out.append((seq, body))
                    offset += HEADER_SIZE + length
                if len(out) >= n:
                    break
        return out

    def ack_through(self, position: int) -> None:
        """Acknowledge every record up to and including ``position``."""
        with self._lock:
            self._check_open()
            position = min(position, self._next_seq - 1)
            if position < self._head:
                return
            while (first := self._first()) is not None and first[0] <= position:
                self._pop()
            self._head = max(self._head, position + 1)
            self._first()  # frees a segment that is now fully acknowledged
            self._persist_head()
            self._publish()

    def sync(self) -> None:
        """fsync what was appended since the last sync (cheap when nothing was)."""
        with self._lock:
            self._check_open()
            if self._unsynced or self._dir_dirty:
                self._sync_logged()

    def close(self) -> None:
        """Sync and release the files and the directory lock; idempotent."""
        with self._lock:
            if self._active_fd is not None:
                with contextlib.suppress(OSError):
                    self._sync()
                os.close(self._active_fd)
                self._active_fd = None
            for fd in self._read_fds.values():
                os.close(fd)
            self._read_fds.clear()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _check_open(self) -> None:
        # A call queued in a worker thread can arrive after close().
        if self._lock_fd is None:
            raise SpoolError(f"spool {self.directory} is closed")

    # -------------------------------------------------------------- recovery

    def _take_lock(self) -> int:
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolError(f"spool {self.directory} is in use by another process") from None
        return fd

    def _recover(self) -> None:
        self._head = self._read_head()
        for stale in self.directory.glob("*.tmp"):
            stale.unlink()
        paths = []
        for path in self.directory.glob(f"*{SEGMENT_SUFFIX}"):
            with contextlib.suppress(ValueError):
                paths.append((int(path.stem), path))
        last_seq = -1
        for base, path in sorted(paths):
            records, regions = scan_segment(path.read_bytes())
            if regions:
                self._count_corrupt(regions, segment=path.name, kept=len(records))
                self._repair(path, records)
                records, _ = scan_segment(path.read_bytes())
            if records:
                last_seq = max(last_seq, records[-1][2])
            live = [(start, end) for start, end, seq in records if seq >= self._head]
            if not live:
                path.unlink()
                continue
            if not self._segments:
                self._cursor = live[0][0]
            self._segments.append(_Segment(base, path, records[-1][1]))
            self._depth += len(live)
            self._bytes += sum(end - start for start, end in live)
        self._next_seq = max(self._head, last_seq + 1)
        if self._depth:
            log.info("spool_replayed", sink=self.name, alerts=self._depth, bytes=self._bytes)

    def _read_head(self) -> int:
        try:
            data = (self.directory / ACK_FILE).read_bytes()
        except FileNotFoundError:
            return 0
        if len(data) == _ACK.size:
            head, crc = _ACK.unpack(data)
            if zlib.crc32(data[:8]) == crc:
                return head
        # Without a valid position everything kept is redelivered: duplicates, no loss.
        self._count_corrupt(1, segment=ACK_FILE, kept=0)
        return 0

    def _count_corrupt(self, regions: int, *, segment: str, kept: int) -> None:
        self.corrupt_regions += regions
        self._dropped["spool_corrupt"].inc(regions)
        log.warning("spool_corrupt", sink=self.name, file=segment, regions=regions, records_kept=kept)

    def _repair(self, path: Path, records: list[tuple[int, int, int]]) -> None:
        """Leave only the valid records in ``path`` (a truncation for a torn tail)."""
        contiguous = all(records[i][0] == (records[i - 1][1] if i else 0) for i in range(len(records)))
        if contiguous:
            os.truncate(path, records[-1][1] if records else 0)
            return
        data = path.read_bytes()
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as out:
            for start, end, _ in records:
                out.write(data[start:end])
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        self._fsync_dir()

    # ---------------------------------------------------------------- writes

    def _write(self, frame: bytes) -> None:
        """Append one framed record to the active segment, all or nothing."""
        fd = self._writable()
        segment = self._segments[-1]
        view = memoryview(frame)
        done = 0
        try:
            while done < len(frame):
                done += os.pwrite(fd, view[done:], segment.size + done)
        except OSError:
            if done:  # never leave half a record behind
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, segment.size)
            raise
        segment.size += len(frame)

    def _writable(self) -> int:
        if (
            self._active_fd is not None
            and self._segments[-1].size < self._segment_bytes
            and not (self._write_failing and self._drained())
        ):
            return self._active_fd
        # Seal the active segment: it is full, or writes fail (a full disk)
        # while everything in it is acknowledged, so releasing it gives the
        # space back instead of failing every write until a restart.
        if self._active_fd is not None:
            self._sync()
            os.close(self._active_fd)
            self._active_fd = None
            self._first()  # the sealed segment may already be fully acknowledged
        path = self.directory / f"{self._next_seq:020d}{SEGMENT_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._segments.append(_Segment(self._next_seq, path, 0))
        if len(self._segments) == 1:
            self._cursor = 0
        self._active_fd = fd
        self._dir_dirty = True
        return fd

    def _drained(self) -> bool:
        """Every record written so far is acknowledged."""
        return len(self._segments) == 1 and self._cursor >= self._segments[0].size

    def _sync(self) -> None:
        if self._active_fd is not None:
            os.fsync(self._active_fd)
        if self._dir_dirty:
            self._fsync_dir()
            self._dir_dirty = False
        self._unsynced = 0
        self._last_sync = time.monotonic()

    def _sync_logged(self) -> None:
        """fsync; a failure only weakens durability against a machine crash
        (the data is in the page cache), so it is logged, not raised."""
        try:
            self._sync()
        except OSError as err:
            log.warning("spool_fsync_failed", sink=self.name, error=str(err))

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _persist_head(self) -> None:
        data = _SEQ.pack(self._head)
        tmp = self.directory / (ACK_FILE + ".tmp")
        try:
            tmp.write_bytes(data + struct.pack(">I", zlib.crc32(data)))
            os.replace(tmp, self.directory / ACK_FILE)
        except OSError as err:
            # Only costs redelivery after a restart; the next ack retries.
            log.warning("spool_ack_write_failed", sink=self.name, error=str(err))

    # ----------------------------------------------------------------- reads

    def _reader(self, segment: _Segment) -> int:
        fd = self._read_fds.get(segment.base)
        if fd is None:
            fd = self._read_fds[segment.base] = os.open(segment.path, os.O_RDONLY)
        return fd

    def _header(self, segment: _Segment, offset: int) -> tuple[int, int]:
        _, length, _, seq = _HEADER.unpack(os.pread(self._reader(segment), HEADER_SIZE, offset))
        return seq, length

    def _first(self) -> tuple[int, int] | None:
        """``(sequence, framed size)`` of the oldest live record, freeing sealed
        segments the cursor has passed; None when the spool is empty."""
        while self._segments:
            segment = self._segments[0]
            if self._cursor >= segment.size:
                if self._active_fd is not None and len(self._segments) == 1:
                    return None
                self._release_first()
                continue
            seq, length = self._header(segment, self._cursor)
            if seq < self._head:
                self._cursor += HEADER_SIZE + length
                continue
            return seq, HEADER_SIZE + length
        return None

    def _pop(self) -> int | None:
        """Forget the oldest live record (acknowledged or dropped); its sequence."""
        first = self._first()
        if first is None:
            return None
        seq, framed = first
        self._cursor += framed
        self._depth -= 1
        self._bytes -= framed
        self._head = seq + 1
        return seq

    def _release_first(self) -> None:
        segment = self._segments.pop(0)
        fd = self._read_fds.pop(segment.base, None)
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            segment.path.unlink()
        self._cursor = 0

    def _publish(self) -> None:
        self._bytes_gauge.set(self._bytes)
        self._alerts_gauge.set(self._depth)
