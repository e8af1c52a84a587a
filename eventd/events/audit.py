"""Kubernetes audit data: ``Event``, ``EventList`` or a JSON array of them.

The API server's webhook posts ``EventList`` batches, the log backend writes
one ``Event`` per line, and people pipe arrays around; all three arrive here
already JSON-decoded.  Each event is checked on its own, so one bad event
in a batch of 400 costs that event only.
"""

from __future__ import annotations

from typing import Any

from eventd.events.errors import DecodeError
from eventd.events.model import K8S_AUDIT, Event
from eventd.events.redact import redact_audit_event

API_VERSIONS = frozenset({"audit.k8s.io/v1", "audit.k8s.io/v1beta1"})
#: Falco's wording, kept so operators can grep for the same message.
NOT_AUDIT = "data not recognized as a k8s audit event"


def looks_like_audit(obj: object) -> bool:
    """True for an object whose ``kind`` says it is audit data."""
    return isinstance(obj, dict) and obj.get("kind") in ("Event", "EventList")


def check_event(doc: object) -> None:
    """Raise ``DecodeError`` unless ``doc`` is a usable audit ``Event``."""
    if not isinstance(doc, dict) or doc.get("kind") != "Event":
        raise DecodeError("not_audit", NOT_AUDIT)
    version = doc.get("apiVersion")
    if version is not None and version not in API_VERSIONS:
        raise DecodeError("api_version", f"unsupported audit apiVersion {str(version)[:64]!r}")
    stamp = doc.get("stageTimestamp")
    if not isinstance(stamp, str) or not stamp:
        # Falco's k8saudit drops these too: the stage time is the event time.
        raise DecodeError("timestamp", "audit event without stageTimestamp")
    audit_id = doc.get("auditID")
    if audit_id is not None and not isinstance(audit_id, str):
        raise DecodeError("shape", "auditID is not a string")


def audit_events(obj: Any, origin: str = "file") -> tuple[list[Event], list[DecodeError]]:
    """Split decoded JSON into events, and errors for the parts that are not.

    Raises ``DecodeError`` when the top level is not audit data at all.
    """
    events: list[Event] = []
    errors: list[DecodeError] = []
    for doc in audit_documents(obj):
        try:
            events.append(audit_event(doc, origin))
        except DecodeError as err:
            errors.append(err)
    return events, errors


def audit_documents(obj: Any) -> list[Any]:
    """The would-be events of decoded JSON, each still to be checked.

    For an ``EventList`` this is its ``items`` list itself, so a caller that
    decoded the same body another way (the webhook's raw items) can pair the
    two by position.  Raises ``DecodeError`` when the top level is not audit
    data at all.
    """
    if isinstance(obj, list):
        docs: list[Any] = []
        for item in obj:
            if isinstance(item, dict) and item.get("kind") == "EventList":
                docs.extend(_list_items(item))
            else:
                docs.append(item)
        if obj and not any(looks_like_audit(d) for d in docs):
            raise DecodeError("not_audit", NOT_AUDIT)
        return docs
    if isinstance(obj, dict) and obj.get("kind") == "EventList":
        version = obj.get("apiVersion")
        if version is not None and version not in API_VERSIONS:
            raise DecodeError("api_version", f"unsupported audit apiVersion {str(version)[:64]!r}")
        return _list_items(obj)
    if isinstance(obj, dict) and obj.get("kind") == "Event":
        return [obj]
    raise DecodeError("not_audit", NOT_AUDIT)


def audit_event(doc: Any, origin: str) -> Event:
    """``doc`` checked, redacted and wrapped; ``DecodeError`` if it is no usable event."""
    check_event(doc)
    redact_audit_event(doc)  # before anything else sees the event
    return Event(K8S_AUDIT, doc, origin)


def _list_items(obj: dict[str, Any]) -> list[Any]:
    items = obj.get("items")
    if items is None:
        return []
    if not isinstance(items, list):
        raise DecodeError("shape", "EventList.items is not an array")
    return items
