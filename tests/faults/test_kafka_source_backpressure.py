"""A full spool pauses the Kafka source; it never drops or commits past it.

Issue 10, point 3: "when the durable path cannot take more, inputs push
back (503 + Retry-After on HTTP inputs, pause consumption on Kafka/file
inputs) by default".  ``test_backpressure.py`` tries the HTTP inputs,
``test_tailer_backpressure.py`` the audit-log file; this is the Kafka half.
The audit topic holds far more alerting events than the alert cluster's
spool (``spool_max_bytes``) and the short queues in front of it can take,
and the alert cluster is down.  With the default ``spool_full_policy:
block`` the source must stop consuming (its count of events stands still
below what the topic holds), drop nothing and not be ready.  Then eventd is
killed with SIGKILL while it is stuck, the alert cluster comes back, and a
new eventd in the same group resumes from the committed offsets: every
alerting event of the topic reaches the alert topic.  A source that read on
regardless, or committed offsets of records whose alerts were only queued
or spooled, would lose alerts here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from tests.faults.accounting import (
    ALERT_NS,
    QUIET_NS,
    assert_paused_by_a_full_spool,
    assert_uuid_set,
    audit_doc,
    http_status,
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

SOURCE = "kafka"
SPOOL_MAX_BYTES = 48 * 1024
#: Audit events on the topic, half of them alerting: many times what the
#: spool and the queues hold.
EVENTS = 1600
#: The source's count must stand still this long to count as paused.
STILL_SECONDS = 2.0


def produce(bootstrap: str, topic: str, tag: str) -> list[dict[str, Any]]:
    """``EVENTS`` audit events on ``topic``; returns the alerting ones."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False})
    alerting = []
    for i in range(EVENTS):
        alerts = i % 2 == 0
        doc = audit_doc(f"{tag}-{i:06d}", ALERT_NS if alerts else QUIET_NS)
        if alerts:
            alerting.append(doc)
        producer.produce(topic, orjson.dumps(doc))
        producer.poll(0)
    assert producer.flush(30) == 0, "audit events not produced"
    return alerting


def start(
    run_dir: Path, spool: Path, audit: str, topic: str, group: str, alerts: str, alert_topic: str
) -> EventdProcess:
    run_dir.mkdir()
    return EventdProcess(
        run_dir,
        {
            "rules": [str(write_rules(run_dir))],
            "queue_size": 2,
            "sources": {
                SOURCE: {
                    "bootstrap_servers": [audit],
                    "topics": [topic],
                    "group_id": group,
                    "max_batch": 20,
                    "session_timeout_seconds": 6,
                }
            },
            "sinks": {
                "kafka": {
                    "bootstrap_servers": [alerts],
                    "topic": alert_topic,
                    "spool_dir": str(spool),
                    "spool_max_bytes": SPOOL_MAX_BYTES,
                    "request_timeout_seconds": 3,
                    "buffer": {"max_alerts": 50},
                }
            },
        },
    )


def consumed(proc: EventdProcess) -> float:
    return proc.metric("eventd_events_received_total", source=SOURCE)


def alive(proc: EventdProcess) -> bool:
    """``/healthz`` answers (readiness may never come: the spool can fill
    before the group is joined and ``/readyz`` first asked)."""
    try:
        return http_status(proc.url("/healthz")) == 200
    except OSError:
        return False


def test_a_full_spool_pauses_the_kafka_source_and_a_sigkill_then_loses_nothing(
    kafka_broker: KafkaBroker, private_kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    audit, alerts = kafka_broker, private_kafka_broker
    topic, group, alert_topic = unique_name("audit"), unique_name("paused"), unique_name("alerts")
    audit.create_topic(topic)
    alerts.stop()
    alerting = produce(audit.bootstrap, topic, tmp_path.name[-10:])
    spool = tmp_path / "spool"
    first = start(tmp_path / "first", spool, audit.bootstrap, topic, group, alerts.bootstrap, alert_topic)
    try:
        wait_until(lambda: alive(first), timeout=30, what="eventd answering", proc=first)
        # Full: the spool holds alerts and the durable sink takes nothing more
        # (``/readyz`` is also 503 before the group is joined: not enough alone).
        wait_until(
            lambda: (
                scrape(first).value("eventd_spool_bytes", sink="kafka") > SPOOL_MAX_BYTES / 2
                and http_status(first.url("/readyz")) == 503
            ),
            timeout=90,
            what="the spool full",
            proc=first,
        )
        # Paused: the count stands still for a while, well below the topic's events.
        seen = wait_still(
            lambda: consumed(first), still_seconds=STILL_SECONDS, timeout=60, what="the Kafka source"
        )
        assert 0 < seen < EVENTS / 2, f"the source read {seen} of {EVENTS} events past a full spool"
        assert_paused_by_a_full_spool(first, SPOOL_MAX_BYTES)
        first.proc.kill()  # stuck, with alerts in the spool and in the queues, offsets uncommitted
        first.kill()

        alerts.start()
        alerts.create_topic(alert_topic)
        second = start(
            tmp_path / "second", spool, audit.bootstrap, topic, group, alerts.bootstrap, alert_topic
        )
        try:
            expected = uuid_names(alerting)
            found = read_kafka_alerts(alerts.bootstrap, alert_topic, set(expected), timeout=120, quiet=1.0)
            unique = assert_uuid_set(found, expected, "alert topic after a full spool, SIGKILL and a restart")
            assert scrape(second).by("eventd_sink_dropped_total", "reason") == {}
            report(
                "Kafka source, spool full (48 KiB), alert cluster down, SIGKILL, restart",
                events=EVENTS,
                read_before_pause=int(seen),
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
