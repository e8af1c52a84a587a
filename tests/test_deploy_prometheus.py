"""The monitoring files under ``deploy/prometheus`` and ``deploy/grafana``.

``promtool`` (Debian's ``prometheus`` package) checks the rule file and runs
its unit tests.  Every metric and label the rules, the dashboard and the
ServiceMonitor rely on is looked up in a real eventd ``/metrics`` exposition
(every metric of ``eventd.metrics.Metrics`` touched once, so each family is
present), and the ServiceMonitor is matched against the rendered overlays.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from eventd.config import Listen
from eventd.metrics import Metrics
from eventd.server import OpsServer
from tests.test_deploy_manifests import (
    OVERLAYS,
    container_port,
    eventd_container,
    find,
    free_port,
    overlay,
    selects,
    the_workload,
)

REPO = Path(__file__).resolve().parents[1]
PROM = REPO / "deploy" / "prometheus"
RULES = PROM / "eventd-rules.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "eventd-dashboard.json"
#: Labels Prometheus adds to every scraped series (the Operator adds more).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
METRIC_RE = re.compile(r"\b(eventd_[a-z0-9_]+)\b")
SELECTOR_RE = re.compile(r"\b(eventd_[a-z0-9_]+)\{([^}]*)\}")
MATCHER_LABEL_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
BY_RE = re.compile(r"\bby\s*\(([^)]*)\)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary is not None, "promtool is missing: apt-get install prometheus"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, cwd=PROM, check=False)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


@functools.cache
def exposition() -> dict[str, set[str]]:
    """Sample name -> label names, from a real exposition with every metric touched."""
    metrics = Metrics()
    for metric in vars(metrics).values():
        # build_info is set by Metrics itself.
        if not isinstance(metric, MetricWrapperBase) or metric._type == "info":
            continue
        child = metric.labels(*(["x"] * len(metric._labelnames))) if metric._labelnames else metric
        getattr(child, {"counter": "inc", "gauge": "inc", "histogram": "observe"}[metric._type])(1)
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


# ------------------------------------------------------------------ promtool


def test_promtool_accepts_the_rule_file() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", "eventd-rules.test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The control: a wrong expectation makes promtool fail."""
    tests = load(PROM / "eventd-rules.test.yaml")
    tests["rule_files"] = [str(RULES)]
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            check["exp_alerts"] = [] if check["exp_alerts"] else [{"exp_labels": {"severity": "none"}}]
    (tmp_path / "broken.test.yaml").write_text(yaml.safe_dump(tests), encoding="utf-8")
    assert promtool("test", "rules", str(tmp_path / "broken.test.yaml")).returncode != 0


def test_every_alert_is_tested_firing_and_quiet() -> None:
    tests = load(PROM / "eventd-rules.test.yaml")
    checks = [check for case in tests["tests"] for check in case["alert_rule_test"]]
    for rule in alert_rules():
        mine = [c for c in checks if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']} never shown firing"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']} never shown quiet"


def test_alerts_have_severity_and_runbook() -> None:
    readme = (REPO / "deploy" / "README.md").read_text(encoding="utf-8")
    anchors = {line[4:].strip().lower() for line in readme.splitlines() if line.startswith("### ")}
    names = {rule["alert"] for rule in alert_rules()}
    assert names == {
        "EventdUntrustedImagePulled",
        "EventdSuspiciousPullRate",
        "EventdDown",
        "EventdSinkFailing",
        "EventdSpoolFilling",
        "EventdEventsRejected",
    }
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert {"summary", "description"} <= set(rule["annotations"])
        path, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert path == "deploy/README.md" and anchor in anchors, rule["alert"]
        # A link only when it leads somewhere: no relative runbook_url.
        url = rule["annotations"].get("runbook_url")
        assert url is None or url.startswith(("https://", "http://")), rule["alert"]


def test_prometheusrule_carries_the_same_groups() -> None:
    resource = load(PROM / "eventd-prometheusrule.yaml")
    assert (resource["apiVersion"], resource["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert resource["spec"]["groups"] == load(RULES)["groups"]


def test_suspicious_pull_alert_covers_exactly_the_pack() -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == "EventdSuspiciousPullRate"]
    (pattern,) = re.findall(r'rule=~"([^"]*)"', rule["expr"])
    pack = [item["rule"] for item in load(REPO / "rules" / "suspicious_pull.yaml") if "rule" in item]
    assert sorted(pattern.split("|")) == sorted(pack)
    assert not re.search(r"[.*+?()\[\]{}\\^$]", pattern), "rule names are matched literally"


# ------------------------------------------------- metric names and labels


def used_exprs() -> list[str]:
    return [rule["expr"] for rule in alert_rules()] + dashboard_exprs()


def test_every_metric_used_exists_in_the_exposition() -> None:
    samples = exposition()
    used = {name for expr in used_exprs() for name in METRIC_RE.findall(expr)}
    assert len(used) > 10
    assert used - set(samples) == set()


def test_exposition_fixture_sees_histograms_and_labels() -> None:
    """The control for the lookups: histogram series and label names are there."""
    samples = exposition()
    for suffix in ("_bucket", "_sum", "_count"):
        assert "eventd_match_latency_seconds" + suffix in samples
    assert samples["eventd_image_pulls_total"] == {"registry", "trust"}
    assert "eventd_image_pull_total" not in samples


def test_every_label_used_exists_on_its_metrics() -> None:
    samples = exposition()
    for expr in used_exprs():
        for name, matchers in SELECTOR_RE.findall(expr):
            unknown = set(MATCHER_LABEL_RE.findall(matchers)) - samples[name] - TARGET_LABELS
            assert not unknown, f"{name} has no label {unknown} ({expr})"
        available = set().union(*(samples[n] for n in METRIC_RE.findall(expr))) | TARGET_LABELS
        for group in BY_RE.findall(expr):
            labels = {label.strip() for label in group.split(",") if label.strip()}
            assert labels <= available, f"by ({group}) in {expr}"


# ------------------------------------------------------------------ Grafana


def test_dashboard_has_the_panels() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    (variable,) = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    for panel in panels:
        if panel.get("targets"):
            assert panel["datasource"]["uid"] == f"${{{variable['name']}}}", panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    exprs = dashboard_exprs()

    def shown(metric: str, by: str | None = None) -> bool:
        return any(metric in e and (by is None or re.search(rf"by \([^)]*\b{by}\b", e)) for e in exprs)

    for by in ("rule", "priority", "source"):
        assert shown("eventd_alerts_total", by), by
    assert any('trust="untrusted"' in e and "by (registry)" in e for e in exprs)
    assert shown("eventd_events_received_total", "source")
    assert shown("eventd_events_rejected_total", "reason")
    assert shown("eventd_sink_deliveries_total", "sink")
    assert shown("eventd_sink_failures_total", "sink")
    assert shown("eventd_spool_bytes") and shown("eventd_spool_alerts")
    assert shown("eventd_match_latency_seconds_bucket", "le")
    assert shown("eventd_rules_loaded")
    (heatmap,) = [p for p in panels if p["type"] == "heatmap"]
    assert "eventd_match_latency_seconds_bucket" in heatmap["targets"][0]["expr"]
    # Namespaces are no metric label: a panel says so and points to the alert stream.
    (note,) = [p for p in panels if "namespace" in p["title"].lower()]
    assert "not metric labels" in note["options"]["content"] and "alert stream" in note["options"]["content"]


# ------------------------------------------------------------ ServiceMonitor


def test_servicemonitor_scrapes_every_overlay_as_job_eventd() -> None:
    monitor = load(PROM / "servicemonitor.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    spec = monitor["spec"]
    (endpoint,) = spec["endpoints"]
    jobs = {m for rule in alert_rules() for m in re.findall(r'up\{job="([^"]+)"\}', rule["expr"])}
    assert jobs == {"eventd"}
    for name in OVERLAYS:
        objs = overlay(name)
        (service,) = [
            s
            for s in find(objs, "Service")
            if selects(spec["selector"]["matchLabels"], s["metadata"].get("labels", {}))
        ]
        assert service["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
        assert service["metadata"]["labels"][spec["jobLabel"]] in jobs
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        workload, pod = the_workload(name)
        assert selects(service["spec"]["selector"], workload["spec"]["template"]["metadata"]["labels"])
        assert container_port(eventd_container(pod), port["targetPort"]) == 9376


@pytest.mark.asyncio
async def test_servicemonitor_path_serves_the_exposition() -> None:
    (endpoint,) = load(PROM / "servicemonitor.yaml")["spec"]["endpoints"]
    port = free_port()
    server = OpsServer(Listen("127.0.0.1", port), Metrics(), lambda: {"rules": True})
    await server.start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{endpoint['scheme']}://127.0.0.1:{port}{endpoint['path']}") as response,
        ):
            assert response.status == 200
            assert "eventd_build_info" in await response.text()
    finally:
        await server.stop()
