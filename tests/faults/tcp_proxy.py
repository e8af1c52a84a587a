"""A loopback TCP proxy that injects network faults on command.

Real network faults (``tc netem``, iptables) need privileges and kernel
modules that CI may not have, so the fault tests put this proxy between a
client and a server on loopback instead.  It relays bytes unchanged (it is
transparent to any protocol: Kafka, gRPC, HTTP) and can, at any time:

* add ``latency`` to every chunk, in each direction, without limiting
  throughput (chunks are pipelined: a chunk read at ``t`` is written at
  ``t + latency``, while later chunks are already being read);
* throttle each direction of each connection to ``bytes_per_second``;
* ``cut()`` every open connection (both sides reset at once, like a
  crashed middlebox), once or periodically (``cut_every``);
* ``refuse`` new connections (accepted and reset at once, like a port with
  nothing behind it).

``TcpProxy`` is for asyncio code; ``ProxyThread`` runs one on an event loop
of its own so that synchronous test code (blocking HTTP posts, polling a
subprocess) can drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

#: Largest chunk relayed at once (smaller under throttling, for smoothness).
CHUNK_BYTES = 64 * 1024
THROTTLED_CHUNK_BYTES = 8 * 1024

T = TypeVar("T")


@dataclass
class Faults:
    """The faults applied to traffic; read per chunk, so changes apply at once."""

    latency: float = 0.0
    bytes_per_second: float | None = None
    refuse: bool = False


@dataclass
class ProxyStats:
    accepted: int = 0
    refused: int = 0
    cut: int = 0
    bytes_up: int = 0  # client -> upstream
    bytes_down: int = 0  # upstream -> client


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    """Relays ``host:port`` (port 0 picks one) to ``upstream_host:upstream_port``."""

    def __init__(
        self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = port
        self.faults = Faults()
        self.stats = ProxyStats()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._cutter: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.stop_cutting()
        if self._server is not None:
            self._server.close()
            self._server = None
        self.cut()

    def cut(self) -> int:
        """Reset every open connection; how many there were."""
        connections, self._connections = self._connections, set()
        for connection in connections:
            connection.abort()
        self.stats.cut += len(connections)
        return len(connections)

    def cut_every(self, interval: float) -> None:
        """Cut all connections every ``interval`` seconds until ``stop_cutting``."""
        self.stop_cutting()
        self._cutter = asyncio.get_running_loop().create_task(self._cut_periodically(interval))

    def stop_cutting(self) -> None:
        if self._cutter is not None:
            self._cutter.cancel()
            self._cutter = None

    async def _cut_periodically(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.cut()

    async def _accept(self, reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        if self.faults.refuse:
            self.stats.refused += 1
            client.transport.abort()
            return
        try:
            up_reader, upstream = await asyncio.open_connection(*self.upstream)
        except OSError:
            client.transport.abort()
            return
        self.stats.accepted += 1
        connection = _Connection(client, upstream)
        self._connections.add(connection)
        connection.tasks = [
            asyncio.ensure_future(self._relay(reader, upstream, "bytes_up")),
            asyncio.ensure_future(self._relay(up_reader, client, "bytes_down")),
        ]
        await asyncio.gather(*connection.tasks, return_exceptions=True)
        self._connections.discard(connection)
        for writer in (client, upstream):
            writer.transport.abort()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: str) -> None:
        """One direction: a reader task timestamps chunks, this task writes them
        when their latency has passed (so latency does not limit throughput)."""
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def read() -> None:
            data = b"x"
            while data:
                size = CHUNK_BYTES if self.faults.bytes_per_second is None else THROTTLED_CHUNK_BYTES
                try:
                    data = await reader.read(size)
                except (ConnectionError, OSError):
                    data = b""  # a reset reads as the end of the stream
                await chunks.put((loop.time() + self.faults.latency, data))

        reading = asyncio.ensure_future(read())
        try:
            while True:
                due, data = await chunks.get()
                if (delay := due - loop.time()) > 0:
                    await asyncio.sleep(delay)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
                setattr(self.stats, counter, getattr(self.stats, counter) + len(data))
                if (rate := self.faults.bytes_per_second) is not None:
                    await asyncio.sleep(len(data) / rate)
        except (ConnectionError, OSError):
            return
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await reading


class ProxyThread:
    """A ``TcpProxy`` on its own event loop in a daemon thread; a context manager.

    Every method is safe to call from the test's thread.
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.proxy = TcpProxy(upstream_host, upstream_port, host=host, port=port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)

    def __enter__(self) -> ProxyThread:
        self._thread.start()
        self._call(self.proxy.start)
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self.proxy.stop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    @property
    def address(self) -> str:
        return self.proxy.address

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def stats(self) -> ProxyStats:
        return self.proxy.stats

    def set_faults(self, **changes: Any) -> None:
        """Change ``Faults`` fields (``latency``, ``bytes_per_second``, ``refuse``)."""

        async def apply() -> None:
            for name, value in changes.items():
                if not hasattr(self.proxy.faults, name):
                    raise AttributeError(f"unknown fault {name!r}")
                setattr(self.proxy.faults, name, value)

        self._call(apply)

    def clear_faults(self) -> None:
        async def clear() -> None:
            self.proxy.faults = Faults()
            self.proxy.stop_cutting()

        self._call(clear)

    def cut(self) -> int:
        async def cut() -> int:
            return self.proxy.cut()

        return self._call(cut)

    def cut_every(self, interval: float) -> None:
        async def start() -> None:
            self.proxy.cut_every(interval)

        self._call(start)

    def stop_cutting(self) -> None:
        async def stop() -> None:
            self.proxy.stop_cutting()

        self._call(stop)

    def _call(self, make: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
        async def run() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)
