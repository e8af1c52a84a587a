"""The spool's most dangerous state, reached on purpose: it overflowed, and
eventd restarts before anything was acknowledged.

A drop that is not persisted brings evicted records back after the restart
(and the spool then holds more than ``max_bytes``); a ``block`` that stored
part of a refused record would resurface it.  Random operation sequences
rarely end exactly there, so these tests build the state directly: fill past
the bound with records of random sizes, reopen, compare with a model, then
acknowledge part, reopen again and compare again.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventd.metrics import Metrics
from eventd.sinks.spool import HEADER_SIZE, Spool, SpoolFull

NAME = "kafka"
MAX_BYTES = 400


def framed(record: bytes) -> int:
    return HEADER_SIZE + len(record)


def dropped(metrics: Metrics) -> float:
    sample = metrics.registry.get_sample_value(
        "eventd_sink_dropped_total", {"sink": NAME, "reason": "spool_full"}
    )
    return sample or 0.0


def check(spool: Spool, model: list[bytes]) -> None:
    assert [record for _, record in spool.peek(1 << 30)] == model
    assert spool.depth == len(model)
    assert spool.size_bytes == sum(map(framed, model)) <= MAX_BYTES


def append_all(
    spool: Spool, records: list[bytes], policy: str, held: tuple[bytes, ...] = ()
) -> tuple[list[bytes], int]:
    """Append ``records`` to a spool holding ``held``; what it must hold
    afterwards, and how many records were dropped."""
    model = list(held)
    drops = 0
    for record in records:
        fits = framed(record) <= MAX_BYTES
        room = sum(map(framed, model)) + framed(record) <= MAX_BYTES
        if policy == "block" and fits and not room:
            try:
                spool.append(record)
            except SpoolFull as full:
                assert full.reason == "spool_full"
            else:
                raise AssertionError("a record that does not fit was stored under the block policy")
            continue
        stored = spool.append(record)
        if not fits or (not room and policy == "drop_newest"):
            assert stored is False
            drops += 1
            continue
        assert stored is True
        while sum(map(framed, model)) + framed(record) > MAX_BYTES:
            model.pop(0)
            drops += 1
        model.append(record)
    return model, drops


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(0, 120), min_size=1, max_size=30),
    policy=st.sampled_from(["drop_oldest", "drop_newest", "block"]),
    segment_bytes=st.sampled_from([40, 100, 150, 1000]),
    acked=st.integers(0, 6),
    oversized=st.booleans(),
)
def test_overflow_then_reopen_before_any_ack(
    sizes: list[int], policy: str, segment_bytes: int, acked: int, oversized: bool
) -> None:
    records = [bytes([65 + i % 26]) * size for i, size in enumerate(sizes)]
    records += [b"z" * (MAX_BYTES * 2)] if oversized else []  # never fits, under any policy
    options = {"max_bytes": MAX_BYTES, "full_policy": policy, "segment_bytes": segment_bytes}
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Metrics()
        spool = Spool(Path(tmp), metrics=metrics, name=NAME, **options)
        try:
            model, drops = append_all(spool, records, policy)
            check(spool, model)
            assert dropped(metrics) == drops
        finally:
            spool.close()

        spool = Spool(Path(tmp), metrics=Metrics(), name=NAME, **options)  # no ack happened
        try:
            check(spool, model)
            head = spool.peek(acked)
            if head:
                spool.ack_through(head[-1][0])
                del model[: len(head)]
            check(spool, model)
        finally:
            spool.close()

        spool = Spool(Path(tmp), metrics=Metrics(), name=NAME, **options)
        try:
            check(spool, model)
            model, _ = append_all(spool, [b"after"] * 3, policy, tuple(model))  # and it goes on working
            check(spool, model)
        finally:
            spool.close()


# ------------------------------------------------- a full disk, in process


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes of a file fail with EFBIG (as ENOSPC would),
    in this process (tests/test_spool.py does it in a child; mutation testing
    needs the spool's failure paths run in process).  SIGXFSZ is ignored
    meanwhile so the process is not killed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest", "block"])
def test_a_full_disk_drops_or_blocks_leaves_no_half_record_and_recovers(tmp_path: Path, policy: str) -> None:
    metrics = Metrics()
    spool = Spool(tmp_path, 1 << 20, policy, metrics, NAME)  # type: ignore[arg-type]
    try:
        assert [spool.append(b"a" * 300) for _ in range(3)] == [True] * 3
        used = max(p.stat().st_size for p in tmp_path.glob("*.seg"))
        outcomes = []
        with file_size_limit(used + 400):  # room for one more record and a bit
            for _ in range(3):
                try:
                    outcomes.append(spool.append(b"b" * 300))
                except SpoolFull as full:
                    outcomes.append(full.reason)
        refused = "disk_full" if policy == "block" else False
        assert outcomes == [True, refused, refused]
        reason = {"reason": "disk_full", "sink": NAME}
        dropped_full = metrics.registry.get_sample_value("eventd_sink_dropped_total", reason) or 0
        assert dropped_full == (0 if policy == "block" else 2)
        assert spool.depth == 4 and spool.size_bytes == 4 * framed(b"a" * 300)
    finally:
        spool.close()
    # Reopened right after the failed writes: no half record was left behind.
    spool = Spool(tmp_path, 1 << 20, policy, Metrics(), NAME)  # type: ignore[arg-type]
    try:
        assert spool.corrupt_regions == 0
        assert [r for _, r in spool.peek(10)] == [b"a" * 300] * 3 + [b"b" * 300]
        assert spool.append(b"c" * 300) is True  # the disk has room again: accepted again
        assert [r for _, r in spool.peek(10)] == [b"a" * 300] * 3 + [b"b" * 300, b"c" * 300]
    finally:
        spool.close()


def test_a_disk_that_stays_full_after_everything_was_acknowledged_frees_the_segment(tmp_path: Path) -> None:
    """Writes fail while every record is acknowledged: the active segment is
    sealed and released, so its space comes back without a restart."""
    spool = Spool(tmp_path, 1 << 20, "drop_newest", Metrics(), NAME)
    try:
        for _ in range(3):
            spool.append(b"a" * 300)
        used = max(p.stat().st_size for p in tmp_path.glob("*.seg"))
        with file_size_limit(used + 100):
            assert spool.append(b"b" * 300) is False
            spool.ack_through(spool.peek(10)[-1][0])
            assert spool.append(b"b" * 300) is True  # a fresh segment, the old one gone
        assert [r for _, r in spool.peek(10)] == [b"b" * 300]
        assert len(list(tmp_path.glob("*.seg"))) == 1
    finally:
        spool.close()
