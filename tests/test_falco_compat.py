"""Falco parity on a Falco-style rules file (``tests/data/rules/falco_style_k8s.yaml``).

Each rule of the file gets audit events Falco would alert on and near
misses it would not, evaluated with ``rule_matching: all`` so that a case
also proves no other rule fires.  The file exercises what Falco users rely
on: overrides (appended exceptions and list items, replaced priority and
enabled flag, a macro condition appended with ``or``), list fields (``in``
is all values, ``intersects`` any), missing values (a check is false, its
``not`` true), exceptions, ``<NA>`` and ``(a,b)`` in outputs, and first match
in load order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from eventd.alerts import build_alert
from eventd.engine.loader import load_rules, load_rules_text
from eventd.engine.matcher import Matcher
from eventd.engine.ruleset import RuleSet
from eventd.events.decode import decode_object
from eventd.events.model import Event
from eventd.priority import Priority
from tests.support.builders import audit_event, pod

FALCO_STYLE = Path(__file__).parent / "data" / "rules" / "falco_style_k8s.yaml"
PRIVILEGED = "Privileged Pod Launched"
EXEC = "Exec Into Pod"
CREDS = "Credentials In ConfigMap"
UNEXPECTED_NS = "Unexpected Namespace"
DELETION = "Every Deletion"

#: Loaded after the Falco-style file: turns its disabled rules back on.
REENABLE = """\
- rule: Unexpected Namespace
  enabled: true
  override:
    enabled: replace
- rule: Every Deletion
  enabled: true
  override:
    enabled: replace
"""

#: Broad rules that overlap the Falco-style ones, to observe first match.
BROAD = """\
- rule: Any Pod Write
  desc: overlaps Privileged Pod Launched and Exec Into Pod
  condition: ka.target.resource = pods and ka.verb in (create, update, patch)
  output: pod write by %ka.user.name
  priority: DEBUG
  source: k8s_audit
- rule: Any Pod Exec
  desc: overlaps Exec Into Pod
  condition: ka.target.subresource = exec
  output: exec by %ka.user.name
  priority: EMERGENCY
  source: k8s_audit
"""


@pytest.fixture(scope="module")
def ruleset() -> RuleSet:
    return load_rules([FALCO_STYLE])


@pytest.fixture(scope="module")
def reenabled(tmp_path_factory: pytest.TempPathFactory) -> RuleSet:
    local = tmp_path_factory.mktemp("rules") / "local.yaml"
    local.write_text(REENABLE)
    return load_rules([FALCO_STYLE, local])


def _event(doc: dict[str, Any]) -> Event:
    (event,), errors = decode_object(doc)
    assert errors == []
    return event


def matches(ruleset: RuleSet, doc: dict[str, Any], rule_matching: str = "all") -> list[str]:
    return [r.name for r in Matcher(ruleset, rule_matching=rule_matching).match(_event(doc))]


def rendered(ruleset: RuleSet, name: str, doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    (rule,) = [r for r in ruleset.rules if r.name == name]
    return rule.output.render(_event(doc))


def privileged_pod(*images: str | None, privileged: bool | None = True) -> dict[str, Any]:
    """A Pod whose first container sets ``privileged`` (``None``: no securityContext);
    an image of ``None`` leaves that container without an ``image`` key."""
    spec = pod(*(i or "placeholder" for i in images))
    for container, image in zip(spec["spec"]["containers"], images, strict=True):
        if image is None:
            del container["image"]
    if privileged is not None:
        spec["spec"]["containers"][0]["securityContext"] = {"privileged": privileged}
    return spec


def pod_create(*images: str | None, privileged: bool | None = True, **kw: Any) -> dict[str, Any]:
    return audit_event(request=privileged_pod(*images, privileged=privileged), **kw)


def exec_event(user: str = "alice@example.com", **kw: Any) -> dict[str, Any]:
    args = {
        "subresource": "exec",
        "stage": "ResponseStarted",
        "code": 101,
        "requestURI": "/api/v1/namespaces/default/pods/web/exec?command=sh&command=-c&container=c0",
        "user": user,
    }
    return audit_event(**{**args, **kw})


def configmap(data: dict[str, str] | None, **kw: Any) -> dict[str, Any]:
    request = None if data is None else {"kind": "ConfigMap", "data": data}
    return audit_event(resource="configmaps", name="app-config", request=request, **kw)


def namespace_event(name: str, **kw: Any) -> dict[str, Any]:
    return audit_event(resource="namespaces", name=name, namespace=None, **kw)


EVIL = "evil.example.com/x:1"
CALICO = "quay.io/calico/node:v3.27"
PROXY = "registry.k8s.io/kube-proxy:v1.30.0"


def by(user: str, namespace: str) -> dict[str, Any]:
    """A privileged pod from an untrusted image created by ``user`` in ``namespace``."""
    return pod_create(EVIL, user=user, namespace=namespace)


CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    # Privileged Pod Launched
    ("privileged pod", pod_create(EVIL), [PRIVILEGED]),
    ("privileged pod, appended kevt stage", pod_create(EVIL, stage="ResponseStarted"), [PRIVILEGED]),
    ("privileged pod, request received", pod_create(EVIL, stage="RequestReceived"), []),
    ("privileged: false", pod_create(EVIL, privileged=False), []),
    ("privileged flag missing", pod_create(EVIL, privileged=None), []),
    ("privileged pod update", pod_create(EVIL, verb="update"), []),
    ("pods/status write", pod_create(EVIL, subresource="status"), []),
    ("in = all: every image trusted", pod_create(PROXY, CALICO), []),
    ("in = all: one image untrusted", pod_create(CALICO, EVIL), [PRIVILEGED]),
    ("missing repository: not in is true", pod_create(PROXY, None), [PRIVILEGED]),
    ("exception: ops-bot in kube-system", by("ops-bot", "kube-system"), []),
    ("exception: kube-operator in kube-system", by("kube-operator", "kube-system"), []),
    ("exception: ops-bot in monitoring (appended)", by("ops-bot", "monitoring"), []),
    ("no exception: kube-operator in monitoring", by("kube-operator", "monitoring"), [PRIVILEGED]),
    ("no exception: ops-bot in default", by("ops-bot", "default"), [PRIVILEGED]),
    ("exception: intersects = any", pod_create(EVIL, CALICO, namespace="calico-system"), []),
    ("no exception: no calico image", pod_create(EVIL, namespace="calico-system"), [PRIVILEGED]),
    ("no exception: missing repository", pod_create(CALICO, None, namespace="calico-system"), [PRIVILEGED]),
    # Exec Into Pod
    ("exec", exec_event(), [EXEC]),
    ("attach", exec_event(subresource="attach"), [EXEC]),
    ("exec, response complete", exec_event(stage="ResponseComplete", code=200), []),
    ("pods/log", exec_event(subresource="log", verb="get"), []),
    ("exec by a listed operator", exec_event(user="ops-bot"), []),
    ("exec by a quoted list item", exec_event(user="cluster admin"), []),
    ("exec by a prefix of a list item", exec_event(user="cluster"), [EXEC]),
    # Credentials In ConfigMap
    ("configmap with a password", configmap({"db_password": "x"}), [CREDS]),
    ("configmap with an AWS key", configmap({"creds": "aws_secret_access_key=abc"}, verb="patch"), [CREDS]),
    ("configmap, appended kevt stage", configmap({"password": "x"}, stage="ResponseStarted"), [CREDS]),
    ("configmap read: macro keeps its grouping", configmap({"password": "x"}, verb="get"), []),
    ("configmap without credentials", configmap({"color": "blue"}, verb="update"), []),
    ("configmap without a body: missing is false", configmap(None), []),
    # Disabled by the file's own overrides
    ("namespace create", namespace_event("surprise"), []),
    ("deletion", audit_event(verb="delete", code=200), []),
    # Nothing
    ("pod read", audit_event(verb="get", code=200), []),
]


@pytest.mark.parametrize(("doc", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rules_fire_as_in_falco(ruleset: RuleSet, doc: dict[str, Any], expected: list[str]) -> None:
    assert matches(ruleset, doc) == expected


def test_file_items_load_as_falco_loads_them(ruleset: RuleSet) -> None:
    assert [r.name for r in ruleset.rules] == [PRIVILEGED, EXEC, CREDS]
    assert ruleset.disabled == (UNEXPECTED_NS, DELETION)
    assert any("Node Shell Spawned" in w for w in ruleset.warnings)  # syscall source: skipped
    by_name = {r.name: r for r in ruleset.rules}
    assert by_name[PRIVILEGED].priority is Priority.CRITICAL  # replaced by the override
    assert by_name[EXEC].priority is Priority.NOTICE
    assert by_name[PRIVILEGED].tags == ("k8s", "mitre_privilege_escalation")


REENABLED_CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("unexpected namespace", namespace_event("surprise"), [UNEXPECTED_NS]),
    ("expected namespace", namespace_event("kube-public"), []),
    ("appended expected namespace", namespace_event("monitoring"), []),
    ("namespace update", namespace_event("surprise", verb="update"), []),
    ("deletion by a person", audit_event(verb="delete", code=200), [DELETION]),
    ("deletion by the system", audit_event(verb="delete", code=200, user="system:kube-scheduler"), []),
    ("failed deletion", audit_event(verb="delete", code=404), []),
]


@pytest.mark.parametrize(
    ("doc", "expected"), [c[1:] for c in REENABLED_CASES], ids=[c[0] for c in REENABLED_CASES]
)
def test_disabled_rules_fire_once_enabled_by_a_later_file(
    reenabled: RuleSet, doc: dict[str, Any], expected: list[str]
) -> None:
    assert matches(reenabled, doc) == expected


def test_reenabled_rules_keep_their_position_and_replaced_tags(reenabled: RuleSet) -> None:
    assert [r.name for r in reenabled.rules] == [PRIVILEGED, EXEC, CREDS, UNEXPECTED_NS, DELETION]
    assert next(r for r in reenabled.rules if r.name == UNEXPECTED_NS).tags == ("k8s", "site")


# ------------------------------------------------------------------ outputs


def test_outputs_render_missing_values_as_na_and_lists_in_parentheses(ruleset: RuleSet) -> None:
    text, fields = rendered(ruleset, PRIVILEGED, pod_create(EVIL, CALICO, namespace="shop"))
    assert text == f"Privileged pod (user=alice@example.com pod=<NA> ns=shop images=({EVIL},{CALICO}))"
    assert fields == {
        "ka.user.name": "alice@example.com",
        "ka.resp.name": None,
        "ka.target.namespace": "shop",
        "ka.req.pod.containers.image": [EVIL, CALICO],
    }
    stored = pod_create(EVIL, response={"kind": "Pod", "metadata": {"name": "web-7d4b9"}})
    assert "pod=web-7d4b9 " in rendered(ruleset, PRIVILEGED, stored)[0]


def test_outputs_take_the_first_query_parameter(ruleset: RuleSet) -> None:
    text, fields = rendered(ruleset, EXEC, exec_event())
    assert text == "Exec into pod (user=alice@example.com pod=web ns=default command=sh)"
    assert fields["ka.uri.param[command]"] == "sh"  # the key is the token as written
    no_command = exec_event(requestURI="/api/v1/namespaces/default/pods/web/exec?container=c0")
    assert rendered(ruleset, EXEC, no_command)[0].endswith("command=<NA>)")


def test_output_with_several_missing_values(reenabled: RuleSet) -> None:
    doc = audit_event(verb="delete", code=200, resource="namespaces", namespace=None, name="old")
    assert rendered(reenabled, DELETION, doc)[0] == "Deleted namespaces <NA>/old by alice@example.com"


def test_alert_output_is_prefixed_with_time_and_priority(ruleset: RuleSet) -> None:
    event = _event(pod_create(EVIL))
    (rule,) = Matcher(ruleset).match(event)
    alert = build_alert(rule, event, "host")
    assert alert.output.startswith("10:00:00.123456000: Critical Privileged pod (user=alice@example.com ")
    assert alert.to_dict()["priority"] == "Critical"


# ------------------------------------------------------------ missing values


MISSING_RULES = """\
- rule: Subresource Not Exec
  desc: "!= on a missing value is false"
  condition: ka.target.resource = pods and ka.target.subresource != exec
  output: x
  priority: INFO
  source: k8s_audit
- rule: Not Subresource Exec
  desc: not of a check on a missing value is true
  condition: ka.target.resource = pods and not ka.target.subresource = exec
  output: x
  priority: INFO
  source: k8s_audit
- rule: Subresource In
  desc: in on a missing value is false
  condition: ka.target.resource = pods and ka.target.subresource in (exec, status)
  output: x
  priority: INFO
  source: k8s_audit
- rule: Not Verb Get
  desc: without an auditID every ka field is missing
  condition: not ka.verb = get and not ka.verb exists
  output: "%ka.verb"
  priority: INFO
  source: k8s_audit
"""


def test_missing_values_make_checks_false_and_their_negation_true() -> None:
    rules = load_rules_text([("missing.yaml", MISSING_RULES)])
    assert matches(rules, audit_event()) == ["Not Subresource Exec"]
    assert matches(rules, audit_event(subresource="status")) == [
        "Subresource Not Exec",
        "Not Subresource Exec",
        "Subresource In",
    ]
    assert matches(rules, audit_event(subresource="exec")) == ["Subresource In"]
    anonymous = audit_event(verb="get")
    del anonymous["auditID"]
    assert matches(rules, anonymous) == ["Not Verb Get"]


# -------------------------------------------------------------- first match


def test_first_match_is_the_first_rule_in_load_order(ruleset: RuleSet, tmp_path: Path) -> None:
    broad = tmp_path / "broad.yaml"
    broad.write_text(BROAD)
    after = load_rules([FALCO_STYLE, broad])
    before = load_rules([broad, FALCO_STYLE])
    privileged, plain = pod_create(EVIL), pod_create(EVIL, privileged=False)
    assert matches(after, privileged) == [PRIVILEGED, "Any Pod Write"]
    assert matches(after, privileged, "first") == [PRIVILEGED]
    assert matches(after, plain, "first") == ["Any Pod Write"]
    assert matches(after, exec_event()) == [EXEC, "Any Pod Write", "Any Pod Exec"]
    # Load order decides, not priority: Any Pod Exec is Emergency.
    assert matches(after, exec_event(), "first") == [EXEC]
    assert matches(before, privileged, "first") == ["Any Pod Write"]
    assert matches(before, exec_event(), "first") == ["Any Pod Write"]
    assert matches(ruleset, audit_event(verb="get"), "first") == []
