"""eventd_image_pulls_total: counted once per admitted container image, by capped registry and trust."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.corpus import generate
from eventd.events.model import FALCO, K8S_AUDIT, Event
from eventd.image_metrics import INVALID, ImagePullCounter
from eventd.images import ImageReferenceError, parse
from eventd.metrics import Metrics
from tests.support.builders import audit_event, deployment, falco_alert, lease_renewal, pod, pod_create

TRUSTED = ("myregistry.io", "gcr.io/my-project", "docker.io/library")


def _pulls(metrics: Metrics) -> Counter[tuple[str, str]]:
    """Every sample of the counter, as {(registry, trust): count}."""
    out: Counter[tuple[str, str]] = Counter()
    for family in metrics.registry.collect():
        if family.name == "eventd_image_pulls":
            for s in family.samples:
                if s.name == "eventd_image_pulls_total":
                    out[(s.labels["registry"], s.labels["trust"])] += int(s.value)
    return out


def _observe(*docs: dict[str, Any], cap: int = 100, trusted: tuple[str, ...] = TRUSTED) -> Counter:
    metrics = Metrics(label_value_cap=cap)
    counter = ImagePullCounter(metrics, trusted)
    for doc in docs:
        counter.observe(Event(K8S_AUDIT, doc))
    return _pulls(metrics)


def test_pod_create_counts_every_container_image() -> None:
    doc = audit_event(
        request=pod("myregistry.io/team/web:1", "nginx", "quay.io/x/y@sha256:" + "a" * 64, init=("busybox",))
    )
    doc["requestObject"]["spec"]["containers"].append({"name": "again", "image": "nginx:1.25"})
    assert _observe(doc) == {
        ("myregistry.io", "trusted"): 1,
        ("docker.io", "trusted"): 3,  # nginx twice + busybox (init), all docker.io/library
        ("quay.io", "untrusted"): 1,
    }


def test_workloads_with_pod_templates_count() -> None:
    cronjob = {
        "kind": "CronJob",
        "spec": {"jobTemplate": {"spec": {"template": {"spec": pod("ghcr.io/a/b:1")["spec"]}}}},
    }
    docs = [
        audit_event(resource="deployments", request=deployment("gcr.io/my-project/api:2")),
        audit_event(resource="cronjobs", request=cronjob),
        # a merge patch has no kind: the resource says where the template is
        audit_event(
            verb="patch",
            resource="deployments",
            code=200,
            request={"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "evil.io/x"}]}}}},
        ),
        audit_event(verb="update", code=200, request=pod("myregistry.io/web:2")),
    ]
    assert _observe(*docs) == {
        ("gcr.io", "trusted"): 1,
        ("ghcr.io", "untrusted"): 1,
        ("evil.io", "untrusted"): 1,
        ("myregistry.io", "trusted"): 1,
    }


def _with_ephemeral(**kw: Any) -> dict[str, Any]:
    """A pod write whose body also has an ephemeral container."""
    body = pod("evil.io/x")
    body["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": "evil.io/tools:1"}]
    return audit_event(code=200, request=body, **kw)


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(pod_create("evil.io/x", stage="RequestReceived"), id="request-received-stage"),
        pytest.param(pod_create("evil.io/x", stage="ResponseStarted"), id="response-started-stage"),
        pytest.param(pod_create("evil.io/x", code=403), id="forbidden"),
        pytest.param(pod_create("evil.io/x", code=409), id="conflict-retry"),
        pytest.param(pod_create("evil.io/x", code=500), id="server-error"),
        pytest.param(pod_create("evil.io/x", verb="get", code=200), id="get"),
        pytest.param(pod_create("evil.io/x", verb="delete", code=200), id="delete"),
        pytest.param(pod_create("evil.io/x", verb="update", subresource="status", code=200), id="status"),
        pytest.param(_with_ephemeral(verb="update", subresource="status"), id="status-with-ephemeral"),
        pytest.param(
            _with_ephemeral(resource="deployments", subresource="ephemeralcontainers"),
            id="ephemeral-subresource-of-a-workload",
        ),
        pytest.param(pod_create("evil.io/x", resource="configmaps"), id="not-a-pod-resource"),
        pytest.param(pod_create("evil.io/x", requestURI="/api/v1/pods?dryRun=All"), id="dry-run"),
        pytest.param(audit_event(request=None), id="metadata-level-no-spec"),
        pytest.param(
            audit_event(verb="patch", code=200, request=[{"op": "replace", "path": "/spec", "value": {}}]),
            id="json-patch",
        ),
        pytest.param(lease_renewal(), id="lease"),
        pytest.param(audit_event(responseStatus=None, request=pod("evil.io/x")), id="no-response-status"),
    ],
)
def test_events_that_do_not_count(doc: dict[str, Any]) -> None:
    assert _observe(doc) == {}


def test_a_create_counts_once_across_its_stages() -> None:
    received = pod_create("evil.io/x", stage="RequestReceived")
    complete = copy.deepcopy(received) | {"stage": "ResponseComplete"}
    assert _observe(received, complete) == {("evil.io", "untrusted"): 1}


def test_falco_events_are_ignored() -> None:
    metrics = Metrics()
    ImagePullCounter(metrics, TRUSTED).observe(Event(FALCO, falco_alert()))
    assert _pulls(metrics) == {}


def test_ephemeral_containers_count_only_the_new_containers() -> None:
    body = pod("myregistry.io/web:1")
    body["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": "evil.io/tools:1"}]
    doc = audit_event(verb="patch", subresource="ephemeralcontainers", code=200, request=body)
    assert _observe(doc) == {("evil.io", "untrusted"): 1}


@pytest.mark.parametrize(
    ("image", "trust"),
    [
        ("gcr.io/my-project/app:1", "trusted"),
        ("gcr.io/my-project", "trusted"),
        ("gcr.io/my-project-evil/app:1", "untrusted"),
        ("gcr.io/other/app:1", "untrusted"),
        ("myregistry.io.evil.com/app", "untrusted"),
        ("myregistry.io:5000/app", "untrusted"),
        ("index.docker.io/library/redis", "trusted"),
        ("docker.io/bitnami/redis", "untrusted"),
        ("redis", "trusted"),
    ],
)
def test_trust_is_a_path_prefix_at_segment_boundaries(image: str, trust: str) -> None:
    registry = parse(image).registry
    assert _observe(pod_create(image)) == {(registry, trust): 1}


def test_trusted_entries_are_normalised() -> None:
    got = _observe(pod_create("nginx", "bitnami/redis"), trusted=("index.docker.io/library/",))
    assert got == {("docker.io", "trusted"): 1, ("docker.io", "untrusted"): 1}


def test_bad_trusted_entry_fails_at_construction() -> None:
    with pytest.raises(ImageReferenceError):
        ImagePullCounter(Metrics(), ["myregistry.io/app:1.0"])


def test_invalid_references_are_counted_as_invalid() -> None:
    doc = pod_create("myregistry.io/App", "")
    assert _observe(doc) == {(INVALID, "untrusted"): 2}


def test_registry_label_is_capped() -> None:
    docs = [pod_create(f"r{i}.example.com/app") for i in range(5)] + [pod_create("r0.example.com/b")]
    assert _observe(*docs, cap=2) == {
        ("r0.example.com", "untrusted"): 2,
        ("r1.example.com", "untrusted"): 1,
        ("other", "untrusted"): 3,
    }


def _expected_from_corpus(docs: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """Counted independently from the raw documents (pods and Deployments only in the corpus)."""
    out: Counter[tuple[str, str]] = Counter()
    for doc in docs:
        ref = doc["objectRef"]
        if not (
            doc["stage"] == "ResponseComplete"
            and doc["verb"] in ("create", "update", "patch")
            and ref.get("subresource") is None
            and 200 <= doc["responseStatus"]["code"] < 300
        ):
            continue
        if ref["resource"] == "pods":
            spec = doc["requestObject"]["spec"]
        elif ref["resource"] == "deployments":
            spec = doc["requestObject"]["spec"]["template"]["spec"]
        else:
            continue
        for family in ("containers", "initContainers", "ephemeralContainers"):
            for container in spec.get(family, ()):
                name = parse(container["image"]).name
                trusted = any(name == t or name.startswith(t + "/") for t in TRUSTED)
                out[(parse(container["image"]).registry, "trusted" if trusted else "untrusted")] += 1
    return out


def test_corpus_counts_match_an_independent_count() -> None:
    docs = list(generate(3000, seed=11, pod_ratio=0.2))
    expected = _expected_from_corpus(copy.deepcopy(docs))
    assert sum(expected.values()) > 500 and len(expected) > 3
    assert _observe(*docs) == expected


_SEGMENT = st.sampled_from(["a", "b", "ab", "a.io", "b.io", "my-project"])


@given(
    trusted=st.lists(st.lists(_SEGMENT, min_size=1, max_size=3).map("/".join), min_size=1, max_size=4),
    path=st.lists(_SEGMENT, min_size=1, max_size=3).map("/".join),
)
def test_trust_matches_the_naive_prefix_rule(trusted: list[str], path: str) -> None:
    entries = [f"reg.io/{t}" for t in trusted]
    image = f"reg.io/{path}"
    expected = "trusted" if any(image == e or image.startswith(e + "/") for e in entries) else "untrusted"
    assert _observe(pod_create(image), trusted=tuple(entries)) == {("reg.io", expected): 1}
