"""Remember recently seen event identities for a time window.

The API server retries whole webhook batches for minutes, and a restarted
tailer may re-read a few lines; both deliver events eventd already has.
Identities are ``auditID`` and ``stage``, kept as 16-byte digests: an
attacker's 100 KB auditID costs 16 bytes here, and ``bytes`` keys are not
tracked by Python's garbage collector (tuple keys made every full
collection walk a full table: throughput halved once it filled).  Entries
expire after ``window`` seconds and the table is capped in entries
(``max_entries``, so in bytes too), oldest first.

An event is only a duplicate of one whose alerts are safe.  So the webhook
*claims* the identities of a batch while it is in flight and they count as
seen only once the batch is done; a batch that fails or is not done in time
releases its claims.  A copy of an event claimed by a batch still in flight
waits for that batch's outcome (bounded): a duplicate if it succeeded, new
if it failed or the wait ran out (at-least-once: its alerts carry the same
``uuid``).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from eventd.events.model import K8S_AUDIT, Event

#: Bytes of an identity digest.
KEY_BYTES = 16


class RecentKeys:
    def __init__(
        self,
        window: float,
        max_entries: int = 500_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.max_entries = max_entries
        self._clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        #: Identities of batches in flight, and the batch's ``done``.
        self._claims: dict[bytes, asyncio.Future[None]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, key: bytes) -> bool:
        """True if ``key`` was seen within the window; records it otherwise."""
        if self.known(key):
            return True
        self._record(key)
        return False

    def known(self, key: bytes) -> bool:
        """True if ``key`` was recorded (not merely claimed) within the window."""
        self._expire(self._clock())
        return key in self._seen

    def claim(self, keys: Iterable[bytes], done: asyncio.Future[None]) -> None:
        """``keys`` belong to a batch in flight: recorded once ``done``
        succeeds, forgotten if it fails (see ``release`` for a timeout)."""
        claimed = list(keys)
        for key in claimed:
            self._claims[key] = done
        done.add_done_callback(lambda future: self._settle(claimed, future))

    def claimed(self, key: bytes) -> asyncio.Future[None] | None:
        """The ``done`` of the batch in flight that claimed ``key``, if any."""
        return self._claims.get(key)

    def release(self, keys: Iterable[bytes], done: asyncio.Future[None]) -> None:
        """Drop the claims ``done``'s batch still holds on ``keys`` (its sender
        gave up waiting): a retry is then new, not a duplicate."""
        for key in keys:
            if self._claims.get(key) is done:
                del self._claims[key]

    def _settle(self, keys: list[bytes], done: asyncio.Future[None]) -> None:
        succeeded = not done.cancelled() and done.exception() is None
        for key in keys:
            if self._claims.get(key) is done:
                del self._claims[key]
                if succeeded:
                    self._record(key)

    def _record(self, key: bytes) -> None:
        seen = self._seen
        seen[key] = self._clock()
        seen.move_to_end(key)  # its window starts now
        while len(seen) > self.max_entries:
            seen.popitem(last=False)  # O(1) at the front, unlike a plain dict

    def _expire(self, now: float) -> None:
        limit = now - self.window
        seen = self._seen
        while seen:
            oldest_key, stamp = next(iter(seen.items()))
            if stamp > limit:
                break
            del seen[oldest_key]


def audit_key(event: Event) -> bytes | None:
    """A digest of ``auditID`` and ``stage`` of an audit event, or None when
    it has no auditID."""
    if event.source != K8S_AUDIT:
        return None
    return document_key(event.doc)


def document_key(doc: dict[str, Any]) -> bytes | None:
    """``audit_key`` of an audit event's document, wrapped in an ``Event``
    or not (the webhook keys the items it never decodes into events too)."""
    audit_id = doc.get("auditID")
    if not isinstance(audit_id, str):
        return None
    stage = doc.get("stage")
    # Length-prefixed: with a bare separator, ("a", "b\0c") and ("a\0b", "c")
    # would be one identity, and one event could pass for another.
    identity = f"{len(audit_id)}:{audit_id}\x00{stage if isinstance(stage, str) else ''}"
    return hashlib.blake2b(identity.encode("utf-8", "surrogatepass"), digest_size=KEY_BYTES).digest()


def drop_duplicates(events: list[Event], recent: RecentKeys) -> tuple[list[Event], int]:
    """The events not seen before (in order), recording them, and how many were dropped."""
    kept = []
    for event in events:
        key = audit_key(event)
        if key is not None and recent.seen(key):
            continue
        kept.append(event)
    return kept, len(events) - len(kept)


@dataclass(slots=True)
class Fresh:
    """What ``new_events`` found in a batch."""

    #: Events to process, in order, and the identities to claim for them.
    events: list[Event] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    #: Copies of events already safe (or repeated inside the batch).
    duplicates: int = 0
    #: ``done`` of other batches in flight holding identities of this one.
    in_flight: set[asyncio.Future[None]] = field(default_factory=set)
    #: New items that were never decoded into events (no rule or observer
    #: needs them; see ``new_items``): accepted and claimed like the rest.
    undecoded: int = 0

    @property
    def accepted(self) -> int:
        """New events of the batch, decoded or not."""
        return len(self.events) + self.undecoded


def new_events(events: list[Event], recent: RecentKeys, *, wait: bool) -> Fresh:
    """Sort a batch that will be claimed.  With ``wait``, events claimed by a
    batch in flight are left out and that batch's ``done`` is reported, so the
    caller can wait for it and sort again; without, they count as new."""
    return new_items([(audit_key(event), event) for event in events], recent, wait=wait)


#: An item of a batch: its identity (None: it has none) and its event, or
#: None for an item that is accepted but never decoded.
Item = tuple[bytes | None, Event | None]


def new_items(items: list[Item], recent: RecentKeys, *, wait: bool) -> Fresh:
    """``new_events`` over items whose identities are already known, some of
    them without an event: those are sorted and claimed exactly like the
    rest (so a retry of them is a duplicate, and ``accepted`` and
    ``duplicates`` count every item), only never processed."""
    fresh = Fresh()
    here: set[bytes] = set()
    for key, event in items:
        if key is not None:
            if key in here or recent.known(key):
                fresh.duplicates += 1
                continue
            other = recent.claimed(key) if wait else None
            if other is not None:
                fresh.in_flight.add(other)
                continue
            here.add(key)
            fresh.keys.append(key)
        if event is None:
            fresh.undecoded += 1
        else:
            fresh.events.append(event)
    return fresh
