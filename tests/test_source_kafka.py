"""KafkaSource against a real Kafka-protocol broker: decoding, commits, groups, faults."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from eventd.config import ClientTLS, ConfigError, KafkaSASL, KafkaSourceConfig
from eventd.events.errors import DecodeError
from eventd.events.model import FALCO, K8S_AUDIT, Event
from eventd.kafka_client import client_options
from eventd.metrics import Metrics
from eventd.sources.base import Batch
from eventd.sources.kafka import KafkaSource
from tests.support.builders import audit_event, falco_alert
from tests.support.kafka_broker import KafkaBroker, free_port, unique_name
from tests.support.tls_certs import make_tls_files

#: Short group sessions: this broker holds a join for half of it.
SESSION = 2.0


class RecordingInlet:
    """Records batches; resolves ``done`` at once unless ``hold`` is set.

    With ``room``, ``put`` takes that many batches, then waits on ``gate``
    (a full pipeline pushing back).
    """

    def __init__(self, hold: bool = False, room: int | None = None) -> None:
        self.hold = hold
        self.room = room
        self.gate = asyncio.Event()
        self.batches: list[Batch] = []
        self.reasons: list[str] = []

    async def put(self, batch: Batch) -> None:
        self.batches.append(batch)
        if self.room is not None and len(self.batches) > self.room:
            await self.gate.wait()
        if not self.hold:
            self.release()

    def offer(self, batch: Batch) -> bool:
        raise AssertionError("the Kafka source must wait for room, never offer")

    def rejected(self, source: str, error: DecodeError | str, count: int = 1) -> None:
        assert source == "kafka"
        self.reasons += [error.reason if isinstance(error, DecodeError) else error] * count

    def release(self) -> None:
        for batch in self.batches:
            if batch.done is not None and not batch.done.done():
                batch.done.set_result(None)

    @property
    def events(self) -> list[Event]:
        return [event for batch in self.batches for event in batch.events]

    def ids(self, delivered_only: bool = False) -> list[str]:
        return [
            event.doc["auditID"]
            for batch in self.batches
            if not delivered_only or (batch.done is not None and batch.done.done())
            for event in batch.events
        ]


def source_for(bootstrap: str, topic: str, group: str, **extra: object) -> tuple[KafkaSource, Metrics]:
    metrics = Metrics()
    config = KafkaSourceConfig(
        bootstrap_servers=(bootstrap,),
        topics=(topic,),
        group_id=group,
        session_timeout_seconds=SESSION,
        **extra,  # type: ignore[arg-type]
    )
    return KafkaSource(config, metrics), metrics


@contextlib.asynccontextmanager
async def running(source: KafkaSource, inlet: RecordingInlet) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(source.run(inlet))
    try:
        yield task
    finally:
        if not task.done():
            inlet.gate.set()
            inlet.release()
            await asyncio.wait_for(source.stop(), 20)
            await asyncio.wait_for(task, 5)


async def eventually(check: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    """Poll ``check`` until it is truthy (the broker and the group take their time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def produce(
    bootstrap: str, topic: str, values: Iterable[bytes | None], partitions: int = 1, **options: Any
) -> list[tuple[int, int]]:
    """Send ``values`` round-robin over ``partitions``; (partition, offset) of each."""
    options.setdefault("bootstrap_servers", bootstrap)
    producer = AIOKafkaProducer(enable_idempotence=False, **options)
    await producer.start()
    try:
        futures = [
            # A tombstone (no value) needs a key.
            await producer.send(topic, value, key=None if value else b"k", partition=i % partitions)
            for i, value in enumerate(values)
        ]
        sent = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(meta.partition, meta.offset) for meta in sent]


def audit_messages(count: int) -> tuple[list[bytes], list[str]]:
    events = [audit_event(name=f"pod-{i}") for i in range(count)]
    return [orjson.dumps(e) for e in events], [e["auditID"] for e in events]


async def committed(
    broker: KafkaBroker, group: str, topic: str, partitions: int = 1
) -> dict[int, int | None]:
    return await asyncio.to_thread(broker.committed, group, topic, partitions)


# ---------------------------------------------------------------- decoding


@pytest.mark.asyncio
async def test_every_kind_of_message_and_poison_is_skipped(kafka_broker: KafkaBroker) -> None:
    topic, group = unique_name("mixed"), unique_name("g")
    kafka_broker.create_topic(topic)
    native = audit_event(name="native")
    listed = [audit_event(name="a"), audit_event(name="b")]
    gke = {
        "insertId": "gke-1",
        "protoPayload": {
            "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
            "serviceName": "k8s.io",
            "methodName": "io.k8s.core.v1.pods.create",
            "resourceName": "core/v1/namespaces/default/pods/web",
            "authenticationInfo": {"principalEmail": "bob@example.com"},
        },
        "receiveTimestamp": "2026-11-29T10:00:01.000000Z",
    }
    aks = {
        "records": [{"category": "kube-audit", "properties": {"log": orjson.dumps(audit_event()).decode()}}]
    }
    values = [
        orjson.dumps(native),
        b"{not json",
        orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": listed}),
        None,  # a tombstone
        orjson.dumps(falco_alert()),
        b'{"kind": 0}',
        orjson.dumps(gke),
        orjson.dumps(aks),
    ]
    await produce(kafka_broker.bootstrap, topic, values)
    source, _ = source_for(kafka_broker.bootstrap, topic, group)
    inlet = RecordingInlet()
    async with running(source, inlet):
        await eventually(lambda: len(inlet.events) == 6, "six events")
        await eventually(lambda: inlet.reasons == ["json", "empty", "not_audit"], "three rejections")
    kinds = [(e.source, e.origin) for e in inlet.events]
    assert kinds == [(K8S_AUDIT, "kafka")] * 3 + [(FALCO, "kafka"), (K8S_AUDIT, "gke"), (K8S_AUDIT, "aks")]
    # The poison messages did not hold the partition back: everything is committed.
    assert await committed(kafka_broker, group, topic) == {0: len(values)}


# ----------------------------------------------------------------- commits


@pytest.mark.asyncio
async def test_offsets_are_committed_only_after_done(kafka_broker: KafkaBroker) -> None:
    topic, group = unique_name("commit"), unique_name("g")
    kafka_broker.create_topic(topic)
    values, _ = audit_messages(5)
    await produce(kafka_broker.bootstrap, topic, values)
    source, _ = source_for(kafka_broker.bootstrap, topic, group)
    inlet = RecordingInlet(hold=True)
    async with running(source, inlet):
        await eventually(lambda: len(inlet.events) == 5, "the batch")
        await asyncio.sleep(0.3)  # room for a (wrong) early commit to land
        assert await committed(kafka_broker, group, topic) == {0: None}
        inlet.release()
        for _ in range(100):
            if await committed(kafka_broker, group, topic) == {0: 5}:
                break
            await asyncio.sleep(0.05)
        assert await committed(kafka_broker, group, topic) == {0: 5}


@pytest.mark.asyncio
async def test_restarting_the_source_mid_topic_loses_nothing(kafka_broker: KafkaBroker) -> None:
    topic, group = unique_name("restart"), unique_name("g")
    kafka_broker.create_topic(topic)
    values, ids = audit_messages(40)
    await produce(kafka_broker.bootstrap, topic, values)

    # 1. A clean stop after three batches (the third waits for room) commits them.
    first, _ = source_for(kafka_broker.bootstrap, topic, group, max_batch=5)
    inlet1 = RecordingInlet(room=2)
    async with running(first, inlet1):
        await eventually(lambda: len(inlet1.batches) == 3, "three batches")
        await asyncio.sleep(0.3)
        assert len(inlet1.batches) == 3  # backpressure: nothing more was fetched
        stopping = asyncio.create_task(first.stop())
        await asyncio.sleep(0)
        inlet1.gate.set()
        await asyncio.wait_for(stopping, 20)
    seen1 = inlet1.ids()
    assert seen1 == ids[:15]
    assert await committed(kafka_broker, group, topic) == {0: 15}

    # 2. A crash (task cancelled) with a batch never delivered: not committed.
    second, _ = source_for(kafka_broker.bootstrap, topic, group, max_batch=5)
    inlet2 = RecordingInlet(hold=True)
    task = asyncio.create_task(second.run(inlet2))
    await eventually(lambda: len(inlet2.batches) >= 1, "a batch")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    undelivered = inlet2.ids()
    assert undelivered and undelivered[0] == ids[len(seen1)]

    # 3. The next member resumes at the last commit: duplicates only for the undelivered.
    third, _ = source_for(kafka_broker.bootstrap, topic, group, max_batch=5)
    inlet3 = RecordingInlet()
    async with running(third, inlet3):
        await eventually(lambda: len(inlet3.events) == len(ids) - len(seen1), "the rest")
    seen3 = inlet3.ids()
    assert seen1 + seen3 == ids
    assert set(seen3) & set(undelivered) == set(undelivered)


@pytest.mark.asyncio
async def test_two_members_share_partitions_and_see_each_event_once(kafka_broker: KafkaBroker) -> None:
    topic, group = unique_name("shared"), unique_name("g")
    kafka_broker.create_topic(topic, partitions=4)
    (a, _), (b, _) = (
        source_for(kafka_broker.bootstrap, topic, group),
        source_for(kafka_broker.bootstrap, topic, group),
    )
    inlet_a, inlet_b = RecordingInlet(), RecordingInlet()
    async with running(a, inlet_a), running(b, inlet_b):
        await eventually(lambda: len(a.assigned) == 2 and len(b.assigned) == 2, "a 2+2 split", timeout=20)
        assert a.assigned.isdisjoint(b.assigned)
        values, ids = audit_messages(40)
        await produce(kafka_broker.bootstrap, topic, values, partitions=4)
        await eventually(lambda: len(inlet_a.events) + len(inlet_b.events) == 40, "all events")
    assert inlet_a.events and inlet_b.events
    assert sorted(inlet_a.ids() + inlet_b.ids()) == sorted(ids)
    assert await committed(kafka_broker, group, topic, 4) == dict.fromkeys(range(4), 10)


@pytest.mark.asyncio
async def test_a_rebalance_commits_in_flight_batches_before_handing_over(kafka_broker: KafkaBroker) -> None:
    topic, group = unique_name("handover"), unique_name("g")
    kafka_broker.create_topic(topic, partitions=2)
    values, ids = audit_messages(10)
    await produce(kafka_broker.bootstrap, topic, values, partitions=2)
    (a, _), (b, _) = (source_for(kafka_broker.bootstrap, topic, group) for _ in range(2))
    inlet_a, inlet_b = RecordingInlet(hold=True), RecordingInlet()
    async with running(a, inlet_a):
        await eventually(lambda: len(inlet_a.events) == 10, "A holding every event")
        async with running(b, inlet_b):
            # A learns of B's join and must finish its batches before letting go.
            await eventually(lambda: a._rebalancing, "A handing its partitions back")
            assert await committed(kafka_broker, group, topic, 2) == {0: None, 1: None}
            inlet_a.release()
            await eventually(lambda: len(a.assigned) == 1 and len(b.assigned) == 1, "a 1+1 split")
            assert await committed(kafka_broker, group, topic, 2) == {0: 5, 1: 5}
            await asyncio.sleep(0.5)  # B would now be re-reading anything left uncommitted
    assert sorted(inlet_a.ids()) == sorted(ids) and inlet_b.batches == []


# ------------------------------------------------------------------ faults


@pytest.mark.asyncio
async def test_broker_restart_while_consuming(private_kafka_broker: KafkaBroker) -> None:
    broker = private_kafka_broker
    topic, group = unique_name("fault"), unique_name("g")
    broker.create_topic(topic)
    values, before = audit_messages(3)
    await produce(broker.bootstrap, topic, values)
    source, metrics = source_for(broker.bootstrap, topic, group)
    up = metrics.source_up.labels("kafka")
    reconnects = metrics.source_reconnects.labels("kafka")
    inlet = RecordingInlet()
    async with running(source, inlet) as task:
        await eventually(lambda: inlet.ids() == before, "events before the restart")
        assert source.ready()
        broker.stop()
        await eventually(lambda: up._value.get() == 0, "the source to notice", timeout=20)
        assert not source.ready() and not task.done()
        # In-memory broker: the topic and the commits are gone, so start afresh.
        broker.start()
        broker.create_topic(topic)
        values, after = audit_messages(3)
        await produce(broker.bootstrap, topic, values)
        await eventually(lambda: inlet.ids()[-3:] == after, "events after the restart", timeout=30)
        await eventually(lambda: up._value.get() == 1, "the source up again")
        assert reconnects._value.get() >= 1


@pytest.mark.asyncio
async def test_unreachable_brokers_at_start_are_retried(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "tansu.log")  # its port is known, nothing listens yet
    topic, group = unique_name("late"), unique_name("g")
    source, metrics = source_for(broker.bootstrap, topic, group)
    inlet = RecordingInlet()
    try:
        async with running(source, inlet) as task:
            reconnects = metrics.source_reconnects.labels("kafka")
            await eventually(lambda: reconnects._value.get() >= 1, "a retry")
            assert not task.done() and not source.ready()
            broker.start()
            broker.create_topic(topic)
            values, ids = audit_messages(2)
            await produce(broker.bootstrap, topic, values)
            await eventually(lambda: inlet.ids() == ids, "events", timeout=30)
    finally:
        broker.stop()


@pytest.mark.asyncio
async def test_stop_does_not_wait_for_brokers_that_never_answer() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # accept, read nothing, answer nothing

    silent = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    source, _ = source_for(f"127.0.0.1:{port}", "t", "g")
    task = asyncio.create_task(source.run(RecordingInlet()))
    try:
        await eventually(lambda: connections, "a connection attempt")
        await asyncio.wait_for(source.stop(), 5)
        await asyncio.wait_for(task, 5)
    finally:
        task.cancel()
        silent.close()
        for writer in connections:
            writer.close()


# ---------------------------------------------------------------- security


async def _tls_proxy(context: ssl.SSLContext, port: int, upstream: int) -> asyncio.Server:
    """TLS on ``port`` in front of the plain broker (tansu's own TLS is not usable here)."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await asyncio.start_server(handle, "127.0.0.1", port, ssl=context)


@pytest.mark.asyncio
async def test_mutual_tls(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "pki")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca))
    server_context.load_cert_chain(tls.server_cert, tls.server_key)
    server_context.verify_mode = ssl.CERT_REQUIRED
    # The broker advertises the proxy, so every client connection goes through TLS.
    tls_port = free_port()
    broker = KafkaBroker(tmp_path / "tansu.log", advertised_port=tls_port)
    broker.start()
    proxy = await _tls_proxy(server_context, tls_port, broker.port)
    topic = unique_name("tls")
    tls_bootstrap = f"127.0.0.1:{tls_port}"
    try:
        # Produced over mutual TLS too, with the shared client settings (auto-creates the topic).
        values, ids = audit_messages(2)
        options = client_options([tls_bootstrap], tls.client_tls(), None, key="test")
        await produce(tls_bootstrap, topic, values, **options)
        good, _ = source_for(tls_bootstrap, topic, unique_name("g"), tls=tls.client_tls(certificate=True))
        inlet = RecordingInlet()
        async with running(good, inlet):
            await eventually(lambda: inlet.ids() == ids, "events over mutual TLS")
        anonymous, metrics = source_for(tls_bootstrap, topic, unique_name("g"), tls=tls.client_tls(False))
        inlet = RecordingInlet()
        async with running(anonymous, inlet) as task:
            reconnects = metrics.source_reconnects.labels("kafka")
            await eventually(lambda: reconnects._value.get() >= 1, "a refused handshake")
            assert not task.done() and not inlet.batches and not anonymous.ready()
    finally:
        proxy.close()
        broker.stop()


# ------------------------------------------------------------------ config


def test_client_options_tls_and_sasl(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    sasl = KafkaSASL("SCRAM-SHA-512", "eventd", secret)
    plain = client_options(["k:9092"], None, None, key="sources.kafka")
    assert plain["security_protocol"] == "PLAINTEXT" and plain["bootstrap_servers"] == ["k:9092"]
    options = client_options(["k:9093"], tls.client_tls(), sasl, key="sources.kafka")
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("eventd", "s3cret")
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert client_options(["k:9092"], None, sasl, key="x")["security_protocol"] == "SASL_PLAINTEXT"


@pytest.mark.parametrize(
    ("tls", "sasl", "key"),
    [
        (None, KafkaSASL(username="eventd", password_file=Path("/nonexistent")), "s.sasl.password_file"),
        (None, KafkaSASL(username="", password_file=Path("/etc/hostname")), "s.sasl.username"),
        (None, KafkaSASL(username="eventd"), "s.sasl.password_file"),
        (ClientTLS(cert=Path("/etc/hostname")), None, "s.tls"),
        (ClientTLS(ca=Path("/nonexistent.pem")), None, "s.tls"),
    ],
)
def test_client_options_name_the_broken_key(tls: ClientTLS | None, sasl: KafkaSASL | None, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        client_options(["k:9092"], tls, sasl, key="s")
    assert err.value.key == key


def test_empty_password_file_and_missing_topics(tmp_path: Path) -> None:
    empty = tmp_path / "password"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        client_options(["k:9092"], None, KafkaSASL(username="u", password_file=empty), key="s")
    with pytest.raises(ConfigError) as err:
        KafkaSource(KafkaSourceConfig(bootstrap_servers=("k:9092",)), Metrics())
    assert err.value.key == "sources.kafka.topics"
