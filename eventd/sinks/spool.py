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
segment is skipped by searching for the next valid header, entries that
cannot be read (a segment, ``ack`` or ``lock`` that is a directory) are moved
aside as ``<name>.corrupt``, and an ``ack`` past every record on disk is not
trusted.  Every unacknowledged record that is missing is counted
(``sink_dropped{reason="spool_corrupt"}``), from the gaps in the sequence
numbers, once (the ``gaps`` file remembers what was counted); the spool never
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

Full: with the ``block`` policy (the default) a record that does not fit,
or that the disk refuses, is not stored and ``append`` raises ``SpoolFull``;
the sink waits and the inputs are pushed back, so nothing is lost.
``drop_oldest``/``drop_newest`` keep accepting and drop (counted) instead.

Thread safety: every public method takes one lock; the asyncio side calls
them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
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

FullPolicy = Literal["block", "drop_oldest", "drop_newest"]

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


class SpoolFull(Exception):
    """``block`` policy: the record was not stored, there is no room now.

    ``reason`` is ``spool_full`` (``max_bytes`` reached) or ``disk_full``
    (the filesystem refused the write).  The caller waits for
    acknowledgements (or the disk) to make room and tries again.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


def scan_segment(data: bytes, after_seq: int = -1) -> tuple[list[tuple[int, int, int]], int]:
    """Valid records ``(offset, end, sequence)`` in ``data`` and the number of
    corrupt regions skipped (a torn tail is one region).  Sequences must grow
    and exceed ``after_seq`` (the last one of the previous segment): a record
    that repeats an older sequence is damage, never a second delivery."""
    records: list[tuple[int, int, int]] = []
    regions = 0
    pos, last_seq = 0, after_seq
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


@dataclass(slots=True)
class _Scan:
    """What recovery found in one segment file."""

    base: int
    path: Path
    #: Valid records ``(offset, end, sequence)``, contiguous from 0 once repaired.
    records: list[tuple[int, int, int]]
    #: Corrupt regions (an unreadable file is one).
    regions: int
    #: False when the file could not be read or repaired (and was moved aside).
    usable: bool
    #: A corrupt region follows the last valid record (a torn tail).
    tail_damaged: bool = False


#: Gaps already counted, written by recovery only (see ``Spool._read_gaps``).
_GAPS_FILE = "gaps"


def _frontier(scans: list[_Scan]) -> int | None:
    """One past the newest sequence known to have been appended: the newest
    valid record, or the base of a segment (every record before a segment's
    base was appended before the segment was created).  None without any
    valid record: nothing on disk to trust."""
    if not scans:
        return None
    return max(max(s.records[-1][2] + 1, s.base) for s in scans)


def _damaged_past(scan: _Scan, frontier: int | None) -> bool:
    """Damage after the newest evidence of an append, which no gap count
    covers: a torn tail after the newest record, or a damaged segment with no
    valid record that is not before a later one.  It cost at least one record."""
    if not scan.regions:
        return False
    if scan.records:
        return scan.tail_damaged and scan.records[-1][2] + 1 == frontier
    return frontier is None or scan.base >= frontier


def _gaps(seqs: list[int], floor: int, frontier: int) -> list[tuple[int, int]]:
    """The ranges ``[start, end)`` of ``[floor, frontier)`` missing from the
    increasing ``seqs``."""
    out: list[tuple[int, int]] = []
    expected = floor
    for seq in seqs:
        if seq > expected:
            out.append((expected, seq))
        expected = max(expected, seq + 1)
    if frontier > expected:
        out.append((expected, frontier))
    return out


def _uncovered(gaps: list[tuple[int, int]], known: list[tuple[int, int]]) -> int:
    """How many sequences of ``gaps`` are in none of the ``known`` ranges
    (each list made of disjoint ranges)."""
    total = sum(end - start for start, end in gaps)
    for start, end in gaps:
        for a, b in known:
            total -= max(0, min(end, b) - max(start, a))
    return total


def _merge(ranges: list[tuple[int, int]], *, above: int) -> list[tuple[int, int]]:
    """``ranges`` merged into disjoint sorted ones, cut to sequences >= ``above``."""
    out: list[tuple[int, int]] = []
    for start, end in sorted((max(a, above), b) for a, b in ranges if b > above):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _contiguous(records: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """``records`` as they are once packed together from offset 0."""
    out: list[tuple[int, int, int]] = []
    pos = 0
    for start, end, seq in records:
        out.append((pos, pos + end - start, seq))
        pos += end - start
    return out


def _open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _restore_mode(path: Path) -> None:
    """Give a spool file of ours (created 0600) its permissions back; raises
    ``OSError`` if it is not ours to change."""
    os.chmod(path, 0o600)
    log.warning("spool_file_mode_restored", file=path.name)


def _read_own(path: Path) -> bytes:
    """The content of a spool file, restoring its permissions once if they
    were taken away: its records are recoverable, not lost."""
    try:
        return path.read_bytes()
    except PermissionError:
        _restore_mode(path)
        return path.read_bytes()


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
        if full_policy not in ("block", "drop_oldest", "drop_newest"):
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
        self._lock_fd: int | None = self._take_lock()
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

    @property
    def head(self) -> int:
        """Position of the oldest record not acknowledged (or dropped) yet:
        every record before it is done with."""
        return self._head

    @property
    def next_position(self) -> int:
        """The position the next appended record gets."""
        return self._next_seq

    def append(self, record: bytes) -> bool:
        """Store ``record`` durably (see the fsync policy); False if it was
        dropped.  With the ``block`` policy a record that does not fit now
        raises ``SpoolFull`` instead (one larger than the whole spool is
        dropped: it could never fit)."""
        framed = HEADER_SIZE + len(record)
        with self._lock:
            self._check_open()
            if self.full_policy == "block" and framed <= self.max_bytes < self._bytes + framed:
                raise SpoolFull("spool_full")
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
                if not self._write_failing:
                    log.warning("spool_write_failed", sink=self.name, reason=reason, error=str(err))
                self._write_failing = True
                self._publish()
                if self.full_policy == "block":
                    raise SpoolFull(reason) from None
                self._dropped[reason].inc()
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
    #
    # Recovery never refuses a damaged spool: whatever cannot be read is
    # moved aside (``<name>.corrupt``, kept for a human) or cut out, and
    # every record that should be there and is not is counted under
    # ``sink_dropped{reason="spool_corrupt"}``.  Which records should be
    # there follows from the sequence numbers: they only grow, a segment is
    # named after the first sequence it holds, and every record from the
    # acknowledged head up to the newest one seen (or up to the base of a
    # later segment) was appended.  A gap in that range is a loss, counted
    # exactly; damage after the newest evidence (a torn tail, an unreadable
    # last segment) counts as one record, the least it can have cost.

    def _take_lock(self) -> int:
        """The directory lock.  A lock file that is a directory is moved aside
        (no eventd can hold a lock on it); one of ours without permissions gets
        them back; anything else is a clean ``SpoolError``, not a traceback."""
        path = self.directory / LOCK_FILE
        try:
            fd = self._open_lock(path)
        except OSError as err:
            raise SpoolError(f"spool {self.directory}: cannot open {LOCK_FILE}: {err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolError(f"spool {self.directory} is in use by another process") from None
        return fd

    def _open_lock(self, path: Path) -> int:
        try:
            return _open_lock(path)
        except IsADirectoryError:
            self._quarantine(path, why="lock file is a directory")
        except PermissionError:
            _restore_mode(path)
        return _open_lock(path)

    def _recover(self) -> None:
        head, ack = self._read_head()
        self._remove_temporaries()
        scans = self._scan_segments()
        with_records = [s for s in scans if s.records]
        frontier = _frontier(with_records)
        if ack == "ok" and frontier is not None and head > frontier:
            # A position past every record on disk: either the ack file is
            # wrong or the newest segments are gone.  Redeliver what is here.
            ack = self._damaged_ack(f"acknowledged position {head} is past the end ({frontier})")
        if ack != "ok":
            head = 0
        known = self._read_gaps()
        gaps = self._count_lost(scans, head if ack == "ok" else None, frontier, known)
        self._adopt(scans, head)
        # Persisted so that the same damage is not counted again at the next start.
        if ack == "corrupt" or self._head != head:
            self._persist_head()
        self._write_gaps(known, _merge(known + gaps, above=self._head))
        if self._depth:
            log.info("spool_replayed", sink=self.name, alerts=self._depth, bytes=self._bytes)

    def _read_head(self) -> tuple[int, Literal["ok", "corrupt"]]:
        """The acknowledged position and whether it can be trusted.  Without a
        trusted position everything kept is redelivered: duplicates, no loss."""
        path = self.directory / ACK_FILE
        try:
            data = _read_own(path)
        except FileNotFoundError:
            # Every acknowledgement writes the file: none means none yet
            # (or a lost file: then counting from 0 errs on the side of "lost").
            return 0, "ok"
        except OSError as err:
            self._quarantine(path, why=str(err))
            return 0, self._damaged_ack(f"unreadable: {err}")
        if len(data) == _ACK.size:
            head, crc = _ACK.unpack(data)
            if zlib.crc32(data[:8]) == crc:
                return head, "ok"
        return 0, self._damaged_ack(f"damaged ({len(data)} bytes)")

    def _damaged_ack(self, why: str) -> Literal["corrupt"]:
        """Count an acknowledged position that cannot be trusted."""
        self.corrupt_regions += 1
        self._count_corrupt(1, file=ACK_FILE, why=why)
        return "corrupt"

    def _remove_temporaries(self) -> None:
        """Leftovers of an interrupted write; a directory of that name would
        block the next write, so it is moved aside."""
        for stale in self.directory.glob("*.tmp"):
            try:
                stale.unlink()
            except IsADirectoryError:
                self._quarantine(stale, why="temporary file is a directory")
            except OSError as err:
                log.warning("spool_stray_file", sink=self.name, file=stale.name, error=str(err))

    def _scan_segments(self) -> list[_Scan]:
        """Every segment, oldest first, with its valid records (repaired so
        that they are contiguous from offset 0, as ``peek`` expects)."""
        paths = sorted(
            (int(path.stem), path)
            for path in self.directory.glob(f"*{SEGMENT_SUFFIX}")
            if path.stem.isascii() and path.stem.isdigit()
        )
        scans: list[_Scan] = []
        last_seq = -1
        for base, path in paths:
            scan = self._scan_one(base, path, last_seq)
            if scan.records:
                last_seq = scan.records[-1][2]
            scans.append(scan)
        return scans

    def _scan_one(self, base: int, path: Path, after_seq: int) -> _Scan:
        """One segment's valid records, with sequences above ``after_seq`` (a
        copy of older records is damage too, never a second delivery)."""
        try:
            data = _read_own(path)
        except OSError as err:
            self._quarantine(path, why=str(err))
            return _Scan(base, path, [], regions=1, usable=False)
        records, regions = scan_segment(data, after_seq)
        if not regions:
            return _Scan(base, path, records, regions=0, usable=True)
        torn = not records or records[-1][1] < len(data)
        log.warning("spool_corrupt_regions", sink=self.name, file=path.name, regions=regions)
        try:
            self._repair(path, data, records)
        except OSError as err:
            self._quarantine(path, why=f"cannot repair: {err}")
            return _Scan(base, path, [], regions=regions, usable=False)
        return _Scan(base, path, _contiguous(records), regions, usable=True, tail_damaged=torn)

    def _count_lost(
        self, scans: list[_Scan], head: int | None, frontier: int | None, known: list[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """Count the records that should be on disk and are not (see above),
        except those in ``known`` gaps (counted at an earlier start); return
        the gaps.  ``head`` is None when the acknowledged position is unknown:
        then only gaps above the oldest surviving segment can be told from
        acknowledged records that were freed."""
        self.corrupt_regions += sum(s.regions for s in scans)
        gaps: list[tuple[int, int]] = []
        if frontier is not None:
            # Without a trusted head, a damaged segment's records count from
            # its base: whether they had been acknowledged is unknowable.
            floor = head if head is not None else min(s.base for s in scans if s.records or s.regions)
            gaps = _gaps([seq for s in scans for _, _, seq in s.records], floor, frontier)
        lost = _uncovered(gaps, known) + sum(1 for scan in scans if _damaged_past(scan, frontier))
        if lost:
            self._count_corrupt(lost, file=self.directory.name, why="records missing or unreadable")
        return gaps

    def _read_gaps(self) -> list[tuple[int, int]]:
        """Gaps counted at an earlier start (``[start, end)`` sequences).  A
        damaged file only means they are counted again."""
        path = self.directory / _GAPS_FILE
        try:
            ranges = json.loads(_read_own(path))
            return _merge([(int(a), int(b)) for a, b in ranges], above=-1)
        except FileNotFoundError:
            return []
        except IsADirectoryError:
            self._quarantine(path, why="gaps file is a directory")
        except (OSError, ValueError, TypeError) as err:
            log.warning("spool_gaps_unreadable", sink=self.name, error=str(err))
        return []

    def _write_gaps(self, before: list[tuple[int, int]], after: list[tuple[int, int]]) -> None:
        if after == before:
            return
        path = self.directory / _GAPS_FILE
        try:
            if not after:
                path.unlink(missing_ok=True)
                return
            tmp = path.with_name(_GAPS_FILE + ".tmp")
            tmp.write_text(json.dumps(after))
            os.replace(tmp, path)
        except OSError as err:  # only costs counting the same gap again
            log.warning("spool_gaps_write_failed", sink=self.name, error=str(err))

    def _adopt(self, scans: list[_Scan], head: int) -> None:
        """Take the surviving records at or after ``head`` as the spool's
        content; delete segments with none.  The head moves to the oldest
        of them: lost records are counted once, not at every start."""
        last_seq = -1
        for scan in scans:
            if not scan.usable:
                continue
            if scan.records:
                last_seq = scan.records[-1][2]
            live = [(start, end) for start, end, seq in scan.records if seq >= head]
            if not live:
                with contextlib.suppress(OSError):
                    scan.path.unlink()
                continue
            if not self._segments:
                self._cursor = live[0][0]
                self._head = next(seq for _, _, seq in scan.records if seq >= head)
            self._segments.append(_Segment(scan.base, scan.path, scan.records[-1][1]))
            self._depth += len(live)
            self._bytes += sum(end - start for start, end in live)
        self._next_seq = max(head, last_seq + 1)
        if not self._segments:
            self._head = self._next_seq

    def _count_corrupt(self, records: int, *, file: str, why: str) -> None:
        self._dropped["spool_corrupt"].inc(records)
        log.warning("spool_corrupt", sink=self.name, file=file, records_lost=records, reason=why)

    def _quarantine(self, path: Path, *, why: str) -> None:
        """Move a damaged entry out of the spool's names (``<name>.corrupt``),
        kept for a human; one that cannot be moved is only logged."""
        for n in range(10):
            target = path.with_name(f"{path.name}.corrupt" + (f".{n}" if n else ""))
            with contextlib.suppress(OSError):  # e.g. a file cannot replace a directory: next name
                os.replace(path, target)
                log.warning(
                    "spool_file_moved_aside", sink=self.name, file=path.name, to=target.name, reason=why
                )
                return
        log.warning("spool_file_unusable", sink=self.name, file=path.name, reason=why)

    def _repair(self, path: Path, data: bytes, records: list[tuple[int, int, int]]) -> None:
        """Leave only the valid records in ``path`` (a truncation for a torn tail),
        durably: a repair lost in a machine crash would be counted again."""
        if _contiguous(records) == records:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, records[-1][1] if records else 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            return
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
