"""Bytes -> events: one line or one request body, audit data or a Falco alert.

The kind of input is detected per document, because a file or a Kafka topic
may mix both (``falco -o json_output=true`` next to an audit log).  Records
of managed clusters (GKE, AKS) are unwrapped into native Events first, so
every input path accepts them.
"""

from __future__ import annotations

import orjson

from eventd.events.audit import NOT_AUDIT, audit_event, audit_events, looks_like_audit
from eventd.events.errors import DecodeError
from eventd.events.falco_json import falco_alert_event, looks_like_falco_alert
from eventd.events.model import Event
from eventd.events.wrappers import unwrap


def decode_document(data: bytes | str, origin: str = "file") -> tuple[list[Event], list[DecodeError]]:
    """Decode one JSON document into events plus per-event errors.

    Raises ``DecodeError`` when the document is not JSON, or is neither audit
    data nor a Falco alert.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise DecodeError("json", f"invalid JSON: {err}") from None
    return decode_object(obj, origin)


def decode_object(obj: object, origin: str = "file") -> tuple[list[Event], list[DecodeError]]:
    """Like ``decode_document`` for an already decoded JSON value.

    Unwrapped GKE/AKS events get ``origin`` ``gke``/``aks`` instead of ``origin``.
    """
    if type(obj) is dict and obj.get("kind") == "Event":
        # The usual document, one native audit Event: what ``audit_events``
        # would give it, without asking whether it is a wrapper, an alert or a list.
        try:
            return [audit_event(obj, origin)], []
        except DecodeError as err:
            return [], [err]
    unwrapped = unwrap(obj)
    if unwrapped is not None:
        events, errors = audit_events(unwrapped.data, unwrapped.origin)
        return events, unwrapped.errors + errors
    if looks_like_falco_alert(obj):
        return [falco_alert_event(obj, origin)], []
    if looks_like_audit(obj) or isinstance(obj, list):
        return audit_events(obj, origin)
    raise DecodeError("not_audit", f"{NOT_AUDIT} (nor a Falco alert)")
