"""falco.* fields and output_fields read by name (source ``falco``)."""

from __future__ import annotations

import pytest

from eventd.engine.ast import FieldRef
from eventd.engine.errors import FieldError
from eventd.engine.fields import default_registry
from eventd.engine.fields.base import ArgKind
from eventd.events.model import FALCO, K8S_AUDIT, Event

ALERT = {
    "time": "2024-05-01T10:00:00.123456789Z",
    "rule": "Terminal shell in container",
    "priority": "Notice",
    "source": "syscall",
    "hostname": "node-7",
    "output": "10:00:00.123456789: Notice A shell was spawned (user=root container=3f1a)",
    "tags": ["container", "shell", "mitre_execution"],
    "output_fields": {
        "container.id": "3f1a",
        "container.image.repository": "docker.io/library/alpine",
        "k8s.ns.name": "team",
        "proc.tty": 34816,
        "user.loginuid": -1,
        "evt.is_open_write": False,
        "fd.cpu_ratio": 0.25,
        "proc.aname[2]": "containerd-shim",
        "k8s.pod.labels": ["app:web", "tier:front"],
        "k8s.pod.name": None,
        "odd.object": {"a": 1},
    },
}


def get(name: str, doc: dict, arg: str | None = None):
    return default_registry().bind(FALCO, FieldRef(name, arg)).get(Event(FALCO, doc))


def test_alert_fields():
    assert get("falco.rule", ALERT) == "Terminal shell in container"
    assert get("falco.priority", ALERT) == "Notice"
    assert get("falco.source", ALERT) == "syscall"
    assert get("falco.hostname", ALERT) == "node-7"
    assert get("falco.output", ALERT).endswith("container=3f1a)")
    assert get("falco.time", ALERT) == "2024-05-01T10:00:00.123456789Z"
    assert get("falco.tags", ALERT) == ("container", "shell", "mitre_execution")


def test_alert_fields_missing():
    sparse = {"rule": "r", "tags": []}
    assert get("falco.hostname", sparse) is None
    assert get("falco.tags", sparse) is None
    assert get("falco.tags", {"tags": "container"}) is None
    assert get("falco.rule", {"rule": None}) is None


def test_output_fields_keep_their_json_type():
    assert get("container.image.repository", ALERT) == "docker.io/library/alpine"
    assert get("k8s.ns.name", ALERT) == "team"
    assert get("proc.tty", ALERT) == 34816
    assert get("user.loginuid", ALERT) == -1
    assert get("evt.is_open_write", ALERT) is False
    assert get("fd.cpu_ratio", ALERT) == 0.25
    assert get("k8s.pod.labels", ALERT) == ("app:web", "tier:front")
    assert get("odd.object", ALERT) == '{"a":1}'


def test_output_fields_missing_values():
    assert get("k8s.pod.name", ALERT) is None  # null in the alert
    assert get("container.name", ALERT) is None  # not printed by the rule
    assert get("container.id", {"rule": "no output_fields"}) is None
    assert get("container.id", {"output_fields": ["not", "an", "object"]}) is None


def test_output_field_with_index_argument_reads_the_falco_token():
    assert get("proc.aname", ALERT, "2") == "containerd-shim"
    assert get("proc.aname", ALERT) is None
    assert get("proc.aname", ALERT, "3") is None


@pytest.mark.parametrize(("name", "arg"), [("falco.unknown", None), ("nodots", None), ("proc.aname", "x")])
def test_unresolvable_names_fail_to_bind(name, arg):
    with pytest.raises(FieldError):
        default_registry().bind(FALCO, FieldRef(name, arg))


def test_dynamic_fields_are_resolved_once_and_only_for_falco():
    fieldset = default_registry().fieldset(FALCO)
    first = fieldset.lookup("k8s.ns.name")
    assert first is fieldset.lookup("k8s.ns.name")
    assert first.arg is ArgKind.INDEX and not first.is_list
    assert "k8s.ns.name" not in fieldset.defs
    with pytest.raises(FieldError, match="unknown field"):
        default_registry().bind(K8S_AUDIT, FieldRef("k8s.ns.name"))


def test_declared_fields_shadow_output_fields():
    alert = {**ALERT, "output_fields": {"container.image.tag": "from-output", "json.value": "x"}}
    alert["output_fields"]["container.image.repository"] = "nginx"
    assert get("container.image.tag", alert) == "from-output"  # twin built from repository + tag
    assert get("json.value", alert, "/rule") == "Terminal shell in container"


def test_ka_tokens_in_output_fields_are_readable():
    alert = {**ALERT, "source": "k8s_audit", "output_fields": {"ka.verb": "create", "ka.target.name": "web"}}
    assert get("ka.verb", alert) == "create"
    assert get("ka.target.name", alert) == "web"
    assert get("falco.source", alert) == "k8s_audit"


def test_registry_is_built_once():
    assert default_registry() is default_registry()
    sources = set(default_registry().sets)
    assert sources == {K8S_AUDIT, FALCO}
