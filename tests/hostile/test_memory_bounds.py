"""Memory is bounded in bytes, not only in entries, whatever an attacker sends.

Anyone who can create a pod (or write to the audit topic, or reach the
Falco input) chooses the sizes of the strings eventd keeps: auditIDs, rule
names, outputs.  Each table and queue eventd keeps is bounded in bytes:

* the webhook's dedup table keeps 16-byte digests of (auditID, stage);
* Prometheus label values taken from events are cut to
  ``metrics.label_value_max_length`` characters (and capped in count);
* a sink's dedup windows are capped by ``dedup.max_bytes``, its queue by
  ``buffer.max_bytes``.

Each attack runs against a real daemon; its resident memory after the
attack is compared with its memory before (both measured by the kernel).
The bounds are generous (allocator slack, caches) but far below what the
attacks cost when the bytes were kept: 100 KB auditIDs grew the daemon by
their full size, and 480 KB rule names made ``/metrics`` 90 MiB.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

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
            alert = {
                "time": "2026-12-05T00:00:00.000000000Z",
                "rule": f"rule-{i:04d}-".ljust(480_000, "r"),
                "priority": "Warning",
                "output": "x",
                "source": "syscall",
                "output_fields": {},
            }
            status, _ = post(f"http://127.0.0.1:{port}/", orjson.dumps(alert), timeout=30)
            assert status == 200
        with urllib.request.urlopen(proc.url("/metrics"), timeout=10) as resp:
            page = resp.read()
        assert len(page) < 1 * MiB, f"/metrics is {len(page) / MiB:.1f} MiB"
        assert b"rule-0000-" + b"r" * 100 in page  # cut, not dropped
        assert b"r" * 200 not in page
    finally:
        proc.kill()
