"""Exactly-once from a Kafka topic to a Kafka topic: alerts and input offsets
committed in one transaction (``sources.kafka.exactly_once``).

The Kafka sink's spool gives at-least-once: a crash between producing and
committing replays records, and consumers drop the copies by ``uuid``.
When the alerts go to the cluster the audit events come from, Kafka's
transactions can do better: each batch's alerts are produced, and the
consumer group's offsets for that batch committed, in one transaction.
Consumers reading with ``isolation.level=read_committed`` then see every
alert exactly once, and an aborted batch is re-read by the group.

What it costs, and why it is off by default:

* no spool: a broker outage stops consumption (the batch fails, the source
  restarts from the last commit after a backoff) instead of being absorbed
  on disk;
* one transaction per batch: a commit round trip to the transaction
  coordinator per batch (raise ``sources.kafka.max_batch`` to amortise it),
  and alert consumers must read ``read_committed`` (they wait for commits);
* the broker must support idempotent and transactional producers (Kafka >=
  0.11, Redpanda); offsets are committed by group id, so a replica that
  lost its partitions in a rebalance can still commit a transaction it had
  in flight: the new owner then re-reads those records (duplicates, never a
  gap).

Ordering: the lane runs one transaction at a time, in batch order.  Once a
transaction of a consumer generation failed, the later ones of that
generation are refused without trying, so no commit can pass the records
of the failed batch: the source starts a new generation from the last
committed offsets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from eventd.alerts import Alert
from eventd.kafka_client import ConsumedOffsets, started_producer
from eventd.metrics import Metrics

log = structlog.get_logger(__name__)

#: ``Router.message``: topic, key and headers of one alert document.
MessageOf = Callable[[bytes], tuple[str, bytes | None, list[tuple[str, bytes]]]]


class TransactionRefused(Exception):
    """An earlier transaction of this consumer generation failed."""


class TransactionalDelivery:
    """One transactional producer, used one batch at a time."""

    def __init__(
        self,
        options: Callable[[], dict[str, Any]],
        message_of: MessageOf,
        transactional_id: str,
        metrics: Metrics,
        name: str,
    ) -> None:
        self._options = options
        self._message_of = message_of
        self.transactional_id = transactional_id
        self._producer: AIOKafkaProducer | None = None
        #: Newest consumer generation with a failed transaction.
        self._failed_generation = -1
        self._m_deliveries = metrics.sink_deliveries.labels(name)
        self._m_failures = metrics.sink_failures.labels(name, "transaction")
        self._m_too_large = metrics.sink_dropped.labels(name, "too_large")

    async def deliver(self, alerts: Sequence[Alert], consumed: ConsumedOffsets) -> None:
        """Produce ``alerts`` and commit ``consumed`` atomically, or raise
        (then neither happened)."""
        if consumed.generation <= self._failed_generation:
            raise TransactionRefused(f"generation {consumed.generation} already had a failed transaction")
        if not consumed.is_current():
            raise TransactionRefused(f"generation {consumed.generation} ended (partitions were reassigned)")
        try:
            producer = await self._connected()
            async with producer.transaction():
                sent = await self._send_all(producer, alerts)
                await producer.send_offsets_to_transaction(dict(consumed.offsets), consumed.group_id)
        except Exception as err:
            self._failed_generation = max(self._failed_generation, consumed.generation)
            self._m_failures.inc()
            log.warning(
                "kafka_transaction_failed",
                error_type=type(err).__name__,
                generation=consumed.generation,
                alerts=len(alerts),
            )
            await self.close()  # a fresh producer next time: it re-initialises the transaction state
            raise
        self._m_deliveries.inc(sent)

    async def _send_all(self, producer: AIOKafkaProducer, alerts: Sequence[Alert]) -> int:
        """Send every alert into the open transaction; the ones too large for
        the broker are dropped and counted (they would abort every retry)."""
        futures = []
        for alert in alerts:
            value = alert.to_json()
            topic, key, headers = self._message_of(value)
            try:
                futures.append(await producer.send(topic, value=value, key=key, headers=headers))
            except MessageSizeTooLargeError:
                self._m_too_large.inc()
                log.error("kafka_alert_too_large", bytes=len(value))
        for future in futures:
            await future
        return len(futures)

    async def _connected(self) -> AIOKafkaProducer:
        if self._producer is None:
            options = self._options()
            options.update(enable_idempotence=True, acks="all", transactional_id=self.transactional_id)
            self._producer = await started_producer(options)
        return self._producer

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
