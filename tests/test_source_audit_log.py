"""The audit log tailer on real files: rotation, truncation, torn and oversize
lines, checkpoints and restarts, backfill, dedup."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gzip
import os
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventd.config import AuditLogConfig
from eventd.events.errors import DecodeError
from eventd.metrics import Metrics
from eventd.sources.audit_log import AuditLogSource
from eventd.sources.base import Batch
from eventd.sources.checkpoint import load_checkpoint, write_checkpoint
from eventd.sources.linereader import LineSplitter, rotated_files
from tests.support.builders import audit_event
from tests.support.waiting import wait_until

POLL = 0.01


# ------------------------------------------------------------------ helpers


class RecordingInlet:
    """Records batches; resolves ``done`` at once unless told to hold it."""

    def __init__(self, *, hold: bool = False) -> None:
        self.batches: list[Batch] = []
        self.rejects: collections.Counter[str] = collections.Counter()
        self.hold = hold

    async def put(self, batch: Batch) -> None:
        self.batches.append(batch)
        if not self.hold and batch.done is not None:
            batch.done.set_result(None)

    def offer(self, batch: Batch) -> bool:
        raise AssertionError("the tailer must wait for room, not offer")

    def rejected(self, source: str, error: DecodeError | str, count: int = 1) -> None:
        assert source == "audit_log"
        self.rejects[error if isinstance(error, str) else error.reason] += count

    def ids(self) -> list[str]:
        return [e.doc["auditID"] for b in self.batches for e in b.events]


def line(ident: str, **kw: object) -> bytes:
    return orjson.dumps(audit_event(auditID=ident, **kw)) + b"\n"


def ids(prefix: str, numbers: Iterable[int]) -> list[str]:
    return [f"{prefix}-{n:04d}" for n in numbers]


def lines(prefix: str, numbers: Iterable[int]) -> bytes:
    return b"".join(line(i) for i in ids(prefix, numbers))


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def backup_name(live: Path, when: datetime, gz: bool = False) -> Path:
    stamp = f"{when:%Y-%m-%dT%H-%M-%S}.{when.microsecond // 1000:03d}"
    return live.with_name(f"audit-{stamp}.log{'.gz' if gz else ''}")


def rotate(live: Path) -> Path:
    """lumberjack: rename the live file to ``audit-<now UTC>.log``, create a new one."""
    when = datetime.now(UTC)
    while backup_name(live, when).exists() or backup_name(live, when, gz=True).exists():
        when += timedelta(milliseconds=1)
    target = backup_name(live, when)
    os.rename(live, target)
    live.touch()
    return target


def compress(backup: Path) -> Path:
    """lumberjack: write ``<backup>.gz``, then delete the plain file."""
    target = backup.with_name(backup.name + ".gz")
    with gzip.open(target, "wb") as f:
        f.write(backup.read_bytes())
    backup.unlink()
    return target


def make_source(tmp_path: Path, metrics: Metrics | None = None, **kw: object) -> AuditLogSource:
    config = AuditLogConfig(path=tmp_path / "audit.log", poll_interval_seconds=POLL, **kw)  # type: ignore[arg-type]
    return AuditLogSource(config, metrics or Metrics(), drain_timeout=2.0)


def gauge(source: AuditLogSource, name: str, **labels: str) -> float:
    value = source._metrics.registry.get_sample_value(name, {"source": "audit_log", **labels})
    return value or 0.0


@asynccontextmanager
async def running(source: AuditLogSource, inlet: RecordingInlet) -> AsyncIterator[asyncio.Task[None]]:
    """Run the source until the block ends, then ``stop`` it properly."""
    task = asyncio.create_task(source.run(inlet))
    try:
        await wait_until(lambda: gauge(source, "eventd_source_up") == 1 or task.done())
        yield task
    finally:
        await source.stop()
        await task


def offsets_after(path_content: bytes) -> dict[str, int]:
    """auditID -> offset just after its line, for exactness checks."""
    out, pos = {}, 0
    for raw in path_content.splitlines(keepends=True):
        pos += len(raw)
        out[orjson.loads(raw)["auditID"]] = pos
    return out


# ------------------------------------------------------------ line splitter

chunkings = st.lists(st.integers(min_value=1, max_value=40), max_size=60)
bodies = st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"x")), max_size=25)


@given(bodies, chunkings, st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"x")))
def test_splitter_yields_complete_lines_whatever_the_chunking(body, cuts, tail):
    limit = 20
    data = b"".join(b + b"\n" for b in body) + tail
    splitter = LineSplitter(1000, limit)
    got, i = [], 0
    for cut in [*cuts, len(data)]:
        got += splitter.feed(data[i : i + cut])
        i += cut
        assert splitter.held <= limit  # an oversize line is never buffered whole
    expected, pos = [], 1000
    for b in body:
        pos += len(b) + 1
        expected.append((b if len(b) <= limit else None, pos))
    assert got == expected
    # The unterminated tail is kept back until the stream is known to be complete.
    assert splitter.flush() == ((tail if len(tail) <= limit else None, 1000 + len(data)) if tail else None)


def test_splitter_started_mid_line_drops_the_fragment_silently():
    splitter = LineSplitter(50, 100, mid_line=True)
    fragment, rest = b'ent","auditID":"x"}', b'\n{"a":1}\n'
    assert splitter.feed(fragment) == []
    assert splitter.feed(rest) == [(b'{"a":1}', 50 + len(fragment + rest))]


# ------------------------------------------------------------------- tailing


def write_with_rotations(live: Path, files: int, per_file: int) -> list[str]:
    """A writer thread like the API server's: O_APPEND writes, each line in two
    pieces (readers see torn lines), the file closed, renamed and recreated
    after every ``per_file`` lines, without waiting for any reader."""
    written = []
    fd = os.open(live, os.O_WRONLY | os.O_APPEND)
    for n in range(files * per_file):
        ident = f"e-{n:04d}"
        data = line(ident)
        os.write(fd, data[:40])
        os.write(fd, data[40:])
        written.append(ident)
        if n % 7 == 0:
            time.sleep(0.0002)
        if n % per_file == per_file - 1:
            os.close(fd)
            rotate(live)
            fd = os.open(live, os.O_WRONLY | os.O_APPEND)
    os.close(fd)
    return written


@pytest.mark.asyncio
async def test_follows_rename_rotation_while_being_written(tmp_path):
    live = tmp_path / "audit.log"
    live.touch()
    source, inlet = make_source(tmp_path), RecordingInlet()
    async with running(source, inlet):
        expected = await asyncio.to_thread(write_with_rotations, live, 10, 40)
        await wait_until(lambda: len(inlet.ids()) >= len(expected))
    assert len(rotated_files(live)) == 10
    assert inlet.ids() == expected
    assert not inlet.rejects
    assert all(len(b.events) <= 500 for b in inlet.batches)


@pytest.mark.asyncio
async def test_several_rotations_between_two_polls(tmp_path):
    live = tmp_path / "audit.log"
    live.touch()
    source, inlet = make_source(tmp_path), RecordingInlet()
    async with running(source, inlet):
        append(live, lines("s", range(3)))
        await wait_until(lambda: len(inlet.ids()) == 3)
        # No await from here on: the reader sees only the final state.
        append(live, lines("s", range(3, 6)))
        rotate(live)
        append(live, lines("s", range(6, 9)))
        compress(rotate(live))
        append(live, lines("s", range(9, 12)))
        rotate(live)
        append(live, lines("s", range(12, 15)))
        await wait_until(lambda: len(inlet.ids()) >= 15)
    assert inlet.ids() == ids("s", range(15))


@pytest.mark.asyncio
async def test_copytruncate_restarts_at_zero_and_counts_possible_loss(tmp_path):
    live = tmp_path / "audit.log"
    live.touch()
    source, inlet = make_source(tmp_path), RecordingInlet()
    async with running(source, inlet):
        append(live, lines("a", range(10)))
        await wait_until(lambda: len(inlet.ids()) == 10)
        os.truncate(live, 0)  # logrotate copytruncate
        append(live, lines("b", range(10)))
        await wait_until(lambda: len(inlet.ids()) == 20)
        # Truncated and grown past our offset before we looked: the changed
        # start of the file gives it away.
        os.truncate(live, 0)
        append(live, lines("c", range(40)))
        await wait_until(lambda: len(inlet.ids()) == 60)
    assert inlet.ids() == ids("a", range(10)) + ids("b", range(10)) + ids("c", range(40))
    assert source.possible_losses["truncated"] == 2
    assert not inlet.rejects


@pytest.mark.asyncio
async def test_torn_last_line_is_kept_until_completed(tmp_path):
    live = tmp_path / "audit.log"
    live.touch()
    source, inlet = make_source(tmp_path), RecordingInlet()
    second = line("t-0001")
    async with running(source, inlet):
        append(live, line("t-0000") + second[:25])
        # The same read saw the first line and the torn start of the second.
        await wait_until(lambda: inlet.ids() == ["t-0000"])
        for _ in range(3):  # several polls see only the fragment
            await asyncio.sleep(POLL)
        append(live, second[25:] + line("t-0002"))
        await wait_until(lambda: len(inlet.ids()) == 3)
    assert inlet.ids() == ["t-0000", "t-0001", "t-0002"]
    assert not inlet.rejects


@pytest.mark.asyncio
async def test_oversize_line_is_skipped_and_counted_without_stopping(tmp_path):
    live = tmp_path / "audit.log"
    live.touch()
    source, inlet = make_source(tmp_path, max_line_bytes=2048), RecordingInlet()
    big = line("big", requestObject={"pad": "x" * 10_000})
    async with running(source, inlet):
        append(live, line("o-0000"))
        await wait_until(lambda: len(inlet.ids()) == 1)
        for i in range(0, len(big) - 1, 1500):  # arrives over several polls
            append(live, big[i : min(i + 1500, len(big) - 1)])
            await asyncio.sleep(POLL)
        append(live, b"\n" + line("o-0001"))
        await wait_until(lambda: len(inlet.ids()) == 2)
        append(live, line("o-0002"))
        await wait_until(lambda: len(inlet.ids()) == 3)
    assert inlet.ids() == ["o-0000", "o-0001", "o-0002"]
    assert inlet.rejects == {"line_too_long": 1}


@pytest.mark.asyncio
async def test_bad_blank_and_duplicate_lines(tmp_path):
    live = tmp_path / "audit.log"
    live.touch()
    metrics = Metrics()
    source, inlet = make_source(tmp_path, metrics), RecordingInlet()
    event_list = {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": []}
    event_list["items"] = [audit_event(auditID="d-1"), audit_event(auditID="d-2")]
    content = (
        line("d-0")
        + b"\n   \n"
        + b'{"kind": "Event", "auditID": "broken\n'
        + b'{"kind": "Pod"}\n'
        + line("d-0")  # the same (auditID, stage) again
        + line("d-0", stage="ResponseStarted")  # another stage of the same request
        + orjson.dumps(event_list)
        + b"\n"
        + orjson.dumps([audit_event(auditID="d-3")])
        + b"\r\n"
    )
    async with running(source, inlet):
        append(live, content)
        await wait_until(lambda: len(inlet.ids()) == 5)
        await wait_until(lambda: gauge(source, "eventd_events_dropped_total", reason="duplicate") == 1)
    assert inlet.ids() == ["d-0", "d-0", "d-1", "d-2", "d-3"]
    assert [e.doc["stage"] for e in inlet.batches[0].events[:2]] == ["ResponseComplete", "ResponseStarted"]
    assert inlet.rejects == {"json": 1, "not_audit": 1}
    assert all(e.origin == "file" for b in inlet.batches for e in b.events)


@pytest.mark.asyncio
async def test_without_checkpoint_starts_at_the_end(tmp_path):
    live = tmp_path / "audit.log"
    old = lines("old", range(5))
    live.write_bytes(old + line("old-torn")[:30])  # the writer is mid-line
    source, inlet = make_source(tmp_path), RecordingInlet()
    async with running(source, inlet):
        append(live, line("old-torn")[30:] + lines("new", range(3)))
        await wait_until(lambda: len(inlet.ids()) == 3)
    assert inlet.ids() == ids("new", range(3))
    assert not inlet.rejects  # the fragment we started in is not an error


@pytest.mark.asyncio
async def test_live_file_created_later_is_read_from_its_start(tmp_path):
    source, inlet = make_source(tmp_path), RecordingInlet()
    task = asyncio.create_task(source.run(inlet))
    await wait_until(source.ready)
    assert gauge(source, "eventd_source_up") == 0
    (tmp_path / "audit.log").write_bytes(lines("late", range(4)))
    await wait_until(lambda: len(inlet.ids()) == 4)
    assert gauge(source, "eventd_source_up") == 1
    await source.stop()
    await task
    assert inlet.ids() == ids("late", range(4))
    assert gauge(source, "eventd_source_up") == 0


# ----------------------------------------------------------------- backfill


@pytest.mark.asyncio
async def test_backfill_reads_rotated_and_gzip_files_in_timestamp_order(tmp_path):
    live = tmp_path / "audit.log"
    t0 = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
    # Created out of order; one backup exists in both forms (being compressed).
    plain = [
        (backup_name(live, t0 + timedelta(seconds=2), gz=False), lines("f", range(10, 15))),
        (backup_name(live, t0 + timedelta(seconds=1), gz=False), lines("f", range(5, 10))),
        (backup_name(live, t0 + timedelta(seconds=3), gz=False), lines("f", range(15, 20))),
        (backup_name(live, t0 + timedelta(seconds=3), gz=True), lines("f", range(15, 20))),
        (backup_name(live, t0 + timedelta(milliseconds=999), gz=True), lines("f", range(5))),
    ]
    for path, data in plain:
        if path.suffix == ".gz":
            with gzip.open(path, "wb") as f:
                f.write(data)
        else:
            path.write_bytes(data)
    live.write_bytes(lines("f", range(20, 25)))
    # Not backups of audit.log:
    (tmp_path / "audit.log.1").write_bytes(lines("x", range(2)))
    (tmp_path / "other-2026-01-01T00-00-00.000.log").write_bytes(lines("x", range(2, 4)))
    (tmp_path / "audit-2026-01-01.log").write_bytes(lines("x", range(4, 6)))
    source, inlet = make_source(tmp_path, backfill=True), RecordingInlet()
    async with running(source, inlet):
        await wait_until(lambda: len(inlet.ids()) >= 25)
        append(live, line("f-0025"))
        await wait_until(lambda: len(inlet.ids()) == 26)
    assert inlet.ids() == ids("f", range(26))


# --------------------------------------------------------- checkpoint/restart


@pytest.mark.asyncio
async def test_checkpoint_moves_only_when_batches_are_done_in_order(tmp_path):
    live = tmp_path / "audit.log"
    live.touch()
    cp_path = tmp_path / "cp.json"
    source, inlet = make_source(tmp_path, checkpoint=cp_path), RecordingInlet(hold=True)
    ends = []
    async with running(source, inlet):
        for b in range(3):
            append(live, lines("c", range(b * 5, b * 5 + 5)))
            await wait_until(lambda b=b: len(inlet.batches) == b + 1)
            ends.append(live.stat().st_size)
        start = source.committed
        assert start is not None and start.offset == 0
        inlet.batches[1].done.set_result(None)
        await asyncio.sleep(0)
        assert source.committed == start  # batch 0 is not done yet
        inlet.batches[0].done.set_result(None)
        await wait_until(lambda: source.committed.offset == ends[1])
        await wait_until(lambda: getattr(load_checkpoint(cp_path), "offset", None) == ends[1])
        # stop() waits for the outstanding batch, then saves the final position.
        stopping = asyncio.create_task(source.stop())
        await asyncio.sleep(POLL)
        assert not stopping.done()
        inlet.batches[2].done.set_result(None)
        await stopping
    assert load_checkpoint(cp_path).offset == ends[2]


@pytest.mark.asyncio
async def test_restart_mid_file_delivers_every_event_exactly_once(tmp_path):
    live = tmp_path / "audit.log"
    live.touch()
    cp_path = tmp_path / "cp.json"
    expected = ids("r", range(300))

    async def writer() -> None:
        for n, ident in enumerate(expected):
            data = line(ident)
            append(live, data[:50])
            append(live, data[50:])
            if n % 10 == 0:
                await asyncio.sleep(POLL / 2)

    first = RecordingInlet()
    source = make_source(tmp_path, checkpoint=cp_path)
    async with running(source, first):
        writing = asyncio.create_task(writer())
        await wait_until(lambda: len(first.ids()) >= 100)
    await writing
    # The checkpoint is exactly after the last event the first run delivered.
    assert load_checkpoint(cp_path).offset == offsets_after(live.read_bytes())[first.ids()[-1]]
    second = RecordingInlet()
    async with running(make_source(tmp_path, checkpoint=cp_path), second):
        await wait_until(lambda: len(first.ids()) + len(second.ids()) >= 300)
    assert 100 <= len(first.ids()) < 300
    assert first.ids() + second.ids() == expected


@pytest.mark.asyncio
async def test_restart_after_checkpointed_file_was_rotated_and_compressed(tmp_path):
    live = tmp_path / "audit.log"
    cp_path = tmp_path / "cp.json"
    ancient = backup_name(live, datetime(2020, 1, 1, tzinfo=UTC), gz=True)
    with gzip.open(ancient, "wb") as f:
        f.write(lines("old", range(3)))
    live.write_bytes(lines("g", range(10)))
    first = RecordingInlet()
    async with running(make_source(tmp_path, checkpoint=cp_path, backfill=True), first):
        await wait_until(lambda: len(first.ids()) == 13)
    assert first.ids() == ids("old", range(3)) + ids("g", range(10))
    # While eventd is down: more lines, rotation, compression, another rotation.
    append(live, lines("g", range(10, 15)))
    compress(rotate(live))
    append(live, lines("g", range(15, 20)))
    rotate(live)
    append(live, lines("g", range(20, 25)))
    second = RecordingInlet()
    source = make_source(tmp_path, checkpoint=cp_path, backfill=True)
    async with running(source, second):
        await wait_until(lambda: len(second.ids()) >= 15)
        append(live, line("g-0025"))
        await wait_until(lambda: len(second.ids()) >= 16)
    assert second.ids() == ids("g", range(10, 26))
    assert not source.possible_losses


@pytest.mark.asyncio
async def test_reused_inode_is_recognised_by_the_fingerprint(tmp_path):
    live = tmp_path / "audit.log"
    cp_path = tmp_path / "cp.json"
    live.write_bytes(lines("a", range(20)))
    first = RecordingInlet()
    async with running(make_source(tmp_path, checkpoint=cp_path, backfill=True), first):
        await wait_until(lambda: len(first.ids()) == 20)
    saved = load_checkpoint(cp_path)
    # The file is deleted and a new, longer one gets its inode (forced here by
    # rewriting the checkpoint with the new file's device and inode).
    live.unlink()
    live.write_bytes(lines("b", range(40)))
    st = live.stat()
    assert st.st_size > saved.offset
    write_checkpoint(cp_path, dataclasses.replace(saved, device=st.st_dev, inode=st.st_ino))
    second = RecordingInlet()
    source = make_source(tmp_path, checkpoint=cp_path)
    async with running(source, second):
        await wait_until(lambda: len(second.ids()) >= 40)
    assert second.ids() == ids("b", range(40))
    assert source.possible_losses["file_missing"] == 1


@pytest.mark.asyncio
async def test_leftover_checkpoint_temp_file_does_not_disturb_a_restart(tmp_path):
    live = tmp_path / "audit.log"
    cp_path = tmp_path / "cp.json"
    live.touch()
    first = RecordingInlet()
    async with running(make_source(tmp_path, checkpoint=cp_path), first):
        append(live, lines("k", range(5)))
        await wait_until(lambda: len(first.ids()) == 5)
    (tmp_path / "cp.json.tmp").write_bytes(b'{"version":1,"offs')  # crash during a save
    append(live, lines("k", range(5, 10)))
    second = RecordingInlet()
    async with running(make_source(tmp_path, checkpoint=cp_path), second):
        await wait_until(lambda: len(second.ids()) == 5)
    assert second.ids() == ids("k", range(5, 10))


async def _crash_mid_stream(tmp_path: Path, source: AuditLogSource) -> tuple[RecordingInlet, asyncio.Task]:
    """Hand over 10 batches, let the pipeline finish only the first 5, then
    cancel the source without ``stop`` (no final checkpoint)."""
    live = tmp_path / "audit.log"
    live.touch()
    inlet = RecordingInlet(hold=True)
    task = asyncio.create_task(source.run(inlet))
    await wait_until(lambda: gauge(source, "eventd_source_up") == 1)
    for b in range(10):
        append(live, lines("k", range(b * 10, b * 10 + 10)))
        await wait_until(lambda b=b: len(inlet.batches) == b + 1)
    for batch in inlet.batches[:5]:
        batch.done.set_result(None)
    end_of_fifth = offsets_after(live.read_bytes())["k-0049"]
    await wait_until(lambda: getattr(load_checkpoint(tmp_path / "cp.json"), "offset", 0) == end_of_fifth)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return inlet, task


@pytest.mark.asyncio
async def test_crash_then_rerun_in_process_loses_nothing_and_repeats_nothing(tmp_path):
    source = make_source(tmp_path, checkpoint=tmp_path / "cp.json")
    first, _ = await _crash_mid_stream(tmp_path, source)
    # The pipeline still finishes what it was handed before the crash.
    for batch in first.batches[5:]:
        batch.done.set_result(None)
    append(tmp_path / "audit.log", lines("k", range(100, 150)))
    second = RecordingInlet()
    async with running(source, second):  # the same source, run again
        await wait_until(lambda: len(second.ids()) >= 50)
    # k-0050..k-0099 were read again from the checkpoint and dropped as duplicates.
    assert gauge(source, "eventd_events_dropped_total", reason="duplicate") == 50
    assert first.ids() + second.ids() == ids("k", range(150))


@pytest.mark.asyncio
async def test_crash_then_restart_redelivers_everything_after_the_checkpoint(tmp_path):
    cp_path = tmp_path / "cp.json"
    first, _ = await _crash_mid_stream(tmp_path, make_source(tmp_path, checkpoint=cp_path))
    # A process crash: the unfinished batches are gone with the pipeline.
    append(tmp_path / "audit.log", lines("k", range(100, 150)))
    second = RecordingInlet()
    async with running(make_source(tmp_path, checkpoint=cp_path), second):
        await wait_until(lambda: len(second.ids()) >= 100)
    assert first.ids() == ids("k", range(100))
    # Exactly the events after the checkpoint, once each.
    assert second.ids() == ids("k", range(50, 150))


@pytest.mark.asyncio
async def test_failed_batch_is_not_committed_and_is_delivered_again(tmp_path):
    live = tmp_path / "audit.log"
    live.touch()
    source = make_source(tmp_path, checkpoint=tmp_path / "cp.json")
    first = RecordingInlet(hold=True)
    task = asyncio.create_task(source.run(first))
    await wait_until(lambda: gauge(source, "eventd_source_up") == 1)
    append(live, lines("f", range(5)))
    await wait_until(lambda: len(first.batches) == 1)
    first.batches[0].done.set_exception(RuntimeError("sink failed"))
    append(live, lines("f", range(5, 8)))
    await wait_until(lambda: len(first.batches) == 2)
    first.batches[1].done.set_result(None)
    append(live, lines("f", range(8, 10)))
    await wait_until(lambda: len(first.batches) == 3)
    first.batches[2].done.cancel()
    await asyncio.sleep(0)
    assert source.committed.offset == 0  # nothing after the failed batch is committed
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    second = RecordingInlet()
    async with running(source, second):  # run again, in the same process
        await wait_until(lambda: len(second.ids()) == 10)
    # Everything after the commit point comes again: failed batches are not
    # mistaken for duplicates (repeating the finished one is the lesser evil).
    assert second.ids() == ids("f", range(10))


@pytest.mark.asyncio
async def test_damaged_gzip_backup_does_not_stop_the_backfill(tmp_path):
    live = tmp_path / "audit.log"
    damaged = backup_name(live, datetime(2026, 1, 1, tzinfo=UTC), gz=True)
    damaged.write_bytes(gzip.compress(lines("x", range(50)))[:200])  # compression crashed midway
    live.write_bytes(lines("h", range(3)))
    source, inlet = make_source(tmp_path, backfill=True), RecordingInlet()
    async with running(source, inlet):
        await wait_until(lambda: len(inlet.ids()) >= 3)
    assert inlet.ids()[-3:] == ids("h", range(3))
    assert set(inlet.ids()[:-3]) <= set(ids("x", range(50)))


@pytest.mark.asyncio
async def test_torn_first_line_does_not_pass_for_a_backup(tmp_path):
    # Every audit line starts alike: a live file holding only the start of its
    # first line must not be taken for the (rotated) backup that starts alike.
    live = tmp_path / "audit.log"
    backup_name(live, datetime(2026, 1, 1, tzinfo=UTC)).write_bytes(lines("p", range(3)))
    live.write_bytes(line("p-0003")[:30])
    source, inlet = make_source(tmp_path, backfill=True), RecordingInlet()
    async with running(source, inlet):
        await wait_until(lambda: len(inlet.ids()) >= 3)
        append(live, line("p-0003")[30:])
        await wait_until(lambda: len(inlet.ids()) >= 4)
    assert inlet.ids() == ids("p", range(4))
