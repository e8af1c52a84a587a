"""Scale-out over Kafka: a replica that disappears for good loses nothing.

Two eventd replicas share one consumer group on a 4-partition audit topic
and send alerts to a second Kafka cluster.  A replica's spool lives on an
``emptyDir``: when the pod is deleted (scale-in, node loss, eviction), the
spool goes with it.  So a replica may commit its input offsets only once
the alerts of those records are acknowledged by the alert cluster, not when
they are merely in its spool; then the records of a replica that vanished
are re-read by the other one.

* SIGKILL, never restarted, at a random moment, while the alert cluster is
  down (so the victim's spool certainly holds alerts that are not
  delivered): the survivor takes the victim's partitions over and every
  expected alert reaches the alert topic.  Several rounds.
* SIGTERM (scale-in), with the alert cluster up or down: the replica stops
  fetching, drains what it can within its grace period, commits what was
  delivered and exits; its spool directory is then deleted, as Kubernetes
  does with an emptyDir, and still nothing is lost.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from eventd.config import KafkaSinkConfig
from eventd.metrics import Metrics
from eventd.sinks.spool import Spool
from tests.faults.accounting import (
    ALERT_NS,
    QUIET_NS,
    assert_uuid_set,
    audit_doc,
    read_kafka_alerts,
    report,
    start_kafka_to_kafka,
    uuid_names,
    wait_until,
)
from tests.support.daemon_process import EventdProcess
from tests.support.kafka_broker import KafkaBroker, unique_name

pytestmark = pytest.mark.timeout(300)

PARTITIONS = 4
SESSION_SECONDS = 3


class Stream(threading.Thread):
    """Produces audit events to the audit topic for a while (keyed, so every
    partition gets some), remembering the alerting ones."""

    def __init__(self, bootstrap: str, topic: str, tag: str, count: int, interval: float = 0.01) -> None:
        super().__init__(name="audit-stream", daemon=True)
        self.bootstrap, self.topic, self.tag = bootstrap, topic, tag
        self.count, self.interval = count, interval
        self.alerting: list[dict[str, Any]] = []

    def run(self) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": False})
        for i in range(self.count):
            alerting = i % 2 == 0
            doc = audit_doc(f"{self.tag}-{i:06d}", ALERT_NS if alerting else QUIET_NS)
            if alerting:
                self.alerting.append(doc)
            producer.produce(self.topic, orjson.dumps(doc), key=str(i).encode())
            producer.poll(0)
            time.sleep(self.interval)
        assert producer.flush(30) == 0, "audit events not produced"


def replica(
    run_dir: Path, audit: KafkaBroker, topic: str, group: str, alerts: KafkaBroker, alert_topic: str
) -> EventdProcess:
    return start_kafka_to_kafka(
        run_dir,
        audit.bootstrap,
        topic,
        group,
        alerts.bootstrap,
        alert_topic,
        session_timeout_seconds=SESSION_SECONDS,
        drain_timeout_seconds=4,  # below the default shutdown grace (20 s), as in the overlay
        max_batch=50,
    )


def spool_depth(directory: Path) -> int:
    """Unacknowledged alerts left in a dead replica's spool."""
    spool = Spool(directory, KafkaSinkConfig().spool_max_bytes, "block", Metrics(), "kafka")
    try:
        return spool.depth
    finally:
        spool.close()


def consumed(proc: EventdProcess) -> float:
    return proc.metric("eventd_events_received_total", source="kafka")


def run_round(
    tmp_path: Path, audit: KafkaBroker, alerts: KafkaBroker, rng: random.Random, *, how: str
) -> tuple[list[dict[str, Any]], dict[str, str], str]:
    """One scenario; returns the alerts read back, the expected uuids, and a label."""
    topic, group, alert_topic = unique_name("audit"), unique_name("replicas"), unique_name("alerts")
    audit.create_topic(topic, PARTITIONS)
    if how == "sigterm-alerts-up":
        alerts.create_topic(alert_topic)
    else:
        alerts.stop()  # the victim's spool will hold undelivered alerts
    victim = replica(tmp_path / "victim", audit, topic, group, alerts, alert_topic)
    survivor = replica(tmp_path / "survivor", audit, topic, group, alerts, alert_topic)
    stream = Stream(audit.bootstrap, topic, tmp_path.name[-12:], count=400)
    try:
        wait_until(lambda: "kafka_partitions_assigned" in victim.stderr(), timeout=30, what="victim joined")
        wait_until(
            lambda: "kafka_partitions_assigned" in survivor.stderr(), timeout=30, what="survivor joined"
        )
        stream.start()
        wait_until(lambda: consumed(victim) > 20, timeout=30, what="the victim consuming", proc=victim)
        time.sleep(rng.uniform(0.0, 2.0))  # a random moment, mid-stream
        if how == "sigkill":
            victim.proc.kill()
            victim.kill()
        else:
            code = victim.stop(timeout=30)
            assert code in (0, 1), f"victim exited {code}"
            if how == "sigterm-alerts-up":
                assert code == 0, "with the alert cluster up, scale-in must drain within the grace period"
                assert spool_depth(tmp_path / "victim" / "spool") == 0, "undelivered alerts left in the spool"
        shutil.rmtree(tmp_path / "victim" / "spool")  # the emptyDir goes with the pod
        stream.join(60)
        if not alerts.running:
            alerts.start()
            alerts.create_topic(alert_topic)
        expected = uuid_names(stream.alerting)
        found = read_kafka_alerts(alerts.bootstrap, alert_topic, set(expected), timeout=90, quiet=1.0)
        return found, expected, how
    finally:
        victim.kill()
        survivor.kill()


@pytest.mark.parametrize("how", ["sigkill", "sigterm-alerts-up", "sigterm-alerts-down"])
def test_a_replica_that_disappears_for_good_loses_nothing(
    kafka_broker: KafkaBroker, private_kafka_broker: KafkaBroker, tmp_path: Path, how: str
) -> None:
    alert_cluster = private_kafka_broker  # alerts go to a cluster of their own, which can fail alone
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    rounds = 2 if how == "sigkill" else 1
    for round_ in range(rounds):
        found, expected, label = run_round(
            tmp_path / f"round{round_}", kafka_broker, alert_cluster, rng, how=how
        )
        unique = assert_uuid_set(found, expected, f"alert topic after {label}, round {round_} (seed {seed})")
        report(
            f"two replicas, {label}, round {round_}",
            audit_events=400,
            alerts_expected=len(expected),
            alerts_delivered=len(unique),
            copies=len(found) - len(unique),
            lost=len(set(expected) - unique.keys()),
        )


def test_a_replica_joining_mid_stream_loses_nothing(
    kafka_broker: KafkaBroker, private_kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """Scale-out: a second replica joins the group while the first is busy,
    so the group rebalances and takes partitions from it mid-stream.  Before
    giving a partition up, the first waits for its in-flight batches and
    commits what was delivered (``sources/kafka.py``, ``_hand_back``); the
    newcomer starts from that commit.  Every expected alert arrives; a
    record read by both (processed, not yet committed) only adds a copy with
    the same uuid.  Then a second rebalance (the newcomer leaves) hands its
    partitions back, again without loss."""
    audit, alerts = kafka_broker, private_kafka_broker
    topic, group, alert_topic = unique_name("audit"), unique_name("joiners"), unique_name("alerts")
    audit.create_topic(topic, PARTITIONS)
    alerts.create_topic(alert_topic)
    first = replica(tmp_path / "first", audit, topic, group, alerts, alert_topic)
    stream = Stream(audit.bootstrap, topic, tmp_path.name[-12:], count=2000, interval=0.005)
    joiner = None
    try:
        wait_until(lambda: "kafka_partitions_assigned" in first.stderr(), timeout=30, what="first joined")
        stream.start()
        wait_until(lambda: consumed(first) > 50, timeout=30, what="the first consuming", proc=first)
        joiner = replica(tmp_path / "joiner", audit, topic, group, alerts, alert_topic)
        wait_until(
            lambda: "kafka_partitions_assigned" in joiner.stderr(),
            timeout=30,
            what="joiner joined",
            proc=joiner,
        )
        wait_until(lambda: consumed(joiner) > 0, timeout=30, what="the joiner consuming", proc=joiner)
        joiner_events = consumed(joiner)
        assert joiner.stop(timeout=30) == 0, "the joiner must leave cleanly"
        stream.join(60)
        expected = uuid_names(stream.alerting)
        found = read_kafka_alerts(alerts.bootstrap, alert_topic, set(expected), timeout=90, quiet=1.0)
        unique = assert_uuid_set(found, expected, "alert topic after a replica joined and left")
        report(
            "two replicas, one joins mid-stream then leaves",
            audit_events=2000,
            alerts_expected=len(expected),
            alerts_delivered=len(unique),
            copies=len(found) - len(unique),
            joiner_events_before_leaving=int(joiner_events),
        )
    finally:
        first.kill()
        if joiner is not None:
            joiner.kill()
