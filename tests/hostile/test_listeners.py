"""Every listening socket is hardened the same way (issue 11, points 3 and 4).

The ops server (``/healthz``, ``/readyz``, ``/metrics``) and the HTTP inputs
share ``eventd.httpserver``: a connection cap, header and idle timeouts,
TLS handshake failures counted, and logs that stay small when clients (or
the descriptor limit) misbehave.  The HTTP inputs also bound the bytes of
bodies in flight across requests.

The flood tests run a real ``eventd run`` with a lowered descriptor limit;
the protocol tests run the real sources and ops server in-process on port 0.
Assertions are on status codes, counters and byte sizes, never on timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from eventd.config import AuditWebhookConfig, ConfigError, FalcoHttpConfig, Listen, ServerConfig
from eventd.metrics import Metrics
from eventd.server import OpsServer
from eventd.sources.audit_webhook import AuditWebhookSource
from eventd.sources.falco_http import FalcoHttpSource
from eventd.sources.http_input import HttpInput
from tests.hostile.test_endpoints import RecordingInlet, event_list
from tests.support.builders import audit_event, pod
from tests.support.daemon_process import EventdProcess, free_port
from tests.support.tls_certs import make_tls_files
from tests.test_deploy_manifests import OPS_PORT, OVERLAYS, containers, overlay, policies_for, the_workload

pytestmark = pytest.mark.timeout(120)

KiB = 1024
MiB = 1024 * KiB
#: The descriptor limit the flooded daemon runs with.
NOFILE = 256
#: Idle connections opened against it: more than it has descriptors.
FLOOD = 300
#: What eventd may write to stderr during a flood: a few rate-limited lines,
#: not a line (let alone a traceback) per refused connection or accept().
STDERR_BUDGET = 64 * KiB
JSON = {"Content-Type": "application/json"}


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` with ``labels`` in an exposition."""
    want = {f'{k}="{v}"' for k, v in labels.items()}
    total = 0.0
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == name or series.startswith(name + "{"):
            parts = set(series[len(name) :].strip("{}").split(",")) if "{" in series else set()
            if want <= parts:
                total += float(value)
    return total


# ------------------------------------------------- a real daemon, few descriptors


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


class LowLimitDaemon(EventdProcess):
    """``eventd run`` with ``RLIMIT_NOFILE`` = ``NOFILE``."""

    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        original = subprocess.Popen

        def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
            return original(*args, preexec_fn=_low_nofile, **kwargs)

        subprocess.Popen = popen  # type: ignore[misc,assignment]
        try:
            super().__init__(tmp, config)
        finally:
            subprocess.Popen = original  # type: ignore[misc]
        self.ops_port = int(config["server"]["listen"].rpartition(":")[2])


def open_idle(port: int, count: int) -> tuple[list[socket.socket], int]:
    """``count`` connections that never send a byte, and how many connected
    (a full accept queue drops some SYNs: their ``connect`` times out)."""
    socks, connected = [], 0
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(2)
        with contextlib.suppress(OSError):
            sock.connect(("127.0.0.1", port))
            connected += 1
        socks.append(sock)
    return socks, connected


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def answers(url: str) -> bool:
    with contextlib.suppress(OSError, ValueError):
        return get(url, timeout=2)[0] == 200
    return False


def test_idle_connections_beyond_the_descriptor_limit_are_refused_not_logged(tmp_path: Path) -> None:
    webhook_port = free_port()
    daemon = LowLimitDaemon(
        tmp_path,
        {
            "server": {
                "listen": f"127.0.0.1:{free_port()}",
                "header_timeout_seconds": 1,
                "idle_timeout_seconds": 1,
            },
            "sources": {"k8s_audit_webhook": {"listen": f"127.0.0.1:{webhook_port}"}},
            "sinks": {"stdout": {}},
        },
    )
    flood: list[socket.socket] = []
    try:
        daemon.wait_ready()
        flood, connected = open_idle(daemon.ops_port, FLOOD)
        assert connected > NOFILE
        # While the flood holds its sockets: the webhook still takes a batch.
        marker = uuid.uuid4().hex
        request = urllib.request.Request(
            f"http://127.0.0.1:{webhook_port}/k8s-audit",
            data=event_list(audit_event(request=pod(f"evil.example.com/{marker}:1"), auditID=marker)),
            headers=JSON,
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200
        # The idle connections are closed by the idle timeout: /healthz answers again.
        daemon.wait_for(lambda: answers(daemon.url("/healthz")), timeout=15, what="/healthz")

        def closed(reason: str) -> float:
            text = daemon.metrics()
            return metric(text, "eventd_listener_closed_total", listener="server", reason=reason)

        # /healthz can answer while flood connections still sit in the kernel's
        # accept queue: each is closed (refused or timed out) once accepted.
        daemon.wait_for(
            lambda: closed("capacity") + closed("idle_timeout") >= connected,
            timeout=30,
            what="every flood connection closed",
        )
        assert closed("capacity") > 0 and closed("idle_timeout") > 0
        assert daemon.proc.poll() is None
    finally:
        for sock in flood:
            sock.close()
        daemon.kill()
    assert daemon.stderr_path.stat().st_size < STDERR_BUDGET, daemon.stderr()[-3000:]


_ACCEPT_ERRORS_SCRIPT = """
import asyncio, os, resource, sys
from eventd.config import Listen
from eventd.logs import configure_logging
from eventd.metrics import Metrics
from eventd.server import OpsServer

async def main():
    configure_logging("info")
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
    metrics = Metrics()
    server = OpsServer(Listen("127.0.0.1", 0), metrics, lambda: {})
    await server.start()
    print(server.address[1], flush=True)
    fillers = []
    while True:  # what sinks, spools and files could hold: every descriptor left
        try:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    await asyncio.sleep(float(sys.argv[1]))  # the test connects meanwhile
    for fd in fillers:
        os.close(fd)
    sys.stdout.write(metrics.exposition().decode())

asyncio.run(main())
"""


def test_accept_failures_at_the_descriptor_limit_are_counted_and_rate_limited() -> None:
    """asyncio's accept loop reports every failed ``accept()`` (once per second
    per listener, with a traceback): eventd counts them and logs a summary."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _ACCEPT_ERRORS_SCRIPT, "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    waiting, _ = open_idle(port, 20)  # in the backlog: accept() fails with EMFILE
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        for sock in waiting:
            sock.close()
    assert proc.returncode == 0, err.decode()[-2000:]
    failures = metric(out.decode(), "eventd_listener_accept_errors_total", listener="server", reason="EMFILE")
    assert failures >= 2  # one per second while the limit is reached
    lines = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
    assert [line["event"] for line in lines] == ["listener_accept_failed"], err.decode()[-2000:]
    assert len(err) < 2 * KiB


# ----------------------------------------------------- in-process: sources, ops


@contextlib.asynccontextmanager
async def running(source: HttpInput, inlet: RecordingInlet | None = None) -> AsyncIterator[int]:
    task = asyncio.create_task(source.run(inlet or RecordingInlet()))
    async with asyncio.timeout(10):
        while not source.ready():
            await asyncio.sleep(0.01)
    assert source.address is not None
    try:
        yield source.address[1]
    finally:
        await source.stop()
        await asyncio.wait_for(task, 20)


@contextlib.asynccontextmanager
async def ops_server(metrics: Metrics, **settings: Any) -> AsyncIterator[OpsServer]:
    server = OpsServer(
        Listen("127.0.0.1", 0),
        metrics,
        lambda: {"rules": True},
        health=settings.pop("health", None),
        limits=ServerConfig(**settings),
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def raw_exchange(port: int, data: bytes, wait: float = 10.0) -> bytes:
    """Send ``data``; return everything until the server closes (or ``wait``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        async with asyncio.timeout(wait):
            return await reader.read()
    finally:
        writer.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("value", [b"Bearer \xff\xfe", "Bearer jeton-é".encode(), b"Bearer \xc3\x28"])
async def test_non_ascii_authorization_is_401(tmp_path: Path, value: bytes) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    inlet = RecordingInlet()
    source = AuditWebhookSource(
        AuditWebhookConfig(listen=Listen("127.0.0.1", 0), token_file=token), Metrics()
    )
    async with running(source, inlet) as port:
        body = event_list(audit_event())
        head = b"POST /k8s-audit HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: " + value
        head += b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        answer = await raw_exchange(port, head + body)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
    assert inlet.rejects["unauthorized"] == 1 and not inlet.batches


@pytest.mark.asyncio
async def test_tls_handshake_failures_are_counted_by_reason(tmp_path: Path) -> None:
    pki = make_tls_files(tmp_path / "pki")
    metrics = Metrics()
    config = FalcoHttpConfig(listen=Listen("127.0.0.1", 0), tls=pki.server_tls(client_certificates=True))
    async with running(FalcoHttpSource(config, metrics)) as port:
        # Plain HTTP to the TLS port.
        await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # TLS without the client certificate the listener requires.
        with contextlib.suppress(OSError):
            ctx = pki.client_context(certificate=False)
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await reader.read() == b""
            writer.close()
        # And a client that trusts the listener: served.
        url = f"https://127.0.0.1:{port}/healthz"
        async with aiohttp.ClientSession() as session, session.get(url, ssl=pki.client_context()) as resp:
            assert resp.status == 200
        text = metrics.exposition().decode()
    name = "eventd_tls_handshake_failures_total"
    assert metric(text, name, listener="falco_http", reason="protocol") == 1
    assert metric(text, name, listener="falco_http", reason="no_certificate") == 1
    assert metric(text, "eventd_listener_closed_total", listener="falco_http", reason="tls_handshake") == 2


async def drip_head(port: int, head: bytes, interval: float = 0.1) -> bytes:
    """Send a request head one byte per ``interval``, never finishing it;
    return what the server sent before closing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def feed() -> None:
        with contextlib.suppress(OSError):
            for i in range(len(head)):
                writer.write(head[i : i + 1])
                await writer.drain()
                await asyncio.sleep(interval)

    feeder = asyncio.create_task(feed())
    try:
        async with asyncio.timeout(20):
            return await reader.read()
    finally:
        feeder.cancel()
        writer.close()


@pytest.mark.asyncio
async def test_ops_server_cuts_slow_headers_and_idle_connections_and_counts_them() -> None:
    metrics = Metrics()
    async with ops_server(metrics, header_timeout_seconds=0.5, idle_timeout_seconds=0.5) as server:
        assert server.address is not None
        port = server.address[1]
        answer = await drip_head(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: v" * 100)
        assert answer == b""
        assert await raw_exchange(port, b"") == b""  # connects, never sends
        url = f"http://127.0.0.1:{port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            text = await resp.text()
    closed = "eventd_listener_closed_total"
    assert metric(text, closed, listener="server", reason="header_timeout") == 1
    assert metric(text, closed, listener="server", reason="idle_timeout") == 1


@pytest.mark.asyncio
async def test_ops_server_closes_connections_beyond_its_cap() -> None:
    metrics = Metrics()
    async with ops_server(metrics, max_connections=4) as server:
        assert server.address is not None
        port = server.address[1]
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]
        refused = 0
        for reader, _writer in held:
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(0.5):
                    refused += await reader.read() == b""
        for _reader, writer in held:
            writer.close()
    closed = metric(metrics.exposition().decode(), "eventd_listener_closed_total", reason="capacity")
    assert refused == closed == 6


@pytest.mark.asyncio
async def test_healthz_is_ok_with_the_detail_as_json() -> None:
    detail = {"sinks": {"stdout": {"healthy": True}}, "sources": {"falco_http": {"ready": False}}}
    async with ops_server(Metrics(), health=lambda: detail) as server, aiohttp.ClientSession() as session:
        assert server.address is not None
        async with session.get(f"http://127.0.0.1:{server.address[1]}/healthz") as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            assert await resp.json() == {"status": "ok", **detail}


# --------------------------------------------------------- bytes in flight (11.3)


def _held_request(port: int, body_size: int) -> socket.socket:
    """A POST whose head and half its body are sent: its bytes are in flight."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /k8s-audit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % body_size
    )
    sock.sendall(b" " * (body_size // 2))
    return sock


def _status(sock: socket.socket) -> tuple[int, bytes]:
    sock.settimeout(20)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]), data


@pytest.mark.asyncio
async def test_bodies_past_max_inflight_bytes_get_503_with_retry_after() -> None:
    inlet = RecordingInlet()
    config = AuditWebhookConfig(
        listen=Listen("127.0.0.1", 0), max_body_bytes=1 * MiB, max_inflight_bytes=2 * MiB
    )
    bodies = [event_list(audit_event()) for _ in range(3)]
    size = MiB - 1024
    async with running(AuditWebhookSource(config, Metrics()), inlet) as port:

        def scenario() -> list[tuple[int, bytes]]:
            first, second = _held_request(port, size), _held_request(port, size)
            third = _held_request(port, size)  # 3 x ~1 MiB > 2 MiB: no room
            answers = [_status(third)]
            for sock, body in zip((first, second), bodies, strict=False):  # the two that fit: accepted
                sock.sendall(b" " * (size - size // 2 - len(body)) + body)
                answers.append(_status(sock))
            for sock in (first, second, third):
                sock.close()
            return answers

        answers = await asyncio.to_thread(scenario)
        # The bytes were given back: the next body fits again.
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/k8s-audit"
            async with session.post(url, data=bodies[2], headers=JSON) as resp:
                assert resp.status == 200
    (refused, refused_head), *accepted = answers
    assert refused == 503 and b"\r\nRetry-After: 1\r\n" in refused_head
    assert [status for status, _ in accepted] == [200, 200]
    assert inlet.rejects["inflight_bytes"] == 1
    assert len(inlet.batches) == 3


def test_max_inflight_bytes_below_max_body_bytes_is_refused() -> None:
    config = AuditWebhookConfig(
        listen=Listen("127.0.0.1", 0), max_body_bytes=2 * MiB, max_inflight_bytes=1 * MiB
    )
    with pytest.raises(ConfigError, match=r"sources\.k8s_audit_webhook\.max_inflight_bytes"):
        AuditWebhookSource(config, Metrics())


# ------------------------------------------------------------------ the overlays


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_ops_port_on_0_0_0_0_is_the_pods_own(name: str) -> None:
    """The overlays bind the ops port to 0.0.0.0, which is safe only inside a
    pod's network namespace (its IP and loopback): no host network, no host
    port, and a NetworkPolicy that admits 9376 from named peers only."""
    objs = overlay(name)
    workload, pod_spec = the_workload(name)
    assert not pod_spec.get("hostNetwork")
    assert not [p for c in containers(pod_spec) for p in c.get("ports", []) if p.get("hostPort")]
    labels = workload["spec"]["template"]["metadata"]["labels"]
    rules = [r for p in policies_for(objs, labels) for r in p["spec"].get("ingress", [])]
    ops_rules = [r for r in rules if any(p["port"] == OPS_PORT for p in r["ports"])]
    assert ops_rules and all(r.get("from") for r in ops_rules)
