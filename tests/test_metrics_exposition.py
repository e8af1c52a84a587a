"""``/metrics`` passes Prometheus' own linter and never carries event-derived high-cardinality labels.

The metrics are driven through the real pipeline and image counter on a
generated audit corpus plus Falco alerts, so the label values checked are the
ones production would produce.  ``promtool`` comes from Debian's
``prometheus`` package; CI installs it, so its absence is a failure here.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.corpus import generate
from eventd.alerts import Alert
from eventd.engine.loader import load_rules
from eventd.engine.matcher import Matcher
from eventd.events.errors import DecodeError
from eventd.events.falco_json import falco_alert_event
from eventd.events.model import K8S_AUDIT, SOURCES, Event
from eventd.image_metrics import INVALID
from eventd.metrics import Metrics
from eventd.pipeline import Pipeline
from eventd.priority import Priority
from eventd.rulepacks import builtin_rule_files
from eventd.sinks.base import Sink
from eventd.sources.base import Batch
from tests.support.builders import falco_alert, pod_create

CAP = 3
TRUSTED = ("myregistry.io", "gcr.io/my-project", "docker.io/library")
SOURCE_NAMES = ("k8s_audit_webhook", "falco_http")
SINK_NAMES = ("stdout", "kafka")
#: Every label name a metric may have, and nothing taken from an event's identity.
ALLOWED_LABELS = {
    *("source", "reason", "result", "rule", "priority", "sink", "registry", "trust", "version"),
    "listener",
    # container_image_pulls_total{image}: a normalised repository, capped like registry (issue 13).
    "image",
    # The client library's platform and GC collectors (python_info, python_gc_*).
    *("implementation", "major", "minor", "patchlevel", "generation"),
}
#: The listeners' names: the ops server and the HTTP inputs.
LISTENER_NAMES = ("server", *SOURCE_NAMES)


class _Recorder(Sink):
    """Keeps the alerts, to learn their uuids (named like a real sink: its
    lane's metrics carry the name)."""

    name = "stdout"

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    async def send(self, alert: Alert) -> None:
        self.alerts.append(alert)


def _events() -> tuple[list[Event], list[Event]]:
    audit = [Event(K8S_AUDIT, doc, "webhook") for doc in generate(1500, seed=9, pod_ratio=0.2)]
    # more registries than the cap, and an invalid reference
    audit += [Event(K8S_AUDIT, pod_create(f"r{i}.example.com/app:1", name=f"extra-{i}")) for i in range(8)]
    audit.append(Event(K8S_AUDIT, pod_create("myregistry.io/App")))
    falco = [
        falco_alert_event(falco_alert(**{"k8s.pod.name": f"shell-{i}"}), origin="http") for i in range(3)
    ]
    return audit, falco


async def _drive(pipeline: Pipeline, batches: list[Batch]) -> None:
    task = asyncio.create_task(pipeline.run())
    for batch in batches:
        await pipeline.put(batch)
    await pipeline.drain()
    task.cancel()


@pytest.fixture(scope="module")
def exercised() -> dict[str, Any]:
    """A Metrics with every metric used as the daemon uses it, and what went in."""
    metrics = Metrics(label_value_cap=CAP)
    ruleset = load_rules(builtin_rule_files())
    matcher = Matcher(ruleset, rule_matching="all")
    sink = _Recorder()
    pipeline = Pipeline(
        matcher, [sink], metrics, hostname="eventd-0", cluster="prod", trusted_registries=TRUSTED
    )
    pipeline.swap_matcher(matcher)
    audit, falco = _events()  # the pipeline counts their image pulls
    batches = [
        Batch(audit[:700], SOURCE_NAMES[0]),
        Batch(audit[700:], SOURCE_NAMES[0]),
        Batch(falco, "falco_http"),
    ]
    asyncio.run(_drive(pipeline, batches))
    pipeline.rejected(SOURCE_NAMES[0], DecodeError("invalid_json", "bad"), 2)
    pipeline.rejected("falco_http", "priority")
    for source in SOURCE_NAMES:
        metrics.events_dropped.labels(source, "duplicate").inc()
        metrics.source_reconnects.labels(source).inc()
        metrics.source_up.labels(source).set(1)
        metrics.source_possible_loss.labels(source, "truncated").inc()
        metrics.checkpoint_unusable.labels(source, "invalid").inc()
    metrics.rule_reloads.labels("ok").inc()
    metrics.rule_reloads.labels("refused").inc()
    for name in SINK_NAMES:
        metrics.sink_deliveries.labels(name).inc(5)
        metrics.sink_failures.labels(name, "timeout").inc()
        metrics.sink_retries.labels(name).inc()
        metrics.sink_dropped.labels(name, "spool_full").inc()
        metrics.sink_filtered.labels(name, "duplicate").inc()
        metrics.sink_queue_depth.labels(name).set(2)
        metrics.spool_bytes.labels(name).set(4096)
        metrics.spool_alerts.labels(name).set(3)
        metrics.spool_capacity_bytes.labels(name).set(1 << 20)
    for listener in LISTENER_NAMES:  # what eventd.httpserver counts
        metrics.listener_connections.labels(listener).set(1)
        metrics.listener_closed.labels(listener, "header_timeout").inc()
        metrics.tls_handshake_failures.labels(listener, "no_certificate").inc()
        metrics.listener_accept_errors.labels(listener, "EMFILE").inc()
    return {
        "metrics": metrics,
        "text": metrics.exposition().decode(),
        # eventd's rules, and the (capped) names of Falco alerts passed through.
        "rules": {r.name for r in ruleset.rules} | {e.doc["rule"] for e in falco} | {"other"},
        "falco_sources": {e.doc["source"] for e in falco} | {"other"},
        "docs": [e.doc for e in audit + falco],
        "alerts": sink.alerts,
    }


def _promtool(text: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install Debian's 'prometheus' package (apt-get install prometheus)"
    return subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )


def _labelled_samples(text: str) -> list[tuple[str, dict[str, str]]]:
    return [(s.name, s.labels) for f in text_string_to_metric_families(text) for s in f.samples]


# ----------------------------------------------------------------- promtool


def test_promtool_accepts_the_exposition(exercised: dict[str, Any]) -> None:
    result = _promtool(exercised["text"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_promtool_would_report_a_bad_name() -> None:
    """The check above is live: a counter without ``_total`` is reported."""
    bad = "# HELP eventd_things Things.\n# TYPE eventd_things counter\neventd_things 1\n"
    result = _promtool(bad)
    assert result.returncode != 0
    assert "_total" in result.stdout + result.stderr


def test_every_metric_is_exercised(exercised: dict[str, Any]) -> None:
    """So that the promtool check covers every family, with samples."""
    for family in exercised["metrics"].registry.collect():
        assert family.samples, f"{family.name} has no samples: exercise it in this test"


# -------------------------------------------------------------- cardinality


def test_label_names_are_the_allowed_ones(exercised: dict[str, Any]) -> None:
    for name, labels in _labelled_samples(exercised["text"]):
        assert set(labels) - {"le"} <= ALLOWED_LABELS, (name, labels)


def test_label_values_are_fixed_names(exercised: dict[str, Any]) -> None:
    values: dict[str, set[str]] = {}
    for _, labels in _labelled_samples(exercised["text"]):
        for key, value in labels.items():
            values.setdefault(key, set()).add(value)
    assert values["rule"] <= exercised["rules"]
    assert values["priority"] <= {p.label for p in Priority}
    assert values["source"] <= {*SOURCE_NAMES, *SOURCES, *exercised["falco_sources"]}
    assert values["sink"] == set(SINK_NAMES)
    assert values["trust"] == {"trusted", "untrusted"}
    assert values["result"] == {"ok", "refused"}
    assert values["listener"] == set(LISTENER_NAMES)
    # capped: CAP registries from events, then the overflow and invalid buckets
    assert len(values["registry"] - {"other", INVALID}) == CAP
    assert {"other", INVALID} <= values["registry"]
    assert len(values["image"] - {"other", INVALID}) == CAP and "other" in values["image"]


def _event_values(doc: Any) -> set[str]:
    """Every string inside an event document: names, users, ids, images..."""
    if isinstance(doc, str):
        return {doc}
    if isinstance(doc, dict):
        return set().union(*map(_event_values, doc.values())) if doc else set()
    if isinstance(doc, list):
        return set().union(*map(_event_values, doc)) if doc else set()
    return set()


def test_no_label_carries_event_identity(exercised: dict[str, Any]) -> None:
    identity: set[str] = {a.uuid for a in exercised["alerts"]}
    for doc in exercised["docs"]:
        ref = doc.get("objectRef") or {}
        identity |= {doc.get("auditID"), (doc.get("user") or {}).get("username"), ref.get("name")}
        identity |= {ref.get("namespace"), *doc.get("sourceIPs", ())}
        identity |= {v for k, v in (doc.get("output_fields") or {}).items() if k.startswith("k8s.")}
        identity |= _event_values(doc.get("requestObject", {}).get("metadata", {}))
    identity -= {None, ""}
    assert len(identity) > 1000 and exercised["alerts"]
    leaked = {
        (name, key, value)
        for name, labels in _labelled_samples(exercised["text"])
        for key, value in labels.items()
        if value in identity
    }
    assert not leaked


# ------------------------------------------- what existing Falco set-ups read


def test_default_process_and_python_collectors(exercised: dict[str, Any]) -> None:
    """Every exporter's standard families, which generic dashboards use."""
    names = {s.name for f in text_string_to_metric_families(exercised["text"]) for s in f.samples}
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "python_info",
        "python_gc_collections_total",
    ):
        assert name in names, name
    assert "falco_events" not in names  # falco-exporter's family is off by default


def test_falco_exporter_family_when_switched_on() -> None:
    """``falco_events`` with falco-exporter's labels and values
    (pkg/exporter/exporter.go in falcosecurity/falco-exporter: priority as
    Falco's number, source as the gRPC enum name, k8s names from the output
    fields), counted for the Falco alerts eventd receives, capped per label."""
    metrics = Metrics(label_value_cap=CAP, falco_events=True)
    pipeline = Pipeline(Matcher(load_rules(builtin_rule_files())), [_Recorder()], metrics, hostname="e")
    alerts = [falco_alert(**{"k8s.pod.name": f"shell-{i}"}) for i in range(CAP + 2)]
    alerts.append(falco_alert(**{"k8s.ns.name": None, "k8s.pod.name": "<NA>"}))
    alerts.append({**falco_alert(), "source": "k8saudit-eks", "priority": "Critical", "hostname": "node-2"})
    batch = Batch([falco_alert_event(a, origin="http") for a in alerts], "falco_http")
    asyncio.run(_drive(pipeline, [batch]))
    text = metrics.exposition().decode()
    assert _promtool(text).returncode == 0, _promtool(text).stdout
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "falco_events"]
    got = {tuple(sorted(s.labels.items())): s.value for s in family.samples}
    assert all(s.name == "falco_events" for s in family.samples)
    assert {frozenset(s.labels) for s in family.samples} == {
        frozenset({"rule", "priority", "hostname", "source", "k8s_ns_name", "k8s_pod_name"})
    }

    def key(pod: str, ns: str = "default", **over: str) -> tuple[tuple[str, str], ...]:
        labels = {
            "rule": "Terminal shell in container",
            "priority": "5",  # Notice
            "hostname": "node-1",
            "source": "SYSCALL",
            "k8s_ns_name": ns,
            "k8s_pod_name": pod,
            **over,
        }
        return tuple(sorted(labels.items()))

    assert got == {
        **{key(f"shell-{i}"): 1.0 for i in range(CAP)},
        key("other"): 2.0,  # past the cap
        key("", ns=""): 1.0,  # Falco's <NA> and null
        key("other", priority="2", hostname="node-2", source="PLUGIN"): 1.0,
    }
