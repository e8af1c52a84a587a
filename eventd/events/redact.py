"""Strip Secret contents from audit events before anything else sees them.

Audit policies should log Secrets at ``Metadata`` level only, but a policy
mistake must not turn eventd into a leak: a rule output using ``%json.obj``,
a log line or a Kafka message would otherwise carry credentials.  Values are
replaced, keys are kept, so rules can still see *which* entries changed.
"""

from __future__ import annotations

from typing import Any

REDACTED = "<redacted>"
_SECRET_VALUE_KEYS = ("data", "stringData")
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _redact_object(obj: Any) -> None:
    if not isinstance(obj, dict):
        return
    for key in _SECRET_VALUE_KEYS:
        values = obj.get(key)
        if isinstance(values, dict):
            obj[key] = dict.fromkeys(values, REDACTED)
        elif values is not None:
            obj[key] = REDACTED
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        annotations = meta.get("annotations")
        if isinstance(annotations, dict) and _LAST_APPLIED in annotations:
            annotations[_LAST_APPLIED] = REDACTED
    items = obj.get("items")
    if isinstance(items, list):  # list responses
        for item in items:
            _redact_object(item)


def redact_secret_event(doc: dict[str, Any]) -> None:
    """Redact in place when the event is about Secrets; cheap otherwise."""
    ref = doc.get("objectRef")
    if not isinstance(ref, dict) or ref.get("resource") != "secrets":
        return
    for key in ("requestObject", "responseObject"):
        _redact_object(doc.get(key))
