"""Hostile alerts from a (fake) Falco over gRPC.

A compromised or buggy Falco, or anything that can write to its socket, can
send any ``falco.outputs.response``: proto3 does not stop an empty rule, an
enum number out of range, a time no calendar shows, or 10,000 fields.  The
source must reject bad alerts one by one with a reason and keep the stream
(and the daemon) alive; good alerts around them must arrive unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from eventd.config import FalcoGrpcConfig
from eventd.events.errors import DecodeError
from eventd.metrics import Metrics
from eventd.proto import outputs_pb2
from eventd.sources.base import Batch
from eventd.sources.falco_grpc import FalcoGrpcSource
from tests.support.falco_grpc_server import FakeFalco, make_response

pytestmark = pytest.mark.timeout(60)


class RecordingInlet:
    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.rejections: list[str] = []

    async def put(self, batch: Batch) -> None:
        self.batches.append(batch)

    def offer(self, batch: Batch) -> bool:
        raise AssertionError("the gRPC source waits for room (put)")

    def rejected(self, source: str, error: DecodeError | str, count: int = 1) -> None:
        assert source == "falco_grpc"
        self.rejections += [error.reason if isinstance(error, DecodeError) else error] * count

    @property
    def docs(self) -> list[dict]:
        return [e.doc for b in self.batches for e in b.events]


async def until(predicate: Callable[[], bool], task: asyncio.Task[None], timeout: float = 20.0) -> None:
    """Poll until ``predicate`` holds; stop early (and say why) if the source ended."""
    async with asyncio.timeout(timeout):
        while not predicate():
            if task.done():
                task.result()  # raises what ended the source
                raise AssertionError("the source returned on its own")
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def streaming(tmp_path: Path, *alerts: outputs_pb2.response) -> AsyncIterator[tuple]:
    """A fake Falco with ``alerts`` queued and a subscribed source reading them."""
    falco = FakeFalco(f"unix://{tmp_path}/falco.sock")
    falco.publish(*alerts)
    await falco.start()
    metrics, inlet = Metrics(), RecordingInlet()
    config = FalcoGrpcConfig(
        address=falco.address, keepalive_seconds=0.05, backoff_initial_seconds=0.01, backoff_max_seconds=0.05
    )
    source = FalcoGrpcSource(config, metrics)
    task = asyncio.create_task(source.run(inlet))
    try:
        yield falco, inlet, task, metrics
    finally:
        await source.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        await falco.stop()


def reconnects(metrics: Metrics) -> float:
    return (
        metrics.registry.get_sample_value("eventd_source_reconnects_total", {"source": "falco_grpc"}) or 0.0
    )


ODD_TEXT = "\x00\u202eevil\u200d\U0001f4a5\ufeff\u0301\U000e0041 \ue000"

#: (message, reason); reason None means the alert must be accepted as sent.
CASES: list[tuple[outputs_pb2.response, str | None]] = [
    (make_response(rule=""), "rule"),
    (make_response(rule=" \t\n"), "rule"),
    (make_response(priority=8), "priority"),
    (make_response(priority=2**31 - 1), "priority"),
    (make_response(priority=-1), "priority"),
    (make_response(seconds=0, nanos=0), "time"),
    (make_response(seconds=-1), "time"),
    (make_response(seconds=253402300800), "time"),  # year 10000
    (make_response(seconds=2**63 - 1, nanos=999_999_999), "time"),
    (make_response(seconds=1685022245, nanos=-1), None),
    (make_response(seconds=1685022245, nanos=2**31 - 1), None),
    (make_response(source="", source_deprecated=99), None),
    (make_response(source="", source_deprecated=-7), None),
    (make_response(rule=ODD_TEXT, hostname=ODD_TEXT, tags=(ODD_TEXT, "", "")), None),
    (make_response(output_fields={ODD_TEXT: ODD_TEXT, "": "", "k": "\x00"}), None),
    (make_response(output_fields={f"f.{i}": str(i) for i in range(10_000)}), None),
    (make_response(rule="r" * 1_000_000, hostname="h" * 1_000_000), None),
    (make_response(tags=tuple(f"t{i}" for i in range(10_000))), None),
    (
        make_response(
            output_fields={
                "unclosed": "[" * 10_000,
                "deep": "[" * 10_000 + "]" * 10_000,
                "nan": "NaN",
                "big": "1e400",
                "wide": "1" * 4000,
                "hex": "0x10",
                "neg0": "-0",
            }
        ),
        None,
    ),
]


@pytest.mark.asyncio
async def test_hostile_responses_are_rejected_one_by_one_and_the_stream_stays(tmp_path: Path) -> None:
    sentinel = make_response(rule="after the storm")
    async with streaming(tmp_path, *(msg for msg, _ in CASES), sentinel) as (falco, inlet, task, metrics):
        await until(lambda: inlet.docs[-1:] and inlet.docs[-1]["rule"] == "after the storm", task)
        assert reconnects(metrics) == 0 and not falco.queue
    expected_rejections = [reason for _, reason in CASES if reason is not None]
    assert sorted(inlet.rejections) == sorted(expected_rejections)
    accepted = [msg for msg, reason in CASES if reason is None] + [sentinel]
    assert [d["rule"] for d in inlet.docs] == [m.rule for m in accepted]
    for doc, msg in zip(inlet.docs, accepted, strict=True):
        assert doc["hostname"] == msg.hostname and doc["tags"] == list(msg.tags)
        assert set(doc["output_fields"]) == set(msg.output_fields)
        assert doc["source"] == (msg.source or "syscall")
    fields = inlet.docs[-2]["output_fields"]
    # Text that is no JSON value (or too deep, too big) stays the text Falco sent.
    assert fields["unclosed"] == "[" * 10_000 and fields["deep"] == "[" * 10_000 + "]" * 10_000
    assert (fields["nan"], fields["big"], fields["wide"], fields["hex"], fields["neg0"]) == (
        "NaN",
        "1e400",
        "1" * 4000,
        "0x10",
        0,
    )


@pytest.mark.asyncio
async def test_a_message_over_the_grpc_size_limit_costs_one_reconnect(tmp_path: Path) -> None:
    # grpcio refuses to receive messages over 4 MiB by default: the stream
    # fails with RESOURCE_EXHAUSTED.  The source must reconnect and go on.
    huge = make_response(rule="too big")
    huge.output = "o" * (5 * 1024 * 1024)
    async with streaming(tmp_path, make_response(rule="before"), huge) as (falco, inlet, task, metrics):
        await until(lambda: [d["rule"] for d in inlet.docs] == ["before"] and reconnects(metrics) >= 1, task)
        falco.publish(make_response(rule="after"))
        await until(lambda: [d["rule"] for d in inlet.docs] == ["before", "after"], task)


@pytest.mark.asyncio
async def test_a_5000_digit_field_does_not_end_the_source(tmp_path: Path) -> None:
    alerts = (
        make_response(rule="first"),
        make_response(rule="digits", output_fields={"n": "9" * 5000}),
        make_response(rule="last"),
    )
    async with streaming(tmp_path, *alerts) as (_falco, inlet, task, _metrics):
        await until(lambda: len(inlet.docs) == 3, task)
    assert inlet.docs[1]["output_fields"]["n"] == "9" * 5000
