"""A full spool and a full disk while Kafka is down, under the explicit drop
policies (``spool_full_policy: drop_oldest|drop_newest``): drops are counted
exactly, eventd stays alive, and it recovers.  The default policy, ``block``,
loses nothing and pushes back instead: see ``test_backpressure.py``.

Two different limits:

* the spool's own bound (``spool_max_bytes``): with the broker down the spool
  keeps exactly as many alerts as fit and drops the rest by policy
  (``spool_full``), oldest or newest; when the broker returns, exactly the
  kept alerts are delivered;
* the file system itself: a 1 MiB tmpfs filled up by another file (the
  usual way a node's disk fills), or a file-size limit (``RLIMIT_FSIZE``,
  set on the running eventd with ``prlimit``) where mounting is not allowed.
  Every alert is then dropped as ``disk_full`` while eventd keeps running;
  once space returns new alerts are spooled again and delivered when the
  broker is back.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.accounting import (
    RULE,
    assert_uuid_set,
    assert_webhook_accounting,
    batches,
    expected_uuids,
    http_status,
    metric,
    read_kafka_alerts,
    scrape,
    send,
    start_webhook_to_kafka,
    wait_until,
)
from tests.faults.disks import FileSizeLimit, TmpfsDisk
from tests.support.daemon_process import EventdProcess
from tests.support.kafka_broker import KafkaBroker, unique_name

pytestmark = pytest.mark.timeout(120)

SPOOL_MAX_BYTES = 48 * 1024


def kafka_metric(proc: EventdProcess, name: str, **labels: str) -> float:
    return metric(proc, name, sink="kafka", **labels)


def handled(proc: EventdProcess) -> float:
    """Alerts the Kafka sink has finished with while the broker is down: each
    append either holds one more alert or counts one drop (of it, or of an
    older one), so this grows by exactly one per alert."""
    snap = scrape(proc)
    return snap.value("eventd_spool_alerts", sink="kafka") + snap.value(
        "eventd_sink_dropped_total", sink="kafka"
    )


# ------------------------------------------------------------ spool bound


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_a_full_spool_drops_exactly_the_overflow_by_policy_and_recovers(
    private_kafka_broker: KafkaBroker, tmp_path: Path, policy: str
) -> None:
    broker = private_kafka_broker
    broker.stop()
    topic = unique_name("faults-spool-full")
    proc, url = start_webhook_to_kafka(
        tmp_path,
        broker.bootstrap,
        topic,
        tmp_path / "spool",
        spool_max_bytes=SPOOL_MAX_BYTES,
        spool_full_policy=policy,
    )
    try:
        # Equal-size alerts (auditIDs of one length), many more than fit.
        sent = send(url, batches("full", count=20, alerting=10, invalid=1))
        order = [doc for batch in sent.batches for doc in batch.alerting]
        wait_until(
            lambda: handled(proc) == len(order), timeout=20, what="every alert spooled or dropped", proc=proc
        )
        snap = scrape(proc)
        kept = snap.value("eventd_spool_alerts", sink="kafka")
        size = snap.value("eventd_spool_bytes", sink="kafka")
        assert kept and size % kept == 0, "alerts of one size expected"
        capacity = SPOOL_MAX_BYTES // int(size // kept)
        assert kept == capacity < len(order)
        assert snap.by("eventd_sink_dropped_total", "reason", sink="kafka") == {
            "spool_full": len(order) - capacity
        }
        assert_webhook_accounting(snap, sent)
        assert proc.proc.poll() is None
        assert http_status(proc.url("/healthz")) == 200
        # A drop policy keeps taking input: ready (dropping was chosen).
        assert http_status(proc.url("/readyz")) == 200

        broker.start()
        broker.create_topic(topic)
        wait_until(
            lambda: kafka_metric(proc, "eventd_spool_alerts") == 0,
            timeout=30,
            what="the spool to drain",
            proc=proc,
        )
        survivors = order[-capacity:] if policy == "drop_oldest" else order[:capacity]
        assert_uuid_set(
            read_kafka_alerts(broker.bootstrap, topic, expected_uuids(survivors), idle=3),
            expected_uuids(survivors),
            f"Kafka after {policy}",
        )
        later = send(url, batches("later", count=2))
        wait_until(
            lambda: kafka_metric(proc, "eventd_sink_deliveries_total") == capacity + len(later.alerting),
            timeout=30,
            what="delivery after recovery",
            proc=proc,
        )
        assert http_status(proc.url("/readyz")) == 200
        assert proc.stop() == 0
    finally:
        proc.kill()


# ------------------------------------------------------------- disk full


def test_disk_full_drops_are_counted_eventd_survives_and_recovers(
    private_kafka_broker: KafkaBroker, tmp_path: Path, disk: TmpfsDisk | FileSizeLimit
) -> None:
    broker = private_kafka_broker
    broker.stop()
    topic = unique_name("faults-disk-full")
    proc, url = start_webhook_to_kafka(
        tmp_path,
        broker.bootstrap,
        topic,
        disk.spool_dir,
        log_level=disk.log_level,
        spool_full_policy="drop_oldest",
    )
    pid = proc.proc.pid
    try:
        disk.fill(pid)
        full = send(url, batches("disk", count=5, invalid=1))
        wait_until(
            lambda: handled(proc) == len(full.alerting),
            timeout=20,
            what="every alert spooled or dropped",
            proc=proc,
        )
        snap = scrape(proc)
        assert snap.by("eventd_sink_dropped_total", "reason", sink="kafka") == {
            "disk_full": len(full.alerting)
        }
        assert snap.value("eventd_spool_alerts", sink="kafka") == 0
        assert proc.proc.poll() is None
        assert http_status(proc.url("/healthz")) == 200

        disk.free(pid)
        room = send(url, batches("room", count=5, invalid=1))
        wait_until(
            lambda: kafka_metric(proc, "eventd_spool_alerts") == len(room.alerting),
            timeout=20,
            what="alerts spooled again",
            proc=proc,
        )
        broker.start()
        broker.create_topic(topic)
        wait_until(
            lambda: kafka_metric(proc, "eventd_spool_alerts") == 0,
            timeout=30,
            what="the spool to drain",
            proc=proc,
        )
        expected = expected_uuids(room.alerting)
        assert_uuid_set(read_kafka_alerts(broker.bootstrap, topic, expected, idle=3), expected, "Kafka")

        snap = scrape(proc)
        assert_webhook_accounting(snap, full + room)
        assert snap.value("eventd_alerts_total", rule=RULE) == len(full.alerting) + len(room.alerting)
        assert snap.by("eventd_sink_dropped_total", "reason") == {"disk_full": len(full.alerting)}
        assert proc.stop() == 0
    finally:
        proc.kill()


def test_space_the_spool_filled_returns_once_the_broker_drains_it(
    private_kafka_broker: KafkaBroker, tmp_path: Path, disk: TmpfsDisk | FileSizeLimit
) -> None:
    broker = private_kafka_broker
    broker.stop()
    topic = unique_name("faults-self-full")
    proc, url = start_webhook_to_kafka(
        tmp_path,
        broker.bootstrap,
        topic,
        disk.spool_dir,
        log_level=disk.log_level,
        spool_full_policy="drop_oldest",
    )
    try:
        disk.cap(proc.proc.pid)
        flood = send(url, batches("flood", count=40, alerting=40, quiet=0))
        wait_until(
            lambda: handled(proc) == len(flood.alerting),
            timeout=30,
            what="every alert spooled or dropped",
            proc=proc,
        )
        dropped = kafka_metric(proc, "eventd_sink_dropped_total", reason="disk_full")
        assert dropped > 0, "the spool never filled the disk: the scenario proves nothing"

        broker.start()
        broker.create_topic(topic)
        wait_until(
            lambda: kafka_metric(proc, "eventd_spool_alerts") == 0,
            timeout=30,
            what="the spool to drain",
            proc=proc,
        )
        delivered = kafka_metric(proc, "eventd_sink_deliveries_total")
        assert delivered == len(flood.alerting) - dropped

        later = send(url, batches("later", count=2))
        wait_until(
            lambda: (
                kafka_metric(proc, "eventd_sink_deliveries_total")
                + kafka_metric(proc, "eventd_sink_dropped_total", reason="disk_full")
                == delivered + dropped + len(later.alerting)
            ),
            timeout=30,
            what="the new alerts delivered or dropped",
            proc=proc,
        )
        assert proc.proc.poll() is None
        expected = expected_uuids(later.alerting)
        read = read_kafka_alerts(broker.bootstrap, topic, expected, idle=2)
        fresh = [a for a in read if a["eventd"]["audit_id"].startswith("later")]
        assert_uuid_set(fresh, expected, "Kafka, alerts sent after the spool drained")
    finally:
        proc.kill()
