"""``json.*`` / ``jevt.*``: generic access to the event document.

Falco's json plugin runs next to k8saudit and the stock audit rules rely on
it (``kevt`` is ``jevt.value[/stage] in (...)``).  eventd offers the same
fields for both rule sources; for Falco alerts they read the alert document.

This module also owns ``to_text``, the one place where a JSON value becomes
the string the plugins would have produced, so every field family renders
values identically.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import orjson

from eventd.engine.fields.base import ArgKind, Extractor, FieldDef, parse_index
from eventd.events.model import Event
from eventd.events.timestamps import rfc3339_to_ns

#: Returned by ``resolve`` for a path that leads nowhere (JSON null is None).
MISSING: Any = object()


def _dumps(value: Any, option: int = 0) -> str:
    try:
        return orjson.dumps(value, option=option).decode()
    except (orjson.JSONEncodeError, TypeError):
        # orjson refuses integers wider than 64 bits, which a document built
        # by other means than orjson may hold; the stdlib has no such limit.
        indent = 2 if option & orjson.OPT_INDENT_2 else None
        separators = None if indent else (",", ":")
        return json.dumps(value, indent=indent, separators=separators, ensure_ascii=False, default=str)


def to_text(value: Any) -> str:
    """A JSON value as the Falco plugins render it: a string as it is, any
    other value as compact JSON (``true``, ``201``, ``null``, ``["a","b"]``)."""
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if type(value) is int:
        return str(value)
    return _dumps(value)


@lru_cache(maxsize=1024)
def parse_pointer(text: str) -> tuple[tuple[str, int | None], ...]:
    """RFC 6901 pointer -> ``((key, index-or-None), ...)``.

    The leading ``/`` is optional, as in the json plugin.  The array index a
    segment denotes is decided here, once per pointer, not once per event.
    """
    if not text.startswith("/"):
        text = "/" + text
    segments = []
    for raw in text[1:].split("/"):
        key = raw.replace("~1", "/").replace("~0", "~")
        segments.append((key, parse_index(key)))
    return tuple(segments)


def resolve(doc: Any, pointer: tuple[tuple[str, int | None], ...]) -> Any:
    """The value ``pointer`` designates in ``doc``, or ``MISSING``."""
    node = doc
    for key, index in pointer:
        if isinstance(node, dict):
            node = node.get(key, MISSING)
            if node is MISSING:
                return MISSING
        elif isinstance(node, list) and index is not None and index < len(node):
            node = node[index]
        else:
            return MISSING
    return node


def _value(ev: Event, arg: str) -> str | None:
    found = resolve(ev.doc, parse_pointer(arg))
    return None if found is MISSING else to_text(found)


def _obj(ev: Event, _arg: None) -> str:
    return _dumps(ev.doc, orjson.OPT_INDENT_2)


def _rawtime(time_key: str) -> Extractor:
    def extract(ev: Event, _arg: None) -> str | None:
        doc = ev.doc
        stamp = doc.get(time_key) if isinstance(doc, dict) else None
        if not isinstance(stamp, str):
            return None
        try:
            return str(rfc3339_to_ns(stamp))
        except ValueError:  # rare: ingest already rejects unparsable times
            return None

    return extract


def _fields(time_key: str, time_desc: str) -> list[FieldDef]:
    rawtime = _rawtime(time_key)
    out = []
    for prefix in ("json", "jevt"):
        out += [
            FieldDef(
                f"{prefix}.value",
                "Value at an RFC 6901 JSON pointer (leading / optional); strings unquoted, "
                "other values as JSON text.",
                _value,
                arg=ArgKind.KEY,
            ),
            FieldDef(f"{prefix}.obj", "The whole event as pretty-printed JSON.", _obj),
            FieldDef(f"{prefix}.rawtime", f"{time_desc} in nanoseconds since the epoch.", rawtime),
        ]
    return out


#: For the ``k8s_audit`` source: the event time is ``stageTimestamp``.
FIELDS = _fields("stageTimestamp", "The audit event's stageTimestamp")
#: For the ``falco`` source: the event time is the alert ``time``.
FALCO_FIELDS = _fields("time", "The Falco alert time")
