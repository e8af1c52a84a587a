"""Damaged on-disk state: a spool and a tailer checkpoint broken while eventd was down.

An outage (a full disk, a bad block, a power loss, an operator's ``rm`` or
``mkdir`` in the wrong place) or an attacker can leave the Kafka sink's spool
directory and the audit-log tailer's checkpoint in any state.  Whatever it
is, eventd must start, and it must never lose data without saying so:

* spool: every record not yet acknowledged either comes back intact, exactly
  once per start, or is counted in ``eventd_sink_dropped_total{reason=
  "spool_corrupt"}``.  Exactly, where the spool can know (a later record or
  segment survives); at least once where it cannot (damage after the newest
  record).  Only damage that leaves no trace at all (a removed newest
  segment, a truncation exactly on a record boundary) can go uncounted: it
  is indistinguishable from a crash before those records were written.
* checkpoint: an unusable one (garbage, empty, flipped bytes, a directory)
  makes the tailer re-read the live file from its start, counted in
  ``eventd_checkpoint_unusable_total``: what was written while eventd was
  down is delivered (at least once), never skipped.

The real ``Spool`` and ``AuditLogSource`` run on real files; hypothesis
chooses the damage.
"""

from __future__ import annotations

import asyncio
import os
import struct
import tempfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventd.config import AuditLogConfig
from eventd.events.errors import DecodeError
from eventd.metrics import Metrics
from eventd.sinks.spool import ACK_FILE, HEADER_SIZE, LOCK_FILE, SEGMENT_SUFFIX, Spool
from eventd.sources.audit_log import AuditLogSource
from eventd.sources.base import Batch
from eventd.sources.checkpoint import load_checkpoint
from tests.support.builders import audit_event

SINK = "kafka"
pytestmark = pytest.mark.timeout(300)


# ===================================================================== spool


def corrupt_count(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "eventd_sink_dropped_total", {"sink": SINK, "reason": "spool_corrupt"}
    )
    return value or 0.0


def open_spool(directory: Path, metrics: Metrics, segment_bytes: int = 256) -> Spool:
    return Spool(
        directory, 1 << 20, "drop_oldest", metrics, SINK, segment_bytes=segment_bytes, fsync_interval=3600
    )


def payload(i: int) -> bytes:
    """Record ``i``; lengths vary so record boundaries are irregular."""
    return f"alert-{i:04d}-".encode() + b"x" * (i * 7 % 23)


def index_of(record: bytes) -> int:
    return int(record[6:10])


@dataclass(frozen=True)
class Written:
    """The spool as it was left, before the damage: what the test knows."""

    count: int  # records appended, positions 0..count-1
    acked: int  # records 0..acked-1 acknowledged
    #: segment file name -> first position in it
    segments: dict[str, int]

    def segment_of(self, i: int) -> str:
        return max((b, name) for name, b in self.segments.items() if b <= i)[1]

    def boundaries(self, name: str) -> set[int]:
        """Byte offsets in segment ``name`` where a record starts or ends."""
        base = self.segments[name]
        later = [b for b in self.segments.values() if b > base]
        end = min(later, default=self.count)
        offsets, pos = {0}, 0
        for i in range(base, end):
            pos += HEADER_SIZE + len(payload(i))
            offsets.add(pos)
        return offsets


def write_spool(directory: Path, count: int, acked: int) -> Written:
    spool = open_spool(directory, Metrics())
    for i in range(count):
        assert spool.append(payload(i))
    positions = [p for p, _ in spool.peek(count)]
    assert positions == list(range(count))  # a fresh spool numbers records from 0
    if acked:
        spool.ack_through(acked - 1)
    spool.close()
    segments = {p.name: int(p.stem) for p in directory.glob(f"*{SEGMENT_SUFFIX}")}
    return Written(count, acked, segments)


@dataclass(frozen=True)
class Damage:
    kind: str  # truncate, flip, directory, remove, garbage
    target: int  # index into the files present (segments oldest first, then ack, lock)
    where: float  # position, as a fraction of the file's size
    mask: bytes  # flip: XOR masks, none zero


damages = st.builds(
    Damage,
    kind=st.sampled_from(["truncate", "flip", "directory", "remove", "garbage"]),
    target=st.integers(0, 50),
    where=st.floats(0.0, 1.0),
    mask=st.binary(min_size=1, max_size=8).map(lambda b: bytes(x or 1 for x in b)),
)
#: A file eventd did not write: its name, and its content (None: a directory).
Stray = tuple[str, bytes | None]
strays = st.lists(
    st.sampled_from(
        [
            ("junk", b"not a spool file"),
            ("notanumber.seg", b"EvS1 nonsense"),
            ("-5.seg", b""),
            ("ack.tmp", None),  # a directory where a temporary file goes
            ("00000000000000000003.tmp", b"half a repair"),
            ("99999999999999999999.seg", b"garbage with a segment's name"),
        ]
    ),
    max_size=3,
    unique=True,
)


@dataclass
class Applied:
    """What the damage left, as recovery can see it."""

    #: Segments whose final state shows damage (a directory, bytes that are
    #: not what was written); the others were removed, kept, or cut exactly
    #: on a record boundary, which no reader can tell from fewer appends.
    traced: set[str]
    ack_damaged: bool
    #: A file with a segment's name that eventd never wrote.
    stray_segment: bool = False


def apply(directory: Path, written: Written, damage_list: list[Damage]) -> Applied:
    original = {path.name: path.read_bytes() for path in directory.iterdir() if path.is_file()}
    files = [*sorted(written.segments, key=written.segments.__getitem__), ACK_FILE, LOCK_FILE]
    for damage in damage_list:
        path = directory / files[damage.target % len(files)]
        if path.is_file():  # not already removed or replaced
            _damage(path, damage)
    traced = {name for name in written.segments if _traced(directory / name, original[name], written)}
    ack = directory / ACK_FILE
    ack_damaged = ACK_FILE in original and (not ack.is_file() or ack.read_bytes() != original[ACK_FILE])
    return Applied(traced, ack_damaged)


def _traced(path: Path, original: bytes, written: Written) -> bool:
    if path.is_dir():
        return True
    if not path.exists():
        return False
    data = path.read_bytes()
    return not (original.startswith(data) and len(data) in written.boundaries(path.name))


def _damage(path: Path, damage: Damage) -> None:
    data = path.read_bytes()
    at = int(damage.where * len(data))
    if damage.kind == "truncate":
        path.write_bytes(data[:at])
    elif damage.kind == "flip" and data:
        raw = bytearray(data)
        for n, m in enumerate(damage.mask):
            raw[(at + n) % len(raw)] ^= m
        path.write_bytes(bytes(raw))
    elif damage.kind == "directory":
        path.unlink()
        path.mkdir()
        (path / "inside").write_bytes(b"x")
    elif damage.kind == "garbage":
        path.write_bytes(os.urandom(max(len(data), 1)))
    elif damage.kind == "remove":
        path.unlink()


def recovered(directory: Path) -> tuple[list[int], float, Spool]:
    metrics = Metrics()
    spool = open_spool(directory, metrics)  # must not raise, whatever the damage
    records = [r for _, r in spool.peek(1 << 20)]
    indexes = [index_of(r) for r in records]
    for i, r in zip(indexes, records, strict=True):
        assert r == payload(i), f"record {i} came back altered"
    return indexes, corrupt_count(metrics), spool


def assert_accounted(written: Written, applied: Applied, indexes: list[int], counted: float) -> None:
    assert indexes == sorted(set(indexes)), "a record came back twice or out of order"
    assert set(indexes) <= set(range(written.count))
    lost = set(range(written.acked, written.count)) - set(indexes)
    frontier = max(indexes, default=-1) + 1
    # Lost before a surviving record: the spool can know exactly, unless the
    # acknowledged position is gone too and the record's segment vanished
    # without a trace (then nothing says whether it had been acknowledged).
    exact = {
        i
        for i in lost
        if i < frontier and (not applied.ack_damaged or written.segment_of(i) in applied.traced)
    }
    assert counted >= len(exact), f"lost {sorted(exact)} but counted {counted}"
    # Lost after the newest surviving record: at least one count, if the
    # damage to its segment left any trace.
    tail = {i for i in lost if i >= frontier and written.segment_of(i) in applied.traced}
    if tail:
        assert counted >= 1, f"lost {sorted(tail)} silently"
    if not lost and not applied.traced and not applied.ack_damaged and not applied.stray_segment:
        assert counted == 0


def check_damaged_spool(count: int, acked: int, damage_list: list[Damage], stray: list[Stray]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        written = write_spool(directory, count, acked)
        applied = apply(directory, written, damage_list)
        for name, content in stray:
            if content is None:
                (directory / name).mkdir(exist_ok=True)
            else:
                (directory / name).write_bytes(content)
            applied.stray_segment |= name[0].isdigit() and name.endswith(SEGMENT_SUFFIX)

        indexes, counted, spool = recovered(directory)
        assert_accounted(written, applied, indexes, counted)
        # The spool stays usable, and the damage is neither reported nor
        # redelivered twice: a second start finds what the first left.
        assert spool.append(payload(9999))
        spool.close()
        again, counted_again, spool = recovered(directory)
        spool.close()
        assert again == [*indexes, 9999] and counted_again == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    count=st.integers(1, 40),
    acked_fraction=st.floats(0.0, 1.0),
    damage_list=st.lists(damages, min_size=1, max_size=3),
    stray=strays,
)
def test_damaged_spool_starts_and_accounts_for_every_record(
    count: int, acked_fraction: float, damage_list: list[Damage], stray: list[Stray]
) -> None:
    check_damaged_spool(count, int(acked_fraction * count), damage_list, stray)


def test_ack_past_the_end_redelivers_and_counts(tmp_path: Path) -> None:
    """An ack file with a valid CRC but a position past every record (the
    newest segments gone, or a wrong file restored) used to make recovery
    delete every segment as acknowledged, silently."""
    write_spool(tmp_path, 12, 4)
    position = struct.pack(">Q", 1000)
    (tmp_path / ACK_FILE).write_bytes(position + struct.pack(">I", zlib.crc32(position)))
    indexes, counted, spool = recovered(tmp_path)
    spool.close()
    assert indexes == list(range(12))  # everything on disk, acknowledged or not
    assert counted == 1


def test_segment_replaced_by_a_directory_is_counted_not_a_traceback(tmp_path: Path) -> None:
    written = write_spool(tmp_path, 30, 0)
    ordered = sorted(written.segments, key=written.segments.__getitem__)
    assert len(ordered) >= 3
    middle = ordered[1]
    first_lost, next_base = written.segments[middle], written.segments[ordered[2]]
    (tmp_path / middle).unlink()
    (tmp_path / middle).mkdir()
    indexes, counted, spool = recovered(tmp_path)
    spool.close()
    assert indexes == [i for i in range(30) if not first_lost <= i < next_base]
    assert counted == next_base - first_lost  # every record of the segment, exactly
    assert (tmp_path / f"{middle}.corrupt").is_dir()  # kept for a human, out of the way


@pytest.mark.parametrize("name", [ACK_FILE, LOCK_FILE, "ack.tmp"])
def test_state_files_replaced_by_directories_do_not_stop_the_spool(tmp_path: Path, name: str) -> None:
    write_spool(tmp_path, 10, 3)
    path = tmp_path / name
    if path.exists():
        path.unlink()
    path.mkdir()
    (path / "inside").write_bytes(b"x")
    indexes, counted, spool = recovered(tmp_path)
    # Nothing lost: a lost ack position only means redelivery.
    assert set(range(3, 10)) <= set(indexes)
    spool.ack_through(spool.peek(100)[-1][0])  # the ack file can be written again
    spool.close()
    indexes, counted, spool = recovered(tmp_path)
    spool.close()
    assert indexes == [] and counted == 0


def test_zero_length_files_are_counted_not_a_traceback(tmp_path: Path) -> None:
    """Files that are empty after a machine crash (data never reached the
    disk): the ack file and a segment in the middle.  Its records are counted
    exactly (the next segment's name says where they ended); everything else
    is redelivered, acknowledged or not."""
    written = write_spool(tmp_path, 30, 3)
    ordered = sorted(written.segments, key=written.segments.__getitem__)
    first_lost, next_base = written.segments[ordered[1]], written.segments[ordered[2]]
    for name in [ACK_FILE, LOCK_FILE, ordered[1]]:
        (tmp_path / name).write_bytes(b"")
    indexes, counted, spool = recovered(tmp_path)
    spool.close()
    assert indexes == [i for i in range(30) if not first_lost <= i < next_base]
    assert counted == (next_base - first_lost) + 1  # and the ack file


# ================================================================ checkpoint


class Inlet:
    """Accepts every batch at once, as a pipeline whose sinks all succeed."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    async def put(self, batch: Batch) -> None:
        self.ids.extend(e.doc["auditID"] for e in batch.events)
        if batch.done is not None:
            batch.done.set_result(None)

    def offer(self, batch: Batch) -> bool:
        raise AssertionError("the tailer waits for room")

    def rejected(self, source: str, error: DecodeError | str, count: int = 1) -> None:
        raise AssertionError(f"unexpected reject {error}")


def lines(prefix: str, count: int) -> bytes:
    return b"".join(orjson.dumps(audit_event(auditID=f"{prefix}-{n:03d}")) + b"\n" for n in range(count))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"source": "audit_log", **labels}) or 0.0


async def tail_until(directory: Path, metrics: Metrics, expect: Iterable[str]) -> list[str]:
    """Run a tailer with a checkpoint until it delivered ``expect``, then stop it."""
    config = AuditLogConfig(
        path=directory / "audit.log", checkpoint=directory / "cp.json", poll_interval_seconds=0.005
    )
    source, inlet = AuditLogSource(config, metrics, drain_timeout=2.0), Inlet()
    task = asyncio.create_task(source.run(inlet))
    try:
        async with asyncio.timeout(20):
            while not (set(expect) <= set(inlet.ids) and source.committed is not None):
                if task.done():
                    task.result()
                    raise AssertionError("the tailer stopped")
                await asyncio.sleep(0.002)
    finally:
        await source.stop()
        await task
    return inlet.ids


def damage_checkpoint(path: Path, kind: str, where: float, mask: bytes) -> None:
    data = path.read_bytes()
    at = int(where * len(data))
    if kind == "truncate":
        path.write_bytes(data[:at])
    elif kind == "flip":
        raw = bytearray(data)
        for n, m in enumerate(mask):
            raw[(at + n) % len(raw)] ^= m
        path.write_bytes(bytes(raw))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif kind == "directory":
        path.unlink()
        path.mkdir()
        (path / "inside").write_bytes(b"{}")
    elif kind == "offset":
        obj = orjson.loads(data)
        obj["offset"] += len(lines("down", 1))
        path.write_bytes(orjson.dumps(obj))


DOWN = [f"down-{n:03d}" for n in range(5)]
EVERYTHING = [f"before-{n:03d}" for n in range(10)] + DOWN


def run_damaged_restart(kind: str, where: float = 0.5, mask: bytes = b"\x01") -> dict[str, Any]:
    """A tailer reads 10 events and stops; 5 more are written while it is
    down; its checkpoint is damaged; a new tailer starts."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        live = directory / "audit.log"
        live.write_bytes(b"")
        first_metrics, metrics = Metrics(), Metrics()

        async def scenario() -> tuple[list[str], list[str]]:
            await tail_until(directory, first_metrics, [])  # a first start: checkpoint at 0
            with live.open("ab") as f:
                f.write(lines("before", 10))
            first = await tail_until(directory, first_metrics, [f"before-{n:03d}" for n in range(10)])
            with live.open("ab") as f:
                f.write(lines("down", 5))
            damage_checkpoint(directory / "cp.json", kind, where, mask)
            second = await tail_until(directory, metrics, DOWN)
            return first, second

        first, second = asyncio.run(scenario())
        assert first == [f"before-{n:03d}" for n in range(10)]
        return {
            "second": second,
            "unusable": sum(
                sample(metrics, "eventd_checkpoint_unusable_total", reason=reason)
                for reason in ("invalid", "unreadable")
            ),
            "possible_loss": sum(
                sample(metrics, "eventd_source_possible_loss_total", reason=r)
                for r in ("truncated", "file_missing")
            ),
            "checkpoint_after": load_checkpoint(directory / "cp.json"),
            "size": live.stat().st_size,
        }


@pytest.mark.parametrize("kind", ["garbage", "empty", "directory", "truncate"])
def test_unusable_checkpoint_rereads_the_live_file_from_the_start(kind: str) -> None:
    """Before: the tailer started at the END, so the 5 events written while
    it was down were skipped and nothing counted the loss."""
    out = run_damaged_restart(kind)
    assert out["second"] == EVERYTHING  # from the start, each once
    assert out["unusable"] == 1
    assert out["checkpoint_after"] is not None and out["checkpoint_after"].offset == out["size"]


def test_a_moved_offset_is_caught() -> None:
    """A checkpoint still valid JSON after damage, its offset moved by one
    line (one flipped digit can do that): before the CRC it was taken as is,
    and the first event written while eventd was down was skipped silently."""
    out = run_damaged_restart("offset")
    assert out["second"] == EVERYTHING and out["unusable"] == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["truncate", "flip", "empty", "garbage", "directory"]),
    where=st.floats(0.0, 1.0),
    mask=st.binary(min_size=1, max_size=4).map(lambda b: bytes(x or 1 for x in b)),
)
def test_damaged_checkpoint_never_skips_data(kind: str, where: float, mask: bytes) -> None:
    out = run_damaged_restart(kind, where, mask)
    second = out["second"]
    assert set(DOWN) <= set(second), "events written while eventd was down were skipped"
    assert len(second) == len(set(second)) and set(second) <= set(EVERYTHING)
    if second != DOWN:  # re-read from somewhere else than the checkpoint: said so
        assert out["unusable"] + out["possible_loss"] >= 1
