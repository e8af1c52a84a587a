"""The webhook skips ``EventList`` items no rule or observer needs
(``sources/webhook_items.py``), and nothing anyone can see changes.

Differential: the same sequence of bodies goes over real HTTP to two real
webhook sources, each feeding a real ``Pipeline`` with the built-in rule
packs and a durable sink; one pipeline offers its ``RecordFilter`` (items
are skipped), the other offers none (the path taken when rules cannot be
judged from a header: every item decoded).  The HTTP answers, the alerts
and every event, alert and image counter must be identical.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventd.config import AuditWebhookConfig, Config, Listen
from eventd.daemon import build_matcher
from eventd.engine.fields.pullsecrets import STORE
from eventd.engine.matcher import Matcher
from eventd.metrics import Metrics
from eventd.pipeline import Pipeline, RecordFilter
from eventd.sources import audit_webhook
from eventd.sources.audit_webhook import AuditWebhookSource
from tests.support.builders import audit_event, lease_renewal, pod
from tests.support.http_inlet import RecordingInlet
from tests.test_pipeline_hooks import Recorder

PATH = "/k8s-audit"
JSON = {"Content-Type": "application/json"}
#: The counters a skipped item could change if it were handled wrongly.
COUNTERS = (
    "eventd_events_received_total",
    "eventd_events_matched_total",
    "eventd_events_dropped_total",
    "eventd_events_rejected_total",
    "eventd_alerts_total",
    "eventd_image_pulls_total",
)


class Unfiltered(Pipeline):
    """A pipeline offering no ``RecordFilter``: the webhook decodes every item."""

    def record_filter(self) -> RecordFilter | None:
        return None


_MATCHER: list[Matcher] = []


def builtin_matcher() -> Matcher:
    if not _MATCHER:
        _MATCHER.append(build_matcher(Config()))
    return _MATCHER[0]


def config() -> AuditWebhookConfig:
    return dataclasses.replace(AuditWebhookConfig(listen=Listen("127.0.0.1", 0)), path=PATH)


@contextlib.asynccontextmanager
async def webhook(pipeline: Pipeline, metrics: Metrics) -> AsyncIterator[str]:
    source = AuditWebhookSource(config(), metrics)
    consumer = asyncio.create_task(pipeline.run())
    task = asyncio.create_task(source.run(pipeline))
    for _ in range(1000):
        if source.ready() or task.done():
            break
        await asyncio.sleep(0.005)
    assert source.address is not None, task.result()
    try:
        yield f"http://127.0.0.1:{source.address[1]}{PATH}"
    finally:
        await source.stop()
        await asyncio.wait_for(task, 5)
        await pipeline.drain(1.0)
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer


def counters(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name in COUNTERS:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def run_bodies(bodies: list[bytes], *, skip: bool) -> tuple[list[Any], list[bytes], dict[Any, float]]:
    STORE.clear()  # the pull-secret store is the process's: both runs start empty
    metrics = Metrics()
    sink = Recorder("collector", durable=True)  # durable: a batch's ``done`` waits for it
    pipeline = (Pipeline if skip else Unfiltered)(builtin_matcher(), [sink], metrics)
    answers: list[Any] = []
    async with webhook(pipeline, metrics) as url, aiohttp.ClientSession() as session:
        for body in bodies:
            async with session.post(url, data=body, headers=JSON) as resp:
                answers.append((resp.status, await resp.read()))
    return answers, [alert.to_json() for alert in sink.alerts], counters(metrics)


def _with_pull_secret(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    if kind == "secret-type":
        doc["requestObject"] = {"type": "kubernetes.io/dockerconfigjson", "metadata": {"name": "regcred"}}
    elif kind == "pull-secrets":
        doc["requestObject"] = {"imagePullSecrets": [{"name": "regcred"}], **(doc.get("requestObject") or {})}
    return doc


def _broken(doc: dict[str, Any], how: str) -> Any:
    """``doc`` made into something the webhook must reject (or left alone)."""
    if how == "no-timestamp":
        doc.pop("stageTimestamp")
    elif how == "int-audit-id":
        doc["auditID"] = 7
    elif how == "no-audit-id":
        doc.pop("auditID")
    elif how == "bad-version":
        doc["apiVersion"] = "audit.k8s.io/v2"
    elif how == "not-an-event":
        return ["not", "an", "event"]
    return doc


_events = st.builds(
    _broken,
    st.builds(
        _with_pull_secret,
        st.builds(
            audit_event,
            verb=st.sampled_from(["create", "get", "patch", "delete", "update", "list", "watch"]),
            resource=st.sampled_from(
                ["pods", "secrets", "leases", "deployments", "configmaps", "serviceaccounts", "clusterroles"]
            ),
            subresource=st.sampled_from([None, None, "status", "exec", "ephemeralcontainers"]),
            namespace=st.sampled_from(["kube-system", "default", None]),
            user=st.sampled_from(["admin", "system:anonymous", "system:node:n1", "alice"]),
            stage=st.sampled_from(["ResponseComplete", "RequestReceived", "ResponseStarted"]),
            request=st.one_of(
                st.none(),
                st.lists(
                    st.sampled_from(["nginx", "evil.io/x:1", "busybox:latest"]), min_size=1, max_size=2
                ).map(lambda imgs: pod(*imgs)),
            ),
        ),
        st.sampled_from(["none", "none", "pull-secrets", "secret-type"]),
    ),
    st.sampled_from(
        ["ok"] * 8 + ["no-timestamp", "int-audit-id", "no-audit-id", "bad-version", "not-an-event"]
    ),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pool=st.lists(st.one_of(_events, st.builds(lease_renewal)), min_size=1, max_size=12),
    picks=st.lists(st.lists(st.integers(0, 100), max_size=15), min_size=1, max_size=3),
    seed=st.integers(0, 2**32),
)
def test_skipping_changes_no_answer_alert_or_counter(
    pool: list[Any], picks: list[list[int]], seed: int
) -> None:
    """Bodies drawn from one pool, so items repeat within and across bodies
    (duplicates, and retried batches); some bodies are JSON arrays of
    events, which are never skipped."""
    rnd = random.Random(seed)
    bodies = []
    for pick in picks:
        items = [pool[i % len(pool)] for i in pick]
        if rnd.random() < 0.15:
            bodies.append(orjson.dumps(items))
        else:
            bodies.append(
                orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items})
            )
    skipping = asyncio.run(run_bodies(bodies, skip=True))
    decoding = asyncio.run(run_bodies(bodies, skip=False))
    assert skipping == decoding


class FilteringInlet(RecordingInlet):
    """The shared recording inlet, with the real ``RecordFilter`` of the built-in rules."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__("k8s_audit_webhook")
        self.filter = RecordFilter.build(builtin_matcher(), metrics)

    def record_filter(self) -> RecordFilter | None:
        return self.filter


@pytest.mark.asyncio
# More leases than LARGE_BATCH_EVENTS: the batch is judged on a worker thread, and skips the same.
@pytest.mark.parametrize("leases", [1, audit_webhook.LARGE_BATCH_EVENTS + 1])
async def test_items_no_rule_needs_are_accepted_claimed_and_counted_but_not_decoded(leases: int) -> None:
    """Not vacuous: a lease renewal never reaches the pipeline as an event, yet
    it is accepted, counted as received, and its retry is a duplicate."""
    metrics = Metrics()
    inlet = FilteringInlet(metrics)
    create = audit_event(resource="pods", request=pod("evil.io/x:1"))
    items = [lease_renewal(holder=f"holder-{i}") for i in range(leases)] + [create]
    body = orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items})
    n = len(items)
    source = AuditWebhookSource(config(), metrics)
    task = asyncio.create_task(source.run(inlet))
    for _ in range(1000):
        if source.ready():
            break
        await asyncio.sleep(0.005)
    assert source.address is not None
    url = f"http://127.0.0.1:{source.address[1]}{PATH}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=body, headers=JSON) as first:
                assert orjson.loads(await first.read()) == {"accepted": n, "duplicates": 0, "rejected": 0}
            async with session.post(url, data=body, headers=JSON) as again:
                assert orjson.loads(await again.read()) == {"accepted": 0, "duplicates": n, "rejected": 0}
    finally:
        await source.stop()
        await asyncio.wait_for(task, 5)
    assert [doc["auditID"] for doc in inlet.docs()] == [create["auditID"]]
    assert inlet.batches[0].prefiltered_with is builtin_matcher()
    received = metrics.registry.get_sample_value(
        "eventd_events_received_total", {"source": "k8s_audit_webhook"}
    )
    assert received == leases  # the skipped leases; the pod create is counted by the pipeline (none here)
