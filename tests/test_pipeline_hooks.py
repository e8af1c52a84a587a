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

from eventd.alerts import Alert
from eventd.engine.loader import load_rules
from eventd.engine.matcher import Matcher
from eventd.events.falco_json import falco_alert_event
from eventd.events.model import K8S_AUDIT, Event
from eventd.metrics import Metrics
from eventd.pipeline import Pipeline
from eventd.sinks.base import Receipt, Sink
from eventd.sources.base import Batch
from tests.builders import audit_event, falco_alert, lease_renewal, pod_create

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
