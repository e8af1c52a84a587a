"""The machinery shared by the HTTP inputs: listener, TLS, auth, bounded bodies.

Each HTTP input (the audit webhook, the Falco ``http_output`` receiver) runs
its own aiohttp application on its own ``listen`` address.  What they have in
common lives here, so that the security-relevant parts are written once:

* **Who may post.**  TLS with client certificates (``tls.client_ca``: the
  handshake fails without a certificate signed by that CA) and/or a bearer
  token read from ``token_file``.  A listener on a non-loopback address with
  neither refuses to start unless ``allow_unauthenticated`` says so, because
  audit events and alerts are sensitive and forged ones are worse.
* **What is read.**  Bodies are read in chunks against ``max_body_bytes``,
  and a gzip body is inflated in bounded steps against the same cap, so
  neither a huge upload nor a gzip bomb is ever held in memory.  Across all
  requests of an input, the bodies held at once (and what is decoded from
  them, until the request is answered) are bounded by
  ``max_inflight_bytes``: past it a request gets ``503`` + ``Retry-After``,
  so many concurrent valid batches cannot exhaust memory either.
* **Who may connect.**  The listener is ``eventd.httpserver``'s, shared
  with the ops server: connection cap, header and idle timeouts, TLS
  handshakes bounded and counted.
* **What is answered.**  Every refusal has a status, a short stable reason
  code counted through ``inlet.rejected`` and a one-line message; bodies are
  never logged.

Content type: ``application/json`` (any parameters) is JSON, and so is a
request *without* a ``Content-Type`` header, because curl-like shippers and
some Kubernetes clients omit it; any other declared type is refused (415).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hmac
import logging
import ssl
import zlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from eventd.config import ConfigError, HttpInputConfig
from eventd.events.errors import DecodeError
from eventd.httpserver import ListenerLimits, hardened_app, serve
from eventd.metrics import Metrics
from eventd.secretfile import SecretFile
from eventd.sources.base import Batch, Inlet, Source

log = structlog.get_logger(__name__)

#: Reading one body may take this long; the API server gives up after 30 s anyway.
#: (Request heads and idle connections: ``header_timeout_seconds`` and
#: ``idle_timeout_seconds`` of the input's config, see ``eventd.httpserver``.)
BODY_TIMEOUT_SECONDS = 30.0
#: How long a request waits for its batch to reach the sinks before asking
#: the sender to retry; below the API server's 30 s request timeout.
DELIVERY_TIMEOUT_SECONDS = 20.0
#: Bodies larger than this are decoded on a worker thread, not on the event loop.
LARGE_BODY_BYTES = 1024 * 1024
#: On ``stop``: how long in-flight requests may take to finish before being cut.
DRAIN_SECONDS = 15.0
#: Inflate at most this many bytes per step, so a bomb is stopped early.
_INFLATE_STEP = 256 * 1024
_GZIP_ENCODINGS = frozenset({"gzip", "x-gzip"})
_IDENTITY_ENCODINGS = frozenset({"", "identity"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Rejected(Exception):
    """A request refused with ``status``; ``reason`` is the metrics label."""

    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def json_response(data: dict[str, Any]) -> web.Response:
    """A 200 answer with a small JSON summary (senders ignore it; humans read it)."""
    return web.Response(body=orjson.dumps(data), content_type="application/json")


async def delivered(batch: Batch, timeout: float | None = None) -> None:
    """Wait until the pipeline has handed ``batch``'s alerts to the sinks.

    Inputs answer 2xx only then: a sender's retry is the only copy of a batch
    until its alerts are with the sinks (the Kafka sink's spool is on disk),
    so acknowledging earlier would lose acknowledged events on a crash.
    Raises ``Rejected`` (503, retry) when that takes too long or fails.
    """
    assert batch.done is not None
    try:
        async with asyncio.timeout(DELIVERY_TIMEOUT_SECONDS if timeout is None else timeout):
            await asyncio.shield(batch.done)
    except TimeoutError:
        raise Rejected(
            503, "slow", "accepted but not processed in time; retry", {"Retry-After": "1"}
        ) from None
    except Exception:
        raise Rejected(503, "failed", "processing failed; retry", {"Retry-After": "1"}) from None


def busy() -> Rejected:
    """The pipeline is full: the sender should retry shortly (the API server does)."""
    return Rejected(503, "busy", "eventd is busy, retry later", {"Retry-After": "1"})


def stopping() -> Rejected:
    """eventd is shutting down: the sender should retry (another replica, or later)."""
    return Rejected(503, "stopping", "eventd is shutting down, retry later", {"Retry-After": "1"})


def inflight_full() -> Rejected:
    """The input holds ``max_inflight_bytes`` of bodies already: retry shortly."""
    return Rejected(
        503, "inflight_bytes", "too many request bytes in flight, retry later", {"Retry-After": "1"}
    )


class _RefusalCounter:
    """Counts what aiohttp's request handler reports, by kind (malformed HTTP,
    or a handler failure), instead of logging client bytes."""

    def __init__(self, source: str, metrics: Metrics) -> None:
        self._bad = metrics.events_rejected.labels(source, "bad_request")
        self._failed = metrics.events_rejected.labels(source, "server_error")

    def __call__(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        (self._bad if isinstance(exc, HttpProcessingError) else self._failed).inc()


class InflightBytes:
    """The bytes of request bodies an input holds at once.

    A request takes bytes as its body arrives (``Content-Length`` at once
    when declared, the inflated size for gzip) and gives them all back when
    it is answered, so the parsed document and decoded events of a body are
    covered too.  Taking more than what is left raises ``inflight_full``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    @contextlib.contextmanager
    def reservation(self) -> Iterator[_Reservation]:
        held = _Reservation(self)
        try:
            yield held
        finally:
            self.held -= held.size


class _Reservation:
    """One request's share of ``InflightBytes``."""

    def __init__(self, budget: InflightBytes) -> None:
        self.budget = budget
        self.size = 0

    def grow(self, total: int) -> None:
        """Hold ``total`` bytes (no-op if already held); ``Rejected`` if they do not fit."""
        more = total - self.size
        if more <= 0:
            return
        if self.budget.held + more > self.budget.limit:
            raise inflight_full()
        self.budget.held += more
        self.size = total


def count_rejected(inlet: Inlet, source: str, errors: list[DecodeError]) -> None:
    """Count per-event decode errors, one ``rejected`` call per reason."""
    by_reason: dict[str, tuple[DecodeError, int]] = {}
    for err in errors:
        first, count = by_reason.get(err.reason, (err, 0))
        by_reason[err.reason] = (first, count + 1)
    for first, count in by_reason.values():
        inlet.rejected(source, first, count)


class BearerToken:
    """The token clients must present (``Authorization: Bearer <token>``),
    from a file that is re-read when it changes (see ``SecretFile``)."""

    def __init__(self, path: Path, key: str, metrics: Metrics | None = None) -> None:
        self.path = path
        self._secret = SecretFile(path, key, metrics)

    def matches(self, header: str | None) -> bool:
        token = self._secret.value().encode()
        # Tokens are ASCII (RFC 6750); other bytes arrive as surrogates that
        # cannot be encoded: a wrong token (401), never a crash (500).
        if not header or not header.isascii():
            return False
        scheme, _, presented = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(presented.strip().encode(), token)


def server_ssl_context(config: HttpInputConfig, key: str) -> ssl.SSLContext | None:
    """TLS for the listener; a ``client_ca`` makes client certificates mandatory."""
    tls = config.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"{key}.tls", f"cannot load cert {tls.cert} / key {tls.key}: {err}") from None
    if tls.client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=tls.client_ca)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"{key}.tls.client_ca", f"cannot load {tls.client_ca}: {err}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class HttpInput(Source):
    """One HTTP listener feeding the pipeline; subclasses add the routes.

    Construction checks the configuration (and raises ``ConfigError`` naming
    the key), so a misconfigured input stops the daemon before anything
    listens.  ``run`` listens until ``stop``.
    """

    #: Declared content types read as JSON (besides a missing header).
    content_types: frozenset[str] = frozenset({"application/json"})

    def __init__(self, config: HttpInputConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        key = self.config_key
        if not config.path.startswith("/"):
            raise ConfigError(f"{key}.path", f"must start with '/', got {config.path!r}")
        self._limits = ListenerLimits.of(config, key)
        if config.max_inflight_bytes < config.max_body_bytes:
            raise ConfigError(
                f"{key}.max_inflight_bytes",
                f"must be at least max_body_bytes ({config.max_body_bytes}), or the largest bodies never fit",
            )
        self._inflight = InflightBytes(config.max_inflight_bytes)
        self._ssl = server_ssl_context(config, key)
        self._token = (
            BearerToken(config.token_file, f"{key}.token_file", metrics) if config.token_file else None
        )
        mtls = config.tls is not None and config.tls.client_ca is not None
        if not (config.listen.is_loopback() or mtls or self._token or config.allow_unauthenticated):
            raise ConfigError(
                f"{key}.listen",
                f"refusing to listen on {config.listen} without authentication: set "
                f"{key}.tls.client_ca or {key}.token_file, or {key}.allow_unauthenticated: true",
            )
        if self._token and self._ssl is None and not config.listen.is_loopback():
            log.warning("token_without_tls", source=self.name, listen=str(config.listen))
        self._inlet: Inlet | None = None
        self._ready = False
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._started = False
        #: Requests being handled right now (drained by ``stop``).
        self.in_flight = 0
        #: ``(host, port)`` actually bound, once listening (port 0 picks one).
        self.address: tuple[str, int] | None = None

    # ----------------------------------------------------------- subclass API

    @abc.abstractmethod
    def add_routes(self, app: web.Application) -> None:
        """Register the input's handlers, usually wrapped with ``post_json``."""

    def parse(self, body: bytes) -> Any:
        """Decode a body; raise ``Rejected`` (400, ``json``) if it is not JSON."""
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise Rejected(400, "json", f"invalid JSON: {err}") from None

    def post_json(self, accept: Callable[[Any, Inlet], Awaitable[web.Response]]) -> Handler:
        """A handler for ``POST`` of JSON: auth, method, type, bounded body, parse,
        then ``await accept(document, inlet)``, which returns the answer or
        raises ``Rejected``."""

        async def handler(request: web.Request) -> web.StreamResponse:
            self.authorize(request)
            if request.method != "POST":
                raise Rejected(405, "method", "only POST is accepted", {"Allow": "POST"})
            self._check_content_type(request)
            with self._inflight.reservation() as held:
                body = await self._read_body(request, held)
                # A large body takes long to decode: on a thread, the event loop
                # (other inputs, /healthz) keeps getting its turns meanwhile.
                document = (
                    await asyncio.to_thread(self.parse, body)
                    if len(body) > LARGE_BODY_BYTES
                    else self.parse(body)
                )
                del body  # the document is what is kept while the batch is processed
                return await accept(document, self._active_inlet())

        return self.guarded(handler)

    def guarded(self, handler: Handler) -> Handler:
        """Count the request as in flight and turn ``Rejected`` into an answer."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            if self._stopping.is_set():
                # A new request on a kept-alive connection: send it elsewhere.
                response = self._refuse(request, stopping())
                response.force_close()
                return response
            self.in_flight += 1
            self._idle.clear()
            try:
                return await handler(request)
            except Rejected as err:
                return self._refuse(request, err)
            finally:
                self.in_flight -= 1
                if not self.in_flight:
                    self._idle.set()

        return wrapped

    def authorize(self, request: web.Request) -> None:
        """Check the bearer token, if one is configured (TLS did the certificates)."""
        if self._token is not None and not self._token.matches(request.headers.get("Authorization")):
            challenge = {"WWW-Authenticate": 'Bearer realm="eventd"'}
            raise Rejected(401, "unauthorized", "missing or wrong bearer token", challenge)

    # -------------------------------------------------------------- lifecycle

    async def run(self, inlet: Inlet) -> None:
        if self._stopping.is_set():
            return
        self._inlet = inlet
        self._started = True
        try:
            runner = await self._listen()
            try:
                await self._stopping.wait()
            finally:
                await self._drain(runner)
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        self._stopping.set()
        if self._started:
            await self._stopped.wait()

    def ready(self) -> bool:
        return self._ready

    # ------------------------------------------------------------- internals

    async def _not_found(self, _request: web.Request) -> web.Response:
        self.metrics.events_rejected.labels(self.name, "not_found").inc()
        return web.Response(status=404, text="not found\n")

    async def _listen(self) -> web.AppRunner:
        app = hardened_app()
        self.add_routes(app)
        app.router.add_route("*", "/{path:.*}", self._not_found)
        # Bodies are inflated by ``_read_body`` against the cap, not by aiohttp's
        # parser (``serve`` turns that off).  ``_drain`` has waited for handlers
        # already; what is left after that gets a short grace.  Requests are
        # logged by ``_refuse``; malformed ones aiohttp answers itself (400) are
        # counted instead of logging client bytes.  A busy port: ConfigError.
        runner, site = await serve(
            app,
            self.config.listen,
            name=self.name,
            key=self.config_key,
            limits=self._limits,
            metrics=self.metrics,
            ssl_context=self._ssl,
            on_refusal=_RefusalCounter(self.name, self.metrics),
        )
        host, port = site.address
        self.address = (host, port)
        self._ready = True
        self.metrics.source_up.labels(self.name).set(1)
        log.info(
            "http_input_listening",
            source=self.name,
            address=f"{host}:{port}",
            path=self.config.path,
            tls=self._ssl is not None,
            client_certificates=self._ssl is not None and self._ssl.verify_mode == ssl.CERT_REQUIRED,
            token=self._token is not None,
        )
        return runner

    async def _drain(self, runner: web.AppRunner) -> None:
        """Close the listener, let in-flight requests finish, then close the rest.

        aiohttp's own graceful shutdown stops reading from busy connections,
        so a request whose body is still arriving could never finish; hence
        the wait for ``in_flight`` to reach zero before ``cleanup``.
        """
        self._ready = False
        for site in list(runner.sites):
            await site.stop()
        log.info("http_input_stopping", source=self.name, in_flight=self.in_flight)
        try:
            await asyncio.wait_for(self._idle.wait(), DRAIN_SECONDS)
        except TimeoutError:
            log.warning("http_input_drain_timeout", source=self.name, in_flight=self.in_flight)
        await runner.cleanup()
        self.metrics.source_up.labels(self.name).set(0)

    def _active_inlet(self) -> Inlet:
        assert self._inlet is not None, "handlers run only inside run()"
        return self._inlet

    def _refuse(self, request: web.Request, err: Rejected) -> web.Response:
        if self._inlet is not None:
            self._inlet.rejected(self.name, err.reason)
        log.debug(
            "http_input_rejected",
            source=self.name,
            status=err.status,
            reason=err.reason,
            message=str(err),
            remote=request.remote,
        )
        # An unread rest of the body is discarded by aiohttp's lingering close
        # (bounded in time), so the client gets this answer instead of a reset.
        return web.Response(status=err.status, text=f"{err}\n", headers=err.headers)

    def _check_content_type(self, request: web.Request) -> None:
        declared = request.headers.get("Content-Type")
        if declared is None:
            return
        media = declared.partition(";")[0].strip().lower()
        if media not in self.content_types:
            raise Rejected(415, "content_type", f"unsupported content type {media[:64]!r}, expected JSON")

    async def _read_body(self, request: web.Request, held: _Reservation) -> bytes:
        limit = self.config.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            raise Rejected(413, "too_large", f"body of {length} bytes exceeds the limit of {limit}")
        if length is not None:
            held.grow(length)  # refuse before reading when it cannot fit anyway
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        sink: _Collector
        if encoding in _GZIP_ENCODINGS:
            sink = _Inflater(limit)
        elif encoding in _IDENTITY_ENCODINGS:
            sink = _Collector(limit)
        else:
            raise Rejected(415, "encoding", f"unsupported content encoding {encoding[:32]!r}")
        try:
            async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
                while chunk := await request.content.readany():
                    sink.feed(chunk)
                    held.grow(sink.size)
        except TimeoutError:
            raise Rejected(408, "timeout", "request body not received in time") from None
        return sink.result()


class _Collector:
    """Plain body: keep chunks while the total stays within ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.parts: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise Rejected(413, "too_large", f"body exceeds the limit of {self.limit} bytes")
        self.parts.append(chunk)

    def result(self) -> bytes:
        return b"".join(self.parts)


class _Inflater(_Collector):
    """Gzip body: the compressed bytes and the inflated bytes both obey ``limit``.

    Inflation is bounded per step (``max_length``), so a bomb is refused after
    at most ``limit`` + one step of output, whatever its ratio.  Concatenated
    gzip members are valid gzip and are read one after another.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.wire = 0
        self._gzip = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, chunk: bytes) -> None:
        self.wire += len(chunk)
        if self.wire > self.limit:
            raise Rejected(413, "too_large", f"compressed body exceeds the limit of {self.limit} bytes")
        data = chunk
        while data:
            try:
                out = self._gzip.decompress(data, min(_INFLATE_STEP, self.limit - self.size + 1))
            except zlib.error:
                raise Rejected(400, "gzip", "invalid gzip body") from None
            super().feed(out)
            if self._gzip.eof:
                data = self._gzip.unused_data
                if data:
                    self._gzip = zlib.decompressobj(16 + zlib.MAX_WBITS)
            else:
                data = self._gzip.unconsumed_tail

    def result(self) -> bytes:
        if not self._gzip.eof:
            raise Rejected(400, "gzip", "truncated gzip body")
        return super().result()
