"""The Kafka sink against a real Kafka-protocol broker (tansu), checked with an
independent client (confluent-kafka, partitions assigned directly).

Covers what falcosidekick gets wrong: keys, headers, routing, compression,
and no alert lost to a broker outage, a ``kill -9`` or a full disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from eventd.alerts import Alert
from eventd.config import ConfigError, KafkaRoute, KafkaSinkConfig
from eventd.metrics import Metrics
from eventd.priority import Priority
from eventd.sinks.kafka import KafkaSink
from eventd.sinks.spool import HEADER_SIZE
from tests.support.kafka_broker import KafkaBroker, free_port, unique_name
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
_UUIDS = uuid.UUID("0b6a4f0e-8f0c-4a57-9d55-2f4f3c1d9e21")


def make_alert(
    i: int,
    *,
    rule: str = "Terminal shell in container",
    priority: Priority = Priority.WARNING,
    namespace: str | None = "team-a",
    tags: tuple[str, ...] = ("k8s",),
    registry: str | None = "ghcr.io",
) -> Alert:
    images = [
        {"image": f"{registry}/acme/app:1.{i}", "registry": registry, "name": "acme/app", "tag": f"1.{i}"}
    ]
    return Alert(
        time_ns=1_700_000_000_000_000_000 + i,
        rule=rule,
        priority=priority,
        source="k8s_audit",
        output=f"shell opened (n={i})",
        output_fields={"n": i, "ka.user.name": "dev"},
        tags=tags,
        hostname="node-1",
        uuid=str(uuid.uuid5(_UUIDS, f"{rule}/{i}")),
        context={
            "namespace": namespace,
            "workload": f"deployments/web-{i % 2}",
            "images": images if registry else [],
        },
    )


def config(bootstrap: str, spool_dir: Path, **kwargs: Any) -> KafkaSinkConfig:
    kwargs.setdefault("topic", unique_name("alerts"))
    return KafkaSinkConfig(
        bootstrap_servers=(bootstrap,), spool_dir=spool_dir, request_timeout_seconds=2.0, **kwargs
    )


def make_sink(cfg: KafkaSinkConfig, metrics: Metrics, **kwargs: Any) -> KafkaSink:
    kwargs.setdefault("unhealthy_after", 0.5)
    return KafkaSink(cfg, metrics, backoff_initial=0.05, backoff_max=0.3, fsync_interval=0.2, **kwargs)


@asynccontextmanager
async def running(sink: KafkaSink) -> AsyncIterator[KafkaSink]:
    await sink.start()
    try:
        yield sink
    finally:
        await sink.close()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"sink": "kafka", **labels}) or 0


@dataclass(frozen=True)
class Message:
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]

    @property
    def uuid(self) -> str:
        return orjson.loads(self.value)["uuid"]


def read_messages(bootstrap: str, topic: str, expected: int, timeout: float = 10.0) -> list[Message]:
    """Every message in ``topic``, by partition and offset: at least ``expected``,
    then until the topic stays quiet (extra copies or strays would show).

    tansu's high watermark counts record batches, not records, so it cannot
    tell where a partition ends.
    """
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "eventd-sink-tests", "enable.auto.commit": False}
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        found: list[Message] = []
        deadline = time.monotonic() + timeout
        quiet = 0
        while (len(found) < expected and time.monotonic() < deadline) or (
            len(found) >= expected and quiet < 3
        ):
            msg = consumer.poll(0.1)
            if msg is None:
                quiet += 1
                continue
            assert msg.error() is None, msg.error()
            quiet = 0
            headers = dict(msg.headers() or [])
            found.append(Message(msg.partition(), msg.offset(), msg.key(), msg.value(), headers))
        assert len(found) >= expected, f"read {len(found)} of {expected} messages from {topic}"
        return sorted(found, key=lambda m: (m.partition, m.offset))
    finally:
        consumer.close()


def first_seen(messages: list[Message]) -> list[str]:
    """uuids in delivery order (one partition), duplicates of at-least-once removed."""
    seen: dict[str, None] = {}
    for message in messages:
        seen.setdefault(message.uuid)
    return list(seen)


# ------------------------------------------------------------- the message


@pytest.mark.asyncio
async def test_messages_have_keys_headers_json_and_follow_routes(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic, secrets, critical = (unique_name(n) for n in ("alerts", "secrets", "critical"))
    for name in (topic, secrets, critical):
        kafka_broker.create_topic(name, partitions=3)
    routes = (
        KafkaRoute(topic=secrets, rules=("Read secret",)),
        KafkaRoute(topic=critical, priorities=("critical",), tags=("mitre",)),
    )
    plain = [make_alert(i, namespace=("team-a", "team-b")[i % 2]) for i in range(12)]
    secret = make_alert(100, rule="Read secret", priority=Priority.CRITICAL, tags=("mitre",))
    crit = make_alert(101, priority=Priority.CRITICAL, tags=("mitre", "k8s"))
    crit_untagged = make_alert(102, priority=Priority.CRITICAL)
    no_namespace = make_alert(103, namespace=None)
    alerts = [*plain, secret, crit, crit_untagged, no_namespace]
    metrics = Metrics()
    async with running(
        make_sink(config(kafka_broker.bootstrap, tmp_path, topic=topic, routes=routes), metrics)
    ) as sink:
        for alert in alerts:
            await sink.send(alert)
        await sink.flush()
        assert sample(metrics, "eventd_sink_deliveries_total") == len(alerts)
        assert sample(metrics, "eventd_spool_alerts") == 0

    counts = {topic: len(alerts) - 2, secrets: 1, critical: 1}
    by_topic = {name: read_messages(kafka_broker.bootstrap, name, n) for name, n in counts.items()}
    assert [m.uuid for m in by_topic[secrets]] == [secret.uuid]  # the first matching route wins
    assert [m.uuid for m in by_topic[critical]] == [crit.uuid]
    assert sorted(m.uuid for m in by_topic[topic]) == sorted(
        a.uuid for a in [*plain, crit_untagged, no_namespace]
    )

    sent = {a.uuid: a for a in alerts}
    for message in (m for messages in by_topic.values() for m in messages):
        alert = sent[message.uuid]
        assert message.value == alert.to_json()
        doc = json.loads(message.value)
        assert {
            "uuid",
            "time",
            "rule",
            "priority",
            "source",
            "output",
            "output_fields",
            "tags",
            "eventd",
        } <= set(doc)
        assert message.key == (alert.context["namespace"].encode() if alert.context["namespace"] else None)
        assert message.headers == {
            "rule": alert.rule.encode(),
            "priority": alert.priority.label.encode(),
            "source": b"k8s_audit",
            "uuid": alert.uuid.encode(),
            "content-type": b"application/json",
        }
    # One key, one partition, in the order sent.
    for namespace in ("team-a", "team-b"):
        stream = [m for m in by_topic[topic] if m.key == namespace.encode()]
        assert len({m.partition for m in stream}) == 1
        expected = [a.uuid for a in (*plain, crit_untagged) if a.context["namespace"] == namespace]
        assert [m.uuid for m in stream] == expected


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("workload", b"deployments/web-1"),
        ("registry", b"quay.io"),
        ("rule", b"Terminal shell in container"),
        ("none", None),
    ],
)
async def test_message_key_choices(
    kafka_broker: KafkaBroker, tmp_path: Path, key: str, expected: bytes | None
) -> None:
    cfg = config(kafka_broker.bootstrap, tmp_path, key=key)
    async with running(make_sink(cfg, Metrics())) as sink:
        await sink.send(make_alert(1, registry="quay.io"))
        await sink.flush()
    [message] = read_messages(kafka_broker.bootstrap, cfg.topic, 1)
    assert message.key == expected


@pytest.mark.asyncio
@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_every_compression_codec_round_trips(
    kafka_broker: KafkaBroker, tmp_path: Path, codec: str
) -> None:
    cfg = config(kafka_broker.bootstrap, tmp_path, compression=codec)
    alerts = [make_alert(i) for i in range(30)]
    async with running(make_sink(cfg, Metrics())) as sink:
        for alert in alerts:
            await sink.send(alert)
        await sink.flush()
    messages = read_messages(kafka_broker.bootstrap, cfg.topic, len(alerts))
    assert [m.value for m in messages] == [a.to_json() for a in alerts]


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key"):
        KafkaSink(config("127.0.0.1:9", tmp_path, key="pod"), Metrics())
    with pytest.raises(ConfigError, match=r"routes\[0\]\.priorities"):
        KafkaSink(
            config("127.0.0.1:9", tmp_path, routes=(KafkaRoute(topic="x", priorities=("loud",)),)), Metrics()
        )
    with pytest.raises(ConfigError, match=r"routes\[0\]\.topic"):
        KafkaSink(config("127.0.0.1:9", tmp_path, routes=(KafkaRoute(topic="no spaces"),)), Metrics())
    with pytest.raises(ConfigError, match="bootstrap_servers"):
        KafkaSink(KafkaSinkConfig(spool_dir=tmp_path), Metrics())


@pytest.mark.asyncio
async def test_an_alert_too_large_for_kafka_is_dropped_not_retried_forever(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    cfg = config(kafka_broker.bootstrap, tmp_path)
    huge = make_alert(0)
    huge.output_fields["blob"] = "x" * (2 << 20)  # over aiokafka's max_request_size
    after = make_alert(1)
    metrics = Metrics()
    async with running(make_sink(cfg, metrics)) as sink:
        await sink.send(huge)
        await sink.send(after)
        await sink.flush()
        assert sink.healthy()
    assert sample(metrics, "eventd_sink_dropped_total", reason="too_large") == 1
    assert sample(metrics, "eventd_sink_deliveries_total") == 1
    assert [m.uuid for m in read_messages(kafka_broker.bootstrap, cfg.topic, 1)] == [after.uuid]


# ------------------------------------------------------------- no loss


@pytest.mark.asyncio
async def test_broker_outage_loses_nothing(private_kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    broker = private_kafka_broker
    cfg = config(broker.bootstrap, tmp_path)
    broker.create_topic(cfg.topic)
    metrics = Metrics()
    async with running(make_sink(cfg, metrics)) as sink:
        for i in range(20):
            await sink.send(make_alert(i))
        await sink.flush()
        assert sample(metrics, "eventd_sink_deliveries_total") == 20

        broker.stop()
        during = [make_alert(i) for i in range(20, 50)]
        for alert in during:
            await sink.send(alert)
        await wait_until(lambda: not sink.healthy())
        assert sample(metrics, "eventd_spool_alerts") == 30
        await asyncio.wait_for(sink.flush(), 5)  # returns: the spool holds them durably
        assert sample(metrics, "eventd_sink_deliveries_total") == 20

        # The in-memory broker comes back empty: only what follows is readable.
        broker.start()
        broker.create_topic(cfg.topic)
        after = [make_alert(i) for i in range(50, 60)]
        for alert in after:
            await sink.send(alert)
        await wait_until(lambda: sample(metrics, "eventd_spool_alerts") == 0)
        assert sink.healthy()
        assert sample(metrics, "eventd_sink_deliveries_total") >= 60
        assert (
            sum(s.value for s in metrics.sink_failures.collect()[0].samples if s.name.endswith("_total")) >= 1
        )
        assert sample(metrics, "eventd_sink_retries_total") >= 1

    messages = read_messages(broker.bootstrap, cfg.topic, len(during + after))
    assert first_seen(messages) == [a.uuid for a in during + after]


_SINK_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, resource, sys
    from pathlib import Path
    from eventd.metrics import Metrics
    from eventd.sinks.kafka import KafkaSink
    from tests.test_sink_kafka import config, make_alert, make_sink, sample

    mode, bootstrap, spool_dir, topic = sys.argv[1:5]

    async def main():
        metrics = Metrics()
        policy = "drop_oldest" if mode == "disk_full_drop" else "block"
        cfg = config(bootstrap, Path(spool_dir), topic=topic, spool_full_policy=policy)
        sink = make_sink(cfg, metrics, unhealthy_after=3600)
        await sink.start()
        if mode == "pile":  # no broker: everything stays in the spool
            for i in range(40):
                await sink.send(make_alert(i))
            print("spooled", flush=True)
            await asyncio.sleep(60)
        for i in range(5):
            await sink.send(make_alert(i))
        await sink.flush()
        used = max(p.stat().st_size for p in Path(spool_dir).glob("*.seg"))
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (used + 50, hard))  # the disk is full
        for i in range(5, 10):
            await sink.send(make_alert(i))
        healthy_while_full = sink.healthy()
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        for i in range(10, 15):
            await sink.send(make_alert(i))
        await sink.flush()
        result = {
            "disk_full": sample(metrics, "eventd_sink_dropped_total", reason="disk_full"),
            "blocked": sample(metrics, "eventd_sink_failures_total", reason="disk_full"),
            "deliveries": sample(metrics, "eventd_sink_deliveries_total"),
            "healthy": [healthy_while_full, sink.healthy()],
        }
        await sink.close()
        print(json.dumps(result), flush=True)

    asyncio.run(main())
    """
)


def run_sink_script(mode: str, bootstrap: str, spool_dir: Path, topic: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _SINK_SCRIPT, mode, bootstrap, str(spool_dir), topic],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.asyncio
async def test_kill_9_then_the_spool_drains_on_the_next_start(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = unique_name("alerts")
    proc = run_sink_script("pile", f"127.0.0.1:{free_port()}", tmp_path, topic)
    try:
        assert proc.stdout is not None
        stdout = proc.stdout

        def wait_for_spooled() -> bool:  # stdout also carries the sink's logs
            return any(line.strip() == "spooled" for line in stdout)

        assert await asyncio.wait_for(asyncio.to_thread(wait_for_spooled), 30)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()

    kafka_broker.create_topic(topic)
    metrics = Metrics()
    async with running(make_sink(config(kafka_broker.bootstrap, tmp_path, topic=topic), metrics)) as sink:
        assert sample(metrics, "eventd_spool_alerts") == 40
        await sink.flush()
        assert sample(metrics, "eventd_sink_deliveries_total") == 40
    messages = read_messages(kafka_broker.bootstrap, topic, 40)
    assert [m.uuid for m in messages] == [make_alert(i).uuid for i in range(40)]


@pytest.mark.asyncio
async def test_disk_full_blocks_then_stores_everything(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    """The default ``block`` policy: a file-size limit in the sink's process
    makes spool writes fail like ENOSPC; the append waits instead of dropping,
    the spool seals the full segment (everything in it is acknowledged) and
    the retry lands in a new one: all 15 alerts are delivered, in order."""
    topic = unique_name("alerts")
    kafka_broker.create_topic(topic)
    proc = run_sink_script("disk_full", kafka_broker.bootstrap, tmp_path, topic)
    out, _ = await asyncio.wait_for(asyncio.to_thread(proc.communicate), 60)
    assert proc.returncode == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"disk_full": 0, "blocked": 1, "deliveries": 15, "healthy": [True, True]}
    messages = read_messages(kafka_broker.bootstrap, topic, 15)
    assert [m.uuid for m in messages] == [make_alert(i).uuid for i in range(15)]


@pytest.mark.asyncio
async def test_disk_full_drops_counted_and_the_sink_recovers(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """``spool_full_policy: drop_oldest``: dropping is an explicit choice, counted."""
    topic = unique_name("alerts")
    kafka_broker.create_topic(topic)
    proc = run_sink_script("disk_full_drop", kafka_broker.bootstrap, tmp_path, topic)
    out, _ = await asyncio.wait_for(asyncio.to_thread(proc.communicate), 60)
    assert proc.returncode == 0
    result = json.loads(out.strip().splitlines()[-1])
    # Alert 5 hits the limit and is dropped; the spool then holds nothing
    # unacknowledged, so it seals the full segment and starts a new file,
    # which gives the space back: alerts 6 to 14 are stored and delivered.
    assert result == {"disk_full": 1, "blocked": 0, "deliveries": 14, "healthy": [True, True]}
    messages = read_messages(kafka_broker.bootstrap, topic, 14)
    assert [m.uuid for m in messages] == [make_alert(i).uuid for i in (*range(5), *range(6, 15))]


@pytest.mark.asyncio
async def test_unhealthy_when_the_spool_is_nearly_full(tmp_path: Path) -> None:
    alert = make_alert(0)
    record = HEADER_SIZE + len(alert.to_json())
    cfg = config(f"127.0.0.1:{free_port()}", tmp_path, spool_max_bytes=10 * record)
    async with running(make_sink(cfg, Metrics(), unhealthy_after=3600)) as sink:
        for _ in range(9):
            await sink.send(alert)
        assert sink.healthy()
        await sink.send(alert)
        assert not sink.healthy()
