"""SinkLane: each sink's own bounded queue, and what it does when full.

Best-effort lanes never make the pipeline wait and drop their oldest alerts
past either bound (alerts, bytes); durable lanes make ``submit`` wait for
room and resolve its future only once the sink accepted (or, on request,
the destination acknowledged) the alerts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.alerts import Alert
from eventd.config import BufferConfig, SinkConfig, WebhookSinkConfig
from eventd.metrics import Metrics
from eventd.sinks.base import Receipt, Sink
from eventd.sinks.lane import LaneClosed, SinkLane
from eventd.sinks.policy import PolicySink
from eventd.sinks.webhook import WebhookSink
from tests.support.http_receiver import Answer, Receiver, sample_alert, serve
from tests.support.waiting import wait_until


class Gate(Sink):
    """A sink that takes alerts only while its gate is open; records them."""

    name = "gate"

    def __init__(self, durable: bool = False, *, confirm: bool = False) -> None:
        self.durable = durable  # type: ignore[misc]
        self.open = asyncio.Event()
        self.open.set()
        self.taken: list[Alert] = []
        self.confirm = confirm
        self.receipts: list[asyncio.Future[None]] = []

    async def send(self, alert: Alert) -> None:
        await self.send_many([alert])

    async def send_many(self, alerts: Sequence[Alert]) -> Receipt:
        await self.open.wait()
        self.taken.extend(alerts)
        if not self.confirm:
            return None
        receipt: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.receipts.append(receipt)
        return receipt


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"sink": "gate", **labels}) or 0.0


def lane_for(sink: Sink, metrics: Metrics, **buffer: int) -> SinkLane:
    config = SinkConfig(buffer=BufferConfig(**buffer))
    lane = SinkLane(PolicySink(sink, config, metrics), metrics)
    lane.start()
    return lane


@pytest.mark.asyncio
async def test_best_effort_lane_drops_the_oldest_past_the_alert_bound_and_never_waits() -> None:
    metrics, sink = Metrics(), Gate()
    sink.open.clear()
    lane = lane_for(sink, metrics, max_alerts=3)
    first = sample_alert("first")
    lane.offer([first])
    await wait_until(lambda: lane.health()["queued_alerts"] == 0)  # taken by the task, held by the sink
    alerts = [sample_alert(f"rule {i}") for i in range(5)]
    lane.offer(alerts)  # returns at once: offer is synchronous
    assert metric(metrics, "eventd_sink_dropped_total", reason="queue_full") == 2
    assert metric(metrics, "eventd_sink_queue_depth") == 3
    sink.open.set()
    await lane.drain()
    assert [a.rule for a in sink.taken] == ["first", "rule 2", "rule 3", "rule 4"]
    await lane.stop()


@pytest.mark.asyncio
async def test_best_effort_lane_is_bounded_in_bytes_too() -> None:
    metrics, sink = Metrics(), Gate()
    sink.open.clear()
    small = sample_alert("small")
    budget = 10 * len(small.to_json())
    lane = lane_for(sink, metrics, max_alerts=1000, max_bytes=budget)
    huge = [sample_alert("huge", output="x" * budget) for _ in range(3)]
    lane.offer(huge)
    lane.offer([sample_alert("small") for _ in range(4)])
    # One huge alert alone exceeds the budget: it is dropped for the small ones
    # (the sink's task may hold one alert it took before the gate).
    assert metric(metrics, "eventd_sink_queue_bytes") <= budget
    assert metric(metrics, "eventd_sink_dropped_total", reason="queue_full") >= 2
    await lane.stop()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20), st.integers(0, 3000)), min_size=1, max_size=30))
def test_offer_keeps_both_bounds_and_counts_every_drop(batches: list[tuple[int, int]]) -> None:
    """Whatever arrives, a lane holds at most ``max_alerts`` alerts and
    ``max_bytes`` bytes (one alert may exceed the byte bound alone), and
    every alert is either queued, taken by the sink or counted as dropped."""

    async def run() -> None:
        metrics, sink = Metrics(), Gate()
        sink.open.clear()
        lane = lane_for(sink, metrics, max_alerts=7, max_bytes=6000)
        offered = 0
        for count, pad in batches:
            lane.offer([sample_alert("r", output="y" * pad) for _ in range(count)])
            offered += count
            await asyncio.sleep(0)
            health = lane.health()
            assert int(health["queued_alerts"]) <= 7  # type: ignore[call-overload]
            assert int(health["queued_alerts"]) == 1 or int(health["queued_bytes"]) <= 6000  # type: ignore[call-overload]
        dropped = metric(metrics, "eventd_sink_dropped_total", reason="queue_full")
        queued = lane.health()["queued_alerts"]
        sink.open.set()
        await lane.drain()
        assert len(sink.taken) + dropped == offered
        assert len(sink.taken) >= queued  # type: ignore[operator]
        await lane.stop()

    asyncio.run(run())


@pytest.mark.asyncio
async def test_durable_lane_makes_submit_wait_for_room_and_resolves_on_acceptance() -> None:
    metrics, sink = Metrics(), Gate(durable=True)
    sink.open.clear()
    lane = lane_for(sink, metrics, max_alerts=2)
    held = await lane.submit([sample_alert("held")])  # taken by the task, waiting at the gate
    await wait_until(lambda: lane.health()["queued_alerts"] == 0)
    queued = await lane.submit([sample_alert("a"), sample_alert("b")])
    third = asyncio.create_task(lane.submit([sample_alert("c")]))
    await asyncio.sleep(0.05)
    assert not third.done(), "a full durable lane must push back, not drop"
    assert not held.done() and not queued.done()
    sink.open.set()
    await asyncio.wait_for(held, 5)
    await asyncio.wait_for(queued, 5)
    await asyncio.wait_for(await third, 5)
    assert [a.rule for a in sink.taken] == ["held", "a", "b", "c"]
    assert metric(metrics, "eventd_sink_dropped_total", reason="queue_full") == 0
    await lane.stop()


@pytest.mark.asyncio
async def test_until_delivered_waits_for_the_destination_receipt() -> None:
    metrics, sink = Metrics(), Gate(durable=True, confirm=True)
    lane = lane_for(sink, metrics)
    accepted = await lane.submit([sample_alert("x")])
    delivered = await lane.submit([sample_alert("y")], until_delivered=True)
    await asyncio.wait_for(accepted, 5)
    await wait_until(lambda: len(sink.receipts) == 2)
    await asyncio.sleep(0.01)
    assert not delivered.done()
    sink.receipts[1].set_result(None)
    await asyncio.wait_for(delivered, 5)
    await lane.stop()


@pytest.mark.asyncio
async def test_stop_fails_durable_waiters_and_counts_what_was_left() -> None:
    metrics, sink = Metrics(), Gate(durable=True)
    sink.open.clear()
    lane = lane_for(sink, metrics)
    futures = [await lane.submit([sample_alert(str(i))]) for i in range(3)]
    await wait_until(lambda: lane.health()["queued_alerts"] == 2)
    assert await lane.stop() == 2
    for future in futures:
        with pytest.raises(LaneClosed):
            await future
    assert metric(metrics, "eventd_sink_dropped_total", reason="shutdown") == 2


@pytest.mark.asyncio
async def test_a_black_holed_receiver_costs_its_own_alerts_only() -> None:
    """A webhook that never answers: the lane keeps taking alerts without
    waiting and drops the oldest past its bound."""
    async with serve(Answer(hold=30)) as receiver:
        await _black_holed(receiver)


async def _black_holed(receiver: Receiver) -> None:
    metrics = Metrics()
    config = WebhookSinkConfig(
        url=receiver.url, max_concurrency=1, timeout_seconds=30, buffer=BufferConfig(max_alerts=5)
    )
    lane = SinkLane(PolicySink(WebhookSink(config, metrics), config, metrics), metrics)
    lane.start()
    for i in range(50):
        lane.offer([sample_alert(f"r{i}")])  # synchronous: cannot wait on the receiver
    await receiver.wait_for(1)
    dropped = metrics.registry.get_sample_value(
        "eventd_sink_dropped_total", {"sink": "webhook", "reason": "queue_full"}
    )
    assert dropped == 50 - 5
    await lane.stop()
    await lane.sink.close()
