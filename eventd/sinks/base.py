"""The contract between the pipeline and outputs.

The pipeline never calls a sink directly: every sink sits behind its own
``SinkLane`` (``sinks/lane.py``), a bounded queue drained by the lane's own
tasks, so a sink may take as long as it likes in ``send_many`` without
delaying the matcher, another sink or the event loop.  What a sink declares
here tells the lane how to treat it:

* ``durable``: what the sink accepted survives a crash of eventd (the Kafka
  sink's on-disk spool, an alert file).  Inputs acknowledge an event only
  once every durable sink accepted its alerts, so a durable sink that cannot
  take more (spool full, disk full) pushes back on the inputs instead of
  dropping.  Best-effort sinks (stdout, Slack, Alertmanager, webhooks) never
  hold anything up: when they fall behind, their lane drops the oldest
  alerts and counts them.
* ``concurrency``: how many lane tasks call ``send_many`` at once (HTTP
  sinks keep that many requests in flight), each with up to ``max_call``
  alerts (an HTTP sink's alerts per request).

``send_many`` returns ``None`` when the alerts are delivered as far as the
sink can tell once it returns (written to a file or a pipe), or a future
that resolves once the destination acknowledged them (the Kafka broker):
inputs that must not acknowledge before that (the Kafka source, see
``Ack.DELIVERED``) wait for it.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from eventd.alerts import Alert
from eventd.config import BufferConfig
from eventd.configkey import declared_name

if TYPE_CHECKING:
    from eventd.kafka_client import ConsumedOffsets

#: What ``send_many`` returns: None (delivered on return) or a future
#: resolved once the destination acknowledged every alert of the call.
Receipt = asyncio.Future[None] | None


class Sink(abc.ABC):
    #: Where the sink is configured (``sinks.<name>``): declared once by each
    #: sink; its config errors name keys under it (``f"{config_key}.url"``)
    #: and ``eventd.components`` registers it under it.
    config_key: str = "sinks.sink"
    #: The last part of ``config_key`` (derived, never declared): the sink's
    #: label in logs and metrics.
    name: str = "sink"
    #: Accepted alerts survive a crash; inputs wait for durable sinks.
    durable: bool = False
    #: Lane tasks calling ``send_many`` concurrently.
    concurrency: int = 1
    #: Most alerts a best-effort lane hands to one ``send_many`` call.
    max_call: int = 500
    #: Bounds of the sink's lane (``sinks.<sink>.buffer``).
    buffer: BufferConfig = BufferConfig()
    #: Offers ``send_transaction`` (the Kafka sink, for exactly-once).
    transactional: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_key" in vars(cls):
            cls.name = declared_name(cls, "sinks")

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections, start delivery tasks."""

    @abc.abstractmethod
    async def send(self, alert: Alert) -> None:
        """Take one alert (may wait as long as the destination needs)."""

    async def send_many(self, alerts: Sequence[Alert]) -> Receipt:
        """Take ``alerts`` in order; see the module docstring for the receipt."""
        for alert in alerts:
            await self.send(alert)
        return None

    async def send_transaction(self, alerts: Sequence[Alert], consumed: ConsumedOffsets) -> None:
        """Deliver ``alerts`` and commit ``consumed`` atomically (exactly-once);
        raises if neither happened.  Only for ``transactional`` sinks."""
        raise NotImplementedError(f"sink {self.name} has no transactions")

    async def flush(self) -> None:  # noqa: B027 - optional hook
        """Wait until everything sent so far is delivered or parked durably."""

    async def close(self) -> None:
        await self.flush()

    def accepts(self, alert: Alert) -> bool:
        """Whether the sink takes ``alert`` at all (its filters); checked
        before queueing, so a filtered alert never takes queue space."""
        return True

    def healthy(self) -> bool:
        """False while deliveries fail (``eventd_sink_up``, ``/healthz``)."""
        return True

    def accepting(self) -> bool:
        """False while a durable sink cannot take more (``/readyz``)."""
        return True

    async def probe(self) -> None:  # noqa: B027 - optional hook
        """Check an unhealthy destination again while nothing is being
        delivered, so ``healthy()`` recovers without waiting for an alert."""

    def reopen(self) -> None:  # noqa: B027 - optional hook
        """Reopen output files (SIGHUP, after logrotate)."""
