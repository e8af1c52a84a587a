"""Fields of the ``falco`` source: Falco JSON alerts that eventd receives.

An alert is ``{time, rule, priority, source, output, output_fields, tags,
hostname}``.  The alert's own keys are ``falco.*`` fields.  Every other
dotted name is read from ``output_fields`` under its own name, so a rule can
test whatever the Falco rule printed (``container.image.repository``,
``k8s.ns.name``, ``proc.aname[2]``) without eventd knowing Falco's field
catalogue.  Those values keep their JSON type (a number stays a number), as
Falco emitted them; a list becomes a tuple and ``null`` means missing.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from eventd.engine.fields.base import ArgKind, Extracted, Extractor, FieldDef, Scalar
from eventd.engine.fields.jsonfields import to_text
from eventd.events.model import Event

_SCALARS = (str, int, float, bool)


def _scalar(value: Any) -> Scalar | None:
    """A JSON value as a field value: scalars as they are, objects and
    arrays as JSON text, ``null`` as missing."""
    if value is None:
        return None
    return value if isinstance(value, _SCALARS) else to_text(value)


def _value(value: Any) -> Extracted:
    if type(value) is list:
        return tuple(v for v in map(_scalar, value) if v is not None) or None
    return _scalar(value)


def _alert_key(key: str) -> Extractor:
    def extract(ev: Event, _arg: None) -> Extracted:
        doc = ev.doc
        return _scalar(doc.get(key)) if type(doc) is dict else None

    return extract


def _tags(ev: Event, _arg: None) -> Extracted:
    doc = ev.doc
    tags = doc.get("tags") if type(doc) is dict else None
    return _value(tags) if type(tags) is list else None


FIELDS: list[FieldDef] = [
    FieldDef("falco.rule", "The name of the Falco rule that fired.", _alert_key("rule")),
    FieldDef("falco.priority", "The alert priority, as named in the alert.", _alert_key("priority")),
    FieldDef("falco.source", "The Falco event source (syscall, k8s_audit...).", _alert_key("source")),
    FieldDef("falco.hostname", "The host the Falco instance runs on.", _alert_key("hostname")),
    FieldDef("falco.output", "The alert's output line.", _alert_key("output")),
    FieldDef("falco.time", "The alert time (RFC 3339, nanoseconds).", _alert_key("time")),
    FieldDef("falco.tags", "The tags of the rule that fired.", _tags, is_list=True),
]


def _output_field(name: str) -> Extractor:
    def extract(ev: Event, index: int | None) -> Extracted:
        doc = ev.doc
        fields = doc.get("output_fields") if type(doc) is dict else None
        if type(fields) is not dict:
            return None
        return _value(fields.get(name if index is None else f"{name}[{index}]"))

    return extract


@lru_cache(maxsize=4096)
def dynamic(name: str) -> FieldDef | None:
    """Resolve a name that is not declared: any dotted name outside ``falco.``
    is an ``output_fields`` key.

    The optional argument is an index (``proc.aname[2]``), because that is
    what ``ArgKind`` can express for an optional argument; the key read is
    ``name[N]``, the token Falco uses in ``output_fields``.  The field is
    declared scalar, but a key holding a JSON array yields a tuple.
    """
    if "." not in name or name.startswith("falco."):
        return None
    return FieldDef(
        name,
        f"The alert's output_fields[{name!r}], with its JSON type.",
        _output_field(name),
        arg=ArgKind.INDEX,
    )
