"""Reliable HTTP delivery, shared by the incident channels (Slack, Alertmanager, webhook).

falcosidekick posts once and forgets: a receiver that is down, slow or
rate-limiting loses the alert, and every alert opens its own request
(thousands of connections under a flood).  Here each sink owns a bounded
memory queue drained by ``max_concurrency`` workers over a connection pool of
the same size, and every request is retried with exponential backoff and
jitter on timeouts, connection errors, 5xx and 429 (``Retry-After`` wins over
the backoff).  Other 4xx mean the receiver refuses this payload for good
(bad URL, revoked token, invalid message), so retrying would only delay the
alerts behind it: those are dropped and counted at once.

URLs and tokens are secrets (a Slack webhook URL *is* the credential), so
nothing here logs a URL, a header or an exception's text, only the sink name,
status codes and exception class names.
"""

from __future__ import annotations

import abc
import asyncio
import email.utils
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
import structlog

from eventd.alerts import Alert
from eventd.backoff import backoff_delay
from eventd.config import ClientTLS, HttpSinkConfig
from eventd.metrics import Metrics
from eventd.sinks.base import Sink

log = structlog.get_logger(__name__)

#: Alerts held in memory per sink before ``send`` pushes back on the pipeline.
DEFAULT_QUEUE_SIZE = 1000
#: How long ``send`` waits for room in a full queue before dropping the alert:
#: long enough to absorb a burst, short enough that one dead receiver cannot
#: stall the pipeline (and with it every other sink) for long.
DEFAULT_ENQUEUE_TIMEOUT = 1.0
#: ``close`` gives up on undelivered alerts after this long (counted as dropped).
DEFAULT_CLOSE_TIMEOUT = 10.0
#: Consecutive failed attempts after which ``healthy()`` turns False.
UNHEALTHY_AFTER = 5
#: Upper bound of one backoff or ``Retry-After`` wait: a receiver asking for an
#: hour must not park a worker (and the queue behind it) for an hour.
MAX_RETRY_DELAY = 120.0


def client_ssl_context(tls: ClientTLS | None) -> ssl.SSLContext | None:
    """Verification against ``tls.ca`` (else the system store), client cert for mTLS."""
    if tls is None:
        return None
    ctx = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
    if tls.cert is not None:
        ctx.load_cert_chain(str(tls.cert), str(tls.key) if tls.key else None)
    return ctx


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True, slots=True)
class _Outcome:
    ok: bool
    reason: str = ""
    retry: bool = False
    retry_after: float | None = None


class HttpSink(Sink):
    """A sink that POSTs alerts; subclasses say where and what.

    Subclasses set ``name`` and ``max_batch`` (alerts per request; Alertmanager
    takes arrays) and implement ``url``, ``body`` and ``headers``.  ``headers``
    is called for every attempt, so signatures carry a fresh timestamp and a
    rotated token is picked up by the next retry.

    ``sleep`` is how the sink waits between attempts (tests record the delays).
    """

    max_batch = 1

    def __init__(
        self,
        config: HttpSinkConfig,
        metrics: Metrics,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        enqueue_timeout: float = DEFAULT_ENQUEUE_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._ssl = client_ssl_context(config.tls)
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(maxsize=queue_size)
        self._enqueue_timeout = enqueue_timeout
        self._close_timeout = close_timeout
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._consecutive_failures = 0
        n = self.name
        self._m_deliveries = metrics.sink_deliveries.labels(n)
        self._m_retries = metrics.sink_retries.labels(n)
        self._m_depth = metrics.sink_queue_depth.labels(n)

    # ------------------------------------------------------------ subclass API

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """Where to POST."""

    @abc.abstractmethod
    def body(self, alerts: Sequence[Alert]) -> bytes:
        """The request body for ``alerts`` (``len(alerts) <= max_batch``)."""

    def headers(self, body: bytes) -> dict[str, str]:
        """Headers of one attempt (authentication, signatures)."""
        return {"Content-Type": "application/json"}

    # ---------------------------------------------------------------- Sink API

    async def start(self) -> None:
        self._ensure_started()

    async def send(self, alert: Alert) -> None:
        self._ensure_started()
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            try:
                await asyncio.wait_for(self._queue.put(alert), self._enqueue_timeout)
            except TimeoutError:
                self.metrics.sink_dropped.labels(self.name, "queue_full").inc()
                log.warning("sink_queue_full", sink=self.name, queued=self._queue.qsize())
                return
        self._m_depth.set(self._queue.qsize())

    async def flush(self) -> None:
        """Wait until the queue is empty and no request is in flight."""
        if self._workers:
            await self._queue.join()

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.flush(), self._close_timeout)
        except TimeoutError:
            lost = self._queue.qsize() + self._in_flight
            self.metrics.sink_dropped.labels(self.name, "shutdown").inc(lost)
            log.error("sink_close_timeout", sink=self.name, undelivered=lost)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def healthy(self) -> bool:
        return self._consecutive_failures < UNHEALTHY_AFTER

    # ---------------------------------------------------------------- delivery

    def _ensure_started(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_seconds),
                connector=aiohttp.TCPConnector(limit=self.config.max_concurrency, ssl=self._ssl or True),
            )
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._worker(), name=f"sink-{self.name}-{i}")
                for i in range(self.config.max_concurrency)
            ]

    async def _worker(self) -> None:
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            self._m_depth.set(queue.qsize())
            self._in_flight += len(batch)
            try:
                await self._deliver(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one payload must not kill the worker
                log.exception("sink_delivery_bug", sink=self.name, alerts=len(batch))
                self.metrics.sink_dropped.labels(self.name, "internal_error").inc(len(batch))
            finally:
                self._in_flight -= len(batch)
                for _ in batch:
                    queue.task_done()

    async def _deliver(self, alerts: list[Alert]) -> None:
        body = self.body(alerts)
        attempt = 0
        while True:
            outcome = await self._attempt(body)
            if outcome.ok:
                self._consecutive_failures = 0
                self._m_deliveries.inc(len(alerts))
                return
            self._consecutive_failures += 1
            self.metrics.sink_failures.labels(self.name, outcome.reason).inc()
            if not outcome.retry:
                self.metrics.sink_dropped.labels(self.name, "rejected").inc(len(alerts))
                log.error("sink_rejected", sink=self.name, reason=outcome.reason, alerts=len(alerts))
                return
            if attempt >= self.config.max_retries:
                self.metrics.sink_dropped.labels(self.name, "retries_exhausted").inc(len(alerts))
                log.error("sink_retries_exhausted", sink=self.name, reason=outcome.reason, alerts=len(alerts))
                return
            delay = outcome.retry_after
            if delay is None:
                # Exponential backoff with jitter: synchronised retries from many
                # workers (or replicas) would hit a recovering receiver together.
                delay = backoff_delay(attempt, self.config.retry_backoff_seconds, MAX_RETRY_DELAY)
            attempt += 1
            self._m_retries.inc()
            log.warning("sink_retry", sink=self.name, reason=outcome.reason, attempt=attempt, delay=delay)
            await self._sleep(min(delay, MAX_RETRY_DELAY))

    async def _attempt(self, body: bytes) -> _Outcome:
        assert self._session is not None
        try:
            async with self._session.post(
                self.url, data=body, headers=self.headers(body), allow_redirects=False
            ) as resp:
                await resp.read()  # return the connection to the pool
                status = resp.status
                if status < 300:
                    return _Outcome(True)
                if status == 429 or status >= 500:
                    reason = "status_429" if status == 429 else "status_5xx"
                    return _Outcome(False, reason, True, retry_after_seconds(resp.headers.get("Retry-After")))
                # Redirects are not followed: they would carry our token elsewhere.
                return _Outcome(False, f"status_{status // 100}xx")
        except TimeoutError:
            return _Outcome(False, "timeout", True)
        except aiohttp.InvalidURL:
            return _Outcome(False, "invalid_url")
        except aiohttp.ClientSSLError:
            return _Outcome(False, "tls", True)
        except aiohttp.ClientConnectionError:
            return _Outcome(False, "connection", True)
        except aiohttp.ClientError:
            return _Outcome(False, "client_error", True)
