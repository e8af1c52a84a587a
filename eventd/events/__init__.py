"""Turning bytes into event objects: audit Events, Falco alerts, wrappers."""

from eventd.events.model import FALCO, K8S_AUDIT, SOURCES, Event

__all__ = ["FALCO", "K8S_AUDIT", "SOURCES", "Event"]
