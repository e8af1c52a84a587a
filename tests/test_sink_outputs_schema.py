"""What every sink that emits eventd's alert document emits validates against
the published schema (``eventd/alert.schema.json``): stdout, file, webhook
and Kafka, with real alerts raised by the built-in rules, a rule of our own
on Falco alerts and Falco alerts passed through, and every field has one
JSON type across the sources (``container.image.pinned`` a boolean,
an image ``digest`` a string, whichever source the alert came from)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

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
from tests.support.builders import audit_event, deployment, falco_alert, pod_create
from tests.support.http_receiver import serve
from tests.support.kafka_broker import KafkaBroker, unique_name

#: A rule of ours on Falco alerts that prints the yes/no image fields.
FLAG_RULE = """
- rule: Falco alert image flags
  desc: prints the image flags of a Falco alert
  condition: container.image.repository exists
  output: pinned=%container.image.pinned valid=%container.image.valid digest=%container.image.digest
  priority: Notice
  source: falco
"""


def _alerts() -> list[Alert]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        extra = Path(tmp) / "flags.yaml"
        extra.write_text(FLAG_RULE)
        matcher = Matcher(load_rules([*builtin_rule_files(), str(extra)]), rule_matching="all")
    digest = "sha256:" + "c" * 64
    docs = [
        pod_create("evil.example.com/miner:1", "nginx", f"myregistry.io/app@{digest}"),
        audit_event(resource="deployments", request=deployment("reg:5000/app", "myregistry.io/x:latest")),
        audit_event(verb="get", resource="secrets", name="regcred", code=200),
        falco_alert(**{"container.image.repository": "quay.io/evil/x"}),
        falco_alert(**{"container.image.repository": "myregistry.io/app", "container.image.digest": digest}),
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


def _json_types(doc: Any, path: str, out: dict[str, set[str]]) -> None:
    """Every leaf's path (list indexes as ``[]``) and JSON type; null is left
    out (it means "missing" wherever the schema allows it)."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            _json_types(value, f"{path}/{key}", out)
    elif isinstance(doc, list) and doc and isinstance(doc[0], dict):
        for item in doc:
            _json_types(item, f"{path}[]", out)
    elif doc is not None:
        kind = {bool: "boolean", int: "number", float: "number", str: "string", list: "array"}[type(doc)]
        out.setdefault(path, set()).add(kind)


def _check(payloads: list[bytes]) -> None:
    assert len(payloads) == len(ALERTS)
    types: dict[str, set[str]] = {}
    for payload in payloads:
        doc = orjson.loads(payload)
        validate(doc)
        _json_types(doc, "", types)
    assert {orjson.loads(p)["uuid"] for p in payloads} == {a.uuid for a in ALERTS}
    mixed = {path: kinds for path, kinds in types.items() if len(kinds) > 1}
    assert not mixed, f"fields with more than one JSON type across sources: {mixed}"
    # The fields the sources used to disagree on are all there, typed as published.
    assert types["/output_fields/container.image.pinned"] == {"boolean"}
    assert types["/output_fields/container.image.valid"] == {"boolean"}
    assert types["/eventd/images[]/digest"] == {"string"}


def test_the_alerts_cover_both_sources_and_the_typed_fields() -> None:
    by_source = {a.context["event_source"] for a in ALERTS}
    assert by_source == {"k8s_audit", "falco"}
    flags = [a for a in ALERTS if a.rule == "Falco alert image flags"]
    assert len(flags) == 2
    assert {a.output_fields["container.image.pinned"] for a in flags} == {True, False}
    passed = [a for a in ALERTS if a.rule == "Terminal shell in container"]
    assert [a.output_fields["container.image.valid"] for a in passed] == [True, True]
    assert [a.context["images"][0]["digest"] for a in passed] == ["", "sha256:" + "c" * 64]
    audit_digests = {i["digest"] for a in ALERTS if a.source == "k8s_audit" for i in a.context["images"]}
    assert "" in audit_digests and "sha256:" + "c" * 64 in audit_digests


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
