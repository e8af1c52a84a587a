"""Remember recently seen event identities for a time window.

The API server retries whole webhook batches for minutes, and a restarted
tailer may re-read a few lines; both deliver events eventd already has.
Identities are ``auditID`` and ``stage``.  Entries expire after ``window``
seconds and the table is capped in size, so memory stays bounded whatever
arrives; when the cap is hit the oldest entries go first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from eventd.events.model import K8S_AUDIT, Event


class RecentKeys:
    def __init__(
        self,
        window: float,
        max_entries: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.max_entries = max_entries
        self._clock = clock
        self._seen: OrderedDict[Hashable, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, key: Hashable) -> bool:
        """True if ``key`` was seen within the window; records it otherwise."""
        now = self._clock()
        self._expire(now)
        if key in self._seen:
            return True
        self._seen[key] = now
        if len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        return False

    def forget(self, key: Hashable) -> None:
        """Take ``key`` back: its delivery was refused, so a retry is not a repeat."""
        self._seen.pop(key, None)

    def _expire(self, now: float) -> None:
        limit = now - self.window
        seen = self._seen
        while seen:
            oldest_key, stamp = next(iter(seen.items()))
            if stamp > limit:
                break
            del seen[oldest_key]


def audit_key(event: Event) -> str | None:
    """``auditID`` and ``stage`` of an audit event as one string, or None
    when it has no auditID.

    A string, not a tuple: a full table holds a million keys, and strings
    are not tracked by Python's garbage collector while tuples are, so
    tuple keys made every full collection walk the whole table (measured:
    throughput fell by half once the table filled).
    """
    if event.source != K8S_AUDIT:
        return None
    audit_id = event.doc.get("auditID")
    if not isinstance(audit_id, str):
        return None
    stage = event.doc.get("stage")
    return f"{audit_id}\x00{stage if isinstance(stage, str) else ''}"


def drop_duplicates(events: list[Event], recent: RecentKeys) -> tuple[list[Event], int]:
    """The events not seen before (in order) and how many were dropped."""
    kept = []
    for event in events:
        key = audit_key(event)
        if key is not None and recent.seen(key):
            continue
        kept.append(event)
    return kept, len(events) - len(kept)
