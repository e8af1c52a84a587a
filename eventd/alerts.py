"""The alert: what a rule match becomes, in Falco's JSON shape plus eventd's own.

The document is Falco-compatible (``time``, ``rule``, ``priority``,
``source``, ``output``, ``output_fields``, ``tags``, ``hostname``) so every
consumer of Falco JSON reads it unchanged, plus ``uuid`` and an ``eventd``
object with the context a responder needs.

``uuid`` is derived from the rule and the identity of the event (audit ID
and stage, or the Falco alert's own identity), not drawn at random: when a
crash makes eventd process an event twice (at-least-once delivery), both
copies carry the same uuid and consumers can drop the duplicate.
"""

from __future__ import annotations

import functools
import operator
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

import orjson
from msgspec import Struct, field

from eventd.engine.ast import FieldRef
from eventd.engine.fields import default_registry
from eventd.engine.fields.image_fields import image_row, row_position
from eventd.engine.ruleset import Rule
from eventd.events.model import FALCO, K8S_AUDIT, Event, event_time_ns
from eventd.events.timestamps import ns_to_clock, ns_to_rfc3339
from eventd.priority import Priority

_UUID_NAMESPACE = uuidlib.UUID("9d1f4c3e-5b7a-4e0f-9a51-6c2f1b8e7d40")


@functools.cache
def _hashes() -> tuple[Any, Callable[[bytes], Any]]:
    """(a SHA-1 already fed with the namespace, ``sha256``), made at the
    first alert: hashlib's import (OpenSSL) costs every start ~3 ms."""
    import hashlib

    return hashlib.sha1(_UUID_NAMESPACE.bytes, usedforsecurity=False), hashlib.sha256


class Alert(Struct):
    time_ns: int
    rule: str
    priority: Priority
    source: str
    output: str
    output_fields: dict[str, Any]
    tags: tuple[str, ...]
    hostname: str
    uuid: str
    context: dict[str, Any] = field(default_factory=dict)
    #: ``to_json``'s result, kept: every sink and lane (which bounds its queue
    #: in bytes) needs it, and an alert does not change once it is sent.
    _json: bytes | None = None

    def __post_init__(self) -> None:
        # The cached JSON belongs to the values it was made from: a copy
        # (``msgspec.structs.replace``, which runs this too) starts without it.
        self._json = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "time": ns_to_rfc3339(self.time_ns),
            "rule": self.rule,
            "priority": self.priority.label,
            "source": self.source,
            "output": self.output,
            "output_fields": self.output_fields,
            "tags": list(self.tags),
            "hostname": self.hostname,
            "eventd": self.context,
        }

    def to_json(self) -> bytes:
        encoded = self._json
        if encoded is None:
            encoded = self._json = orjson.dumps(self.to_dict())
        return encoded

    def text_line(self) -> str:
        """Falco's text output: ``HH:MM:SS.nnnnnnnnn: Priority message``."""
        return self.output


def event_identity(event: Event) -> str:
    """A stable identity of the event, for the alert uuid and for dedup."""
    doc = event.doc
    if event.source == K8S_AUDIT and isinstance(doc.get("auditID"), str):
        return f"audit:{doc['auditID']}:{doc.get('stage', '')}"
    try:
        text = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # nested beyond orjson's limit: still a stable identity
        text = repr(doc).encode()
    return f"{event.source}:{_hashes()[1](text).hexdigest()}"


def alert_uuid(rule_name: str, event: Event) -> str:
    """``uuid5`` of the rule and the event identity, in eventd's namespace.

    The value ``uuid.uuid5`` gives, from a SHA-1 already fed with the
    namespace and formatted directly: this runs once per alert.
    """
    sha = _hashes()[0].copy()
    sha.update(f"{rule_name}\x00{event_identity(event)}".encode())
    raw = bytearray(sha.digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def build_alert(rule: Rule, event: Event, hostname: str) -> Alert:
    """Render ``rule``'s output for ``event`` into an alert."""
    when = event_time_ns(event)
    text, fields = rule.output.render(event)
    fields["evt.time"] = when
    flags = _flag_tokens(rule.output.tokens)
    if flags:
        _typed_flags(fields, flags)
    if event.source != K8S_AUDIT and event.doc.get("hostname"):
        hostname = event.doc["hostname"]
    return Alert(
        time_ns=when,
        rule=rule.name,
        priority=rule.priority,
        source=rule.source,
        output=f"{ns_to_clock(when)}: {rule.priority.label} {text}",
        output_fields=fields,
        tags=rule.tags,
        hostname=hostname,
        uuid=alert_uuid(rule.name, event),
        context=alert_context(event),
    )


def falco_passthrough_alert(event: Event) -> Alert:
    """A Falco alert received by eventd, forwarded as an eventd alert.

    Falco's own fields are kept as they came; the normalised image fields
    (``container.image.registry``, ``.name``, ``.tag``, ``.digest``) are added to
    ``output_fields`` when Falco reported an image, so dashboards can group
    Falco alerts by registry like eventd's own.
    """
    doc = event.doc
    fields = dict(doc["output_fields"])
    for name, value in _falco_image_fields(event).items():
        fields.setdefault(name, value)
    _typed_flags(fields, _FLAG_FIELDS)
    return Alert(
        time_ns=event_time_ns(event),
        rule=doc["rule"],
        priority=Priority.parse(doc["priority"]),
        source=doc["source"],
        output=doc["output"],
        output_fields=fields,
        tags=tuple(doc["tags"]),
        hostname=doc["hostname"],
        uuid=alert_uuid("falco-passthrough", event),
        context=alert_context(event),
    )


_FALCO_IMAGE_FIELDS = ("registry", "name", "tag", "digest", "pinned", "valid")
#: Yes/no image fields: rules compare them as Falco's "true"/"false" text, but
#: the alert document carries JSON booleans, whatever the source (one type per
#: field, as alert.schema.json states).
_FLAG_FIELDS = ("container.image.pinned", "container.image.valid", "container.image.implicit_latest")


@functools.cache
def _flag_tokens(tokens: tuple[str, ...]) -> tuple[str, ...]:
    """The yes/no image fields a rule's output names (usually none)."""
    return tuple(t for t in tokens if t in _FLAG_FIELDS)


def _typed_flags(fields: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        value = fields.get(name)
        if value == "true" or value == "false":
            fields[name] = value == "true"


@functools.cache
def _getters(source: str, names: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    fieldset = default_registry().fieldset(source)
    return tuple((n, fieldset.bind(FieldRef(n)).get) for n in names)


_FALCO_IMAGE_NAMES = tuple(f"container.image.{f}" for f in _FALCO_IMAGE_FIELDS)
#: Every image of the pod spec as written; ``_image_entry`` adds the parts.
_POD_RAW_IMAGES = ("ka.req.pod.images.raw",)


def _falco_image_fields(event: Event) -> dict[str, Any]:
    if not isinstance(event.doc["output_fields"].get("container.image.repository"), str):
        return {}
    return {n: v for n, get in _getters(FALCO, _FALCO_IMAGE_NAMES) if (v := get(event)) is not None}


def _pod_images(event: Event) -> list[dict[str, str]]:
    """Every container image of the pod spec (any family), normalised.

    Runs once per audit alert: one field read (from the event's field cache
    when the rule's output printed it), then a cached entry per image.
    """
    raw = _getters(K8S_AUDIT, _POD_RAW_IMAGES)[0][1](event)
    if not raw:
        return []
    return [_image_entry(image) for image in raw]


def _image_entry(raw: str) -> dict[str, str]:
    """One ``eventd.images`` entry: the image as written and its parts.

    The parts are what ``ka.req.pod.images.{registry,name,tag,digest}``
    give for this image (their list form: ``""`` when absent), read off the
    image's cached row (``image_fields.image_row``) instead of four field
    extractions per alert; ``tests/test_alert_context.py`` checks they agree.
    """
    registry, name, tag, digest = _entry_parts(image_row(raw))
    return {"image": raw, "registry": registry, "name": name, "tag": tag, "digest": digest}


_entry_parts = operator.itemgetter(*map(row_position, ("registry", "name", "tag", "digest")))


def alert_context(event: Event) -> dict[str, Any]:
    """The facts a responder needs, in fixed keys whatever the rule printed."""
    doc = event.doc
    if event.source == K8S_AUDIT:
        ref = _mapping(doc.get("objectRef"))
        user = _mapping(doc.get("user"))
        return {
            "event_source": event.source,
            "origin": event.origin,
            "audit_id": _text(doc.get("auditID")),
            "stage": _text(doc.get("stage")),
            "verb": _text(doc.get("verb")),
            "user": _text(user.get("username")),
            "namespace": _text(ref.get("namespace")),
            "workload": _workload(ref),
            "images": _pod_images(event),
        }
    fields = _mapping(doc.get("output_fields"))
    image = _falco_image_fields(event)
    return {
        "event_source": event.source,
        "origin": event.origin,
        "falco_rule": doc.get("rule"),
        "node": doc.get("hostname"),
        "namespace": fields.get("k8s.ns.name"),
        "workload": f"pods/{fields['k8s.pod.name']}" if fields.get("k8s.pod.name") else None,
        "images": [
            {
                "image": fields.get("container.image.repository"),
                # "" for an absent part, as in audit alerts: one JSON type per field.
                **{k: image.get(f"container.image.{k}") or "" for k in ("registry", "name", "tag", "digest")},
            }
        ]
        if image
        else [],
    }


def _mapping(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one: a hostile event
    may put anything where an object belongs."""
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    """A context value from the event: strings only (hostile input may hold anything)."""
    return value if isinstance(value, str) else None


def _workload(ref: dict[str, Any]) -> str | None:
    """``resource/name`` (``deployments/web``), or the resource alone on create."""
    resource = _text(ref.get("resource"))
    if not resource:
        return None
    name = _text(ref.get("name"))
    return f"{resource}/{name}" if name else resource
