"""Falco's gRPC ``falco.outputs.response`` -> the JSON alert shape.

Alerts from the legacy gRPC API are turned into exactly what Falco writes
with ``json_output: true``, so that one validator (``falco_json``) and one
set of rule fields serve every Falco input.  Three differences have to be
undone:

* ``time`` is a ``Timestamp`` and ``priority`` an enum number;
* the source name is field 9, empty before Falco 0.31, which only sent the
  enum field 3 (now deprecated);
* ``output_fields`` is ``map<string, string>``: Falco JSON-dumps every
  non-string value into text, so numbers, booleans, ``null`` and lists come
  back as JSON literals and are decoded here.  A string field whose value
  happens to look like such a literal (``"42"``) cannot be told apart and
  becomes a number too; the JSON output has the same value as a number
  whenever Falco knew it as one, which is the common case.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import orjson

from eventd.events.falco_json import DEFAULT_SOURCE, falco_alert_event
from eventd.events.model import Event
from eventd.events.timestamps import ns_to_rfc3339
from eventd.priority import Priority

if TYPE_CHECKING:
    from eventd.proto import outputs_pb2

#: Enum field 3 -> Falco's source names (0.24-0.30 only knew the first three).
DEPRECATED_SOURCES = {0: DEFAULT_SOURCE, 1: "k8s_audit", 2: "internal", 3: "plugin"}
_PRIORITY_LABELS = {p.value: p.label for p in Priority}
#: A JSON number (RFC 8259 grammar), so that ``"1e5x"`` or ``"0x10"`` stay text.
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?", re.ASCII)
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_LITERALS = {"true": True, "false": False, "null": None}
#: First characters of a value that may be a dumped non-string.
_MAYBE_JSON = frozenset("-0123456789tfn[")


def json_value(text: str) -> Any:
    """The JSON value Falco dumped into ``text``, or ``text`` if it is a plain string."""
    if not text or text[0] not in _MAYBE_JSON:
        return text
    if text in _LITERALS:
        return _LITERALS[text]
    if text[0] == "[":
        return _json_array(text)
    m = _JSON_NUMBER.fullmatch(text)
    if m is None:
        return text
    if m.group(1) is None and m.group(2) is None:
        if len(text) > 20:  # wider than 64 bits whatever the digits; int() would choke on huge ones
            return text
        integer = int(text)
        # Wider than 64 bits is no Falco number (and no JSON encoder takes it): a digit string.
        return integer if _INT_MIN <= integer <= _INT_MAX else text
    real = float(text)
    return real if math.isfinite(real) else text


def _json_array(text: str) -> Any:
    """A dumped list field; anything else starting with ``[`` stays text."""
    if text[-1] != "]":
        return text
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    return value if type(value) is list else text


def response_to_alert(msg: outputs_pb2.response) -> dict[str, Any]:
    """The JSON alert for one gRPC response (not yet validated).

    An unknown priority number is passed on as its number, so that the
    validator rejects it with reason ``priority``; an unset time becomes the
    epoch, which it rejects with reason ``time``.
    """
    source = msg.source or DEPRECATED_SOURCES.get(msg.source_deprecated, DEFAULT_SOURCE)
    return {
        "time": _time_text(msg.time.seconds, msg.time.nanos),
        "rule": msg.rule,
        "priority": _PRIORITY_LABELS.get(msg.priority, str(msg.priority)),
        "source": source,
        "hostname": msg.hostname,
        "output": msg.output,
        "tags": list(msg.tags),
        "output_fields": {key: json_value(value) for key, value in msg.output_fields.items()},
    }


def _time_text(seconds: int, nanos: int) -> str:
    """RFC 3339 with nanoseconds; ``""`` (rejected later) for a time no
    calendar can show, which protobuf does not forbid on the wire."""
    try:
        return ns_to_rfc3339(seconds * 1_000_000_000 + nanos)
    except (OverflowError, OSError, ValueError):
        return ""


def response_event(msg: outputs_pb2.response, origin: str = "grpc") -> Event:
    """Convert and validate one response; raise ``DecodeError``."""
    return falco_alert_event(response_to_alert(msg), origin)
