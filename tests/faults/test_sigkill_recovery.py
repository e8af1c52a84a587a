"""``kill -9`` mid-stream, restart on the same spool and checkpoint: every alert arrives.

eventd takes audit events from the webhook (a load driver that, like the API
server, retries every batch not answered 2xx) and from the audit log file
(which keeps growing the whole time), and sends alerts to Kafka through its
spool.  It is killed with SIGKILL while both inputs flow, and restarted with
the same spool directory and tailer checkpoint.

Expected afterwards, in Kafka, after removing copies by uuid: exactly the
alerts of every webhook batch that was acknowledged and of every alerting
line of the log.  Copies are allowed (at-least-once: the tailer re-reads
from its last checkpoint, the spool redelivers what the broker had not
acknowledged).  The restarted process's own counters must account exactly
for what it was sent: the webhook's by the batches it acknowledged, the
tailer's by the lines after the position it says it resumed from.

The scenario runs once (a module fixture); each test checks one promise.
The kill waits for work in flight (batches in the pipeline's queue, or
acknowledged alerts still only in the spool): that is when a crash tests
whether an acknowledged batch is durable.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.faults.accounting import (
    ALERT_NS,
    INVALID_REASON,
    QUIET_NS,
    WEBHOOK,
    MetricsSnapshot,
    Poster,
    Sent,
    assert_source_accounting,
    assert_uuid_set,
    assert_webhook_accounting,
    audit_doc,
    batches,
    expected_uuids,
    invalid_doc,
    read_kafka_alerts,
    scrape,
    uuid_names,
    wait_until,
    write_rules,
)
from tests.support.daemon_process import EventdProcess, free_port
from tests.support.kafka_broker import KafkaBroker, unique_name

pytestmark = pytest.mark.timeout(150)

TAILER = "audit_log"


class LogWriter(threading.Thread):
    """Appends groups of lines to the audit log (alerting, quiet, one invalid)
    every ``interval`` until stopped; remembers where each line ends."""

    def __init__(self, path: Path, interval: float = 0.02) -> None:
        super().__init__(name="audit-log-writer", daemon=True)
        self.path = path
        self.interval = interval
        self.lines: list[tuple[int, str, dict[str, Any]]] = []  # (end offset, kind, doc)
        self._halt = threading.Event()

    def run(self) -> None:
        group = 0
        with self.path.open("ab") as log:
            offset = log.tell()
            while not self._halt.is_set():
                docs = [("alert", audit_doc(f"log-{group:06d}-a{n}", ALERT_NS)) for n in range(3)]
                docs += [("quiet", audit_doc(f"log-{group:06d}-q{n}", QUIET_NS)) for n in range(3)]
                docs.append(("invalid", invalid_doc(f"log-{group:06d}-x0")))
                for kind, doc in docs:
                    line = orjson.dumps(doc) + b"\n"
                    log.write(line)
                    offset += len(line)
                    self.lines.append((offset, kind, doc))
                log.flush()
                group += 1
                self._halt.wait(self.interval)

    def finish(self) -> None:
        self._halt.set()
        self.join(10)

    def alerting(self) -> list[dict[str, Any]]:
        return [doc for _, kind, doc in self.lines if kind == "alert"]

    def after(self, offset: int) -> dict[str, int]:
        """How many lines of each kind end after ``offset``."""
        counts = {"alert": 0, "quiet": 0, "invalid": 0}
        for end, kind, _ in self.lines:
            if end > offset:
                counts[kind] += 1
        return counts


def resumed_offset(proc: EventdProcess, log_path: Path) -> int:
    """Where the restarted tailer says it resumed in ``log_path``."""
    found = [
        entry["offset"]
        for entry in proc.logs()
        if entry.get("event") == "audit_log_resumed" and entry.get("file") == str(log_path)
    ]
    assert len(found) == 1, f"expected one audit_log_resumed entry, got {found}"
    return int(found[0])


@dataclass
class Outcome:
    """What the scenario left behind, for the tests to judge."""

    kafka: list[dict[str, Any]]
    webhook_acknowledged: Sent
    webhook_after_kill: Sent
    log_alerting: list[dict[str, Any]]
    log_after_resume: dict[str, int]
    second: MetricsSnapshot
    second_exit: int
    #: Webhook attempts that got no answer (eventd dead or restarting) and were retried.
    unanswered: int


@pytest.fixture(scope="module")
def outcome(kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    tmp_path = tmp_path_factory.mktemp("sigkill")
    topic = unique_name("faults-kill")
    kafka_broker.create_topic(topic)
    log_path = tmp_path / "audit.log"
    log_path.touch()
    port = free_port()
    config = {
        "rules": [str(write_rules(tmp_path))],
        "sources": {
            WEBHOOK: {"listen": f"127.0.0.1:{port}"},
            TAILER: {
                "path": str(log_path),
                "checkpoint": str(tmp_path / "audit.checkpoint"),
                "poll_interval_seconds": 0.05,
            },
        },
        "sinks": {
            "kafka": {
                "bootstrap_servers": [kafka_broker.bootstrap],
                "topic": topic,
                "spool_dir": str(tmp_path / "spool"),
                "request_timeout_seconds": 5,
            }
        },
    }

    def start(run: str) -> EventdProcess:
        directory = tmp_path / run
        directory.mkdir()
        proc = EventdProcess(directory, dict(config))
        proc.wait_ready()
        return proc

    def flowing(proc: EventdProcess) -> bool:
        snap = scrape(proc)
        return (
            snap.value("eventd_events_received_total", source=TAILER) >= 200
            and snap.value("eventd_events_received_total", source=WEBHOOK) >= 200
            and snap.value("eventd_sink_deliveries_total", sink="kafka") >= 100
            # Work in flight: batches queued (not yet acknowledged) or alerts
            # acknowledged but still only in the spool (what must survive).
            and (
                snap.value("eventd_queue_depth") >= 1 or snap.value("eventd_spool_alerts", sink="kafka") >= 1
            )
        )

    def tailer_lines(proc: EventdProcess) -> float:
        snap = scrape(proc)
        return snap.value("eventd_events_received_total", source=TAILER) + snap.value(
            "eventd_events_rejected_total", source=TAILER
        )

    def drained(proc: EventdProcess) -> bool:
        snap = scrape(proc)
        return snap.value("eventd_spool_alerts", sink="kafka") == 0 and snap.value("eventd_queue_depth") == 0

    first = start("first")
    procs = [first]
    writer = LogWriter(log_path)
    url = f"http://127.0.0.1:{port}/k8s-audit"
    # Two senders, like the API server's concurrent batch goroutines.
    posters = [Poster(url, batches(f"hook{n}", alerting=5, quiet=5, invalid=1)) for n in range(2)]
    try:
        writer.start()
        for poster in posters:
            poster.start()
        # Webhook answers wait for their batch to reach the spool, so each
        # sender has at most one batch in flight; the tailer fills the rest.
        wait_until(
            lambda: flowing(first), timeout=30, what="both inputs flowing, with work in flight", proc=first
        )
        first.kill()
        # Every acknowledgement from now on is the second process's.
        before_kill = posters[0].reset() + posters[1].reset()
        assert before_kill.batches, "nothing was acknowledged before the kill"

        second = start("second")
        procs.append(second)
        wait_until(
            lambda: sum(len(p.snapshot().batches) for p in posters) >= 20 and tailer_lines(second) >= 100,
            timeout=30,
            what="the restarted eventd taking both inputs",
            proc=second,
        )
        writer.finish()
        after_kill = posters[0].finish() + posters[1].finish()
        assert not posters[0].unacknowledged and not posters[1].unacknowledged

        resumed = writer.after(resumed_offset(second, log_path))
        wait_until(
            lambda: tailer_lines(second) == sum(resumed.values()),
            timeout=30,
            what="the tailer to read every line",
            proc=second,
        )
        wait_until(lambda: drained(second), timeout=30, what="the queue and the spool to drain", proc=second)
        snap = scrape(second)
        want = expected_uuids((before_kill + after_kill).alerting) | expected_uuids(writer.alerting())
        return Outcome(
            kafka=read_kafka_alerts(kafka_broker.bootstrap, topic, want, idle=3),
            webhook_acknowledged=before_kill + after_kill,
            webhook_after_kill=after_kill,
            log_alerting=writer.alerting(),
            log_after_resume=resumed,
            second=snap,
            second_exit=second.stop(),
            unanswered=sum(p.statuses.get(0, 0) for p in posters),
        )
    finally:
        writer.finish()
        for poster in posters:
            poster.stop()
        for proc in procs:
            proc.kill()


def delivered(outcome: Outcome, prefix: str) -> list[dict[str, Any]]:
    return [a for a in outcome.kafka if a["eventd"]["audit_id"].startswith(prefix)]


def test_every_alert_of_the_log_arrives_after_sigkill(outcome: Outcome) -> None:
    assert_uuid_set(delivered(outcome, "log-"), uuid_names(outcome.log_alerting), "Kafka, audit log")


def test_the_restarted_process_accounts_for_every_event(outcome: Outcome) -> None:
    snap, resumed = outcome.second, outcome.log_after_resume
    assert outcome.unanswered > 0, "no batch was ever retried: the kill hit no request"
    assert_webhook_accounting(snap, outcome.webhook_after_kill)
    assert_source_accounting(
        snap,
        TAILER,
        received=resumed["alert"] + resumed["quiet"],
        matched=resumed["alert"],
        rejected={INVALID_REASON: resumed["invalid"]},
    )
    assert snap.value("eventd_sink_dropped_total") == 0
    assert outcome.second_exit == 0


def test_every_alert_of_an_acknowledged_webhook_batch_arrives_after_sigkill(outcome: Outcome) -> None:
    expected = uuid_names(outcome.webhook_acknowledged.alerting)
    assert_uuid_set(delivered(outcome, "hook"), expected, "Kafka, webhook")
