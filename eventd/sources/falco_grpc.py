"""Falco alerts from Falco's legacy gRPC outputs API (Falco 0.24 to 0.43).

Falco 0.44 removed the API; this input exists for clusters still running an
older Falco and is never the only way in (the HTTP input is).  What it must
get right is what falco-exporter got wrong: a closed stream, a Falco restart
or an unreachable socket is never fatal.  The source reconnects forever,
with capped exponential backoff and full jitter so that many eventd
replicas do not hammer a restarting Falco in step.

Falco keeps one queue shared by all clients.  ``mode: sub`` keeps a
bidirectional stream open and writes an empty request every
``keepalive_seconds``, because Falco drains the queue only after each
request; ``mode: get`` calls ``get`` on that interval and reads until it
ends.  Every connection starts with a ``version`` call, which both proves
the server answers and tells the operator what they are talking to.

A Unix socket (Falco's default ``unix:///run/falco/falco.sock``) uses an
insecure channel; TCP needs mutual TLS, which Falco enforces, so a TCP
address without a client certificate is refused at start-up.

Alerts read from the stream wait in a small local queue and are handed to
the pipeline in batches of whatever has arrived meanwhile; while the
pipeline is full the local queue fills, reading stops and gRPC flow control
pushes back to Falco.  On ``stop`` reading stops and the queued alerts are
still handed over.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

import grpc
import structlog

from eventd.backoff import Backoff
from eventd.checks import client_tls_files
from eventd.config import ConfigError, FalcoGrpcConfig
from eventd.events.errors import DecodeError
from eventd.events.falco_grpc import response_event
from eventd.events.model import Event
from eventd.kafka_client import ssl_context
from eventd.metrics import Metrics
from eventd.proto import outputs_pb2, outputs_pb2_grpc, version_pb2, version_pb2_grpc
from eventd.sources.base import Batch, Inlet, Source

log = structlog.get_logger(__name__)

#: Alerts read but not yet handed over; beyond this, reading stops.
QUEUE_SIZE = 1024
#: Largest batch handed to the pipeline at once.
MAX_BATCH = 256
#: A server that does not answer ``version`` within this is treated as down.
VERSION_TIMEOUT_SECONDS = 10.0

_WAKE = object()


class FalcoGrpcSource(Source):
    """Subscribe to (or poll) one Falco's gRPC outputs service."""

    config_key = "sources.falco_grpc"

    def __init__(
        self, config: FalcoGrpcConfig, metrics: Metrics, *, rng: random.Random | None = None
    ) -> None:
        self.config = config
        self._metrics = metrics
        self._unix = config.address.startswith("unix:")
        if not self._unix and (config.tls is None or config.tls.cert is None or config.tls.key is None):
            raise ConfigError(
                f"{self.config_key}.tls",
                f"TCP address {config.address!r} needs tls.cert and tls.key: Falco's gRPC server "
                "requires mutual TLS on TCP (use unix:///path for its Unix socket)",
            )
        if self._unix and config.tls is not None:
            log.warning("falco_grpc_tls_ignored", address=config.address, reason="unix socket")
        if not self._unix:  # read at every connect; refused now rather than retried forever
            assert config.tls is not None  # checked just above
            client_tls_files(config.tls, f"{self.config_key}.tls")
            ssl_context(config.tls, key=f"{self.config_key}.tls")  # the PEM files load
        self._backoff = Backoff(config.backoff_initial_seconds, config.backoff_max_seconds, rng)
        self._stopping = asyncio.Event()
        self._producer: asyncio.Task[None] | None = None
        self._connected = False
        self._healthy = False
        self._received = 0
        self._rejected = 0

    # ---------------------------------------------------------------- Source

    async def run(self, inlet: Inlet) -> None:
        up = self._metrics.source_up.labels(self.name)
        reconnects = self._metrics.source_reconnects.labels(self.name)
        first = True
        try:
            while not self._stopping.is_set():
                if not first:
                    reconnects.inc()
                first = False
                reason = await self._session(inlet)
                if self._stopping.is_set():
                    break
                if self._healthy:
                    self._backoff.reset()
                delay = self._backoff.next_delay()
                log.warning(
                    "falco_grpc_disconnected",
                    address=self.config.address,
                    reason=reason,
                    alerts_received=self._received,
                    alerts_rejected=self._rejected,
                    retry_in_seconds=round(delay, 3),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            up.set(0)
        log.info("falco_grpc_stopped", address=self.config.address)

    async def stop(self) -> None:
        self._stopping.set()
        if self._producer is not None:
            self._producer.cancel()

    def ready(self) -> bool:
        return self._connected

    # ------------------------------------------------------------ connection

    async def _session(self, inlet: Inlet) -> str:
        """One connection, from connect to its end; returns why it ended."""
        self._healthy = False
        self._received = self._rejected = 0
        queue: asyncio.Queue[object] = asyncio.Queue(QUEUE_SIZE)
        producer = self._producer = asyncio.create_task(self._produce(queue))
        # Wakes the deliverer when the producer ends with nothing queued; if
        # the queue is full the deliverer notices the end when it is empty.
        producer.add_done_callback(lambda _: None if queue.full() else queue.put_nowait(_WAKE))
        try:
            await self._deliver(queue, producer, inlet)
        finally:
            producer.cancel()
            self._producer = None
        if producer.cancelled():
            return "stopped"
        error = producer.exception()
        if error is None:
            return "stream ended by server"
        if isinstance(error, grpc.aio.AioRpcError):
            return f"{error.code().name}: {error.details()}"
        return f"{type(error).__name__}: {error}"

    async def _produce(self, queue: asyncio.Queue[object]) -> None:
        """Connect, log the version, then read alerts into ``queue`` until the
        stream ends (returns) or fails (raises)."""
        up = self._metrics.source_up.labels(self.name)
        async with self._channel() as channel:
            info = await version_pb2_grpc.serviceStub(channel).version(
                version_pb2.request(), timeout=VERSION_TIMEOUT_SECONDS
            )
            log.info(
                "falco_grpc_connected",
                address=self.config.address,
                mode=self.config.mode,
                falco_version=info.version,
                engine_version=info.engine_version,
            )
            self._connected = True
            up.set(1)
            try:
                stub = outputs_pb2_grpc.serviceStub(channel)
                if self.config.mode == "sub":
                    await self._subscribe(stub, queue.put)
                else:
                    await self._poll(stub, queue.put)
            finally:
                self._connected = False
                up.set(0)

    def _channel(self) -> grpc.aio.Channel:
        if self._unix:
            return grpc.aio.insecure_channel(self.config.address)
        tls = self.config.tls
        assert tls is not None and tls.cert is not None and tls.key is not None  # checked in __init__
        # Read on every connect so that rotated certificates are picked up.
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.ca.read_bytes() if tls.ca else None,
            private_key=tls.key.read_bytes(),
            certificate_chain=tls.cert.read_bytes(),
        )
        return grpc.aio.secure_channel(self.config.address, credentials)

    async def _subscribe(
        self, stub: outputs_pb2_grpc.serviceStub, put: Callable[[object], Awaitable[None]]
    ) -> None:
        call = stub.sub()
        writer = asyncio.create_task(self._keepalive(call))
        try:
            async for msg in call:
                self._healthy = True
                await put(msg)
        finally:
            writer.cancel()
            call.cancel()

    async def _keepalive(self, call: grpc.aio.StreamStreamCall) -> None:
        """Ask for a drain now and every ``keepalive_seconds``; a write that
        succeeds after the first means the stream stayed up a full period."""
        writes = 0
        while True:
            try:
                await call.write(outputs_pb2.request())
            except Exception:
                # Usually the stream is already over.  Either way, without
                # requests Falco stops sending: end the call so that the
                # reader sees it end and the source reconnects.
                call.cancel()
                return
            writes += 1
            if writes > 1:
                self._healthy = True
            await asyncio.sleep(self.config.keepalive_seconds)

    async def _poll(
        self, stub: outputs_pb2_grpc.serviceStub, put: Callable[[object], Awaitable[None]]
    ) -> None:
        while True:
            async for msg in stub.get(outputs_pb2.request()):
                self._healthy = True
                await put(msg)
            self._healthy = True
            await asyncio.sleep(self.config.keepalive_seconds)

    # -------------------------------------------------------------- delivery

    async def _deliver(
        self, queue: asyncio.Queue[object], producer: asyncio.Task[None], inlet: Inlet
    ) -> None:
        """Hand queued alerts over until the producer has ended and the queue
        is empty; each batch is whatever arrived while the last one waited."""
        while True:
            if queue.empty():
                if producer.done():
                    return
                first = await queue.get()
            else:
                first = queue.get_nowait()
            pending = [first]
            while len(pending) < MAX_BATCH and not queue.empty():
                pending.append(queue.get_nowait())
            events = self._convert(pending, inlet)
            if events:
                await inlet.put(Batch(events, self.name))

    def _convert(self, messages: list[object], inlet: Inlet) -> list[Event]:
        events = []
        for msg in messages:
            if not isinstance(msg, outputs_pb2.response):
                continue  # the producer's end-of-stream wake-up
            try:
                events.append(response_event(msg))
            except DecodeError as err:
                self._rejected += 1
                inlet.rejected(self.name, err)
        self._received += len(events)
        return events
