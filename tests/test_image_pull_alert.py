"""``container_image_pulls_total{image}`` and the guide's Prometheus alert.

The guide's alert (../shared/seed-snippets/prometheus-image-security-metrics.yaml)
is run *unmodified* by promtool on series taken from eventd's own
exposition after real audit events, and the corrected rule shipped in
``deploy/prometheus/image-security-rules.yaml`` runs its unit tests.  How
promtool is run follows tests/test_deploy_prometheus.py.  PromQL facts
used: label regexes are fully anchored RE2; ``increase()`` needs two samples
of a series (prometheus.io docs, "Querying basics" and "Functions").
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from eventd.events.model import K8S_AUDIT, Event
from eventd.image_metrics import ImagePullCounter
from eventd.metrics import Metrics
from tests.support.builders import audit_event, deployment, pod

REPO = Path(__file__).resolve().parents[1]
PROM = REPO / "deploy" / "prometheus"
GUIDE_ALERT = REPO.parent / "shared" / "seed-snippets" / "prometheus-image-security-metrics.yaml"
TRUSTED = ("myregistry.io",)


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary is not None, "promtool is missing: apt-get install prometheus"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


def pulls(metrics: Metrics) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            if s.name == "container_image_pulls_total":
                out[s.labels["image"]] = s.value
    return out


def observe(counter: ImagePullCounter, *docs: dict) -> None:
    for doc in docs:
        counter.observe(Event(K8S_AUDIT, doc))


def ephemeral_container_added(image: str) -> dict:
    body = pod("myregistry.io/web:1")
    body["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": image}]
    return audit_event(verb="patch", subresource="ephemeralcontainers", code=200, request=body)


def test_counts_pod_and_workload_creates_by_normalised_repository() -> None:
    metrics = Metrics()
    counter = ImagePullCounter(metrics, TRUSTED)
    observe(
        counter,
        audit_event(
            request=pod("nginx:1.25", "myregistry.io/team/app@sha256:" + "a" * 64, init=("busybox",))
        ),
        audit_event(resource="deployments", request=deployment("registry:5000/team/app:2", "nginx")),
        audit_event(verb="update", code=200, request=pod("nginx")),  # not a create
        audit_event(verb="patch", code=200, resource="deployments", request=deployment("nginx")),
        audit_event(request=pod("quay.io/x/y"), code=403),  # refused
        audit_event(request=pod("quay.io/x/y"), requestURI="/api/v1/namespaces/default/pods?dryRun=All"),
        audit_event(request=pod("quay.io/x/y"), stage="RequestReceived"),
        audit_event(request=pod("Upper/Case")),  # invalid reference
        # A debug container added to a running pod is no pod creation (it is
        # in eventd_image_pulls_total, not here).
        ephemeral_container_added("evil.io/tools:1"),
    )
    assert pulls(metrics) == {
        "docker.io/library/nginx": 2.0,
        "myregistry.io/team/app": 1.0,
        "docker.io/library/busybox": 1.0,
        "registry:5000/team/app": 1.0,
        "invalid": 1.0,
    }


def test_image_label_is_capped_in_count_and_length() -> None:
    metrics = Metrics(label_value_cap=2, label_value_max_length=20)
    counter = ImagePullCounter(metrics, TRUSTED)
    observe(counter, *(audit_event(request=pod(f"quay.io/team/app{i}")) for i in range(4)))
    assert pulls(metrics) == {"quay.io/team/app0": 1.0, "quay.io/team/app1": 1.0, "other": 2.0}
    metrics = Metrics(label_value_max_length=20)
    observe(ImagePullCounter(metrics, TRUSTED), audit_event(request=pod("quay.io/" + "x" * 60)))
    assert pulls(metrics) == {"quay.io/xxxxxxxxxxxx": 1.0}


# ------------------------------------------------------------------ promtool


def test_corrected_rule_passes_its_unit_tests() -> None:
    checked = promtool("check", "rules", "image-security-rules.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = promtool("test", "rules", "image-security-rules.test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_corrected_rule_unit_tests_can_fail(tmp_path: Path) -> None:
    tests = yaml.safe_load((PROM / "image-security-rules.test.yaml").read_text())
    tests["rule_files"] = [str(PROM / "image-security-rules.yaml")]
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            check["exp_alerts"] = [] if check["exp_alerts"] else [{"exp_labels": {"severity": "warning"}}]
    (tmp_path / "broken.test.yaml").write_text(yaml.safe_dump(tests))
    assert promtool("test", "rules", str(tmp_path / "broken.test.yaml"), cwd=tmp_path).returncode != 0


def _guide_rules(tmp_path: Path) -> Path:
    """The guide's rules.yml exactly as printed (only the stray Markdown fence dropped)."""
    text = re.sub(r"^```.*$", "", GUIDE_ALERT.read_text(), flags=re.MULTILINE)
    rules = tmp_path / "guide-rules.yml"
    rules.write_text(yaml.safe_load(text)["data"]["rules.yml"])
    return rules


@pytest.mark.skipif(not GUIDE_ALERT.is_file(), reason="../shared/seed-snippets is not beside the checkout")
def test_guide_alert_fires_unmodified_on_eventds_metrics(tmp_path: Path) -> None:
    """Minute by minute: audit events in, exposition sampled, series handed to promtool."""
    metrics = Metrics()
    counter = ImagePullCounter(metrics, TRUSTED)
    plan = {
        0: [pod("nginx:1.25"), pod("myregistry.io/team/app:1")],
        3: [pod("nginx:1.26"), pod("myregistry.io/team/app:2")],
    }
    history: dict[str, list[str]] = {}
    for minute in range(8):
        for body in plan.get(minute, ()):
            observe(counter, audit_event(request=body))
        now = pulls(metrics)
        for image in now:
            history.setdefault(image, ["_"] * minute)
        for image, values in history.items():
            values.append(str(int(now[image])))
    assert set(history) == {"docker.io/library/nginx", "myregistry.io/team/app"}
    alert = {"alertname": "UntrustedImagePulled"}
    expected_nginx = {
        "exp_labels": {"severity": "warning", "image": "docker.io/library/nginx", "job": "eventd"},
        "exp_annotations": {
            "summary": "Untrusted image pulled",
            "description": "Image docker.io/library/nginx pulled from untrusted registry",
        },
    }
    test = {
        "rule_files": [str(_guide_rules(tmp_path))],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": f'container_image_pulls_total{{job="eventd",image="{image}"}}',
                        "values": " ".join(v),
                    }
                    for image, v in history.items()
                ],
                "alert_rule_test": [
                    # the first pull of a new image is a new series: the guide's alert misses it
                    {**alert, "eval_time": "1m", "exp_alerts": []},
                    # the second nginx pull fires; myregistry.io's never does
                    {**alert, "eval_time": "4m", "exp_alerts": [expected_nginx]},
                ],
            }
        ],
    }
    path = tmp_path / "guide.test.yaml"
    path.write_text(yaml.safe_dump(test))
    result = promtool("test", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
