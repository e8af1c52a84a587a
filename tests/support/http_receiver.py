"""A real HTTP receiver for sink tests: records requests, answers as told.

Runs an aiohttp server on a free loopback port.  Answers are planned in
order (``plan``); once the plan is used up every request gets ``default``.
An answer can be a status with headers (``429`` + ``Retry-After``), or a hang
(``hold`` seconds before answering, to outlast the client's timeout).  The
receiver counts simultaneous requests, so tests can check a sink's
concurrency limit.  ``sample_alert`` builds the alerts the sink tests send.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from eventd.alerts import Alert, alert_context
from eventd.events.model import K8S_AUDIT, Event
from eventd.events.timestamps import ns_to_clock, rfc3339_to_ns
from eventd.priority import Priority
from tests.support.builders import pod_create


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    #: Seconds to wait before answering (cut short when the receiver stops).
    hold: float = 0.0


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered (or was going to, for a hang)


class Receiver:
    def __init__(self, default: Answer | None = None) -> None:
        self.default = default or Answer()
        self.requests: list[Recorded] = []
        self.active = 0
        self.max_active = 0
        self._plan: deque[Answer] = deque()
        self._stopping = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def plan(self, *answers: Answer) -> None:
        """Answer the next requests with ``answers``, in order."""
        self._plan.extend(answers)

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> str:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Recorded]:
        """Wait until ``count`` requests have arrived; return them all."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)
        return self.requests

    async def _handle(self, request: web.Request) -> web.Response:
        answer = self._plan.popleft() if self._plan else self.default
        body = await request.read()
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            async with self._arrived:
                self.requests.append(
                    Recorded(request.method, request.path, dict(request.headers), body, answer.status)
                )
                self._arrived.notify_all()
            if answer.hold:
                try:
                    async with asyncio.timeout(answer.hold):
                        await self._stopping.wait()
                except TimeoutError:
                    pass
            return web.Response(status=answer.status, headers=answer.headers, body=answer.body)
        finally:
            self.active -= 1


@contextlib.asynccontextmanager
async def serve(
    default: Answer | None = None, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Receiver]:
    """A started receiver, stopped on exit."""
    receiver = Receiver(default)
    await receiver.start(ssl_context)
    try:
        yield receiver
    finally:
        await receiver.stop()


_serial = itertools.count(1)
T0 = rfc3339_to_ns("2026-11-29T10:00:00.123456789Z")


def sample_alert(
    rule: str = "Create privileged pod",
    priority: Priority = Priority.WARNING,
    *,
    source: str = "k8s_audit",
    tags: tuple[str, ...] = ("k8s", "container"),
    namespace: str = "payments",
    user: str = "alice@example.com",
    images: tuple[str, ...] = ("myregistry.io/team/api:1.4",),
    time_ns: int = T0,
    **context: Any,
) -> Alert:
    """An alert whose context comes from a real audit event (a pod create),
    with a cluster name as the pipeline adds it; ``context`` overrides keys."""
    event = Event(K8S_AUDIT, pod_create(*images, namespace=namespace, user=user, name="api-0"), "test")
    ctx = {**alert_context(event), "cluster": "prod-eu", **context}
    text = f"Pod created (user={user} ns={namespace} images={','.join(images)})"
    return Alert(
        time_ns=time_ns,
        rule=rule,
        priority=priority,
        source=source,
        output=f"{ns_to_clock(time_ns)}: {priority.label} {text}",
        output_fields={"ka.user.name": user, "ka.target.namespace": namespace, "evt.time": time_ns},
        tags=tags,
        hostname="eventd-0",
        uuid=str(uuid.UUID(int=next(_serial))),
        context=ctx,
    )
