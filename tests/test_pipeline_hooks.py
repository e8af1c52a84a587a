"""The pipeline's per-event hooks, driven through ``Pipeline.put`` and ``run``.

Other tests call the image-pull counter by hand; these go through the
pipeline, so a hook it stops calling (the image-pull metric, the cluster
name, the event and alert counters) fails here.  What a batch's ``done``
means is in ``test_pipeline_delivery.py``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
import structlog.testing

from eventd.alerts import Alert
from eventd.engine.loader import load_rules
from eventd.engine.matcher import Matcher
from eventd.events.falco_json import falco_alert_event
from eventd.events.model import K8S_AUDIT, Event
from eventd.metrics import Metrics
from eventd.pipeline import Pipeline
from eventd.sinks.base import Receipt, Sink
from eventd.sources.base import Batch
from tests.support.builders import audit_event, falco_alert, lease_renewal, pod_create

RULES = """\
- rule: Pod created
  desc: a pod was created
  condition: ka.verb=create and ka.target.resource=pods
  output: pod created (name=%ka.target.name)
  priority: WARNING
  source: k8s_audit
"""


class Recorder(Sink):
    """Keeps what it is given."""

    def __init__(self, name: str, *, durable: bool) -> None:
        self.name = name
        self.durable = durable  # type: ignore[misc]
        self.alerts: list[Alert] = []

    async def send(self, alert: Alert) -> None:
        self.alerts.append(alert)

    async def send_many(self, alerts: Sequence[Alert]) -> Receipt:
        self.alerts.extend(alerts)
        return None


@pytest.fixture
def matcher(tmp_path: Path) -> Matcher:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return Matcher(load_rules([rules]))


def image_pulls(metrics: Metrics) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == "eventd_image_pulls_total":
                out[(s.labels["registry"], s.labels["trust"])] += int(s.value)
    return out


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def run_batches(pipeline: Pipeline, batches: list[Batch]) -> None:
    task = asyncio.create_task(pipeline.run())
    try:
        for batch in batches:
            await pipeline.put(batch)
        await pipeline.drain()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def audit(doc: dict) -> Event:
    return Event(K8S_AUDIT, doc, "webhook")


@pytest.mark.asyncio
async def test_image_pulls_are_counted_for_every_event_that_goes_through(matcher: Matcher) -> None:
    metrics = Metrics()
    sink = Recorder("stdout", durable=False)
    pipeline = Pipeline(matcher, [sink], metrics, trusted_registries=("ghcr.io/acme",))
    events = [
        audit(pod_create("ghcr.io/acme/web:1", "quay.io/x/y:2")),
        audit(pod_create("ghcr.io/acme/web:1", name="again")),
        audit(lease_renewal()),  # no image
    ]
    batches = [Batch(events[:1], "k8s_audit_webhook"), Batch(events[1:], "k8s_audit_webhook")]
    await run_batches(pipeline, batches)
    assert image_pulls(metrics) == {("ghcr.io", "trusted"): 2, ("quay.io", "untrusted"): 1}


@pytest.mark.asyncio
async def test_alerts_reach_every_sink_with_host_cluster_and_counts(matcher: Matcher) -> None:
    metrics = Metrics()
    kept, durable = Recorder("stdout", durable=False), Recorder("file", durable=True)
    pipeline = Pipeline(matcher, [kept, durable], metrics, hostname="node-7", cluster="prod")
    falco = falco_alert_event(falco_alert(rule="Terminal shell in container"), origin="http")
    events = [audit(pod_create("nginx")), audit(audit_event(verb="get")), falco]
    await run_batches(pipeline, [Batch(events, "k8s_audit_webhook")])
    for sink in (kept, durable):
        assert [a.rule for a in sink.alerts] == ["Pod created", "Terminal shell in container"]
        assert all(a.context["cluster"] == "prod" for a in sink.alerts)
    assert kept.alerts[0].hostname == "node-7"
    assert sample(metrics, "eventd_events_received_total", source="k8s_audit_webhook") == 3
    assert sample(metrics, "eventd_events_matched_total", source="k8s_audit_webhook") == 1
    assert (
        sample(metrics, "eventd_alerts_total", rule="Pod created", priority="Warning", source="k8s_audit")
        == 1
    )


@pytest.mark.asyncio
async def test_without_a_cluster_name_none_is_added(matcher: Matcher) -> None:
    sink = Recorder("stdout", durable=False)
    await run_batches(Pipeline(matcher, [sink], Metrics()), [Batch([audit(pod_create("nginx"))], "x")])
    assert len(sink.alerts) == 1 and "cluster" not in sink.alerts[0].context


class Stuck(Recorder):
    """A best-effort sink that never finishes a call."""

    async def send_many(self, alerts: Sequence[Alert]) -> Receipt:
        await asyncio.Event().wait()
        return None


class Refusing(Recorder):
    """A durable sink that cannot take alerts now (a full spool)."""

    def accepting(self) -> bool:
        return False


class Broken(Recorder):
    """A sink whose filter raises: a bug in processing a batch."""

    def accepts(self, alert: Alert) -> bool:
        raise RuntimeError("filter bug")


@pytest.mark.asyncio
async def test_offer_refuses_when_closing_or_a_durable_sink_cannot_take_alerts(matcher: Matcher) -> None:
    refusing = Pipeline(matcher, [Refusing("kafka", durable=True)], Metrics())
    assert not refusing.accepting()
    assert refusing.offer(Batch([audit(pod_create("nginx"))], "k8s_audit_webhook")) is False
    pipeline = Pipeline(matcher, [Recorder("stdout", durable=False)], Metrics())
    assert pipeline.offer(Batch([audit(pod_create("nginx"))], "k8s_audit_webhook")) is True
    task = asyncio.create_task(pipeline.run())
    try:
        await pipeline.drain()
        assert pipeline.offer(Batch([audit(pod_create("nginx"))], "k8s_audit_webhook")) is False
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_rejections_are_counted_by_source_and_reason(matcher: Matcher) -> None:
    from eventd.events.errors import DecodeError

    metrics = Metrics()
    pipeline = Pipeline(matcher, [], metrics)
    pipeline.rejected("k8s_audit_webhook", DecodeError("invalid_json", "bad"), 3)
    pipeline.rejected("falco_http", "priority")
    assert (
        sample(metrics, "eventd_events_rejected_total", source="k8s_audit_webhook", reason="invalid_json")
        == 3
    )
    assert sample(metrics, "eventd_events_rejected_total", source="falco_http", reason="priority") == 1


@pytest.mark.asyncio
async def test_drain_gives_best_effort_sinks_a_bounded_time(matcher: Matcher) -> None:
    durable, stuck = Recorder("file", durable=True), Stuck("stdout", durable=False)
    pipeline = Pipeline(matcher, [durable, stuck], Metrics())
    task = asyncio.create_task(pipeline.run())
    try:
        await pipeline.put(Batch([audit(pod_create("nginx"))], "k8s_audit_webhook"))
        with structlog.testing.capture_logs() as logs:
            await asyncio.wait_for(pipeline.drain(best_effort_seconds=0.05), 5)
        assert [a.rule for a in durable.alerts] == ["Pod created"]  # durable lanes are drained whole
        assert {"event": "best_effort_sinks_not_drained", "sinks": 1, "log_level": "warning"} in logs
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.asyncio
async def test_a_batch_that_fails_to_process_fails_its_done_and_the_next_one_goes_on(
    matcher: Matcher,
) -> None:
    broken = Broken("stdout", durable=False)
    pipeline = Pipeline(matcher, [broken], Metrics())
    loop = asyncio.get_running_loop()
    bad = Batch([audit(pod_create("nginx"))], "k8s_audit_webhook", done=loop.create_future())
    quiet = Batch([audit(lease_renewal())], "k8s_audit_webhook", done=loop.create_future())
    task = asyncio.create_task(pipeline.run())
    try:
        await pipeline.put(bad)
        await pipeline.put(quiet)
        with pytest.raises(RuntimeError, match="batch processing failed"):
            await asyncio.wait_for(bad.done, 5)
        await asyncio.wait_for(quiet.done, 5)  # no alert, nothing to filter: processed
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.asyncio
async def test_swapped_rules_apply_from_the_next_batch(matcher: Matcher, tmp_path: Path) -> None:
    metrics = Metrics()
    sink = Recorder("stdout", durable=False)
    pipeline = Pipeline(matcher, [sink], metrics)
    other = tmp_path / "other.yaml"
    other.write_text(
        RULES.replace("Pod created", "Renamed").replace("pods", "leases")
        + RULES.replace("- rule: Pod created", "- rule: Also")
    )
    pipeline.swap_matcher(Matcher(load_rules([other])))
    assert sample(metrics, "eventd_rules_loaded") == 2
    await run_batches(pipeline, [Batch([audit(pod_create("nginx"))], "x")])
    assert [a.rule for a in sink.alerts] == ["Also"]
