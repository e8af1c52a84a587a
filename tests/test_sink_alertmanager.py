"""AlertmanagerSink: the v2 payload (checked field by field), batching, auth,
and a round trip through a real Alertmanager (Debian's prometheus-alertmanager)
whose routing tree pages on ``severity="critical"``, as on-call set-ups do.

The default severity per priority follows falcosidekick's Alertmanager output
(outputs/alertmanager.go in falcosecurity/falcosidekick: Emergency, Alert and
Critical are critical, Error and Warning warning, the rest informational,
spelt ``info`` here as in Prometheus rules)."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from eventd.config import AlertmanagerSeverity, AlertmanagerSinkConfig, ConfigError, load_config
from eventd.events.timestamps import rfc3339_to_ns
from eventd.metrics import Metrics
from eventd.priority import Priority
from eventd.sinks.alertmanager import AlertmanagerSink, alertmanager_alert
from tests.support.http_receiver import T0, sample_alert, serve

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
#: ``postableAlert`` of Alertmanager's OpenAPI v2 spec: the fields we may send.
POSTABLE_FIELDS = {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
HOUR_NS = 3600 * 10**9


def check_postable(item: dict[str, Any]) -> None:
    """What Alertmanager validates, plus our rule: low-cardinality labels only."""
    assert POSTABLE_FIELDS - {"generatorURL"} <= set(item) <= POSTABLE_FIELDS
    for mapping in (item["labels"], item["annotations"]):
        assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in mapping.items())
    assert all(LABEL_NAME.fullmatch(name) for name in item["labels"])
    assert RFC3339.fullmatch(item["startsAt"]) and RFC3339.fullmatch(item["endsAt"])
    assert rfc3339_to_ns(item["endsAt"]) > rfc3339_to_ns(item["startsAt"])
    for link in (item.get("generatorURL"), item["annotations"].get("runbook_url")):
        assert link is None or link.startswith(("http://", "https://"))  # absolute or absent


# --------------------------------------------------------------- the payload


def test_labels_are_low_cardinality_and_details_are_annotations() -> None:
    alert = sample_alert("Create privileged pod", Priority.CRITICAL, user="alice")
    item = alertmanager_alert(alert, HOUR_NS, alert.time_ns)
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
    assert (notes["summary"], notes["description"]) == (alert.rule, alert.output)
    assert (notes["uuid"], notes["user"], notes["workload"]) == (alert.uuid, "alice", "pods/api-0")
    assert notes["audit_id"] == alert.context["audit_id"]
    assert notes["images"] == "myregistry.io/team/api:1.4"
    assert item["startsAt"] == "2026-11-29T10:00:00.123456789Z"
    assert item["endsAt"] == "2026-11-29T11:00:00.123456789Z"
    assert "generatorURL" not in item and "runbook_url" not in notes  # none configured: no dead link


def test_workload_label_only_for_controllers_and_stale_events_still_fire() -> None:
    alert = sample_alert(workload="deployments/web")
    item = alertmanager_alert(alert, HOUR_NS, alert.time_ns, generator_url="https://grafana/d/eventd")
    assert item["labels"]["workload"] == "deployments/web"
    assert item["generatorURL"] == "https://grafana/d/eventd"
    # An event from two hours ago (backfill) must not arrive already resolved.
    now = alert.time_ns + 2 * HOUR_NS
    assert rfc3339_to_ns(alertmanager_alert(alert, HOUR_NS, now)["endsAt"]) == now + HOUR_NS


@pytest.mark.parametrize(
    ("priority", "severity"),
    [
        (Priority.EMERGENCY, "critical"),
        (Priority.ALERT, "critical"),
        (Priority.CRITICAL, "critical"),
        (Priority.ERROR, "warning"),
        (Priority.WARNING, "warning"),
        (Priority.NOTICE, "info"),
        (Priority.INFORMATIONAL, "info"),
        (Priority.DEBUG, "info"),
    ],
)
def test_default_severity_is_what_routing_trees_match(priority: Priority, severity: str) -> None:
    item = alertmanager_alert(sample_alert(priority=priority), HOUR_NS, T0)
    assert (item["labels"]["severity"], item["labels"]["priority"]) == (severity, priority.label)


def test_severity_and_links_are_configurable_and_links_must_be_absolute() -> None:
    config = AlertmanagerSinkConfig(
        severity=AlertmanagerSeverity(error="critical", notice="none"),
        generator_url="https://grafana.example/d/eventd?var-rule={rule}",
        runbook_url="https://wiki.example/runbooks/eventd#{rule}",
    )
    sink = AlertmanagerSink(config, Metrics())
    items = orjson.loads(
        sink.body([sample_alert("Exec into pod", p) for p in (Priority.ERROR, Priority.NOTICE)])
    )
    assert [i["labels"]["severity"] for i in items] == ["critical", "none"]
    assert items[0]["generatorURL"] == "https://grafana.example/d/eventd?var-rule=Exec%20into%20pod"
    assert items[0]["annotations"]["runbook_url"] == "https://wiki.example/runbooks/eventd#Exec%20into%20pod"
    for item in items:
        check_postable(item)
    for key, bad in [
        ("generator_url", "eventd://node/rules/x"),
        ("generator_url", "/d/eventd"),
        ("runbook_url", "deploy/README.md#eventddown"),
        ("runbook_url", "https:///no-host"),
    ]:
        with pytest.raises(ConfigError, match=f"sinks.alertmanager.{key}: expected an absolute"):
            AlertmanagerSink(AlertmanagerSinkConfig(**{key: bad}), Metrics())
    with pytest.raises(ConfigError, match=r"sinks.alertmanager.severity.debug: must not be empty"):
        AlertmanagerSink(AlertmanagerSinkConfig(severity=AlertmanagerSeverity(debug="")), Metrics())


def test_severity_map_from_yaml_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "eventd.yaml"
    path.write_text("sinks:\n  alertmanager:\n    severity:\n      error: critical\n      urgent: x\n")
    with pytest.raises(ConfigError, match=r"sinks.alertmanager.severity.urgent: unknown key"):
        load_config(path, {})
    path.write_text("sinks:\n  alertmanager:\n    severity:\n      error: critical\n")
    config = load_config(path, {}).sinks.alertmanager
    assert config is not None and config.severity.error == "critical" and config.severity.alert == "critical"


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


class Notifications:
    """A real webhook receiver for Alertmanager's notifications (a thread:
    it must outlive the per-test event loops of the module's tests)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer._lock:
                    outer.received.append((self.path, orjson.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def alertnames(self, receiver: str) -> set[str]:
        """Rules notified to ``receiver`` so far."""
        with self._lock:
            return {
                a["labels"]["alertname"]
                for path, body in self.received
                if path == f"/{receiver}"
                for a in body["alerts"]
            }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class RealAlertmanager:
    url: str
    notifications: Notifications


#: The routing tree of a typical on-call set-up: critical pages, the rest
#: goes to a ticket/chat receiver.  Each rule is its own group.
ROUTING = """
route:
  receiver: default
  group_by: [alertname]
  group_wait: 200ms
  group_interval: 1s
  routes:
    - matchers: ['severity="critical"']
      receiver: pager
receivers:
  - name: default
    webhook_configs: [{{url: "{url}/default"}}]
  - name: pager
    webhook_configs: [{{url: "{url}/pager"}}]
"""


@pytest.fixture(scope="module")
def real_alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealAlertmanager]:
    if not Path(ALERTMANAGER).exists():  # installable everywhere we run: a failure, not a skip
        pytest.fail(f"{ALERTMANAGER} missing: apt-get install -y prometheus-alertmanager")
    work = tmp_path_factory.mktemp("alertmanager")
    notifications = Notifications()
    (work / "alertmanager.yml").write_text(ROUTING.format(url=notifications.url))
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
            yield RealAlertmanager(url, notifications)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            notifications.close()


@pytest.fixture
def alertmanager(real_alertmanager: RealAlertmanager) -> str:
    return real_alertmanager.url


@pytest.mark.asyncio
async def test_critical_pages_and_the_rest_does_not(real_alertmanager: RealAlertmanager) -> None:
    """Through a real Alertmanager with a tree that pages on severity="critical":
    a Critical rule reaches the pager, Error and Warning rules the default
    receiver, with the rule as summary and the output as description."""
    now = time.time_ns() - 10**9
    alerts = {
        p: sample_alert(f"Routing {p.label}", p, namespace="routing", time_ns=now)
        for p in (Priority.CRITICAL, Priority.ERROR, Priority.WARNING)
    }
    sink = AlertmanagerSink(AlertmanagerSinkConfig(url=real_alertmanager.url, max_retries=0), Metrics())
    await sink.send_many(list(alerts.values()))
    await sink.close()

    query = real_alertmanager.url + "/api/v2/alerts?filter=namespace%3D%22routing%22"
    stored = {a["labels"]["alertname"]: a for a in orjson.loads(await asyncio.to_thread(_get, query))}
    receivers = {name: [r["name"] for r in a["receivers"]] for name, a in stored.items()}
    assert receivers == {
        "Routing Critical": ["pager"],
        "Routing Error": ["default"],
        "Routing Warning": ["default"],
    }
    crit = stored["Routing Critical"]["annotations"]
    assert (crit["summary"], crit["description"]) == ("Routing Critical", alerts[Priority.CRITICAL].output)

    # And the notifications themselves, as the receivers got them.
    notified = real_alertmanager.notifications
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (
        "Routing Critical" in notified.alertnames("pager")
        and {"Routing Error", "Routing Warning"} <= notified.alertnames("default")
    ):
        await asyncio.sleep(0.1)
    assert {n for n in notified.alertnames("pager") if n.startswith("Routing")} == {"Routing Critical"}
    assert {n for n in notified.alertnames("default") if n.startswith("Routing")} == {
        "Routing Error",
        "Routing Warning",
    }


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
    # (The routing test of this module stores its own alerts in the same Alertmanager.)
    stored = [
        a
        for a in orjson.loads(await asyncio.to_thread(_get, query))
        if not a["labels"]["alertname"].startswith("Routing")
    ]
    by_rule = {a["labels"]["alertname"]: a for a in stored}
    # Same rule and scope, another user: one Alertmanager alert (user is no label).
    assert sorted(by_rule) == ["Exec into pod", "Untrusted registry"] and len(stored) == 2
    for alert in (again, other):
        got = by_rule[alert.rule]
        sent = alertmanager_alert(alert, 600 * 10**9, sent_after)
        assert got["labels"] == sent["labels"]
        assert got["annotations"] == sent["annotations"]
        assert got["status"]["state"] == "active"
        assert rfc3339_to_ns(got["startsAt"]) // 10**6 == now // 10**6
        # Resolves 600 s after it was reported (the event itself is a second older).
        ends = rfc3339_to_ns(got["endsAt"]) - 600 * 10**9
        assert sent_after // 10**6 <= ends // 10**6 <= sent_before // 10**6
        assert not got.get("generatorURL")  # none configured: Alertmanager stores no link
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
