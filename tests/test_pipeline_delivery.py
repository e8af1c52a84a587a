"""The pipeline: what a batch's ``done`` means, the queue's byte bound, and the
order in which a source's batches complete.

The rule set is the fault suite's one rule (pod creates in ``fault-alert``
alert); the sinks are small recording sinks with gates, so a test decides
when a durable sink accepts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
from aiokafka import TopicPartition

from eventd.alerts import Alert
from eventd.engine.loader import load_rules_text
from eventd.engine.matcher import Matcher
from eventd.events.model import K8S_AUDIT, Event
from eventd.kafka_client import ConsumedOffsets
from eventd.metrics import Metrics
from eventd.pipeline import Pipeline
from eventd.sinks.base import Receipt, Sink
from eventd.sources.base import Batch
from tests.faults.accounting import ALERT_NS, QUIET_NS, RULES, audit_doc
from tests.support.waiting import wait_until


class Gated(Sink):
    """Takes alerts while ``open``; durable or not; may offer transactions."""

    def __init__(self, name: str, *, durable: bool, transactional: bool = False) -> None:
        self.name = name
        self.durable = durable  # type: ignore[misc]
        self.transactional = transactional  # type: ignore[misc]
        self.open = asyncio.Event()
        self.open.set()
        self.taken: list[Alert] = []
        self.transactions: list[tuple[int, ConsumedOffsets]] = []
        self.fail = False

    async def send(self, alert: Alert) -> None:
        await self.send_many([alert])

    async def send_many(self, alerts: Sequence[Alert]) -> Receipt:
        await self.open.wait()
        if self.fail:
            raise OSError("the durable sink failed")
        self.taken.extend(alerts)
        return None

    async def send_transaction(self, alerts: Sequence[Alert], consumed: ConsumedOffsets) -> None:
        await self.open.wait()
        self.transactions.append((len(alerts), consumed))


def matcher() -> Matcher:
    return Matcher(load_rules_text([("fault_rules.yaml", RULES)]), rule_matching="first")


def events(tag: str, alerting: int, quiet: int = 0) -> list[Event]:
    docs = [audit_doc(f"{tag}-a{i}", ALERT_NS) for i in range(alerting)]
    docs += [audit_doc(f"{tag}-q{i}", QUIET_NS) for i in range(quiet)]
    return [Event(K8S_AUDIT, doc) for doc in docs]


@asynccontextmanager
async def running(pipeline: Pipeline) -> AsyncIterator[Pipeline]:
    task = asyncio.create_task(pipeline.run())
    try:
        yield pipeline
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def batch(tag: str, alerting: int, quiet: int = 0, *, source: str = "src", size: int = 0) -> Batch:
    return Batch(events(tag, alerting, quiet), source, asyncio.get_running_loop().create_future(), size=size)


@pytest.mark.asyncio
async def test_done_waits_for_every_durable_sink_and_no_best_effort_one() -> None:
    durable, best_effort = Gated("kafka", durable=True), Gated("slack", durable=False)
    durable.open.clear()
    best_effort.open.clear()  # a dead receiver
    async with running(Pipeline(matcher(), [durable, best_effort], Metrics())) as pipeline:
        first = batch("one", alerting=2)
        await pipeline.put(first)
        await asyncio.sleep(0.05)
        assert first.done is not None and not first.done.done(), "done before the durable sink accepted"
        durable.open.set()
        await asyncio.wait_for(first.done, 5)  # the best-effort sink is still stuck
        assert len(durable.taken) == 2 and not best_effort.taken


@pytest.mark.asyncio
async def test_a_batch_without_alerts_completes_only_after_the_earlier_ones() -> None:
    durable = Gated("file", durable=True)
    durable.open.clear()
    async with running(Pipeline(matcher(), [durable], Metrics())) as pipeline:
        alerting, quiet = batch("a", alerting=1), batch("q", alerting=0, quiet=3)
        other_source = batch("o", alerting=0, quiet=1, source="other")
        for b in (alerting, quiet, other_source):
            await pipeline.put(b)
        assert other_source.done is not None
        await asyncio.wait_for(other_source.done, 5)  # another source: not held up
        await asyncio.sleep(0.05)
        assert quiet.done is not None and not quiet.done.done(), "completed before an earlier batch"
        durable.open.set()
        assert alerting.done is not None
        await asyncio.wait_for(asyncio.gather(alerting.done, quiet.done), 5)


@pytest.mark.asyncio
async def test_a_failing_durable_sink_fails_the_batch() -> None:
    durable = Gated("file", durable=True)
    durable.fail = True
    async with running(Pipeline(matcher(), [durable], Metrics())) as pipeline:
        failing = batch("f", alerting=1)
        await pipeline.put(failing)
        assert failing.done is not None
        with pytest.raises(OSError, match="durable sink failed"):
            await asyncio.wait_for(failing.done, 5)


@pytest.mark.asyncio
async def test_the_queue_is_bounded_in_bytes() -> None:
    durable = Gated("kafka", durable=True)
    durable.open.clear()
    pipeline = Pipeline(matcher(), [durable], Metrics(), queue_size=100, queue_max_bytes=1000)
    # Nothing consumes: batches stay queued.
    await pipeline.put(batch("a", 0, 1, size=600))
    assert not pipeline.offer(batch("b", 0, 1, size=600)), "offer past the byte bound"
    assert pipeline.offer(batch("c", 0, 1, size=400))
    blocked = asyncio.create_task(pipeline.put(batch("d", 0, 1, size=10)))
    await asyncio.sleep(0.05)
    assert not blocked.done(), "put past the byte bound must wait"
    async with running(pipeline):
        await asyncio.wait_for(blocked, 5)
        await wait_until(lambda: pipeline.queued == 0, what="the queue drained")
    # One batch larger than the whole bound still goes in when nothing is queued.
    empty = Pipeline(matcher(), [Gated("kafka", durable=True)], Metrics(), queue_max_bytes=1000)
    assert empty.offer(batch("e", 0, 1, size=5000))


@pytest.mark.asyncio
async def test_exactly_once_batches_reach_the_transactional_sink_even_without_alerts() -> None:
    kafka = Gated("kafka", durable=True, transactional=True)
    async with running(Pipeline(matcher(), [kafka], Metrics())) as pipeline:
        consumed = ConsumedOffsets("g", {TopicPartition("audit", 0): 7}, 1, lambda: True)
        quiet = Batch(
            events("q", 0, 2), "kafka", asyncio.get_running_loop().create_future(), consumed=consumed
        )
        await pipeline.put(quiet)
        assert quiet.done is not None
        await asyncio.wait_for(quiet.done, 5)
        assert kafka.transactions == [(0, consumed)], (
            "the offsets of a batch without alerts must be committed"
        )
