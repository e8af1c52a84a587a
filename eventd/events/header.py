"""Decode only the header of a raw event: the few fields that route it.

The rule index knows which values of ``verb``, ``stage``, ``objectRef`` and
``user`` can lead to an alert.  Most audit lines (lease renewals, controller
reads) can be ruled out from those alone, so they are decoded into this small
typed structure with msgspec, which validates the whole document but
allocates nothing for the parts it skips: about twice as fast as a full
``orjson.loads``.  Because this is a real JSON parser, escapes, whitespace
and duplicate keys (the last one wins, as with orjson) mean exactly what they
mean to the full decoder.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType


class _ObjectRef(msgspec.Struct, gc=False):
    resource: str | None = None
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None


class _User(msgspec.Struct, gc=False):
    username: str | None = None


class Header(msgspec.Struct, gc=False):
    """The routing fields of an audit event or a Falco alert (``UNSET`` = absent).

    Routing values are typed as strings: a document where one is anything
    else fails to decode as a header and simply takes the full decoder's
    path, where the field extractors treat it as missing.  The structs hold
    only strings, so they can opt out of the garbage collector (faster).
    """

    kind: Any | UnsetType = UNSET
    auditID: msgspec.Raw | UnsetType = UNSET
    level: str | None = None
    stage: str | None = None
    verb: str | None = None
    objectRef: _ObjectRef = msgspec.field(default_factory=_ObjectRef)
    user: _User = msgspec.field(default_factory=_User)
    rule: msgspec.Raw | UnsetType = UNSET
    priority: msgspec.Raw | UnsetType = UNSET
    output: msgspec.Raw | UnsetType = UNSET
    output_fields: msgspec.Raw | UnsetType = UNSET

    def is_audit_event(self) -> bool:
        return self.kind == "Event"

    def is_falco_alert(self) -> bool:
        return is_falco_alert(self)


def is_falco_alert(header: Any) -> bool:
    """Mirrors ``falco_json.looks_like_falco_alert`` on a decoded header."""
    return (
        header.kind is UNSET
        and header.rule is not UNSET
        and header.priority is not UNSET
        and (header.output is not UNSET or header.output_fields is not UNSET)
    )


#: What a header decode may raise; msgspec refuses very deep nesting with
#: RecursionError, which must not end a scan.
HeaderError = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)
decode_header: Callable[[bytes], Header] = msgspec.json.Decoder(Header).decode

#: Where each indexable ``ka.*`` field's value sits in a ``Header``.  Must
#: agree with the k8saudit extractors; ``tests/test_header.py`` checks that
#: they do on random documents.
HEADER_FIELDS: dict[str, str] = {
    "ka.verb": "verb",
    "ka.stage": "stage",
    "ka.level": "level",
    "ka.user.name": "user.username",
    "ka.target.resource": "objectRef.resource",
    "ka.target.subresource": "objectRef.subresource",
    "ka.target.namespace": "objectRef.namespace",
    "ka.target.name": "objectRef.name",
}


_MARKERS = ("rule", "priority", "output", "output_fields")


def _routing_members(fields: Iterable[str]) -> list[tuple[str, Any, Any]]:
    """Struct members for the routing fields named (``HEADER_FIELDS`` keys):
    top-level strings, and one small struct per nested object."""
    top: set[str] = set()
    nested: dict[str, set[str]] = {}
    for name in fields:
        parent, _, child = HEADER_FIELDS[name].rpartition(".")
        if parent:
            nested.setdefault(parent, set()).add(child)
        else:
            top.add(child)
    members: list[tuple[str, Any, Any]] = [(name, str | None, None) for name in sorted(top)]
    for parent, children in sorted(nested.items()):
        sub = msgspec.defstruct(f"_{parent}", [(c, str | None, None) for c in sorted(children)], gc=False)
        members.append((parent, sub, msgspec.field(default_factory=sub)))
    return members


def header_decoder(fields: Iterable[str]) -> Callable[[bytes], Any]:
    """A decoder of only the routing fields named (``HEADER_FIELDS`` keys),
    plus ``kind``, ``auditID`` and the Falco alert markers.

    Fewer fields means less to allocate per line; the fields it has mean
    exactly what they mean in ``Header``, so ``key_reader`` works on both.
    """
    members: list[tuple[str, Any, Any]] = [
        ("kind", Any | UnsetType, UNSET),
        ("auditID", msgspec.Raw | UnsetType, UNSET),
        *_routing_members(fields),
        *((marker, msgspec.Raw | UnsetType, UNSET) for marker in _MARKERS),
    ]
    return msgspec.json.Decoder(msgspec.defstruct("RoutingHeader", members, gc=False)).decode


def block_decoder(fields: Iterable[str]) -> Callable[[bytes | bytearray], list[Any]]:
    """A decoder of a JSON array of routing headers of native audit Events.

    ``Prefilter.select_block`` hands it a whole block of lines turned into
    one array, so that all its lines cost one call into C instead of one
    each.  It is stricter than ``header_decoder``: ``kind`` must be
    ``"Event"`` and ``auditID`` present, so every header it returns is
    routed on its routing fields alone.  Anything else in the block (a Falco
    alert, an ``EventList``, an event without ``auditID``, a broken line)
    fails the whole array, and the block goes line by line.
    """
    members: list[tuple[str, Any, Any]] = [
        ("kind", Literal["Event"], msgspec.NODEFAULT),
        ("auditID", msgspec.Raw, msgspec.NODEFAULT),
        *_routing_members(fields),
    ]
    header = msgspec.defstruct("EventRoutingHeader", members, gc=False)
    return msgspec.json.Decoder(list[header]).decode  # type: ignore[valid-type]  # a class made at run time


def key_reader(fields: tuple[str, ...]) -> Callable[[object], tuple[str | None, ...]]:
    """A C-speed reader of the values of ``fields`` (names of ``HEADER_FIELDS``).

    It takes ``object``: it reads a ``Header`` and the narrower structs that
    ``header_decoder`` and ``block_decoder`` define alike, by attribute.
    """
    if not fields:
        return lambda _h: ()
    names = [HEADER_FIELDS[f] for f in fields]
    if len(names) == 1:
        one = operator.attrgetter(names[0])
        return lambda h: (one(h),)
    return operator.attrgetter(names[0], *names[1:])
