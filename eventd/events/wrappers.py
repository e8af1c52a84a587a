"""Managed-cluster audit records -> native ``audit.k8s.io/v1`` Events.

GKE and AKS do not expose the API server's webhook or log file; their log
pipelines deliver the same audit data wrapped (AKS) or rewritten (GKE).
Rules are written against native Events, so every wrapper is normalised
here, before decoding, and the result is marked with the annotation
``eventd.io/wrapper`` (and ``Event.origin``) so that rules and alerts can
tell first-hand data from rebuilt data.

* GKE (Cloud Logging ``LogEntry`` with an ``AuditLog`` ``protoPayload`` from
  ``k8s.io``): the Event is rebuilt field by field.  GKE does not log the
  stage, the level or (on success) the HTTP status, so ``stage``, ``level``
  and ``responseStatus`` are inferred, and ``user.groups`` is absent.
* AKS (Azure diagnostic records, ``kube-audit`` / ``kube-audit-admin``):
  ``properties.log`` carries the native Event, as an object or as a JSON
  string; either an Event Hub envelope ``{"records": [...]}`` or one record.

A JSON array of records of one kind (``gcloud logging read --format=json``)
is unwrapped too.  Problems are reported as ``DecodeError`` only: a whole
record that is not what it claims raises, one bad record inside an AKS
envelope costs that record only.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import orjson

from eventd.events.errors import DecodeError
from eventd.events.timestamps import rfc3339_to_ns

#: Annotation added to every unwrapped Event; its value is the wrapper kind.
WRAPPER_ANNOTATION = "eventd.io/wrapper"
GKE = "gke"
AKS = "aks"

AKS_AUDIT_CATEGORIES = frozenset({"kube-audit", "kube-audit-admin"})
_AUDIT_LOG_TYPE = "type.googleapis.com/google.cloud.audit.AuditLog"
_API_VERSION = re.compile(r"v\d+(?:(?:alpha|beta)\d+)?", re.ASCII)
#: Subresources of the Namespace object itself (``core/v1/namespaces/<ns>/status``).
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
#: Long-running requests GKE logs as a plain ``create``.
_STREAMING_SUBRESOURCES = frozenset({"exec", "attach"})
#: google.rpc.Code -> HTTP status, for entries whose ``status`` reports a failure.
_RPC_TO_HTTP = {
    1: 499,  # CANCELLED
    2: 500,  # UNKNOWN
    3: 400,  # INVALID_ARGUMENT
    4: 504,  # DEADLINE_EXCEEDED
    5: 404,  # NOT_FOUND
    6: 409,  # ALREADY_EXISTS
    7: 403,  # PERMISSION_DENIED
    8: 429,  # RESOURCE_EXHAUSTED
    9: 400,  # FAILED_PRECONDITION
    10: 409,  # ABORTED
    11: 400,  # OUT_OF_RANGE
    12: 501,  # UNIMPLEMENTED
    13: 500,  # INTERNAL
    14: 503,  # UNAVAILABLE
    15: 500,  # DATA_LOSS
    16: 401,  # UNAUTHENTICATED
}
_MAX_MESSAGE = 1024


class Unwrapped(NamedTuple):
    """Native audit data rebuilt from wrapped records."""

    #: What ``audit_events`` accepts: one Event or a list of Events.
    data: Any
    #: The wrapper kind (``gke``/``aks``), used as ``Event.origin``.
    origin: str
    #: Records of an envelope or array that could not be unwrapped.
    errors: list[DecodeError]


def unwrap(obj: object) -> Unwrapped | None:
    """Rebuild native Events from a GKE or AKS record; ``None`` for anything else.

    Raises ``DecodeError`` when ``obj`` is a wrapper record that cannot be
    used (a GKE entry without ``insertId``, an AKS record of another category).
    """
    if isinstance(obj, dict):
        kind = _wrapper_kind(obj)
        if kind is None:
            return None
        if kind == GKE:
            return Unwrapped(_gke_event(obj), GKE, [])
        records = obj.get("records")
        if records is None:  # a single AKS record
            return Unwrapped(_aks_event(obj), AKS, [])
        if not isinstance(records, list):
            raise DecodeError("aks", "AKS envelope 'records' is not an array")
        return _unwrap_all(records, AKS)
    if isinstance(obj, list) and obj:
        kind = _wrapper_kind(obj[0]) if isinstance(obj[0], dict) else None
        if kind is None or (kind == AKS and "records" in obj[0]):
            return None
        return _unwrap_all(obj, kind)
    return None


def _wrapper_kind(obj: dict[str, Any]) -> str | None:
    """Which wrapper ``obj`` looks like; cheap for native Events and alerts."""
    if "kind" in obj:
        return None
    if "protoPayload" in obj:
        return GKE
    if "records" in obj or ("category" in obj and "properties" in obj):
        return AKS
    return None


def _unwrap_all(records: list[Any], kind: str) -> Unwrapped:
    convert = _gke_event if kind == GKE else _aks_event
    docs: list[Any] = []
    errors: list[DecodeError] = []
    for record in records:
        try:
            if not isinstance(record, dict) or _wrapper_kind(record) != kind or "records" in record:
                raise DecodeError(kind, f"not a {kind.upper()} audit record")
            docs.append(convert(record))
        except DecodeError as err:
            errors.append(err)
    return Unwrapped(docs, kind, errors)


# ------------------------------------------------------------------------ AKS


def _aks_event(record: dict[str, Any]) -> Any:
    category = record.get("category")
    if not isinstance(category, str) or category not in AKS_AUDIT_CATEGORIES:
        # Diagnostic settings often stream kube-apiserver, autoscaler... logs too.
        raise DecodeError("aks_category", f"AKS record category {str(category)[:64]!r} is not an audit log")
    properties = record.get("properties")
    log = properties.get("log") if isinstance(properties, dict) else None
    if isinstance(log, str):
        try:
            log = orjson.loads(log)
        except orjson.JSONDecodeError:
            raise DecodeError("aks", "AKS properties.log is not valid JSON") from None
    if not isinstance(log, dict):
        raise DecodeError("aks", "AKS record without an audit event in properties.log")
    _mark(log, AKS)
    return log


# ------------------------------------------------------------------------ GKE


def _gke_event(entry: dict[str, Any]) -> dict[str, Any]:
    payload = entry.get("protoPayload")
    if not isinstance(payload, dict) or payload.get("@type") != _AUDIT_LOG_TYPE:
        raise DecodeError("gke", "Cloud Logging entry without an AuditLog protoPayload")
    if payload.get("serviceName") != "k8s.io":
        service = str(payload.get("serviceName"))[:64]
        raise DecodeError("not_audit", f"Cloud Audit Log entry of service {service!r}, not k8s.io")
    insert_id = entry.get("insertId")
    method = payload.get("methodName")
    if not isinstance(insert_id, str) or not insert_id:
        raise DecodeError("gke", "GKE audit entry without insertId")
    if not isinstance(method, str) or not method:
        raise DecodeError("gke", "GKE audit entry without methodName")
    stamp = entry.get("receiveTimestamp") or entry.get("timestamp")
    try:
        if not isinstance(stamp, str):
            raise ValueError
        rfc3339_to_ns(stamp)
    except ValueError:
        raise DecodeError("timestamp", f"GKE audit entry has an invalid time: {str(stamp)[:64]!r}") from None

    verb = method.rsplit(".", 1)[-1]
    resource_name = payload.get("resourceName")
    resource_name = resource_name if isinstance(resource_name, str) else ""
    ref = object_ref(resource_name)
    request = _body(payload.get("request"))
    response = _body(payload.get("response"))
    streaming = ref is not None and ref.get("subresource") in _STREAMING_SUBRESOURCES
    auth = _dict(payload.get("authenticationInfo"))
    meta = _dict(payload.get("requestMetadata"))
    username = auth.get("principalEmail")
    caller_ip = meta.get("callerIp")
    agent = meta.get("callerSuppliedUserAgent")

    event: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": _level(request, response),
        "auditID": insert_id,
        "stage": "ResponseStarted" if streaming else "ResponseComplete",
        "requestURI": "/" + resource_name.lstrip("/"),
        "verb": verb,
        "user": {"username": username} if isinstance(username, str) else {},
        "responseStatus": _status(payload, verb, streaming, response),
        "requestReceivedTimestamp": stamp,
        "stageTimestamp": stamp,
        "annotations": _annotations(entry),
    }
    if isinstance(caller_ip, str) and caller_ip:
        event["sourceIPs"] = [caller_ip]
    if isinstance(agent, str):
        event["userAgent"] = agent
    if ref is not None:
        event["objectRef"] = ref
    if request is not None:
        event["requestObject"] = request
    if response is not None:
        event["responseObject"] = response
    return event


def object_ref(resource_name: str) -> dict[str, str] | None:
    """``objectRef`` from a GKE ``resourceName``; ``None`` for non-resource URLs.

    Layouts: ``<group>/<version>/namespaces/<ns>/<resource>[/<name>[/<sub>]]``
    and ``<group>/<version>/<resource>[/<name>[/<sub>]]`` (cluster scope);
    the group ``core`` is the API group ``""``.
    """
    parts = resource_name.strip("/").split("/")
    if len(parts) < 3 or not parts[0] or not _API_VERSION.fullmatch(parts[1]):
        return None  # readyz, healthz, openapi/v2, .well-known/...
    group, version, rest = parts[0], parts[1], parts[2:]
    if rest[0] == "namespaces" and len(rest) == 3 and rest[2] in _NAMESPACE_SUBRESOURCES:
        namespace, names = "", ["namespaces", rest[1], rest[2]]
    elif rest[0] == "namespaces" and len(rest) >= 3:
        namespace, names = rest[1], rest[2:]
    else:
        namespace, names = "", rest
    ref = {"resource": names[0], "apiGroup": "" if group == "core" else group, "apiVersion": version}
    for key, value in (("namespace", namespace), ("name", _at(names, 1)), ("subresource", _at(names, 2))):
        if value:
            ref[key] = value
    return ref if ref["resource"] else None


def _at(items: list[str], index: int) -> str:
    return items[index] if index < len(items) else ""


def _level(request: Any, response: Any) -> str:
    """The lowest level that would have logged the bodies present."""
    if response is not None:
        return "RequestResponse"
    return "Request" if request is not None else "Metadata"


def _status(payload: dict[str, Any], verb: str, streaming: bool, response: Any) -> dict[str, Any]:
    """The HTTP status: the logged failure if any, else the success GKE implies."""
    is_status = isinstance(response, dict) and response.get("kind") == "Status"
    code = _int(response.get("code")) if is_status else None
    if code is not None:
        status: dict[str, Any] = {"code": code}
        for key in ("status", "reason", "message"):
            value = response.get(key)
            if isinstance(value, str):
                status[key] = value[:_MAX_MESSAGE]
        return status
    rpc = _dict(payload.get("status"))
    code = _int(rpc.get("code"))
    if code:
        status = {"code": _RPC_TO_HTTP.get(code, 500), "status": "Failure"}
        message = rpc.get("message")
        if isinstance(message, str):
            status["message"] = message[:_MAX_MESSAGE]
        return status
    if streaming:
        return {"code": 101}
    return {"code": 201 if verb == "create" else 200}


def _annotations(entry: dict[str, Any]) -> dict[str, str]:
    """GKE puts the audit annotations (authorization decision...) in ``labels``."""
    labels = _dict(entry.get("labels"))
    annotations = {k: v for k, v in labels.items() if isinstance(v, str)}
    annotations[WRAPPER_ANNOTATION] = GKE
    return annotations


def _body(obj: Any) -> Any:
    """A request/response object without the protobuf ``@type`` key."""
    if isinstance(obj, dict) and "@type" in obj:
        return {k: v for k, v in obj.items() if k != "@type"}
    return obj


def _int(value: Any) -> int | None:
    """An integer, also from protobuf ``Struct`` JSON where every number is a double."""
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    return None


def _dict(obj: Any) -> dict[str, Any]:
    return obj if isinstance(obj, dict) else {}


def _mark(doc: dict[str, Any], kind: str) -> None:
    annotations = doc.get("annotations")
    if annotations is None:
        doc["annotations"] = {WRAPPER_ANNOTATION: kind}
    elif isinstance(annotations, dict):
        annotations[WRAPPER_ANNOTATION] = kind
