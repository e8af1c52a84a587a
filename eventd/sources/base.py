"""The contract between inputs and the pipeline.

A source turns bytes from the outside world into ``Event`` objects and hands
them to the pipeline in ``Batch``es.  Two ways to hand over, because inputs
differ in how they can push back when eventd is saturated:

* ``await inlet.put(batch)`` waits for room: the tailer and the Kafka
  consumer simply read slower.
* ``inlet.offer(batch)`` never waits and says whether the batch was taken:
  the webhook answers 503 with ``Retry-After`` and the API server retries.

A batch may carry ``done``, a future the pipeline resolves once the alerts
of every event in it are safe: accepted by every durable sink (the Kafka
sink's spool, the alert file), or, with ``until_delivered``, acknowledged by
the destination itself (the Kafka broker).  Inputs that promise delivery
wait for it before they acknowledge upstream (a webhook 2xx, Kafka offsets,
the tailer's checkpoint); it fails if the alerts could not be made safe,
and then the input must not acknowledge.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from eventd.configkey import declared_name
from eventd.events.errors import DecodeError
from eventd.events.model import Event

if TYPE_CHECKING:
    from eventd.kafka_client import ConsumedOffsets


@dataclass(slots=True)
class Batch:
    events: list[Event]
    #: The configured source that produced it (``k8s_audit_webhook``...): metrics label.
    source: str
    #: Resolved (result ``None``) once every alert of the batch is safe (see above).
    done: asyncio.Future[None] | None = field(default=None)
    #: ``done`` waits for the destinations' acknowledgements, not only for the
    #: durable sinks to accept: for inputs whose replay source outlives this
    #: process (a Kafka topic), so a replica that vanishes loses nothing.
    until_delivered: bool = False
    #: Exactly-once (Kafka to Kafka): these input offsets are committed in the
    #: transaction that produces the batch's alerts, not by the source.
    consumed: ConsumedOffsets | None = None
    #: Input bytes the batch came from (0: not known), for the pipeline's byte
    #: bound (HTTP inputs bound theirs with ``max_inflight_bytes`` instead).
    size: int = 0
    #: The rule set (a ``Matcher``) whose ``RecordFilter`` dropped records of
    #: this batch before decoding: the batch is matched with it too.
    prefiltered_with: object | None = None


class Inlet(Protocol):
    """What a source may do with the pipeline."""

    async def put(self, batch: Batch) -> None:
        """Hand over ``batch``, waiting while the pipeline is full."""

    def offer(self, batch: Batch) -> bool:
        """Hand over ``batch`` if there is room now; never waits."""

    def rejected(self, source: str, error: DecodeError | str, count: int = 1) -> None:
        """Count input that could not be used, with a reason (never the body)."""


class RecordFilterLike(Protocol):
    """``pipeline.RecordFilter`` as sources see it."""

    matcher: object

    def skippable(self, record: bytes) -> bool:
        """True when ``record`` can be dropped undecoded: it produces nothing."""

    def skipped(self, source: str, count: int) -> None:
        """Count dropped records as received events."""


def record_filter(inlet: Inlet) -> RecordFilterLike | None:
    """The inlet's current ``RecordFilter``; None when it offers none (an
    inlet of a test, rules the prefilter cannot judge): decode everything."""
    get: Callable[[], RecordFilterLike | None] | None = getattr(inlet, "record_filter", None)
    return None if get is None else get()


class Source(abc.ABC):
    """One configured input.  ``run`` works until ``stop`` is called."""

    #: Where the source is configured (``sources.<name>``): declared once by
    #: each source; its config errors name keys under it and
    #: ``eventd.components`` registers it under it.
    config_key: str = "sources.source"
    #: The last part of ``config_key`` (derived, never declared): the label
    #: of its batches, logs and metrics.
    name: str = "source"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_key" in vars(cls):
            cls.name = declared_name(cls, "sources")

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
