"""Reliable HTTP delivery, shared by the incident channels (Slack, Alertmanager, webhook).

falcosidekick posts once and forgets: a receiver that is down, slow or
rate-limiting loses the alert, and every alert opens its own request
(thousands of connections under a flood).  Here the sink's lane
(``sinks/lane.py``) runs ``max_concurrency`` tasks over a connection pool of
the same size, and every request is retried with exponential backoff and
jitter on timeouts, connection errors, 5xx and 429 (``Retry-After`` wins over
the backoff).  Other 4xx mean the receiver refuses this payload for good
(bad URL, revoked token, invalid message), so retrying would only delay the
alerts behind it: those are dropped and counted at once.

These sinks are best-effort: while a receiver is down, retries keep the
lane's tasks busy, the lane fills and drops its oldest alerts (counted), and
nothing else waits.  ``healthy()`` turns False after ``UNHEALTHY_AFTER``
failed attempts in a row and True again on a delivery or on a successful
``probe`` (a bodiless request the lane sends while the sink is idle), so
``eventd_sink_up`` follows the receiver, not the alert traffic.

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
import yarl

from eventd.alerts import Alert
from eventd.backoff import backoff_delay
from eventd.config import ClientTLS, HttpSinkConfig
from eventd.metrics import Metrics
from eventd.sinks.base import Receipt, Sink

log = structlog.get_logger(__name__)

#: Consecutive failed attempts after which ``healthy()`` turns False.
UNHEALTHY_AFTER = 5
#: Upper bound of one backoff or ``Retry-After`` wait: a receiver asking for an
#: hour must not park a worker (and the queue behind it) for an hour.
MAX_RETRY_DELAY = 120.0
#: Bytes of a receiver's answer read at most.  Only its status matters; a
#: receiver (or a proxy in front of it) answering with gigabytes must not
#: grow the daemon, so past this the connection is closed, not drained.
MAX_ANSWER_BYTES = 64 * 1024


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


async def discard_answer(resp: aiohttp.ClientResponse) -> None:
    """Read and drop the answer's body, so a short one returns the connection
    to the pool; one longer than ``MAX_ANSWER_BYTES`` closes it instead."""
    left = MAX_ANSWER_BYTES
    while left > 0:
        chunk = await resp.content.read(left)
        if not chunk:
            return
        left -= len(chunk)
    if not resp.content.at_eof():
        resp.close()


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
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.concurrency = config.max_concurrency
        self.max_call = self.max_batch
        self._ssl = client_ssl_context(config.tls)
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._consecutive_failures = 0
        n = self.name
        self._m_deliveries = metrics.sink_deliveries.labels(n)
        self._m_retries = metrics.sink_retries.labels(n)

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

    @property
    def probe_url(self) -> str:
        """Where ``probe`` asks whether the receiver is back (any answer but a
        5xx means it is): ``url`` without userinfo and query, which may hold
        credentials (aiohttp would send ``user:password@`` as Basic auth)."""
        return str(yarl.URL(self.url).with_user(None).with_query(None))

    # ---------------------------------------------------------------- Sink API

    async def start(self) -> None:
        self._client()

    async def send(self, alert: Alert) -> None:
        await self.send_many([alert])

    async def send_many(self, alerts: Sequence[Alert]) -> Receipt:
        """Deliver ``alerts`` in requests of up to ``max_batch``, retrying each."""
        for i in range(0, len(alerts), self.max_batch):
            chunk = list(alerts[i : i + self.max_batch])
            try:
                await self._deliver(chunk)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a bug in one payload must not stop the others
                log.error(
                    "sink_delivery_bug", sink=self.name, alerts=len(chunk), error_type=type(err).__name__
                )
                self.metrics.sink_dropped.labels(self.name, "internal_error").inc(len(chunk))
        return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def healthy(self) -> bool:
        return self._consecutive_failures < UNHEALTHY_AFTER

    async def probe(self) -> None:
        """A bodiless ``HEAD`` without credentials: a reachable receiver
        answering anything but a 5xx makes the sink healthy again."""
        async with self._client().head(self.probe_url, allow_redirects=False) as resp:
            if resp.status < 500:
                self._consecutive_failures = 0

    # ---------------------------------------------------------------- delivery

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_seconds),
                connector=aiohttp.TCPConnector(limit=self.config.max_concurrency, ssl=self._ssl or True),
            )
        return self._session

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
        try:
            async with self._client().post(
                self.url, data=body, headers=self.headers(body), allow_redirects=False
            ) as resp:
                await discard_answer(resp)
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
