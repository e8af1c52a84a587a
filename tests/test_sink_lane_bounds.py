"""SinkLane at its bounds: exactly full, closing while full, how many calls
run at once, what a stop counts (issue 17).

Each test kills mutants of ``eventd/sinks/lane.py`` that ``test_sink_lane.py``
and ``test_sink_lane_edges.py`` let through (``scripts/mutation.py``): a
durable lane one alert short of its bound, a byte count that forgets earlier
items, a durable sink called concurrently (out of order), a drain that never
ends after two concurrent calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from eventd.alerts import Alert
from eventd.config import BufferConfig
from eventd.metrics import Metrics
from eventd.sinks.base import Receipt, Sink
from eventd.sinks.lane import LaneClosed, SinkLane
from tests.support.http_receiver import sample_alert


class Held(Sink):
    """Holds every call until ``open``; counts the calls running at once."""

    name = "held"

    def __init__(self, *, durable: bool = False, concurrency: int = 1) -> None:
        self.durable = durable  # type: ignore[misc]
        self.concurrency = concurrency
        self.open = asyncio.Event()
        self.running = 0
        self.most = 0
        self.calls: list[list[str]] = []
        self.receipt: asyncio.Future[None] | None = None

    async def send(self, alert: Alert) -> None:
        await self.send_many([alert])

    async def send_many(self, alerts: Sequence[Alert]) -> Receipt:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.open.wait()
        finally:
            self.running -= 1
        self.calls.append([a.rule for a in alerts])
        return self.receipt


def dropped(metrics: Metrics, reason: str) -> float:
    labels = {"sink": "held", "reason": reason}
    return metrics.registry.get_sample_value("eventd_sink_dropped_total", labels) or 0.0


async def until(check, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


ALERT = sample_alert("r")
SIZE = len(ALERT.to_json())


@pytest.mark.parametrize("bound", ["alerts", "bytes"])
@pytest.mark.asyncio
async def test_a_durable_lane_fills_to_its_bound_exactly_then_waits(bound: str) -> None:
    sink = Held(durable=True)
    buffer = BufferConfig(max_alerts=3) if bound == "alerts" else BufferConfig(max_bytes=3 * SIZE)
    metrics = Metrics()
    lane = SinkLane(sink, metrics, buffer)
    lane.start()
    try:
        await lane.submit([ALERT])
        await until(lambda: sink.running == 1, "the first item taken by the worker")
        for _ in range(3):  # the queue holds exactly its bound
            await asyncio.wait_for(lane.submit([ALERT]), 5)
        assert lane.health()["queued_alerts"] == 3
        assert lane.health()["queued_bytes"] == 3 * SIZE
        assert metrics.registry.get_sample_value("eventd_sink_queue_bytes", {"sink": "held"}) == 3 * SIZE
        waiting = asyncio.create_task(lane.submit([ALERT]))
        await asyncio.sleep(0.05)
        assert not waiting.done(), "one alert past the bound must wait for room"
        sink.open.set()
        await asyncio.wait_for(waiting, 5)
        await lane.drain()
    finally:
        await lane.stop()
    assert len(sink.calls) == 5


@pytest.mark.asyncio
async def test_a_submit_waiting_for_room_fails_once_the_lane_closes() -> None:
    sink = Held(durable=True)
    lane = SinkLane(sink, Metrics(), BufferConfig(max_alerts=1))
    lane.start()
    try:
        await lane.submit([ALERT])
        await until(lambda: sink.running == 1, "the first item taken")
        await lane.submit([ALERT])  # fills the queue
        waiting = asyncio.create_task(lane.submit([ALERT]))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        draining = asyncio.create_task(lane.drain())
        done = await asyncio.wait_for(waiting, 5)
        with pytest.raises(LaneClosed, match="is closing"):
            await done
        sink.open.set()
        await asyncio.wait_for(draining, 5)
    finally:
        await lane.stop()


@pytest.mark.parametrize(("durable", "concurrency", "most"), [(True, 3, 1), (False, 1, 1), (False, 3, 3)])
@pytest.mark.asyncio
async def test_calls_run_at_once_as_the_sink_allows_and_a_durable_one_in_order(
    durable: bool, concurrency: int, most: int
) -> None:
    sink = Held(durable=durable, concurrency=concurrency)
    sink.max_call = 1  # one alert per best-effort call, so calls can overlap
    lane = SinkLane(sink, Metrics(), BufferConfig())
    lane.start()
    try:
        for i in range(4):
            if durable:
                await lane.submit([sample_alert(f"r{i}")])
            else:
                lane.offer([sample_alert(f"r{i}")])
        await until(lambda: sink.running == most, f"{most} calls at once")
        await asyncio.sleep(0.05)
        assert sink.most == most
        sink.open.set()
        await asyncio.wait_for(lane.drain(), 5)  # ends after concurrent calls too
    finally:
        await lane.stop()
    if durable:
        assert sink.calls == [["r0"], ["r1"], ["r2"], ["r3"]]
    assert sorted(rule for call in sink.calls for rule in call) == ["r0", "r1", "r2", "r3"]


@pytest.mark.asyncio
async def test_a_stop_counts_the_alerts_of_an_interrupted_best_effort_call() -> None:
    metrics = Metrics()
    sink = Held()
    lane = SinkLane(sink, metrics, BufferConfig())
    lane.start()
    lane.offer([sample_alert("a"), sample_alert("b")])
    await until(lambda: sink.running == 1, "the call in progress")
    assert await lane.stop() == 0  # nothing left in the queue itself
    assert dropped(metrics, "shutdown") == 2


@pytest.mark.asyncio
async def test_a_lane_never_started_stops_cleanly() -> None:
    lane = SinkLane(Held(), Metrics(), BufferConfig())
    lane.offer([ALERT])
    assert await lane.stop() == 1


@pytest.mark.asyncio
async def test_a_cancelled_receipt_fails_the_delivery_it_stood_for() -> None:
    sink = Held(durable=True)
    sink.open.set()
    sink.receipt = asyncio.get_running_loop().create_future()
    lane = SinkLane(sink, Metrics(), BufferConfig())
    lane.start()
    try:
        done = await lane.submit([ALERT], until_delivered=True)
        await until(lambda: sink.calls, "the call")
        sink.receipt.cancel()
        with pytest.raises(LaneClosed, match=r"^delivery abandoned$"):
            await asyncio.wait_for(done, 5)
    finally:
        await lane.stop()
