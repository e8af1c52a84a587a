"""An acknowledgement means the alert is safe, whatever else is broken.

The guarantee (README, "Delivery guarantee"): a 2xx answer to the audit
webhook is sent only for events whose alerts every durable sink (the Kafka
spool, the alert file) has accepted, or that raise none; everything else is
answered 503 and retried by the API server.  Delivery is at-least-once, and
copies carry the same ``uuid``.

Two ways this used to break, both tried here:

* a batch whose delivery was slow was answered 503, but its events stayed
  in the dedup table, so the API server's retry was answered
  ``200 {"duplicates": n}`` while the original was still unfinished; a
  ``kill -9`` then lost its alerts.  A black-holed Alertmanager was enough
  to make deliveries slow.
* a copy of a batch still in flight was acknowledged as a duplicate before
  the original's alerts were safe.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import orjson
import pytest

from eventd.config import AuditWebhookConfig, Listen
from eventd.metrics import Metrics
from eventd.sources import http_input
from eventd.sources.audit_webhook import AuditWebhookSource
from tests.faults.accounting import (
    Poster,
    assert_uuid_set,
    batches,
    read_kafka_alerts,
    report,
    uuid_names,
    wait_until,
    write_rules,
)
from tests.faults.blackhole import BlackHole
from tests.support.builders import audit_event
from tests.support.daemon_process import EventdProcess, free_port
from tests.support.http_inlet import RecordingInlet
from tests.support.kafka_broker import KafkaBroker, unique_name
from tests.support.waiting import wait_until as wait_until_async

pytestmark = pytest.mark.timeout(240)

JSON = {"Content-Type": "application/json"}


# --------------------------------------------------- the webhook's dedup table


@asynccontextmanager
async def webhook(inlet: RecordingInlet) -> AsyncIterator[str]:
    source = AuditWebhookSource(AuditWebhookConfig(listen=Listen("127.0.0.1", 0)), Metrics())
    task = asyncio.create_task(source.run(inlet))
    try:
        await wait_until_async(source.ready, what="the webhook listening")
        assert source.address is not None
        yield f"http://127.0.0.1:{source.address[1]}/k8s-audit"
    finally:
        await source.stop()
        await asyncio.wait_for(task, 10)


async def answer(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, dict[str, int]]:
    async with session.post(url, data=body, headers=JSON) as resp:
        text = await resp.read()
        return resp.status, (orjson.loads(text) if resp.status == 200 else {})


@pytest.mark.asyncio
async def test_a_retry_after_a_slow_answer_is_processed_not_called_a_duplicate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_input, "DELIVERY_TIMEOUT_SECONDS", 0.4)
    inlet = RecordingInlet("k8s_audit_webhook")
    inlet.deliver = False  # the durable path is stuck (a slow sink, a full spool)
    body = orjson.dumps(audit_event(auditID="slow-then-retried"))
    async with webhook(inlet) as url, aiohttp.ClientSession() as session:
        assert (await answer(session, url, body))[0] == 503
        # The sender retries; the first copy is still unfinished.  Acknowledging
        # this one as a duplicate would make a kill -9 lose its alert.
        assert (await answer(session, url, body))[0] == 503
        assert len(inlet.batches) == 2, "the retry must be processed again"
        inlet.deliver = True
        status, summary = await answer(session, url, body)
        assert (status, summary["accepted"], summary["duplicates"]) == (200, 1, 0)
        # Now it is safe: a further copy is a duplicate.
        status, summary = await answer(session, url, body)
        assert (status, summary["accepted"], summary["duplicates"]) == (200, 0, 1)


@pytest.mark.asyncio
@pytest.mark.parametrize("original_succeeds", [True, False])
async def test_a_copy_of_a_batch_in_flight_waits_for_its_outcome(original_succeeds: bool) -> None:
    inlet = RecordingInlet("k8s_audit_webhook")
    inlet.deliver = False
    body = orjson.dumps(audit_event(auditID="in-flight"))
    async with webhook(inlet) as url, aiohttp.ClientSession() as session:
        original = asyncio.create_task(answer(session, url, body))
        await wait_until_async(lambda: len(inlet.batches) == 1, what="the original in the pipeline")
        copy = asyncio.create_task(answer(session, url, body))
        await asyncio.sleep(0.2)
        assert not copy.done(), "a copy was answered before the original's alerts were safe"
        assert len(inlet.batches) == 1
        first = inlet.batches[0].done
        assert first is not None
        inlet.deliver = True
        if original_succeeds:
            first.set_result(None)
            assert (await original)[0] == 200
            status, summary = await copy
            assert (status, summary["accepted"], summary["duplicates"]) == (200, 0, 1)
        else:
            first.set_exception(RuntimeError("the durable sink failed"))
            assert (await original)[0] == 503
            status, summary = await copy
            assert (status, summary["accepted"], summary["duplicates"]) == (200, 1, 0)
            assert len(inlet.batches) == 2


# ------------------------------------------ kill -9 while a receiver hangs


def start(
    run_dir: Path, port: int, bootstrap: str, topic: str, spool: Path, hole: BlackHole
) -> EventdProcess:
    run_dir.mkdir()
    proc = EventdProcess(
        run_dir,
        {
            "rules": [str(write_rules(run_dir))],
            "sources": {"k8s_audit_webhook": {"listen": f"127.0.0.1:{port}"}},
            "sinks": {
                "kafka": {
                    "bootstrap_servers": [bootstrap],
                    "topic": topic,
                    "spool_dir": str(spool),
                    "request_timeout_seconds": 3,
                },
                # Best-effort, and never answers: slows nothing, loses nothing else.
                "alertmanager": {"url": hole.url, "min_priority": "debug", "dedup": None},
            },
        },
    ).ready_or_killed()
    return proc


def test_repeated_kill9_never_loses_an_acknowledged_alert(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    topic = unique_name("faults-ack-safe")
    kafka_broker.create_topic(topic)
    port, spool = free_port(), tmp_path / "spool"
    with BlackHole() as hole:
        poster = Poster(
            f"http://127.0.0.1:{port}/k8s-audit",
            # Many alerts per batch: enough to fill a best-effort sink's queue
            # within a round, which is when a stalled fan-out used to show.
            batches("ack", alerting=20, quiet=2),
            give_up_after=120,
            retry_delay=0.1,
        )
        kills = 0
        for round_ in range(4):
            proc = start(tmp_path / f"run{round_}", port, kafka_broker.bootstrap, topic, spool, hole)
            if round_ == 0:
                poster.start()
            before = len(poster.snapshot().batches)
            wait_until(
                lambda before=before: len(poster.snapshot().batches) > before + 60,  # type: ignore[misc]
                timeout=60,
                what="acknowledgements in this round",
                proc=proc,
            )
            # A random moment: while batches are in flight, mid-delivery.
            time.sleep(rng.uniform(0.0, 1.5))
            proc.proc.kill()
            proc.kill()
            kills += 1
        final = start(tmp_path / "final", port, kafka_broker.bootstrap, topic, spool, hole)
        try:
            sent = poster.finish(timeout=120)
            assert not poster.unacknowledged
            assert hole.connections > 0, "the Alertmanager sink never tried: the scenario proves nothing"
            expected = uuid_names(sent.alerting)
            found = read_kafka_alerts(kafka_broker.bootstrap, topic, set(expected), idle=5)
            unique = assert_uuid_set(found, expected, f"Kafka after {kills} kills (seed {seed})")
            report(
                "kill -9 x4, Alertmanager black-holed",
                batches_acknowledged=len(sent.batches),
                attempts_unanswered=poster.statuses.get(0, 0),
                alerts_acknowledged=len(expected),
                alerts_in_kafka=len(unique),
                copies=len(found) - len(unique),
                lost=len(set(expected) - unique.keys()),
            )
        finally:
            final.kill()
