"""``eventd run`` as a real process: webhook in, alerts out, reload, drain."""

from __future__ import annotations

import signal
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from eventd.rulepacks import builtin_rule_files
from tests.support.builders import audit_event, pod
from tests.support.daemon_process import EventdProcess, free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXTRA_RULE = """
- rule: Pod in namespace reload-test
  desc: added by a reload
  condition: ka.target.resource = pods and ka.verb = create and ka.target.namespace = reload-test
  output: pod %ka.target.name created in reload-test by %ka.user.name
  priority: NOTICE
  source: k8s_audit
"""


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


def _event_list(*events: dict) -> bytes:
    return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": list(events)})


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "extra.yaml"
    path.write_text("[]\n")
    return path


@pytest.fixture
def daemon(tmp_path: Path, rules_file: Path):
    port = free_port()
    proc = EventdProcess(
        tmp_path,
        {
            "rules": [*(str(p) for p in builtin_rule_files()), str(rules_file)],
            "rule_matching": "all",
            "cluster": "test-cluster",
            "sources": {"k8s_audit_webhook": {"listen": f"127.0.0.1:{port}"}},
            "sinks": {"stdout": {}},
        },
    )
    proc.webhook = f"http://127.0.0.1:{port}/k8s-audit"  # type: ignore[attr-defined]
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.kill()


def test_webhook_batch_raises_alerts_on_stdout_and_counts(daemon: EventdProcess) -> None:
    body = (EXAMPLES / "eventlist-sample.json").read_bytes()
    count = len(orjson.loads(body)["items"])
    assert _post(daemon.webhook, body) == 200  # type: ignore[attr-defined]
    daemon.wait_for(lambda: len(daemon.alerts) >= 5, what="alerts")
    rules = {a["rule"] for a in daemon.alerts}
    assert "Image From Untrusted Registry" in rules
    assert all(a["eventd"]["cluster"] == "test-cluster" for a in daemon.alerts)
    assert daemon.metric("eventd_events_received_total", source="k8s_audit_webhook") == count
    assert daemon.metric("eventd_alerts_total", rule="Image From Untrusted Registry") >= 1
    # The API server retries whole batches: a second delivery adds no alert.
    before = len(daemon.alerts)
    assert _post(daemon.webhook, body) == 200  # type: ignore[attr-defined]
    daemon.wait_for(
        lambda: daemon.metric("eventd_events_dropped_total", reason="duplicate") == count, what="dedup"
    )
    time.sleep(0.3)
    assert len(daemon.alerts) == before


def test_sighup_reload_good_and_broken(daemon: EventdProcess, rules_file: Path) -> None:
    event = audit_event(request=pod("myregistry.io/team/app:1.0@sha256:" + "a" * 64), namespace="reload-test")

    def send() -> None:
        ev = dict(event, auditID=f"reload-{time.monotonic_ns()}")
        assert _post(daemon.webhook, _event_list(ev)) == 200  # type: ignore[attr-defined]

    send()
    time.sleep(0.5)
    assert not [a for a in daemon.alerts if a["rule"] == "Pod in namespace reload-test"]

    rules_file.write_text("- rule: broken\n  condition: ka.verb = (\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_for(lambda: daemon.metric("eventd_rule_reloads_total", result="refused") == 1, what="refusal")
    assert daemon.proc.poll() is None
    assert any(log.get("event") == "rules_reload_refused" for log in daemon.logs())

    rules_file.write_text(EXTRA_RULE)
    daemon.signal(signal.SIGHUP)
    daemon.wait_for(lambda: daemon.metric("eventd_rule_reloads_total", result="ok") == 1, what="reload")
    send()
    daemon.wait_for(
        lambda: [a for a in daemon.alerts if a["rule"] == "Pod in namespace reload-test"], what="new rule"
    )


def test_sigterm_drains_accepted_batches_and_exits_zero(daemon: EventdProcess) -> None:
    events = [audit_event(request=pod(f"evil.example.com/app:{i}"), auditID=f"drain-{i}") for i in range(200)]
    assert _post(daemon.webhook, _event_list(*events)) == 200  # type: ignore[attr-defined]
    assert daemon.stop() == 0
    untrusted = {
        a["eventd"]["audit_id"] for a in daemon.alerts if a["rule"] == "Image From Untrusted Registry"
    }
    assert untrusted == {f"drain-{i}" for i in range(200)}
    assert any(log.get("event") == "stopped" and log.get("drained") for log in daemon.logs())


def test_logs_are_json_and_never_contain_event_bodies(daemon: EventdProcess) -> None:
    secret = audit_event(
        resource="secrets",
        verb="create",
        request={"kind": "Secret", "data": {"password": "aHVudGVyMg=="}, "metadata": {"name": "s"}},
    )
    assert _post(daemon.webhook, _event_list(secret, {"kind": "Event", "auditID": "bad"})) == 200  # type: ignore[attr-defined]
    # Both events went all the way through (decoded, matched or refused, and
    # logged about) before the logs are read: otherwise "no leak" proves nothing.
    daemon.wait_for(
        lambda: (
            daemon.metric("eventd_events_received_total", source="k8s_audit_webhook") == 1
            and daemon.metric("eventd_events_rejected_total", source="k8s_audit_webhook") == 1
        ),
        what="the secret processed and the bad event refused",
    )
    daemon.stop()
    text = daemon.stderr()
    assert "aHVudGVyMg==" not in text
    assert all(line.startswith("{") for line in text.splitlines() if line.strip())


def test_embedded_default_listens_on_loopback_ports(tmp_path: Path) -> None:
    # The embedded default (no --config) must come up and answer on 9376;
    # skip if another process already holds one of the default ports.
    import socket
    import subprocess
    import sys

    for port in (9376, 9765, 2801):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port} is in use on this machine")
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventd", "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen("http://127.0.0.1:9376/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("embedded default never became ready")
        body = (EXAMPLES / "eventlist-sample.json").read_bytes()
        assert _post("http://127.0.0.1:9765/k8s-audit", body) == 200
        falco = (EXAMPLES / "falco-alert-sample.json").read_bytes()
        assert _post("http://127.0.0.1:2801/", falco) == 200
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        rules = {orjson.loads(line)["rule"] for line in out.splitlines()}
        assert "Image From Untrusted Registry" in rules
        assert "Terminal shell in container" in rules  # the Falco alert, passed through
    finally:
        if proc.poll() is None:
            proc.kill()


def test_watch_rules_reloads_when_a_rule_file_changes(tmp_path: Path, rules_file: Path) -> None:
    port = free_port()
    proc = EventdProcess(
        tmp_path,
        {
            "rules": [str(rules_file)],
            "watch_rules": True,
            "sources": {"k8s_audit_webhook": {"listen": f"127.0.0.1:{port}"}},
            "sinks": {"stdout": {}},
        },
    )
    try:
        proc.wait_ready()
        rules_file.write_text(EXTRA_RULE)
        proc.wait_for(lambda: proc.metric("eventd_rule_reloads_total", result="ok") == 1, what="reload")
        event = audit_event(request=pod("nginx"), namespace="reload-test", auditID="watched")
        assert _post(f"http://127.0.0.1:{port}/k8s-audit", _event_list(event)) == 200
        proc.wait_for(lambda: proc.alerts, what="alert from the new rule")
        assert proc.alerts[0]["rule"] == "Pod in namespace reload-test"
    finally:
        proc.kill()
