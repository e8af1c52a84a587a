"""Exactly-once mode (``sources.kafka.exactly_once``): what can be tested here.

The only Kafka broker that runs on these machines (tansu's in-memory store)
refuses idempotent and transactional producers (``InitProducerId``), so
the transaction that commits alerts and offsets together is not exercised
against a broker that accepts it.  What is tested, against that real broker:

* the config check: exactly-once needs a Kafka sink on the same cluster
  with ``acks: all``, and says so naming the key;
* a broker that refuses transactions loses nothing: no offset is
  committed, no alert is visible, the failure is counted, eventd keeps
  running; the same group then run without exactly-once delivers every
  alert;
* the ordering guard: after a failed transaction the later ones of the same
  consumer generation are refused without being tried, a new generation
  tries again, and a batch from before a rebalance is never committed.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from aiokafka import TopicPartition
from confluent_kafka import Producer

from eventd.config import Config, ConfigError, KafkaSinkConfig, build
from eventd.daemon import check_exactly_once
from eventd.kafka_client import ConsumedOffsets, client_options
from eventd.metrics import Metrics
from eventd.sinks.kafka import KafkaSink, Router
from eventd.sinks.kafka_transactions import TransactionalDelivery, TransactionRefused
from tests.faults.accounting import (
    ALERT_NS,
    QUIET_NS,
    assert_uuid_set,
    audit_doc,
    read_kafka_alerts,
    start_kafka_to_kafka,
    uuid_names,
    wait_until,
)
from tests.support.daemon_process import EventdProcess
from tests.support.http_receiver import sample_alert
from tests.support.kafka_broker import KafkaBroker, unique_name

pytestmark = pytest.mark.timeout(180)


def config_with(source: dict, sink: dict | None) -> Config:
    data: dict = {"sources": {"kafka": {"topics": ["audit"], "exactly_once": True, **source}}}
    if sink is not None:
        data["sinks"] = {"kafka": sink}
    return build(Config, data, "")


@pytest.mark.parametrize(
    ("source", "sink", "why"),
    [
        ({"bootstrap_servers": ["k:9092"]}, None, "needs sinks.kafka"),
        ({"bootstrap_servers": ["k:9092"]}, {"bootstrap_servers": ["other:9092"]}, "same cluster"),
        ({"bootstrap_servers": ["k:9092"]}, {"bootstrap_servers": ["k:9092"], "acks": "1"}, "acks: all"),
    ],
)
def test_exactly_once_needs_a_kafka_sink_on_the_same_cluster(
    source: dict, sink: dict | None, why: str
) -> None:
    with pytest.raises(ConfigError, match=rf"sources\.kafka\.exactly_once: .*{why}"):
        check_exactly_once(config_with(source, sink))


def test_a_matching_sink_is_accepted() -> None:
    check_exactly_once(
        config_with({"bootstrap_servers": ["a:1", "b:2"]}, {"bootstrap_servers": ["b:2", "a:1"]})
    )


def _delivery(broker: KafkaBroker, metrics: Metrics) -> TransactionalDelivery:
    cfg = KafkaSinkConfig(bootstrap_servers=(broker.bootstrap,), topic=unique_name("alerts"))
    return TransactionalDelivery(
        lambda: {
            **client_options(cfg.bootstrap_servers, None, None, key=KafkaSink.config_key),
            "request_timeout_ms": 3000,
        },
        Router(cfg, KafkaSink.config_key).message,
        unique_name("eventd-test"),
        metrics,
        "kafka",
    )


def _consumed(generation: int, current: bool = True) -> ConsumedOffsets:
    return ConsumedOffsets("g", {TopicPartition("audit", 0): 10}, generation, lambda: current)


def failures(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "eventd_sink_failures_total", {"sink": "kafka", "reason": "transaction"}
    )
    return value or 0.0


@pytest.mark.asyncio
async def test_after_a_failed_transaction_its_generation_is_refused_untried(
    kafka_broker: KafkaBroker,
) -> None:
    metrics = Metrics()
    delivery = _delivery(kafka_broker, metrics)
    try:
        with pytest.raises(Exception) as first:  # the broker refuses transactional producers
            await delivery.deliver([sample_alert()], _consumed(1))
        assert not isinstance(first.value, TransactionRefused)
        assert failures(metrics) == 1
        with pytest.raises(TransactionRefused, match="generation 1"):
            await delivery.deliver([sample_alert()], _consumed(1))
        assert failures(metrics) == 1, "a refused transaction must not even be tried"
        with pytest.raises(TransactionRefused, match="reassigned"):
            await delivery.deliver([sample_alert()], _consumed(2, current=False))
        with pytest.raises(Exception) as again:  # a new generation is tried again
            await delivery.deliver([sample_alert()], _consumed(2))
        assert not isinstance(again.value, TransactionRefused)
        assert failures(metrics) == 2
    finally:
        await delivery.close()


def replica(
    run_dir: Path, broker: KafkaBroker, topic: str, group: str, alerts: str, exactly_once: bool
) -> EventdProcess:
    bootstrap = broker.bootstrap
    return start_kafka_to_kafka(
        run_dir,
        bootstrap,
        topic,
        group,
        bootstrap,
        alerts,
        session_timeout_seconds=3,
        exactly_once=exactly_once,
    )


def refused_transactions(proc: EventdProcess) -> float:
    try:
        return proc.metric("eventd_sink_failures_total", sink="kafka", reason="transaction")
    except OSError:  # not listening yet
        return 0.0


def test_a_broker_without_transactions_loses_nothing(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    topic, group, alerts = unique_name("audit"), unique_name("eos"), unique_name("alerts")
    kafka_broker.create_topic(topic, 2)
    kafka_broker.create_topic(alerts)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    alerting = []
    for i in range(40):
        doc = audit_doc(f"eos-{i:04d}", ALERT_NS if i % 2 else QUIET_NS)
        if i % 2:
            alerting.append(doc)
        producer.produce(topic, orjson.dumps(doc), key=str(i).encode())
    assert producer.flush(10) == 0

    proc = replica(tmp_path / "eos", kafka_broker, topic, group, alerts, exactly_once=True)
    try:
        wait_until(
            lambda: refused_transactions(proc) >= 2,
            timeout=60,
            what="transactions tried and refused by the broker",
            proc=proc,
        )
        assert proc.proc.poll() is None
        assert kafka_broker.committed(group, topic, 2) == {0: None, 1: None}, (
            "offsets committed without alerts"
        )
        assert proc.metric("eventd_sink_deliveries_total", sink="kafka") == 0
    finally:
        proc.kill()

    # The same group without exactly-once: every alert, since nothing was committed.
    proc = replica(tmp_path / "alo", kafka_broker, topic, group, alerts, exactly_once=False)
    try:
        expected = uuid_names(alerting)
        found = read_kafka_alerts(kafka_broker.bootstrap, alerts, set(expected), timeout=60)
        assert_uuid_set(found, expected, "alert topic after falling back to at-least-once")
    finally:
        proc.kill()
