"""Falco alerts as JSON (``json_output: true``), from http_output, files or stdout.

Validation follows what falcosidekick enforces on its ``POST /`` input, so
that eventd is a drop-in receiver: a known priority, a non-empty rule and a
valid time.  ``output_fields`` keep their JSON types.
"""

from __future__ import annotations

from typing import Any

import orjson

from eventd.events.errors import DecodeError
from eventd.events.model import FALCO, Event
from eventd.events.redact import redact_falco_alert
from eventd.events.timestamps import rfc3339_to_ns
from eventd.priority import Priority

#: What Falco writes when the rule's source is not given (sidekick says "syscalls").
DEFAULT_SOURCE = "syscall"


def looks_like_falco_alert(obj: object) -> bool:
    """True for an object shaped like a Falco JSON alert (not audit data)."""
    return (
        isinstance(obj, dict)
        and "rule" in obj
        and "priority" in obj
        and ("output" in obj or "output_fields" in obj)
        and "kind" not in obj
    )


def falco_alert_event(obj: Any, origin: str = "file") -> Event:
    """Validate and normalise one decoded alert; raise ``DecodeError``."""
    if not isinstance(obj, dict):
        raise DecodeError("not_falco", "Falco alert is not a JSON object")
    rule = obj.get("rule")
    if not isinstance(rule, str) or not rule.strip():
        raise DecodeError("rule", "Falco alert has an empty or missing 'rule'")
    try:
        priority = Priority.parse(obj.get("priority"))
    except ValueError as err:
        raise DecodeError("priority", f"Falco alert: {err}") from None
    stamp = obj.get("time")
    try:
        if not isinstance(stamp, str) or rfc3339_to_ns(stamp) <= 0:
            raise ValueError
    except ValueError:
        raise DecodeError("time", f"Falco alert has an invalid 'time': {str(stamp)[:64]!r}") from None
    fields = obj.get("output_fields")
    if fields is None:
        obj["output_fields"] = {}
    elif not isinstance(fields, dict):
        raise DecodeError("shape", "Falco alert 'output_fields' is not an object")
    else:
        try:  # the alert is forwarded as JSON: it must be writable again
            orjson.dumps(fields)
        except orjson.JSONEncodeError:
            raise DecodeError("shape", "Falco alert 'output_fields' nest too deeply to forward") from None
    tags = obj.get("tags")
    if tags is None:
        obj["tags"] = []
    elif not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise DecodeError("shape", "Falco alert 'tags' is not a list of strings")
    source = obj.get("source")
    if not isinstance(source, str) or not source:
        obj["source"] = DEFAULT_SOURCE
    if not isinstance(obj.get("hostname"), str):
        obj["hostname"] = ""
    if not isinstance(obj.get("output"), str):
        obj["output"] = ""
    obj["priority"] = priority.label
    redact_falco_alert(obj)  # every Falco input comes through here, before rules and sinks
    return Event(FALCO, obj, origin)
