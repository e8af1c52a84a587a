"""What every sink that emits eventd's alert document emits validates against
the published schema (``eventd/alert.schema.json``): stdout, file, webhook
and Kafka, with real alerts raised by the built-in rules and a Falco alert
passed through."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import orjson
import pytest

from eventd.alert_schema import validate
from eventd.alerts import Alert, build_alert, falco_passthrough_alert
from eventd.config import FileSinkConfig, KafkaSinkConfig, StdoutSinkConfig, WebhookSinkConfig
from eventd.engine.loader import load_rules
from eventd.engine.matcher import Matcher
from eventd.events.decode import decode_object
from eventd.metrics import Metrics
from eventd.rulepacks import builtin_rule_files
from eventd.sinks.file import FileSink
from eventd.sinks.kafka import KafkaSink
from eventd.sinks.stdout import StdoutSink
from eventd.sinks.webhook import WebhookSink
from tests.builders import audit_event, deployment, falco_alert, pod_create
from tests.http_receiver import serve
from tests.kafka_broker import KafkaBroker, unique_name


def _alerts() -> list[Alert]:
    matcher = Matcher(load_rules(builtin_rule_files()), rule_matching="all")
    docs = [
        pod_create("evil.example.com/miner:1", "nginx"),
        audit_event(resource="deployments", request=deployment("reg:5000/app", "myregistry.io/x:latest")),
        audit_event(verb="get", resource="secrets", name="regcred", code=200),
        falco_alert(**{"container.image.repository": "quay.io/evil/x"}),
    ]
    alerts: list[Alert] = []
    for doc in docs:
        (event,), _ = decode_object(doc)
        if event.source == "falco":
            alerts.append(falco_passthrough_alert(event))
        alerts += [build_alert(rule, event, "node-1") for rule in matcher.match(event)]
    assert len(alerts) >= 6
    return alerts


ALERTS = _alerts()


def _check(payloads: list[bytes]) -> None:
    assert len(payloads) == len(ALERTS)
    for payload in payloads:
        validate(orjson.loads(payload))
    assert {orjson.loads(p)["uuid"] for p in payloads} == {a.uuid for a in ALERTS}


@pytest.mark.asyncio
async def test_stdout_sink_output_follows_the_schema() -> None:
    out = io.BytesIO()
    sink = StdoutSink(StdoutSinkConfig(), Metrics(), stream=out)
    for alert in ALERTS:
        await sink.send(alert)
    await sink.flush()
    _check(out.getvalue().splitlines())


@pytest.mark.asyncio
async def test_file_sink_output_follows_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    sink = FileSink(FileSinkConfig(path=path), Metrics())
    await sink.start()
    for alert in ALERTS:
        await sink.send(alert)
    await sink.close()
    _check(path.read_bytes().splitlines())


@pytest.mark.asyncio
async def test_webhook_sink_output_follows_the_schema() -> None:
    async with serve() as receiver:
        sink = WebhookSink(WebhookSinkConfig(url=receiver.url, max_concurrency=1), Metrics())
        await sink.start()
        for alert in ALERTS:
            await sink.send(alert)
        await sink.close()
        _check([r.body for r in receiver.requests])


@pytest.mark.asyncio
async def test_kafka_sink_output_follows_the_schema(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    topic = unique_name("schema")
    kafka_broker.create_topic(topic)
    config = KafkaSinkConfig(bootstrap_servers=(kafka_broker.bootstrap,), topic=topic, spool_dir=tmp_path)
    sink = KafkaSink(config, Metrics())
    await sink.start()
    for alert in ALERTS:
        await sink.send(alert)
    await sink.flush()
    await sink.close()
    records = await asyncio.to_thread(kafka_broker.read_topic, topic, len(ALERTS), 15.0)
    _check([r.value for r in records if r.value is not None])
