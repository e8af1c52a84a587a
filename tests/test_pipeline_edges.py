"""The pipeline's edges: full queues, the byte count, failed and cancelled
batches, several lanes, receipts and the per-alert counters (issue 17).

Each test here kills mutants of ``eventd/pipeline.py`` that the hook and
delivery tests let through (``scripts/mutation.py``): a wrong byte count
after a batch leaves the queue, a cancelled batch whose ``done`` is never
failed, a lane skipped because the one before it took nothing.  Same
recording sinks and rule as ``test_pipeline_delivery.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
import structlog.testing

from eventd import pipeline as pipeline_module
from eventd.alerts import Alert
from eventd.engine.loader import load_rules_text
from eventd.engine.matcher import Matcher
from eventd.events.falco_json import falco_alert_event
from eventd.metrics import Metrics
from eventd.pipeline import Pipeline
from eventd.sinks.base import Receipt
from eventd.sinks.lane import LaneClosed
from eventd.sources.base import Batch
from tests.support.builders import falco_alert
from tests.test_pipeline_delivery import Gated, batch, events, matcher, running


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class Choosy(Gated):
    """Takes nothing (its filter refuses every alert)."""

    def accepts(self, alert: Alert) -> bool:
        return False


class Exploding(Gated):
    """A best-effort sink whose filter raises: a bug while processing a batch."""

    def accepts(self, alert: Alert) -> bool:
        raise RuntimeError("filter bug")


class Receipted(Gated):
    """A durable sink that accepts at once and confirms delivery later."""

    def __init__(self, name: str) -> None:
        super().__init__(name, durable=True)
        self.receipts: list[asyncio.Future[None]] = []

    async def send_many(self, alerts: Sequence[Alert]) -> Receipt:
        self.taken.extend(alerts)
        receipt: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.receipts.append(receipt)
        return receipt


@pytest.mark.asyncio
async def test_the_default_queue_holds_256_batches() -> None:
    pipeline = Pipeline(matcher(), [], Metrics())
    assert all(pipeline.offer(Batch([], "s")) for _ in range(256))
    assert pipeline.offer(Batch([], "s")) is False  # full: the sender retries
    assert pipeline.queued == 256


@pytest.mark.asyncio
async def test_bytes_of_every_queued_batch_count_and_leave_with_it() -> None:
    pipeline = Pipeline(matcher(), [Gated("file", durable=True)], Metrics(), queue_max_bytes=100)
    await pipeline.put(batch("a", 0, 1, size=40))
    await pipeline.put(batch("b", 0, 1, size=40))
    assert not pipeline.offer(batch("c", 0, 1, size=40)), "80 + 40 bytes exceed the bound of 100"
    async with running(pipeline):
        last = batch("d", 0, 1, size=10)
        await pipeline.put(last)
        assert last.done is not None
        await asyncio.wait_for(last.done, 5)
        # Everything left the queue: nothing is counted, so a batch larger
        # than the whole bound goes in alone.
        assert pipeline.offer(batch("e", 0, 1, size=500))


@pytest.mark.asyncio
async def test_a_lane_that_takes_nothing_does_not_stop_the_others() -> None:
    choosy, file, stdout = Choosy("a", durable=True), Gated("b", durable=True), Gated("c", durable=False)
    async with running(Pipeline(matcher(), [choosy, file, stdout], Metrics())) as pipeline:
        first = batch("x", alerting=2)
        await pipeline.put(first)
        assert first.done is not None
        await asyncio.wait_for(first.done, 5)
        await pipeline.drain()
    assert (len(choosy.taken), len(file.taken), len(stdout.taken)) == (0, 2, 2)


@pytest.mark.asyncio
async def test_until_delivered_waits_for_the_receipt_and_a_plain_batch_does_not() -> None:
    sink = Receipted("kafka")
    async with running(Pipeline(matcher(), [sink], Metrics())) as pipeline:
        plain = batch("p", alerting=1)
        await pipeline.put(plain)
        assert plain.done is not None
        await asyncio.wait_for(plain.done, 5)  # accepted is enough
        confirmed = batch("c", alerting=1)
        confirmed.until_delivered = True
        await pipeline.put(confirmed)
        assert confirmed.done is not None
        while len(sink.receipts) < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert not confirmed.done.done(), "done before the destination acknowledged"
        sink.receipts[1].set_result(None)
        await asyncio.wait_for(confirmed.done, 5)


@pytest.mark.asyncio
async def test_a_transactional_sink_gets_only_exactly_once_batches_without_alerts() -> None:
    kafka = Gated("kafka", durable=True, transactional=True)
    kafka.open.clear()  # a call to it would never return
    async with running(Pipeline(matcher(), [kafka], Metrics())) as pipeline:
        quiet = batch("q", 0, 2)
        await pipeline.put(quiet)
        assert quiet.done is not None
        await asyncio.wait_for(quiet.done, 5)  # nothing to send, no offsets to commit: done
    assert kafka.transactions == [] and kafka.taken == []


@pytest.mark.asyncio
async def test_a_prefiltered_batch_is_matched_with_the_rules_that_prefiltered_it() -> None:
    """A reload between a source's prefilter and the match must not judge one
    batch by two rule sets: the batch carries the matcher it was filtered with."""
    file = Gated("file", durable=True)
    no_rules = Matcher(load_rules_text([("none.yaml", "- list: nothing\n  items: []\n")]))
    async with running(Pipeline(no_rules, [file], Metrics())) as pipeline:
        prefiltered = batch("p", alerting=2)
        prefiltered.prefiltered_with = matcher()
        await pipeline.put(prefiltered)
        assert prefiltered.done is not None
        await asyncio.wait_for(prefiltered.done, 5)
        plain = batch("n", alerting=2)
        await pipeline.put(plain)
        assert plain.done is not None
        await asyncio.wait_for(plain.done, 5)
    assert len(file.taken) == 2  # the plain batch met the pipeline's own (empty) rule set


@pytest.mark.asyncio
async def test_failed_batches_without_a_done_or_already_abandoned_do_not_stop_the_pipeline() -> None:
    loop = asyncio.get_running_loop()
    with structlog.testing.capture_logs() as logs:
        await _three_failing_batches_then_a_quiet_one(loop)
    # What an operator reads: one error per failed batch, with its traceback.
    failed = [(e["event"], e["log_level"], e["source"], e["events"], e["exc_info"]) for e in logs]
    assert failed == [
        ("batch_failed", "error", "s", 1, True),
        ("batch_failed", "error", "src", 1, True),
        ("batch_failed", "error", "src", 1, True),
    ]


async def _three_failing_batches_then_a_quiet_one(loop: asyncio.AbstractEventLoop) -> None:
    async with running(Pipeline(matcher(), [Exploding("stdout", durable=False)], Metrics())) as pipeline:
        await pipeline.put(Batch(events("n", 1), "s"))  # nobody waits for it
        abandoned = batch("a", alerting=1)
        assert abandoned.done is not None
        abandoned.done.cancel()  # the sender went away
        await pipeline.put(abandoned)
        failing = batch("f", alerting=1)
        await pipeline.put(failing)
        assert failing.done is not None
        with pytest.raises(RuntimeError, match=r"^batch processing failed$"):
            await asyncio.wait_for(failing.done, 5)
        quiet = Batch(events("q", 0, 1), "s", loop.create_future())
        await pipeline.put(quiet)
        assert quiet.done is not None
        await asyncio.wait_for(quiet.done, 5)


@pytest.mark.asyncio
async def test_a_batch_cut_off_by_a_stop_fails_its_done(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled mid-batch (the pipeline yields between slices), the batch's
    sender must hear that it was not processed, not wait forever."""
    monkeypatch.setattr(pipeline_module, "MATCH_SLICE_SECONDS", 0.0)  # yield before every event
    pipeline = Pipeline(matcher(), [Gated("file", durable=True)], Metrics())
    long = batch("l", alerting=50)
    await pipeline.put(long)
    task = asyncio.create_task(pipeline.run())
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert long.done is not None
    with pytest.raises(LaneClosed, match=r"^eventd stopped before the batch was processed$"):
        await asyncio.wait_for(long.done, 5)


@pytest.mark.asyncio
async def test_a_batch_longer_than_a_slice_is_matched_whole_letting_others_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline_module, "MATCH_SLICE_SECONDS", 0.0)
    file = Gated("file", durable=True)
    turns = 0

    async def other_task() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(other_task())
    try:
        async with running(Pipeline(matcher(), [file], Metrics())) as pipeline:
            long = batch("l", alerting=20)
            await pipeline.put(long)
            assert long.done is not None
            before = turns
            await asyncio.wait_for(long.done, 10)
            assert turns - before >= 19, "the pipeline must yield between slices"
    finally:
        ticker.cancel()
    assert len(file.taken) == 20


@pytest.mark.asyncio
async def test_counters_of_matched_events_falco_alerts_and_latency() -> None:
    metrics = Metrics()
    file = Gated("file", durable=True)
    falco = falco_alert_event(falco_alert(rule="Terminal shell in container"), origin="http")
    started = time.perf_counter()
    async with running(Pipeline(matcher(), [file], metrics)) as pipeline:
        one = Batch(
            [*events("m", alerting=3, quiet=1), falco], "src", asyncio.get_running_loop().create_future()
        )
        await pipeline.put(one)
        assert one.done is not None
        await asyncio.wait_for(one.done, 5)
    elapsed = time.perf_counter() - started
    assert sample(metrics, "eventd_events_received_total", source="src") == 5
    assert sample(metrics, "eventd_events_matched_total", source="src") == 3
    assert (
        sample(
            metrics,
            "eventd_alerts_total",
            rule="Terminal shell in container",
            priority="Notice",
            source="syscall",
        )
        == 1
    )
    assert sample(metrics, "eventd_match_latency_seconds_count") == 1
    # The observation is a duration of this batch, not a clock reading.
    assert 0 <= sample(metrics, "eventd_match_latency_seconds_sum") <= elapsed


@pytest.mark.asyncio
async def test_without_a_hostname_audit_alerts_carry_none_and_the_record_filter_is_kept() -> None:
    file = Gated("file", durable=True)
    pipeline = Pipeline(matcher(), [file], Metrics())
    first = pipeline.record_filter()
    assert pipeline.record_filter() is first  # built once per rule set
    async with running(pipeline):
        one = batch("h", alerting=1)
        await pipeline.put(one)
        assert one.done is not None
        await asyncio.wait_for(one.done, 5)
    assert [a.hostname for a in file.taken] == [""]
