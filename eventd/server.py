"""The operations endpoint: ``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` says the process is alive (the event loop answers): always
``200`` with ``{"status": "ok", "sinks": {...}, "sources": {...}}``, the
detail coming from the optional ``health`` callable.  ``/readyz``
says eventd can take input and hand it off durably: rules loaded, every
source accepting input, every *durable* sink accepting (best-effort sinks
are left out: an Alertmanager outage must not empty the Service; their
state is in ``/healthz``); Kubernetes stops sending webhook traffic to a
replica that is not ready.  ``/metrics`` is the Prometheus text format.

The listener is hardened like the HTTP inputs' (``eventd.httpserver``:
connection cap, header and idle timeouts, counted and rate-limited
refusals), because it is reachable by more than Prometheus and the kubelet
wherever it binds to a pod or node address.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST

from eventd.config import Listen, ServerConfig
from eventd.httpserver import Limits, ListenerLimits, RateLimitedLog, hardened_app, serve
from eventd.metrics import Metrics

log = structlog.get_logger(__name__)
#: The ``listener`` label of the ops server's metrics.
LISTENER = "server"


class OpsServer:
    """``limits`` is the ``server`` config section (its timeouts and cap);
    ``health`` returns the detail ``/healthz`` shows (per sink, per source)."""

    def __init__(
        self,
        listen: Listen,
        metrics: Metrics,
        readiness: Callable[[], dict[str, bool]],
        health: Callable[[], dict[str, Any]] | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.listen = listen
        self._metrics = metrics
        self._readiness = readiness
        self._health = health
        self._limits = ListenerLimits.of(limits or ServerConfig(), "server")
        self._runner: web.AppRunner | None = None
        self._log = RateLimitedLog()
        #: ``(host, port)`` actually bound, once started (port 0 picks one).
        self.address: tuple[str, int] | None = None
        app = hardened_app()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_page)
        self._app = app

    async def start(self) -> None:
        # A busy port is a ConfigError naming server.listen (raised by ``serve``,
        # which cleans up), a start-up error rather than a traceback.
        self._runner, site = await serve(
            self._app,
            self.listen,
            name=LISTENER,
            key="server",
            limits=self._limits,
            metrics=self._metrics,
            on_refusal=self._refused,
        )
        self.address = site.address

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        """Alive: always 200 (the kubelet restarts a pod whose liveness fails,
        which fixes no sink); the detail is for humans and dashboards."""
        detail: dict[str, Any] = {"status": "ok", "sinks": {}, "sources": {}}
        if self._health is not None:
            try:
                detail.update(self._health())
            except Exception as err:  # the detail must never make liveness fail
                detail["detail_error"] = type(err).__name__
            detail["status"] = "ok"
        return web.Response(body=orjson.dumps(detail, default=str), content_type="application/json")

    async def _readyz(self, _request: web.Request) -> web.Response:
        parts = self._readiness()
        ready = all(parts.values())
        lines = "".join(f"{name}: {'ok' if ok else 'not ready'}\n" for name, ok in sorted(parts.items()))
        return web.Response(text=lines, status=200 if ready else 503)

    async def _metrics_page(self, _request: web.Request) -> web.Response:
        body = self._metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _refused(self, record: logging.LogRecord) -> None:
        """aiohttp's report of a request it answered itself: malformed HTTP is
        counted; anything else is a bug, logged (rate-limited, no traceback)."""
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            self._metrics.listener_closed.labels(LISTENER, "bad_request").inc()
            return
        self._log("error", "ops_request_failed", LISTENER, error=type(exc).__name__ if exc else record.msg)
