"""``KafkaSource``'s offset, commit, rebalance and liveness decisions, in process (issue 17).

The consumer here is a SCRIPTED STAND-IN, not Kafka: ``ScriptedConsumer``
implements only the part of aiokafka's ``AIOKafkaConsumer`` the source calls
(``subscribe``, ``start``, ``getmany``, ``assignment``,
``last_poll_timestamp``, ``commit``, ``stop``) and replays fetches the test
scripts.  It exists to pin each decision (which offset is committed, when,
and what is never committed) in milliseconds, so that mutation testing can
try every planted bug against it.  That the same paths work against a real
broker (group joins, rebalances between two members, a broker restart,
commits read back by a new member) is proved by ``tests/test_source_kafka.py``
(and, for exactly-once, ``tests/test_exactly_once.py``) against the tansu
broker fixture (``tests/support/kafka_broker.py``); keep both.

Batches go to a real ``eventd.sources.base.Batch`` through the recording
inlet of the HTTP input tests; the test plays the pipeline by resolving each
batch's ``done``.  Log events are compared whole where they are what an
operator reads about a decision (a refused commit, batches a revoke or a
stop gave up on, a failed session with or without its traceback).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
import types
from collections import deque
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaConnectionError, KafkaError
from aiokafka.structs import ConsumerRecord

from eventd.config import ClientTLS, ConfigError, KafkaSASL, KafkaSourceConfig
from eventd.kafka_client import client_options
from eventd.metrics import Metrics
from eventd.sources import kafka as kafka_mod
from eventd.sources.base import Batch
from eventd.sources.kafka import (
    BatchAbandoned,
    KafkaSource,
    brokers_up,
    heartbeat_ms,
    revoke_budget,
)
from tests.support.builders import audit_event
from tests.support.http_inlet import RecordingInlet
from tests.support.tls_certs import make_tls_files

A0, A1, B0 = TopicPartition("audit", 0), TopicPartition("audit", 1), TopicPartition("falco", 0)


def record(tp: TopicPartition, offset: int, value: bytes | None) -> ConsumerRecord[bytes, bytes]:
    size = len(value) if value else 0
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, None, value, None, 0, size, ())


def event_bytes(n: int = 0) -> bytes:
    return orjson.dumps(audit_event(auditID=f"00000000-0000-0000-0000-{n:012d}"))


def fetch(
    tp: TopicPartition, first: int, count: int, value: bytes | None = None
) -> dict[TopicPartition, list]:
    return {tp: [record(tp, first + i, value or event_bytes(first + i)) for i in range(count)]}


class ScriptedConsumer:
    """The subset of ``AIOKafkaConsumer`` that ``KafkaSource`` uses, replaying
    ``fetches`` (one ``getmany`` answer each; an exception is raised; an
    ``asyncio.Event`` is waited for, then nothing is answered); once
    they run out, ``getmany`` answers nothing after a short wait, as an idle
    topic does."""

    def __init__(self, fetches: list[Any] = (), assigned: Collection[TopicPartition] = (A0, A1, B0)) -> None:
        self.fetches: deque[Any] = deque(fetches)
        self.assigned = set(assigned)
        self.commits: list[dict[TopicPartition, int]] = []
        self.commit_error: BaseException | None = None
        self.polled: dict[TopicPartition, float | None] = {}
        self.start_error: BaseException | None = None
        self.start_gate: asyncio.Event | None = None
        self.stop_gate: asyncio.Event | None = None
        self.getmany_calls: list[tuple[int, int]] = []
        self.topics: list[str] | None = None
        self.listener: Any = None
        self.started = self.stopped = False

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.topics, self.listener = topics, listener

    async def start(self) -> None:
        if self.start_gate is not None:
            await self.start_gate.wait()
        if self.start_error is not None:
            raise self.start_error
        self.started = True

    async def stop(self) -> None:
        self.stopped = True
        if self.stop_gate is not None:
            await self.stop_gate.wait()

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list]:
        self.getmany_calls.append((timeout_ms, max_records))
        now = time.time() * 1000
        for tp in self.assigned:
            self.polled.setdefault(tp, now)
        if self.fetches:
            answer = self.fetches.popleft()
            if isinstance(answer, asyncio.Event):  # a fetch that waits for the test
                await answer.wait()
                return {}
            if isinstance(answer, BaseException):
                raise answer
            for tp in answer:
                self.polled[tp] = now
            return answer
        await asyncio.sleep(0.01)
        return {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.commit_error is not None:
            raise self.commit_error
        self.commits.append(dict(offsets))

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def last_poll_timestamp(self, tp: TopicPartition) -> float | None:
        return self.polled.get(tp)


class ScriptedSource(KafkaSource):
    """The real source, with each session's consumer taken from ``consumers``."""

    def __init__(
        self, config: KafkaSourceConfig, metrics: Metrics, consumers: list[ScriptedConsumer]
    ) -> None:
        super().__init__(config, metrics)
        self.consumers = deque(consumers)
        self.sessions: list[ScriptedConsumer] = []

    def _new_consumer(self) -> Any:
        consumer = self.consumers.popleft() if self.consumers else ScriptedConsumer()
        self.sessions.append(consumer)
        return consumer


class FilteringInlet(RecordingInlet):
    """An inlet whose record prefilter drops records containing ``b"drop"``."""

    matcher = object()

    def __init__(self, source: str) -> None:
        super().__init__(source)
        self.skipped_counts: list[tuple[str, int]] = []

    def record_filter(self) -> FilteringInlet:
        return self

    def skippable(self, value: bytes) -> bool:
        return b"drop" in value

    def skipped(self, source: str, count: int) -> None:
        self.skipped_counts.append((source, count))


def config(**kw: Any) -> KafkaSourceConfig:
    base = KafkaSourceConfig(bootstrap_servers=("127.0.0.1:1",), topics=("audit", "falco"), group_id="g1")
    return dataclasses.replace(base, **kw)


def kafka_logs(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The source's own log events, as an operator reads them (event, level, fields)."""
    return [e for e in logs if e["event"].startswith("kafka_")]


def sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name, {"source": "kafka"}) or 0.0


async def until(predicate: Callable[[], bool], task: asyncio.Task[Any] | None = None) -> None:
    for _ in range(1000):
        if predicate():
            return
        if task is not None and task.done():
            task.result()
            raise AssertionError("the source stopped")
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def consume(source: KafkaSource, consumer: ScriptedConsumer, inlet: RecordingInlet) -> None:
    """``_consume`` until the script has run out (then the test stops it)."""
    committer = asyncio.create_task(asyncio.Event().wait())
    calls = len(consumer.getmany_calls) + len(consumer.fetches)

    async def stop_after_script() -> None:
        await until(lambda: len(consumer.getmany_calls) > calls)
        source._stopping.set()

    stopper = asyncio.create_task(stop_after_script())
    try:
        await asyncio.wait_for(source._consume(consumer, inlet, committer), 5)
    finally:
        committer.cancel()
        stopper.cancel()
        await asyncio.gather(committer, stopper, return_exceptions=True)
    source._stopping.clear()


# ------------------------------------------------------------------ config


def test_config_errors_name_their_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^sources\.kafka\.topics: at least one topic is required$") as err:
        KafkaSource(config(topics=()), Metrics())
    assert err.value.key == "sources.kafka.topics"
    with pytest.raises(ConfigError, match="invalid Kafka topic name") as err:
        KafkaSource(config(topics=("audit", "no spaces")), Metrics())
    assert err.value.key == "sources.kafka.topics[1]"
    with pytest.raises(ConfigError, match=r"^[^:]+: must be at least 1 second$") as err:
        KafkaSource(config(session_timeout_seconds=0.999), Metrics())
    assert err.value.key == "sources.kafka.session_timeout_seconds"
    KafkaSource(config(session_timeout_seconds=1), Metrics())  # the edge is allowed
    with pytest.raises(ConfigError) as err:
        KafkaSource(config(tls=ClientTLS(ca=tmp_path / "missing.pem")), Metrics())
    assert err.value.key == "sources.kafka.tls.ca"
    certs = make_tls_files(tmp_path)
    with pytest.raises(ConfigError, match="together") as err:  # readable files, but no key for the cert
        KafkaSource(config(tls=ClientTLS(cert=certs.client_cert)), Metrics())
    assert err.value.key == "sources.kafka.tls"
    with pytest.raises(ConfigError) as err:
        KafkaSource(config(sasl=KafkaSASL(username="")), Metrics())
    assert err.value.key == "sources.kafka.sasl.username"
    with pytest.raises(ConfigError) as err:
        KafkaSource(config(bootstrap_servers=()), Metrics())
    assert err.value.key == "sources.kafka.bootstrap_servers"


def test_consumer_settings() -> None:
    metrics = Metrics()
    source = KafkaSource(config(session_timeout_seconds=2.5, auto_offset_reset="latest"), metrics)
    options = source._consumer_options()
    expected = client_options(("127.0.0.1:1",), None, None, key="sources.kafka", metrics=metrics)
    assert {k: options[k] for k in expected} == expected
    assert {k: v for k, v in options.items() if k not in expected} == {
        "group_id": "g1",
        "enable_auto_commit": False,
        "auto_offset_reset": "latest",
        "session_timeout_ms": 2500,
        "heartbeat_interval_ms": 833,
    }


def test_consumer_settings_with_tls_and_sasl(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    sasl = KafkaSASL(mechanism="SCRAM-SHA-256", username="eventd", password_file=password)
    source = KafkaSource(config(tls=ClientTLS(ca=tls.ca), sasl=sasl), Metrics())
    password.unlink()  # a bad rotation: the password read at start-up is kept
    options = source._consumer_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == ("SCRAM-SHA-256", "eventd")
    assert options["sasl_plain_password"] == "s3cret"
    refused = {"key": "sources.kafka.sasl.password_file", "reason": "unreadable"}
    assert source._metrics.registry.get_sample_value("eventd_secret_file_rejected_total", refused) == 1


def test_heartbeat_is_a_third_of_the_session_within_bounds() -> None:
    assert heartbeat_ms(1000) == 333
    assert heartbeat_ms(9000) == 3000
    assert heartbeat_ms(9003) == 3000
    assert heartbeat_ms(8997) == 2999
    assert heartbeat_ms(300) == 100
    assert heartbeat_ms(302) == 100
    assert heartbeat_ms(303) == 101


def test_revoke_budget_is_half_the_session() -> None:
    assert revoke_budget(10_000) == 5.0
    assert revoke_budget(1500) == 0.75


def test_liveness_judgement() -> None:
    # A fresh fetch: up, whatever else.
    assert brokers_up(False, poll_age_ms=999, fetching_ms=0, session_ms=1000) is True
    assert brokers_up(True, poll_age_ms=999, fetching_ms=5000, session_ms=1000) is True
    # Stale for a session timeout while fetching for longer: down.
    assert brokers_up(True, poll_age_ms=1000, fetching_ms=1001, session_ms=1000) is False
    # Stale, but the source waited on the pipeline until recently: no judgement.
    assert brokers_up(True, poll_age_ms=1000, fetching_ms=1000, session_ms=1000) is True
    # Down stays down until a fresh fetch.
    assert brokers_up(False, poll_age_ms=1000, fetching_ms=5000, session_ms=1000) is False


def test_a_new_source_is_not_ready_and_owns_nothing() -> None:
    source = KafkaSource(config(), Metrics())
    assert source.ready() is False
    assert source.assigned == frozenset()
    assert source.name == "kafka"


# ----------------------------------------------------------------- batches


@pytest.mark.asyncio
async def test_each_fetch_is_one_batch_waiting_for_delivery() -> None:
    source = KafkaSource(config(max_batch=7), Metrics())
    inlet = RecordingInlet("kafka")
    consumer = ScriptedConsumer([{}, {**fetch(A0, 0, 2), **fetch(B0, 5, 1)}, fetch(A0, 2, 1, b"not json")])
    await consume(source, consumer, inlet)
    assert consumer.getmany_calls[0] == (kafka_mod.POLL_MS, 7)
    assert len(inlet.batches) == 1, "a fetch of nothing usable makes no batch"
    batch = inlet.batches[0]
    assert isinstance(batch, Batch)
    assert [e.doc["auditID"][-1] for e in batch.events] == ["0", "1", "5"]
    assert (batch.source, batch.until_delivered, batch.consumed, batch.prefiltered_with) == (
        "kafka",
        True,
        None,
        None,
    )
    assert batch.size == sum(len(event_bytes(n)) for n in (0, 1, 5))
    assert inlet.rejects == {"json": 1}
    # The poison fetch's offsets are processed as they are; the batch's wait for delivery.
    source._tracker.settle()
    assert source._tracker.processed == {}
    batch.done.set_result(None)
    source._tracker.settle()
    assert source._tracker.processed == {A0: 3, B0: 6}


@pytest.mark.asyncio
async def test_skippable_records_are_counted_and_their_offsets_processed() -> None:
    source = KafkaSource(config(), Metrics())
    inlet = FilteringInlet("kafka")
    drop = b'{"drop": 1}'
    keep = event_bytes(3)
    consumer = ScriptedConsumer(
        [
            {A0: [record(A0, 0, drop), record(A0, 1, keep), record(A0, 2, None), record(A0, 3, drop)]},
            {A1: [record(A1, 0, drop), record(A1, 1, drop)]},
        ]
    )
    await consume(source, consumer, inlet)
    assert inlet.skipped_counts == [("kafka", 2), ("kafka", 2)]
    assert inlet.rejects == {"empty": 1}, "an empty record is not skippable: it is rejected"
    assert len(inlet.batches) == 1
    batch = inlet.batches[0]
    assert batch.prefiltered_with is FilteringInlet.matcher
    assert batch.size == len(keep), "skipped records are not counted as input bytes"
    assert [e.doc["auditID"] for e in batch.events] == [orjson.loads(keep)["auditID"]]
    batch.done.set_result(None)
    source._tracker.settle()
    assert source._tracker.processed == {A0: 4, A1: 2}


@pytest.mark.asyncio
async def test_a_stopped_committer_ends_the_session() -> None:
    source = KafkaSource(config(), Metrics())
    consumer = ScriptedConsumer([fetch(A0, 0, 1)] * 50)

    async def abandoned() -> None:
        raise BatchAbandoned("a batch failed")

    committer = asyncio.create_task(abandoned())
    await asyncio.sleep(0)
    with pytest.raises(BatchAbandoned, match=r"^a batch failed$"):
        await source._consume(consumer, RecordingInlet("kafka"), committer)
    assert consumer.getmany_calls == []
    committer = asyncio.create_task(asyncio.sleep(0))
    await committer
    with pytest.raises(BatchAbandoned, match=r"^offset committer stopped$"):
        await source._consume(consumer, RecordingInlet("kafka"), committer)


# ----------------------------------------------------------------- commits


async def commit(source: KafkaSource, consumer: ScriptedConsumer) -> None:
    """One ``_commit``, bounded: a planted bug fails the test, not hangs it."""
    await asyncio.wait_for(source._commit(consumer), 5)


async def delivered_batches(source: KafkaSource, consumer: ScriptedConsumer, n: int) -> list[Batch]:
    inlet = RecordingInlet("kafka")
    consumer.fetches.extend(fetch(A0 if i % 2 == 0 else A1, 10 * i, 2) for i in range(n))
    await consume(source, consumer, inlet)
    assert len(inlet.batches) == n
    return inlet.batches


@pytest.mark.asyncio
async def test_commits_stop_at_the_last_contiguous_delivered_batch() -> None:
    source = KafkaSource(config(), Metrics())
    consumer = ScriptedConsumer()
    b = await delivered_batches(source, consumer, 4)
    b[1].done.set_result(None)
    b[3].done.set_result(None)
    await commit(source, consumer)
    assert consumer.commits == [], "a later batch delivered first must wait for the earlier one"
    b[0].done.set_result(None)
    await commit(source, consumer)
    assert consumer.commits == [{A0: 2, A1: 12}]
    assert source._tracker.committed == {A0: 2, A1: 12}
    await commit(source, consumer)
    assert len(consumer.commits) == 1, "nothing new: no commit"
    b[2].done.set_result(None)
    await commit(source, consumer)
    assert consumer.commits[1:] == [{A0: 22, A1: 32}]


@pytest.mark.asyncio
async def test_only_owned_partitions_are_committed() -> None:
    source = KafkaSource(config(), Metrics())
    consumer = ScriptedConsumer(assigned=(A1,))
    for batch in await delivered_batches(source, consumer, 2):
        batch.done.set_result(None)
    await commit(source, consumer)
    assert consumer.commits == [{A1: 12}]


@pytest.mark.asyncio
async def test_an_abandoned_batch_stops_commits_after_the_ones_before_it() -> None:
    source = KafkaSource(config(), Metrics())
    consumer = ScriptedConsumer()
    b = await delivered_batches(source, consumer, 3)
    b[0].done.set_result(None)
    b[1].done.set_exception(OSError("spool full"))
    b[2].done.set_result(None)
    with pytest.raises(BatchAbandoned, match="spool full"):
        await commit(source, consumer)
    assert consumer.commits == [{A0: 2}], "the batch before the failed one is still committed"
    with pytest.raises(BatchAbandoned):
        await commit(source, consumer)  # nothing new to commit, still abandoned
    assert consumer.commits == [{A0: 2}]


@pytest.mark.asyncio
async def test_exactly_once_commits_nothing_itself() -> None:
    source = KafkaSource(config(exactly_once=True), Metrics())
    source._generation = 4
    consumer = ScriptedConsumer()
    b = await delivered_batches(source, consumer, 2)
    consumed = b[0].consumed
    assert consumed is not None
    assert (consumed.group_id, dict(consumed.offsets), consumed.generation) == ("g1", {A0: 2}, 4)
    assert dict(b[1].consumed.offsets) == {A1: 12}
    assert consumed.is_current() is True
    for batch in b:
        batch.done.set_result(None)
    await commit(source, consumer)
    assert consumer.commits == []
    assert source._tracker.committed == {A0: 2, A1: 12}, "the transactions committed them"
    source._generation += 1  # a rebalance or a new session
    assert consumed.is_current() is False


@pytest.mark.asyncio
async def test_exactly_once_batch_without_events_still_goes_to_the_sink() -> None:
    source = KafkaSource(config(exactly_once=True), Metrics())
    inlet = RecordingInlet("kafka")
    await consume(source, ScriptedConsumer([fetch(A0, 0, 1, b"not json")]), inlet)
    assert len(inlet.batches) == 1, "its offsets are committed by the sink's transaction"
    assert inlet.batches[0].events == []
    assert not inlet.batches[0].done.done()


@pytest.mark.asyncio
async def test_exactly_once_abandoned_batch_still_stops_the_session() -> None:
    source = KafkaSource(config(exactly_once=True), Metrics())
    consumer = ScriptedConsumer()
    b = await delivered_batches(source, consumer, 2)
    b[0].done.set_result(None)
    b[1].done.set_exception(OSError("transaction aborted"))
    with pytest.raises(BatchAbandoned):
        await commit(source, consumer)
    assert source._tracker.committed == {A0: 2}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "error",
    [CommitFailedError("rebalanced"), IllegalStateError("not in group"), KafkaConnectionError("gone")],
)
async def test_a_refused_or_failed_commit_leaves_committed_unchanged(error: KafkaError) -> None:
    source = KafkaSource(config(), Metrics())
    consumer = ScriptedConsumer()
    b = await delivered_batches(source, consumer, 2)
    b[0].done.set_result(None)
    await commit(source, consumer)
    b[1].done.set_result(None)
    consumer.commit_error = error
    with structlog.testing.capture_logs() as logs:
        await commit(source, consumer)  # logged, not raised: the next commit tries again
    assert source._tracker.committed == {A0: 2}
    if isinstance(error, CommitFailedError | IllegalStateError):  # the group moved on: expected
        said = {"event": "kafka_commit_refused", "log_level": "info", "reason": str(error), "partitions": 1}
    else:
        said = {"event": "kafka_commit_failed", "log_level": "warning", "error": str(error), "partitions": 1}
    assert kafka_logs(logs) == [said]
    consumer.commit_error = None
    await commit(source, consumer)
    assert consumer.commits == [{A0: 2}, {A1: 12}]
    assert source._tracker.committed == {A0: 2, A1: 12}


@pytest.mark.asyncio
async def test_commits_are_serialised() -> None:
    source = KafkaSource(config(), Metrics())
    consumer = ScriptedConsumer()
    b = await delivered_batches(source, consumer, 1)
    b[0].done.set_result(None)
    async with source._commit_lock:
        pending = asyncio.create_task(source._commit(consumer))
        await asyncio.sleep(0.02)
        assert consumer.commits == [], "a commit waits for the one in progress"
    await asyncio.wait_for(pending, 5)
    assert consumer.commits == [{A0: 2}]


# --------------------------------------------------------------- rebalances


@pytest.mark.asyncio
async def test_revoke_waits_for_in_flight_batches_then_commits_and_starts_a_generation() -> None:
    source = KafkaSource(config(), Metrics())
    consumer = ScriptedConsumer()
    b = await delivered_batches(source, consumer, 2)
    source._assigned = frozenset({A0, A1})
    generation = source._generation
    b[0].done.set_result(None)
    asyncio.get_running_loop().call_later(0.05, b[1].done.set_result, None)
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(source._hand_back(consumer, {A0, A1}), 5)
    assert consumer.commits == [{A0: 2, A1: 12}]
    assert kafka_logs(logs) == [{"event": "kafka_partitions_revoked", "log_level": "info", "partitions": 2}]
    assert source._generation == generation + 1
    assert source.assigned == frozenset()
    assert (source._tracker.processed, source._tracker.committed, source._tracker.inflight()) == ({}, {}, [])
    assert source._rebalancing is True


@pytest.mark.asyncio
async def test_revoke_gives_up_on_unfinished_batches_and_commits_the_rest() -> None:
    source = KafkaSource(config(session_timeout_seconds=1), Metrics())
    consumer = ScriptedConsumer()
    b = await delivered_batches(source, consumer, 3)
    b[0].done.set_result(None)
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(source._hand_back(consumer, {A0, A1}), 5)  # b[1], b[2] never finish
    assert consumer.commits == [{A0: 2}]
    assert source._tracker.inflight() == []
    assert kafka_logs(logs) == [
        {"event": "kafka_revoke_batches_unfinished", "log_level": "warning", "batches": 2},
        {"event": "kafka_partitions_revoked", "log_level": "info", "partitions": 2},
    ]


@pytest.mark.asyncio
async def test_revoke_survives_an_abandoned_batch_and_a_hung_commit() -> None:
    source = KafkaSource(config(session_timeout_seconds=1), Metrics())
    consumer = ScriptedConsumer()
    b = await delivered_batches(source, consumer, 2)
    b[0].done.set_exception(OSError("lost"))
    b[1].done.set_result(None)
    generation = source._generation
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(source._hand_back(consumer, {A0}), 5)
    assert source._generation == generation + 1
    skipped = {"event": "kafka_revoke_commit_skipped", "log_level": "warning"}
    assert kafka_logs(logs)[0] == {**skipped, "reason": "a batch's alerts could not be made safe: lost"}
    b = await delivered_batches(source, consumer, 1)
    b[0].done.set_result(None)
    with structlog.testing.capture_logs() as logs:
        async with source._commit_lock:  # a commit stuck on the brokers
            await asyncio.wait_for(source._hand_back(consumer, {A0}), 5)
    assert consumer.commits == []
    assert source._generation == generation + 2
    assert kafka_logs(logs)[0] == {**skipped, "reason": "TimeoutError"}


@pytest.mark.asyncio
async def test_revoke_of_nothing_commits_nothing_but_resets() -> None:
    source = KafkaSource(config(), Metrics())
    consumer = ScriptedConsumer()
    b = await delivered_batches(source, consumer, 1)
    b[0].done.set_result(None)
    await asyncio.wait_for(source._hand_back(consumer, set()), 5)
    assert consumer.commits == []
    assert source._tracker.processed == {}


@pytest.mark.asyncio
async def test_the_rebalance_listener_hands_back_and_takes_partitions() -> None:
    source = ScriptedSource(config(), Metrics(), [ScriptedConsumer([fetch(A0, 0, 2)])])
    inlet = RecordingInlet("kafka")
    task = asyncio.create_task(source.run(inlet))
    try:
        await until(lambda: len(inlet.batches) == 1, task)
        consumer = source.sessions[0]
        assert consumer.topics == ["audit", "falco"]
        with structlog.testing.capture_logs() as logs:
            await consumer.listener.on_partitions_assigned({A0, B0})
        assert kafka_logs(logs) == [
            {"event": "kafka_partitions_assigned", "log_level": "info", "partitions": 2}
        ]
        assert source.assigned == frozenset({A0, B0})
        assert source._rebalancing is False
        inlet.batches[0].done.set_result(None)
        await until(lambda: consumer.commits == [{A0: 2}], task)
        await asyncio.wait_for(consumer.listener.on_partitions_revoked({A0}), 5)
        assert source.assigned == frozenset()
        assert source._rebalancing is True
    finally:
        await asyncio.wait_for(source.stop(), 5)
        await asyncio.wait_for(task, 5)


# ----------------------------------------------------------------- sessions


@pytest.mark.asyncio
async def test_a_session_commits_as_batches_are_delivered_and_drains_on_stop() -> None:
    metrics = Metrics()
    source = ScriptedSource(config(), metrics, [ScriptedConsumer([fetch(A0, 0, 2), fetch(A0, 2, 3)])])
    inlet = RecordingInlet("kafka")
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(source.run(inlet))
        await until(lambda: len(inlet.batches) == 2, task)
    assert kafka_logs(logs) == [
        {"event": "kafka_consumer_started", "log_level": "info", "group": "g1", "topics": 2}
    ]
    consumer = source.sessions[0]
    assert consumer.started and source.ready()
    assert sample(metrics, "eventd_source_up") == 1
    inlet.batches[0].done.set_result(None)
    await until(lambda: consumer.commits == [{A0: 2}], task)
    asyncio.get_running_loop().call_later(0.05, inlet.batches[1].done.set_result, None)
    await asyncio.wait_for(source.stop(), 5)
    assert task.done()
    await task
    assert consumer.commits == [{A0: 2}, {A0: 5}], "stop waited for the in-flight batch and committed it"
    assert consumer.stopped
    assert source.ready() is False
    assert sample(metrics, "eventd_source_up") == 0
    assert source.assigned == frozenset()
    assert sample(metrics, "eventd_source_reconnects_total") == 0
    assert len(source.sessions) == 1


@pytest.mark.asyncio
async def test_drain_gives_up_after_its_timeout_and_commits_what_was_delivered() -> None:
    source = KafkaSource(config(drain_timeout_seconds=0.05), Metrics())
    consumer = ScriptedConsumer()
    b = await delivered_batches(source, consumer, 3)
    b[0].done.set_result(None)
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(source._drain(consumer), 5)  # b[1], b[2] never finish
    assert consumer.commits == [{A0: 2}]
    assert kafka_logs(logs) == [
        {"event": "kafka_stop_batches_undelivered", "log_level": "warning", "batches": 2}
    ]


@pytest.mark.asyncio
async def test_drain_survives_an_abandoned_batch_and_a_hung_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    source = KafkaSource(config(drain_timeout_seconds=0.05), Metrics())
    consumer = ScriptedConsumer()
    b = await delivered_batches(source, consumer, 1)
    b[0].done.set_exception(OSError("lost"))
    failed = {"event": "kafka_final_commit_failed", "log_level": "warning"}
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(source._drain(consumer), 5)
    assert kafka_logs(logs) == [{**failed, "reason": "a batch's alerts could not be made safe: lost"}]
    monkeypatch.setattr(kafka_mod, "COMMIT_TIMEOUT", 0.05)
    with structlog.testing.capture_logs() as logs:
        async with source._commit_lock:
            await asyncio.wait_for(source._drain(consumer), 5)
    assert consumer.commits == []
    assert kafka_logs(logs) == [{**failed, "reason": "TimeoutError"}]


@pytest.mark.asyncio
async def test_an_abandoned_batch_restarts_the_session_from_the_last_commit() -> None:
    metrics = Metrics()
    first = ScriptedConsumer([fetch(A0, 0, 2), fetch(A0, 2, 2)])
    second = ScriptedConsumer([fetch(A0, 2, 2)])
    source = ScriptedSource(config(), metrics, [first, second])
    inlet = RecordingInlet("kafka")
    task = asyncio.create_task(source.run(inlet))
    try:
        await until(lambda: len(inlet.batches) == 2, task)
        generation = source._generation
        inlet.batches[0].done.set_result(None)
        inlet.batches[1].done.set_exception(OSError("spool full"))
        await until(lambda: len(inlet.batches) == 3, task)
        assert first.commits == [{A0: 2}]
        assert first.stopped
        assert sample(metrics, "eventd_source_reconnects_total") == 1
        assert source._generation == generation + 1
        # reset, then one failure counted: the failed session had connected.
        assert source._backoff.failures == 1, "the backoff starts over after a session that connected"
        inlet.batches[2].done.set_result(None)
        await until(lambda: second.commits == [{A0: 4}], task)
    finally:
        await asyncio.wait_for(source.stop(), 5)
        await asyncio.wait_for(task, 5)


@pytest.mark.asyncio
async def test_brokers_unreachable_at_start_are_retried_with_growing_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka_mod, "BACKOFF_INITIAL", 0.01)
    metrics = Metrics()
    failing = [ScriptedConsumer() for _ in range(2)]
    for consumer in failing:
        consumer.start_error = KafkaConnectionError("no brokers")
    source = ScriptedSource(config(), metrics, [*failing, ScriptedConsumer()])
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(source.run(RecordingInlet("kafka")))
        await until(lambda: len(source.sessions) == 3 and source.ready(), task)
    failed = {
        "event": "kafka_session_failed",
        "log_level": "warning",
        "error": str(failing[0].start_error),
        "error_type": "KafkaConnectionError",
        "exc_info": False,  # an expected failure: no traceback
    }
    assert [e for e in kafka_logs(logs) if e["event"] == "kafka_session_failed"] == [failed, failed]
    try:
        assert source._backoff.failures == 2, "sessions that never connected do not reset the backoff"
        assert sample(metrics, "eventd_source_reconnects_total") == 2
        assert all(c.stopped for c in failing)
    finally:
        await asyncio.wait_for(source.stop(), 5)
        await asyncio.wait_for(task, 5)


@pytest.mark.asyncio
async def test_an_unexpected_error_is_retried_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_mod, "BACKOFF_INITIAL", 0.01)
    broken = ScriptedConsumer([ValueError("a bug in a library")])
    source = ScriptedSource(config(), Metrics(), [broken, ScriptedConsumer()])
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(source.run(RecordingInlet("kafka")))
        await until(lambda: len(source.sessions) == 2 and source.ready(), task)
    try:
        failed = [e for e in kafka_logs(logs) if e["event"] == "kafka_session_failed"]
        assert failed == [
            {
                "event": "kafka_session_failed",
                "log_level": "warning",
                "error": "a bug in a library",
                "error_type": "ValueError",
                "exc_info": True,  # unexpected: the traceback is logged
            }
        ]
    finally:
        await asyncio.wait_for(source.stop(), 5)
        await asyncio.wait_for(task, 5)


@pytest.mark.asyncio
async def test_a_config_error_in_a_session_escapes() -> None:
    class Broken(ScriptedSource):
        def _new_consumer(self) -> Any:
            raise ConfigError("sources.kafka.sasl.password_file", "unreadable")

    source = Broken(config(), Metrics(), [])
    with pytest.raises(ConfigError):
        await asyncio.wait_for(source.run(RecordingInlet("kafka")), 5)
    assert source._finished.is_set()
    assert not source._running


@pytest.mark.asyncio
async def test_stop_before_the_brokers_answer_does_not_wait_for_them() -> None:
    consumer = ScriptedConsumer()
    consumer.start_gate = asyncio.Event()  # brokers that never answer
    metrics = Metrics()
    source = ScriptedSource(config(), metrics, [consumer])
    task = asyncio.create_task(source.run(RecordingInlet("kafka")))
    await until(lambda: source.sessions != [], task)
    await asyncio.sleep(0.02)
    assert not source.ready()
    await asyncio.wait_for(source.stop(), 5)
    await task
    assert not consumer.started and consumer.stopped
    assert consumer.getmany_calls == []
    assert sample(metrics, "eventd_source_reconnects_total") == 0
    assert len(source.sessions) == 1


@pytest.mark.asyncio
async def test_start_returns_when_the_consumer_starts() -> None:
    source = KafkaSource(config(), Metrics())
    consumer = ScriptedConsumer()
    assert await asyncio.wait_for(source._start(consumer), 5) is True
    assert consumer.started
    failing = ScriptedConsumer()
    failing.start_error = KafkaConnectionError("refused")
    with pytest.raises(KafkaConnectionError):
        await source._start(failing)


@pytest.mark.asyncio
async def test_stop_of_a_source_that_never_ran_returns() -> None:
    source = KafkaSource(config(), Metrics())
    await asyncio.wait_for(source.stop(), 1)


class StuckInlet(RecordingInlet):
    """A pipeline that is full for good: ``put`` never returns."""

    async def put(self, batch: Batch) -> None:
        self.batches.append(batch)
        await asyncio.Event().wait()


@pytest.mark.asyncio
async def test_cancelled_run_skips_the_drain() -> None:
    """The daemon's grace ran out after ``stop``: nothing may wait for the
    pipeline any more, but the consumer is still closed."""
    source = ScriptedSource(
        config(drain_timeout_seconds=60), Metrics(), [ScriptedConsumer([fetch(A0, 0, 1)])]
    )
    inlet = StuckInlet("kafka")
    task = asyncio.create_task(source.run(inlet))
    await until(lambda: len(inlet.batches) == 1, task)
    source._stopping.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert source.sessions[0].stopped
    assert source.sessions[0].commits == []


async def draining() -> tuple[ScriptedSource, RecordingInlet, asyncio.Task[None]]:
    """A session told to stop while its one batch is still being delivered."""
    source = ScriptedSource(
        config(drain_timeout_seconds=60), Metrics(), [ScriptedConsumer([fetch(A0, 0, 1)])]
    )
    inlet = RecordingInlet("kafka")
    task = asyncio.create_task(source.run(inlet))
    await until(lambda: len(inlet.batches) == 1, task)
    source._stopping.set()
    await asyncio.sleep(0.05)
    assert not task.done(), "stop waits for the in-flight batch"
    return source, inlet, task


@pytest.mark.asyncio
async def test_a_stop_while_consuming_drains_but_a_cancel_does_not() -> None:
    source, inlet, task = await draining()
    inlet.batches[0].done.set_result(None)
    await asyncio.wait_for(task, 5)
    assert source.sessions[0].commits == [{A0: 1}]


@pytest.mark.asyncio
async def test_a_cancel_during_the_drain_still_closes_the_consumer() -> None:
    """The daemon's grace runs out while a stopping session waits for its
    in-flight batch: the drain is cut short, but the consumer must still
    leave the group and close its connections."""
    source, _, task = await draining()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert source.sessions[0].stopped
    assert source.sessions[0].commits == []
    assert source.ready() is False


# ----------------------------------------------------------------- liveness


@pytest.mark.asyncio
async def test_watch_reports_brokers_down_and_back_up() -> None:
    metrics = Metrics()
    source = KafkaSource(config(session_timeout_seconds=1), metrics)
    consumer = ScriptedConsumer(assigned=(A0, A1))
    now = time.time() * 1000
    consumer.polled = {A0: None, A1: now - 5000}
    source._set_up(True)
    source._polling_since = time.monotonic() - 5
    with structlog.testing.capture_logs() as logs:
        source._watch(consumer)
    assert kafka_logs(logs) == [{"event": "kafka_brokers_unreachable", "log_level": "warning", "group": "g1"}]
    assert source.ready() is False and sample(metrics, "eventd_source_up") == 0
    source._watch(consumer)
    assert sample(metrics, "eventd_source_reconnects_total") == 0
    consumer.polled[A0] = time.time() * 1000  # one fresh partition is enough
    with structlog.testing.capture_logs() as logs:
        source._watch(consumer)
    assert kafka_logs(logs) == [{"event": "kafka_brokers_reachable_again", "log_level": "info"}]
    assert source.ready() and sample(metrics, "eventd_source_up") == 1
    assert sample(metrics, "eventd_source_reconnects_total") == 1
    source._watch(consumer)
    assert sample(metrics, "eventd_source_reconnects_total") == 1


@pytest.mark.asyncio
async def test_watch_does_not_judge_a_source_waiting_on_the_pipeline() -> None:
    source = KafkaSource(config(session_timeout_seconds=1), Metrics())
    consumer = ScriptedConsumer(assigned=(A0,))
    consumer.polled = {A0: time.time() * 1000 - 5000}
    source._set_up(True)
    source._polling_since = time.monotonic()  # it just handed a batch over
    source._watch(consumer)
    assert source.ready()


@pytest.mark.asyncio
async def test_watch_does_not_judge_without_partitions_or_while_rebalancing() -> None:
    metrics = Metrics()
    source = KafkaSource(config(session_timeout_seconds=1), metrics)
    stale = ScriptedConsumer(assigned=(A0,))
    stale.polled = {A0: time.time() * 1000 - 5000}
    source._set_up(True)
    source._polling_since = time.monotonic() - 5
    source._rebalancing = True
    source._watch(stale)
    assert source.ready()
    source._rebalancing = False
    source._set_up(False)
    idle = ScriptedConsumer(assigned=())
    source._watch(idle)
    assert not source.ready()
    assert sample(metrics, "eventd_source_reconnects_total") == 0


@pytest.mark.asyncio
async def test_assignment_and_handing_a_batch_over_restart_the_fetching_clock() -> None:
    source = KafkaSource(config(), Metrics())
    source._polling_since = 0.0
    source._on_assigned({A0})
    assert source._polling_since > 0
    source._polling_since = 0.0
    await delivered_batches(source, ScriptedConsumer(), 1)
    assert source._polling_since > 0


@pytest.mark.asyncio
async def test_start_returns_false_when_stop_comes_first() -> None:
    source = KafkaSource(config(), Metrics())
    consumer = ScriptedConsumer()
    consumer.start_gate = asyncio.Event()
    source._stopping.set()
    assert await asyncio.wait_for(source._start(consumer), 5) is False
    assert not consumer.started


@pytest.mark.asyncio
async def test_a_failed_session_does_not_drain_and_reports_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """A session that fails (brokers gone) restarts from the last commit at
    once: it does not wait for its in-flight batches, which the next session
    re-reads anyway."""
    monkeypatch.setattr(kafka_mod, "BACKOFF_INITIAL", 30.0)
    metrics = Metrics()
    assigned = asyncio.Event()
    failing = ScriptedConsumer([fetch(A0, 0, 1), assigned, KafkaConnectionError("connection lost")])
    source = ScriptedSource(config(drain_timeout_seconds=60), metrics, [failing])
    inlet = RecordingInlet("kafka")
    task = asyncio.create_task(source.run(inlet))
    try:
        await until(lambda: len(inlet.batches) == 1, task)
        await failing.listener.on_partitions_assigned({A0})
        assert source.assigned == frozenset({A0})
        assigned.set()
        await until(lambda: failing.stopped, task)
        assert sample(metrics, "eventd_source_reconnects_total") == 1
        assert source.ready() is False and sample(metrics, "eventd_source_up") == 0
        assert source.assigned == frozenset()
        assert failing.commits == []
    finally:
        await asyncio.wait_for(source.stop(), 5)
        await asyncio.wait_for(task, 5)


@pytest.mark.asyncio
async def test_closing_the_consumer_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_mod, "CLOSE_TIMEOUT", 0.05)
    consumer = ScriptedConsumer()
    consumer.stop_gate = asyncio.Event()  # leaving the group never finishes
    source = ScriptedSource(config(), Metrics(), [consumer])
    task = asyncio.create_task(source.run(RecordingInlet("kafka")))
    await until(source.ready, task)
    await asyncio.wait_for(source.stop(), 5)
    await asyncio.wait_for(task, 5)
    assert consumer.stopped


@pytest.mark.asyncio
async def test_a_session_start_restarts_the_fetching_clock() -> None:
    source = ScriptedSource(config(), Metrics(), [ScriptedConsumer()])
    source._polling_since = 0.0
    task = asyncio.create_task(source.run(RecordingInlet("kafka")))
    try:
        await until(source.ready, task)
        assert source._polling_since > 0
    finally:
        await asyncio.wait_for(source.stop(), 5)
        await asyncio.wait_for(task, 5)


@pytest.mark.asyncio
async def test_watch_judges_on_exact_clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the module's clocks fixed: a poll exactly a session old is stale,
    and fetching for exactly a session is not yet long enough to judge."""
    wall, mono = 1_000_000.0, 500.0
    monkeypatch.setattr(kafka_mod, "time", types.SimpleNamespace(time=lambda: wall, monotonic=lambda: mono))
    source = KafkaSource(config(session_timeout_seconds=1), Metrics())
    consumer = ScriptedConsumer(assigned=(A0,))
    consumer.polled = {A0: wall * 1000 - 1000}
    source._set_up(True)
    source._polling_since = mono - 1.0
    source._watch(consumer)
    assert source.ready(), "fetching for exactly a session: no judgement yet"
    source._polling_since = mono - 1.001
    source._watch(consumer)
    assert source.ready() is False
    consumer.polled = {A0: wall * 1000 - 999}
    source._watch(consumer)
    assert source.ready() is True


def test_a_rejected_message_is_logged_by_reason_and_size_never_its_body() -> None:
    source = KafkaSource(config(), Metrics())
    with structlog.testing.capture_logs() as logs:
        source._decode(b"{not json", [], RecordingInlet("kafka"))
    assert kafka_logs(logs) == [
        {"event": "kafka_message_rejected", "log_level": "debug", "reason": "json", "size": 9}
    ]
