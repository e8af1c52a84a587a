"""Falco restarts again and again under eventd's gRPC input: eventd reconnects
every time, never exits, and every alert Falco queued reaches the sinks.

The fake Falco (``tests/support/falco_grpc_server.py``) runs on a Unix socket in a
thread of the test; eventd is a real process reading it with the
``falco_grpc`` source and writing the passed-through alerts to stdout.  Falco
pops an alert from its queue when it sends it, so an alert in flight when
Falco dies is legitimately lost; the test therefore restarts Falco only when
the alerts published while connected have arrived, and publishes more while
it is down (they wait in Falco's queue and must arrive after the reconnect).
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventd.alerts import alert_uuid
from eventd.events.falco_grpc import response_event
from eventd.proto import outputs_pb2
from tests.faults.accounting import (
    assert_source_accounting,
    assert_uuid_set,
    metric,
    scrape,
    wait_until,
    write_rules,
)
from tests.support.daemon_process import EventdProcess
from tests.support.falco_grpc_server import FakeFalco, make_response

pytestmark = pytest.mark.timeout(90)

SOURCE = "falco_grpc"
RESTARTS = 5
BURST = 20


class FalcoThread:
    """``FakeFalco`` on an event loop of its own, driven from the test's thread."""

    def __init__(self, address: str) -> None:
        self.falco = FakeFalco(address)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-falco", daemon=True)
        self._thread.start()

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self.falco.start(), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.falco.stop(), self._loop).result(10)

    def publish(self, *alerts: outputs_pb2.response) -> None:
        self._loop.call_soon_threadsafe(self.falco.publish, *alerts)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture
def falco() -> Iterator[FalcoThread]:
    # A short directory: a Unix socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="falco-") as directory:
        server = FalcoThread(f"unix://{directory}/falco.sock")
        server.start()
        try:
            yield server
        finally:
            server.close()


def falco_alert(seq: int) -> outputs_pb2.response:
    """A valid alert, unique by ``fault.seq`` (so by its uuid)."""
    return make_response(
        seconds=1_764_000_000 + seq, output_fields={"proc.name": "sh", "fault.seq": str(seq)}
    )


def passthrough_uuid(msg: outputs_pb2.response) -> str:
    return alert_uuid("falco-passthrough", response_event(msg))


def test_falco_restarts_reconnect_and_lose_nothing_published(falco: FalcoThread, tmp_path: Path) -> None:
    proc = EventdProcess(
        tmp_path,
        {
            "rules": [str(write_rules(tmp_path))],  # k8s_audit only: Falco alerts are passed through
            "sources": {
                SOURCE: {
                    "address": falco.falco.address,
                    "keepalive_seconds": 0.05,
                    "backoff_initial_seconds": 0.05,
                    "backoff_max_seconds": 0.5,
                }
            },
            "sinks": {"stdout": {}},
        },
    )
    published: list[outputs_pb2.response] = []
    invalid = 0
    seq = 0

    def publish(count: int) -> None:
        nonlocal seq, invalid
        alerts = [falco_alert(seq + n) for n in range(count)]
        seq += count
        published.extend(alerts)
        invalid += 1
        falco.publish(*alerts[: count // 2], make_response(priority=99), *alerts[count // 2 :])

    def arrived() -> bool:
        return len(proc.alerts) >= len(published)

    def reconnects() -> float:
        return metric(proc, "eventd_source_reconnects_total", source=SOURCE)

    def up() -> float:
        return metric(proc, "eventd_source_up", source=SOURCE)

    try:
        proc.wait_ready()  # the gRPC source is ready once connected
        for restart in range(RESTARTS):
            publish(BURST)  # while connected
            wait_until(arrived, timeout=15, what=f"alerts before restart {restart}", proc=proc)
            before = reconnects()
            falco.stop()
            wait_until(lambda: up() == 0, timeout=15, what="eventd to notice Falco is gone", proc=proc)
            publish(BURST // 2)  # queued in Falco while eventd cannot reach it
            falco.start()
            wait_until(
                lambda: reconnects() > before and up() == 1,  # noqa: B023 (called at once)
                timeout=15,
                what=f"reconnect after restart {restart}",
                proc=proc,
            )
        publish(BURST)
        wait_until(arrived, timeout=15, what="the last alerts", proc=proc)

        assert proc.proc.poll() is None, "eventd exited"
        expected = {passthrough_uuid(msg) for msg in published}
        assert len(expected) == len(published)
        assert_uuid_set(proc.alerts, expected, "stdout")
        assert len(proc.alerts) == len(published), "Falco's gRPC queue delivers once: no copies expected"
        snap = scrape(proc)
        assert snap.value("eventd_source_reconnects_total", source=SOURCE) >= RESTARTS
        assert_source_accounting(
            snap, SOURCE, received=len(published), matched=0, rejected={"priority": invalid}
        )
        assert {alert_seq(a) for a in proc.alerts} == set(range(seq))
        assert proc.stop() == 0
    finally:
        proc.kill()


def alert_seq(alert: dict[str, Any]) -> int:
    return int(alert["output_fields"]["fault.seq"])
