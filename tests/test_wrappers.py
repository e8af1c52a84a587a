"""GKE and AKS audit records unwrapped into native Events, through ``decode_document``."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.events.decode import decode_document, decode_object
from eventd.events.errors import DecodeError
from eventd.events.model import K8S_AUDIT
from eventd.events.redact import REDACTED
from eventd.events.wrappers import WRAPPER_ANNOTATION, object_ref, unwrap
from tests.support.builders import audit_event, pod

AUDIT_LOG = "type.googleapis.com/google.cloud.audit.AuditLog"


def gke_entry(
    method: str = "io.k8s.core.v1.pods.create",
    resource: str = "core/v1/namespaces/default/pods/web",
    **payload: Any,
) -> dict[str, Any]:
    """A Cloud Logging LogEntry as GKE exports it (Pub/Sub, sinks, gcloud)."""
    proto: dict[str, Any] = {
        "@type": AUDIT_LOG,
        "authenticationInfo": {"principalEmail": "alice@example.com"},
        "authorizationInfo": [{"granted": True, "permission": "io.k8s.core.v1.pods.create"}],
        "methodName": method,
        "requestMetadata": {"callerIp": "203.0.113.7", "callerSuppliedUserAgent": "kubectl/v1.30.0"},
        "resourceName": resource,
        "serviceName": "k8s.io",
        "status": {"code": 0},
    }
    proto.update(payload)
    return {
        "insertId": "7f3c2a9e-0b1d-4c55-9d1e-2f6f1a0c9b11",
        "logName": "projects/acme/logs/cloudaudit.googleapis.com%2Factivity",
        "protoPayload": proto,
        "receiveTimestamp": "2026-11-29T10:00:01.123456789Z",
        "timestamp": "2026-11-29T10:00:00.987654Z",
        "resource": {"type": "k8s_cluster", "labels": {"cluster_name": "prod", "project_id": "acme"}},
        "labels": {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": ""},
        "operation": {"id": "7f3c2a9e", "producer": "k8s.io", "first": True, "last": True},
    }


def aks_record(log: Any, category: str = "kube-audit") -> dict[str, Any]:
    """One Azure diagnostic record; ``log`` is the Event (object or JSON string)."""
    return {
        "category": category,
        "operationName": "Microsoft.ContainerService/managedClusters/diagnosticLogs/Read",
        "properties": {"log": log, "pod": "kube-apiserver-6f9c", "stream": "stdout"},
        "resourceId": "/SUBSCRIPTIONS/0000/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.CONTAINERSERVICE/...",
        "time": "2026-11-29T10:00:00.200000Z",
    }


def decode_one(obj: Any) -> dict[str, Any]:
    events, errors = decode_document(orjson.dumps(obj), origin="kafka")
    assert errors == [] and len(events) == 1
    return events[0].doc


# --------------------------------------------------------------------- GKE


def test_gke_pod_create_becomes_a_v1_event() -> None:
    body = {"@type": "core.k8s.io/v1.Pod", **pod("nginx:1.27")}
    events, errors = decode_document(orjson.dumps(gke_entry(request=body)), origin="kafka")
    assert errors == [] and [(e.source, e.origin) for e in events] == [(K8S_AUDIT, "gke")]
    doc = events[0].doc
    assert doc["kind"] == "Event" and doc["apiVersion"] == "audit.k8s.io/v1"
    assert doc["auditID"] == "7f3c2a9e-0b1d-4c55-9d1e-2f6f1a0c9b11"
    assert doc["verb"] == "create"
    assert doc["user"] == {"username": "alice@example.com"}
    assert doc["sourceIPs"] == ["203.0.113.7"] and doc["userAgent"] == "kubectl/v1.30.0"
    assert doc["objectRef"] == {
        "resource": "pods",
        "namespace": "default",
        "name": "web",
        "apiGroup": "",
        "apiVersion": "v1",
    }
    assert doc["requestObject"] == pod("nginx:1.27")  # without the protobuf @type
    assert "responseObject" not in doc and doc["level"] == "Request"
    assert doc["stage"] == "ResponseComplete" and doc["responseStatus"] == {"code": 201}
    assert doc["stageTimestamp"] == doc["requestReceivedTimestamp"] == "2026-11-29T10:00:01.123456789Z"
    assert doc["annotations"] == {
        "authorization.k8s.io/decision": "allow",
        "authorization.k8s.io/reason": "",
        WRAPPER_ANNOTATION: "gke",
    }
    assert doc["requestURI"] == "/core/v1/namespaces/default/pods/web"


def test_gke_exec_is_a_started_stream() -> None:
    doc = decode_one(gke_entry("io.k8s.core.v1.pods.exec.create", "core/v1/namespaces/prod/pods/db-0/exec"))
    assert doc["objectRef"]["subresource"] == "exec" and doc["objectRef"]["name"] == "db-0"
    assert (doc["verb"], doc["stage"], doc["responseStatus"]) == ("create", "ResponseStarted", {"code": 101})
    assert doc["level"] == "Metadata"


def test_gke_failures_keep_their_status() -> None:
    denied = gke_entry(status={"code": 7, "message": "pods is forbidden"})
    assert decode_one(denied)["responseStatus"] == {
        "code": 403,
        "status": "Failure",
        "message": "pods is forbidden",
    }
    missing = gke_entry(
        "io.k8s.core.v1.pods.get",
        status={"code": 5},
        response={"@type": "core.k8s.io/v1.Status", "kind": "Status", "code": 404.0, "reason": "NotFound"},
    )
    doc = decode_one(missing)
    assert doc["responseStatus"] == {"code": 404, "reason": "NotFound"}
    assert doc["level"] == "RequestResponse" and "@type" not in doc["responseObject"]


def test_gke_non_resource_request_has_no_object_ref() -> None:
    doc = decode_one(gke_entry("io.k8s.get", "readyz"))
    assert "objectRef" not in doc and doc["requestURI"] == "/readyz" and doc["verb"] == "get"
    assert doc["responseStatus"] == {"code": 200}


@pytest.mark.parametrize(
    ("name", "ref"),
    [
        ("core/v1/namespaces/default/pods", {"resource": "pods", "namespace": "default"}),
        (
            "apps/v1/namespaces/web/deployments/api",
            {"resource": "deployments", "namespace": "web", "name": "api"},
        ),
        (
            "apps/v1/namespaces/web/deployments/api/scale",
            {"resource": "deployments", "namespace": "web", "name": "api", "subresource": "scale"},
        ),
        (
            "rbac.authorization.k8s.io/v1/clusterrolebindings/admin",
            {"resource": "clusterrolebindings", "name": "admin"},
        ),
        ("core/v1/nodes/n1/proxy", {"resource": "nodes", "name": "n1", "subresource": "proxy"}),
        ("core/v1/namespaces", {"resource": "namespaces"}),
        ("core/v1/namespaces/kube-system", {"resource": "namespaces", "name": "kube-system"}),
        (
            "core/v1/namespaces/dev/finalize",
            {"resource": "namespaces", "name": "dev", "subresource": "finalize"},
        ),
        ("batch/v1beta1/namespaces/a/cronjobs/c", {"resource": "cronjobs", "namespace": "a", "name": "c"}),
    ],
)
def test_gke_resource_names(name: str, ref: dict[str, str]) -> None:
    group, version = name.split("/")[:2]
    expected = {**ref, "apiGroup": "" if group == "core" else group, "apiVersion": version}
    assert object_ref(name) == expected


@pytest.mark.parametrize(
    "name", ["", "readyz", "openapi/v2", ".well-known/openid-configuration", "apis", "x/y/z"]
)
def test_gke_non_resource_names(name: str) -> None:
    assert object_ref(name) is None


def test_gke_array_as_gcloud_prints_it() -> None:
    second = gke_entry("io.k8s.core.v1.pods.delete")
    second["insertId"] = "second"
    events, errors = decode_object([gke_entry(), second, {"insertId": "x", "protoPayload": 5}])
    assert [e.doc["verb"] for e in events] == ["create", "delete"] and {e.origin for e in events} == {"gke"}
    assert [e.reason for e in errors] == ["gke"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda e: e["protoPayload"].update(serviceName="compute.googleapis.com"), "not_audit"),
        (lambda e: e["protoPayload"].update({"@type": "type.googleapis.com/Other"}), "gke"),
        (lambda e: e.pop("insertId"), "gke"),
        (lambda e: e["protoPayload"].pop("methodName"), "gke"),
        (lambda e: e.update(receiveTimestamp="yesterday"), "timestamp"),
        (lambda e: [e.pop("receiveTimestamp"), e.pop("timestamp")], "timestamp"),
        (lambda e: e.update(protoPayload=[]), "gke"),
    ],
)
def test_invalid_gke_entries_are_rejected(change: Any, reason: str) -> None:
    entry = gke_entry()
    change(entry)
    with pytest.raises(DecodeError) as err:
        decode_object(entry)
    assert err.value.reason == reason


# --------------------------------------------------------------------- AKS


def test_aks_envelope_with_object_and_string_logs() -> None:
    a, b = audit_event(name="a"), audit_event(name="b", annotations=None)
    envelope = {
        "records": [
            aks_record(a),
            aks_record(orjson.dumps(b).decode(), category="kube-audit-admin"),
            aks_record({"msg": "leader elected"}, category="kube-apiserver"),
            aks_record('{"kind": "Event", "trunc'),
            "not a record",
        ]
    }
    events, errors = decode_document(orjson.dumps(envelope), origin="webhook")
    assert [e.doc["auditID"] for e in events] == [a["auditID"], b["auditID"]]
    assert {e.origin for e in events} == {"aks"}
    assert all(e.doc["annotations"][WRAPPER_ANNOTATION] == "aks" for e in events)
    assert events[0].doc["annotations"]["authorization.k8s.io/decision"] == "allow"
    assert sorted(e.reason for e in errors) == ["aks", "aks", "aks_category"]


def test_single_aks_record_and_its_rejections() -> None:
    event = audit_event(verb="update", resource="leases")
    doc = decode_one(aks_record(orjson.dumps(event).decode()))
    assert doc["auditID"] == event["auditID"] and doc["annotations"][WRAPPER_ANNOTATION] == "aks"
    for record, reason in [
        (aks_record(event, category="cluster-autoscaler"), "aks_category"),
        (aks_record("not json"), "aks"),
        (aks_record(["an", "array"]), "aks"),
        ({"category": "kube-audit", "properties": "log"}, "aks"),
        ({"records": {"not": "a list"}}, "aks"),
    ]:
        with pytest.raises(DecodeError) as err:
            decode_object(record)
        assert err.value.reason == reason


def test_unwrapped_secrets_are_still_redacted() -> None:
    secret = {
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {"name": "db"},
        "data": {"password": "aHVudGVyMg=="},
    }
    event = audit_event(resource="secrets", name="db", request=secret)
    [unwrapped] = decode_object({"records": [aks_record(orjson.dumps(event).decode())]})[0]
    assert unwrapped.doc["requestObject"]["data"] == {"password": REDACTED}
    gke = gke_entry("io.k8s.core.v1.secrets.create", "core/v1/namespaces/default/secrets/db", request=secret)
    [unwrapped] = decode_object(gke)[0]
    assert unwrapped.doc["requestObject"]["data"] == {"password": REDACTED}


def test_native_events_and_alerts_are_not_wrappers() -> None:
    native = audit_event()
    assert unwrap(native) is None and unwrap([native]) is None and unwrap({"rule": "x"}) is None
    assert unwrap([]) is None and unwrap("text") is None and unwrap([{"records": []}]) is None


# ------------------------------------------------------------- robustness

_KEYS = st.sampled_from(
    [
        "protoPayload",
        "records",
        "category",
        "properties",
        "log",
        "@type",
        "serviceName",
        "methodName",
        "resourceName",
        "insertId",
        "receiveTimestamp",
        "timestamp",
        "status",
        "code",
        "request",
        "response",
        "kind",
        "labels",
        "authenticationInfo",
        "requestMetadata",
        "annotations",
        "stageTimestamp",
    ]
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.sampled_from(
        [
            AUDIT_LOG,
            "k8s.io",
            "kube-audit",
            "io.k8s.core.v1.pods.create",
            "core/v1/namespaces/a/pods/b/exec",
            "2026-11-29T10:00:00Z",
            "Event",
            "Status",
            "{",
            '{"kind":"Event"}',
        ]
    ),
    st.text(max_size=8),
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=6),
    max_leaves=25,
)


@settings(max_examples=250, deadline=None)
@given(_JSON, st.sampled_from(["gke", "aks", "raw"]))
def test_odd_input_only_ever_raises_decode_error(value: Any, shape: str) -> None:
    if shape == "gke":
        entry = gke_entry()
        entry["protoPayload"][str(value)[:12]] = value
        entry[str(value)[-12:]] = copy.deepcopy(value)
        value = entry
    elif shape == "aks":
        value = {"records": [aks_record(value), value]}
    try:
        events, errors = decode_object(value)
    except DecodeError:
        return
    assert all(isinstance(e, DecodeError) for e in errors)
    assert all(isinstance(e.doc, dict) for e in events)
