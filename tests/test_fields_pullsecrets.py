"""``ka.target.pull_secret``: image-pull secrets learned per namespace from the
audit stream, bounded in memory, and the pack rule that reads them.

Kubernetes facts relied on: Pods name registry credentials in
``spec.imagePullSecrets`` (``[{name}]``), ServiceAccounts in
``imagePullSecrets``, and the ServiceAccount admission plugin copies the
account's into the stored Pod; registry Secrets have type
``kubernetes.io/dockerconfigjson`` or ``kubernetes.io/dockercfg``
(kubernetes.io docs: "Pull an Image from a Private Registry", "Secrets").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.engine.ast import FieldRef
from eventd.engine.fields import default_registry
from eventd.engine.fields.pullsecrets import ENTRY_OVERHEAD, STORE, PullSecretStore, read_by
from eventd.engine.loader import load_rules
from eventd.events.model import K8S_AUDIT, Event
from eventd.rulepacks import builtin_rule_files
from eventd.scanner import Scanner
from tests.support.builders import audit_event, deployment, pod

REPO = Path(__file__).resolve().parents[1]
READ_RULE = "Image Pull Secret Read By Non-System User"


@pytest.fixture(autouse=True)
def fresh_store() -> Iterator[None]:
    """The store is process-wide (like the field registry): start each test empty."""
    STORE.clear()
    yield
    STORE.clear()


def with_pull_secrets(body: dict[str, Any], *names: str) -> dict[str, Any]:
    spec = body["spec"]["template"]["spec"] if body["kind"] == "Deployment" else body["spec"]
    spec["imagePullSecrets"] = [{"name": n} for n in names]
    return body


def secret_read(
    name: str, namespace: str = "shop", user: str = "alice@example.com", verb: str = "get"
) -> Event:
    return Event(
        K8S_AUDIT,
        audit_event(verb=verb, resource="secrets", namespace=namespace, name=name, user=user, code=200),
    )


def field(event: Event) -> Any:
    return default_registry().fieldset(K8S_AUDIT).bind(FieldRef("ka.target.pull_secret")).get(event)


def learn(doc: dict[str, Any]) -> None:
    STORE.observe(Event(K8S_AUDIT, doc))


def test_learns_from_pods_workload_templates_serviceaccounts_and_registry_secrets() -> None:
    learn(audit_event(namespace="shop", request=with_pull_secrets(pod("myregistry.io/a:1"), "pod-creds")))
    learn(
        audit_event(
            resource="deployments",
            namespace="shop",
            request=with_pull_secrets(deployment("x/y:1"), "deploy-creds"),
        )
    )
    # the stored pod, where admission copied the ServiceAccount's secrets
    learn(
        audit_event(namespace="shop", request=pod("a"), response=with_pull_secrets(pod("a"), "sa-injected"))
    )
    learn(
        audit_event(
            verb="patch",
            resource="serviceaccounts",
            namespace="shop",
            code=200,
            request={"imagePullSecrets": [{"name": "sa-creds"}]},
        )
    )
    learn(
        audit_event(
            resource="secrets",
            namespace="shop",
            name="harbor",
            request={
                "kind": "Secret",
                "metadata": {"name": "harbor"},
                "type": "kubernetes.io/dockerconfigjson",
            },
        )
    )
    for name in ("pod-creds", "deploy-creds", "sa-injected", "sa-creds", "harbor"):
        assert field(secret_read(name)) == "true", name
    assert field(secret_read("pod-creds", namespace="other")) == "false"  # per namespace
    assert field(secret_read("db-password")) == "false"
    assert field(Event(K8S_AUDIT, audit_event(resource="configmaps", name="pod-creds"))) is None


@pytest.mark.parametrize(
    "doc",
    [
        audit_event(namespace="shop", code=403, request=with_pull_secrets(pod("a"), "x")),  # refused
        audit_event(namespace="shop", stage="RequestReceived", request=with_pull_secrets(pod("a"), "x")),
        audit_event(namespace="shop", subresource="status", request=with_pull_secrets(pod("a"), "x")),
        audit_event(verb="get", namespace="shop", request=with_pull_secrets(pod("a"), "x")),
        audit_event(resource="secrets", namespace="shop", name="x", request={"type": "Opaque"}),
        audit_event(namespace=None, request=with_pull_secrets(pod("a"), "x")),
    ],
    ids=["forbidden", "request-received", "subresource", "read", "opaque-secret", "no-namespace"],
)
def test_learns_nothing_from_events_that_did_not_write_a_pull_secret(doc: dict[str, Any]) -> None:
    learn(doc)
    assert len(STORE) == 0


def test_bounded_in_entries_oldest_forgotten_first() -> None:
    store = PullSecretStore(max_entries=3, max_bytes=10**6)
    for name in ("a", "b", "c"):
        store.learn("ns", name)
    assert store.knows("ns", "a")  # a read refreshes it
    store.learn("ns", "d")
    assert [store.knows("ns", n) for n in "abcd"] == [True, False, True, True]
    assert len(store) == 3 and store.evicted == 1


def test_bounded_in_bytes() -> None:
    store = PullSecretStore(max_entries=10**6, max_bytes=3 * (ENTRY_OVERHEAD + 12))
    for i in range(10):
        store.learn("namespace", f"sec{i:02d}")  # 9 + 5 bytes of names each
    assert store.bytes <= store.max_bytes and len(store) == 2
    store.configure(max_entries=1, max_bytes=10**6)  # shrinks at once
    assert len(store) == 1 and store.knows("namespace", "sec09")


def test_names_longer_than_kubernetes_allows_are_not_kept() -> None:
    store = PullSecretStore()
    store.learn("ns", "x" * 254)
    store.learn("n" * 254, "x")
    assert len(store) == 0


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=30,
    ),
    st.sampled_from(["pods", "deployments", "serviceaccounts", "secrets", "cronjobs"]),
)
def test_hostile_objects_never_raise(obj: Any, resource: str) -> None:
    doc = audit_event(
        resource=resource, namespace="ns", request=obj if isinstance(obj, dict) else {"spec": obj}
    )
    doc["responseObject"] = obj
    store = PullSecretStore(max_entries=50, max_bytes=10_000)
    store.observe(Event(K8S_AUDIT, doc))
    assert len(store) <= 50 and store.bytes <= 10_000


def test_pack_rule_reads_learned_and_listed_names_by_non_system_users() -> None:
    ruleset = load_rules(builtin_rule_files())
    rule = next(r for r in ruleset.rules if r.name == READ_RULE)
    learn(audit_event(namespace="shop", request=with_pull_secrets(pod("myregistry.io/a:1"), "harbor-robot")))
    assert rule.predicate(secret_read("harbor-robot"))
    assert rule.predicate(secret_read("harbor-robot", verb="watch"))
    assert not rule.predicate(secret_read("harbor-robot", namespace="other"))
    assert not rule.predicate(secret_read("harbor-robot", user="system:serviceaccount:kube-system:x"))
    assert not rule.predicate(secret_read("db-password"))
    assert rule.predicate(secret_read("regcred", namespace="anywhere"))  # eventd_pull_secret_names


def test_scan_learns_then_alerts_on_the_read(tmp_path: Path) -> None:
    """End to end in a fresh process: a pod names its pull secret, later a user reads it."""
    lines = [
        audit_event(namespace="shop", request=with_pull_secrets(pod("myregistry.io/a:1"), "harbor-robot")),
        audit_event(verb="get", resource="secrets", namespace="shop", name="harbor-robot", code=200),
        audit_event(verb="get", resource="secrets", namespace="shop", name="db-password", code=200),
    ]
    events = tmp_path / "audit.jsonl"
    events.write_text("".join(json.dumps(d) + "\n" for d in lines))
    done = subprocess.run(
        [sys.executable, "-m", "eventd", "scan", "--format", "json", str(events)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert done.returncode == 0, done.stderr
    alerts = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(a["rule"], a["output_fields"]["ka.target.name"]) for a in alerts if "Secret" in a["rule"]] == [
        (READ_RULE, "harbor-robot")
    ]


def _rule(condition: str, output: str = "x", **extra: str) -> str:
    lines = [
        "- rule: r",
        "  desc: d",
        f"  condition: {condition}",
        f"  output: {output}",
        "  priority: WARNING",
        "  source: k8s_audit",
    ]
    lines += [f"  {key}: {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "reads"),
    [
        (_rule("ka.target.resource = secrets"), False),
        (_rule("ka.target.resource = secrets and ka.target.pull_secret = true"), True),
        (_rule("ka.target.resource = secrets", output="pull=%ka.target.pull_secret"), True),
        (_rule("ka.target.name = val(ka.target.pull_secret)"), True),
        (
            "- macro: m\n  condition: ka.target.pull_secret = true\n"
            + _rule("ka.target.resource = secrets and not m"),
            True,
        ),
        (
            _rule("ka.target.resource = secrets")
            + '  exceptions:\n    - name: e\n      fields: ka.target.pull_secret\n      values: ["true"]\n',
            True,
        ),
    ],
)
def test_rules_that_read_what_is_learned_are_found(text: str, reads: bool, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    assert read_by(load_rules([str(path)]).rules) is reads


def test_a_scan_reads_the_writes_it_learns_from_only_when_a_rule_reads_the_field(tmp_path: Path) -> None:
    """Without a rule reading ``ka.target.pull_secret``, learning changes no
    alert, so the prefilter may skip the ServiceAccount write no rule matches."""
    sa = audit_event(
        resource="serviceaccounts", namespace="shop", request={"imagePullSecrets": [{"name": "robot-creds"}]}
    )
    log = tmp_path / "audit.log"
    log.write_bytes(json.dumps(sa).encode() + b"\n")
    plain = tmp_path / "plain.yaml"
    plain.write_text(_rule("ka.target.resource = secrets"))
    skipped = []
    for rules in ([str(plain)], [str(f) for f in builtin_rule_files()]):
        scanner = Scanner(load_rules(rules), prefilter_process=False)
        scanner.scan_path(str(log))
        skipped.append(scanner.stats.skipped)
    assert skipped == [1, 0]
