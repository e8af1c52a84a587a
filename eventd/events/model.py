"""The one event object every source produces and every rule reads.

An event is a decoded JSON document plus the name of the rule source it
belongs to.  Field values are extracted lazily by the engine and memoised in
``cache`` so that a field used by ten rules is computed once per event.
"""

from __future__ import annotations

from typing import Any

from eventd.events.timestamps import now_ns, rfc3339_to_ns

#: Rule source of Kubernetes audit events (Falco's name for it).
K8S_AUDIT = "k8s_audit"
#: Rule source of Falco alerts that eventd receives (eventd's own source name).
FALCO = "falco"
SOURCES = (K8S_AUDIT, FALCO)


class Event:
    """A decoded event.

    ``doc`` is the JSON object as decoded by orjson (for audit events a single
    ``Event``, never an ``EventList``).  ``origin`` says how it arrived
    (``file``, ``webhook``, ``kafka``, ``grpc``, ``gke``, ``aks`` ...) so that
    rules and alerts can tell inferred data from first-hand data.
    """

    __slots__ = ("cache", "doc", "origin", "source")

    def __init__(self, source: str, doc: dict[str, Any], origin: str = "file") -> None:
        self.source = source
        self.doc = doc
        self.origin = origin
        self.cache: dict[Any, Any] = {}

    def __repr__(self) -> str:
        return f"Event(source={self.source!r}, origin={self.origin!r})"


def event_time_ns(event: Event) -> int:
    """The event's own time: ``stageTimestamp`` of audit events, ``time`` of
    Falco alerts; the current time if it is unreadable.  Memoised."""
    cached = event.cache.get(_TIME_KEY)
    if cached is None:
        stamp = event.doc.get("stageTimestamp" if event.source == K8S_AUDIT else "time")
        try:
            cached = rfc3339_to_ns(stamp)
        except ValueError:
            cached = now_ns()
        event.cache[_TIME_KEY] = cached
    return cached


_TIME_KEY = ("eventd", "time_ns")
