"""The contract between inputs and the pipeline.

A source turns bytes from the outside world into ``Event`` objects and hands
them to the pipeline in ``Batch``es.  Two ways to hand over, because inputs
differ in how they can push back when eventd is saturated:

* ``await inlet.put(batch)`` waits for room: the tailer and the Kafka
  consumer simply read slower.
* ``inlet.offer(batch)`` never waits and says whether the batch was taken:
  the webhook answers 503 with ``Retry-After`` and the API server retries.

A batch may carry ``done``, a future the pipeline resolves once the alerts
of every event in it have been handed to the sinks.  Inputs that promise
delivery wait for it before they acknowledge upstream (Kafka offsets, the
tailer's checkpoint).
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from eventd.events.errors import DecodeError
from eventd.events.model import Event


@dataclass(slots=True)
class Batch:
    events: list[Event]
    #: The configured source that produced it (``k8s_audit_webhook``...): metrics label.
    source: str
    #: Resolved (result ``None``) once every alert of the batch is with the sinks.
    done: asyncio.Future[None] | None = field(default=None)


class Inlet(Protocol):
    """What a source may do with the pipeline."""

    async def put(self, batch: Batch) -> None:
        """Hand over ``batch``, waiting while the pipeline is full."""

    def offer(self, batch: Batch) -> bool:
        """Hand over ``batch`` if there is room now; never waits."""

    def rejected(self, source: str, error: DecodeError | str, count: int = 1) -> None:
        """Count input that could not be used, with a reason (never the body)."""


class Source(abc.ABC):
    """One configured input.  ``run`` works until ``stop`` is called."""

    #: Config key of the source (``sources.<name>``), used in logs and metrics.
    name: str = "source"

    @abc.abstractmethod
    async def run(self, inlet: Inlet) -> None:
        """Produce batches until stopped.  Must never return on a transient
        error (a closed stream, a broker restart): retry with backoff."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop accepting new input, finish what is in flight, persist state
        (offsets, checkpoints).  ``run`` returns soon after."""

    def ready(self) -> bool:
        """True once the source is accepting input (``/readyz``)."""
        return True
