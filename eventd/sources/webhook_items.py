"""The webhook's items: which events of an ``EventList`` body are decoded.

Most events the API server posts (lease renewals, controller reads) can
raise no alert, and no other observer of every event (the image counter,
the image-pull-secret store) needs them: building an ``Event``, redacting
it and matching it is pure cost.  ``pipeline.RecordFilter`` knows which
ones, from a header decoded out of the event's raw bytes (the verdict the
Kafka source and the audit-log tail use).  So the body is decoded twice:
orjson gives the documents (and decides, as before, what is valid JSON and
what each item is), and msgspec gives each item's raw bytes, paired by
position, to ask the filter.  The second decode skips every value it is not
asked for, so it costs a fraction of the events it saves.

An item the filter skips is still checked (a broken event is still
rejected) and keyed for dedup from its document, so the webhook's answer
(``accepted``, ``duplicates``, ``rejected``) and its dedup of retried
batches count it exactly as if it had been decoded: only its processing,
which would have produced nothing, is left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from eventd.events.audit import audit_documents, audit_event, check_event
from eventd.events.dedup import Item, audit_key, document_key
from eventd.events.errors import DecodeError


class _RawList(msgspec.Struct, gc=False):
    """An ``EventList`` as raw items (``kind`` is checked on orjson's document)."""

    items: list[msgspec.Raw] | None = None


_decode_raw_list: Callable[[bytes], _RawList] = msgspec.json.Decoder(_RawList).decode
#: What the raw decode may raise where orjson did not (deep nesting).
_RAW_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


@dataclass(slots=True)
class Parsed:
    """A webhook body: orjson's document, and the raw bytes of its
    ``EventList`` items when the body is one (else None)."""

    document: Any
    raw_items: list[msgspec.Raw] | None


def parse_body(body: bytes, document: Any) -> Parsed:
    """``document`` (orjson's decode of ``body``) with the raw items of the
    same body, when it is an ``EventList`` whose items both decoders see alike."""
    if not (isinstance(document, dict) and document.get("kind") == "EventList"):
        return Parsed(document, None)
    items = document.get("items")
    if not isinstance(items, list) or not items:
        return Parsed(document, None)
    try:
        raw = _decode_raw_list(body).items
    except _RAW_ERRORS:
        return Parsed(document, None)
    if raw is None or len(raw) != len(items):  # cannot happen for one valid body; never guess
        return Parsed(document, None)
    return Parsed(document, raw)


def webhook_items(
    parsed: Parsed, skippable: Callable[[bytes], bool] | None, origin: str = "webhook"
) -> tuple[list[Item], list[DecodeError]]:
    """The body's items (identity and event, or None for an item skipped
    undecoded) and the errors of the items that are no usable event.

    ``skippable`` is the ``RecordFilter``'s; None decodes every item.
    Raises ``DecodeError`` when the body is not audit data at all.
    """
    docs = audit_documents(parsed.document)
    raw = parsed.raw_items
    items: list[Item] = []
    errors: list[DecodeError] = []
    if skippable is None or raw is None or docs is not parsed.document.get("items"):
        for doc in docs:
            try:
                event = audit_event(doc, origin)
            except DecodeError as err:
                errors.append(err)
                continue
            items.append((audit_key(event), event))
        return items, errors
    for doc, record in zip(docs, raw, strict=True):
        try:
            if skippable(record):
                check_event(doc)  # a broken event is rejected, skipped or not
                items.append((document_key(doc), None))
            else:
                event = audit_event(doc, origin)
                items.append((audit_key(event), event))
        except DecodeError as err:
            errors.append(err)
    return items, errors
