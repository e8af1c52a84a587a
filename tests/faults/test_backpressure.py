"""When the durable path is full, eventd pushes back; it never drops silently.

The default ``spool_full_policy`` is ``block``: with Kafka down, a spool at
``spool_max_bytes`` or a disk with no space left makes the webhook answer
``503`` with ``Retry-After`` (the API server retries) and ``/readyz`` turn
503, and not a single alert is dropped.  Once room returns (the broker
drains the spool, the disk is freed), the retries go through and every
acknowledged alert reaches Kafka.

And the other way round: an outage of a *best-effort* sink (Alertmanager)
never makes ``/readyz`` fail (the audit-webhook overlay probes it: a short
Alertmanager outage must not take every replica out of the Service), and
``eventd_sink_up`` recovers by itself, without waiting for the next alert.
"""

from __future__ import annotations

import http.server
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from tests.faults.accounting import (
    Poster,
    assert_uuid_set,
    batches,
    expected_uuids,
    http_status,
    read_kafka_alerts,
    report,
    scrape,
    send,
    start_webhook_to_kafka,
    wait_until,
    write_rules,
)
from tests.faults.disks import FileSizeLimit, TmpfsDisk
from tests.support.daemon_process import EventdProcess, free_port
from tests.support.kafka_broker import KafkaBroker, unique_name

pytestmark = pytest.mark.timeout(180)

SPOOL_MAX_BYTES = 48 * 1024


def drops(proc: EventdProcess) -> dict[str, float]:
    return scrape(proc).by("eventd_sink_dropped_total", "reason")


def report_no_loss(
    scenario: str, batches_sent: int, poster: Poster, expected: set[str], unique: dict
) -> None:
    report(
        scenario,
        batches_sent=batches_sent,
        answers_503=poster.statuses.get(503, 0),
        alerts_acknowledged=len(expected),
        alerts_in_kafka=len(unique),
        dropped=0,
        lost=len(expected - unique.keys()),
    )


def pushed_back(poster: Poster) -> bool:
    return poster.statuses.get(503, 0) >= 3


def test_a_full_spool_pushes_back_and_loses_nothing(
    private_kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    broker = private_kafka_broker
    broker.stop()
    topic = unique_name("faults-block-spool")
    proc, url = start_webhook_to_kafka(
        tmp_path, broker.bootstrap, topic, tmp_path / "spool", spool_max_bytes=SPOOL_MAX_BYTES
    )
    try:
        # Far more alerts than the spool holds (about 40 fit).
        poster = Poster(url, batches("block", count=30, alerting=10, invalid=1), give_up_after=150).start()
        wait_until(lambda: pushed_back(poster), timeout=60, what="503 answers", proc=proc)
        snap = scrape(proc)
        assert snap.value("eventd_spool_bytes", sink="kafka") <= SPOOL_MAX_BYTES
        assert drops(proc) == {}, "a full spool must push back, not drop"
        assert http_status(proc.url("/readyz")) == 503
        assert http_status(proc.url("/healthz")) == 200
        held = poster.snapshot()
        assert len(held.batches) < 30, "everything was acknowledged although the spool was full"

        broker.start()
        broker.create_topic(topic)
        sent = poster.join(timeout=150)
        assert not poster.unacknowledged
        expected = expected_uuids(sent.alerting)
        unique = assert_uuid_set(
            read_kafka_alerts(broker.bootstrap, topic, expected, idle=3), expected, "Kafka"
        )
        wait_until(lambda: http_status(proc.url("/readyz")) == 200, timeout=30, what="ready again", proc=proc)
        assert drops(proc) == {}
        report_no_loss("spool full (48 KiB), broker down", 30, poster, expected, unique)
        assert proc.stop() == 0
    finally:
        proc.kill()


def test_a_full_disk_pushes_back_and_loses_nothing(
    private_kafka_broker: KafkaBroker, tmp_path: Path, disk: TmpfsDisk | FileSizeLimit
) -> None:
    broker = private_kafka_broker
    broker.stop()
    topic = unique_name("faults-block-disk")
    proc, url = start_webhook_to_kafka(
        tmp_path, broker.bootstrap, topic, disk.spool_dir, log_level=disk.log_level
    )
    pid = proc.proc.pid
    try:
        disk.fill(pid)
        poster = Poster(url, batches("disk", count=6, alerting=4, invalid=1), give_up_after=150).start()
        wait_until(lambda: pushed_back(poster), timeout=60, what="503 answers", proc=proc)
        assert drops(proc) == {}, "a full disk must push back, not drop"
        assert http_status(proc.url("/readyz")) == 503
        assert scrape(proc).value("eventd_sink_failures_total", sink="kafka", reason="disk_full") >= 1

        disk.free(pid)
        sent = poster.join(timeout=150)
        assert not poster.unacknowledged
        broker.start()
        broker.create_topic(topic)
        expected = expected_uuids(sent.alerting)
        unique = assert_uuid_set(
            read_kafka_alerts(broker.bootstrap, topic, expected, idle=3), expected, "Kafka"
        )
        assert drops(proc) == {}
        assert http_status(proc.url("/readyz")) == 200
        report_no_loss(f"disk full ({type(disk).__name__}), broker down", 6, poster, expected, unique)
    finally:
        proc.kill()


# --------------------------------------------------------- best-effort outage


class _Ready(http.server.BaseHTTPRequestHandler):
    """Alertmanager's two endpoints eventd uses: alerts in, readiness."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def do_GET(self) -> None:
        self._answer()

    def _answer(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@contextmanager
def receiver_on(port: int) -> Iterator[None]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def test_a_best_effort_outage_leaves_readiness_alone_and_health_recovers_by_itself(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: connections are refused
    webhook = free_port()
    proc = EventdProcess(
        tmp_path,
        {
            "rules": [str(write_rules(tmp_path))],
            "sources": {"k8s_audit_webhook": {"listen": f"127.0.0.1:{webhook}"}},
            "sinks": {
                "stdout": {},
                "alertmanager": {
                    "url": f"http://127.0.0.1:{port}",
                    "min_priority": "debug",
                    "dedup": None,
                    "max_retries": 1,
                    "retry_backoff_seconds": 0.05,
                    "timeout_seconds": 2,
                },
            },
        },
    )
    try:
        proc.wait_ready()
        send(f"http://127.0.0.1:{webhook}/k8s-audit", batches("am", count=3, alerting=4))
        wait_until(
            lambda: proc.metric("eventd_sink_up", sink="alertmanager") == 0,
            timeout=30,
            what="the Alertmanager sink to be reported down",
            proc=proc,
        )
        assert http_status(proc.url("/readyz")) == 200, "a best-effort sink's outage made eventd unready"
        with urllib.request.urlopen(proc.url("/healthz"), timeout=5) as resp:
            detail = orjson.loads(resp.read())
        assert detail["sinks"]["alertmanager"]["up"] is False
        assert detail["sinks"]["alertmanager"]["durable"] is False
        assert detail["sinks"]["stdout"]["up"] is True
        assert proc.metric("eventd_sink_up", sink="stdout") == 1
        with receiver_on(port):
            # No alert is sent now: only the sink's own probe can notice.
            wait_until(
                lambda: proc.metric("eventd_sink_up", sink="alertmanager") == 1,
                timeout=30,
                what="the Alertmanager sink to recover without new alerts",
                proc=proc,
            )
        assert http_status(proc.url("/readyz")) == 200
        assert proc.stop() == 0
    finally:
        proc.kill()
