"""The operations endpoint: ``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` says the process is alive (the event loop answers).  ``/readyz``
says eventd is doing its job: rules loaded, every source accepting input,
every sink healthy; Kubernetes stops sending webhook traffic to a replica
that is not ready.  ``/metrics`` is the Prometheus text format.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from eventd.config import Listen
from eventd.metrics import Metrics


class OpsServer:
    def __init__(self, listen: Listen, metrics: Metrics, readiness: Callable[[], dict[str, bool]]) -> None:
        self.listen = listen
        self._metrics = metrics
        self._readiness = readiness
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_page)
        self._app = app

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.listen.host, self.listen.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        parts = self._readiness()
        ready = all(parts.values())
        lines = "".join(f"{name}: {'ok' if ok else 'not ready'}\n" for name, ok in sorted(parts.items()))
        return web.Response(text=lines, status=200 if ready else 503)

    async def _metrics_page(self, _request: web.Request) -> web.Response:
        body = self._metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
