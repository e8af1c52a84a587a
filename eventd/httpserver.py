"""Hardened HTTP listeners, shared by the ops server and the HTTP inputs.

Every socket eventd listens on faces whoever can reach it, so each one gets
the same protections, written once here:

* **A connection cap.**  A listener keeps at most ``max_connections`` open
  connections (TLS handshakes included), and never more than its share of
  the process's descriptor limit (``RLIMIT_NOFILE`` minus a reserve for
  files, sinks and the event loop, split between the listeners).  A
  connection beyond the cap is accepted and closed at once, so a flood of
  connections costs the flooder, not the other listeners, and the process
  never runs out of descriptors because of clients.
* **A header timeout.**  A request head must be complete within
  ``header_timeout_seconds`` of the connection opening (or of the first byte
  of a later request on a kept-alive connection): slow-header clients
  (slow-loris) cannot hold connections.
* **An idle timeout.**  A kept-alive connection with no request is closed
  after ``idle_timeout_seconds``.
* **TLS handshakes are bounded and counted.**  The handshake runs under the
  header timeout; failures are counted by reason (no client certificate,
  bad certificate, not TLS...).
* **Quiet under attack.**  Each of these is counted in
  ``eventd_listener_closed_total{listener,reason}`` and logged at most once
  per ``LOG_INTERVAL_SECONDS`` per listener and kind, with the number of
  occurrences since the last line.  When the process does reach its
  descriptor limit anyway, asyncio's accept loop reports every failed
  ``accept()``; those reports are counted
  (``eventd_listener_accept_errors_total``) and rate-limited the same way
  instead of being logged with a traceback each.

aiohttp still parses HTTP; this module owns the sockets: ``HardenedSite`` is
an aiohttp site whose protocol factory wraps aiohttp's request handler in a
``_Connection`` that enforces the above.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import ssl
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from eventd.config import ConfigError, Listen
from eventd.metrics import Metrics

log = structlog.get_logger(__name__)

#: A rate-limited event is logged at most once per this many seconds.
LOG_INTERVAL_SECONDS = 10.0
#: Descriptors kept out of every listener's share, for everything else the
#: process opens (event loop, log and rule files, spools, sink connections).
MIN_DESCRIPTOR_RESERVE = 64
#: How long a TLS close may wait for the peer's ``close_notify``.
TLS_SHUTDOWN_SECONDS = 5.0
#: asyncio's message when ``accept()`` fails for lack of descriptors or memory.
_ACCEPT_RESOURCE_MESSAGE = "socket.accept() out of system resource"
#: The ``reason`` labels of handshake failures (a closed set: bounded cardinality).
TLS_FAILURE_REASONS = ("no_certificate", "bad_certificate", "alert", "protocol", "timeout", "closed", "other")


def listen_failure(listen: object, key: str, err: OSError) -> str:
    """Why ``listen`` cannot be bound, and for a taken port which key to change
    (the defaults are the Falco ecosystem's ports: another tool may have one)."""
    reason = err.strerror or str(err)
    if err.errno == errno.EADDRINUSE:
        env = "EVENTD_" + key.upper().replace(".", "__") + "__LISTEN"
        return (
            f"cannot listen on {listen}: address already in use (another process has it; "
            f"set {key}.listen, or {env}, to a free host:port)"
        )
    return f"cannot listen on {listen}: {reason}"


class Limits(Protocol):
    """What a listener's config section provides (``server``, ``sources.<input>``)."""

    @property
    def max_connections(self) -> int: ...

    @property
    def header_timeout_seconds(self) -> float: ...

    @property
    def idle_timeout_seconds(self) -> float: ...


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """The protections of one listener, checked (positive timeouts)."""

    max_connections: int = 512
    header_timeout_seconds: float = 15.0
    idle_timeout_seconds: float = 15.0

    @classmethod
    def of(cls, section: Limits, key: str) -> ListenerLimits:
        """The limits of a config section; ``key`` names it in errors."""
        for name in ("header_timeout_seconds", "idle_timeout_seconds"):
            if getattr(section, name) <= 0:
                raise ConfigError(f"{key}.{name}", "must be greater than 0")
        return cls(section.max_connections, section.header_timeout_seconds, section.idle_timeout_seconds)


class RateLimitedLog:
    """Log an event at most once per ``interval`` per key, with how many
    occurrences the line stands for: an attack is visible in the logs without
    writing a line per connection."""

    def __init__(self, interval: float = LOG_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._last: dict[tuple[str, str], float] = {}
        self._pending: dict[tuple[str, str], int] = {}

    def __call__(self, level: str, event: str, listener: str, **facts: Any) -> None:
        key = (event, listener)
        self._pending[key] = self._pending.get(key, 0) + 1
        now = time.monotonic()
        if now - self._last.get(key, -self.interval) < self.interval:
            return
        self._last[key] = now
        count = self._pending.pop(key)
        getattr(log, level)(event, listener=listener, count=count, **facts)


#: Shared by every listener of the process: one budget of log lines.
_RATE_LIMITED = RateLimitedLog()


def quiet_logger(name: str, on_record: Callable[[logging.LogRecord], None]) -> logging.Logger:
    """A logger for aiohttp's per-request reports (malformed requests, handler
    errors) that calls ``on_record`` instead of printing: those reports may
    quote client bytes and come once per request."""

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            on_record(record)

    logger = logging.Logger(f"eventd.http.{name}")  # outside the hierarchy: not printed
    logger.addHandler(_Handler(logging.DEBUG))
    logger.propagate = False
    return logger


def descriptor_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` (a large number when unlimited)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


#: Listening sites of this process, for the descriptor share.
_ACTIVE: weakref.WeakSet[HardenedSite] = weakref.WeakSet()


def descriptor_share() -> int:
    """How many connections one listener may hold: the descriptor limit, less
    a reserve, split evenly between the listening sites."""
    limit = descriptor_limit()
    reserve = max(MIN_DESCRIPTOR_RESERVE, limit // 4)
    return max(1, (limit - reserve) // max(1, len(_ACTIVE)))


def tls_failure_reason(err: BaseException | None) -> str:
    """A handshake failure as one of ``TLS_FAILURE_REASONS``."""
    if isinstance(err, ssl.SSLError):
        code = (getattr(err, "reason", None) or "").upper()
        if code == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no_certificate"
        if "CERTIFICATE" in code:
            return "bad_certificate"
        if "ALERT" in code:
            return "alert"
        return "protocol" if code else "other"
    if isinstance(err, ConnectionAbortedError) and "handshake" in str(err):
        return "timeout"  # asyncio's handshake timeout
    if err is None or isinstance(err, ConnectionError | EOFError):
        return "closed"
    return "other"


class HardenedSite(web.BaseSite):
    """An aiohttp site on ``listen`` with the protections of this module.

    ``name`` is the metrics label (``server``, the input's source name) and
    ``key`` the config key named in errors (``server``, ``sources.<input>``).
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        listen: Listen,
        *,
        name: str,
        key: str,
        limits: ListenerLimits,
        metrics: Metrics,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self.listen = listen
        self.label = name
        self.key = key
        self.limits = limits
        self.open = 0
        self._gauge = metrics.listener_connections.labels(name)
        self._closed = metrics.listener_closed
        self._tls_failures = metrics.tls_handshake_failures
        self._accept_errors = metrics.listener_accept_errors

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self.listen}"

    async def start(self) -> None:
        """Listen; a busy or forbidden address is a ``ConfigError`` naming the key."""
        await super().start()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Connection(self), self.listen.host, self.listen.port, backlog=self._backlog
            )
        except OSError as err:
            raise ConfigError(f"{self.key}.listen", listen_failure(self.listen, self.key, err)) from None
        _ACTIVE.add(self)
        _AcceptErrors.install(loop).register(self)

    async def stop(self) -> None:
        _ACTIVE.discard(self)
        if self._server is not None:
            _AcceptErrors.install(asyncio.get_running_loop()).unregister(self)
        await super().stop()

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` actually bound (port 0 picks one)."""
        # asyncio's Server, or uvloop's (no subclass of it, the same ``sockets``).
        server = cast(asyncio.Server, self._server)
        assert server is not None and server.sockets
        host, port = server.sockets[0].getsockname()[:2]
        return host, port

    def capacity(self) -> int:
        """The connection cap in force now."""
        return min(self.limits.max_connections, descriptor_share())

    # ------------------------------------------------------ called by _Connection

    @property
    def tls(self) -> ssl.SSLContext | None:
        return self._ssl_context

    def admit(self) -> bool:
        """Take a slot for a new connection, or count it as refused."""
        if self.open >= self.capacity():
            self.count_close("capacity", level="warning", capacity=self.capacity())
            return False
        self.open += 1
        self._gauge.set(self.open)
        return True

    def release(self) -> None:
        self.open -= 1
        self._gauge.set(self.open)

    def count_close(self, reason: str, level: str = "info", **facts: Any) -> None:
        self._closed.labels(self.label, reason).inc()
        _RATE_LIMITED(level, "listener_closed_connections", self.label, reason=reason, **facts)

    def count_tls_failure(self, err: BaseException | None) -> None:
        reason = tls_failure_reason(err)
        self._tls_failures.labels(self.label, reason).inc()
        self._closed.labels(self.label, "tls_handshake").inc()
        _RATE_LIMITED("info", "tls_handshake_failed", self.label, reason=reason)

    def count_accept_error(self, reason: str) -> None:
        self._accept_errors.labels(self.label, reason).inc()
        _RATE_LIMITED("error", "listener_accept_failed", self.label, reason=reason)

    def new_handler(self) -> RequestHandler:
        server = self._runner.server
        assert server is not None
        return server()


class _Connection(asyncio.Protocol):
    """One accepted connection: the cap, the TLS handshake, the timeouts;
    everything else is forwarded to aiohttp's handler.

    Phases: ``head`` (waiting for a request head; closed after the header
    timeout), ``busy`` (a request is being served; the handlers bound their
    own reads), ``idle`` (between requests; closed after the idle timeout,
    and the first byte of a new request starts the header timeout).
    """

    def __init__(self, site: HardenedSite) -> None:
        self.site = site
        self.inner: RequestHandler | None = None
        self.transport: asyncio.BaseTransport | None = None
        self.phase = "head"
        self.head_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._admitted = False
        self._closed = False
        #: Decrypted bytes the TLS layer delivers before ``start_tls`` returns.
        self._early: list[bytes] = []

    # -------------------------------------------------------------- the socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if not self.site.admit():
            cast(asyncio.Transport, transport).abort()  # a stream server's (asyncio's or uvloop's)
            return
        self._admitted = True
        ctx = self.site.tls
        if ctx is None:
            self._attach(transport)
            return
        transport = cast(asyncio.Transport, transport)  # asyncio's or uvloop's (no subclass of it)
        transport.pause_reading()  # nothing is read before the TLS layer takes over
        asyncio.get_running_loop().create_task(self._handshake(transport, ctx))

    async def _handshake(self, transport: asyncio.Transport, ctx: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                transport,
                self,
                ctx,
                server_side=True,
                ssl_handshake_timeout=self.site.limits.header_timeout_seconds,
                ssl_shutdown_timeout=TLS_SHUTDOWN_SECONDS,
            )
        except Exception as err:  # every failure is counted, none is fatal
            self.site.count_tls_failure(err)
            self._finish()
            return
        if tls is None or self._closed:  # the client left during the handshake
            self.site.count_tls_failure(None)
            self._finish()
            return
        self._attach(tls)

    def _attach(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.inner = self.site.new_handler()
        _SERVING[transport] = self
        self.inner.connection_made(transport)
        self._arm(self.site.limits.header_timeout_seconds)
        early, self._early = self._early, []
        for data in early:
            self.inner.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self.phase == "idle":
            self.phase = "head"
            self.head_bytes = 0
            self._arm(self.site.limits.header_timeout_seconds)
        if self.phase == "head":
            self.head_bytes += len(data)
        if self.inner is not None:
            self.inner.data_received(data)
        else:  # TLS finished and a request came along before ``_attach``
            self._early.append(data)

    def eof_received(self) -> None:
        if self.inner is not None:  # aiohttp closes on EOF (never keeps a half-open socket)
            self.inner.eof_received()

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()
        if self.inner is not None:
            inner, self.inner = self.inner, None
            inner.connection_lost(exc)

    def _finish(self) -> None:
        """Release the slot once, whichever way the connection ended."""
        if self._closed:
            return
        self._closed = True
        self._disarm()
        if self.transport is not None:
            _SERVING.pop(self.transport, None)
        if self._admitted:
            self.site.release()

    # ------------------------------------------------------------- the phases

    def request_started(self) -> None:
        self.phase = "busy"
        self._disarm()

    def request_finished(self) -> None:
        self.phase = "idle"
        self._arm(self.site.limits.idle_timeout_seconds)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self._closed or self.phase == "busy":
            return
        # Bytes of a head that never completed: slow-loris.  None at all: idle.
        reason = "header_timeout" if self.phase == "head" and self.head_bytes else "idle_timeout"
        self.site.count_close(reason, level="debug" if reason == "idle_timeout" else "info")
        if self.inner is not None:
            self.inner.force_close()
        elif self.transport is not None:
            cast(asyncio.Transport, self.transport).abort()


#: The connection serving each transport, for ``track_requests``.
_SERVING: dict[asyncio.BaseTransport, _Connection] = {}


@web.middleware
async def track_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    """Tell the connection a request is being served: no timeout runs then."""
    conn = _SERVING.get(request.transport) if request.transport is not None else None
    if conn is not None:
        conn.request_started()
    try:
        return await handler(request)
    finally:
        if conn is not None:
            conn.request_finished()


def hardened_app(**kwargs: Any) -> web.Application:
    """An aiohttp application for ``serve`` (its requests reach their connection)."""
    return web.Application(middlewares=[track_requests], **kwargs)


class _AcceptErrors:
    """The event loop's exception handler, extended: asyncio reports each
    ``accept()`` that fails for lack of descriptors (``EMFILE``...) through it,
    once per listener per second, with a traceback.  Those reports are counted
    per listener and logged rate-limited; everything else goes on to the
    handler that was installed before."""

    def __init__(
        self, previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None
    ) -> None:
        self._previous = previous
        self._sites: weakref.WeakValueDictionary[int, HardenedSite] = weakref.WeakValueDictionary()

    @classmethod
    def install(cls, loop: asyncio.AbstractEventLoop) -> _AcceptErrors:
        current = loop.get_exception_handler()
        if isinstance(current, _AcceptErrors):
            return current
        handler = cls(current)
        loop.set_exception_handler(handler)
        return handler

    def register(self, site: HardenedSite) -> None:
        server = cast(asyncio.Server, site._server)  # or uvloop's, with the same ``sockets``
        assert server is not None
        for sock in server.sockets:
            self._sites[sock.fileno()] = site

    def unregister(self, site: HardenedSite) -> None:
        """Before the socket closes: its descriptor number may be reused."""
        for fd in [fd for fd, known in self._sites.items() if known is site]:
            del self._sites[fd]

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == _ACCEPT_RESOURCE_MESSAGE:
            sock = context.get("socket")
            site = self._sites.get(sock.fileno()) if sock is not None else None
            exc = context.get("exception")
            reason = errno.errorcode.get(getattr(exc, "errno", 0) or 0, "other")
            if site is not None:
                site.count_accept_error(reason)
            else:
                _RATE_LIMITED("error", "listener_accept_failed", "unknown", reason=reason)
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)


async def serve(
    app: web.Application,
    listen: Listen,
    *,
    name: str,
    key: str,
    limits: ListenerLimits,
    metrics: Metrics,
    ssl_context: ssl.SSLContext | None = None,
    on_refusal: Callable[[logging.LogRecord], None] | None = None,
) -> tuple[web.AppRunner, HardenedSite]:
    """Run ``app`` on a hardened listener; returns the runner (for ``cleanup``)
    and the site.  ``app`` must have been made by ``hardened_app``.

    aiohttp's own keep-alive timer is set beyond both timeouts, as a backstop:
    the connection's timers close first and count.  Requests aiohttp refuses
    itself (malformed HTTP) are reported to ``on_refusal`` instead of a log.
    """
    runner = web.AppRunner(
        app,
        access_log=None,
        auto_decompress=False,
        shutdown_timeout=1.0,
        keepalive_timeout=limits.header_timeout_seconds + limits.idle_timeout_seconds + 1.0,
        logger=quiet_logger(name, on_refusal or (lambda _record: None)),
    )
    await runner.setup()
    site = HardenedSite(
        runner, listen, name=name, key=key, limits=limits, metrics=metrics, ssl_context=ssl_context
    )
    try:
        await site.start()
    except ConfigError:
        await runner.cleanup()
        raise
    return runner, site
