"""The hardening guide's snippets (../shared/seed-snippets/) as a user runs
them: ``eventd rules lint``, ``eventd rules check`` and ``eventd scan`` on
each, then the same on the corrected versions shipped under
``examples/guide/`` and ``deploy/prometheus/`` (README: "Hardening-guide
snippets").

What real Falco does with the originals, which eventd reproduces by default:
a rule without ``source:`` is a syscall rule and is skipped with "Unknown
source syscall, skipping" where no syscall source is loaded
(falcosecurity/falco ``userspace/engine/rule_loader_collector.cpp``); an
undefined macro refuses the file ("Undefined macro ... used in filter",
``rule_loader_compiler.cpp``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from eventd.lint import lint_paths
from tests.support.builders import audit_event, deployment, falco_alert, pod
from tests.support.cli import REPO
from tests.support.cli import run_eventd as eventd

SEEDS = REPO.parent / "shared" / "seed-snippets"
GUIDE = REPO / "examples" / "guide"

pytestmark = pytest.mark.skipif(
    not SEEDS.is_dir(), reason="../shared/seed-snippets is not beside the checkout"
)

PULL = SEEDS / "falco-suspicious-image-pull.yaml"
IMAGE_SECURITY = SEEDS / "falco-image-security.yaml"
TEMPLATE = SEEDS / "gatekeeper-allowedregistries-template.yaml"
CONSTRAINT = SEEDS / "gatekeeper-allowedregistries-constraint.yaml"
PROMETHEUS = SEEDS / "prometheus-image-security-metrics.yaml"


def codes(path: Path) -> set[str]:
    return {f.code for f in lint_paths([path])}


def scan(tmp_path: Path, docs: list[dict[str, Any]], *args: str) -> list[dict[str, Any]]:
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(d) + "\n" for d in docs))
    done = eventd("scan", "--format", "json", *args, str(events))
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def pod_with(*images: str, namespace: str = "shop") -> dict[str, Any]:
    return audit_event(namespace=namespace, request=pod(*images))


UNTRUSTED_POD = pod_with("docker.io/library/nginx:1.25")
MIXED_POD = pod_with("myregistry.io/team/web:2", "quay.io/evil/miner:1")
TRUSTED_POD = pod_with("myregistry.io/team/web:2")
LOOKALIKE_POD = pod_with("myregistry.io.evil.com/team/web:2")
UNTRUSTED_DEPLOYMENT = audit_event(
    resource="deployments", namespace="shop", request=deployment("ghcr.io/x/y:1")
)


# --------------------------------------------------------------------------- falco-suspicious-image-pull.yaml


def test_suspicious_pull_lint_says_why_it_detects_nothing() -> None:
    assert codes(PULL) == {"EVD001", "EVD003", "EVD004", "EVD011", "EVD013"}
    assert eventd("rules", "lint", str(PULL)).returncode == 1


def test_suspicious_pull_check_skips_it_like_falco_and_warns() -> None:
    done = eventd("rules", "check", str(PULL))
    assert done.returncode == 0
    assert "Unknown source syscall, skipping" in done.stderr
    assert "0 rules enabled" in done.stdout
    assert "EVD001" in done.stderr  # the lint findings, as warnings


def test_rules_check_json_carries_the_same_lint_findings_as_lint_json() -> None:
    for path in (PULL, CONSTRAINT):  # a file that loads, and one refused as rules
        check = json.loads(eventd("rules", "check", "--format", "json", str(path)).stdout)
        lint = json.loads(eventd("rules", "lint", "--format", "json", str(path)).stdout)
        assert check["lint"] == lint["findings"] and lint["findings"], path


def test_suspicious_pull_scan_detects_nothing(tmp_path: Path) -> None:
    assert scan(tmp_path, [UNTRUSTED_POD, MIXED_POD], "-r", str(PULL)) == []


def test_suspicious_pull_with_infer_source_loads_with_notices_and_shows_the_any_element_flaw(
    tmp_path: Path,
) -> None:
    done = eventd("rules", "check", "--infer-source", str(PULL))
    assert done.returncode == 0, done.stderr
    assert "inferred 'k8s_audit'" in done.stderr
    assert "'ka.target.image' is not a Falco field; eventd reads it as an alias" in done.stderr
    assert "'k8s_audit' is a source, not a macro" in done.stderr
    alerts = scan(tmp_path, [UNTRUSTED_POD, MIXED_POD, TRUSTED_POD], "--infer-source", "-r", str(PULL))
    # Only the all-untrusted pod: the mixed pod passes (EVD011), as lint said.
    assert [a["rule"] for a in alerts] == ["Suspicious Image Pull"]
    assert alerts[0]["output_fields"]["ka.target.image"] == ["docker.io/library/nginx:1.25"]


def test_suspicious_pull_corrected_version(tmp_path: Path) -> None:
    fixed = GUIDE / "suspicious-image-pull.yaml"
    assert codes(fixed) == set()
    assert eventd("rules", "lint", str(fixed)).returncode == 0
    check = eventd("rules", "check", str(fixed))
    assert check.returncode == 0 and "1 rules enabled" in check.stdout
    docs = [UNTRUSTED_POD, MIXED_POD, TRUSTED_POD, LOOKALIKE_POD, UNTRUSTED_DEPLOYMENT]
    alerts = scan(tmp_path, docs, "-r", str(fixed))
    assert [a["output_fields"]["ka.req.pod.images.name"] for a in alerts] == [
        ["docker.io/library/nginx"],
        ["myregistry.io/team/web", "quay.io/evil/miner"],
        ["myregistry.io.evil.com/team/web"],
        ["ghcr.io/x/y"],
    ]


# --------------------------------------------------------------------------- falco-image-security.yaml


FALCO_UNTRUSTED = falco_alert(**{"container.image.repository": "quay.io/evil/miner"})
FALCO_TRUSTED = falco_alert(**{"container.image.repository": "docker.io/library/alpine"})
FALCO_LOOKALIKE = falco_alert(**{"container.image.repository": "myregistry.io.evil.com/web"})


def test_image_security_lint() -> None:
    found = {f.code: f for f in lint_paths([IMAGE_SECURITY])}
    assert set(found) == {"EVD003", "EVD004", "EVD006", "EVD012"}
    assert found["EVD012"].item == "list 'trusted_images'" and found["EVD012"].line == 14


def test_image_security_check_and_scan_skip_the_syscall_rule(tmp_path: Path) -> None:
    done = eventd("rules", "check", str(IMAGE_SECURITY))
    assert done.returncode == 0 and "Unknown source syscall, skipping" in done.stderr
    assert scan(tmp_path, [FALCO_UNTRUSTED, FALCO_TRUSTED], "-r", str(IMAGE_SECURITY)) == []


def test_image_security_corrected_for_eventd_judges_falco_alerts(tmp_path: Path) -> None:
    fixed = GUIDE / "image-security-falco-alerts.yaml"
    assert codes(fixed) == set()
    alerts = scan(tmp_path, [FALCO_UNTRUSTED, FALCO_TRUSTED, FALCO_LOOKALIKE], "-r", str(fixed))
    assert [a["output_fields"]["container.image.name"] for a in alerts] == [
        "quay.io/evil/miner",
        "myregistry.io.evil.com/web",
    ]
    assert {a["rule"] for a in alerts} == {"Untrusted Image Repository"}


def test_image_security_corrected_for_falco_has_only_notes() -> None:
    found = lint_paths([GUIDE / "falco-syscall-image-security.yaml"])
    assert {f.code for f in found} == {"EVD004", "EVD006"}
    assert {f.severity.label for f in found} == {"note"}


def test_falco_alias_image_repository_works_in_a_falco_rule_with_a_warning(tmp_path: Path) -> None:
    rules = tmp_path / "alias.yaml"
    rules.write_text(
        "- rule: R\n  desc: d\n  condition: image.repository startswith quay.io/\n"
        "  output: o %image.repository\n  priority: WARNING\n  source: falco\n"
    )
    check = eventd("rules", "check", str(rules))
    assert "'image.repository' is not a Falco field" in check.stderr
    alerts = scan(tmp_path, [FALCO_UNTRUSTED, FALCO_TRUSTED], "-r", str(rules))
    assert [a["output_fields"]["image.repository"] for a in alerts] == ["quay.io/evil/miner"]


# --------------------------------------------------------------------------- Gatekeeper


def test_gatekeeper_template_lint() -> None:
    found = lint_paths([TEMPLATE])
    assert {f.code for f in found} == {"EVD000", "EVD020", "EVD021"}
    (prefix,) = [f for f in found if f.code == "EVD020"]
    assert prefix.line == 24 and "starts_with" in prefix.message
    assert eventd("rules", "lint", str(TEMPLATE)).returncode == 1


def test_gatekeeper_template_corrected_is_clean() -> None:
    assert lint_paths([GUIDE / "gatekeeper-allowedregistries-template.yaml"]) == []


def test_gatekeeper_constraint_lint_flags_every_prefix_value() -> None:
    found = lint_paths([CONSTRAINT])
    assert sorted((f.code, f.line) for f in found) == [("EVD020", 14), ("EVD020", 15), ("EVD023", 2)]
    assert {f.code for f in lint_paths([GUIDE / "gatekeeper-allowedregistries-constraint.yaml"])} == {
        "EVD023"
    }


def test_rules_check_refuses_a_gatekeeper_file_as_rules_but_prints_the_findings() -> None:
    done = eventd("rules", "check", str(CONSTRAINT))
    assert done.returncode == 2 and "EVD020" in done.stderr


@pytest.mark.parametrize("constraint", [CONSTRAINT, GUIDE / "gatekeeper-allowedregistries-constraint.yaml"])
def test_gatekeeper_constraint_as_trusted_list_names_admission_bypasses(
    tmp_path: Path, constraint: Path
) -> None:
    docs = [
        UNTRUSTED_POD,
        TRUSTED_POD,
        LOOKALIKE_POD,
        pod_with("gcr.io/my-project/api:1"),
        pod_with("quay.io/coreos/etcd:3", namespace="kube-system"),
    ]
    alerts = scan(tmp_path, docs, "--gatekeeper-constraints", str(constraint))
    got = [(a["rule"], a["output_fields"]["ka.target.namespace"]) for a in alerts]
    constraint_label = "AllowedRegistries/prod-allowed-registries"
    inside = f"Admission Bypass: Image Outside Gatekeeper {constraint_label}"
    excluded = f"Admission Bypass: Image In Namespace Excluded From Gatekeeper {constraint_label}"
    assert got == [(inside, "shop"), (inside, "shop"), (excluded, "kube-system")]


# --------------------------------------------------------------------------- Prometheus


def test_prometheus_snippet_lint() -> None:
    found = lint_paths([PROMETHEUS])
    assert sorted((f.code, f.line) for f in found) == [("EVD000", 17), ("EVD030", 11)]
    assert {
        f.code for f in lint_paths([REPO / "deploy" / "prometheus" / "image-security-rules.yaml"])
    } == set()
