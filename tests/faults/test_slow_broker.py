"""A slow, flaky network between eventd and Kafka: slower, never lossy, bounded memory.

``tcp_proxy`` sits between eventd's Kafka sink and the broker, adding
latency, throttling bandwidth and cutting every connection periodically.
The broker advertises the proxy's address, so the connections clients open
after reading the cluster metadata go through the proxy too (a transparent
middlebox, like a load balancer in front of a real cluster).

Throughput must degrade (alerts back up in the spool, deliveries fail and
are retried), nothing may be lost (the uuid set read back is exactly the
expected one) and eventd's memory must stay bounded while the backlog sits
on disk.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
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
    rss_bytes,
    scrape,
    start_webhook_to_kafka,
    wait_until,
)
from tests.faults.tcp_proxy import ProxyThread
from tests.support.daemon_process import free_port
from tests.support.kafka_broker import KafkaBroker, unique_name

pytestmark = pytest.mark.timeout(150)

#: Generous: eventd idles at ~60 MiB; a backlog kept in memory would blow far past it.
RSS_LIMIT = 300 * 1024 * 1024


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[tuple[KafkaBroker, ProxyThread]]:
    """A private broker reachable only through a proxy (it advertises the proxy)."""
    proxy_port = free_port()
    broker = KafkaBroker(tmp_path / "tansu.log", advertised_port=proxy_port)
    broker.start()
    try:
        with ProxyThread("127.0.0.1", broker.port, port=proxy_port) as proxy:
            yield broker, proxy
    finally:
        broker.stop()


class RssSampler(threading.Thread):
    """Samples a process's RSS until stopped; ``peak`` is the highest seen."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
                self.samples += 1
            except (OSError, AssertionError):
                return  # the process is gone; the test notices that itself
            self._halt.wait(self.interval)

    def finish(self) -> int:
        self._halt.set()
        self.join(5)
        return self.peak


def test_latency_throttling_and_cuts_lose_nothing_and_memory_stays_bounded(
    proxied_broker: tuple[KafkaBroker, ProxyThread], tmp_path: Path
) -> None:
    broker, proxy = proxied_broker
    topic = unique_name("faults-slow")
    broker.create_topic(topic)
    proc, url = start_webhook_to_kafka(
        tmp_path, proxy.address, topic, tmp_path / "spool", request_timeout_seconds=5
    )
    sampler = RssSampler(proc.proc.pid)
    sampler.start()

    def kafka(name: str) -> float:
        return metric(proc, name, sink="kafka")

    try:
        # Each produce request waits two latencies: the sink's throughput
        # drops to a few hundred KiB/s, and every connection dies each second.
        proxy.set_faults(latency=0.02, bytes_per_second=2 * 1024 * 1024)
        proxy.cut_every(1.0)
        # Two concurrent senders, like the API server's goroutines; big batches.
        posters = [
            Poster(url, batches(f"slow{n}", count=25, alerting=40, quiet=10, invalid=1)).start()
            for n in range(2)
        ]
        spool_peak = 0.0

        def backed_up() -> bool:
            nonlocal spool_peak
            spool_peak = max(spool_peak, kafka("eventd_spool_alerts"))
            return spool_peak >= 200 and proxy.stats.cut >= 2

        wait_until(backed_up, timeout=60, what="a backlog and cut connections", proc=proc)
        sent = posters[0].finish() + posters[1].finish()
        expected = expected_uuids(sent.alerting)

        # The backlog drains through the same bad network.
        wait_until(
            lambda: kafka("eventd_spool_alerts") == 0, timeout=60, what="the spool to drain", proc=proc
        )
        peak = sampler.finish()
        proxy.clear_faults()
        assert sampler.samples > 10
        assert peak < RSS_LIMIT, f"eventd's RSS reached {peak / 2**20:.0f} MiB"

        assert_uuid_set(
            read_kafka_alerts(broker.bootstrap, topic, expected), expected, "Kafka through the proxy"
        )
        snap = scrape(proc)
        assert_webhook_accounting(snap, sent)
        assert snap.value("eventd_alerts_total", rule=RULE) == len(expected)
        assert snap.value("eventd_sink_deliveries_total", sink="kafka") >= len(expected)
        assert proxy.stats.accepted > proxy.stats.cut >= 2  # eventd reconnected after cuts
        assert snap.value("eventd_sink_dropped_total") == 0
        assert proc.stop() == 0
    finally:
        sampler.finish()
        proc.kill()
