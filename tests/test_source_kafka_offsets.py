"""``OffsetTracker``: which Kafka offsets the source may commit (issue 17).

A commit past an unprocessed message loses it for good (the group resumes
after the commit), so the tracker is tested on its own, in process, with
batches finishing out of order, failing and being cancelled; the broker
tests in ``test_source_kafka.py`` cover it end to end but run too slowly for
mutation testing to try every planted bug against them.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson
import pytest
from aiokafka import TopicPartition

from eventd.config import KafkaSourceConfig
from eventd.events.model import Event
from eventd.metrics import Metrics
from eventd.sources.kafka import BatchAbandoned, KafkaSource, OffsetTracker
from tests.support.builders import audit_event
from tests.support.http_inlet import RecordingInlet

A0, A1, B0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)


@pytest.mark.asyncio
async def test_only_the_done_prefix_of_the_batches_is_processed() -> None:
    tracker = OffsetTracker()
    first = tracker.add({A0: 10})
    second = tracker.add({A0: 20, A1: 5})
    third = tracker.add({B0: 3})
    assert tracker.inflight() == [first, second, third]
    second.set_result(None)
    tracker.settle()
    assert tracker.processed == {}, "a later batch done first must wait for the earlier one"
    first.set_result(None)
    tracker.settle()
    assert tracker.processed == {A0: 20, A1: 5}
    assert tracker.inflight() == [third]
    third.set_result(None)
    tracker.settle()
    assert tracker.processed == {A0: 20, A1: 5, B0: 3}
    assert tracker.inflight() == []


@pytest.mark.asyncio
async def test_a_finished_batch_wakes_the_committer() -> None:
    tracker = OffsetTracker()
    done = tracker.add({A0: 1})
    assert not tracker.wakeup.is_set()
    done.set_result(None)
    await asyncio.wait_for(tracker.wakeup.wait(), 5)


@pytest.mark.asyncio
async def test_a_failed_batch_stops_the_line_and_keeps_stopping_it() -> None:
    tracker = OffsetTracker()
    ok, failed, after = tracker.add({A0: 10}), tracker.add({A0: 20}), tracker.add({A0: 30})
    ok.set_result(None)
    failed.set_exception(OSError("spool full"))
    after.set_result(None)
    with pytest.raises(BatchAbandoned, match=r"^a batch's alerts could not be made safe: spool full$"):
        tracker.settle()
    assert tracker.processed == {A0: 10}, "what was done before the failed batch is still processed"
    with pytest.raises(BatchAbandoned):
        tracker.settle()  # the failed batch is still at the head
    assert tracker.processed == {A0: 10}
    assert tracker.inflight() == [failed, after]


@pytest.mark.asyncio
async def test_a_cancelled_batch_stops_the_line() -> None:
    tracker = OffsetTracker()
    cancelled, after = tracker.add({A0: 10}), tracker.add({A0: 20})
    cancelled.cancel()
    after.set_result(None)
    with pytest.raises(BatchAbandoned, match=r"^a batch was cancelled before its events were processed$"):
        tracker.settle()
    assert tracker.processed == {}


@pytest.mark.asyncio
async def test_uncommitted_is_what_this_member_owns_and_has_not_committed() -> None:
    tracker = OffsetTracker()
    tracker.add({A0: 10, A1: 4, B0: 7}).set_result(None)
    tracker.settle()
    tracker.committed.update({A0: 10, A1: 2})
    assert tracker.uncommitted({A0, A1, B0}) == {A1: 4, B0: 7}
    assert tracker.uncommitted({A0, A1}) == {A1: 4}
    assert tracker.uncommitted(set()) == {}


@pytest.mark.asyncio
async def test_reset_forgets_batches_fetched_before_a_rebalance() -> None:
    tracker = OffsetTracker()
    tracker.add({A0: 10}).set_result(None)
    pending = tracker.add({A0: 20})
    tracker.settle()
    tracker.committed[A0] = 10
    tracker.reset()
    assert (tracker.processed, tracker.committed, tracker.inflight()) == ({}, {}, [])
    pending.set_result(None)
    tracker.settle()
    assert tracker.processed == {}, "a batch of the old assignment is never committed by this member"


@pytest.mark.asyncio
async def test_messages_are_decoded_or_counted_as_rejected() -> None:
    """Poison messages are counted by reason and skipped, never fatal."""
    source = KafkaSource(KafkaSourceConfig(bootstrap_servers=("127.0.0.1:1",), topics=("audit",)), Metrics())
    inlet = RecordingInlet(source.name)
    events: list[Event] = []
    source._decode(None, events, inlet)
    source._decode(b"", events, inlet)
    source._decode(b"{not json", events, inlet)
    good = audit_event()
    batch = {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [good, {"kind": "Event"}]}
    source._decode(orjson.dumps(batch), events, inlet)
    assert [e.doc["auditID"] for e in events] == [good["auditID"]]
    assert events[0].origin == "kafka"
    # A missing timestamp is the first thing the decoder finds wrong with {"kind": "Event"}.
    assert inlet.rejects == Counter(empty=2, json=1, timestamp=1)
