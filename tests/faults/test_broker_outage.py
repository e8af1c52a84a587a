"""Kafka goes away while alerts flow, and comes back: not one alert is lost.

eventd (audit webhook in, Kafka and stdout out) takes a steady stream of
batches; the broker is killed mid-stream and restarted a little later.  The
broker keeps its data in memory, so what it held before the kill is gone
after the restart: alerts delivered before the outage are read back before
it, everything after from the restarted broker.  Meanwhile the spool must
fill (the alerts wait on disk) and drain back to zero.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.accounting import (
    RULE,
    Poster,
    assert_uuid_set,
    assert_webhook_accounting,
    batches,
    expected_uuids,
    metric,
    read_kafka_alerts,
    scrape,
    send,
    start_webhook_to_kafka,
    wait_until,
)
from tests.support.kafka_broker import KafkaBroker, unique_name

pytestmark = pytest.mark.timeout(120)


def test_broker_outage_mid_stream_loses_no_alert(private_kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    broker = private_kafka_broker
    topic = unique_name("faults-outage")
    broker.create_topic(topic)
    proc, url = start_webhook_to_kafka(tmp_path, broker.bootstrap, topic, tmp_path / "spool", stdout=True)

    def kafka(name: str, **labels: str) -> float:
        return metric(proc, name, sink="kafka", **labels)

    try:
        # 1. The broker is up: alerts go through, and are read back before the outage.
        before = send(url, batches("before", count=10, invalid=1))
        before_uuids = expected_uuids(before.alerting)
        wait_until(
            lambda: kafka("eventd_sink_deliveries_total") == len(before_uuids),
            timeout=20,
            what="deliveries before the outage",
            proc=proc,
        )
        assert_uuid_set(
            read_kafka_alerts(broker.bootstrap, topic, before_uuids), before_uuids, "Kafka before the outage"
        )

        # 2. The broker dies while batches keep coming: they wait in the spool.
        broker.stop()
        poster = Poster(url, batches("during", invalid=1), pause=0.01).start()
        wait_until(
            lambda: kafka("eventd_sink_failures_total") >= 2 and kafka("eventd_spool_alerts") >= 40,
            timeout=20,
            what="alerts piling up in the spool",
            proc=proc,
        )
        assert kafka("eventd_spool_bytes") > 0
        assert kafka("eventd_sink_deliveries_total") == len(before_uuids)

        # 3. The broker is back (empty) while batches still come: the spool drains.
        broker.start()
        broker.create_topic(topic)
        wait_until(
            lambda: kafka("eventd_sink_deliveries_total") > len(before_uuids),
            timeout=30,
            what="deliveries after the restart",
            proc=proc,
        )
        after = poster.finish()
        after_uuids = expected_uuids(after.alerting)
        wait_until(
            lambda: kafka("eventd_spool_alerts") == 0 and kafka("eventd_spool_bytes") == 0,
            timeout=30,
            what="the spool to drain",
            proc=proc,
        )

        assert_uuid_set(
            read_kafka_alerts(broker.bootstrap, topic, after_uuids), after_uuids, "Kafka after the restart"
        )
        everything = before_uuids | after_uuids
        wait_until(lambda: len(proc.alerts) >= len(everything), timeout=10, what="stdout alerts", proc=proc)
        assert_uuid_set(proc.alerts, everything, "stdout")

        snap = scrape(proc)
        assert_webhook_accounting(snap, before + after)
        assert snap.value("eventd_alerts_total", rule=RULE) == len(everything)
        assert snap.value("eventd_alerts_total") == len(everything)
        assert snap.value("eventd_sink_dropped_total") == 0
        assert snap.value("eventd_sink_deliveries_total", sink="kafka") >= len(everything)
        assert snap.value("eventd_sink_retries_total", sink="kafka") >= 1
        assert not poster.unacknowledged
        assert proc.stop() == 0
    finally:
        proc.kill()
