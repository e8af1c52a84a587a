"""Kafka sink batches where the first records succeed and a later one fails.

Only the done prefix of a batch may be acknowledged in the spool: acknowledging
the whole batch after a partial failure loses the failed record and every one
after it (the broker never had them).  ``done_prefix`` computes the prefix from
the per-record outcomes; the broker test then checks the sink acknowledges
exactly that, against a real broker (tansu), with a record that cannot be
produced in the middle of a batch.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError
from hypothesis import given
from hypothesis import strategies as st

from eventd.metrics import Metrics
from eventd.sinks.kafka import SKIPPED, KafkaSink, done_prefix
from eventd.sinks.spool import Spool
from tests.support.kafka_broker import KafkaBroker
from tests.support.waiting import wait_until
from tests.test_sink_kafka import config, make_alert, read_messages, sample

OUTCOMES = st.one_of(
    st.builds(lambda n: ("ack", n), st.integers(0, 10**6)),
    st.just(SKIPPED),
    st.builds(lambda n: RuntimeError(f"failed {n}"), st.integers(0, 9)),
)


@given(st.lists(OUTCOMES, max_size=30))
def test_done_prefix_stops_at_the_first_failure(results: list[object]) -> None:
    done, delivered, failed = done_prefix(results)
    errors = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert done == (errors[0] if errors else len(results))
    assert failed is (results[errors[0]] if errors else None)
    assert delivered == sum(1 for r in results[:done] if r is not SKIPPED)


def test_done_prefix_examples() -> None:
    boom, later = RuntimeError("boom"), RuntimeError("later")
    assert done_prefix([]) == (0, 0, None)
    assert done_prefix(["a", SKIPPED, "b"]) == (3, 2, None)
    assert done_prefix(["a", SKIPPED, boom, "c", later]) == (2, 1, boom)
    assert done_prefix([boom, "b"]) == (0, 0, boom)


class FailingAfter(KafkaSink):
    """The real sink, whose batches fail at spool position ``stop_at``: the
    records before it are produced to the broker for real, the rest report
    an error, as when a broker connection breaks mid-batch (tansu creates
    missing topics and has no per-topic size limit, so nothing in a batch
    fails on its own)."""

    stop_at: int | None = 3

    async def _deliver(self, records: list[tuple[int, bytes]]) -> tuple[int, int, BaseException | None]:
        before = [r for r in records if self.stop_at is None or r[0] < self.stop_at]
        if len(before) == len(records):
            return await super()._deliver(records)
        done, delivered, error = await super()._deliver(before) if before else (0, 0, None)
        return done, delivered, error or KafkaConnectionError("connection lost mid-batch")


@pytest.mark.asyncio
async def test_a_failure_mid_batch_acknowledges_only_the_records_before_it(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """Spool: ok, too large (dropped: done), ok, ok, ok; the batch fails at its
    fourth record.  The sink acknowledges through the dropped record and no
    further, and keeps the rest (across a restart); once the broker takes
    them, every alert is in the topic exactly once."""
    cfg = config(kafka_broker.bootstrap, tmp_path)
    kafka_broker.create_topic(cfg.topic)
    huge = make_alert(1)
    huge.output_fields["blob"] = "x" * (2 << 20)  # over aiokafka's max_request_size
    good = [make_alert(i) for i in (0, 2, 3, 4)]
    records = [good[0].to_json(), huge.to_json(), *(a.to_json() for a in good[1:])]
    spool = Spool(cfg.spool_dir, cfg.spool_max_bytes, "block", Metrics(), "kafka")
    for record in records:
        spool.append(record)
    spool.close()

    metrics = Metrics()
    sink = FailingAfter(cfg, metrics, backoff_initial=0.05, backoff_max=0.3, fsync_interval=0.2)
    await sink.start()
    try:
        await wait_until(lambda: sample(metrics, "eventd_sink_failures_total", reason="connection") >= 3)
        assert sample(metrics, "eventd_sink_deliveries_total") == 2
        assert sample(metrics, "eventd_sink_dropped_total", reason="too_large") == 1
        assert sink._started().head == 3  # through the records before the failure, no further
    finally:
        await asyncio.wait_for(sink.close(), 30)
    reopened = Spool(cfg.spool_dir, cfg.spool_max_bytes, "block", Metrics(), "kafka")
    try:
        assert [body for _, body in reopened.peek(10)] == records[3:]
    finally:
        reopened.close()

    metrics = Metrics()
    sink = FailingAfter(cfg, metrics, backoff_initial=0.05, backoff_max=0.3, fsync_interval=0.2)
    sink.stop_at = None
    await sink.start()
    try:
        await sink.flush()
        assert sample(metrics, "eventd_sink_deliveries_total") == 2
    finally:
        await asyncio.wait_for(sink.close(), 30)
    messages = read_messages(kafka_broker.bootstrap, cfg.topic, 4)
    assert [m.uuid for m in messages] == [a.uuid for a in good]  # each once, in order
