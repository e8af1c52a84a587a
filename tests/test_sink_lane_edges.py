"""SinkLane edges where a mistake loses or duplicates alerts: exact byte and
alert bounds, a failing sink (durable: the batch fails; best-effort: counted
and the lane goes on), closing, exactly-once items, health and probes.

The sinks here are small recording sinks (the lane is under test, not them);
the health loop's intervals are module constants, shortened for the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import structlog.testing

from eventd.alerts import Alert
from eventd.config import BufferConfig
from eventd.kafka_client import ConsumedOffsets
from eventd.metrics import Metrics
from eventd.sinks import lane as lane_module
from eventd.sinks.base import Receipt, Sink
from eventd.sinks.lane import LaneClosed, SinkLane
from tests.support.http_receiver import sample_alert
from tests.support.waiting import wait_until

ALERT = sample_alert("same size")
SIZE = len(ALERT.to_json())


class Held(Sink):
    """Takes alerts while ``open`` is set; can fail, confirm, or be unhealthy."""

    name = "held"

    def __init__(self, *, durable: bool = False, max_call: int = 500) -> None:
        self.durable = durable  # type: ignore[misc]
        self.max_call = max_call
        self.open = asyncio.Event()
        self.open.set()
        self.fail: Exception | None = None
        self.calls: list[list[str]] = []
        self.transactions: list[tuple[list[str], ConsumedOffsets]] = []
        self.receipt: asyncio.Future[None] | None = None
        self.ok = True
        self.probes = 0
        self.ready = True

    async def send(self, alert: Alert) -> None:
        await self.send_many([alert])

    async def send_many(self, alerts: Sequence[Alert]) -> Receipt:
        await self.open.wait()
        if self.fail is not None:
            raise self.fail
        self.calls.append([a.rule for a in alerts])
        return self.receipt

    async def send_transaction(self, alerts: Sequence[Alert], consumed: ConsumedOffsets) -> None:
        await self.open.wait()
        self.transactions.append(([a.rule for a in alerts], consumed))

    def healthy(self) -> bool:
        return self.ok

    def accepting(self) -> bool:
        return self.ready

    async def probe(self) -> None:
        self.probes += 1
        raise OSError("still down")


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"sink": "held", **labels}) or 0.0


def alerts(n: int, prefix: str = "a") -> list[Alert]:
    return [sample_alert(f"{prefix}{i:03d}"[:9].ljust(9, "x")) for i in range(n)]


def lane_for(sink: Held, metrics: Metrics, **buffer: int) -> SinkLane:
    lane = SinkLane(sink, metrics, BufferConfig(**buffer))
    lane.start()
    return lane


# -------------------------------------------------------------------- bounds


@pytest.mark.asyncio
async def test_best_effort_bytes_bound_is_exact_and_bytes_are_given_back() -> None:
    metrics, sink = Metrics(), Held()
    sink.open.clear()
    lane = lane_for(sink, metrics, max_alerts=1000, max_bytes=3 * SIZE)
    lane.offer([sample_alert("held")])  # taken by the task, held by the sink
    await wait_until(lambda: lane.health()["queued_alerts"] == 0)
    same = [sample_alert(f"r{i}".ljust(9, "x")) for i in range(3)]
    assert all(len(a.to_json()) == SIZE for a in same)
    lane.offer(same)  # exactly at the bound: nothing dropped
    assert metric(metrics, "eventd_sink_dropped_total", reason="queue_full") == 0
    assert lane.health()["queued_bytes"] == 3 * SIZE
    lane.offer([sample_alert("r3".ljust(9, "x"))])  # one byte-bound over: the oldest goes
    assert metric(metrics, "eventd_sink_dropped_total", reason="queue_full") == 1
    assert lane.health()["queued_bytes"] == 3 * SIZE
    sink.open.set()
    await lane.drain()
    assert lane.health()["queued_bytes"] == 0 and metric(metrics, "eventd_sink_queue_bytes") == 0
    assert [rule for call in sink.calls for rule in call][1:] == ["r1xxxxxxx", "r2xxxxxxx", "r3xxxxxxx"]
    await lane.stop()


@pytest.mark.asyncio
async def test_one_alert_larger_than_the_bound_is_still_delivered_alone() -> None:
    metrics, sink = Metrics(), Held()
    lane = lane_for(sink, metrics, max_alerts=10, max_bytes=10)
    lane.offer([sample_alert("huge")])
    await lane.drain()
    assert sink.calls == [["huge"]]
    assert metric(metrics, "eventd_sink_dropped_total", reason="queue_full") == 0
    await lane.stop()


@pytest.mark.asyncio
async def test_durable_submit_waits_exactly_at_the_bounds() -> None:
    metrics, sink = Metrics(), Held(durable=True)
    sink.open.clear()
    lane = lane_for(sink, metrics, max_alerts=100, max_bytes=2 * SIZE)
    first = await lane.submit([sample_alert("held")])  # with the sink
    await wait_until(lambda: lane.health()["queued_alerts"] == 0)
    two = await asyncio.wait_for(lane.submit([sample_alert("ax".ljust(9, "x")), ALERT]), 1)  # fits exactly
    third = asyncio.ensure_future(lane.submit([ALERT]))
    await asyncio.sleep(0.05)
    assert not third.done()  # one byte-bound over: waits for room
    assert lane.health()["queued_bytes"] == 2 * SIZE
    sink.open.set()
    for future in (first, two, await asyncio.wait_for(third, 5)):
        await asyncio.wait_for(future, 5)
    await lane.drain()
    assert lane.health()["queued_bytes"] == 0
    await lane.stop()


@pytest.mark.asyncio
async def test_durable_submit_waits_exactly_at_the_alert_bound() -> None:
    metrics, sink = Metrics(), Held(durable=True)
    sink.open.clear()
    lane = lane_for(sink, metrics, max_alerts=2, max_bytes=1 << 20)
    await lane.submit([sample_alert("held")])
    await wait_until(lambda: lane.health()["queued_alerts"] == 0)
    await asyncio.wait_for(lane.submit(alerts(2)), 1)  # exactly max_alerts
    late = asyncio.ensure_future(lane.submit(alerts(1, "b")))
    await asyncio.sleep(0.05)
    assert not late.done()
    sink.open.set()
    await asyncio.wait_for(await asyncio.wait_for(late, 5), 5)
    await lane.stop()


@pytest.mark.asyncio
async def test_best_effort_batches_take_at_most_max_call_alerts() -> None:
    metrics, sink = Metrics(), Held(max_call=3)
    sink.open.clear()
    lane = lane_for(sink, metrics)
    lane.offer([sample_alert("first")])
    await wait_until(lambda: lane.health()["queued_alerts"] == 0)
    lane.offer(alerts(7))
    sink.open.set()
    await lane.drain()
    assert [len(call) for call in sink.calls] == [1, 3, 3, 1]
    await lane.stop()


# ------------------------------------------------------------------ failures


@pytest.mark.asyncio
async def test_a_failing_durable_sink_fails_the_items_and_the_lane_goes_on() -> None:
    metrics, sink = Metrics(), Held(durable=True)
    lane = lane_for(sink, metrics)
    sink.fail = OSError("disk gone")
    with structlog.testing.capture_logs() as logs:
        failed = await lane.submit(alerts(2))
        with pytest.raises(OSError, match="disk gone"):
            await asyncio.wait_for(failed, 5)
    event = next(e for e in logs if e["event"] == "sink_failed")
    assert (event["sink"], event["alerts"], event["error_type"]) == ("held", 2, "OSError")
    assert metric(metrics, "eventd_sink_dropped_total", reason="internal_error") == 0  # the input retries
    sink.fail = None
    await asyncio.wait_for(await lane.submit(alerts(1, "ok")), 5)
    assert sink.calls == [["ok000xxxx"]]
    await lane.stop()


@pytest.mark.asyncio
async def test_a_failing_best_effort_sink_counts_the_loss_and_goes_on() -> None:
    metrics, sink = Metrics(), Held()
    lane = lane_for(sink, metrics)
    sink.fail = RuntimeError("bug")
    lane.offer(alerts(3))
    await lane.drain()
    assert metric(metrics, "eventd_sink_dropped_total", reason="internal_error") == 3
    await lane.stop()
    lane = lane_for(sink, metrics)
    sink.fail = None
    lane.offer(alerts(1, "ok"))
    await lane.drain()
    assert sink.calls == [["ok000xxxx"]]
    await lane.stop()


@pytest.mark.asyncio
async def test_until_delivered_follows_the_receipt_and_its_failure() -> None:
    metrics, sink = Metrics(), Held(durable=True)
    lane = lane_for(sink, metrics)
    loop = asyncio.get_running_loop()
    sink.receipt = loop.create_future()
    accepted = await lane.submit(alerts(1), until_delivered=False)
    delivered = await lane.submit(alerts(1, "d"), until_delivered=True)
    await asyncio.wait_for(accepted, 5)
    await asyncio.sleep(0.02)
    assert not delivered.done()
    sink.receipt.set_exception(OSError("broker said no"))
    with pytest.raises(OSError, match="broker said no"):
        await asyncio.wait_for(delivered, 5)
    sink.receipt = loop.create_future()
    abandoned = await lane.submit(alerts(1, "c"), until_delivered=True)
    await wait_until(lambda: len(sink.calls) == 3)
    sink.receipt.cancel()
    with pytest.raises(LaneClosed, match="delivery abandoned"):
        await asyncio.wait_for(abandoned, 5)
    await lane.stop()


@pytest.mark.asyncio
async def test_exactly_once_items_go_as_one_transaction_with_their_offsets() -> None:
    metrics, sink = Metrics(), Held(durable=True)
    lane = lane_for(sink, metrics)
    consumed = ConsumedOffsets("group", {}, 3, lambda: True)
    done = await lane.submit(alerts(2), until_delivered=True, consumed=consumed)
    await asyncio.wait_for(done, 5)
    assert sink.transactions == [(["a000xxxxx", "a001xxxxx"], consumed)]
    assert sink.calls == []
    await lane.stop()


# ------------------------------------------------------------------- closing


@pytest.mark.asyncio
async def test_after_drain_submit_fails_and_accepting_is_false() -> None:
    metrics, sink = Metrics(), Held(durable=True)
    lane = lane_for(sink, metrics)
    assert lane.accepting()
    sink.ready = False
    assert not lane.accepting()
    sink.ready = True
    await lane.drain()
    assert not lane.accepting() and lane.health()["accepting"] is False
    late = await lane.submit(alerts(1))
    with pytest.raises(LaneClosed, match="held is closing"):
        await late
    assert sink.calls == []
    await lane.stop()


@pytest.mark.asyncio
async def test_stop_fails_what_is_queued_and_counts_it() -> None:
    metrics, sink = Metrics(), Held(durable=True)
    sink.open.clear()
    lane = lane_for(sink, metrics)
    taken = await lane.submit(alerts(1, "t"))
    await wait_until(lambda: lane.health()["queued_alerts"] == 0)
    queued = await lane.submit(alerts(2, "q"))
    with structlog.testing.capture_logs() as logs:
        assert await lane.stop() == 2
    assert metric(metrics, "eventd_sink_dropped_total", reason="shutdown") == 2
    # What an operator reads about alerts a shutdown lost.
    assert logs == [
        {"event": "sink_undelivered_at_shutdown", "log_level": "error", "sink": "held", "alerts": 2}
    ]
    for future in (taken, queued):
        with pytest.raises(LaneClosed, match="held closed"):
            await future
    assert lane.health() == {
        "up": True,
        "durable": True,
        "accepting": False,
        "queued_alerts": 0,
        "queued_bytes": 0,
    }


# -------------------------------------------------------------------- health


@pytest.mark.asyncio
async def test_health_is_published_and_an_idle_unhealthy_sink_is_probed(monkeypatch) -> None:
    monkeypatch.setattr(lane_module, "HEALTH_INTERVAL", 0.01)
    monkeypatch.setattr(lane_module, "PROBE_EVERY", 3)
    metrics, sink = Metrics(), Held()
    lane = lane_for(sink, metrics)
    assert metric(metrics, "eventd_sink_up") == 1
    sink.ok = False
    await wait_until(lambda: metric(metrics, "eventd_sink_up") == 0)
    await wait_until(lambda: sink.probes >= 2)  # a failing probe leaves it down, and is tried again
    assert metric(metrics, "eventd_sink_up") == 0
    sink.ok = True
    await wait_until(lambda: metric(metrics, "eventd_sink_up") == 1)
    probes = sink.probes
    await asyncio.sleep(0.1)
    assert sink.probes == probes  # a healthy sink is not probed
    await lane.stop()


@pytest.mark.asyncio
async def test_a_busy_unhealthy_sink_is_not_probed(monkeypatch) -> None:
    monkeypatch.setattr(lane_module, "HEALTH_INTERVAL", 0.01)
    monkeypatch.setattr(lane_module, "PROBE_EVERY", 2)
    metrics, sink = Metrics(), Held()
    sink.open.clear()
    lane = lane_for(sink, metrics)
    sink.ok = False
    lane.offer(alerts(1))  # the sink is busy with it
    await wait_until(lambda: metric(metrics, "eventd_sink_up") == 0)
    await asyncio.sleep(0.1)
    assert sink.probes == 0
    sink.open.set()
    await lane.drain()
    await wait_until(lambda: sink.probes >= 1)
    await lane.stop()


def test_an_idle_unhealthy_sink_is_probed_at_every_fifth_check() -> None:
    """The schedule, counted in health checks (no clock): checks 5, 10, 15
    probe; a healthy check publishes 1 and starts the count again."""
    metrics, sink = Metrics(), Held()
    lane = SinkLane(sink, metrics, BufferConfig())  # not started: the test makes the checks
    sink.ok = False
    due = [n for n in range(1, 16) if lane._health_check()]
    assert due == [5, 10, 15]
    assert metric(metrics, "eventd_sink_up") == 0
    sink.ok = True
    assert not lane._health_check() and metric(metrics, "eventd_sink_up") == 1
    sink.ok = False
    assert [n for n in range(1, 6) if lane._health_check()] == [4]  # the count went on while healthy


def test_an_unhealthy_sink_with_alerts_to_send_is_not_probed() -> None:
    metrics, sink = Metrics(), Held()
    lane = SinkLane(sink, metrics, BufferConfig())
    sink.ok = False
    lane.offer(alerts(1))  # queued (the lane is not started): its delivery will tell
    assert not any(lane._health_check() for _ in range(12))


@pytest.mark.asyncio
async def test_a_probe_that_never_answers_is_given_up(monkeypatch) -> None:
    """A probe is bounded: one that hangs must not stop the health loop."""
    monkeypatch.setattr(lane_module, "PROBE_TIMEOUT", 0.05)
    metrics, sink = Metrics(), Held()

    async def hangs() -> None:
        sink.probes += 1
        await asyncio.Event().wait()

    sink.probe = hangs  # type: ignore[method-assign]
    lane = SinkLane(sink, metrics, BufferConfig())
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(lane._probe(), 10)
    assert sink.probes == 1
    assert logs == [
        {"event": "sink_probe_failed", "log_level": "debug", "sink": "held", "error_type": "TimeoutError"}
    ]


def test_select_keeps_the_alerts_the_sinks_filters_accept_in_order() -> None:
    metrics, sink = Metrics(), Held()
    sink.accepts = lambda alert: alert.rule.startswith("k")  # type: ignore[method-assign]
    lane = SinkLane(sink, metrics, BufferConfig())
    offered = alerts(2, "k") + alerts(2, "d") + alerts(1, "k9")
    assert [a.rule for a in lane.select(offered)] == [offered[0].rule, offered[1].rule, offered[4].rule]
    assert lane.select(alerts(3, "d")) == []
