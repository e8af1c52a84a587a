"""WebhookSink over real HTTP(S): body, bearer token, HMAC signature, retries, TLS, backpressure."""

from __future__ import annotations

import asyncio
import hmac
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import pytest_asyncio

from eventd.config import ConfigError, WebhookSinkConfig
from eventd.metrics import Metrics
from eventd.sinks.webhook import WebhookSink
from tests.support.http_receiver import Answer, Receiver, Recorded, sample_alert, serve
from tests.support.tls_certs import make_tls_files

KEY = "k3y-for-signing"


def verify(req: Recorded, key: bytes, header: str = "X-Eventd-Signature-256", max_age: int = 300) -> bool:
    """A receiver's check, written from the documented scheme only."""
    stamp = req.headers.get("X-Eventd-Timestamp", "")
    sent = req.headers.get(header, "")
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > max_age or not sent.startswith("sha256="):
        return False
    expected = hmac.HMAC(key, stamp.encode("ascii") + b"." + req.body, "sha256").hexdigest()
    return hmac.compare_digest(sent.removeprefix("sha256="), expected)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serve() as r:
        yield r


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"sink": "webhook", **labels}) or 0


async def no_wait(delay: float) -> None:
    await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_posts_the_alert_json_with_token_and_a_verifiable_signature(
    receiver: Receiver, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text("t0ken\n")
    (tmp_path / "hmac").write_text(KEY + "\n")
    config = WebhookSinkConfig(
        url=receiver.url + "/hooks/eventd", token_file=tmp_path / "token", hmac_secret_file=tmp_path / "hmac"
    )
    sink = WebhookSink(config, Metrics())
    alert = sample_alert()
    await sink.send(alert)
    await sink.close()
    (req,) = receiver.requests
    assert req.path == "/hooks/eventd"
    assert req.body == alert.to_json()
    assert orjson.loads(req.body)["uuid"] == alert.uuid
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["Authorization"] == "Bearer t0ken"
    assert verify(req, KEY.encode())
    assert not verify(req, b"another key")
    tampered = Recorded(req.method, req.path, req.headers, req.body.replace(b"payments", b"paymentz"), 200)
    assert not verify(tampered, KEY.encode())
    restamped = Recorded(req.method, req.path, {**req.headers, "X-Eventd-Timestamp": "1"}, req.body, 200)
    assert not verify(restamped, KEY.encode())


@pytest.mark.asyncio
async def test_custom_signature_header_and_no_auth_headers_by_default(
    receiver: Receiver, tmp_path: Path
) -> None:
    (tmp_path / "hmac").write_text(KEY)
    sink = WebhookSink(
        WebhookSinkConfig(url=receiver.url, hmac_secret_file=tmp_path / "hmac", signature_header="X-Sig"),
        Metrics(),
    )
    await sink.send(sample_alert())
    await sink.close()
    sink = WebhookSink(WebhookSinkConfig(url=receiver.url), Metrics())
    await sink.send(sample_alert())
    await sink.close()
    signed, plain = receiver.requests
    assert verify(signed, KEY.encode(), header="X-Sig")
    assert "Authorization" not in plain.headers and "X-Eventd-Timestamp" not in plain.headers


@pytest.mark.asyncio
async def test_every_retry_is_signed_afresh_and_delivered(receiver: Receiver, tmp_path: Path) -> None:
    (tmp_path / "hmac").write_text(KEY)
    receiver.plan(Answer(503), Answer(429))
    metrics = Metrics()
    config = WebhookSinkConfig(url=receiver.url, hmac_secret_file=tmp_path / "hmac")
    sink = WebhookSink(config, metrics, sleep=no_wait)
    await sink.send(sample_alert())
    await sink.close()
    assert [r.status for r in receiver.requests] == [503, 429, 200]
    assert all(verify(r, KEY.encode()) for r in receiver.requests)
    assert value(metrics, "eventd_sink_retries_total") == 2
    assert value(metrics, "eventd_sink_deliveries_total") == 1


@pytest.mark.asyncio
async def test_401_is_not_retried(receiver: Receiver) -> None:
    receiver.plan(Answer(401))
    metrics = Metrics()
    sink = WebhookSink(WebhookSinkConfig(url=receiver.url), metrics, sleep=no_wait)
    await sink.send(sample_alert())
    await sink.close()
    assert len(receiver.requests) == 1
    assert value(metrics, "eventd_sink_dropped_total", reason="rejected") == 1


@pytest.mark.asyncio
async def test_https_with_client_certificate(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "pki", client_name="eventd")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca))
    server_ctx.load_cert_chain(tls.server_cert, tls.server_key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    async with serve(ssl_context=server_ctx) as receiver:
        metrics = Metrics()
        good = WebhookSink(WebhookSinkConfig(url=receiver.url, tls=tls.client_tls()), metrics)
        await good.send(sample_alert())
        await good.close()
        assert len(receiver.requests) == 1
        assert value(metrics, "eventd_sink_deliveries_total") == 1

        metrics = Metrics()
        untrusted = WebhookSink(WebhookSinkConfig(url=receiver.url, max_retries=1), metrics, sleep=no_wait)
        await untrusted.send(sample_alert())  # system CAs do not know our test CA
        await untrusted.close()
        assert len(receiver.requests) == 1
        assert value(metrics, "eventd_sink_failures_total", reason="tls") == 2
        assert value(metrics, "eventd_sink_dropped_total", reason="retries_exhausted") == 1


def test_url_is_required() -> None:
    with pytest.raises(ConfigError, match=r"sinks\.webhook\.url"):
        WebhookSink(WebhookSinkConfig(), Metrics())
