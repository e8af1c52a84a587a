"""Hostile clients against a real ``eventd run`` (and the real HTTP sources).

One daemon serves the audit webhook and the Falco HTTP input for the whole
module.  Every attack ends the same way: ``/healthz`` answers, a valid audit
batch still raises its alert, a valid Falco alert is still forwarded, and
``eventd_events_rejected_total`` counted the attack with the expected
reason.  Attacks that could bloat memory also check the daemon's peak RSS
(``VmHWM``) grew far less than what was sent.

Raw sockets are used where an HTTP client would refuse to misbehave (bodies
that never end, one byte per tick, broken framing).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from eventd.config import AuditWebhookConfig, Listen
from eventd.events.errors import DecodeError
from eventd.metrics import Metrics
from eventd.sources import http_input
from eventd.sources.audit_webhook import AuditWebhookSource
from eventd.sources.base import Batch
from tests.support.builders import audit_event, falco_alert, lease_renewal, pod
from tests.support.daemon_process import EventdProcess, free_port

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
#: The daemon may hold one capped body plus buffers, never what was sent.
RSS_GROWTH_LIMIT = 50 * MiB
WEBHOOK = "k8s_audit_webhook"
FALCO = "falco_http"
JSON = {"Content-Type": "application/json"}


class Daemon:
    """The running daemon plus the addresses of its inputs."""

    def __init__(self, proc: EventdProcess, webhook_port: int, falco_port: int) -> None:
        self.proc = proc
        self.webhook_port = webhook_port
        self.falco_port = falco_port
        self.webhook = f"http://127.0.0.1:{webhook_port}/k8s-audit"
        self.falco = f"http://127.0.0.1:{falco_port}/"

    def rejected(self, source: str, reason: str | None = None) -> float:
        labels = {"source": source} if reason is None else {"source": source, "reason": reason}
        return self.proc.metric("eventd_events_rejected_total", **labels)

    def peak_rss(self) -> int:
        """Peak resident memory of the daemon so far, in bytes."""
        for line in Path(f"/proc/{self.proc.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    webhook_port, falco_port = free_port(), free_port()
    proc = EventdProcess(
        tmp_path_factory.mktemp("eventd"),
        {
            "rule_matching": "all",
            "sources": {
                WEBHOOK: {"listen": f"127.0.0.1:{webhook_port}"},
                FALCO: {"listen": f"127.0.0.1:{falco_port}"},
            },
            "sinks": {"stdout": {}},
        },
    )
    try:
        proc.wait_ready()
        yield Daemon(proc, webhook_port, falco_port)
    finally:
        proc.kill()


# ------------------------------------------------------------------- helpers


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers=JSON if headers is None else headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def event_list(*events: dict[str, Any]) -> bytes:
    return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": list(events)})


def assert_still_serving(daemon: Daemon) -> None:
    """Alive, and both inputs still turn valid input into alerts."""
    with urllib.request.urlopen(daemon.proc.url("/healthz"), timeout=10) as resp:
        assert resp.status == 200
    marker = uuid.uuid4().hex
    status, _ = post(
        daemon.webhook, event_list(audit_event(request=pod(f"evil.example.com/{marker}:1"), auditID=marker))
    )
    assert status == 200
    alert = dict(falco_alert(), rule=f"still forwarded {marker}")
    assert post(daemon.falco, orjson.dumps(alert))[0] == 200
    daemon.proc.wait_for(
        lambda: (
            any(a.get("eventd", {}).get("audit_id") == marker for a in daemon.proc.alerts)
            and any(a.get("rule") == alert["rule"] for a in daemon.proc.alerts)
        ),
        what="alerts after the attack",
    )
    assert daemon.proc.proc.poll() is None


def read_status(sock: socket.socket, timeout: float = 30.0) -> int | None:
    """The status code of the answer on ``sock``, or None if it closed first."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionError):
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else None


def send_streaming(port: int, head: bytes, chunks: Iterator[bytes]) -> int | None:
    """Send ``head`` then ``chunks`` from a thread while waiting for the answer.

    The sender stops when the server closes; the answer may come long before
    the body is complete (that is the point).
    """
    sock = socket.create_connection(("127.0.0.1", port))

    def sender() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(head)
            for chunk in chunks:
                sock.sendall(chunk)

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    try:
        return read_status(sock)
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        thread.join(timeout=30)


def chunked(total: int, size: int = MiB) -> Iterator[bytes]:
    """``total`` bytes of JSON-looking filler in HTTP chunked framing."""
    piece = b" " * size
    for _ in range(total // size):
        yield b"%x\r\n" % size + piece + b"\r\n"
    yield b"0\r\n\r\n"


# ------------------------------------------------------------------- bodies


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_100_mb_body_is_refused_without_being_held(daemon: Daemon, framing: str) -> None:
    before, peak = daemon.rejected(WEBHOOK, "too_large"), daemon.peak_rss()
    if framing == "content-length":
        head = b"POST /k8s-audit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += b"Content-Length: %d\r\n\r\n" % (100 * MiB)
        body = (b" " * MiB for _ in range(100))
    else:
        head = b"POST /k8s-audit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = chunked(100 * MiB)
    assert send_streaming(daemon.webhook_port, head, body) == 413
    daemon.proc.wait_for(lambda: daemon.rejected(WEBHOOK, "too_large") == before + 1, what="too_large")
    assert daemon.peak_rss() - peak < RSS_GROWTH_LIMIT
    assert_still_serving(daemon)


def test_falco_input_cuts_a_streamed_body_at_its_1_mib_limit(daemon: Daemon) -> None:
    before, peak = daemon.rejected(FALCO, "too_large"), daemon.peak_rss()
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert send_streaming(daemon.falco_port, head, chunked(100 * MiB)) == 413
    daemon.proc.wait_for(lambda: daemon.rejected(FALCO, "too_large") == before + 1, what="too_large")
    assert daemon.peak_rss() - peak < RSS_GROWTH_LIMIT
    assert_still_serving(daemon)


def _gzip_bombs() -> list[bytes]:
    """1 GiB of zeros as 64 gzip members (~1 MB on the wire), and 100 MiB in one member."""
    member = gzip.compress(b"\0" * (16 * MiB), 9)
    one = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    single = one.compress(b"\0" * (100 * MiB)) + one.flush()
    return [member * 64, single]


def test_gzip_bombs_are_refused_without_inflating(daemon: Daemon) -> None:
    headers = {**JSON, "Content-Encoding": "gzip"}
    for bomb in _gzip_bombs():
        before, peak = daemon.rejected(WEBHOOK, "too_large"), daemon.peak_rss()
        assert len(bomb) < 12 * MiB  # small on the wire: only the inflated size is over the cap
        assert post(daemon.webhook, bomb, headers)[0] == 413
        daemon.proc.wait_for(
            lambda b=before: daemon.rejected(WEBHOOK, "too_large") == b + 1, what="too_large"
        )
        assert daemon.peak_rss() - peak < RSS_GROWTH_LIMIT
    before = daemon.rejected(FALCO, "too_large")
    assert post(daemon.falco, _gzip_bombs()[0], headers)[0] == 413
    daemon.proc.wait_for(lambda: daemon.rejected(FALCO, "too_large") == before + 1, what="falco too_large")
    assert_still_serving(daemon)


_valid = event_list(audit_event(request=pod("evil.example.com/app:1")))

HOSTILE_JSON = {
    "invalid-utf8": _valid.replace(b"kubectl", b"kube\xff\xfectl"),
    "encoded-surrogate": _valid.replace(b"kubectl", b"\xed\xa0\x80"),
    "lone-surrogate-escape": _valid.replace(b'"web"', b'"\\ud800"'),
    "deep-10000": b"[" * 10_000 + b"]" * 10_000,
    "deep-in-event": _valid[:-2] + b',"x":' + b"[" * 10_000 + b"]" * 10_000 + b"}]}",
    "nan": _valid.replace(b"201", b"NaN"),
    "infinity": _valid.replace(b"201", b"-Infinity"),
    "1e400": _valid.replace(b"201", b"1e400"),
    "bom": b"\xef\xbb\xbf" + _valid,
    "empty": b"",
    "truncated": _valid[:-3],
}


@pytest.mark.parametrize("body", HOSTILE_JSON.values(), ids=HOSTILE_JSON.keys())
def test_malformed_json_is_400_json_on_both_inputs(daemon: Daemon, body: bytes) -> None:
    for url, source in ((daemon.webhook, WEBHOOK), (daemon.falco, FALCO)):
        before = daemon.rejected(source, "json")
        status, text = post(url, body)
        assert status == 400 and b"invalid JSON" in text
        daemon.proc.wait_for(lambda s=source, b=before: daemon.rejected(s, "json") == b + 1, what="json")
    assert_still_serving(daemon)


def test_odd_but_valid_json_is_accepted_and_matched(daemon: Daemon) -> None:
    images = [f"myregistry.io/team/app-{i}:v{i}" for i in range(5000)]
    images[4321] = "evil.example.com/hidden:1"
    big_pod = audit_event(request=pod(*images), auditID=f"pod5000-{uuid.uuid4().hex}")
    huge_int = audit_event(auditID=f"int-{uuid.uuid4().hex}", request=pod("evil.example.com/i:1"))
    long_user = audit_event(
        user="u" * MiB, auditID=f"user-{uuid.uuid4().hex}", request=pod("evil.example.com/u:1")
    )
    dup = event_list(audit_event(auditID=f"dup-{uuid.uuid4().hex}", request=pod("evil.example.com/d:1")))
    dup = dup.replace(b'"verb":"create"', b'"verb":"get","verb":"create"')
    wide = event_list(huge_int).replace(b'"annotations":', b'"n":%d,"m":-1e308,"annotations":' % 2**70)
    for body in (event_list(big_pod), wide, event_list(long_user), dup):
        status, answer = post(daemon.webhook, body)
        assert status == 200 and orjson.loads(answer)["accepted"] == 1
    ids = {
        big_pod["auditID"],
        huge_int["auditID"],
        long_user["auditID"],
        orjson.loads(dup)["items"][0]["auditID"],
    }

    def raised() -> set[str]:
        return {
            a["eventd"]["audit_id"]
            for a in daemon.proc.alerts
            if a["rule"] == "Image From Untrusted Registry"
        }

    daemon.proc.wait_for(lambda: ids <= raised(), what="alerts of the odd events")
    (alert,) = (a for a in daemon.proc.alerts if a.get("eventd", {}).get("audit_id") == big_pod["auditID"])
    assert "evil.example.com" in alert["output"]
    assert_still_serving(daemon)


def test_ndjson_batch_with_hostile_lines_keeps_the_good_alerts(daemon: Daemon) -> None:
    marker = f"good line {uuid.uuid4().hex}"
    lines = [
        orjson.dumps(dict(falco_alert(), rule=marker)),
        b"[" * 10_000 + b"]" * 10_000,
        b'{"rule": NaN}',
        b'{"rule": "\xff"}',
        orjson.dumps(dict(falco_alert(), priority="LOUD")),
    ]
    before_json, before_priority = daemon.rejected(FALCO, "json"), daemon.rejected(FALCO, "priority")
    status, answer = post(daemon.falco, b"\n".join(lines), {"Content-Type": "application/x-ndjson"})
    assert status == 200 and orjson.loads(answer) == {"accepted": 1, "rejected": 4}
    daemon.proc.wait_for(
        lambda: (
            daemon.rejected(FALCO, "json") == before_json + 3
            and daemon.rejected(FALCO, "priority") == before_priority + 1
        ),
        what="per-line rejections",
    )
    daemon.proc.wait_for(lambda: any(a["rule"] == marker for a in daemon.proc.alerts), what="good alert")
    assert_still_serving(daemon)


def test_a_deep_alert_does_not_suppress_the_good_alerts_of_its_batch(daemon: Daemon) -> None:
    marker = f"neighbour {uuid.uuid4().hex}"
    deep = dict(falco_alert(), rule="deep")
    body = orjson.dumps([dict(falco_alert(), rule=marker), deep])
    body = body[:-3] + b',"deep":' + b"[" * 300 + b"]" * 300 + b"}}]"
    shape_before = daemon.rejected(FALCO, "shape")
    status, answer = post(daemon.falco, body)
    # The deep alert cannot be forwarded as JSON again: it is refused on its own, counted.
    assert status == 200 and orjson.loads(answer)["accepted"] == 1
    assert daemon.rejected(FALCO, "shape") == shape_before + 1
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not any(a["rule"] == marker for a in daemon.proc.alerts):
        time.sleep(0.05)
    assert any(a["rule"] == marker for a in daemon.proc.alerts), "the good alert was lost"


# ------------------------------------------------------------------- volume


def test_10000_tiny_concurrent_requests(daemon: Daemon) -> None:
    received_before = daemon.proc.metric("eventd_events_received_total", source=WEBHOOK)
    busy_before = daemon.rejected(WEBHOOK, "busy")
    statuses: Counter[int] = Counter()

    async def flood() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:

            async def one(body: bytes) -> None:
                async with session.post(daemon.webhook, data=body, headers=JSON) as resp:
                    await resp.read()
                    statuses[resp.status] += 1

            await asyncio.gather(*(one(event_list(lease_renewal())) for _ in range(10_000)))

    asyncio.run(flood())
    assert set(statuses) <= {200, 503} and sum(statuses.values()) == 10_000
    daemon.proc.wait_for(
        lambda: (
            daemon.proc.metric("eventd_events_received_total", source=WEBHOOK)
            == received_before + statuses[200]
        ),
        what="every accepted event matched",
    )
    assert daemon.rejected(WEBHOOK, "busy") == busy_before + statuses[503]
    assert_still_serving(daemon)


# ------------------------------------------------------------------- protocol


def test_slow_clients_do_not_stop_others_being_served(daemon: Daemon) -> None:
    heads = [b"POST /k8s-audit HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"] * 20
    slow_body = [socket.create_connection(("127.0.0.1", daemon.webhook_port)) for _ in heads]
    slow_head = [socket.create_connection(("127.0.0.1", daemon.webhook_port)) for _ in heads]
    for sock, head in zip(slow_body, heads, strict=True):
        sock.sendall(head)
    stop = threading.Event()

    def drip() -> None:  # one byte per connection per tick, headers or body
        tick = 0
        while not stop.wait(0.25):
            for sock in slow_body:
                with contextlib.suppress(OSError):
                    sock.sendall(b" ")
            for sock in slow_head:
                with contextlib.suppress(OSError):
                    sock.sendall(heads[0][tick : tick + 1])
            tick = (tick + 1) % 40  # never reaches the end of the headers

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        assert_still_serving(daemon)
        assert_still_serving(daemon)
    finally:
        stop.set()
        thread.join()
        for sock in slow_body + slow_head:
            sock.close()


def raw_status(port: int, request: bytes) -> int | None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        return read_status(sock)


HEADER_FLOODS = {
    "5000-headers": b"".join(b"X-H%d: v\r\n" % i for i in range(5000)),
    "100k-value": b"X-Big: " + b"v" * 100_000 + b"\r\n",
    "100k-name": b"X" * 100_000 + b": v\r\n",
    "1000-cookies": b"Cookie: " + b"; ".join(b"c%d=v" % i for i in range(1000)) + b"\r\n",
}


@pytest.mark.parametrize("headers", HEADER_FLOODS.values(), ids=HEADER_FLOODS.keys())
def test_header_floods_get_a_4xx_never_a_crash(daemon: Daemon, headers: bytes) -> None:
    for port, path in ((daemon.webhook_port, b"/k8s-audit"), (daemon.falco_port, b"/")):
        request = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"Content-Length: 2\r\n\r\n{}"
        status = raw_status(port, request)
        assert status is not None and 400 <= status < 500
    assert_still_serving(daemon)


BROKEN_REQUESTS = {
    "long-url": b"POST /k8s-audit?" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad-method-token": b"G\x00T /k8s-audit HTTP/1.1\r\nHost: x\r\n\r\n",
    "tls-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
    "negative-length": b"POST /k8s-audit HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "two-lengths": b"POST /k8s-audit HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "length-and-chunked": b"POST /k8s-audit HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad-chunk-size": b"POST /k8s-audit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\n{}\r\n",
    "huge-chunk-size": b"POST /k8s-audit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"ffffffffffffffffffff\r\n{}\r\n",
}


@pytest.mark.parametrize("request_bytes", BROKEN_REQUESTS.values(), ids=BROKEN_REQUESTS.keys())
def test_broken_http_gets_400(daemon: Daemon, request_bytes: bytes) -> None:
    assert raw_status(daemon.webhook_port, request_bytes) == 400
    assert_still_serving(daemon)


def test_wrong_methods_get_405_and_are_counted(daemon: Daemon) -> None:
    methods = ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"]
    for port, path, source in ((daemon.webhook_port, "/k8s-audit", WEBHOOK), (daemon.falco_port, "/", FALCO)):
        before = daemon.rejected(source, "method")
        for method in methods:
            request = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
            assert raw_status(port, request) == 405, method
        daemon.proc.wait_for(
            lambda s=source, b=before: daemon.rejected(s, "method") == b + len(methods), what="method"
        )
    assert_still_serving(daemon)


def test_wrong_paths_and_types_are_refused(daemon: Daemon) -> None:
    for port in (daemon.webhook_port, daemon.falco_port):
        request = b"POST /../../etc/passwd HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        assert raw_status(port, request) == 404
    before = daemon.rejected(WEBHOOK, "content_type"), daemon.rejected(WEBHOOK, "encoding")
    assert post(daemon.webhook, _valid, {"Content-Type": "text/yaml"})[0] == 415
    assert post(daemon.webhook, _valid, {**JSON, "Content-Encoding": "deflate, gzip"})[0] == 415
    daemon.proc.wait_for(
        lambda: (
            (daemon.rejected(WEBHOOK, "content_type"), daemon.rejected(WEBHOOK, "encoding"))
            == (before[0] + 1, before[1] + 1)
        ),
        what="content_type and encoding",
    )
    assert_still_serving(daemon)


def test_requests_refused_by_the_http_layer_are_counted(daemon: Daemon) -> None:
    before = daemon.rejected(WEBHOOK)
    assert raw_status(daemon.webhook_port, BROKEN_REQUESTS["two-lengths"]) == 400
    assert (
        raw_status(daemon.webhook_port, b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n") == 404
    )
    daemon.proc.wait_for(lambda: daemon.rejected(WEBHOOK) == before + 2, timeout=2, what="counted")


def test_refused_requests_keep_the_log_one_json_object_per_line(daemon: Daemon) -> None:
    assert raw_status(daemon.webhook_port, BROKEN_REQUESTS["bad-chunk-size"]) == 400
    time.sleep(0.3)
    bad = [line for line in daemon.proc.stderr().splitlines() if line.strip() and not line.startswith("{")]
    assert not bad, f"{len(bad)} non-JSON log lines, e.g. {bad[:3]}"


# ------------------------------------------------------ timeouts (real source, short clock)


class RecordingInlet:
    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.rejects: Counter[str] = Counter()

    async def put(self, batch: Batch) -> None:
        self.batches.append(batch)

    def offer(self, batch: Batch) -> bool:
        self.batches.append(batch)
        if batch.done is not None:  # an instant pipeline
            batch.done.set_result(None)
        return True

    def rejected(self, source: str, error: DecodeError | str, count: int = 1) -> None:
        self.rejects[error.reason if isinstance(error, DecodeError) else error] += count


@contextlib.asynccontextmanager
async def webhook_source(inlet: RecordingInlet, **settings: Any) -> Any:
    source = AuditWebhookSource(AuditWebhookConfig(listen=Listen("127.0.0.1", 0), **settings), Metrics())
    task = asyncio.create_task(source.run(inlet))
    async with asyncio.timeout(10):
        while not source.ready():
            await asyncio.sleep(0.01)
    assert source.address is not None
    try:
        yield source.address[1]
    finally:
        await source.stop()
        await asyncio.wait_for(task, 20)


async def drip(port: int, prefix: bytes, data: bytes, interval: float = 0.2, wait: float = 5.0) -> bytes:
    """Send ``prefix``, then ``data`` one byte per ``interval``; return what the
    server answered (b"" when it closed the connection) or raise TimeoutError
    after ``wait``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(prefix)

    async def feed() -> None:
        with contextlib.suppress(OSError):
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
                await asyncio.sleep(interval)

    feeder = asyncio.create_task(feed())
    try:
        async with asyncio.timeout(wait):
            return await reader.read(200)
    finally:
        feeder.cancel()
        writer.close()


@pytest.mark.asyncio
async def test_a_slow_body_is_cut_off_with_408(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_input, "BODY_TIMEOUT_SECONDS", 1.0)
    inlet = RecordingInlet()
    async with webhook_source(inlet) as port:
        head = b"POST /k8s-audit HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        answer = await drip(port, head, b" " * 1000, interval=0.2, wait=10.0)
        # Others are served meanwhile and afterwards.
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/k8s-audit"
            async with session.post(url, data=event_list(audit_event()), headers=JSON) as resp:
                assert resp.status == 200
    assert answer.startswith(b"HTTP/1.1 408")
    assert inlet.rejects["timeout"] >= 1


@pytest.mark.asyncio
async def test_slow_headers_are_cut_off() -> None:
    async with webhook_source(RecordingInlet(), header_timeout_seconds=1.0) as port:
        head = b"POST /k8s-audit HTTP/1.1\r\nHost: x\r\n"
        answer = await drip(port, head, b"X-Slow: " + b"v" * 100, interval=0.2, wait=5.0)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
