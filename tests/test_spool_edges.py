"""The spool at its edges: exactly full, acknowledgements past the end,
a directory in the way of a quarantined file (issue 17).

Mutation testing (``scripts/mutation.py``) showed that the spool's bounds
could be off by one (a record that exactly fills the spool refused, or one
byte too many accepted) and its acknowledgement clamp wrong without any test
failing; each of those loses or duplicates records.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from eventd.metrics import Metrics
from eventd.sinks.spool import HEADER_SIZE, Spool, SpoolFull


def spool(
    directory: Path, max_bytes: int, policy: str = "drop_newest", metrics: Metrics | None = None
) -> Spool:
    return Spool(directory, max_bytes, policy, metrics or Metrics(), "kafka")  # type: ignore[arg-type]


def dropped(metrics: Metrics, reason: str) -> float:
    return (
        metrics.registry.get_sample_value("eventd_sink_dropped_total", {"sink": "kafka", "reason": reason})
        or 0.0
    )


RECORD = b"x" * 20
FRAMED = HEADER_SIZE + len(RECORD)


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest", "block"])
def test_records_may_fill_the_spool_exactly(tmp_path: Path, policy: str) -> None:
    metrics = Metrics()
    s = spool(tmp_path, 3 * FRAMED, policy, metrics)
    try:
        assert all(s.append(RECORD) for _ in range(3))
        assert s.size_bytes == 3 * FRAMED and s.depth == 3
        assert dropped(metrics, "spool_full") == 0
    finally:
        s.close()


def test_one_byte_too_many_is_refused_or_evicts(tmp_path: Path) -> None:
    newest = spool(tmp_path / "n", 3 * FRAMED - 1)
    try:
        assert newest.append(RECORD) and newest.append(RECORD)
        assert newest.append(RECORD) is False
        assert newest.depth == 2
    finally:
        newest.close()
    oldest = spool(tmp_path / "o", 3 * FRAMED - 1, "drop_oldest")
    try:
        for n in range(3):
            assert oldest.append(b"%019d" % n + b"!")
        assert [r for _, r in oldest.peek(10)] == [b"%019d!" % 1, b"%019d!" % 2]
    finally:
        oldest.close()
    block = spool(tmp_path / "b", 3 * FRAMED - 1, "block")
    try:
        assert block.append(RECORD) and block.append(RECORD)
        with pytest.raises(SpoolFull):
            block.append(RECORD)
    finally:
        block.close()


def test_a_record_exactly_as_large_as_the_spool_fits_alone(tmp_path: Path) -> None:
    for policy in ("drop_newest", "drop_oldest", "block"):
        s = spool(tmp_path / policy, FRAMED, policy)
        try:
            assert s.append(RECORD)
            assert s.depth == 1
        finally:
            s.close()
    too_big = spool(tmp_path / "big", FRAMED - 1, "block")
    try:
        assert too_big.append(RECORD) is False  # could never fit: dropped, not blocked on
    finally:
        too_big.close()


def test_acknowledging_past_the_end_does_not_swallow_later_records(tmp_path: Path) -> None:
    s = spool(tmp_path, 1 << 20)
    try:
        for n in range(3):
            s.append(b"r%d" % n)
        s.ack_through(1000)
        assert s.depth == 0 and s.peek(10) == []
        s.append(b"later")
        s.append(b"later2")
        assert [r for _, r in s.peek(10)] == [b"later", b"later2"]
        first, _ = s.peek(1)[0]
        s.ack_through(first)
        assert [r for _, r in s.peek(10)] == [b"later2"]
    finally:
        s.close()
    reopened = spool(tmp_path, 1 << 20)
    try:
        assert [r for _, r in reopened.peek(10)] == [b"later2"]
    finally:
        reopened.close()


def test_block_never_evicts_to_make_room_for_a_record_that_fits_alone(tmp_path: Path) -> None:
    """Under ``block`` a record the size of the whole spool waits (SpoolFull)
    until the spool is empty; it must not push out what is stored."""
    s = spool(tmp_path, FRAMED, "block")
    try:
        assert s.append(b"a" * len(RECORD))
        with pytest.raises(SpoolFull):
            s.append(RECORD)
        assert [r for _, r in s.peek(10)] == [b"a" * len(RECORD)]
    finally:
        s.close()
