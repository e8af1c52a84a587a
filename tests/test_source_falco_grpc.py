"""The Falco gRPC source against a real grpc.aio fake Falco (tests/support/falco_grpc_server.py),
over a Unix socket and over TCP with mutual TLS."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import orjson
import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from eventd.config import ClientTLS, ConfigError, FalcoGrpcConfig
from eventd.events.errors import DecodeError
from eventd.events.falco_grpc import json_value, response_event, response_to_alert
from eventd.events.model import FALCO
from eventd.metrics import Metrics
from eventd.proto import outputs_pb2, version_pb2, version_pb2_grpc
from eventd.sources import falco_grpc
from eventd.sources.base import Batch
from eventd.sources.falco_grpc import Backoff, FalcoGrpcSource
from tests.support.falco_grpc_server import FakeFalco, make_response

pytestmark = pytest.mark.timeout(30)


class RecordingInlet:
    """Records what the source hands over and what it rejects."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.rejections: list[tuple[str, str, int]] = []

    async def put(self, batch: Batch) -> None:
        self.batches.append(batch)
        if batch.done is not None:
            batch.done.set_result(None)

    def offer(self, batch: Batch) -> bool:
        raise AssertionError("a streaming source must wait for room (put), not offer")

    def rejected(self, source: str, error: DecodeError | str, count: int = 1) -> None:
        reason = error.reason if isinstance(error, DecodeError) else error
        self.rejections.append((source, reason, count))

    @property
    def docs(self) -> list[dict]:
        return [e.doc for b in self.batches for e in b.events]

    def rules(self) -> list[str]:
        return [d["rule"] for d in self.docs]


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def fast_config(address: str, **kw: object) -> FalcoGrpcConfig:
    defaults: dict = {"keepalive_seconds": 0.05, "backoff_initial_seconds": 0.01, "backoff_max_seconds": 0.1}
    return FalcoGrpcConfig(address=address, **(defaults | kw))


@contextlib.asynccontextmanager
async def running(source: FalcoGrpcSource, inlet: RecordingInlet) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(source.run(inlet))
    try:
        yield task
    finally:
        await source.stop()
        await asyncio.wait_for(task, 5)


def counter(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name, {"source": "falco_grpc"}) or 0.0


@pytest.fixture
def sock(tmp_path: Path) -> str:
    return f"unix://{tmp_path}/falco.sock"


# ------------------------------------------------------------------- conversion


def test_response_becomes_a_falco_json_alert() -> None:
    msg = make_response(
        "Shell",
        priority=6,
        output_fields={
            "evt.time": "1685022245478445995",
            "user.loginuid": "-1",
            "fd.num": "1.5",
            "k8s.pod.name": "null",
            "evt.is_open_write": "true",
            "proc.aname": '["runc","containerd"]',
            "proc.cmdline": "sh -c [x]",
            "container.id": "ee97d9c4186f",
        },
    )
    doc = response_to_alert(msg)
    assert doc["time"] == "2023-05-25T13:44:05.478445995Z"
    assert doc["priority"] == "Informational"
    assert doc["tags"] == ["container", "shell"]
    assert doc["output_fields"] == {
        "evt.time": 1685022245478445995,
        "user.loginuid": -1,
        "fd.num": 1.5,
        "k8s.pod.name": None,
        "evt.is_open_write": True,
        "proc.aname": ["runc", "containerd"],
        "proc.cmdline": "sh -c [x]",
        "container.id": "ee97d9c4186f",
    }
    event = response_event(msg)
    assert event.source == FALCO and event.origin == "grpc"
    assert event.doc["hostname"] == "node-1" and event.doc["source"] == "syscall"


@pytest.mark.parametrize(
    ("source", "deprecated", "expected"),
    [
        ("k8s_audit", 0, "k8s_audit"),  # field 9 wins over the enum
        ("", 1, "k8s_audit"),  # Falco < 0.31: only the enum
        ("", 2, "internal"),
        ("", 0, "syscall"),
        ("aws_cloudtrail", 3, "aws_cloudtrail"),
    ],
)
def test_source_name_falls_back_to_the_deprecated_enum(source: str, deprecated: int, expected: str) -> None:
    msg = make_response(source=source, source_deprecated=deprecated)
    assert response_event(msg).doc["source"] == expected


@pytest.mark.parametrize(("number", "label"), [(0, "Emergency"), (3, "Error"), (4, "Warning"), (7, "Debug")])
def test_priorities(number: int, label: str) -> None:
    assert response_event(make_response(priority=number)).doc["priority"] == label


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (make_response(priority=9), "priority"),
        (make_response(seconds=0, nanos=0), "time"),
        (make_response(seconds=10**15), "time"),
        (make_response(rule=""), "rule"),
    ],
)
def test_invalid_responses_are_refused(msg: outputs_pb2.response, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        response_event(msg)
    assert err.value.reason == reason


_json_scalars = (
    st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.none()
)


@given(st.one_of(_json_scalars, st.lists(st.text() | st.integers(-1000, 1000), max_size=4)))
def test_json_values_dumped_by_falco_come_back(value: object) -> None:
    text = orjson.dumps(value).decode()
    restored = json_value(text)
    assert restored == value and type(restored) is type(value)


def test_digit_strings_wider_than_64_bits_stay_text() -> None:
    assert json_value("18446744073709551615") == 2**64 - 1
    assert json_value("18446744073709551616") == "18446744073709551616"
    assert json_value("1e999") == "1e999"


@given(st.text().filter(lambda t: not _is_json_literal(t)))
def test_plain_strings_stay_strings(text: str) -> None:
    assert json_value(text) == text


def _is_json_literal(text: str) -> bool:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return False
    return not isinstance(value, str | dict) and not (isinstance(value, float) and math.isinf(value))


# ---------------------------------------------------------------------- backoff


def test_backoff_grows_and_is_capped() -> None:
    backoff = Backoff(0.5, 4.0, random.Random(7))
    reference = random.Random(7)
    ceilings, delays = [], []
    for _ in range(7):
        ceilings.append(backoff.ceiling())
        delays.append(backoff.next_delay())
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    # Jitter: uniform in [ceiling/2, ceiling], drawn from the given RNG.
    assert delays == [reference.uniform(c / 2, c) for c in ceilings]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    backoff.reset()
    assert backoff.ceiling() == 0.5


def test_backoff_survives_very_many_failures() -> None:
    backoff = Backoff(0.5, 30.0, random.Random(1))
    backoff.failures = 100_000
    assert backoff.ceiling() == 30.0
    assert 0.0 <= backoff.next_delay() <= 30.0


# ------------------------------------------------------------------ over a socket


@pytest.mark.asyncio
async def test_alerts_flow_over_the_unix_socket(sock: str) -> None:
    falco = FakeFalco(sock)
    falco.publish(
        make_response("A", priority=0, output_fields={"proc.tty": "34816", "proc.name": "sh"}),
        make_response("B", priority=7, source="", source_deprecated=1),
        make_response("bad", priority=42),
    )
    await falco.start()
    metrics, inlet = Metrics(), RecordingInlet()
    source = FalcoGrpcSource(fast_config(sock), metrics)
    try:
        async with running(source, inlet):
            await until(lambda: len(inlet.docs) == 2)
            a, b = inlet.docs
            assert (a["rule"], a["priority"], a["output_fields"]) == (
                "A",
                "Emergency",
                {"proc.tty": 34816, "proc.name": "sh"},
            )
            assert (b["rule"], b["priority"], b["source"]) == ("B", "Debug", "k8s_audit")
            assert inlet.rejections == [("falco_grpc", "priority", 1)]
            assert all(batch.source == "falco_grpc" for batch in inlet.batches)
            assert source.ready() and falco.version_calls == 1
            assert metrics.registry.get_sample_value("eventd_source_up", {"source": "falco_grpc"}) == 1
            # Alerts queued later are only sent after the next request: the
            # source keeps asking on the same stream.
            requests = falco.sub_requests
            falco.publish(make_response("C"))
            await until(lambda: inlet.rules()[-1:] == ["C"])
            assert falco.sub_requests > requests
        assert counter(metrics, "eventd_source_reconnects_total") == 0
    finally:
        await falco.stop()
    assert metrics.registry.get_sample_value("eventd_source_up", {"source": "falco_grpc"}) == 0


class GatedInlet(RecordingInlet):
    """Holds every ``put`` until ``gate`` opens: a saturated pipeline."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def put(self, batch: Batch) -> None:
        await self.gate.wait()
        await super().put(batch)


@pytest.mark.asyncio
async def test_alerts_wait_while_the_pipeline_is_full_then_go_in_batches(
    sock: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(falco_grpc, "MAX_BATCH", 8)
    falco = FakeFalco(sock)
    falco.publish(make_response("first"))
    await falco.start()
    inlet = GatedInlet()
    source = FalcoGrpcSource(fast_config(sock), Metrics())
    try:
        async with running(source, inlet):
            await until(lambda: not falco.queue)  # "first" is taken, its put is waiting
            falco.publish(*(make_response(f"r{i}") for i in range(40)))
            await until(lambda: not falco.queue)
            assert inlet.batches == []
            inlet.gate.set()
            await until(lambda: len(inlet.rules()) == 41)
            assert inlet.rules() == ["first"] + [f"r{i}" for i in range(40)]
            sizes = [len(b.events) for b in inlet.batches]
            assert max(sizes) == 8 and len(sizes) < 41
    finally:
        await falco.stop()


@pytest.mark.asyncio
async def test_get_mode_polls(sock: str) -> None:
    falco = FakeFalco(sock)
    falco.publish(make_response("first"), make_response("second"))
    await falco.start()
    inlet = RecordingInlet()
    source = FalcoGrpcSource(fast_config(sock, mode="get"), Metrics())
    try:
        async with running(source, inlet):
            await until(lambda: inlet.rules() == ["first", "second"])
            falco.publish(make_response("third"))
            await until(lambda: inlet.rules() == ["first", "second", "third"])
            assert falco.get_calls >= 2 and falco.sub_requests == 0
    finally:
        await falco.stop()


@pytest.mark.asyncio
async def test_server_restarts_mid_stream(sock: str) -> None:
    falco = FakeFalco(sock)
    await falco.start()
    metrics, inlet = Metrics(), RecordingInlet()
    source = FalcoGrpcSource(fast_config(sock), metrics)
    try:
        async with running(source, inlet) as task:
            falco.publish(make_response("before"))
            await until(lambda: inlet.rules() == ["before"])
            for n in range(3):
                await until(lambda: falco.active_subs == 1)
                await falco.stop()
                falco.publish(make_response(f"while-down-{n}"))
                await falco.start()
                await until(lambda n=n: inlet.rules()[-1:] == [f"while-down-{n}"])
                falco.publish(make_response(f"after-{n}"))
                await until(lambda n=n: inlet.rules()[-1:] == [f"after-{n}"])
                assert not task.done()
            assert counter(metrics, "eventd_source_reconnects_total") >= 3
            assert falco.version_calls >= 4
            assert source.ready()
    finally:
        await falco.stop()


@pytest.mark.asyncio
async def test_server_down_at_start(sock: str) -> None:
    metrics, inlet = Metrics(), RecordingInlet()
    source = FalcoGrpcSource(fast_config(sock), metrics)
    falco = FakeFalco(sock)
    try:
        async with running(source, inlet) as task:
            await until(lambda: counter(metrics, "eventd_source_reconnects_total") >= 3)
            assert not source.ready() and not task.done()
            falco.publish(make_response("finally"))
            await falco.start()
            await until(lambda: inlet.rules() == ["finally"])
            assert source.ready()
    finally:
        await falco.stop()


@pytest.mark.asyncio
async def test_stop_while_retrying_returns_promptly(sock: str) -> None:
    source = FalcoGrpcSource(
        fast_config(sock, backoff_initial_seconds=60.0, backoff_max_seconds=60.0), Metrics()
    )
    task = asyncio.create_task(source.run(RecordingInlet()))
    await asyncio.sleep(0.05)
    await source.stop()
    await asyncio.wait_for(task, 2)


def test_tcp_without_client_certificate_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="mutual TLS"):
        FalcoGrpcSource(FalcoGrpcConfig(address="127.0.0.1:5060"), Metrics())
    with pytest.raises(ConfigError, match="tls"):
        FalcoGrpcSource(FalcoGrpcConfig(address="falco:5060", tls=ClientTLS(ca=Path("ca.pem"))), Metrics())


# ------------------------------------------------------------------- TCP + mTLS


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("eventd.test")
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "server_cert", "server_key", "cert", "key")}
    ca.cert_pem.write_to_path(paths["ca"])
    server.private_key_pem.write_to_path(paths["server_key"])
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(paths["server_cert"], append=i > 0)
    client.private_key_pem.write_to_path(paths["key"])
    for i, blob in enumerate(client.cert_chain_pems):
        blob.write_to_path(paths["cert"], append=i > 0)
    return paths


def mtls_server(pki: dict[str, Path]) -> FakeFalco:
    credentials = grpc.ssl_server_credentials(
        [(pki["server_key"].read_bytes(), pki["server_cert"].read_bytes())],
        root_certificates=pki["ca"].read_bytes(),
        require_client_auth=True,
    )
    return FakeFalco("127.0.0.1:0", credentials)


@pytest.mark.asyncio
async def test_mtls_over_tcp(pki: dict[str, Path]) -> None:
    falco = mtls_server(pki)
    await falco.start()
    falco.publish(make_response("over-tls"))
    metrics, inlet = Metrics(), RecordingInlet()
    tls = ClientTLS(ca=pki["ca"], cert=pki["cert"], key=pki["key"])
    source = FalcoGrpcSource(fast_config(falco.address, tls=tls), metrics)
    try:
        async with running(source, inlet):
            await until(lambda: inlet.rules() == ["over-tls"])
            await falco.restart()
            falco.publish(make_response("after-restart"))
            await until(lambda: inlet.rules() == ["over-tls", "after-restart"])
            assert counter(metrics, "eventd_source_reconnects_total") >= 1
    finally:
        await falco.stop()


@pytest.mark.asyncio
async def test_server_refuses_a_client_without_certificate(pki: dict[str, Path]) -> None:
    falco = mtls_server(pki)
    await falco.start()
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
        async with grpc.aio.secure_channel(falco.address, credentials) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await version_pb2_grpc.serviceStub(channel).version(version_pb2.request(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert falco.version_calls == 0
    finally:
        await falco.stop()
