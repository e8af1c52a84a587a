"""The Kafka sink's edges that its mutation run (issue 17, ``scripts/mutation.py``)
showed untested: each test here kills mutants that survived
``tests/test_sink_kafka.py`` (see ``tests/MUTATION.md``, "sinks/kafka.py").

Most of the logic that decides what a message looks like, which failure label
is counted and what the spool holds is pure, so it is tested directly (fast,
and a mutant of it costs a second).  The sink's life cycle (receipts, health,
close, a blocked append) runs against a real broker (tansu, the session
fixture), a closed port, or a *silent* peer: a listening socket that never
answers, so the producer is stuck connecting and nothing gets acknowledged
or fails while the test looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import structlog
from aiokafka import TopicPartition
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    RequestTimedOutError,
    UnknownTopicOrPartitionError,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventd.backoff import backoff_ceiling
from eventd.config import ClientTLS, ConfigError, KafkaRoute, KafkaSASL, KafkaSinkConfig
from eventd.kafka_client import ConsumedOffsets
from eventd.logs import KAFKA_LOGGERS, KafkaLogFolder
from eventd.metrics import Metrics
from eventd.priority import Priority
from eventd.sinks import kafka as kafka_module
from eventd.sinks.kafka import ROOM_POLL_SECONDS, KafkaSink, Router, _append_all, failure_reason
from eventd.sinks.kafka_transactions import TransactionRefused
from eventd.sinks.spool import Spool, SpoolError
from tests.support.kafka_broker import KafkaBroker, free_port
from tests.support.tls_certs import make_tls_files
from tests.support.waiting import wait_until
from tests.test_sink_kafka import config, make_alert, make_sink, read_messages, sample

KEY = KafkaSink.config_key
JSON = ("content-type", b"application/json")

# ------------------------------------------------------------- pure parts


def router(**kwargs: Any) -> Router:
    kwargs.setdefault("topic", "alerts")
    return Router(KafkaSinkConfig(**kwargs), KEY)


def doc(**fields: Any) -> bytes:
    return orjson.dumps(fields)


@pytest.mark.parametrize("value", [b"not json", b"", b"\xff\xfe", b"[1, 2]", b'"text"', b"null", b"42"])
def test_a_record_that_is_not_an_alert_goes_to_the_default_topic_unkeyed(value: bytes) -> None:
    """A spool written by something else is delivered, never dropped, and
    still says it is JSON (the only header that needs no alert field)."""
    assert router(routes=(KafkaRoute(topic="other"),)).message(value) == ("alerts", None, [JSON])


def test_headers_name_the_alert_and_skip_empty_fields() -> None:
    value = doc(rule="R", priority="Critical", source="syscall", uuid="u-1", eventd={"namespace": "ns"})
    assert router().message(value) == (
        "alerts",
        b"ns",
        [("rule", b"R"), ("priority", b"Critical"), ("source", b"syscall"), ("uuid", b"u-1"), JSON],
    )
    assert router().message(doc(rule="", priority=None, uuid="u-2")) == (
        "alerts",
        None,
        [("uuid", b"u-2"), JSON],
    )


@pytest.mark.parametrize("context", ["a string", ["namespace"], 7, None])
def test_a_context_that_is_not_a_mapping_gives_no_key(context: object) -> None:
    for key in ("namespace", "workload", "registry"):
        assert router(key=key).message(doc(rule="R", eventd=context))[1] is None


@pytest.mark.parametrize(
    ("images", "expected"),
    [
        ([{"registry": "quay.io"}, {"registry": "ghcr.io"}], b"quay.io"),  # the first image's
        ([], None),
        (["quay.io/app:1"], None),  # an image that is not a mapping
        ([{"name": "app"}], None),
        ({"registry": "quay.io"}, None),  # not a list
        ("quay.io", None),
        (None, None),
    ],
)
def test_the_registry_key_is_the_first_images_registry(images: object, expected: bytes | None) -> None:
    assert router(key="registry").message(doc(rule="R", eventd={"images": images}))[1] == expected


def test_routes_match_on_every_criterion_they_set_first_route_wins() -> None:
    routes = (
        KafkaRoute(topic="secrets", rules=("Read secret", "List secrets")),
        KafkaRoute(topic="loud", priorities=("critical", "emergency"), tags=("mitre",)),
        KafkaRoute(topic="tagged", tags=("pci",)),
    )
    route = router(routes=routes)

    def topic(**fields: Any) -> str:
        return route.message(doc(**fields))[0]

    assert topic(rule="List secrets", priority="Debug") == "secrets"
    assert topic(rule="Other", priority="Critical", tags=["x", "mitre"]) == "loud"
    assert topic(rule="Other", priority="Emergency", tags=["mitre", "pci"]) == "loud"
    assert topic(rule="Other", priority="Warning", tags=["mitre", "pci"]) == "tagged"
    assert topic(rule="Other", priority="Critical", tags=["x"]) == "alerts"
    assert topic(rule="Other", priority="bogus", tags=["mitre"]) == "alerts"  # unreadable priority
    assert topic(rule="Other", tags=[1, None, {"pci": 1}]) == "alerts"  # non-string tags ignored
    assert topic(rule="Other", tags=None) == "alerts"


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FIELDS = st.dictionaries(
    st.sampled_from(["rule", "priority", "source", "uuid", "tags", "eventd", "output"]), JSONISH, max_size=7
)


# Slow input generation is the mutation run's tracing, not the strategy.
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(st.binary(max_size=64), FIELDS.map(orjson.dumps)))
def test_any_spooled_record_gives_a_message(value: bytes) -> None:
    """Hostile spool contents never stop delivery: every record maps to a
    legal topic, a bytes key or none, and headers ending with the content type."""
    topic, key, headers = router(key="registry", routes=(KafkaRoute(topic="t", tags=("x",)),)).message(value)
    assert topic in ("alerts", "t")
    assert key is None or isinstance(key, bytes)
    assert headers[-1] == JSON and all(isinstance(v, bytes) for _, v in headers)


def refused(cfg: KafkaSinkConfig) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        Router(cfg, KEY)
    return caught.value


def test_config_errors_name_the_key_and_say_what_is_wrong() -> None:
    err = refused(KafkaSinkConfig(key="pod"))
    assert (err.key, str(err)) == (
        "sinks.kafka.key",
        "sinks.kafka.key: expected one of namespace, workload, registry, rule, none",
    )
    err = refused(KafkaSinkConfig(topic="a/b"))
    assert (err.key, str(err)) == (
        "sinks.kafka.topic",
        "sinks.kafka.topic: invalid Kafka topic name 'a/b' (letters, digits, '.', '_', '-')",
    )
    with pytest.raises(ValueError) as parse:
        Priority.parse("loud")
    err = refused(
        KafkaSinkConfig(routes=(KafkaRoute(topic="ok"), KafkaRoute(topic="x", priorities=("loud",))))
    )
    assert (err.key, str(err)) == (
        "sinks.kafka.routes[1].priorities",
        f"sinks.kafka.routes[1].priorities: {parse.value}",
    )
    err = refused(KafkaSinkConfig(routes=(KafkaRoute(topic=".."),)))
    assert err.key == "sinks.kafka.routes[0].topic"


@pytest.mark.parametrize("name", ["", ".", "..", "a" * 250, "a b", "ü", "a/b"])
def test_illegal_topic_names_are_refused(name: str) -> None:
    assert refused(KafkaSinkConfig(topic=name)).key == "sinks.kafka.topic"


@pytest.mark.parametrize("name", ["a" * 249, "...", "A-b_c.9"])
def test_legal_topic_names_are_taken(name: str) -> None:
    assert router(topic=name).message(b"x")[0] == name


@pytest.mark.parametrize(
    ("err", "label"),
    [
        (KafkaConnectionError("down"), "connection"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "connection"),
        (OSError(errno.EIO, "spool"), "connection"),
        (KafkaTimeoutError(), "timeout"),
        (RequestTimedOutError(), "timeout"),  # a KafkaError: the timeout label wins
        (TimeoutError(), "timeout"),
        (ConfigError("sinks.kafka.tls.ca", "missing"), "config"),  # a ValueError: not "error"
        (UnknownTopicOrPartitionError(), "broker_error"),
        (ValueError("other"), "error"),
    ],
)
def test_failure_labels_are_the_documented_set(err: BaseException, label: str) -> None:
    """``eventd_sink_failures_total{reason}`` values are an interface: alert
    rules and dashboards select on them."""
    assert failure_reason(err) == label


def test_append_all_appends_from_where_it_stopped_and_says_why_it_stops(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "a", 4096, "block", Metrics(), "kafka")
    try:
        assert _append_all(spool, [b"zero", b"one", b"two"], 1) == (3, None)
        assert [body for _, body in spool.peek(10)] == [b"one", b"two"]
    finally:
        spool.close()
    spool = Spool(tmp_path / "b", 4096, "block", Metrics(), "kafka")
    try:
        values = [bytes([65 + i]) * 1000 for i in range(8)]
        stopped, full = _append_all(spool, values, 2)
        assert full is not None and full.reason == "spool_full"
        assert 2 < stopped < len(values)
        assert [body for _, body in spool.peek(10)] == values[2:stopped]
    finally:
        spool.close()


# ------------------------------------------- the sink's settings, no broker


def built(tmp_path: Path, **kwargs: Any) -> KafkaSink:
    kwargs.setdefault("bootstrap_servers", ("127.0.0.1:9",))
    kwargs.setdefault("spool_dir", tmp_path / "spool")
    return KafkaSink(KafkaSinkConfig(**kwargs), Metrics())


def refused_sink(tmp_path: Path, **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(ConfigError) as caught:
        built(tmp_path, **kwargs)
    return caught.value.key, str(caught.value)


def test_a_bad_sink_setting_is_refused_when_the_sink_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every setting that would make the sender fail forever (or start()
    fail) is refused up front, naming its key and what is wrong; nothing is
    created on disk before start()."""
    assert refused_sink(tmp_path, key="pod") == (
        "sinks.kafka.key",
        "sinks.kafka.key: expected one of namespace, workload, registry, rule, none",
    )
    assert refused_sink(tmp_path, bootstrap_servers=()) == (
        "sinks.kafka.bootstrap_servers",
        "sinks.kafka.bootstrap_servers: at least one host:port is required",
    )
    missing = tmp_path / "missing.pem"
    assert refused_sink(tmp_path, tls=ClientTLS(ca=missing)) == (
        "sinks.kafka.tls.ca",
        f"sinks.kafka.tls.ca: cannot read {missing}: No such file or directory",
    )
    # Readable files, but a certificate without its key: refused by the
    # producer settings, which are built once at start-up for that reason.
    certs = make_tls_files(tmp_path / "certs")
    assert refused_sink(tmp_path, tls=ClientTLS(cert=certs.client_cert)) == (
        "sinks.kafka.tls",
        "sinks.kafka.tls: cert and key must be given together (client certificate for mutual TLS)",
    )
    assert refused_sink(tmp_path, sasl=KafkaSASL(username="")) == (
        "sinks.kafka.sasl.username",
        "sinks.kafka.sasl.username: required with SASL",
    )
    assert refused_sink(tmp_path, spool_max_bytes=4095) == (
        "sinks.kafka.spool_max_bytes",
        "sinks.kafka.spool_max_bytes: 4095 is too small, the minimum is 4096",
    )
    afile = tmp_path / "a-file"
    afile.write_text("")
    assert refused_sink(tmp_path, spool_dir=afile) == (
        "sinks.kafka.spool_dir",
        f"sinks.kafka.spool_dir: {afile} is a file, expected a directory",
    )
    built(tmp_path, spool_max_bytes=4096)  # the edge is allowed
    assert not (tmp_path / "spool").exists()
    # A codec whose package is missing (cramjam, for all but gzip) is
    # refused; "none" needs none.
    for name in kafka_module.CODECS:
        monkeypatch.setitem(kafka_module.CODECS, name, lambda: False)
    assert refused_sink(tmp_path, compression="lz4") == (
        "sinks.kafka.compression",
        "sinks.kafka.compression: lz4 needs the Python package cramjam",
    )
    built(tmp_path, compression="none")
    monkeypatch.setitem(kafka_module.CODECS, "zstd", lambda: True)
    built(tmp_path, compression="zstd")


@pytest.mark.parametrize(
    ("acks", "compression", "timeout", "expected"),
    [
        ("all", "none", 30.0, {"acks": "all", "compression_type": None, "request_timeout_ms": 30000}),
        ("1", "lz4", 2.5, {"acks": 1, "compression_type": "lz4", "request_timeout_ms": 2500}),
        ("0", "gzip", 0.0019, {"acks": 0, "compression_type": "gzip", "request_timeout_ms": 1}),
    ],
)
def test_producer_settings(
    tmp_path: Path, acks: str, compression: str, timeout: float, expected: dict[str, Any]
) -> None:
    """What the producer is built with, whole: acknowledgements as configured
    (``all`` by default), ordered retries without idempotence, a short linger."""
    sink = built(
        tmp_path,
        bootstrap_servers=("k1:9092", "k2:9092"),
        acks=acks,
        compression=compression,
        client_id="edge-7",
        request_timeout_seconds=timeout,
    )
    assert sink._options() == {
        "bootstrap_servers": ["k1:9092", "k2:9092"],
        "client_id": "edge-7",
        "security_protocol": "PLAINTEXT",
        "enable_idempotence": False,
        "linger_ms": 5,
        **expected,
    }


def test_producer_settings_with_tls_and_sasl(tmp_path: Path) -> None:
    """TLS and SASL reach the producer; its password file is re-read on each
    (re)connect, and a bad rotation is counted under the sink's key, the
    password read before kept."""
    certs = make_tls_files(tmp_path / "certs")
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    sasl = KafkaSASL(mechanism="SCRAM-SHA-512", username="eventd", password_file=password)
    sink = built(tmp_path, tls=ClientTLS(ca=certs.ca), sasl=sasl)
    password.unlink()
    options = sink._options()
    assert isinstance(options.pop("ssl_context"), ssl.SSLContext)
    assert options == {
        "bootstrap_servers": ["127.0.0.1:9"],
        "client_id": "eventd",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "eventd",
        "sasl_plain_password": "s3cret",
        "acks": "all",
        "compression_type": None,
        "enable_idempotence": False,
        "request_timeout_ms": 30000,
        "linger_ms": 5,
    }
    refused = {"key": "sinks.kafka.sasl.password_file", "reason": "unreadable"}
    assert sink.metrics.registry.get_sample_value("eventd_secret_file_rejected_total", refused) == 1


def test_sasl_plain_without_tls_is_logged_under_the_sinks_key(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("s3cret")
    with structlog.testing.capture_logs() as logs:
        built(tmp_path, sasl=KafkaSASL(username="eventd", password_file=password))
    assert [e for e in logs if e["event"] == "kafka_sasl_plain_without_tls"] == [
        {
            "event": "kafka_sasl_plain_without_tls",
            "log_level": "warning",
            "config": "sinks.kafka",
            "reason": "password sent in clear text",
        }
    ]


def test_the_backoff_grows_from_the_configured_initial_delay_to_the_cap(tmp_path: Path) -> None:
    sink = KafkaSink(
        KafkaSinkConfig(bootstrap_servers=("127.0.0.1:9",), spool_dir=tmp_path),
        Metrics(),
        backoff_initial=0.2,
        backoff_max=3.0,
    )
    for failures in range(8):
        ceiling = backoff_ceiling(failures, 0.2, 3.0)
        assert ceiling / 2 <= sink._backoff(failures) <= ceiling
    assert backoff_ceiling(0, 0.2, 3.0) == 0.2 and backoff_ceiling(7, 0.2, 3.0) == 3.0


def test_the_daemons_sink_uses_the_documented_timings(tmp_path: Path) -> None:
    """eventd builds every sink as ``cls(config, metrics)``
    (``eventd/components.py``), so these defaults are what runs: retries
    from 0.2 s doubling to 30 s, unhealthy after 5 s of outage, 10 s to
    close, the spool synced every second."""
    sink = KafkaSink(KafkaSinkConfig(bootstrap_servers=("127.0.0.1:9",), spool_dir=tmp_path), Metrics())
    timings = (sink._backoff_initial, sink._backoff_max, sink._unhealthy_after, sink._close_timeout)
    assert timings == (0.2, 30.0, 5.0, 10.0)
    assert sink._fsync_interval == 1.0
    assert 0.1 <= sink._backoff(0) <= 0.2 and 15.0 <= sink._backoff(30) <= 30.0


@pytest.mark.asyncio
async def test_start_opens_the_configured_spool_and_names_the_sender(tmp_path: Path) -> None:
    """The spool start() opens is the configured one (place, bound, policy,
    the sink's metric label and its fsync interval); the sender task is
    named ``kafka-sink`` (what an asyncio task dump shows)."""
    cfg = config(f"127.0.0.1:{free_port()}", tmp_path / "spool", spool_full_policy="drop_newest")
    cfg = replace(cfg, spool_max_bytes=8192)
    metrics = Metrics()
    sink = KafkaSink(cfg, metrics, fsync_interval=0.25, close_timeout=0.2)
    async with sender_of(sink) as sender:
        try:
            spool = sink._started()
            assert (spool.directory, spool.max_bytes, spool.full_policy, spool.name) == (
                cfg.spool_dir,
                8192,
                "drop_newest",
                "kafka",
            )
            assert spool._fsync_interval == 0.25
            assert sender.get_name() == "kafka-sink"
            await sink.send_many([make_alert(0)])
            assert sample(metrics, "eventd_spool_alerts") == 1
        finally:
            await sink.close()


@pytest.mark.asyncio
async def test_send_transaction_builds_its_messages_as_the_spooled_path_does(tmp_path: Path) -> None:
    """The exactly-once path gets the sink's router (topic, key, headers)
    and its settings.  No broker here takes transactional producers (tansu
    refuses them, ``tests/test_exactly_once.py``), so this checks the wiring
    the failed first try leaves behind: a closed port fails it."""
    cfg = replace(config(f"127.0.0.1:{free_port()}", tmp_path), transactional_id="tx-1")
    sink = make_sink(cfg, Metrics())
    try:
        with pytest.raises(KafkaError):
            await sink.send_transaction([make_alert(0)], consumed(1))
        delivery = sink._transactions
        assert delivery is not None
        assert delivery._message_of == sink._router.message
        assert delivery._options == sink._options
    finally:
        if sink._transactions is not None:
            await sink._transactions.close()


#: The sink's own log events, the ones an operator acts on.
SINK_EVENTS = frozenset(
    {
        "kafka_sink_failing",
        "kafka_sink_recovered",
        "kafka_sink_error",
        "kafka_spool_blocked",
        "kafka_spool_accepting_again",
        "kafka_alert_too_large",
    }
)


def sink_logs(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sink's own events, whole (event, level, every field), in order: a
    renamed event drops out of this list and shows as missing."""
    return [e for e in logs if e.get("event") in SINK_EVENTS]


# ------------------------------------------------------- the sink's life cycle


@contextmanager
def silent_peer() -> Iterator[str]:
    """``host:port`` of a socket that takes connections (the kernel's backlog)
    and never answers: a broker that hangs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def failures(metrics: Metrics) -> float:
    return sum(s.value for s in metrics.sink_failures.collect()[0].samples if s.name.endswith("_total"))


@asynccontextmanager
async def sender_of(sink: KafkaSink) -> AsyncIterator[asyncio.Task[Any]]:
    """Start ``sink``; yields its sender task (found as the task start() made)."""
    before = asyncio.all_tasks()
    await sink.start()
    [task] = asyncio.all_tasks() - before
    yield task


@pytest.mark.asyncio
async def test_a_sink_that_was_not_started_refuses_to_send(tmp_path: Path) -> None:
    sink = make_sink(config(f"127.0.0.1:{free_port()}", tmp_path), Metrics())
    assert not sink.healthy() and not sink.accepting()
    with pytest.raises(RuntimeError, match=r"^KafkaSink\.start\(\) was not called$"):
        await sink.send_many([make_alert(0)])
    await sink.close()  # nothing to close


@pytest.mark.asyncio
async def test_close_fails_unacknowledged_receipts_and_keeps_their_alerts(tmp_path: Path) -> None:
    """With a broker that hangs, a receipt stays pending (its alert is only in
    the spool); close() gives up waiting after ``close_timeout`` (not after
    the producer's request timeout), stops the sender, fails the receipt and
    leaves the alert in the spool for the next start; a health probe during
    close() answers (False once the sender is stopped) instead of failing."""
    metrics = Metrics()
    alert = make_alert(0)
    with silent_peer() as bootstrap:
        cfg = replace(config(bootstrap, tmp_path), request_timeout_seconds=60.0)
        sink = make_sink(cfg, metrics, close_timeout=0.2)
        async with sender_of(sink) as sender:
            assert sink.accepting() and sink.healthy()
            receipt = await sink.send_many([alert])
            assert isinstance(receipt, asyncio.Future) and not receipt.done()
            assert await sink.send_many([]) is None
            # Health probes (``/healthz``) go on while the sink closes.
            answers: list[bool] = []

            async def probe() -> None:
                while True:
                    answers.append(sink.healthy())
                    await asyncio.sleep(0)

            prober = asyncio.create_task(probe())
            await sink.close()
            prober.cancel()
            with pytest.raises(asyncio.CancelledError):
                await prober
        assert sender.done()
        assert answers and answers[-1] is False
        assert failures(metrics) == 0  # closed before the producer's request timeout
        assert receipt.done()
        err = receipt.exception()
        assert isinstance(err, SpoolError) and str(err) == "closed before the broker acknowledged"
        assert not sink.accepting() and not sink.healthy()
        await sink.close()  # a second close does nothing
        with pytest.raises(RuntimeError, match="not called"):
            await sink.send(alert)
    spool = Spool(cfg.spool_dir, cfg.spool_max_bytes, "block", Metrics(), "kafka")
    try:
        assert [body for _, body in spool.peek(10)] == [alert.to_json()]
    finally:
        spool.close()


@pytest.mark.asyncio
async def test_a_dead_sender_makes_the_sink_unhealthy_and_flush_returns(tmp_path: Path) -> None:
    """The sender task is the sink: once it is gone (cancelled here, as any
    end of it), the sink neither reports healthy nor accepts, and flush()
    does not wait for a spool nothing will drain."""
    with silent_peer() as bootstrap:
        sink = make_sink(replace(config(bootstrap, tmp_path), request_timeout_seconds=60.0), Metrics())
        async with sender_of(sink) as sender:
            await sink.send(make_alert(0))
            assert sink.healthy() and sink.accepting()
            sender.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sender
            assert not sink.healthy() and not sink.accepting()
            await asyncio.wait_for(sink.flush(), 15)  # bounded: a broken build fails, not hangs
            assert sample(sink.metrics, "eventd_spool_alerts") == 1
            await sink.close()


@pytest.mark.asyncio
async def test_health_turns_false_just_after_unhealthy_after_seconds_of_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real outage (a closed port), read on a clock the test sets: healthy
    up to and including ``unhealthy_after`` seconds after the first failure."""
    now = [1000.0]
    monkeypatch.setattr(kafka_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    metrics = Metrics()
    sink = make_sink(config(f"127.0.0.1:{free_port()}", tmp_path), metrics, unhealthy_after=5.0)
    async with sender_of(sink):
        try:
            await sink.send(make_alert(0))
            await wait_until(lambda: sample(metrics, "eventd_sink_failures_total", reason="connection") >= 1)
            # The spool holds the alert durably: flush() does not wait out an outage.
            await asyncio.wait_for(sink.flush(), 15)
            assert sample(metrics, "eventd_spool_alerts") == 1
            now[0] = 1005.0
            assert sink.healthy()
            now[0] = 1005.001
            assert not sink.healthy()
        finally:
            await sink.close()


class FlakySpoolReads(KafkaSink):
    """The real sink whose first three steps fail as a spool read error would
    (``EIO``); records the count of consecutive failures each step is given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.given: list[int] = []

    async def _step(self, failures: int) -> int:
        self.given.append(failures)
        if len(self.given) <= 3:
            raise OSError(errno.EIO, "spool read failed")
        return await super()._step(failures)


@pytest.mark.asyncio
async def test_spool_errors_keep_the_sender_alive_and_count_consecutive_failures(tmp_path: Path) -> None:
    """Each error counts one more consecutive failure (which sets the backoff
    and the retry count), from zero, and the sender keeps going."""
    cfg = config(f"127.0.0.1:{free_port()}", tmp_path)
    sink = FlakySpoolReads(cfg, Metrics(), backoff_initial=0.001, backoff_max=0.01, fsync_interval=0.05)
    with structlog.testing.capture_logs() as logs:
        async with sender_of(sink) as sender:
            try:
                await wait_until(lambda: len(sink.given) >= 5 or sender.done())
                assert sink.given[:5] == [0, 1, 2, 3, 3]
                assert not sender.done() and sink.accepting()
            finally:
                await sink.close()
    # Each one logged with its traceback (``exc_info``), nothing else.
    assert sink_logs(logs) == 3 * [{"event": "kafka_sink_error", "log_level": "error", "exc_info": True}]


class Gated(KafkaSink):
    """The real sink, whose sender waits for ``gate`` before producing: the
    test decides when the broker gets (and acknowledges) anything."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()

    async def _deliver(self, records: list[tuple[int, bytes]]) -> tuple[int, int, BaseException | None]:
        await self.gate.wait()
        return await super()._deliver(records)


@pytest.mark.asyncio
async def test_a_full_spool_blocks_senders_until_the_broker_drains_it(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """``spool_full_policy: block``: receipts stay pending until the broker has
    the alerts; the append that does not fit waits (across several room
    polls), is counted once as ``spool_full``, and the sink says it is not
    accepting; once the broker drains the spool the waiting append lands,
    every receipt resolves and every alert is in the topic once, in order."""
    cfg = config(kafka_broker.bootstrap, tmp_path, spool_max_bytes=4096)
    kafka_broker.create_topic(cfg.topic)
    metrics = Metrics()
    sink = Gated(cfg, metrics, backoff_initial=0.05, backoff_max=0.3, fsync_interval=0.2)
    with structlog.testing.capture_logs() as logs:
        async with sender_of(sink):
            try:
                receipts: list[asyncio.Future[None]] = []
                alerts = []
                while True:
                    alerts.append(make_alert(len(alerts)))
                    sending = asyncio.create_task(sink.send_many([alerts[-1]]))
                    await wait_until(lambda: sending.done() or not sink.accepting())  # noqa: B023
                    if not sending.done():
                        break
                    receipts.append(sending.result())
                    assert sink.accepting()
                assert len(receipts) >= 2
                assert not any(r.done() for r in receipts)
                assert sample(metrics, "eventd_sink_failures_total", reason="spool_full") == 1
                await asyncio.sleep(3 * ROOM_POLL_SECONDS)  # let the blocked append retry a few times
                assert not sending.done() and not sink.accepting()
                assert sample(metrics, "eventd_sink_failures_total", reason="spool_full") == 1
                assert failures(metrics) == 1

                sink.gate.set()
                last = await asyncio.wait_for(sending, 30)
                assert last is not None
                receipts.append(last)
                await asyncio.wait_for(asyncio.gather(*receipts), 30)
                assert sink.accepting()
                assert failures(metrics) == 1
            finally:
                await sink.close()
    messages = read_messages(kafka_broker.bootstrap, cfg.topic, len(alerts))
    assert [m.uuid for m in messages] == [a.uuid for a in alerts]
    # The operator's view: one warning when appends start to wait (with the
    # spool's depth then), one note when they go through again.
    blocked = {"event": "kafka_spool_blocked", "log_level": "warning", "reason": "spool_full"}
    assert sink_logs(logs) == [
        {**blocked, "spool_alerts": len(alerts) - 1},
        {"event": "kafka_spool_accepting_again", "log_level": "info", "reason": "spool_full"},
    ]


@pytest.mark.asyncio
async def test_a_blocked_append_retries_when_room_comes_without_a_signal(tmp_path: Path) -> None:
    """A freed disk sends no signal: a blocked append must retry on its own
    (every ``ROOM_POLL_SECONDS``), not only when the sender reports
    progress.  Here the sender is held before producing, so it reports
    nothing; the room is made by acknowledging the spool directly."""
    cfg = config(f"127.0.0.1:{free_port()}", tmp_path, spool_max_bytes=4096)
    sink = Gated(cfg, Metrics(), backoff_initial=0.05, backoff_max=0.3, fsync_interval=0.2, close_timeout=0.2)
    async with sender_of(sink):
        try:
            while True:
                sending = asyncio.create_task(sink.send_many([make_alert(0)]))
                await wait_until(lambda: sending.done() or not sink.accepting())  # noqa: B023
                if not sending.done():
                    break
            spool = sink._started()
            await asyncio.to_thread(spool.ack_through, spool.next_position - 1)
            await wait_until(sending.done, timeout=20, what="the blocked append's own retry")
            assert sending.result() is not None and sink.accepting()
            assert spool.depth == 1
        finally:
            await sink.close()


@pytest.mark.asyncio
async def test_an_outage_and_the_recovery_are_logged_once_each(
    private_kafka_broker: KafkaBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker outage: one warning when it starts (why, the error, how many
    alerts wait in the spool), none while retrying (no ``kafka_sink_error``
    either: the retry loop itself must not fail), and one note when
    delivering again, with what is left in the spool."""
    broker = private_kafka_broker
    cfg = config(broker.bootstrap, tmp_path)
    metrics = Metrics()
    sink = make_sink(cfg, metrics)
    # The library's own records, folded as eventd's logging set-up does.
    folder = KafkaLogFolder()
    for name in KAFKA_LOGGERS:
        library = logging.getLogger(name)
        monkeypatch.setattr(library, "handlers", [folder])
        monkeypatch.setattr(library, "propagate", False)
        monkeypatch.setattr(library, "level", logging.WARNING)
    broker.stop()
    with structlog.testing.capture_logs() as logs:
        async with sender_of(sink):
            try:
                await sink.send_many([make_alert(0), make_alert(1)])
                await wait_until(lambda: sample(metrics, "eventd_sink_retries_total") >= 3)
                broker.start()
                broker.create_topic(cfg.topic)
                await wait_until(lambda: sample(metrics, "eventd_sink_deliveries_total") == 2, timeout=60)
                at_recovery = sink_logs(logs)
                # Deliveries while nothing fails say nothing.
                await sink.send(make_alert(2))
                await asyncio.wait_for(sink.flush(), 30)
            finally:
                await sink.close()
    said = sink_logs(logs)
    assert said == at_recovery
    # The error is the library's exception, named by its class (its wording
    # is aiokafka's, and may change between releases).
    error = said[0].pop("error", "")
    assert error.startswith("KafkaConnectionError: ") and broker.bootstrap.rsplit(":", 1)[1] in error
    assert said == [
        {"event": "kafka_sink_failing", "log_level": "warning", "reason": "connection", "spool_alerts": 2},
        {"event": "kafka_sink_recovered", "log_level": "info", "spool_alerts": 0},
    ]
    # The producer's library records are folded under the sink's key (one
    # line when the failure starts), not under an anonymous client.
    folded = [(e["event"], e["client"]) for e in logs if e["event"].startswith("kafka_client_")]
    assert folded[0] == ("kafka_client_failing", "sinks.kafka")
    assert ("kafka_client_recovered", "sinks.kafka") in folded
    assert {client for _, client in folded} == {"sinks.kafka"}
    # ... and the library's errors count under this sink, as the sink's own do.
    counted = metrics.sink_failures.collect()[0].samples
    assert {s.labels["sink"] for s in counted} == {"kafka"}
    assert sample(metrics, "eventd_sink_failures_total", reason="connection") >= 2


def broker_connections(bootstrap: str) -> int:
    """This process's established TCP connections to ``bootstrap`` (from
    ``/proc``: the sockets among our file descriptors)."""
    port = int(bootstrap.rsplit(":", 1)[1])
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                ours.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table, encoding="ascii") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "01" and fields[9] in ours:
                    count += 1
    return count


@pytest.mark.asyncio
async def test_close_and_a_failure_stop_the_producer(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    """A producer the sink lets go of is stopped: it leaves no connection to
    the broker open (after close(), and after a failed delivery, which
    drops the producer so the next one re-reads TLS/SASL files)."""
    cfg = config(kafka_broker.bootstrap, tmp_path)
    kafka_broker.create_topic(cfg.topic)
    before = broker_connections(kafka_broker.bootstrap)
    sink = make_sink(cfg, Metrics())
    async with sender_of(sink):
        try:
            await sink.send(make_alert(0))
            await asyncio.wait_for(sink.flush(), 30)
            assert broker_connections(kafka_broker.bootstrap) > before
            await sink._drop_producer()
            assert sink._producer is None
            await wait_until(lambda: broker_connections(kafka_broker.bootstrap) == before, timeout=10)
            await sink.send(make_alert(1))  # a new producer
            await asyncio.wait_for(sink.flush(), 30)
            assert broker_connections(kafka_broker.bootstrap) > before
        finally:
            await sink.close()
    await wait_until(lambda: broker_connections(kafka_broker.bootstrap) == before, timeout=10)


@pytest.mark.asyncio
async def test_close_is_bounded_when_the_broker_freezes_mid_request(
    private_kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """A broker that stops answering (SIGSTOP) while a produce request is in
    flight: stopping the producer would wait for the request timeout (60 s
    here); close() gives up on it after ``close_timeout`` and returns
    normally, the unacknowledged alert kept in the spool."""
    broker = private_kafka_broker
    cfg = replace(config(broker.bootstrap, tmp_path), request_timeout_seconds=60.0)
    broker.create_topic(cfg.topic)
    sink = make_sink(cfg, Metrics(), close_timeout=0.5)
    assert broker._proc is not None
    pid = broker._proc.pid
    try:
        async with sender_of(sink):
            await sink.send(make_alert(0))
            await asyncio.wait_for(sink.flush(), 30)
            os.kill(pid, signal.SIGSTOP)
            receipt = await sink.send_many([make_alert(1)])
            await asyncio.sleep(0.3)  # the produce request goes out
            await asyncio.wait_for(sink.close(), 20)
        assert receipt is not None and isinstance(receipt.exception(), SpoolError)
    finally:
        os.kill(pid, signal.SIGCONT)
    spool = Spool(cfg.spool_dir, cfg.spool_max_bytes, "block", Metrics(), "kafka")
    try:
        assert [body for _, body in spool.peek(10)] == [make_alert(1).to_json()]
    finally:
        spool.close()


@pytest.mark.asyncio
async def test_an_alert_too_large_is_logged_with_its_size(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    cfg = config(kafka_broker.bootstrap, tmp_path)
    kafka_broker.create_topic(cfg.topic)
    huge = make_alert(0)
    huge.output_fields["blob"] = "x" * (2 << 20)  # over aiokafka's max_request_size
    metrics = Metrics()
    sink = make_sink(cfg, metrics)
    with structlog.testing.capture_logs() as logs:
        async with sender_of(sink):
            try:
                await sink.send_many([huge, make_alert(1)])
                await asyncio.wait_for(sink.flush(), 30)
            finally:
                await sink.close()
    said = sink_logs(logs)
    assert len(said) == 1
    # The library's exception, by its class (aiokafka's wording may change).
    assert "MessageSizeTooLargeError" in said[0].pop("error", "")
    assert said == [{"event": "kafka_alert_too_large", "log_level": "error", "bytes": len(huge.to_json())}]


def consumed(generation: int) -> ConsumedOffsets:
    return ConsumedOffsets("g", {TopicPartition("audit", 0): 10}, generation, lambda: True)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("configured", "expected"), [("", f"eventd-tx-{socket.gethostname()}"), ("tx-7", "tx-7")]
)
async def test_send_transaction_uses_one_transactional_producer_of_the_sink(
    kafka_broker: KafkaBroker, tmp_path: Path, configured: str, expected: str
) -> None:
    """``sources.kafka.exactly_once`` through the sink: its transactional id
    (configured, else ``<client_id>-<host name>``), its metrics, and one
    delivery kept across batches, whose ordering guard then refuses the rest
    of a failed generation.  tansu refuses transactional producers
    (``tests/test_exactly_once.py``), so each first try fails there, as a
    Kafka error, counted once under this sink."""
    cfg = replace(
        config(kafka_broker.bootstrap, tmp_path), client_id="eventd-tx", transactional_id=configured
    )
    metrics = Metrics()
    sink = make_sink(cfg, metrics)
    try:
        with pytest.raises(KafkaError):
            await sink.send_transaction([make_alert(0)], consumed(1))
        assert sample(metrics, "eventd_sink_failures_total", reason="transaction") == 1
        with pytest.raises(TransactionRefused, match="generation 1"):
            await sink.send_transaction([make_alert(1)], consumed(1))
        assert sample(metrics, "eventd_sink_failures_total", reason="transaction") == 1
        assert sink._transactions is not None and sink._transactions.transactional_id == expected
    finally:
        await sink.close()
        if sink._transactions is not None:
            await sink._transactions.close()


@pytest.mark.asyncio
async def test_flush_returns_once_the_broker_has_everything(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """flush() waits while the alerts are only in the spool (the sender is
    held before producing), and returns once the broker acknowledged them
    all: the spool is then empty; the next batch is not counted as a retry."""
    cfg = config(kafka_broker.bootstrap, tmp_path)
    kafka_broker.create_topic(cfg.topic)
    metrics = Metrics()
    sink = Gated(cfg, metrics, backoff_initial=0.05, backoff_max=0.3, fsync_interval=0.2)
    async with sender_of(sink):
        try:
            await sink.send_many([make_alert(0), make_alert(1)])
            flushing = asyncio.create_task(sink.flush())
            await asyncio.sleep(0.3)
            assert not flushing.done()
            sink.gate.set()
            await asyncio.wait_for(flushing, 30)
            assert sample(metrics, "eventd_spool_alerts") == 0
            assert sample(metrics, "eventd_sink_deliveries_total") == 2
            # A batch after a delivered one is a first try, not a retry.
            await sink.send(make_alert(2))
            await asyncio.wait_for(sink.flush(), 30)
            assert sample(metrics, "eventd_sink_deliveries_total") == 3
            assert sample(metrics, "eventd_sink_retries_total") == 0
        finally:
            await sink.close()


class CountedSteps(KafkaSink):
    """The real sink, recording the count of consecutive failures each step is given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.given: list[int] = []

    async def _step(self, failures: int) -> int:
        self.given.append(failures)
        return await super()._step(failures)


@pytest.mark.asyncio
async def test_each_failed_delivery_counts_one_more_consecutive_failure(tmp_path: Path) -> None:
    """A broker that refuses connections: every attempt fails, and each adds
    exactly one to the count that sets the backoff (so it doubles)."""
    cfg = config(f"127.0.0.1:{free_port()}", tmp_path)
    sink = CountedSteps(cfg, Metrics(), backoff_initial=0.001, backoff_max=0.01, fsync_interval=0.05)
    async with sender_of(sink) as sender:
        try:
            await sink.send(make_alert(0))
            await wait_until(lambda: (sink.given and sink.given[-1] >= 4) or sender.done())
            given = sink.given
            first_try = len(given) - 1 - given[::-1].index(0)  # idle steps before the alert pass 0
            assert given[first_try : first_try + 5] == [0, 1, 2, 3, 4], given
            assert not sender.done()
        finally:
            await sink.close()
