"""The spool's survivors of mutation testing, killed (issue 17).

``scripts/mutation.py eventd/sinks/spool.py`` left mutants that no test
noticed; each test below is named after what a mutant broke.  Several are
about what an operator is told: a damaged or moved-aside file and a counted
loss are only visible in the structured log (``spool_corrupt``,
``spool_file_moved_aside``...), so those events are asserted with their
fields, as ``tests/test_checkpoint.py`` does for the tailer's checkpoint.

Everything runs against the real filesystem.  Three things a test cannot
make a filesystem do on demand are injected at the ``os`` call: a short
``pwrite`` (a regular file writes short only on a full disk), an ``EIO``
from ``pwrite``/``fsync``, and a clock for the ``fsync_interval`` edge.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
import types
import zlib
from pathlib import Path

import pytest
import structlog

from eventd.metrics import Metrics
from eventd.sinks import spool as spool_module
from eventd.sinks.spool import (
    ACK_FILE,
    HEADER_SIZE,
    LOCK_FILE,
    SEGMENT_SUFFIX,
    Spool,
    SpoolError,
    SpoolFull,
    _frame,
    _gaps,
    _merge,
    _parse_at,
    scan_segment,
)
from tests.support.fsync_log import SyncLog

NAME = "kafka"


def open_spool(directory: Path, metrics: Metrics | None = None, **kwargs) -> Spool:
    kwargs.setdefault("max_bytes", 1 << 20)
    kwargs.setdefault("full_policy", "drop_oldest")
    return Spool(directory, metrics=metrics or Metrics(), name=NAME, **kwargs)


def dropped(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("eventd_sink_dropped_total", {"sink": NAME, "reason": reason})
    return value or 0.0


def payloads(spool: Spool) -> list[bytes]:
    return [record for _, record in spool.peek(1 << 30)]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SEGMENT_SUFFIX}"))


def records(count: int, start: int = 0) -> list[bytes]:
    return [b"rec-%05d" % i for i in range(start, start + count)]


def events(logs: list[dict], name: str) -> list[dict]:
    """The captured log entries called ``name``, without the level."""
    return [{k: v for k, v in e.items() if k != "log_level"} for e in logs if e["event"] == name]


def block(path: Path) -> None:
    """A non-empty directory at ``path``: no file or directory can be renamed onto it."""
    path.mkdir()
    (path / "keep").write_bytes(b"")


def block_quarantine(path: Path) -> None:
    """Every name the spool tries when moving ``path`` aside (``.corrupt``,
    ``.corrupt.1`` ... ``.corrupt.9``) taken by a non-empty directory."""
    for n in range(10):
        block(path.with_name(f"{path.name}.corrupt" + (f".{n}" if n else "")))


def write_spool(directory: Path, count: int, **kwargs) -> None:
    spool = open_spool(directory, **kwargs)
    for r in records(count):
        assert spool.append(r)
    spool.close()


# ------------------------------------------------------------ pure helpers


def test_gaps_are_the_missing_ranges_and_nothing_else() -> None:
    assert _gaps([0, 1, 2], 0, 3) == []  # no empty (n, n) range for a present record
    assert _gaps([0, 1, 2], 0, 5) == [(3, 5)]  # the tail up to the frontier
    assert _gaps([1, 4], 0, 5) == [(0, 1), (2, 4)]
    assert _gaps([0, 1], 0, 2) == []


def test_merged_gaps_are_disjoint_and_cut_at_the_head() -> None:
    assert _merge([(0, 2), (2, 4)], above=-1) == [(0, 4)]  # adjacent ranges are one
    assert _merge([(0, 3), (1, 5)], above=-1) == [(0, 5)]  # overlapping: from the first start
    assert _merge([(0, 5)], above=5) == []  # wholly below the head: no empty range kept
    assert _merge([(0, 5), (7, 9)], above=3) == [(3, 5), (7, 9)]


def test_a_header_without_the_magic_is_not_a_record() -> None:
    framed = bytearray(_frame(3, b"payload"))
    assert _parse_at(bytes(framed), 0, -1) == (3, len(framed))
    framed[0:4] = b"XvS1"  # length, sequence and CRC still right
    assert _parse_at(bytes(framed), 0, -1) is None


def test_a_record_one_byte_after_damage_is_found() -> None:
    data = b"X" + _frame(0, b"kept")
    assert scan_segment(data) == ([(1, len(data), 0)], 1)


def test_a_frame_inside_a_payload_is_never_delivered() -> None:
    """An alert's text is attacker-controlled: a payload may contain a whole
    valid frame.  After damage, the search for the next record must start
    after the damage, not from the segment's start, or that inner frame
    becomes a record of its own."""
    inner = _frame(5, b"forged")
    outer = _frame(0, b"alert:" + inner)
    data = outer + b"garbage after the record"
    assert scan_segment(data) == ([(0, len(outer), 0)], 1)


# ---------------------------------------------------------- configuration


def test_bad_configuration_is_refused_with_its_reason(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"max_bytes must exceed {HEADER_SIZE}"):
        open_spool(tmp_path, max_bytes=HEADER_SIZE)  # room for an empty record's header only
    with pytest.raises(ValueError, match="unknown spool full policy 'drop_all'"):
        open_spool(tmp_path, full_policy="drop_all")


def test_errors_name_the_spool_and_what_is_wrong(tmp_path: Path) -> None:
    spool = open_spool(tmp_path / "s")
    with pytest.raises(SpoolError, match=re.escape(f"spool {tmp_path / 's'} is in use by another process")):
        open_spool(tmp_path / "s")
    spool.close()
    with pytest.raises(SpoolError, match=re.escape(f"spool {tmp_path / 's'} is closed")):
        spool.append(b"late")
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / LOCK_FILE).symlink_to(LOCK_FILE)  # a link to itself: ELOOP
    with pytest.raises(SpoolError, match=f"cannot open {LOCK_FILE}: .*Too many levels of symbolic links"):
        open_spool(tmp_path / "loop")
    full = open_spool(tmp_path / "full", max_bytes=HEADER_SIZE + 1, full_policy="block")
    assert full.append(b"x")
    with pytest.raises(SpoolFull) as err:
        full.append(b"y")
    assert str(err.value) == "spool_full" and err.value.reason == "spool_full"
    full.close()


def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    spool = open_spool(tmp_path / "a" / "b" / "spool")
    assert spool.append(b"x")
    spool.close()


def test_spool_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    """Records are alerts (hostnames, users, command lines): 0600, whatever the umask."""
    old = os.umask(0o022)
    try:
        spool = open_spool(tmp_path)
        spool.append(b"x")
        spool.close()
    finally:
        os.umask(old)
    for path in [tmp_path / LOCK_FILE, *segments(tmp_path)]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


@pytest.mark.parametrize(
    ("max_bytes", "payload", "per_segment"),
    [
        (400, 10, 4),  # 30-byte records, segments of 100 bytes: 30, 60, 90, then 120 seals it
        (401, 5, 4),  # 25-byte records fill 100 bytes exactly (401 // 4): the fifth goes in a new one
    ],
)
def test_a_segment_is_at_most_a_quarter_of_the_spool(
    tmp_path: Path, max_bytes: int, payload: int, per_segment: int
) -> None:
    """Freeing a segment must free space: segments are capped at
    ``max_bytes // 4`` bytes, and a segment that reached its cap is sealed."""
    spool = open_spool(tmp_path, max_bytes=max_bytes, segment_bytes=1 << 20, full_policy="drop_oldest")
    for n in range(per_segment * 2):
        assert spool.append((b"%d" % n).ljust(payload, b"."))
    spool.close()
    framed = HEADER_SIZE + payload
    assert [p.stat().st_size // framed for p in segments(tmp_path)] == [per_segment, per_segment]


# -------------------------------------------------------------- durability


def test_the_default_is_an_fsync_every_256_appends(tmp_path: Path, monkeypatch) -> None:
    spool = open_spool(tmp_path, fsync_interval=3600)
    log = SyncLog(monkeypatch)
    for r in records(255):
        spool.append(r)
    segment = str(segments(tmp_path)[0])
    assert segment not in log.synced()
    spool.append(b"the 256th")
    assert log.synced().count(segment) == 1
    spool.close()


def test_fsync_every_one_syncs_each_append(tmp_path: Path, monkeypatch) -> None:
    spool = open_spool(tmp_path, fsync_interval=3600, fsync_every=1)
    log = SyncLog(monkeypatch)
    for n, r in enumerate(records(3), start=1):
        spool.append(r)
        assert log.synced().count(str(segments(tmp_path)[0])) == n
    spool.close()


def test_the_append_count_restarts_after_each_sync(tmp_path: Path, monkeypatch) -> None:
    spool = open_spool(tmp_path, fsync_interval=3600, fsync_every=3)
    log = SyncLog(monkeypatch)
    for r in records(3):
        spool.append(r)
    segment = str(segments(tmp_path)[0])
    assert log.synced().count(segment) == 1
    spool.append(b"four")
    spool.append(b"five")
    assert log.synced().count(segment) == 1
    spool.append(b"six")
    assert log.synced().count(segment) == 2
    log.clear()
    spool.sync()  # nothing appended since
    assert log.synced() == []
    spool.close()


def test_an_fsync_is_due_when_the_interval_has_passed(tmp_path: Path, monkeypatch) -> None:
    """The default ``fsync_interval`` is one second, its end included.  The
    spool's clock is replaced (no wall-clock timing in a unit test)."""
    clock = types.SimpleNamespace(now=1000.0)
    monkeypatch.setattr(spool_module, "time", types.SimpleNamespace(monotonic=lambda: clock.now))
    spool = open_spool(tmp_path, fsync_every=1 << 20)
    log = SyncLog(monkeypatch)
    spool.append(b"first")  # creates the segment; due only by the clock
    segment = str(segments(tmp_path)[0])
    clock.now = 1000.999
    spool.append(b"second")
    assert segment not in log.synced()
    clock.now = 1001.0
    spool.append(b"third")
    assert log.synced().count(segment) == 1
    spool.close()


def test_sync_does_nothing_when_nothing_was_written(tmp_path: Path, monkeypatch) -> None:
    write_spool(tmp_path, 3)
    spool = open_spool(tmp_path)  # replayed, nothing new
    log = SyncLog(monkeypatch)
    spool.sync()
    assert log.synced() == []
    spool.close()


def test_a_failing_fsync_is_logged_and_close_still_releases_the_spool(tmp_path: Path, monkeypatch) -> None:
    spool = open_spool(tmp_path, fsync_interval=0)

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with structlog.testing.capture_logs() as logs:
        assert spool.append(b"in the page cache")
    assert events(logs, "spool_fsync_failed") == [
        {"event": "spool_fsync_failed", "sink": NAME, "error": "[Errno 5] Input/output error"}
    ]
    spool.close()
    spool.close()  # idempotent
    monkeypatch.undo()
    again = open_spool(tmp_path)  # the lock was released
    assert payloads(again) == [b"in the page cache"]
    again.close()


# ------------------------------------------------------------------ writes


def test_short_writes_are_completed(tmp_path: Path, monkeypatch) -> None:
    """``pwrite`` may write less than asked (a full disk, a signal): the rest
    is written after it, at the right offset."""
    real = os.pwrite
    calls = []

    def short(fd: int, data, offset: int) -> int:
        calls.append(offset)
        assert len(calls) < 1000, "the write loop does not advance"
        return real(fd, bytes(data[:7]), offset)

    spool = open_spool(tmp_path)
    monkeypatch.setattr(os, "pwrite", short)
    for r in records(5):
        assert spool.append(r)
    monkeypatch.undo()
    spool.close()
    again = open_spool(tmp_path)
    assert payloads(again) == records(5) and again.corrupt_regions == 0
    again.close()


@pytest.mark.parametrize(("code", "reason"), [(errno.EIO, "io_error"), (errno.ENOSPC, "disk_full")])
def test_write_failures_are_counted_by_reason_and_logged_once_per_outage(
    tmp_path: Path, monkeypatch, code: int, reason: str
) -> None:
    metrics = Metrics()
    spool = open_spool(tmp_path, metrics, full_policy="drop_newest")
    real = os.pwrite

    def failing(fd: int, data, offset: int) -> int:
        raise OSError(code, os.strerror(code))

    error = str(OSError(code, os.strerror(code)))
    with structlog.testing.capture_logs() as logs:
        monkeypatch.setattr(os, "pwrite", failing)
        assert spool.append(b"a") is False
        assert spool.append(b"b") is False
        monkeypatch.setattr(os, "pwrite", real)
        assert spool.append(b"c")
        monkeypatch.setattr(os, "pwrite", failing)
        assert spool.append(b"d") is False
        monkeypatch.setattr(os, "pwrite", real)
    assert dropped(metrics, reason) == 3
    assert [e for e in logs if e["event"].startswith("spool_write")] == [
        {
            "event": "spool_write_failed",
            "log_level": "warning",
            "sink": NAME,
            "reason": reason,
            "error": error,
        },
        {"event": "spool_write_recovered", "log_level": "info", "sink": NAME},
        {
            "event": "spool_write_failed",
            "log_level": "warning",
            "sink": NAME,
            "reason": reason,
            "error": error,
        },
    ]
    assert payloads(spool) == [b"c"]
    spool.close()
    blocking = open_spool(tmp_path / "b", full_policy="block")
    monkeypatch.setattr(os, "pwrite", failing)
    with pytest.raises(SpoolFull) as err:
        blocking.append(b"x")
    monkeypatch.setattr(os, "pwrite", real)
    assert err.value.reason == reason
    blocking.close()


def test_a_failed_clean_up_after_a_half_write_is_still_a_counted_drop(tmp_path: Path, monkeypatch) -> None:
    """A write that fails half-way is cut back off the segment; if even that
    fails, the record is still only a counted drop, not an exception."""
    metrics = Metrics()
    spool = open_spool(tmp_path, metrics, full_policy="drop_newest")
    real = os.pwrite

    def half_then_fail(fd: int, data, offset: int) -> int:
        if len(data) > 4:
            return real(fd, bytes(data[:4]), offset)
        raise OSError(errno.EIO, "Input/output error")

    def failing_truncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pwrite", half_then_fail)
    monkeypatch.setattr(os, "ftruncate", failing_truncate)
    assert spool.append(b"half") is False
    monkeypatch.undo()
    assert dropped(metrics, "io_error") == 1
    spool.close()


# -------------------------------------------------------------- read side


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_acknowledged_segments_give_their_descriptors_back(tmp_path: Path) -> None:
    before = open_fds()
    spool = open_spool(tmp_path, segment_bytes=64)
    for r in records(40):
        spool.append(r)
    assert len(segments(tmp_path)) > 10
    assert payloads(spool) == records(40)  # opens a read descriptor per segment
    spool.ack_through(spool.next_position - 1)
    assert len(segments(tmp_path)) <= 1
    # The lock, the active segment and at most its read descriptor.
    assert open_fds() - before <= 3
    spool.close()
    assert open_fds() == before


def test_a_segment_deleted_by_hand_is_not_an_error(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, segment_bytes=64)
    for r in records(12):
        spool.append(r)
    assert payloads(spool) == records(12)
    first = segments(tmp_path)[0]
    first.unlink()  # an operator's clean-up; the open descriptor still reads it
    spool.ack_through(spool.next_position - 1)
    assert spool.depth == 0
    spool.close()


def test_acknowledging_into_a_gap_moves_the_head_past_it(tmp_path: Path) -> None:
    """Records lost with a damaged segment leave a gap in the positions; an
    acknowledgement of a position inside it acknowledges everything up to
    and including that position: ``head`` (where the Kafka sink resumes) is
    the position after it, even with no record there."""
    write_spool(tmp_path, 12, segment_bytes=64)
    bases = [int(p.stem) for p in segments(tmp_path)]
    assert len(bases) >= 4
    lost = segments(tmp_path)[1]
    lost_from, lost_to = bases[1], bases[2]
    lost.unlink()
    spool = open_spool(tmp_path)
    assert [p for p, _ in spool.peek(1 << 20)] == [*range(lost_from), *range(lost_to, 12)]
    assert lost_to - lost_from >= 3
    spool.ack_through(lost_from + 1)  # inside the gap, past its first position
    assert spool.head == lost_from + 2
    assert [p for p, _ in spool.peek(1)] == [lost_to]
    spool.close()


# ------------------------------------------------ recovery, as logged


def test_a_damaged_ack_file_is_counted_and_logged(tmp_path: Path) -> None:
    write_spool(tmp_path, 4)
    (tmp_path / ACK_FILE).write_bytes(b"abc")
    metrics = Metrics()
    with structlog.testing.capture_logs() as logs:
        spool = open_spool(tmp_path, metrics)
    assert spool.corrupt_regions == 1 and dropped(metrics, "spool_corrupt") == 1
    assert events(logs, "spool_corrupt") == [
        {
            "event": "spool_corrupt",
            "sink": NAME,
            "file": ACK_FILE,
            "records_lost": 1,
            "reason": "damaged (3 bytes)",
        }
    ]
    assert events(logs, "spool_replayed") == [
        {
            "event": "spool_replayed",
            "sink": NAME,
            "alerts": 4,
            "bytes": sum(HEADER_SIZE + len(r) for r in records(4)),
        }
    ]
    spool.close()


def test_an_untrusted_ack_counts_no_loss_before_the_oldest_segment(tmp_path: Path) -> None:
    """Acknowledged segments are deleted; once the ack file is damaged, the
    positions before the oldest remaining segment were acknowledged, not lost."""
    spool = open_spool(tmp_path, segment_bytes=64)
    for r in records(12):
        spool.append(r)
    spool.ack_through(5)
    spool.close()
    oldest = int(segments(tmp_path)[0].stem)
    assert oldest > 0
    (tmp_path / ACK_FILE).write_bytes(b"\x00" * 12)  # wrong CRC
    metrics = Metrics()
    spool = open_spool(tmp_path, metrics)
    assert [p for p, _ in spool.peek(1 << 20)] == list(range(oldest, 12))
    assert dropped(metrics, "spool_corrupt") == 1  # the ack file only
    spool.close()


def test_an_ack_past_the_end_is_logged_with_both_positions(tmp_path: Path) -> None:
    write_spool(tmp_path, 10)
    data = (99).to_bytes(8, "big")
    (tmp_path / ACK_FILE).write_bytes(data + zlib.crc32(data).to_bytes(4, "big"))
    with structlog.testing.capture_logs() as logs:
        open_spool(tmp_path).close()
    assert [e["reason"] for e in events(logs, "spool_corrupt")] == [
        "acknowledged position 99 is past the end (10)"
    ]


def test_garbage_in_a_segment_is_logged_with_the_file_and_the_loss(tmp_path: Path) -> None:
    write_spool(tmp_path, 6)
    segment = segments(tmp_path)[0]
    raw = bytearray(segment.read_bytes())
    raw[HEADER_SIZE + 2] ^= 0xFF  # the first record's payload
    segment.write_bytes(bytes(raw))
    with structlog.testing.capture_logs() as logs:
        spool = open_spool(tmp_path)
    assert payloads(spool) == records(6)[1:]
    assert events(logs, "spool_corrupt_regions") == [
        {"event": "spool_corrupt_regions", "sink": NAME, "file": segment.name, "regions": 1}
    ]
    assert events(logs, "spool_corrupt") == [
        {
            "event": "spool_corrupt",
            "sink": NAME,
            "file": tmp_path.name,
            "records_lost": 1,
            "reason": "records missing or unreadable",
        }
    ]
    spool.close()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (ACK_FILE, "[Errno 21] Is a directory: '{path}'"),
        (LOCK_FILE, "lock file is a directory"),
        ("gaps", "gaps file is a directory"),
        ("ack.tmp", "temporary file is a directory"),
    ],
)
def test_a_directory_in_the_way_is_moved_aside_and_logged(tmp_path: Path, name: str, reason: str) -> None:
    write_spool(tmp_path, 3)
    path = tmp_path / name
    path.unlink(missing_ok=True)
    path.mkdir()
    with structlog.testing.capture_logs() as logs:
        spool = open_spool(tmp_path)
    assert events(logs, "spool_file_moved_aside") == [
        {
            "event": "spool_file_moved_aside",
            "sink": NAME,
            "file": name,
            "to": f"{name}.corrupt",
            "reason": reason.format(path=path),
        }
    ]
    assert (tmp_path / f"{name}.corrupt").is_dir()
    assert payloads(spool) == records(3)
    if name == ACK_FILE:
        assert [e["reason"] for e in events(logs, "spool_corrupt")] == [
            f"unreadable: [Errno 21] Is a directory: '{path}'"
        ]
    spool.close()


def test_a_taken_quarantine_name_moves_to_the_next(tmp_path: Path) -> None:
    write_spool(tmp_path, 3)
    (tmp_path / ACK_FILE).mkdir()
    block(tmp_path / "ack.corrupt")
    with structlog.testing.capture_logs() as logs:
        open_spool(tmp_path).close()
    assert [e["to"] for e in events(logs, "spool_file_moved_aside")] == ["ack.corrupt.1"]
    assert (tmp_path / "ack.corrupt.1").is_dir() and (tmp_path / "ack.corrupt" / "keep").exists()


def test_after_ten_taken_names_the_file_is_left_and_logged(tmp_path: Path) -> None:
    """Ten names are tried (``.corrupt``, ``.corrupt.1`` ... ``.corrupt.9``),
    then the entry stays where it is and the warning says so."""
    write_spool(tmp_path, 3)
    (tmp_path / "gaps").mkdir()
    block_quarantine(tmp_path / "gaps")
    with structlog.testing.capture_logs() as logs:
        spool = open_spool(tmp_path)
    assert events(logs, "spool_file_moved_aside") == []
    assert events(logs, "spool_file_unusable") == [
        {"event": "spool_file_unusable", "sink": NAME, "file": "gaps", "reason": "gaps file is a directory"}
    ]
    assert (tmp_path / "gaps").is_dir() and not (tmp_path / "gaps.corrupt.10").exists()
    assert payloads(spool) == records(3)
    spool.close()


def leftovers(directory: Path, expected: set[str]) -> set[str]:
    return {p.name for p in directory.iterdir()} - expected


def test_a_failed_ack_write_is_logged_and_leaves_only_what_the_next_start_removes(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    for r in records(3):
        spool.append(r)
    block(tmp_path / ACK_FILE)  # the rename onto it fails
    with structlog.testing.capture_logs() as logs:
        spool.ack_through(0)
    [failed] = events(logs, "spool_ack_write_failed")
    assert failed["sink"] == NAME and failed["error"].startswith("[Errno 21] Is a directory")
    spool.close()
    names = {LOCK_FILE, ACK_FILE, *(p.name for p in segments(tmp_path))}
    assert all(name.endswith(".tmp") for name in leftovers(tmp_path, names))
    reopened = open_spool(tmp_path)  # moves the ack directory aside, removes the temporary
    reopened.close()
    assert leftovers(tmp_path, names | {"ack.corrupt"}) == set()


def test_a_failed_gaps_write_is_logged_and_leaves_only_what_the_next_start_removes(tmp_path: Path) -> None:
    write_spool(tmp_path, 12, segment_bytes=64)
    segments(tmp_path)[1].unlink()  # a gap to remember
    (tmp_path / "gaps").mkdir()
    (tmp_path / "gaps" / "keep").write_bytes(b"")
    block_quarantine(tmp_path / "gaps")
    with structlog.testing.capture_logs() as logs:
        spool = open_spool(tmp_path)
    spool.close()
    [failed] = events(logs, "spool_gaps_write_failed")
    assert failed["sink"] == NAME and "Errno" in failed["error"]
    known = {LOCK_FILE, ACK_FILE, "gaps", *(p.name for p in segments(tmp_path))}
    known |= {f"gaps.corrupt.{n}" for n in range(1, 10)} | {"gaps.corrupt"}
    left = leftovers(tmp_path, known)
    assert left and all(name.endswith(".tmp") for name in left)


def test_unreadable_gaps_are_logged(tmp_path: Path) -> None:
    write_spool(tmp_path, 3)
    (tmp_path / "gaps").write_bytes(b"[[1,")
    with structlog.testing.capture_logs() as logs:
        spool = open_spool(tmp_path)
    [entry] = events(logs, "spool_gaps_unreadable")
    assert entry["sink"] == NAME and entry["error"].startswith("Expecting value")
    assert payloads(spool) == records(3)
    spool.close()


@pytest.mark.parametrize("aside", [True, False])
def test_a_segment_that_cannot_be_repaired_is_moved_aside_and_its_records_counted(
    tmp_path: Path, aside: bool
) -> None:
    """A segment with garbage in the middle is rewritten through
    ``<base>.tmp``; with a directory there that cannot be moved, the repair
    fails, the segment goes aside, and its records count as lost.  If it
    cannot go aside either, it stays as it is, for a human: never deleted."""
    write_spool(tmp_path, 12, segment_bytes=64)
    first, second = segments(tmp_path)[:2]
    raw = bytearray(first.read_bytes())
    raw[HEADER_SIZE + 1] ^= 0xFF  # the first record: the survivors are not at offset 0
    first.write_bytes(bytes(raw))
    blocked = first.with_suffix(".tmp")
    block(blocked)
    block_quarantine(blocked)
    if not aside:
        block_quarantine(first)
    metrics = Metrics()
    with structlog.testing.capture_logs() as logs:
        spool = open_spool(tmp_path, metrics)
    lost = int(second.stem)
    assert [p for p, _ in spool.peek(1 << 20)] == list(range(lost, 12))
    assert dropped(metrics, "spool_corrupt") == lost
    assert spool.corrupt_regions == 1
    spool.close()
    if aside:
        moved = [e for e in events(logs, "spool_file_moved_aside") if e["file"] == first.name]
        assert len(moved) == 1 and moved[0]["to"] == f"{first.name}.corrupt"
        assert moved[0]["reason"].startswith("cannot repair: [Errno 21] Is a directory")
    else:
        [left] = [e for e in events(logs, "spool_file_unusable") if e["file"] == first.name]
        assert left["reason"].startswith("cannot repair: [Errno 21] Is a directory")
        assert first.read_bytes() == bytes(raw)


def test_an_unreadable_segment_is_one_corrupt_region(tmp_path: Path) -> None:
    write_spool(tmp_path, 12, segment_bytes=64)
    newest = segments(tmp_path)[-1]
    newest.unlink()
    newest.mkdir()
    with structlog.testing.capture_logs() as logs:
        spool = open_spool(tmp_path)
    assert spool.corrupt_regions == 1
    [moved] = events(logs, "spool_file_moved_aside")
    assert moved["file"] == newest.name and moved["reason"] == f"[Errno 21] Is a directory: '{newest}'"
    spool.close()


# --------------------------------------------- permissions taken away

NOBODY = 65534


def _as_nobody(directory: Path, damage: str) -> dict:
    """Write a spool as an unprivileged user, damage it, and reopen it, in a
    forked child (root bypasses file modes, so the test process cannot see
    what a permission error does).  ``damage``: ``segment`` or ``lock`` loses
    its permissions; ``stray``, ``foreign``: the caller left a file of
    another user there."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            write_spool(directory, 3)
            target = {"segment": segments(directory)[0], "lock": directory / LOCK_FILE}.get(damage)
            if target is not None:
                os.chmod(target, 0)
            with structlog.testing.capture_logs() as logs:
                spool = open_spool(directory)
            result = {
                "names": sorted(p.name for p in directory.glob(f"*{SEGMENT_SUFFIX}")),
                "payloads": [p.decode() for p in payloads(spool)],
                "mode": stat.S_IMODE(target.stat().st_mode) if target else None,
                "logs": [e for e in logs if e["event"] in ("spool_file_mode_restored", "spool_stray_file")],
            }
            spool.close()
            os.write(write_end, json.dumps(result).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        out = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return json.loads(out)


@pytest.fixture
def shared_dir():
    """A directory outside pytest's root-only tree, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="eventd-spool-"))
    yield directory
    for path in sorted(directory.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
    directory.rmdir()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")


@needs_root
@pytest.mark.parametrize(("damage", "file"), [("segment", f"{0:020d}{SEGMENT_SUFFIX}"), ("lock", LOCK_FILE)])
def test_a_file_of_ours_without_permissions_gets_them_back(shared_dir: Path, damage: str, file: str) -> None:
    os.chown(shared_dir, NOBODY, NOBODY)
    result = _as_nobody(shared_dir, damage)
    assert result["payloads"] == [r.decode() for r in records(3)]
    assert result["mode"] == 0o600
    assert result["logs"] == [{"event": "spool_file_mode_restored", "log_level": "warning", "file": file}]


@needs_root
def test_a_temporary_file_that_cannot_be_removed_is_logged(shared_dir: Path) -> None:
    os.chmod(shared_dir, 0o1777)  # sticky: only a file's owner may remove it
    (shared_dir / "other.tmp").write_bytes(b"not ours")
    result = _as_nobody(shared_dir, "stray")
    assert result["payloads"] == [r.decode() for r in records(3)]
    assert result["logs"] == [
        {
            "event": "spool_stray_file",
            "log_level": "warning",
            "sink": NAME,
            "file": "other.tmp",
            "error": f"[Errno 1] Operation not permitted: '{shared_dir / 'other.tmp'}'",
        }
    ]


@needs_root
def test_a_segment_that_cannot_be_read_or_moved_is_kept(shared_dir: Path) -> None:
    """A segment the spool can neither read (another user's, mode 0) nor move
    aside (ten names taken) stays where it is, for a human; it is counted,
    never deleted."""
    os.chown(shared_dir, NOBODY, NOBODY)
    foreign = shared_dir / f"{100:020d}{SEGMENT_SUFFIX}"
    foreign.write_bytes(b"someone else's")
    os.chmod(foreign, 0)
    block_quarantine(foreign)
    result = _as_nobody(shared_dir, "foreign")
    assert result["payloads"] == [r.decode() for r in records(3)]
    assert foreign.name in result["names"]
    assert foreign.read_bytes() == b"someone else's"


@needs_root
def test_an_acknowledged_segment_that_cannot_be_deleted_is_left(shared_dir: Path) -> None:
    """A fully acknowledged segment the spool may not delete (another user's,
    in a sticky directory) is left behind, not an error at start-up."""
    os.chmod(shared_dir, 0o1777)
    write_spool(shared_dir, 3)  # as root
    (shared_dir / LOCK_FILE).unlink()
    head = (3).to_bytes(8, "big")
    (shared_dir / ACK_FILE).write_bytes(head + zlib.crc32(head).to_bytes(4, "big"))
    for path in [shared_dir / ACK_FILE, *segments(shared_dir)]:
        os.chmod(path, 0o644)
    [acknowledged] = segments(shared_dir)
    result = _as_nobody(shared_dir, "foreign")
    # Only the three records the child appended itself, after position 3.
    assert result["payloads"] == [r.decode() for r in records(3)]
    assert acknowledged.name in result["names"]
