"""The write-ahead spool: order, acknowledgement, bounds, and recovery from
restarts, ``kill -9``, torn writes, garbage and a full disk (real files)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventd.metrics import Metrics
from eventd.sinks.spool import ACK_FILE, HEADER_SIZE, SEGMENT_SUFFIX, Spool, SpoolError
from tests.support.fsync_log import SyncLog

NAME = "kafka"


def dropped(metrics: Metrics, reason: str) -> float:
    return (
        metrics.registry.get_sample_value("eventd_sink_dropped_total", {"sink": NAME, "reason": reason}) or 0
    )


def gauge(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"sink": NAME})


def open_spool(directory: Path, metrics: Metrics | None = None, **kwargs) -> Spool:
    kwargs.setdefault("max_bytes", 1 << 20)
    kwargs.setdefault("full_policy", "drop_oldest")
    return Spool(directory, metrics=metrics or Metrics(), name=NAME, **kwargs)


def payloads(spool: Spool) -> list[bytes]:
    return [record for _, record in spool.peek(1 << 30)]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SEGMENT_SUFFIX}"))


def records(count: int, start: int = 0) -> list[bytes]:
    return [f"alert-{i:05d}".encode() * 3 for i in range(start, start + count)]


def test_order_ack_and_metrics(tmp_path: Path) -> None:
    metrics = Metrics()
    spool = open_spool(tmp_path, metrics)
    data = records(10)
    assert all(spool.append(r) for r in data)
    peeked = spool.peek(4)
    assert [r for _, r in peeked] == data[:4]
    positions = [p for p, _ in spool.peek(100)]
    assert positions == sorted(positions) and len(set(positions)) == 10
    spool.ack_through(peeked[-1][0])
    assert payloads(spool) == data[4:]
    assert spool.depth == 6
    assert spool.size_bytes == sum(HEADER_SIZE + len(r) for r in data[4:])
    assert gauge(metrics, "eventd_spool_alerts") == 6
    assert gauge(metrics, "eventd_spool_bytes") == spool.size_bytes
    assert gauge(metrics, "eventd_spool_capacity_bytes") == 1 << 20
    spool.ack_through(positions[-1])
    assert spool.depth == 0 and spool.size_bytes == 0 and spool.peek(10) == []
    spool.close()


def test_restart_resumes_after_the_ack_position(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    data = records(8)
    for r in data:
        spool.append(r)
    spool.ack_through(spool.peek(3)[-1][0])
    last = spool.peek(100)[-1][0]
    spool.close()

    spool = open_spool(tmp_path)
    assert payloads(spool) == data[3:]
    assert spool.depth == 5 and spool.corrupt_regions == 0
    spool.append(b"after restart")
    assert spool.peek(100)[-1] == (last + 1, b"after restart")
    spool.close()


def test_acknowledged_segments_are_deleted(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, segment_bytes=200)
    for r in records(40):
        spool.append(r)
    assert len(segments(tmp_path)) > 5
    spool.ack_through(spool.peek(20)[-1][0])
    assert payloads(spool) == records(20, start=20)
    spool.ack_through(spool.peek(100)[-1][0])
    assert len(segments(tmp_path)) <= 1
    spool.append(b"next")
    assert len(segments(tmp_path)) == 1 and payloads(spool) == [b"next"]
    spool.close()
    reopened = open_spool(tmp_path)
    assert payloads(reopened) == [b"next"]
    reopened.close()


def test_a_spool_is_used_by_one_process_at_a_time(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    with pytest.raises(SpoolError):
        open_spool(tmp_path)
    spool.close()
    with pytest.raises(SpoolError):
        spool.append(b"after close")
    open_spool(tmp_path).close()


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_full_spool_policies_count_every_drop(tmp_path: Path, policy: str) -> None:
    metrics = Metrics()
    data = records(25)
    size = HEADER_SIZE + len(data[0])
    spool = open_spool(tmp_path, metrics, max_bytes=10 * size, full_policy=policy, segment_bytes=3 * size)
    accepted = [spool.append(r) for r in data]
    assert spool.depth == 10 and spool.size_bytes == 10 * size
    assert dropped(metrics, "spool_full") == 15
    if policy == "drop_oldest":
        assert all(accepted) and payloads(spool) == data[15:]
    else:
        assert accepted == [True] * 10 + [False] * 15 and payloads(spool) == data[:10]
    # Room again once acknowledged; on-disk use stays near the bound.
    spool.ack_through(spool.peek(5)[-1][0])
    assert spool.append(b"x" * len(data[0]))
    assert sum(p.stat().st_size for p in segments(tmp_path)) <= 10 * size + 3 * size
    spool.close()
    reopened = open_spool(tmp_path, max_bytes=10 * size, full_policy=policy)
    assert reopened.depth == 6
    reopened.close()


def test_a_record_larger_than_the_spool_is_refused(tmp_path: Path) -> None:
    metrics = Metrics()
    spool = open_spool(tmp_path, metrics, max_bytes=100)
    assert spool.append(b"small")
    assert not spool.append(b"x" * 100)
    assert payloads(spool) == [b"small"] and dropped(metrics, "spool_full") == 1
    spool.close()


def test_torn_tail_is_truncated_and_counted(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    data = records(5)
    for r in data:
        spool.append(r)
    spool.close()
    segment = segments(tmp_path)[-1]
    intact = segment.stat().st_size
    with segment.open("ab") as f:  # a crash half-way through a record
        f.write(segment.read_bytes()[: HEADER_SIZE + 4])

    metrics = Metrics()
    spool = open_spool(tmp_path, metrics)
    assert payloads(spool) == data
    assert spool.corrupt_regions == 1 and dropped(metrics, "spool_corrupt") == 1
    assert segment.stat().st_size == intact
    spool.append(b"later")
    spool.close()
    reopened = open_spool(tmp_path)
    assert payloads(reopened) == [*data, b"later"] and reopened.corrupt_regions == 0
    reopened.close()


def test_garbage_inside_a_segment_skips_only_the_damaged_record(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    data = records(6)
    for r in data:
        spool.append(r)
    spool.close()
    segment = segments(tmp_path)[0]
    raw = bytearray(segment.read_bytes())
    size = HEADER_SIZE + len(data[0])
    raw[2 * size + 2 : 2 * size + 10] = b"\xff" * 8  # the third record's header
    raw[4 * size + HEADER_SIZE + 1] ^= 0x01  # one bit of the fifth record's payload
    segment.write_bytes(bytes(raw))

    metrics = Metrics()
    spool = open_spool(tmp_path, metrics)
    assert payloads(spool) == [data[0], data[1], data[3], data[5]]
    assert spool.corrupt_regions == 2 and dropped(metrics, "spool_corrupt") == 2
    spool.ack_through(spool.peek(3)[-1][0])
    assert payloads(spool) == [data[5]]
    spool.close()
    reopened = open_spool(tmp_path)
    assert payloads(reopened) == [data[5]] and reopened.corrupt_regions == 0
    reopened.close()


def test_pure_garbage_and_a_damaged_ack_file_never_crash(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    for r in records(3):
        spool.append(r)
    spool.ack_through(spool.peek(1)[0][0])
    spool.close()
    (tmp_path / ACK_FILE).write_bytes(b"\x00garbage")
    (tmp_path / f"{99:020d}{SEGMENT_SUFFIX}").write_bytes(os.urandom(3000))

    spool = open_spool(tmp_path)
    # Without the ack position everything kept is redelivered: no loss.
    assert payloads(spool) == records(3)
    assert spool.corrupt_regions >= 2
    assert spool.append(b"new")
    spool.close()


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from eventd.metrics import Metrics
    from eventd.sinks.spool import Spool

    spool = Spool(Path(sys.argv[1]), 1 << 20, "drop_oldest", Metrics(), "kafka", fsync_interval=3600)
    for i in range(200):
        spool.append(b"record-%d" % i)
    spool.ack_through(spool.peek(50)[-1][0])
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_kill_9_loses_nothing_appended(tmp_path: Path) -> None:
    """Appends survive a SIGKILL even before their fsync (page cache)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    spool = open_spool(tmp_path)
    assert payloads(spool) == [b"record-%d" % i for i in range(50, 200)]
    spool.close()


_DISK_FULL_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from eventd.metrics import Metrics
    from eventd.sinks.spool import Spool

    directory = Path(sys.argv[1])
    metrics = Metrics()
    spool = Spool(directory, 1 << 20, "drop_oldest", metrics, "kafka")
    results = [spool.append(b"a" * 300) for _ in range(3)]
    used = max(p.stat().st_size for p in directory.glob("*.seg"))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Room for a bit more than one record: the next write is cut short (EFBIG).
    resource.setrlimit(resource.RLIMIT_FSIZE, (used + 400, hard))
    results += [spool.append(b"b" * 300) for _ in range(4)]
    spool.close()  # a failed write must not leave half a record behind
    spool = Spool(directory, 1 << 20, "drop_oldest", metrics, "kafka")
    corrupt = spool.corrupt_regions
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    results += [spool.append(b"c" * 300) for _ in range(2)]
    disk_full = metrics.registry.get_sample_value(
        "eventd_sink_dropped_total", {"sink": "kafka", "reason": "disk_full"}
    )
    spool.close()
    print(json.dumps({"results": results, "disk_full": disk_full, "corrupt": corrupt}))
    """
)


def test_disk_full_drops_counts_and_recovers(tmp_path: Path) -> None:
    """A file-size limit (EFBIG, like ENOSPC) mid-run: no half record is left."""
    run = subprocess.run(
        [sys.executable, "-c", _DISK_FULL_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["results"] == [True] * 4 + [False] * 3 + [True] * 2
    assert out["disk_full"] == 3 and out["corrupt"] == 0
    spool = open_spool(tmp_path)
    assert payloads(spool) == [b"a" * 300] * 3 + [b"b" * 300] + [b"c" * 300] * 2
    assert spool.corrupt_regions == 0
    spool.close()


# --------------------------------------------------------------- properties

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.binary(min_size=0, max_size=90)),
        st.tuples(st.just("ack"), st.integers(min_value=0, max_value=6)),
        st.tuples(st.just("reopen"), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, policy=st.sampled_from(["drop_oldest", "drop_newest"]))
def test_spool_behaves_like_a_bounded_queue(ops: list, policy: str) -> None:
    max_bytes = 400
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        metrics = Metrics()
        options = {"max_bytes": max_bytes, "full_policy": policy, "segment_bytes": 150}
        spool = open_spool(directory, metrics, **options)
        model: list[bytes] = []
        drops = 0
        try:
            for op, arg in ops:
                if op == "append":
                    framed = HEADER_SIZE + len(arg)
                    used = sum(HEADER_SIZE + len(r) for r in model)
                    if framed > max_bytes or (policy == "drop_newest" and used + framed > max_bytes):
                        expected, drops = False, drops + 1
                    else:
                        while sum(HEADER_SIZE + len(r) for r in model) + framed > max_bytes:
                            model.pop(0)
                            drops += 1
                        model.append(arg)
                        expected = True
                    assert spool.append(arg) is expected
                elif op == "ack":
                    head = spool.peek(arg)
                    if head:
                        spool.ack_through(head[-1][0])
                        del model[: len(head)]
                else:
                    spool.close()
                    spool = open_spool(directory, metrics, **options)
                positions = [p for p, _ in spool.peek(1 << 30)]
                assert positions == sorted(set(positions))
                assert payloads(spool) == model
                assert spool.depth == len(model)
                assert spool.size_bytes == sum(HEADER_SIZE + len(r) for r in model)
            assert dropped(metrics, "spool_full") == drops
        finally:
            spool.close()


# ----------------------------------------------------------- damaged state


def test_lost_records_are_counted_exactly_and_once(tmp_path: Path) -> None:
    """A segment in the middle vanishes: its records are counted (the next
    segment's name says where they ended), once, not again at every start."""
    spool = open_spool(tmp_path, segment_bytes=100)
    data = records(20)
    for r in data:
        spool.append(r)
    spool.ack_through(1)
    spool.close()
    names = segments(tmp_path)
    gone = names[1]
    first, end = int(gone.stem), int(names[2].stem)
    gone.unlink()

    metrics = Metrics()
    spool = open_spool(tmp_path, metrics)
    assert payloads(spool) == [r for i, r in enumerate(data) if i >= 2 and not first <= i < end]
    assert dropped(metrics, "spool_corrupt") == end - first
    spool.close()
    metrics = Metrics()
    open_spool(tmp_path, metrics).close()
    assert dropped(metrics, "spool_corrupt") == 0


def test_a_copied_record_is_not_delivered_twice(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, segment_bytes=100)
    for r in records(10):
        spool.append(r)
    spool.close()
    first, second = segments(tmp_path)[:2]
    with second.open("r+b") as f:  # the second segment starts with a copy of the first's records
        rest = f.read()
        f.seek(0)
        f.write(first.read_bytes() + rest)
    spool = open_spool(tmp_path)
    assert payloads(spool) == records(10)
    spool.close()


def test_unreadable_entries_are_moved_aside(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, segment_bytes=100)
    for r in records(10):
        spool.append(r)
    spool.close()
    newest = segments(tmp_path)[-1]
    for path in (newest, tmp_path / ACK_FILE, tmp_path / "lock"):
        path.unlink(missing_ok=True)
        path.mkdir()
    metrics = Metrics()
    spool = open_spool(tmp_path, metrics)
    assert payloads(spool) == records(10)[: int(newest.stem)]
    # The ack file, and the newest segment: at least one record, how many is unknowable.
    assert dropped(metrics, "spool_corrupt") == 2
    assert spool.append(b"next")  # a new segment, not the moved one's name
    spool.close()
    moved = {p.name for p in tmp_path.iterdir() if p.name.endswith(".corrupt")}
    assert moved == {f"{newest.name}.corrupt", "ack.corrupt", "lock.corrupt"}
    reopened = open_spool(tmp_path)
    assert payloads(reopened)[-1] == b"next"
    reopened.close()


# -------------------------------------------------------------- durability


def test_appends_reach_the_disk_when_the_policy_says(tmp_path: Path, monkeypatch) -> None:
    """``fsync_every=3``: the third append is on disk (data, and the directory
    entry of its new segment) when it returns; ``sync`` and ``close`` flush
    what is pending."""
    spool = open_spool(tmp_path, fsync_every=3, fsync_interval=3600)
    log = SyncLog(monkeypatch)
    spool.append(b"one")
    spool.append(b"two")
    segment = segments(tmp_path)[0]
    assert str(segment) not in log.synced()
    spool.append(b"three")
    assert log.synced().count(str(segment)) == 1 and str(tmp_path) in log.synced()
    log.clear()
    spool.append(b"four")
    assert log.synced() == []
    spool.sync()
    assert log.synced() == [str(segment)]
    log.clear()
    spool.append(b"five")
    spool.close()
    assert log.synced() == [str(segment)]


def test_interval_zero_syncs_every_append(tmp_path: Path, monkeypatch) -> None:
    spool = open_spool(tmp_path, fsync_interval=0)
    log = SyncLog(monkeypatch)
    for n, r in enumerate(records(4), start=1):
        spool.append(r)
        assert log.synced().count(str(segments(tmp_path)[0])) == n
    spool.close()


def test_repairs_reach_the_disk(tmp_path: Path, monkeypatch) -> None:
    """A repaired segment is synced before it replaces the damaged one; a torn
    tail's truncation is synced too (else it is found, and counted, again)."""
    spool = open_spool(tmp_path)
    for r in records(6):
        spool.append(r)
    spool.close()
    segment = segments(tmp_path)[0]
    raw = bytearray(segment.read_bytes())
    raw[HEADER_SIZE + 3] ^= 0xFF  # the first record's payload
    segment.write_bytes(bytes(raw) + raw[: HEADER_SIZE + 5])  # and a torn tail
    log = SyncLog(monkeypatch)
    open_spool(tmp_path).close()
    rewritten = segment.with_suffix(".tmp")
    assert log.index("sync", rewritten) < log.index("rename", segment) < log.index("sync", tmp_path)

    with segment.open("ab") as f:
        f.write(b"EvS1 torn")
    log.clear()
    open_spool(tmp_path).close()
    assert str(segment) in log.synced()
