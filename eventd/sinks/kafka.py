"""Alerts to Kafka, without ever losing one to an outage or a crash.

falcosidekick's Kafka output has no retry, no buffer, no mTLS and no message
key, and acks ``NONE`` by default: a broker hiccup silently loses alerts.
Here every alert is first appended to a durable on-disk spool
(``sinks.spool``); one sender task produces from the spool in order and
acknowledges spool records only after the broker acknowledged the messages
(``acks: all`` by default).  A broker outage fills the spool and it drains
in order when the broker is back; a restart or a ``kill -9`` drains it on
the next start.  A full spool (or disk) stops the sink from accepting
(``spool_full_policy: block``, the default), which pushes back on the
inputs; dropping is an explicit policy.  ``send_many``'s receipt resolves
when the broker acknowledged the alerts, which is what the Kafka source
waits for before committing its offsets.  Delivery is at-least-once: a batch
interrupted half-way is produced again, and the alert ``uuid`` lets
consumers drop the duplicates.

Messages: value = the alert JSON, byte for byte as spooled; key = one context
field (``namespace`` by default) so one stream stays ordered on one
partition; headers ``rule``, ``priority``, ``source``, ``uuid`` and
``content-type``; topic = the first matching route, else ``topic``.

The spool stores the alert JSON only, and the topic/key/headers are derived
from it when producing: a changed routing config applies to alerts spooled
before a restart, and the spool format does not depend on the sink config.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.codec import has_gzip, has_lz4, has_snappy, has_zstd
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RequestTimedOutError,
)

from eventd.alerts import Alert
from eventd.backoff import backoff_delay
from eventd.checks import client_tls_files, spool_settings
from eventd.config import ConfigError, KafkaRoute, KafkaSinkConfig
from eventd.kafka_client import ConsumedOffsets, client_options, sink_client_log, started_producer
from eventd.metrics import Metrics
from eventd.priority import Priority
from eventd.sinks.base import Receipt, Sink
from eventd.sinks.kafka_transactions import TransactionalDelivery
from eventd.sinks.spool import Spool, SpoolError, SpoolFull

log = structlog.get_logger(__name__)

#: Records produced per round trip; the spool is read in batches of this size.
BATCH_RECORDS = 500
#: healthy() turns False when the spool is fuller than this fraction.
SPOOL_HIGH_WATER = 0.9
#: A blocked append is retried at least this often (a freed disk sends no signal).
ROOM_POLL_SECONDS = 0.5
#: aiokafka's codecs; snappy, lz4 and zstd come from the ``cramjam`` package.
CODECS: dict[str, Callable[[], bool]] = {
    "gzip": has_gzip,
    "snappy": has_snappy,
    "lz4": has_lz4,
    "zstd": has_zstd,
}

#: Kafka's legal topic names; checked at start-up, as a bad name would fail
#: every delivery attempt forever.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")

Headers = list[tuple[str, bytes]]
Message = tuple[str, bytes | None, Headers]


def _context(doc: dict[str, Any]) -> dict[str, Any]:
    ctx = doc.get("eventd")
    return ctx if isinstance(ctx, dict) else {}


def _first_registry(doc: dict[str, Any]) -> Any:
    images = _context(doc).get("images")
    if isinstance(images, list) and images and isinstance(images[0], dict):
        return images[0].get("registry")
    return None


#: ``key:`` setting -> how to read the message key from the alert document.
KEY_FIELDS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "namespace": lambda doc: _context(doc).get("namespace"),
    "workload": lambda doc: _context(doc).get("workload"),
    "registry": _first_registry,
    "rule": lambda doc: doc.get("rule"),
    "none": lambda doc: None,
}


class Router:
    """Topic, key and headers of one alert document, precompiled from the
    config found under ``key`` (the sink's ``config_key``, for errors)."""

    def __init__(self, config: KafkaSinkConfig, key: str) -> None:
        if config.key not in KEY_FIELDS:
            raise ConfigError(f"{key}.key", f"expected one of {', '.join(KEY_FIELDS)}")
        self._key = KEY_FIELDS[config.key]
        self._topic = _checked_topic(config.topic, f"{key}.topic")
        self._routes = [self._compile(route, f"{key}.routes[{i}]") for i, route in enumerate(config.routes)]

    @staticmethod
    def _compile(route: KafkaRoute, key: str) -> Callable[[dict[str, Any]], str | None]:
        """A route matches when every criterion it sets matches (any of its values)."""
        try:
            priorities = frozenset(Priority.parse(p) for p in route.priorities)
        except ValueError as err:
            raise ConfigError(f"{key}.priorities", str(err)) from None
        rules, tags = frozenset(route.rules), frozenset(route.tags)
        topic = _checked_topic(route.topic, f"{key}.topic")

        def match(doc: dict[str, Any]) -> str | None:
            if rules and doc.get("rule") not in rules:
                return None
            if priorities and _priority(doc) not in priorities:
                return None
            # A foreign record's "tags" may be anything: an error here would
            # fail its batch on every retry and stop the spool behind it.
            found = doc.get("tags")
            if tags and not (
                isinstance(found, list) and tags.intersection(t for t in found if isinstance(t, str))
            ):
                return None
            return topic

        return match

    def message(self, value: bytes) -> Message:
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            # Not an alert (a spool written by something else): deliver, never drop.
            return self._topic, None, [("content-type", b"application/json")]
        topic = next((t for match in self._routes if (t := match(doc)) is not None), self._topic)
        key = self._key(doc)
        headers = [
            (name, str(doc[name]).encode())
            for name in ("rule", "priority", "source", "uuid")
            if doc.get(name)
        ]
        headers.append(("content-type", b"application/json"))
        return topic, str(key).encode() if key else None, headers


def _checked_topic(topic: str, key: str) -> str:
    if not _TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
        raise ConfigError(key, f"invalid Kafka topic name {topic!r} (letters, digits, '.', '_', '-')")
    return topic


def _priority(doc: dict[str, Any]) -> Priority | None:
    try:
        return Priority.parse(doc.get("priority"))
    except ValueError:
        return None


def failure_reason(err: BaseException) -> str:
    """A short, fixed label for ``sink_failures{reason}``."""
    # Timeouts first: the built-in TimeoutError is an OSError.
    if isinstance(err, KafkaTimeoutError | RequestTimedOutError | TimeoutError):
        return "timeout"
    if isinstance(err, KafkaConnectionError | OSError):
        return "connection"
    if isinstance(err, ConfigError):
        return "config"
    if isinstance(err, KafkaError):
        return "broker_error"
    return "error"


def _append_all(spool: Spool, values: list[bytes], start: int) -> tuple[int, SpoolFull | None]:
    """Append ``values[start:]`` in order; how far it got, and why it stopped."""
    for i in range(start, len(values)):
        try:
            spool.append(values[i])
        except SpoolFull as full:
            return i, full
    return len(values), None


class KafkaSink(Sink):
    config_key = "sinks.kafka"
    durable = True
    transactional = True

    def __init__(
        self,
        config: KafkaSinkConfig,
        metrics: Metrics,
        *,
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
        unhealthy_after: float = 5.0,
        close_timeout: float = 10.0,
        fsync_interval: float = 1.0,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._router = Router(config, self.config_key)
        if config.compression != "none" and not CODECS[config.compression]():
            raise ConfigError(
                f"{self.config_key}.compression", f"{config.compression} needs the Python package cramjam"
            )
        # Fails fast at start-up on a bad TLS/SASL config; re-read on every reconnect.
        client_tls_files(config.tls, f"{self.config_key}.tls")
        self._options()
        # The spool opens in start(); what would make that fail is refused here.
        spool_settings(config.spool_dir, config.spool_max_bytes, self.config_key)
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._unhealthy_after = unhealthy_after
        self._close_timeout = close_timeout
        self._fsync_interval = fsync_interval
        self._deliveries = metrics.sink_deliveries.labels(self.name)
        self._too_large = metrics.sink_dropped.labels(self.name, "too_large")
        self._retries = metrics.sink_retries.labels(self.name)
        self._spool: Spool | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._append_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        #: monotonic time of the first failure of the current outage; None when delivering.
        self._failing_since: float | None = None
        #: The producer's library log records fold here (eventd.logs).
        self._client_log = sink_client_log(self.name, self.config_key, metrics)
        #: Why appends wait (``spool_full``, ``disk_full``); None while they do not.
        self._blocked: str | None = None
        #: Exactly-once deliveries (``send_transaction``); made on first use.
        self._transactions: TransactionalDelivery | None = None
        #: ``(last position, future)`` of ``send_many`` calls awaiting the broker, in order.
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    # -------------------------------------------------------------- contract

    async def start(self) -> None:
        config = self.config
        self._spool = await asyncio.to_thread(
            Spool,
            config.spool_dir,
            config.spool_max_bytes,
            config.spool_full_policy,
            self.metrics,
            self.name,
            fsync_interval=self._fsync_interval,
        )
        self._task = asyncio.create_task(self._run(), name="kafka-sink")

    async def send(self, alert: Alert) -> None:
        await self.send_many([alert])

    async def send_many(self, alerts: Sequence[Alert]) -> Receipt:
        """Append to the spool (in a thread: never blocks the loop); the receipt
        resolves once the broker acknowledged every one of ``alerts``.

        With the ``block`` policy a full spool or disk makes this wait, retrying
        as acknowledgements free space: the lane, then the inputs, wait too.
        """
        spool = self._started()
        values = [alert.to_json() for alert in alerts]
        if not values:
            return None
        async with self._append_lock:  # keeps the order of concurrent senders
            done = 0
            while True:
                done, full = await asyncio.to_thread(_append_all, spool, values, done)
                self._wake.set()
                if full is None:
                    break
                await self._wait_for_room(full.reason)
            if self._blocked is not None:
                log.info("kafka_spool_accepting_again", reason=self._blocked)
                self._blocked = None
            last = spool.next_position - 1
        receipt: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((last, receipt))
        self._settle_waiters()
        return receipt

    def accepting(self) -> bool:
        return self._blocked is None and self._task is not None and not self._task.done()

    async def send_transaction(self, alerts: Sequence[Alert], consumed: ConsumedOffsets) -> None:
        """Exactly-once: produce ``alerts`` and commit the input offsets in one
        transaction, bypassing the spool (see ``sinks/kafka_transactions.py``)."""
        if self._transactions is None:
            transactional_id = (
                self.config.transactional_id or f"{self.config.client_id}-{socket.gethostname()}"
            )
            self._transactions = TransactionalDelivery(
                self._options, self._router.message, transactional_id, self.metrics, self.name
            )
        await self._transactions.deliver(alerts, consumed)

    async def _wait_for_room(self, reason: str) -> None:
        """Wait for an acknowledgement (or, for a full disk, a while) before retrying."""
        if self._blocked is None:
            self._blocked = reason
            self.metrics.sink_failures.labels(self.name, reason).inc()
            log.warning("kafka_spool_blocked", reason=reason, spool_alerts=self._started().depth)
        async with self._progress:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), ROOM_POLL_SECONDS)

    def _settle_waiters(self) -> None:
        """Resolve the receipts of everything the spool is done with."""
        spool = self._spool
        if spool is None:
            return
        head = spool.head
        waiters = self._waiters
        while waiters and waiters[0][0] < head:
            _, receipt = waiters.popleft()
            if not receipt.done():
                receipt.set_result(None)

    async def flush(self) -> None:
        """Wait until the spool is empty, or return early while the broker is
        unreachable: the spool holds the rest durably."""
        spool = self._started()
        async with self._progress:
            await self._progress.wait_for(
                lambda: (
                    spool.depth == 0
                    or self._failing_since is not None
                    or self._task is None
                    or self._task.done()
                )
            )

    async def close(self) -> None:
        if self._spool is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), self._close_timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop_producer()
        if self._transactions is not None:
            await self._transactions.close()
        self._settle_waiters()
        while self._waiters:
            _, receipt = self._waiters.popleft()
            if not receipt.done():
                receipt.set_exception(SpoolError("closed before the broker acknowledged"))
                receipt.exception()  # the waiter may be gone
        await asyncio.to_thread(self._spool.close)
        self._spool = None

    def healthy(self) -> bool:
        spool = self._spool
        if spool is None or self._task is None or self._task.done():
            return False
        if spool.size_bytes > SPOOL_HIGH_WATER * spool.max_bytes:
            return False
        since = self._failing_since
        return since is None or time.monotonic() - since <= self._unhealthy_after

    # ---------------------------------------------------------------- sender

    def _started(self) -> Spool:
        if self._spool is None:
            raise RuntimeError("KafkaSink.start() was not called")
        return self._spool

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                failures = await self._step(failures)
            except asyncio.CancelledError:
                raise
            except Exception:  # a spool I/O error: keep the sink alive
                log.exception("kafka_sink_error")
                failures += 1
                await asyncio.sleep(self._backoff(failures))

    async def _step(self, failures: int) -> int:
        """Deliver one batch from the spool (or wait for one); the new count of
        consecutive failures."""
        spool = self._started()
        self._wake.clear()
        records = await asyncio.to_thread(spool.peek, BATCH_RECORDS)
        if not records:
            await self._notify()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._fsync_interval)
            await asyncio.to_thread(spool.sync)
            return failures
        if failures:
            self._retries.inc()
        done, delivered, error = await self._deliver(records)
        if done:
            await asyncio.to_thread(spool.ack_through, records[done - 1][0])
            self._deliveries.inc(delivered)
            self._settle_waiters()
        if error is None:
            if self._failing_since is not None:
                log.info("kafka_sink_recovered", spool_alerts=spool.depth)
            self._client_log.recovered()
            self._failing_since = None
            await self._notify()
            return 0
        reason = failure_reason(error)
        self.metrics.sink_failures.labels(self.name, reason).inc()
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning("kafka_sink_failing", reason=reason, error=str(error), spool_alerts=spool.depth)
        await self._notify()
        # A fresh producer on the next attempt re-reads TLS/SASL files and
        # clears whatever state the failure left.
        await self._drop_producer()
        await asyncio.sleep(self._backoff(failures))
        return failures + 1

    def _backoff(self, failures: int) -> float:
        """Capped exponential delay with jitter, so many eventd instances do
        not reconnect in lockstep after a broker outage."""
        return backoff_delay(failures, self._backoff_initial, self._backoff_max)

    async def _deliver(self, records: list[tuple[int, bytes]]) -> tuple[int, int, BaseException | None]:
        """Produce ``records``.  Returns how many of them, from the first, are
        done (acknowledged by the broker, or dropped as too large), how many
        of those were delivered, and the first error."""
        futures: list[asyncio.Future[Any]] = []
        error: BaseException | None = None
        try:
            producer = await self._connected()
            for _, value in records:
                topic, key, headers = self._router.message(value)
                try:
                    futures.append(await producer.send(topic, value=value, key=key, headers=headers))
                except MessageSizeTooLargeError as err:
                    # Would fail on every retry and block the spool behind it.
                    self._too_large.inc()
                    log.error("kafka_alert_too_large", bytes=len(value), error=str(err))
                    futures.append(_skipped())
        except asyncio.CancelledError:
            raise
        except Exception as err:
            # The records after the failing one were not enqueued; those before
            # it still complete, so the done prefix stays exact.
            error = err
        results = await asyncio.gather(*futures, return_exceptions=True)
        done, delivered, failed = done_prefix(results)
        return done, delivered, failed if failed is not None else error

    async def _connected(self) -> AIOKafkaProducer:
        if self._producer is None:
            self._producer = await started_producer(self._options(), self._client_log)
        return self._producer

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), self._close_timeout)

    def _options(self) -> dict[str, Any]:
        config = self.config
        options = client_options(
            config.bootstrap_servers, config.tls, config.sasl, key=self.config_key, metrics=self.metrics
        )
        options.update(
            client_id=config.client_id,
            acks="all" if config.acks == "all" else int(config.acks),
            compression_type=None if config.compression == "none" else config.compression,
            # Ordered retries without idempotence: aiokafka keeps one batch in
            # flight per partition.  Idempotence would also dedup retries, but
            # not every broker supports it and the uuid already allows dedup.
            enable_idempotence=False,
            request_timeout_ms=int(config.request_timeout_seconds * 1000),
            linger_ms=5,
        )
        return options

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()


#: The result of a record that was dropped (too large), not sent.
SKIPPED = object()


def _skipped() -> asyncio.Future[Any]:
    """A finished future standing in for a record that was dropped, not sent."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(SKIPPED)
    return future


def done_prefix(results: Sequence[object]) -> tuple[int, int, BaseException | None]:
    """From the per-record outcomes of one batch, in spool order (a broker
    acknowledgement, ``SKIPPED``, or an exception): how many records from
    the first are done, how many of those were delivered (not skipped), and
    the first failure.  Only that prefix may be acknowledged in the spool:
    a record after a failure may have reached the broker, but acknowledging
    it would also acknowledge the failed one before it."""
    done = next((i for i, r in enumerate(results) if isinstance(r, BaseException)), len(results))
    failed = results[done] if done < len(results) else None
    assert failed is None or isinstance(failed, BaseException)
    skipped = sum(1 for r in results[:done] if r is SKIPPED)
    return done, done - skipped, failed
