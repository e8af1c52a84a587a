"""A fake Falco gRPC server for tests: a real ``grpc.aio`` server built from
eventd's generated stubs, with the semantics of Falco's (0.24 to 0.43):

* one queue shared by every client (each alert goes to exactly one);
* ``get`` sends everything queued, then ends with OK;
* ``sub`` sends everything queued after each request the client writes;
* ``version`` answers with a fixed version.

It listens on a Unix socket (insecure, like Falco) or on TCP with the
credentials given (mTLS in the tests), and can be stopped and started again
on the same address while the queue survives, so tests can restart "Falco"
under a connected client.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterator

import grpc

from eventd.proto import outputs_pb2, outputs_pb2_grpc, version_pb2, version_pb2_grpc

VERSION = "0.43.0"
ENGINE_VERSION = "0.47.0"


def make_response(
    rule: str = "Terminal shell in container",
    priority: int = 2,
    *,
    seconds: int = 1685022245,
    nanos: int = 478445995,
    source: str = "syscall",
    source_deprecated: int = 0,
    output_fields: dict[str, str] | None = None,
    tags: tuple[str, ...] = ("container", "shell"),
    hostname: str = "node-1",
) -> outputs_pb2.response:
    """One alert as Falco would send it (``output_fields`` already stringified)."""
    msg = outputs_pb2.response(
        priority=priority,
        source_deprecated=source_deprecated,
        rule=rule,
        output=f"13:44:05.478445995: Critical {rule}",
        output_fields=output_fields if output_fields is not None else {"proc.name": "sh"},
        hostname=hostname,
        tags=list(tags),
        source=source,
    )
    msg.time.seconds = seconds
    msg.time.nanos = nanos
    return msg


class FakeFalco:
    """Falco's outputs and version services on ``address``.

    ``address`` is ``unix:///path`` or ``host:port``; with port 0 the port
    chosen at the first ``start`` is kept for restarts.
    """

    def __init__(self, address: str, credentials: grpc.ServerCredentials | None = None) -> None:
        self.address = address
        self.credentials = credentials
        self.queue: deque[outputs_pb2.response] = deque()
        self.sub_requests = 0
        self.get_calls = 0
        self.version_calls = 0
        self.active_subs = 0
        self._server: grpc.aio.Server | None = None

    def publish(self, *alerts: outputs_pb2.response) -> None:
        self.queue.extend(alerts)

    def drain(self) -> Iterator[outputs_pb2.response]:
        # Pop one at a time like Falco: an alert taken by a client that then
        # disconnects is gone.
        while self.queue:
            yield self.queue.popleft()

    async def start(self) -> None:
        server = grpc.aio.server()
        outputs_pb2_grpc.add_serviceServicer_to_server(_Outputs(self), server)
        version_pb2_grpc.add_serviceServicer_to_server(_Version(self), server)
        if self.credentials is None:
            port = server.add_insecure_port(self.address)
        else:
            port = server.add_secure_port(self.address, self.credentials)
        if not self.address.startswith("unix:"):
            host = self.address.rpartition(":")[0]
            self.address = f"{host}:{port}"
        await server.start()
        self._server = server

    async def stop(self) -> None:
        """Stop at once: open streams are cancelled, like a crashing Falco."""
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()


class _Outputs(outputs_pb2_grpc.serviceServicer):
    def __init__(self, falco: FakeFalco) -> None:
        self.falco = falco

    async def sub(
        self, request_iterator: AsyncIterator[outputs_pb2.request], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[outputs_pb2.response]:
        self.falco.active_subs += 1
        try:
            async for _request in request_iterator:
                self.falco.sub_requests += 1
                for alert in self.falco.drain():
                    yield alert
        finally:
            self.falco.active_subs -= 1

    async def get(
        self, request: outputs_pb2.request, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[outputs_pb2.response]:
        self.falco.get_calls += 1
        for alert in self.falco.drain():
            yield alert


class _Version(version_pb2_grpc.serviceServicer):
    def __init__(self, falco: FakeFalco) -> None:
        self.falco = falco

    async def version(
        self, request: version_pb2.request, context: grpc.aio.ServicerContext
    ) -> version_pb2.response:
        self.falco.version_calls += 1
        return version_pb2.response(
            version=VERSION, major=0, minor=43, patch=0, engine_version=ENGINE_VERSION, engine_minor=47
        )
