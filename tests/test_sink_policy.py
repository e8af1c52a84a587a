"""PolicySink: per-sink filters, dedup windows, summaries, bounded memory."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter

import msgspec
import pytest
import structlog.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.alerts import Alert
from eventd.config import DedupConfig, SinkConfig
from eventd.kafka_client import ConsumedOffsets
from eventd.metrics import Metrics
from eventd.priority import Priority
from eventd.sinks.base import Sink
from eventd.sinks.policy import PolicySink, tick_interval
from tests.support.http_receiver import T0, sample_alert
from tests.support.waiting import wait_until


class Recorder(Sink):
    """The wrapped sink: keeps what it is given and how it was driven."""

    name = "rec"

    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self.calls: list[str] = []
        self.ok = True

    async def start(self) -> None:
        self.calls.append("start")

    async def send(self, alert: Alert) -> None:
        self.alerts.append(alert)

    async def flush(self) -> None:
        self.calls.append("flush")

    async def close(self) -> None:
        self.calls.append("close")

    def healthy(self) -> bool:
        return self.ok


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def filtered(metrics: Metrics, reason: str) -> float:
    return (
        metrics.registry.get_sample_value("eventd_sink_filtered_total", {"sink": "rec", "reason": reason})
        or 0
    )


def policy(config: SinkConfig, **kw) -> tuple[PolicySink, Recorder, Metrics, Clock]:
    inner, metrics, clock = Recorder(), Metrics(), Clock()
    return PolicySink(inner, config, metrics, clock, **kw), inner, metrics, clock


DEDUP = SinkConfig(dedup=DedupConfig(window_seconds=300))


# ------------------------------------------------------------------- filters


@pytest.mark.asyncio
async def test_min_priority_sends_alerts_at_least_that_severe() -> None:
    sink, inner, metrics, _ = policy(SinkConfig(min_priority="error"))
    for p in (Priority.CRITICAL, Priority.ERROR, Priority.WARNING, Priority.DEBUG):
        await sink.send(sample_alert(priority=p))
    assert [a.priority for a in inner.alerts] == [Priority.CRITICAL, Priority.ERROR]
    assert filtered(metrics, "filter") == 2


@pytest.mark.asyncio
async def test_rule_tag_and_source_filters() -> None:
    sink, inner, metrics, _ = policy(SinkConfig(rules=("A", "B")))
    for rule in ("A", "B", "C"):
        await sink.send(sample_alert(rule))
    assert [a.rule for a in inner.alerts] == ["A", "B"]

    sink, inner, metrics, _ = policy(SinkConfig(tags=("mitre_execution", "pci")))
    await sink.send(sample_alert("has one", tags=("k8s", "pci")))
    await sink.send(sample_alert("has none", tags=("k8s",)))
    await sink.send(sample_alert("no tags", tags=()))
    assert [a.rule for a in inner.alerts] == ["has one"]
    assert filtered(metrics, "filter") == 2

    sink, inner, _, _ = policy(SinkConfig(sources=("syscall",)))
    await sink.send(sample_alert("audit", source="k8s_audit"))
    await sink.send(sample_alert("falco", source="syscall"))
    assert [a.rule for a in inner.alerts] == ["falco"]


@pytest.mark.asyncio
async def test_filters_combine_with_and() -> None:
    sink, inner, _, _ = policy(SinkConfig(min_priority="warning", rules=("A",), sources=("k8s_audit",)))
    await sink.send(sample_alert("A", Priority.NOTICE))
    await sink.send(sample_alert("A", Priority.WARNING, source="syscall"))
    await sink.send(sample_alert("A", Priority.WARNING))
    assert len(inner.alerts) == 1


# --------------------------------------------------------------------- dedup


@pytest.mark.asyncio
async def test_dedup_sends_once_then_one_summary_with_the_count() -> None:
    sink, inner, metrics, clock = policy(DEDUP)
    first = sample_alert(time_ns=T0)
    await sink.send(first)
    for i in range(1, 5):
        clock.now += 10
        await sink.send(sample_alert(time_ns=T0 + i * 10**9))
    assert inner.alerts == [first]
    assert filtered(metrics, "duplicate") == 4

    await sink.flush()  # window not over yet: nothing more
    assert len(inner.alerts) == 1
    clock.now = 1000.0 + 300
    await sink.flush()
    assert len(inner.alerts) == 2
    summary = inner.alerts[1]
    assert summary.output == f"[repeated 4 more times in 300s] {first.output}"
    assert (summary.rule, summary.priority, summary.source, summary.tags) == (
        first.rule,
        first.priority,
        first.source,
        first.tags,
    )
    assert summary.output_fields == {**first.output_fields, "eventd.repeat_count": 4}
    assert summary.context["repeat_count"] == 4
    assert summary.context["first_seen"] == "2026-11-29T10:00:00.123456789Z"
    assert summary.context["last_seen"] == "2026-11-29T10:00:04.123456789Z"
    assert summary.context["namespace"] == first.context["namespace"]
    assert summary.uuid != first.uuid
    assert "eventd.repeat_count" not in first.output_fields  # the original is untouched
    await sink.flush()
    assert len(inner.alerts) == 2  # exactly one summary


@pytest.mark.asyncio
async def test_summary_uuid_is_deterministic() -> None:
    """Re-processing the same events (at-least-once) yields the same summary uuid."""
    original = sample_alert()
    uuids = []
    for start in (1000.0, 5000.0):  # the daemon's clock differs between runs
        sink, inner, _, clock = policy(DEDUP)
        clock.now = start
        for _ in range(3):
            await sink.send(msgspec.structs.replace(original))
        clock.now += 301
        await sink.flush()
        uuids.append(inner.alerts[-1].uuid)
    assert uuids[0] == uuids[1] != original.uuid
    sink, inner, _, clock = policy(DEDUP)
    for _ in range(2):
        await sink.send(msgspec.structs.replace(original, uuid=sample_alert().uuid))
    await sink.close()
    assert inner.alerts[-1].uuid not in uuids  # another original, another summary


@pytest.mark.asyncio
async def test_different_key_values_are_not_merged() -> None:
    sink, inner, metrics, _ = policy(DEDUP)
    await sink.send(sample_alert(namespace="a"))
    await sink.send(sample_alert(namespace="b"))
    await sink.send(sample_alert(namespace="a", images=("nginx:1.25",)))
    await sink.send(sample_alert(namespace="a", workload="deployments/web"))
    await sink.send(sample_alert("Other rule", namespace="a"))
    await sink.send(sample_alert(namespace="a", user="mallory"))  # user is not a key: merged
    assert len(inner.alerts) == 5
    assert filtered(metrics, "duplicate") == 1


@pytest.mark.asyncio
async def test_configured_keys_decide_identity() -> None:
    sink, inner, _, _ = policy(SinkConfig(dedup=DedupConfig(keys=("user",))))
    await sink.send(sample_alert(namespace="a", user="alice"))
    await sink.send(sample_alert(namespace="b", user="alice"))
    await sink.send(sample_alert(namespace="a", user="bob"))
    assert [a.context["user"] for a in inner.alerts] == ["alice", "bob"]


@pytest.mark.asyncio
async def test_after_the_window_the_alert_is_sent_again() -> None:
    sink, inner, _, clock = policy(DEDUP)
    await sink.send(sample_alert())
    clock.now += 301
    await sink.send(sample_alert())  # closes the old window (no repeats: no summary)
    assert len(inner.alerts) == 2
    assert all("repeat_count" not in a.context for a in inner.alerts)

    await sink.send(sample_alert())
    clock.now += 301
    await sink.send(sample_alert())  # the late arrival first closes the window with its summary
    assert [a.context.get("repeat_count") for a in inner.alerts[2:]] == [1, None]


@pytest.mark.asyncio
async def test_the_window_ends_at_its_end_instant() -> None:
    """``window_seconds`` after the first alert the window is over: an
    identical alert at exactly that instant is sent again, one just before
    it is a repeat."""
    sink, inner, metrics, clock = policy(DEDUP)
    await sink.send(sample_alert())
    clock.now = 1000.0 + 299.999
    await sink.send(sample_alert())
    assert len(inner.alerts) == 1 and filtered(metrics, "duplicate") == 1
    clock.now = 1000.0 + 300
    await sink.send(sample_alert())
    assert [a.context.get("repeat_count") for a in inner.alerts] == [None, 1, None]


@pytest.mark.asyncio
async def test_flush_closes_a_window_at_its_end_instant() -> None:
    sink, inner, _, clock = policy(DEDUP)
    await sink.send(sample_alert())
    await sink.send(sample_alert())
    clock.now = 1000.0 + 299.999
    await sink.flush()
    assert len(inner.alerts) == 1
    clock.now = 1000.0 + 300
    await sink.flush()
    assert [a.context.get("repeat_count") for a in inner.alerts] == [None, 1]


@pytest.mark.asyncio
async def test_alerts_of_another_source_are_not_merged() -> None:
    """A Falco alert and an audit alert of the same rule name and context are
    different alerts: the key includes the alert's source."""
    sink, inner, metrics, _ = policy(DEDUP)
    await sink.send(sample_alert(source="k8s_audit"))
    await sink.send(sample_alert(source="syscall"))
    await sink.send(sample_alert(source="k8s_audit"))
    assert [a.source for a in inner.alerts] == ["k8s_audit", "syscall"]
    assert filtered(metrics, "duplicate") == 1


@pytest.mark.asyncio
async def test_no_summary_when_disabled() -> None:
    sink, inner, metrics, clock = policy(SinkConfig(dedup=DedupConfig(summary=False)))
    for _ in range(3):
        await sink.send(sample_alert())
    clock.now += 301
    await sink.close()
    assert len(inner.alerts) == 1
    assert filtered(metrics, "duplicate") == 2


@pytest.mark.asyncio
async def test_without_dedup_every_alert_passes() -> None:
    sink, inner, _, _ = policy(SinkConfig())
    for _ in range(3):
        await sink.send(sample_alert())
    assert len(inner.alerts) == 3


@pytest.mark.asyncio
async def test_close_sends_pending_summaries_before_closing_the_inner_sink() -> None:
    sink, inner, _, _ = policy(DEDUP)
    await sink.send(sample_alert(namespace="a"))
    await sink.send(sample_alert(namespace="a"))
    await sink.send(sample_alert(namespace="b"))
    await sink.close()
    assert [a.context.get("repeat_count") for a in inner.alerts] == [None, None, 1]
    assert inner.calls[-1] == "close"


@pytest.mark.asyncio
async def test_open_windows_are_capped_and_the_oldest_summarised() -> None:
    sink, inner, _, _ = policy(SinkConfig(dedup=DedupConfig(window_seconds=300, max_windows=3)))
    await sink.send(sample_alert(namespace="ns-0"))
    await sink.send(sample_alert(namespace="ns-0"))
    for i in range(1, 50):
        await sink.send(sample_alert(namespace=f"ns-{i}"))
        assert len(sink._windows) <= 3
    summaries = [a for a in inner.alerts if "repeat_count" in a.context]
    assert [(a.context["namespace"], a.context["repeat_count"]) for a in summaries] == [("ns-0", 1)]
    assert len(inner.alerts) == 51


@pytest.mark.asyncio
async def test_background_task_sends_summaries_when_windows_close() -> None:
    inner = Recorder()
    sink = PolicySink(inner, SinkConfig(dedup=DedupConfig(window_seconds=0.05)), Metrics())
    await sink.start()
    try:
        await sink.send(sample_alert())
        await sink.send(sample_alert())
        async with asyncio.timeout(5):
            while len(inner.alerts) < 2:
                await asyncio.sleep(0.01)
        assert inner.alerts[1].context["repeat_count"] == 1
        assert inner.alerts[1].output.startswith("[repeated 1 more times in 0.05s] ")
    finally:
        await sink.close()
    assert len(inner.alerts) == 2


@pytest.mark.asyncio
async def test_lifecycle_and_health_delegate_to_the_inner_sink() -> None:
    sink, inner, _, _ = policy(SinkConfig())
    assert sink.name == "rec"
    await sink.start()
    await sink.flush()
    inner.ok = False
    assert not sink.healthy()
    await sink.close()
    assert inner.calls == ["start", "flush", "close"]


# ------------------------------------------------------------------ property

_keys = st.tuples(st.sampled_from(["r1", "r2"]), st.sampled_from(["ns-a", "ns-b", "ns-c"]))


@settings(max_examples=60, deadline=None)
@given(st.lists(_keys, max_size=40))
def test_within_one_window_each_key_is_sent_once_and_repeats_are_summarised(keys) -> None:
    async def scenario() -> list[Alert]:
        sink, inner, _, _ = policy(DEDUP)
        for rule, ns in keys:
            await sink.send(sample_alert(rule, namespace=ns))
        await sink.close()
        return inner.alerts

    alerts = asyncio.run(scenario())
    seen = Counter(keys)
    firsts = [(a.rule, a.context["namespace"]) for a in alerts if "repeat_count" not in a.context]
    summaries = {
        (a.rule, a.context["namespace"]): a.context["repeat_count"]
        for a in alerts
        if "repeat_count" in a.context
    }
    assert sorted(firsts) == sorted(seen)
    assert summaries == {k: n - 1 for k, n in seen.items() if n > 1}


# ------------------------------------------------------- batches and bounds


class BatchRecorder(Recorder):
    """Records ``send_many`` calls, each as one list, and says durable."""

    durable = True
    concurrency = 3
    max_call = 7

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[Alert]] = []

    async def send_many(self, alerts) -> None:  # type: ignore[no-untyped-def]
        self.batches.append(list(alerts))


@pytest.mark.asyncio
async def test_send_many_filters_and_dedups_in_order_and_skips_empty_batches() -> None:
    inner, metrics, clock = BatchRecorder(), Metrics(), Clock()
    sink = PolicySink(
        inner, SinkConfig(min_priority="warning", dedup=DedupConfig(window_seconds=300)), metrics, clock
    )
    a, b = sample_alert("A"), sample_alert("B")
    quiet = sample_alert("A", Priority.DEBUG)
    assert await sink.send_many([a, quiet, b, sample_alert("A")]) is None
    assert [[x.rule for x in batch] for batch in inner.batches] == [["A", "B"]]
    assert filtered(metrics, "filter") == 1 and filtered(metrics, "duplicate") == 1
    await sink.send_many([sample_alert("A"), quiet])  # nothing left: the inner sink is not called
    assert len(inner.batches) == 1


def test_the_wrapper_reports_what_the_inner_sink_is() -> None:
    inner = BatchRecorder()
    config = SinkConfig(buffer=dataclasses.replace(SinkConfig().buffer, max_alerts=17))
    sink = PolicySink(inner, config, Metrics())
    assert (sink.name, sink.durable, sink.concurrency, sink.max_call) == ("rec", True, 3, 7)
    assert sink.config_key == inner.config_key  # config errors name the inner sink's keys
    assert sink.transactional is inner.transactional
    assert sink.buffer.max_alerts == 17


@pytest.mark.asyncio
async def test_dedup_keys_ignore_mapping_order() -> None:
    sink, inner, metrics, _ = policy(SinkConfig(dedup=DedupConfig(keys=("labels",))))
    await sink.send(sample_alert(labels={"a": 1, "b": 2}))
    await sink.send(sample_alert(labels={"b": 2, "a": 1}))
    await sink.send(sample_alert(labels={"a": 1, "b": 3}))
    assert len(inner.alerts) == 2 and filtered(metrics, "duplicate") == 1


@pytest.mark.asyncio
async def test_window_bytes_are_given_back_when_windows_close() -> None:
    """Two windows fit exactly in ``max_bytes``; a third closes the oldest
    early.  Windows that closed give their bytes back, so the next two fit
    again without closing anything early."""
    size = len(sample_alert(namespace="ns-0").to_json())
    config = SinkConfig(dedup=DedupConfig(window_seconds=300, max_bytes=2 * size, max_windows=100))
    sink, inner, _, clock = policy(config)
    for ns in ("ns-0", "ns-1", "ns-0", "ns-1"):  # one repeat each
        await sink.send(sample_alert(namespace=ns))
    assert len(inner.alerts) == 2  # both windows open at exactly max_bytes
    await sink.send(sample_alert(namespace="ns-2"))
    assert [a.context.get("repeat_count") for a in inner.alerts[2:]] == [1, None]  # ns-0 closed early
    clock.now += 300
    await sink.flush()
    assert len(inner.alerts) == 5 and not sink._windows  # ns-1's summary; every window closed
    for ns in ("ns-3", "ns-4", "ns-3", "ns-4"):
        await sink.send(sample_alert(namespace=ns))
    assert len(inner.alerts) == 7  # nothing closed early: the bytes were given back


@pytest.mark.asyncio
async def test_summary_time_and_host_come_from_the_repeats() -> None:
    sink, inner, _, clock = policy(DEDUP)
    await sink.send(sample_alert(time_ns=T0))
    await sink.send(sample_alert(time_ns=T0 + 7 * 10**9))
    await sink.send(sample_alert(time_ns=T0 + 3 * 10**9))  # late arrival: not the last seen
    clock.now += 300
    await sink.flush()
    summary = inner.alerts[-1]
    assert summary.time_ns == T0 + 7 * 10**9
    assert summary.hostname == inner.alerts[0].hostname == "eventd-0"


@pytest.mark.asyncio
async def test_only_a_dedup_policy_runs_a_background_task() -> None:
    def ticker_tasks() -> list[str]:
        return [t.get_name() for t in asyncio.all_tasks() if t.get_name() == "sink-rec-dedup"]

    plain, _, _, _ = policy(SinkConfig())
    await plain.start()
    assert ticker_tasks() == []
    await plain.close()
    dedup, _, _, _ = policy(DEDUP)
    await dedup.start()
    await dedup.start()  # started twice: still one task
    assert ticker_tasks() == ["sink-rec-dedup"]
    await dedup.close()  # the task is awaited, not only cancelled
    assert ticker_tasks() == []


class TransactionRecorder(Recorder):
    """Records what each transaction would commit."""

    def __init__(self) -> None:
        super().__init__()
        self.transactions: list[tuple[list[str], object]] = []

    async def send_transaction(self, alerts, consumed) -> None:  # type: ignore[no-untyped-def]
        self.transactions.append(([a.rule for a in alerts], consumed))


@pytest.mark.asyncio
async def test_a_transaction_carries_the_kept_alerts_and_always_its_offsets() -> None:
    inner, metrics = TransactionRecorder(), Metrics()
    sink = PolicySink(
        inner, SinkConfig(rules=("A",), dedup=DedupConfig(window_seconds=300)), metrics, Clock()
    )
    first, second = ConsumedOffsets("g", {}, 1, lambda: True), ConsumedOffsets("g", {}, 1, lambda: True)
    await sink.send_transaction([sample_alert("A"), sample_alert("B"), sample_alert("A")], first)
    await sink.send_transaction([sample_alert("A")], second)  # nothing left: offsets still committed
    assert inner.transactions == [(["A"], first), ([], second)]
    assert filtered(metrics, "filter") == 1 and filtered(metrics, "duplicate") == 2


@pytest.mark.asyncio
async def test_a_failing_summary_is_logged_and_dedup_goes_on() -> None:
    class Failing(Recorder):
        fail = True

        async def send(self, alert: Alert) -> None:
            if self.fail and "repeat_count" in alert.context:
                raise OSError("receiver gone")
            await super().send(alert)

    inner = Failing()
    sink = PolicySink(inner, SinkConfig(dedup=DedupConfig(window_seconds=0.05)), Metrics())
    with structlog.testing.capture_logs() as logs:
        await sink.start()
        try:
            await sink.send(sample_alert())
            await sink.send(sample_alert())
            await wait_until(lambda: any(e["event"] == "dedup_summary_failed" for e in logs))
            inner.fail = False
            await sink.send(sample_alert(namespace="other"))
            await sink.send(sample_alert(namespace="other"))
            await wait_until(lambda: len(inner.alerts) == 3)  # the ticker still runs
        finally:
            await sink.close()
    failed = [e for e in logs if e["event"] == "dedup_summary_failed"]
    assert failed[0]["sink"] == "rec" and failed[0]["log_level"] == "error"
    assert inner.alerts[-1].context["repeat_count"] == 1


@pytest.mark.parametrize(
    ("window", "interval"),
    [(0.01, 0.01), (0.05, 0.01), (0.1, 0.01), (0.5, 0.05), (5.0, 0.5), (10.0, 1.0), (60.0, 1.0)],
)
def test_windows_are_checked_ten_times_per_window_between_10_ms_and_a_second(
    window: float, interval: float
) -> None:
    """A window closes at most a tenth of its length late (at most 1 s), and
    the ticker never spins faster than every 10 ms."""
    assert tick_interval(window) == pytest.approx(interval)
