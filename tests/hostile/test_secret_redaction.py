"""Secret values and other credentials never leave eventd, in any shape.

Unique marker values are planted in every shape a credential can take in an
audit event or a Falco alert (issue 11 point 1): Secret objects, JSON,
merge, strategic-merge and apply patches (YAML or JSON text, or text that
is neither), ``SecretList`` items, last-applied annotations, docker
configs, non-mapping ``data``/``stringData``, ConfigMap credential keys, env
variables of pods and workload templates, and Falco ``output_fields``.  A
rule that copies the whole event into its alert (``%jevt.obj``) then runs
in a real ``eventd scan`` and a real ``eventd run``; no marker may appear in
what they write.  Values that must stay (images, harmless env variables and
ConfigMap entries) are planted too, so that the tests also fail when
everything is thrown away.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventd.events.decode import decode_document
from eventd.events.redact import REDACTED
from tests.support.builders import audit_event, falco_alert
from tests.support.daemon_process import EventdProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
MODULE = (sys.executable, "-m", "eventd")
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

#: Copies whole events into alerts, so whatever survives redaction is seen.
DUMP_RULES = """
- rule: Dump audit event
  desc: every audit event, whole
  condition: jevt.value[/kind] = Event
  output: audit %jevt.obj
  priority: Debug
  source: k8s_audit
- rule: Dump Falco alert
  desc: every Falco alert, whole
  condition: falco.rule exists
  output: falco %jevt.obj
  priority: Debug
  source: falco
"""


def mark(name: str) -> str:
    """A marker that no redacted output can contain by chance."""
    return f"LEAK{name.upper().replace('-', '').replace('_', '')}XQZ"


def keep(name: str) -> str:
    return f"KEEP{name.upper().replace('-', '').replace('_', '')}XQZ"


def _applied(obj: dict[str, Any]) -> dict[str, Any]:
    return {"name": "x", "annotations": {LAST_APPLIED: json.dumps(obj)}}


def secret_cases() -> dict[str, dict[str, Any]]:
    """One audit event per shape of a Secret value, keyed by the marker's name."""
    m = mark
    yaml_apply = yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db"},
            "stringData": {"pw": m("yaml-apply")},
        }
    )
    return {
        "object-data": audit_event(
            resource="secrets", request={"kind": "Secret", "data": {"a": m("object-data")}}
        ),
        "object-stringdata": audit_event(
            resource="secrets",
            verb="update",
            request={"kind": "Secret", "stringData": {"b": m("object-stringdata")}},
        ),
        "data-string": audit_event(resource="secrets", request={"kind": "Secret", "data": m("data-string")}),
        "data-list": audit_event(resource="secrets", request={"kind": "Secret", "data": [m("data-list")]}),
        "stringdata-string": audit_event(resource="secrets", request={"stringData": m("stringdata-string")}),
        "stringdata-list": audit_event(
            resource="secrets", request={"stringData": [{"k": m("stringdata-list")}, 5]}
        ),
        "data-nested": audit_event(resource="secrets", request={"data": {"a": {"b": [m("data-nested")]}}}),
        "json-patch": audit_event(
            resource="secrets",
            verb="patch",
            request=[
                {"op": "add", "path": "/data/token", "value": m("json-patch")},
                {"op": "replace", "path": "/stringData", "value": {"k": m("json-patch-map")}},
                {"op": "test", "path": "/data/x", "value": [m("json-patch-test")]},
                {"op": "add", "path": "/metadata/labels/app", "value": m("json-patch-meta")},
            ],
        ),
        "merge-patch": audit_event(
            resource="secrets", verb="patch", request={"data": {"pw": m("merge-patch")}, "stringData": None}
        ),
        "strategic-patch": audit_event(
            resource="secrets",
            verb="patch",
            request={"$patch": "merge", "stringData": {"pw": m("strategic-patch")}, "data": {"old": None}},
        ),
        "yaml-apply": audit_event(resource="secrets", verb="patch", request=yaml_apply),
        "json-apply": audit_event(
            resource="secrets", verb="patch", request=json.dumps({"data": {"k": m("json-apply")}})
        ),
        "broken-apply": audit_event(
            resource="secrets", verb="patch", request=f"stringData: {{pw: {m('broken-apply')}\n  - ["
        ),
        "scalar-apply": audit_event(resource="secrets", verb="patch", request=m("scalar-apply")),
        "secret-list": audit_event(
            resource="secrets",
            verb="list",
            name=None,
            code=200,
            response={
                "kind": "SecretList",
                "metadata": {"resourceVersion": "1"},
                "items": [
                    {"metadata": {"name": "a"}, "data": {"k": m("secret-list")}},
                    {"metadata": _applied({"stringData": {"k": m("secret-list-applied")}}), "type": "Opaque"},
                ],
            },
        ),
        "last-applied": audit_event(
            resource="secrets",
            verb="update",
            request={"kind": "Secret", "metadata": _applied({"data": {"k": m("last-applied")}})},
        ),
        "last-applied-deep": audit_event(
            resource="secrets",
            request={"metadata": {"x": [{"annotations": {LAST_APPLIED: m("last-applied-deep")}}]}},
        ),
        "dockerconfigjson": audit_event(
            resource="secrets",
            request={
                "kind": "Secret",
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": m("dockerconfigjson"), ".dockercfg": m("dockercfg")},
            },
        ),
        "docker-in-metadata": audit_event(
            resource="secrets",
            request={"metadata": {"annotations": {".dockerconfigjson": m("docker-in-metadata")}}},
        ),
        "response-object": audit_event(
            resource="secrets",
            verb="get",
            code=200,
            response={"kind": "Secret", "data": {"k": m("response-object")}},
        ),
        "subresource": audit_event(
            resource="secrets", subresource="status", request={"data": {"k": m("subresource")}}
        ),
        "unknown-field": audit_event(
            resource="secrets", request={"kind": "Secret", "extra": m("unknown-field")}
        ),
        "v1beta1": audit_event(
            resource="secrets", api_version="audit.k8s.io/v1beta1", request={"data": {"k": m("v1beta1")}}
        ),
        "delete-collection": audit_event(
            resource="secrets",
            verb="deletecollection",
            code=200,
            response={"kind": "SecretList", "items": [{"stringData": {"k": m("delete-collection")}}]},
        ),
    }


def credential_cases() -> dict[str, dict[str, Any]]:
    """ConfigMaps and pod env variables with credential-looking names."""
    m = mark

    def env_pod(*env: dict[str, str]) -> dict[str, Any]:
        return {
            "kind": "Pod",
            "metadata": {"name": "web"},
            "spec": {
                "containers": [
                    {
                        "name": "c",
                        "image": f"registry.example.com/{keep('image').lower()}:1",
                        "env": list(env),
                    }
                ],
                "initContainers": [
                    {"name": "i", "image": "busybox", "env": [{"name": "API_KEY", "value": m("init-env")}]}
                ],
                "ephemeralContainers": [
                    {"name": "e", "env": [{"name": "auth_token", "value": m("ephemeral-env")}]}
                ],
            },
        }

    pod = env_pod({"name": "DB_PASSWORD", "value": m("pod-env")}, {"name": "LOG_LEVEL", "value": keep("env")})
    template = {"spec": env_pod({"name": "AWS_SECRET_ACCESS_KEY", "value": m("deploy-env")})["spec"]}
    return {
        "configmap": audit_event(
            resource="configmaps",
            request={
                "kind": "ConfigMap",
                "data": {
                    "db_password": m("configmap"),
                    "api-key": m("configmap-apikey"),
                    "color": keep("configmap"),
                },
                "binaryData": {"tls.key": m("configmap-binary")},
            },
        ),
        "configmap-patch": audit_event(
            resource="configmaps",
            verb="patch",
            request=[
                {"op": "add", "path": "/data/SECRET_TOKEN", "value": m("configmap-patch")},
                {"op": "replace", "path": "/data", "value": {"passwd": m("configmap-patch-map")}},
            ],
        ),
        "configmap-applied": audit_event(
            resource="configmaps",
            verb="update",
            request={
                "kind": "ConfigMap",
                "metadata": _applied({"data": {"credentials": m("configmap-applied")}}),
            },
        ),
        "configmap-yaml": audit_event(
            resource="configmaps",
            verb="patch",
            request=yaml.safe_dump({"data": {"token": m("configmap-yaml")}}),
        ),
        "pod": audit_event(resource="pods", request=pod),
        "pod-response": audit_event(
            resource="pods", verb="get", code=200, response={"kind": "PodList", "items": [pod]}
        ),
        "deployment": audit_event(
            resource="deployments", request={"kind": "Deployment", "spec": {"template": template}}
        ),
        "cronjob": audit_event(
            resource="cronjobs",
            request={"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": template}}}},
        ),
        "pod-patch": audit_event(
            resource="deployments",
            verb="patch",
            request=[
                {
                    "op": "add",
                    "path": "/spec/template/spec/containers/0/env/-",
                    "value": {"name": "TOKEN", "value": m("pod-patch")},
                },
                {
                    "op": "replace",
                    "path": "/spec/template/spec/containers/0/env/3/value",
                    "value": m("pod-patch-value"),
                },
                {
                    "op": "replace",
                    "path": "/spec/template/spec/containers/0/image",
                    "value": keep("patch-image"),
                },
            ],
        ),
        "ephemeral-subresource": audit_event(
            resource="pods",
            subresource="ephemeralcontainers",
            verb="patch",
            request={
                "spec": {
                    "ephemeralContainers": [{"env": [{"name": "password", "value": m("ephemeral-sub")}]}]
                }
            },
        ),
    }


def falco_cases() -> dict[str, dict[str, Any]]:
    m = mark
    return {
        "falco-authorization": falco_alert(
            **{"proc.cmdline": f"curl -H 'Authorization: Bearer {m('falco-authorization')}' https://api"}
        ),
        "falco-env": falco_alert(**{"proc.env": f"HOME=/root DB_PASSWORD={m('falco-env')} LANG=C"}),
        "falco-cmdline": falco_alert(**{"proc.cmdline": f"mysql --password={m('falco-cmdline')} -h db"}),
        "falco-env-arg": falco_alert(**{"proc.env[GITHUB_TOKEN]": m("falco-env-arg")}),
        "falco-url": falco_alert(**{"proc.args": f"clone https://bot:{m('falco-url')}@git.example.com/x"}),
        "falco-output": {
            **falco_alert(**{"proc.cmdline": f"app --token {m('falco-output')}"}),
            "output": f"13:44:05.478445995: Notice run (cmdline=app --token {m('falco-output')} user=root)",
        },
    }


def _events() -> list[tuple[str, dict[str, Any]]]:
    return [*secret_cases().items(), *credential_cases().items()]


def _all_inputs() -> list[dict[str, Any]]:
    return [e for _, e in _events()] + list(falco_cases().values())


#: Every marker planted, found where it was planted (escapes cannot split one).
LEAKS = sorted(set(re.findall(r"LEAK[A-Z0-9]+XQZ", json.dumps(_all_inputs()))))
KEEPS = [keep("image").lower(), keep("env"), keep("configmap"), keep("patch-image")]


def test_every_case_plants_markers() -> None:
    """Each case carries a marker, and the values that must stay are there."""
    cases = {**secret_cases(), **credential_cases(), **falco_cases()}
    assert [name for name, case in cases.items() if "LEAK" not in json.dumps(case)] == []
    assert len(LEAKS) > len(cases)
    text = json.dumps(_all_inputs())
    assert [k for k in KEEPS if k not in text] == []


def _input_lines() -> list[bytes]:
    """Events one per line, a v1 and a v1beta1 EventList, then Falco alerts."""
    events = [e for _, e in _events()]
    half = len(events) // 2
    lines = [orjson.dumps(e) for e in events[:half]]
    lines.append(
        orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": events[half:-3]})
    )
    lines.append(
        orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1beta1", "items": events[-3:]})
    )
    lines += [orjson.dumps(a) for a in falco_cases().values()]
    return lines


@pytest.fixture(scope="module")
def scan_output(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    tmp = tmp_path_factory.mktemp("scan")
    (tmp / "rules.yaml").write_text(DUMP_RULES)
    (tmp / "audit.jsonl").write_bytes(b"\n".join(_input_lines()) + b"\n")
    proc = subprocess.run(
        [*MODULE, "scan", "-r", "rules.yaml", "audit.jsonl"],
        cwd=tmp,
        capture_output=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode(), proc.stderr.decode()


def test_scan_alerts_on_every_event(scan_output: tuple[str, str]) -> None:
    alerts = [json.loads(line) for line in scan_output[0].splitlines()]
    assert len(alerts) == len(_events()) + len(falco_cases())
    assert all(REDACTED in a["output"] for a in alerts)


@pytest.mark.parametrize("marker", LEAKS)
def test_scan_output_never_carries_the_marker(scan_output: tuple[str, str], marker: str) -> None:
    out, err = scan_output
    assert marker not in out
    assert marker not in err


@pytest.mark.parametrize("value", KEEPS)
def test_scan_keeps_what_is_no_credential(scan_output: tuple[str, str], value: str) -> None:
    assert value in scan_output[0]


# ---------------------------------------------------------------------- daemon


@pytest.fixture(scope="module")
def daemon_output(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """Audit batches through the webhook and Falco alerts through the HTTP
    input of a real ``eventd run``, to the stdout and file sinks."""
    tmp = tmp_path_factory.mktemp("daemon")
    (tmp / "rules.yaml").write_text(DUMP_RULES)
    webhook, falco = free_port(), free_port()
    alerts_file = tmp / "alerts.jsonl"
    config = {
        "rules": [str(tmp / "rules.yaml")],
        "log_level": "debug",
        "sources": {
            "k8s_audit_webhook": {"listen": f"127.0.0.1:{webhook}"},
            "falco_http": {"listen": f"127.0.0.1:{falco}"},
        },
        "sinks": {"stdout": {}, "file": {"path": str(alerts_file)}},
    }
    daemon = EventdProcess(tmp, config)
    try:
        daemon.wait_ready()
        events = [e for _, e in _events()]
        for batch in (events[:10], events[10:]):
            body = orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": batch})
            _post(f"http://127.0.0.1:{webhook}/k8s-audit", body)
        for alert in falco_cases().values():
            _post(f"http://127.0.0.1:{falco}/", orjson.dumps(alert))
        # Falco alerts are forwarded and also matched: two alerts each.
        want = len(events) + 2 * len(falco_cases())
        daemon.wait_for(lambda: len(daemon.alerts) >= want, timeout=30, what=f"{want} alerts")
        daemon.wait_for(lambda: _lines(alerts_file) >= want, timeout=30, what="the alerts file")
    finally:
        assert daemon.stop() == 0
    stdout = "\n".join(json.dumps(a) for a in daemon.alerts)
    yield stdout, alerts_file.read_text(), daemon.stderr()


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


@pytest.mark.parametrize("marker", LEAKS)
def test_daemon_sinks_never_carry_the_marker(daemon_output: tuple[str, str, str], marker: str) -> None:
    stdout, file_sink, logs = daemon_output
    assert marker not in stdout
    assert marker not in file_sink
    assert marker not in logs


@pytest.mark.parametrize("value", KEEPS)
def test_daemon_keeps_what_is_no_credential(daemon_output: tuple[str, str, str], value: str) -> None:
    assert value in daemon_output[0]
    assert value in daemon_output[1]


# ------------------------------------------------------------------ properties

MARKER = "LEAKPROPERTYXQZ"
_names = st.text("abcdefghij_-.", min_size=1, max_size=8)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text("xyz ", max_size=5))


_marked = st.recursive(
    st.sampled_from([MARKER, f"x{MARKER}", f"password: {MARKER}", f'{{"k": "{MARKER}"}}']),
    lambda inner: st.one_of(
        st.lists(st.one_of(inner, _scalars), min_size=1, max_size=3).map(lambda xs: [*xs, MARKER]),
        st.dictionaries(_names, st.one_of(inner, _scalars), max_size=3).map(lambda d: {**d, "zz": MARKER}),
        inner.map(lambda v: yaml.safe_dump({"stringData": {"k": v}})),  # text nested in text
        inner.map(lambda v: json.dumps({"data": v})),
    ),
    max_leaves=8,
)


def _secret_object(value: Any, key: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, key: value}


_secret_bodies = st.one_of(
    st.builds(_secret_object, _marked, st.sampled_from(["data", "stringData", "extra", "$patch"])),
    _marked.map(lambda v: {"kind": "SecretList", "items": [{"metadata": {"name": "x"}, "data": v}]}),
    _marked.map(lambda v: {"metadata": {"annotations": {LAST_APPLIED: json.dumps({"data": v})}}}),
    st.lists(
        st.builds(
            lambda op, path, v: {"op": op, "path": path, "value": v},
            st.sampled_from(["add", "replace", "test"]),
            st.sampled_from(["/data/k", "/stringData", "/metadata/labels/x", "", "/"]),
            _marked,
        ),
        min_size=1,
        max_size=3,
    ),
    _marked.map(lambda v: yaml.safe_dump(_secret_object(v, "stringData"))),
    _marked.map(lambda v: json.dumps(_secret_object(v, "data"))),
    _marked.map(lambda v: f"{{broken: [{json.dumps(v)}"),
    _marked,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=_secret_bodies,
    where=st.sampled_from(["requestObject", "responseObject"]),
    verb=st.sampled_from(["create", "update", "patch", "get", "list", "delete", "deletecollection", "watch"]),
    subresource=st.sampled_from([None, "status", "anything"]),
    version=st.sampled_from(["audit.k8s.io/v1", "audit.k8s.io/v1beta1"]),
    in_list=st.booleans(),
)
def test_no_secret_shape_survives_decoding(
    body: Any, where: str, verb: str, subresource: str | None, version: str, in_list: bool
) -> None:
    event = audit_event(resource="secrets", verb=verb, subresource=subresource, api_version=version)
    event[where] = body
    doc: Any = {"kind": "EventList", "apiVersion": version, "items": [event]} if in_list else event
    assert MARKER in orjson.dumps(doc).decode()
    (decoded,), errors = decode_document(orjson.dumps(doc))
    assert errors == []
    assert MARKER not in orjson.dumps(decoded.doc).decode()


def _decoded(doc: dict[str, Any]) -> str:
    """The event as every consumer sees it: decoded (and so redacted), as JSON."""
    (event,), errors = decode_document(orjson.dumps(doc))
    assert errors == []
    return orjson.dumps(event.doc).decode()


_credential_names = st.sampled_from(
    [
        "password",
        "DB_PASSWORD",
        "api_key",
        "apikey",
        "GITHUB_TOKEN",
        "client-secret",
        "tls.key",
        "credentials",
    ]
)
_plain_names = st.sampled_from(
    ["LOG_LEVEL", "HOME", "color", "nginx.conf", "PORT", "author", "PWD", "keyring"]
)


def _env_var(name: str, value: str) -> dict[str, str]:
    return {"name": name, "value": value}


_containers = st.lists(
    st.builds(
        lambda env, image: {"name": "c", "image": image, "env": env},
        st.lists(st.builds(_env_var, _plain_names, st.text("abc/:", max_size=6)), max_size=2).flatmap(
            lambda env: _credential_names.map(lambda n: [*env, _env_var(n, MARKER)])
        ),
        st.sampled_from(["nginx", "docker.io/library/python:3", "registry:5000/team/app@sha256:" + "a" * 64]),
    ),
    min_size=1,
    max_size=2,
)


def _in_workload(resource: str, spec: dict[str, Any]) -> dict[str, Any]:
    template = {"metadata": {"labels": {"app": "x"}}, "spec": spec}
    return {
        "pods": {"kind": "Pod", "spec": spec},
        "deployments": {"kind": "Deployment", "spec": {"template": template}},
        "statefulsets": {"spec": {"template": template}},
        "cronjobs": {"spec": {"jobTemplate": {"spec": {"template": template}}}},
        "podtemplates": {"template": template},
    }[resource]


@settings(max_examples=200, deadline=None)
@given(
    resource=st.sampled_from(["pods", "deployments", "statefulsets", "cronjobs", "podtemplates"]),
    slot=st.sampled_from(["containers", "initContainers", "ephemeralContainers"]),
    containers=_containers,
    shape=st.sampled_from(["object", "list", "patch", "text", "applied"]),
)
def test_no_credential_env_survives(resource: str, slot: str, containers: list[Any], shape: str) -> None:
    obj = _in_workload(resource, {slot: containers})
    body: Any = {
        "object": obj,
        "list": {"kind": "List", "items": [obj]},
        "patch": [{"op": "add", "path": "/spec/x", "value": 1}, {"op": "replace", "path": "", "value": obj}],
        "text": yaml.safe_dump(obj),
        "applied": {"metadata": {"annotations": {LAST_APPLIED: json.dumps(obj)}}},
    }[shape]
    assert MARKER not in _decoded(audit_event(resource=resource, request=body))


@settings(max_examples=200, deadline=None)
@given(
    key=_credential_names,
    plain=st.dictionaries(_plain_names, st.text("abc", max_size=4), max_size=3),
    shape=st.sampled_from(["data", "binaryData", "patch-key", "patch-map", "text", "applied"]),
)
def test_no_credential_configmap_value_survives(key: str, plain: dict[str, str], shape: str) -> None:
    data = {**plain, key: MARKER}
    body: Any = {
        "data": {"kind": "ConfigMap", "data": data},
        "binaryData": {"kind": "ConfigMap", "binaryData": data},
        "patch-key": [{"op": "add", "path": f"/data/{key.replace('/', '~1')}", "value": MARKER}],
        "patch-map": [{"op": "add", "path": "/data", "value": data}],
        "text": json.dumps({"data": data}),
        "applied": {"metadata": {"annotations": {LAST_APPLIED: json.dumps({"data": data})}}},
    }[shape]
    assert MARKER not in _decoded(audit_event(resource="configmaps", request=body))


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    resource=st.sampled_from(
        ["leases", "nodes", "services", "roles", "pods", "deployments", "configmaps", "jobs"]
    ),
    images=st.lists(
        st.sampled_from(["nginx", "evil.example.com/miner:latest", "10.0.0.5:5000/x"]), min_size=1
    ),
    env=st.lists(st.builds(_env_var, _plain_names, st.text(max_size=6)), max_size=3),
    data=st.dictionaries(_plain_names, st.text(max_size=6), max_size=3),
    extra=_json,
)
def test_nothing_but_credentials_is_redacted(
    resource: str, images: list[str], env: list[Any], data: dict[str, str], extra: Any
) -> None:
    """Images (which the rules read), harmless env variables and ConfigMap
    entries, and any other resource's body stay exactly as they came."""
    spec = {"containers": [{"name": f"c{i}", "image": img, "env": env} for i, img in enumerate(images)]}
    bodies = [
        {"kind": "Pod", "spec": spec, "extra": extra},
        {"spec": {"template": {"spec": spec}}},
        {"data": data, "binaryData": data},
        [{"op": "replace", "path": "/spec/containers/0/image", "value": images[0]}],
        yaml.safe_dump({"spec": spec}),
        extra,
    ]
    for body in bodies:
        doc = audit_event(resource=resource, request=copy.deepcopy(body), response=copy.deepcopy(body))
        (event,), _ = decode_document(orjson.dumps(doc))
        assert event.doc.get("requestObject") == body
        assert event.doc.get("responseObject") == body


_falco_texts = st.builds(
    lambda pre, name, sep, post: f"{pre}{name}{sep}{MARKER}{post}",
    st.sampled_from(["", "env=", "curl -H '", "x ", "HOME=/root "]),
    st.sampled_from(
        ["PASSWORD", "db_password", "--token", "-api-key", "Authorization", "X-Auth-Token", "SECRET"]
    ),
    st.sampled_from(["=", ": ", ": Bearer ", ": Basic ", "='", '="']),
    st.sampled_from(["", " LANG=C", "' https://x", " --verbose"]),
) | st.builds(lambda s: f"git clone https://{s}:{MARKER}@host/r", st.text("abc", min_size=1, max_size=4))


@settings(max_examples=300, deadline=None)
@given(text=_falco_texts, key=st.sampled_from(["proc.cmdline", "proc.env", "proc.args", "evt.args"]))
def test_no_credential_survives_in_falco_alerts(text: str, key: str) -> None:
    alert = falco_alert(**{key: text, "proc.env[AWS_SECRET_ACCESS_KEY]": MARKER + "2", "xs": [text]})
    alert["output"] = f"13:44:05.478445995: Notice shell ({key}={text} env={MARKER}2)"
    (event,), _ = decode_document(orjson.dumps(alert))
    assert MARKER not in orjson.dumps(event.doc).decode()
    assert event.doc["output_fields"]["container.image.repository"] == "docker.io/library/alpine"


# ---------------------------------------------------------------- configuration


def test_switches_and_extra_paths_take_effect() -> None:
    """Off means off (the operator chose it), and extra paths redact."""
    from eventd.events.redact import build_policy, redact_audit_event

    off = build_policy(configmaps=False, pod_env=False, falco_output_fields=False)
    cm = audit_event(resource="configmaps", request={"data": {"password": MARKER}})
    redact_audit_event(cm, off)
    assert cm["requestObject"]["data"]["password"] == MARKER
    secret = audit_event(resource="secrets", request={"data": MARKER})
    redact_audit_event(secret, off)  # Secrets are not negotiable
    assert secret["requestObject"]["data"] == REDACTED
    extra = build_policy(extra_paths=[("widgets", "/spec/creds/*/pw")])
    doc = audit_event(resource="widgets", request={"spec": {"creds": [{"pw": MARKER, "user": "u"}]}})
    redact_audit_event(doc, extra)
    assert doc["requestObject"]["spec"]["creds"] == [{"pw": REDACTED, "user": "u"}]
    patch = audit_event(
        resource="widgets", request=[{"op": "add", "path": "/spec/creds/0", "value": {"pw": MARKER}}]
    )
    redact_audit_event(patch, extra)
    assert MARKER not in json.dumps(patch)


def test_scan_takes_redaction_from_a_config_file(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(DUMP_RULES)
    lines = [
        audit_event(resource="widgets", request={"spec": {"pw": mark("scan-extra")}}),
        audit_event(resource="configmaps", request={"data": {"password": keep("configmap-off")}}),
    ]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in lines) + b"\n")
    (tmp_path / "eventd.yaml").write_text(
        yaml.safe_dump(
            {
                "redaction": {
                    "configmaps": False,
                    "extra_paths": [{"resource": "widgets", "pointer": "/spec/pw"}],
                }
            }
        )
    )
    proc = subprocess.run(
        [*MODULE, "scan", "--config", "eventd.yaml", "-r", "rules.yaml", "in.jsonl"],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert mark("scan-extra") not in proc.stdout.decode()
    assert keep("configmap-off") in proc.stdout.decode()
    (tmp_path / "bad.yaml").write_text("redaction:\n  credential_key_pattern: '(unclosed'\n")
    bad = subprocess.run(
        [*MODULE, "scan", "--config", "bad.yaml", "-r", "rules.yaml", "in.jsonl"],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "redaction.credential_key_pattern" in bad.stderr.decode()


def test_daemon_applies_its_redaction_config(tmp_path: Path) -> None:
    """``redaction:`` of the daemon's config reaches the decoders of its sources."""
    (tmp_path / "rules.yaml").write_text(DUMP_RULES)
    webhook = free_port()
    config = {
        "rules": [str(tmp_path / "rules.yaml")],
        "sources": {"k8s_audit_webhook": {"listen": f"127.0.0.1:{webhook}"}},
        "sinks": {"stdout": {}},
        "redaction": {
            "configmaps": False,
            "extra_paths": [{"resource": "ingresses", "pointer": "/metadata/annotations/*"}],
        },
    }
    daemon = EventdProcess(tmp_path, config)
    try:
        daemon.wait_ready()
        events = [
            audit_event(
                resource="ingresses", request={"metadata": {"annotations": {"x": mark("extra-path")}}}
            ),
            audit_event(resource="configmaps", request={"data": {"password": keep("configmap-off")}}),
            audit_event(resource="secrets", request={"data": [mark("secret-with-config")]}),
        ]
        body = orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": events})
        _post(f"http://127.0.0.1:{webhook}/k8s-audit", body)
        daemon.wait_for(lambda: len(daemon.alerts) >= len(events), timeout=30, what="alerts")
    finally:
        assert daemon.stop() == 0
    stdout = json.dumps(daemon.alerts)
    assert mark("extra-path") not in stdout
    assert mark("secret-with-config") not in stdout
    assert keep("configmap-off") in stdout
