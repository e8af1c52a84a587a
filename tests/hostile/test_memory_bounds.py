"""Memory is bounded in bytes, not only in entries, whatever an attacker sends.

Anyone who can create a pod (or write to the audit topic, or reach the
Falco input) chooses the sizes of the strings eventd keeps: auditIDs, rule
names, outputs.  Each table and queue eventd keeps is bounded in bytes:

* the webhook's dedup table keeps 16-byte digests of (auditID, stage);
* Prometheus label values taken from events are cut to
  ``metrics.label_value_max_length`` characters (and capped in count);
* a sink's dedup windows are capped by ``dedup.max_bytes``, its queue by
  ``buffer.max_bytes``;
* the HTTP inputs hold at most ``max_inflight_bytes`` of bodies at once, so
  64 concurrent batches near ``max_body_bytes`` leave the daemon under the
  README's 512 MB with every setting at its default;
* an HTTP sink reads at most 64 KiB of a receiver's answer: a receiver
  answering with a gigabyte does not grow the daemon.

Each attack runs against a real daemon; its resident memory after the
attack is compared with its memory before (both measured by the kernel).
The bounds are generous (allocator slack, caches) but far below what the
attacks cost when the bytes were kept: 100 KB auditIDs grew the daemon by
their full size, and 480 KB rule names made ``/metrics`` 90 MiB.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.faults.accounting import ALERT_NS, QUIET_NS, post, rss_bytes, write_rules
from tests.faults.blackhole import BlackHole
from tests.support.builders import audit_event, pod
from tests.support.daemon_process import EventdProcess, free_port

pytestmark = pytest.mark.timeout(240)

MiB = 1024 * 1024


def event_list(docs: list[dict]) -> bytes:
    return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": docs})


def huge_id(tag: str, i: int, size: int) -> str:
    return f"{tag}-{i:08d}-".ljust(size, "x")


@pytest.fixture
def webhook_daemon(tmp_path: Path) -> Iterator[tuple[EventdProcess, str, BlackHole]]:
    """Webhook in; stdout and a black-holed Alertmanager (with dedup) out."""
    port = free_port()
    with BlackHole() as hole:
        proc = EventdProcess(
            tmp_path,
            {
                "rules": [str(write_rules(tmp_path))],
                "sources": {"k8s_audit_webhook": {"listen": f"127.0.0.1:{port}"}},
                "sinks": {
                    "alertmanager": {
                        "url": hole.url,
                        "min_priority": "debug",
                        "dedup": {"max_bytes": 8 * MiB},
                        "buffer": {"max_bytes": 8 * MiB},
                    }
                },
            },
        )
        try:
            proc.wait_ready()
            yield proc, f"http://127.0.0.1:{port}/k8s-audit", hole
        finally:
            proc.kill()


def send_all(url: str, bodies: Iterator[bytes]) -> None:
    for body in bodies:
        status, _ = post(url, body, timeout=60)
        assert status == 200, status


def bare_falco_alert(rule: str) -> dict[str, Any]:
    """A Falco alert with nothing but ``rule`` to it (no output fields)."""
    return {
        "time": "2026-12-05T00:00:00.000000000Z",
        "rule": rule,
        "priority": "Warning",
        "output": "x",
        "source": "syscall",
        "output_fields": {},
    }


def test_huge_audit_ids_do_not_accumulate_in_the_dedup_table(
    webhook_daemon: tuple[EventdProcess, str, BlackHole],
) -> None:
    proc, url, _ = webhook_daemon
    size, per_batch, batches = 100_000, 40, 60  # 2,400 events, 240 MB of auditIDs
    send_all(
        url,
        (event_list([audit_event(auditID=huge_id("warm", i, size), namespace=QUIET_NS)]) for i in range(5)),
    )
    before = rss_bytes(proc.proc.pid)
    send_all(
        url,
        (
            event_list(
                [audit_event(auditID=huge_id(f"b{b}", i, size), namespace=QUIET_NS) for i in range(per_batch)]
            )
            for b in range(batches)
        ),
    )
    grown = rss_bytes(proc.proc.pid) - before
    assert proc.metric("eventd_events_received_total", source="k8s_audit_webhook") == 5 + per_batch * batches
    assert grown < 120 * MiB, (
        f"RSS grew by {grown / MiB:.0f} MiB for {size * per_batch * batches / MiB:.0f} MiB of IDs"
    )


def test_huge_alerts_to_a_dead_receiver_are_bounded_by_dedup_and_queue_bytes(
    webhook_daemon: tuple[EventdProcess, str, BlackHole],
) -> None:
    """Distinct 900 KB alerts (the rule's output quotes the auditID) to a
    black-holed Alertmanager with dedup on: its windows and its queue keep
    at most their ``max_bytes`` (8 MiB each here)."""
    proc, url, _ = webhook_daemon
    size = 900_000
    warm = [audit_event(request=pod("nginx"), namespace=ALERT_NS, auditID=huge_id("w", 0, size))]
    send_all(url, iter([event_list(warm)]))
    before = rss_bytes(proc.proc.pid)
    send_all(
        url,
        (
            event_list(
                [
                    audit_event(request=pod("nginx"), namespace=ALERT_NS, auditID=huge_id(f"a{b}", i, size))
                    for i in range(5)
                ]
            )
            for b in range(60)
        ),
    )  # 300 alerts of ~1.8 MB (output and output_fields both quote the ID)
    assert proc.metric("eventd_alerts_total") == 301
    grown = rss_bytes(proc.proc.pid) - before
    dropped = proc.metric("eventd_sink_dropped_total", sink="alertmanager", reason="queue_full")
    assert dropped > 0, "the queue never filled: the attack proves nothing"
    assert proc.metric("eventd_sink_queue_bytes", sink="alertmanager") <= 8 * MiB
    assert grown < 160 * MiB, f"RSS grew by {grown / MiB:.0f} MiB for ~540 MB of alerts"


def test_huge_falco_rule_names_are_cut_in_metric_labels(tmp_path: Path) -> None:
    port = free_port()
    proc = EventdProcess(
        tmp_path,
        {
            "sources": {"falco_http": {"listen": f"127.0.0.1:{port}"}},
            "sinks": {"file": {"path": str(tmp_path / "alerts.jsonl")}},
        },
    )
    try:
        proc.wait_ready()
        for i in range(100):
            alert = bare_falco_alert(f"rule-{i:04d}-".ljust(480_000, "r"))
            status, _ = post(f"http://127.0.0.1:{port}/", orjson.dumps(alert), timeout=30)
            assert status == 200
        with urllib.request.urlopen(proc.url("/metrics"), timeout=10) as resp:
            page = resp.read()
        assert len(page) < 1 * MiB, f"/metrics is {len(page) / MiB:.1f} MiB"
        assert b"rule-0000-" + b"r" * 100 in page  # cut, not dropped
        assert b"r" * 200 not in page
    finally:
        proc.kill()


#: The RSS the README promises for the daemon with its defaults, whatever the input.
STATED_RSS_BOUND = 512 * MiB


def peak_rss_bytes(pid: int) -> int:
    """High-water mark of the resident set (``VmHWM``): reset by ``exec``, so
    it is this daemon's own peak, however large the test process is."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def test_concurrent_large_batches_stay_under_the_stated_rss_with_the_defaults(tmp_path: Path) -> None:
    """64 concurrent valid ~11.6 MiB batches (just under the default
    ``max_body_bytes``) to a daemon with every memory setting at its default:
    ``max_inflight_bytes`` (48 MiB) admits a few and answers the rest 503,
    and the daemon's peak RSS stays under the README's 512 MB.  With the
    bodies in flight unbounded the same attack peaked at 4.8 GB."""
    port = free_port()
    proc = EventdProcess(
        tmp_path,
        {
            "rules": [str(write_rules(tmp_path))],
            "sources": {"k8s_audit_webhook": {"listen": f"127.0.0.1:{port}"}},
            "sinks": {"stdout": {}},
        },
    )
    try:
        proc.wait_ready()
        docs: list[dict] = []
        size = 0
        while size < 12_150_000:  # ~11.6 MiB of ordinary pod creations
            doc = audit_event(request=pod("nginx"), namespace=QUIET_NS, auditID=f"TTTT-{len(docs):012d}")
            size += len(orjson.dumps(doc)) + 1
            docs.append(doc)
        template = event_list(docs)
        # Distinct auditIDs per body (a few bodies, to keep the test process small).
        bodies = [template.replace(b"TTTT", b"%04d" % i) for i in range(8)]
        url = f"http://127.0.0.1:{port}/k8s-audit"
        with ThreadPoolExecutor(64) as pool:
            statuses = list(pool.map(lambda i: post(url, bodies[i % 8], timeout=120)[0], range(64)))
        peak = peak_rss_bytes(proc.proc.pid)
        accepted = statuses.count(200)
        refused = proc.metric(
            "eventd_events_rejected_total", source="k8s_audit_webhook", reason="inflight_bytes"
        )
    finally:
        proc.kill()
    assert set(statuses) <= {200, 503, 0}, statuses  # 0: reset while still sending the body
    assert accepted >= 1 and refused == 64 - accepted > 0, (statuses, refused)
    assert peak < STATED_RSS_BOUND, f"peak RSS {peak / MiB:.0f} MiB"


class HugeAnswers:
    """A receiver that answers every request ``200`` with ``size`` bytes of
    zeros, streamed (a hostile endpoint, or a broken proxy in front of one).
    Raw sockets in threads: the answer is never held in memory here."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.requests = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._listener.accept()
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        chunk = bytes(1 << 20)
        with conn, contextlib.suppress(OSError):
            while True:  # one request after another on a kept-alive connection
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(65536)
                    if not data:
                        return
                    head += data
                head, _, body = head.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests += 1
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size)
                for _ in range(self.size // len(chunk)):
                    conn.sendall(chunk)

    def close(self) -> None:
        self._listener.close()


def test_huge_answers_from_a_receiver_are_not_read_whole(tmp_path: Path) -> None:
    """Three alerts to a webhook receiver answering each with 1 GiB: each is
    delivered (the status is all that matters) and the daemon does not grow
    with the answers.  Reading the answers whole made the daemon peak above
    the size of one answer."""
    receiver = HugeAnswers(1 << 30)
    port = free_port()
    proc = EventdProcess(
        tmp_path,
        {
            "sources": {"falco_http": {"listen": f"127.0.0.1:{port}"}},
            "sinks": {"webhook": {"url": receiver.url, "min_priority": "debug", "timeout_seconds": 30}},
        },
    )
    try:
        proc.wait_ready()
        before = rss_bytes(proc.proc.pid)
        for i in range(3):
            alert = bare_falco_alert(f"rule {i}")
            status, _ = post(f"http://127.0.0.1:{port}/", orjson.dumps(alert), timeout=30)
            assert status == 200
        proc.wait_for(
            lambda: proc.metric("eventd_sink_deliveries_total", sink="webhook") >= 3,
            timeout=60,
            what="three deliveries",
        )
        grown = peak_rss_bytes(proc.proc.pid) - before
    finally:
        proc.kill()
        receiver.close()
    assert receiver.requests >= 3
    assert grown < 128 * MiB, f"RSS peaked {grown / MiB:.0f} MiB above its start for 1 GiB answers"
