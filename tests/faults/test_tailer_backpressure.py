"""A full spool pauses the audit-log tailer; it never drops or checkpoints past it.

Issue 10, point 3: "when the durable path cannot take more, inputs push
back (503 + Retry-After on HTTP inputs, pause consumption on Kafka/file
inputs) by default".  ``test_backpressure.py`` tries the HTTP half; this is
the file half.  The broker is down, the Kafka sink's spool is small
(``spool_max_bytes``) and the in-memory queues in front of it are short, and
far more alerting lines are written to the audit log than all of them hold.
With the default ``spool_full_policy: block`` the tailer must stop reading
(its count of events stands still below what the log holds), drop nothing
and not be ready.  Then eventd is killed with SIGKILL while it is stuck, the
broker comes back, and a new eventd resumes from the checkpoint: every
alerting line of the log reaches Kafka.  A tailer that read on regardless
(dropping what did not fit) or a checkpoint written past alerts that were
only in memory would lose alerts here.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.faults.accounting import (
    ALERT_NS,
    QUIET_NS,
    assert_paused_by_a_full_spool,
    assert_uuid_set,
    audit_doc,
    read_kafka_alerts,
    report,
    scrape,
    uuid_names,
    wait_still,
    wait_until,
    write_rules,
)
from tests.support.daemon_process import EventdProcess
from tests.support.kafka_broker import KafkaBroker, unique_name

pytestmark = pytest.mark.timeout(240)

TAILER = "audit_log"
SPOOL_MAX_BYTES = 48 * 1024
#: Lines written, half of them alerting: many times what the spool and queues hold.
LINES = 1600
#: The tailer's count must stand still this long to count as paused.
STILL_SECONDS = 2.0


def write_log(path: Path, tag: str) -> list[dict[str, Any]]:
    """Append ``LINES`` audit events in small groups (so the tailer reads
    them in many batches, as it would a live log); the alerting ones."""
    alerting = []
    with path.open("ab") as log:
        for start in range(0, LINES, 20):
            for i in range(start, start + 20):
                alerts = i % 2 == 0
                doc = audit_doc(f"{tag}-{i:06d}", ALERT_NS if alerts else QUIET_NS)
                if alerts:
                    alerting.append(doc)
                log.write(orjson.dumps(doc) + b"\n")
            log.flush()
            time.sleep(0.01)
    return alerting


def start(run_dir: Path, log: Path, bootstrap: str, topic: str) -> EventdProcess:
    run_dir.mkdir()
    return EventdProcess(
        run_dir,
        {
            "rules": [str(write_rules(run_dir))],
            "queue_size": 2,
            "sources": {
                TAILER: {
                    "path": str(log),
                    "checkpoint": str(log.parent / "audit.checkpoint"),
                    "poll_interval_seconds": 0.05,
                }
            },
            "sinks": {
                "kafka": {
                    "bootstrap_servers": [bootstrap],
                    "topic": topic,
                    "spool_dir": str(log.parent / "spool"),
                    "spool_max_bytes": SPOOL_MAX_BYTES,
                    "request_timeout_seconds": 3,
                    "buffer": {"max_alerts": 50},
                }
            },
        },
    ).ready_or_killed()


def tailer_events(proc: EventdProcess) -> float:
    return proc.metric("eventd_events_received_total", source=TAILER)


def test_a_full_spool_pauses_the_tailer_and_a_sigkill_then_loses_nothing(
    private_kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    broker = private_kafka_broker
    broker.stop()
    topic = unique_name("faults-tailer-block")
    log = tmp_path / "audit.log"
    log.touch()
    first = start(tmp_path / "first", log, broker.bootstrap, topic)
    try:
        writer_out: list[list[dict[str, Any]]] = []
        writer = threading.Thread(target=lambda: writer_out.append(write_log(log, tmp_path.name[-10:])))
        writer.start()
        writer.join(60)
        assert writer_out, "the audit log was not written"
        alerting = writer_out[0]

        wait_until(
            lambda: scrape(first).value("eventd_spool_bytes", sink="kafka") > SPOOL_MAX_BYTES / 2,
            timeout=60,
            what="the spool filling",
            proc=first,
        )
        # Paused: the count stands still for a while, well below the log's lines.
        seen = wait_still(
            lambda: tailer_events(first), still_seconds=STILL_SECONDS, timeout=60, what="the tailer"
        )
        assert 0 < seen < LINES / 2, f"the tailer read {seen} of {LINES} events past a full spool"
        assert_paused_by_a_full_spool(first, SPOOL_MAX_BYTES)
        read_before_kill = seen
        first.proc.kill()  # stuck, with alerts in the spool and in the queues
        first.kill()

        broker.start()
        broker.create_topic(topic)
        second = start(tmp_path / "second", log, broker.bootstrap, topic)
        try:
            expected = uuid_names(alerting)
            found = read_kafka_alerts(broker.bootstrap, topic, set(expected), timeout=120, quiet=1.0)
            unique = assert_uuid_set(found, expected, "Kafka after a full spool, SIGKILL and a restart")
            assert scrape(second).by("eventd_sink_dropped_total", "reason") == {}
            report(
                "tailer, spool full (48 KiB), broker down, SIGKILL, restart",
                lines=LINES,
                read_before_pause=int(read_before_kill),
                alerts_expected=len(expected),
                alerts_in_kafka=len(unique),
                copies=len(found) - len(unique),
                lost=len(set(expected) - unique.keys()),
            )
            assert second.stop() == 0
        finally:
            second.kill()
    finally:
        first.kill()
