"""Alerts to Kafka, without ever losing one to an outage or a crash.

falcosidekick's Kafka output has no retry, no buffer, no mTLS and no message
key, and acks ``NONE`` by default: a broker hiccup silently loses alerts.
Here every alert is first appended to a durable on-disk spool
(``sinks.spool``); one sender task produces from the spool in order and
acknowledges spool records only after the broker acknowledged the messages
(``acks: all`` by default).  A broker outage fills the spool (bounded, with a
drop policy) and it drains in order when the broker is back; a restart or a
``kill -9`` drains it on the next start.  Delivery is at-least-once: a batch
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
import time
from collections.abc import Callable
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
from eventd.config import ConfigError, KafkaRoute, KafkaSinkConfig
from eventd.engine.priority import Priority
from eventd.kafka_client import client_options
from eventd.metrics import Metrics
from eventd.sinks.base import Sink
from eventd.sinks.spool import Spool

log = structlog.get_logger(__name__)

CONFIG_KEY = "sinks.kafka"
#: Records produced per round trip; the spool is read in batches of this size.
BATCH_RECORDS = 500
#: healthy() turns False when the spool is fuller than this fraction.
SPOOL_HIGH_WATER = 0.9
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
    """Topic, key and headers of one alert document, precompiled from the config."""

    def __init__(self, config: KafkaSinkConfig) -> None:
        if config.key not in KEY_FIELDS:
            raise ConfigError(f"{CONFIG_KEY}.key", f"expected one of {', '.join(KEY_FIELDS)}")
        self._key = KEY_FIELDS[config.key]
        self._topic = _checked_topic(config.topic, f"{CONFIG_KEY}.topic")
        self._routes = [
            self._compile(route, f"{CONFIG_KEY}.routes[{i}]") for i, route in enumerate(config.routes)
        ]

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
            if tags and not tags.intersection(t for t in doc.get("tags") or () if isinstance(t, str)):
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
    if isinstance(err, KafkaConnectionError | OSError):
        return "connection"
    if isinstance(err, KafkaTimeoutError | RequestTimedOutError | TimeoutError):
        return "timeout"
    if isinstance(err, ConfigError):
        return "config"
    if isinstance(err, KafkaError):
        return "broker_error"
    return "error"


class KafkaSink(Sink):
    name = "kafka"

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
        self._router = Router(config)
        if config.compression != "none" and not CODECS[config.compression]():
            raise ConfigError(
                f"{CONFIG_KEY}.compression", f"{config.compression} needs the Python package cramjam"
            )
        # Fails fast at start-up on a bad TLS/SASL config; re-read on every reconnect.
        self._options()
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
        """Append to the spool (in a thread: never blocks the loop) and return."""
        spool = self._started()
        value = alert.to_json()
        async with self._append_lock:  # keeps the order of concurrent senders
            await asyncio.to_thread(spool.append, value)
        self._wake.set()

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
        if error is None:
            if self._failing_since is not None:
                log.info("kafka_sink_recovered", spool_alerts=spool.depth)
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
        too_large = 0
        error: BaseException | None = None
        try:
            producer = await self._connected()
            for _, value in records:
                topic, key, headers = self._router.message(value)
                try:
                    futures.append(await producer.send(topic, value=value, key=key, headers=headers))
                except MessageSizeTooLargeError as err:
                    # Would fail on every retry and block the spool behind it.
                    too_large += 1
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
        done = next((i for i, r in enumerate(results) if isinstance(r, BaseException)), len(results))
        if done < len(results):
            failed = results[done]
            assert isinstance(failed, BaseException)
            error = failed
        skipped = sum(1 for r in results[:done] if r is _SKIPPED)
        return done, done - skipped, error

    async def _connected(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(**self._options())
            try:
                await producer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), self._close_timeout)

    def _options(self) -> dict[str, Any]:
        config = self.config
        options = client_options(config.bootstrap_servers, config.tls, config.sasl, key=CONFIG_KEY)
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


_SKIPPED = object()


def _skipped() -> asyncio.Future[Any]:
    """A finished future standing in for a record that was dropped, not sent."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(_SKIPPED)
    return future
