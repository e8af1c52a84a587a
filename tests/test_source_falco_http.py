"""The falcosidekick-compatible Falco ``http_output`` receiver over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from eventd.config import ConfigError, FalcoHttpConfig, Listen
from eventd.events.model import FALCO
from eventd.metrics import Metrics
from eventd.sources.falco_http import FalcoHttpSource
from tests.support.builders import falco_alert
from tests.support.http_inlet import RecordingInlet as SharedInlet
from tests.support.tls_certs import make_tls_files

JSON = {"Content-Type": "application/json"}


class RecordingInlet(SharedInlet):
    def __init__(self) -> None:
        super().__init__("falco_http")

    def rules(self) -> list[str]:
        return [d["rule"] for d in self.docs()]


def config(**kw: Any) -> FalcoHttpConfig:
    return dataclasses.replace(FalcoHttpConfig(listen=Listen("127.0.0.1", 0)), **kw)


@contextlib.asynccontextmanager
async def running(source: FalcoHttpSource, inlet: RecordingInlet) -> AsyncIterator[str]:
    task = asyncio.create_task(source.run(inlet))
    for _ in range(1000):
        if source.ready() or task.done():
            break
        await asyncio.sleep(0.005)
    if task.done():
        task.result()
    assert source.ready() and source.address is not None
    scheme = "https" if source.config.tls else "http"
    try:
        yield f"{scheme}://127.0.0.1:{source.address[1]}"
    finally:
        await source.stop()
        await asyncio.wait_for(task, 5)


@pytest.fixture
def inlet() -> RecordingInlet:
    return RecordingInlet()


@pytest.fixture
def source() -> FalcoHttpSource:
    return FalcoHttpSource(config(), Metrics())


async def post(url: str, body: Any, headers: dict[str, str] | None = None, **kw: Any) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=JSON if headers is None else headers, **kw) as resp,
    ):
        return resp.status, await resp.text()


@pytest.mark.asyncio
async def test_valid_alert_is_accepted(source: FalcoHttpSource, inlet: RecordingInlet) -> None:
    alert = falco_alert()
    async with running(source, inlet) as url:
        status, text = await post(url + "/", orjson.dumps(alert))
        assert status == 200 and orjson.loads(text) == {"accepted": 1, "rejected": 0}
        zipped = gzip.compress(orjson.dumps(falco_alert()))
        assert (await post(url + "/", zipped, {"Content-Encoding": "gzip", **JSON}))[0] == 200
    first = inlet.batches[0].events[0]
    assert (first.source, first.origin, inlet.batches[0].source) == (FALCO, "falco_http", "falco_http")
    assert first.doc["output_fields"] == alert["output_fields"]  # types kept
    assert first.doc["priority"] == "Notice"
    assert len(inlet.batches) == 2


@pytest.mark.parametrize(
    ("change", "reason", "words"),
    [
        ({"priority": "Loud"}, "priority", "unknown priority"),
        ({"priority": None}, "priority", "unknown priority"),
        ({"rule": ""}, "rule", "'rule'"),
        ({"rule": None}, "rule", "'rule'"),
        ({"time": "yesterday"}, "time", "invalid 'time'"),
        ({"time": None}, "time", "invalid 'time'"),
        ({"output_fields": [1]}, "shape", "output_fields"),
        ({"tags": "shell"}, "shape", "tags"),
    ],
)
@pytest.mark.asyncio
async def test_invalid_alert_gets_400_with_reason(
    source: FalcoHttpSource, inlet: RecordingInlet, change: dict[str, Any], reason: str, words: str
) -> None:
    alert = {**falco_alert(), **change}
    async with running(source, inlet) as url:
        status, text = await post(url + "/", orjson.dumps(alert))
    assert status == 400 and words in text
    assert inlet.rejects == Counter({reason: 1})
    assert inlet.batches == []


@pytest.mark.asyncio
async def test_transport_refusals(source: FalcoHttpSource, inlet: RecordingInlet) -> None:
    async with running(source, inlet) as url, aiohttp.ClientSession() as session:
        async with session.get(url + "/") as resp:
            assert resp.status == 405
        assert (await post(url + "/", b"{oops"))[0] == 400
        assert (await post(url + "/", b"42"))[0] == 400
        assert (await post(url + "/", orjson.dumps(falco_alert()), {"Content-Type": "text/plain"}))[0] == 415
        async with session.post(url + "/elsewhere", data=b"{}", headers=JSON) as resp:
            assert resp.status == 404
    assert inlet.rejects == Counter(method=1, json=1, not_falco=1, content_type=1)


@pytest.mark.asyncio
async def test_array_and_ndjson_batches(source: FalcoHttpSource, inlet: RecordingInlet) -> None:
    a, b, c = (falco_alert(n=i) for i in range(3))
    for alert, rule in zip((a, b, c), "abc", strict=True):
        alert["rule"] = rule
    bad = {**falco_alert(), "priority": "Loud"}
    ndjson = b"\n".join(orjson.dumps(x) for x in (a, b)) + b"\n\n{not json\n" + orjson.dumps(c) + b"\n"
    async with running(source, inlet) as url:
        status, text = await post(url + "/", orjson.dumps([a, bad, b]))
        assert status == 200 and orjson.loads(text) == {"accepted": 2, "rejected": 1}
        status, text = await post(url + "/", ndjson, {"Content-Type": "application/x-ndjson"})
        assert status == 200 and orjson.loads(text) == {"accepted": 3, "rejected": 1}
        status, text = await post(url + "/", orjson.dumps([bad, bad]))
        assert status == 400 and "no valid alert" in text
        assert (await post(url + "/", b"[]"))[0] == 200
    assert inlet.rules() == ["a", "b", "a", "b", "c"]
    assert inlet.rejects == Counter(priority=3, json=1)


@pytest.mark.asyncio
async def test_full_pipeline_answers_503(source: FalcoHttpSource, inlet: RecordingInlet) -> None:
    async with running(source, inlet) as url, aiohttp.ClientSession() as session:
        inlet.accepting = False
        async with session.post(url + "/", data=orjson.dumps(falco_alert()), headers=JSON) as resp:
            assert (resp.status, resp.headers["Retry-After"]) == (503, "1")
        inlet.accepting = True
        assert (await post(url + "/", orjson.dumps(falco_alert())))[0] == 200
    assert len(inlet.batches) == 1


@pytest.mark.asyncio
async def test_test_endpoint_healthz_and_ping(source: FalcoHttpSource, inlet: RecordingInlet) -> None:
    """falcosidekick's probe endpoints and /test (handlers.go in
    falcosecurity/falcosidekick: /ping answers "pong", /healthz {"status": "ok"})."""
    async with running(source, inlet) as url, aiohttp.ClientSession() as session:
        async with session.get(url + "/healthz") as resp:
            assert resp.status == 200 and (await resp.json()) == {"status": "ok"}
        async with session.get(url + "/ping") as resp:
            assert (resp.status, await resp.text()) == (200, "pong\n")
        async with session.post(url + "/ping") as resp:
            assert resp.status == 404  # a probe path, not an alert path
        async with session.post(url + "/test") as resp:
            assert resp.status == 200
        async with session.get(url + "/test") as resp:
            assert resp.status == 405
    [batch] = inlet.batches
    [event] = batch.events
    assert event.doc["rule"] == "Test rule"
    assert event.doc["priority"] == "Debug"
    assert event.origin == "falco_http"


@pytest.mark.asyncio
async def test_token_guards_posts_but_not_healthz(tmp_path: Path, inlet: RecordingInlet) -> None:
    token = tmp_path / "token"
    token.write_text("falco-token\n")
    pki = make_tls_files(tmp_path / "pki")
    source = FalcoHttpSource(
        config(token_file=token, tls=pki.server_tls(client_certificates=False)), Metrics()
    )
    ctx = pki.client_context(certificate=False)
    async with running(source, inlet) as url, aiohttp.ClientSession() as session:
        assert url.startswith("https://")
        async with session.get(url + "/healthz", ssl=ctx) as resp:
            assert resp.status == 200
        async with session.get(url + "/ping", ssl=ctx) as resp:
            assert resp.status == 200  # probes carry no token
        assert (await post(url + "/", orjson.dumps(falco_alert()), ssl=ctx))[0] == 401
        assert (await post(url + "/test", b"", {}, ssl=ctx))[0] == 401
        auth = {"Authorization": "Bearer falco-token", **JSON}
        assert (await post(url + "/", orjson.dumps(falco_alert()), auth, ssl=ctx))[0] == 200
    assert inlet.rejects == Counter(unauthorized=2)
    assert len(inlet.batches) == 1


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match=r"sources\.falco_http\.listen"):
        FalcoHttpSource(config(listen=Listen("0.0.0.0", 2801)), Metrics())
    for reserved in ("/healthz", "/ping", "/test"):
        with pytest.raises(ConfigError, match=r"sources\.falco_http\.path: .* is reserved"):
            FalcoHttpSource(config(path=reserved), Metrics())
    with pytest.raises(ConfigError, match=r"sources\.falco_http\.path"):
        FalcoHttpSource(config(path="falco"), Metrics())
