"""SlackSink over real HTTP: message content, secrets, retries, drops, concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from eventd.config import ConfigError, SlackSinkConfig
from eventd.metrics import Metrics
from eventd.priority import Priority
from eventd.sinks.lane import SinkLane
from eventd.sinks.policy import PolicySink
from eventd.sinks.slack import SlackSink
from tests.support.http_receiver import Answer, Receiver, sample_alert, serve

SECRET_PATH = "/services/T0001/B0001/s3cr3tT0ken"


@dataclass
class Harness:
    receiver: Receiver
    metrics: Metrics
    delays: list[float]
    url_file: Path

    def sink(self, **config) -> SlackSink:
        cfg = SlackSinkConfig(webhook_url_file=self.url_file, **{"retry_backoff_seconds": 0.01, **config})

        async def sleep(delay: float) -> None:
            self.delays.append(delay)
            await asyncio.sleep(0)

        return SlackSink(cfg, self.metrics, sleep=sleep)

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, {"sink": "slack", **labels}) or 0


@pytest_asyncio.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with serve() as receiver:
        url_file = tmp_path / "webhook-url"
        url_file.write_text(receiver.url + SECRET_PATH + "\n")
        yield Harness(receiver, Metrics(), [], url_file)


async def deliver(sink: SlackSink, *alerts) -> None:
    await sink.start()
    for alert in alerts:
        await sink.send(alert)
    async with asyncio.timeout(10):
        await sink.close()


@pytest.mark.asyncio
async def test_message_has_what_a_responder_needs(h: Harness) -> None:
    alert = sample_alert(
        "Create privileged pod",
        Priority.CRITICAL,
        user="<!channel> evil",
        images=("nginx:1.25@sha256:" + "a" * 64, "myregistry.io:5000/team/api:1.4"),
        node="node-7",
    )
    await deliver(h.sink(username="sec-bot"), alert)
    (req,) = h.receiver.requests
    assert req.method == "POST" and req.path == SECRET_PATH
    assert req.headers["Content-Type"] == "application/json"
    msg = orjson.loads(req.body)
    assert msg["username"] == "sec-bot"
    assert msg["text"] == "Critical: Create privileged pod (payments/pods/api-0)"
    (attachment,) = msg["attachments"]
    assert attachment["color"] == "#d50000"
    header, facts, images, output, tags = attachment["blocks"]
    assert header == {
        "type": "header",
        "text": {"type": "plain_text", "text": ":rotating_light: Critical: Create privileged pod"},
    }
    fields = dict(f["text"].split("\n", 1) for f in facts["fields"])
    assert fields == {
        "*Cluster*": "prod-eu",
        "*Namespace*": "payments",
        "*Workload*": "pods/api-0",
        "*User*": "&lt;!channel&gt; evil",  # no mention of the whole channel
        "*Node*": "node-7",
        "*Time*": "2026-11-29T10:00:00.123456789Z",
        "*Source*": "k8s_audit",
        "*UUID*": alert.uuid,
    }
    assert images["text"]["text"] == (
        f"*Images*\n• `docker.io/library/nginx:1.25@sha256:{'a' * 64}`\n• `myregistry.io:5000/team/api:1.4`"
    )
    assert output["text"]["text"].startswith("```10:00:00.123456789: Critical Pod created (user=&lt;!channel")
    assert tags["elements"][0]["text"] == "k8s, container"
    assert b"s3cr3t" not in req.body
    assert h.value("eventd_sink_deliveries_total") == 1


@pytest.mark.asyncio
async def test_username_is_sent_only_when_configured(h: Harness) -> None:
    """A Slack app's webhooks ignore ``username`` (only legacy incoming
    webhooks honour it), so by default none is sent."""
    await deliver(h.sink(), sample_alert())
    (req,) = h.receiver.requests
    assert "username" not in orjson.loads(req.body)


@pytest.mark.asyncio
async def test_long_output_is_cut_to_slack_limits(h: Harness) -> None:
    alert = sample_alert()
    alert.output = "x" * 10_000
    await deliver(h.sink(), alert)
    blocks = orjson.loads(h.receiver.requests[0].body)["attachments"][0]["blocks"]
    text = blocks[-2]["text"]["text"]
    assert len(text) <= 3000 and text.startswith("```x") and text.endswith("…```")


@pytest.mark.asyncio
async def test_429_retry_after_is_honoured(h: Harness) -> None:
    h.receiver.plan(Answer(429, {"Retry-After": "7"}))
    await deliver(h.sink(), sample_alert())
    assert [r.status for r in h.receiver.requests] == [429, 200]
    assert h.delays == [7.0]
    assert h.value("eventd_sink_failures_total", reason="status_429") == 1
    assert h.value("eventd_sink_retries_total") == 1
    assert h.value("eventd_sink_deliveries_total") == 1


@pytest.mark.asyncio
async def test_5xx_is_retried_with_growing_backoff_then_delivered(h: Harness) -> None:
    h.receiver.plan(Answer(500), Answer(503))
    await deliver(h.sink(retry_backoff_seconds=0.5), sample_alert())
    assert [r.status for r in h.receiver.requests] == [500, 503, 200]
    assert h.receiver.requests[0].body == h.receiver.requests[2].body
    first, second = h.delays
    assert 0.25 <= first <= 0.5 and 0.5 <= second <= 1.0
    assert h.value("eventd_sink_failures_total", reason="status_5xx") == 2
    assert h.value("eventd_sink_deliveries_total") == 1


@pytest.mark.asyncio
async def test_timeout_is_retried(h: Harness) -> None:
    h.receiver.plan(Answer(hold=10))
    await deliver(h.sink(timeout_seconds=0.2), sample_alert())
    assert len(h.receiver.requests) == 2
    assert h.value("eventd_sink_failures_total", reason="timeout") == 1
    assert h.value("eventd_sink_deliveries_total") == 1


@pytest.mark.asyncio
async def test_4xx_is_dropped_at_once_and_counted_without_leaking_the_url(h: Harness) -> None:
    h.receiver.plan(Answer(404, body=b"no_service"))
    with capture_logs() as logs:
        await deliver(h.sink(), sample_alert("first"), sample_alert("second"))
    assert [r.status for r in h.receiver.requests] == [404, 200]
    assert h.delays == []
    assert h.value("eventd_sink_failures_total", reason="status_4xx") == 1
    assert h.value("eventd_sink_dropped_total", reason="rejected") == 1
    assert h.value("eventd_sink_deliveries_total") == 1
    assert any(e["event"] == "sink_rejected" for e in logs)
    assert "s3cr3t" not in repr(logs)


@pytest.mark.asyncio
async def test_retries_exhausted_drop_and_health(h: Harness) -> None:
    h.receiver.default = Answer(502)
    sink = h.sink(max_retries=2, max_concurrency=1)
    await sink.start()
    for i in range(2):
        await sink.send(sample_alert(f"r{i}"))
    await sink.flush()
    assert len(h.receiver.requests) == 6  # 2 alerts x (1 + 2 retries)
    assert h.value("eventd_sink_dropped_total", reason="retries_exhausted") == 2
    assert not sink.healthy()
    h.receiver.default = Answer(200)
    await sink.send(sample_alert())
    await sink.flush()
    assert sink.healthy()
    await sink.close()


@pytest.mark.asyncio
async def test_connection_errors_are_retried(h: Harness, tmp_path: Path) -> None:
    async with serve() as gone:
        dead_url = gone.url
    h.url_file.write_text(dead_url + SECRET_PATH)
    await deliver(h.sink(max_retries=1), sample_alert())
    assert h.value("eventd_sink_failures_total", reason="connection") == 2
    assert h.value("eventd_sink_dropped_total", reason="retries_exhausted") == 1


@pytest.mark.asyncio
async def test_concurrency_never_exceeds_the_limit(h: Harness) -> None:
    """The sink's lane runs ``max_concurrency`` requests at once, no more."""
    h.receiver.default = Answer(hold=0.05)
    sink = h.sink(max_concurrency=2)
    lane = SinkLane(PolicySink(sink, sink.config, h.metrics), h.metrics)
    lane.start()
    lane.offer([sample_alert(f"r{i}") for i in range(8)])
    async with asyncio.timeout(10):
        await lane.drain()
    await lane.stop()
    await sink.close()
    assert len(h.receiver.requests) == 8
    assert h.receiver.max_active == 2
    assert h.value("eventd_sink_deliveries_total") == 8


@pytest.mark.asyncio
async def test_a_rotated_webhook_url_is_used_without_restart(h: Harness) -> None:
    sink = h.sink()
    await sink.start()
    await sink.send(sample_alert())
    await sink.flush()
    h.url_file.write_text(h.receiver.url + "/services/T0001/B0001/rotated-longer")
    await sink.send(sample_alert())
    await sink.close()
    assert [r.path for r in h.receiver.requests] == [SECRET_PATH, "/services/T0001/B0001/rotated-longer"]


def test_missing_url_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sinks\.slack\.webhook_url_file"):
        SlackSink(SlackSinkConfig(webhook_url_file=tmp_path / "absent"), Metrics())
