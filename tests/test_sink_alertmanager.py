"""AlertmanagerSink: the v2 payload (checked field by field), batching, auth,
and a round trip through a real Alertmanager (Debian's prometheus-alertmanager)."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from eventd.config import AlertmanagerSinkConfig
from eventd.engine.priority import Priority
from eventd.events.timestamps import rfc3339_to_ns
from eventd.metrics import Metrics
from eventd.sinks.alertmanager import AlertmanagerSink, alertmanager_alert
from tests.http_receiver import sample_alert, serve

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
#: ``postableAlert`` of Alertmanager's OpenAPI v2 spec: the fields we may send.
POSTABLE_FIELDS = {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
HOUR_NS = 3600 * 10**9


def check_postable(item: dict[str, Any]) -> None:
    """What Alertmanager validates, plus our rule: low-cardinality labels only."""
    assert set(item) == POSTABLE_FIELDS
    for mapping in (item["labels"], item["annotations"]):
        assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in mapping.items())
    assert all(LABEL_NAME.fullmatch(name) for name in item["labels"])
    assert RFC3339.fullmatch(item["startsAt"]) and RFC3339.fullmatch(item["endsAt"])
    assert rfc3339_to_ns(item["endsAt"]) > rfc3339_to_ns(item["startsAt"])
    assert "://" in item["generatorURL"]


# --------------------------------------------------------------- the payload


def test_labels_are_low_cardinality_and_details_are_annotations() -> None:
    alert = sample_alert("Create privileged pod", Priority.CRITICAL, user="alice", runbook="https://rb/1")
    item = alertmanager_alert(alert, HOUR_NS, "", alert.time_ns)
    check_postable(item)
    assert item["labels"] == {
        "alertname": "Create privileged pod",
        "severity": "critical",
        "priority": "Critical",
        "source": "k8s_audit",
        "eventd": "true",
        "cluster": "prod-eu",
        "namespace": "payments",
        "registry": "myregistry.io",
    }  # no uuid, user or pod name: Alertmanager would not group repeats
    notes = item["annotations"]
    assert notes["summary"] == alert.output
    assert (notes["uuid"], notes["user"], notes["workload"]) == (alert.uuid, "alice", "pods/api-0")
    assert notes["audit_id"] == alert.context["audit_id"]
    assert notes["images"] == "myregistry.io/team/api:1.4"
    assert notes["runbook"] == "https://rb/1"
    assert "Namespace: payments" in notes["description"] and "User: alice" in notes["description"]
    assert item["startsAt"] == "2026-11-29T10:00:00.123456789Z"
    assert item["endsAt"] == "2026-11-29T11:00:00.123456789Z"
    assert item["generatorURL"] == "eventd://eventd-0/rules/Create%20privileged%20pod"


def test_workload_label_only_for_controllers_and_stale_events_still_fire() -> None:
    alert = sample_alert(workload="deployments/web")
    item = alertmanager_alert(alert, HOUR_NS, "https://grafana/d/eventd", alert.time_ns)
    assert item["labels"]["workload"] == "deployments/web"
    assert item["generatorURL"] == "https://grafana/d/eventd"
    # An event from two hours ago (backfill) must not arrive already resolved.
    now = alert.time_ns + 2 * HOUR_NS
    assert rfc3339_to_ns(alertmanager_alert(alert, HOUR_NS, "", now)["endsAt"]) == now + HOUR_NS


@pytest.mark.asyncio
async def test_queued_alerts_are_batched_with_bearer_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("am-token\n")
    async with serve() as receiver:
        config = AlertmanagerSinkConfig(url=receiver.url + "/am/", token_file=tmp_path / "token")
        metrics = Metrics()
        sink = AlertmanagerSink(config, metrics)
        await sink.send_many([sample_alert(f"rule {i}") for i in range(5)])
        await sink.close()
    (req,) = receiver.requests
    assert req.path == "/am/api/v2/alerts"
    assert req.headers["Authorization"] == "Bearer am-token"
    assert req.headers["Content-Type"] == "application/json"
    items = orjson.loads(req.body)
    assert [i["labels"]["alertname"] for i in items] == [f"rule {i}" for i in range(5)]
    for item in items:
        check_postable(item)
    assert metrics.registry.get_sample_value("eventd_sink_deliveries_total", {"sink": "alertmanager"}) == 5


# ------------------------------------------------------- a real Alertmanager


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.read()


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not Path(ALERTMANAGER).exists():  # installable everywhere we run: a failure, not a skip
        pytest.fail(f"{ALERTMANAGER} missing: apt-get install -y prometheus-alertmanager")
    work = tmp_path_factory.mktemp("alertmanager")
    (work / "alertmanager.yml").write_text(
        "route:\n  receiver: 'null'\n  group_wait: 1h\nreceivers:\n  - name: 'null'\n"
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with (work / "alertmanager.log").open("wb") as log_file:
        proc = subprocess.Popen(
            [
                ALERTMANAGER,
                f"--config.file={work / 'alertmanager.yml'}",
                f"--storage.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    _get(url + "/-/ready")
                    break
                except (urllib.error.URLError, OSError):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log = (work / "alertmanager.log").read_text()[-2000:]
                        pytest.fail(f"alertmanager did not become ready: {log}")
                    time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.asyncio
async def test_round_trip_through_a_real_alertmanager(alertmanager: str) -> None:
    now = time.time_ns() - 10**9
    first = sample_alert("Exec into pod", Priority.ERROR, user="alice", time_ns=now)
    again = sample_alert("Exec into pod", Priority.ERROR, user="bob", time_ns=now)
    other = sample_alert("Untrusted registry", Priority.CRITICAL, namespace="web", time_ns=now)
    metrics = Metrics()
    config = AlertmanagerSinkConfig(url=alertmanager, resolve_after_seconds=600, max_retries=0)
    sink = AlertmanagerSink(config, metrics)
    sent_after = time.time_ns()
    for alert in (first, again, other):
        await sink.send(alert)
    await sink.close()
    sent_before = time.time_ns()
    assert metrics.registry.get_sample_value("eventd_sink_deliveries_total", {"sink": "alertmanager"}) == 3

    query = alertmanager + "/api/v2/alerts?filter=eventd%3D%22true%22"
    stored = orjson.loads(await asyncio.to_thread(_get, query))
    by_rule = {a["labels"]["alertname"]: a for a in stored}
    # Same rule and scope, another user: one Alertmanager alert (user is no label).
    assert sorted(by_rule) == ["Exec into pod", "Untrusted registry"] and len(stored) == 2
    for alert in (again, other):
        got = by_rule[alert.rule]
        sent = alertmanager_alert(alert, 600 * 10**9, "", sent_after)
        assert got["labels"] == sent["labels"]
        assert got["annotations"] == sent["annotations"]
        assert got["status"]["state"] == "active"
        assert rfc3339_to_ns(got["startsAt"]) // 10**6 == now // 10**6
        # Resolves 600 s after it was reported (the event itself is a second older).
        ends = rfc3339_to_ns(got["endsAt"]) - 600 * 10**9
        assert sent_after // 10**6 <= ends // 10**6 <= sent_before // 10**6
        assert got["generatorURL"] == sent["generatorURL"]
    assert by_rule["Exec into pod"]["annotations"]["user"] == "bob"  # the latest occurrence
    assert by_rule["Untrusted registry"]["labels"]["severity"] == "critical"


@pytest.mark.asyncio
async def test_a_wrong_url_prefix_is_rejected_not_retried(alertmanager: str) -> None:
    metrics = Metrics()
    sink = AlertmanagerSink(AlertmanagerSinkConfig(url=alertmanager + "/no-such-prefix"), metrics)
    await sink.send(sample_alert(time_ns=time.time_ns()))
    await sink.close()
    value = metrics.registry.get_sample_value
    assert value("eventd_sink_failures_total", {"sink": "alertmanager", "reason": "status_4xx"}) == 1
    assert value("eventd_sink_dropped_total", {"sink": "alertmanager", "reason": "rejected"}) == 1
    assert not value("eventd_sink_retries_total", {"sink": "alertmanager"})
