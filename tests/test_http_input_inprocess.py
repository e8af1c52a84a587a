"""``eventd.sources.http_input``: the answers, limits and counters, exactly (issue 17).

The source tests (``test_source_falco_http.py``, ``test_source_audit_webhook.py``)
check that a request is accepted or refused; mutation testing showed they did
not check *which* answer a sender gets (the message, ``Retry-After``, the
challenge), nor the edges of the byte limits, nor the gzip reader's corner
cases.  The bounded readers are tested directly (they are small classes with
one job); everything a sender sees is tested over real HTTP on loopback,
through the real Falco ``http_output`` receiver.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import threading
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from eventd.events.errors import DecodeError
from eventd.metrics import Metrics
from eventd.sources import http_input
from eventd.sources.base import Batch
from eventd.sources.falco_http import FalcoHttpSource
from eventd.sources.http_input import (
    BearerToken,
    InflightBytes,
    Rejected,
    _Collector,
    _Inflater,
    busy,
    count_rejected,
    delivered,
    inflight_full,
    stopping,
)
from tests.support.builders import falco_alert
from tests.test_source_falco_http import JSON, RecordingInlet, config, post, running

RETRY = {"Retry-After": "1"}


def refusal(err: Rejected) -> tuple[int, str, str, dict[str, str]]:
    return err.status, err.reason, str(err), err.headers


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# ------------------------------------------------------------ bounded bodies


def test_a_plain_body_may_reach_the_limit_exactly() -> None:
    body = _Collector(10)
    for chunk in (b"abc", b"defg", b"hij"):
        body.feed(chunk)
    assert (body.size, body.result()) == (10, b"abcdefghij")
    with pytest.raises(Rejected) as err:
        body.feed(b"k")
    assert refusal(err.value) == (413, "too_large", "body exceeds the limit of 10 bytes", {})


def test_a_gzip_body_may_inflate_to_the_limit_exactly() -> None:
    plain = b"x" * 1000
    body = _Inflater(1000)
    body.feed(gzip.compress(plain))
    assert body.result() == plain
    over = _Inflater(999)
    with pytest.raises(Rejected) as err:
        over.feed(gzip.compress(plain))
    assert refusal(err.value) == (413, "too_large", "body exceeds the limit of 999 bytes", {})


def test_the_compressed_size_obeys_the_limit_too_across_chunks() -> None:
    wire = gzip.compress(os.urandom(300))  # incompressible: the wire is the larger
    fits = _Inflater(len(wire))
    for i in range(0, len(wire), 7):
        fits.feed(wire[i : i + 7])
    assert len(fits.result()) == 300
    small = _Inflater(len(wire) - 1)
    with pytest.raises(Rejected) as err:
        for i in range(0, len(wire), 7):
            small.feed(wire[i : i + 7])
    message = f"compressed body exceeds the limit of {len(wire) - 1} bytes"
    assert refusal(err.value) == (413, "too_large", message, {})


def test_a_bomb_is_inflated_in_steps_to_the_end() -> None:
    """2 MiB of zeros is a few KiB of gzip: one ``feed`` must inflate it in
    several bounded steps, and all of them."""
    plain = bytes(2 * 1024 * 1024)
    body = _Inflater(len(plain))
    body.feed(gzip.compress(plain))
    assert body.result() == plain


def test_concatenated_gzip_members_are_one_body() -> None:
    body = _Inflater(100)
    body.feed(gzip.compress(b"[1,") + gzip.compress(b"2]"))
    assert body.result() == b"[1,2]"


@pytest.mark.parametrize(
    "wire",
    [
        zlib.compress(b"{}"),  # zlib, not gzip
        gzip.compress(b"[1,") + zlib.compress(b"2]"),
        b"not gzip at all",
    ],
)
def test_what_is_not_gzip_is_refused_as_invalid(wire: bytes) -> None:
    with pytest.raises(Rejected) as err:
        body = _Inflater(1000)
        body.feed(wire)
        body.result()
    assert refusal(err.value) == (400, "gzip", "invalid gzip body", {})


def test_a_truncated_gzip_body_is_refused() -> None:
    body = _Inflater(1000)
    body.feed(gzip.compress(b"x" * 100)[:-10])
    with pytest.raises(Rejected) as err:
        body.result()
    assert refusal(err.value) == (400, "gzip", "truncated gzip body", {})


# ------------------------------------------------------------ bytes in flight


def test_reservations_share_the_budget_and_give_it_back() -> None:
    budget = InflightBytes(10)
    with budget.reservation() as a:
        a.grow(1)
        assert budget.held == 1
        a.grow(4)
        a.grow(4)  # already held
        a.grow(2)  # less than held: nothing to take
        assert (a.size, budget.held) == (4, 4)
        with budget.reservation() as b:
            b.grow(6)
            assert budget.held == 10
            with pytest.raises(Rejected) as err:
                a.grow(5)
            assert refusal(err.value) == refusal(inflight_full())
            assert (a.size, budget.held) == (4, 10)
        assert budget.held == 4
    assert budget.held == 0


def test_the_503_answers_ask_for_a_retry() -> None:
    assert refusal(busy()) == (503, "busy", "eventd is busy, retry later", RETRY)
    assert refusal(stopping()) == (503, "stopping", "eventd is shutting down, retry later", RETRY)
    assert refusal(inflight_full()) == (
        503,
        "inflight_bytes",
        "too many request bytes in flight, retry later",
        RETRY,
    )


# ------------------------------------------------------------------ delivery


@pytest.mark.asyncio
async def test_delivery_waits_for_the_batch_and_turns_failures_into_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    ok = Batch("s", [], done=loop.create_future())
    loop.call_later(0.01, ok.done.set_result, None)  # type: ignore[union-attr]
    await asyncio.wait_for(delivered(ok, timeout=5), 5)

    failed = Batch("s", [], done=loop.create_future())
    failed.done.set_exception(RuntimeError("sink exploded"))  # type: ignore[union-attr]
    with pytest.raises(Rejected) as err:
        await delivered(failed)
    assert refusal(err.value) == (503, "failed", "processing failed; retry", RETRY)

    slow = Batch("s", [], done=loop.create_future())
    with pytest.raises(Rejected) as err:
        await asyncio.wait_for(delivered(slow, timeout=0.05), 5)
    assert refusal(err.value) == (503, "slow", "accepted but not processed in time; retry", RETRY)
    assert not slow.done.done()  # type: ignore[union-attr]  # shielded: the pipeline still owns it

    # Without an explicit timeout, the module's delivery timeout applies.
    monkeypatch.setattr(http_input, "DELIVERY_TIMEOUT_SECONDS", 0.05)
    with pytest.raises(Rejected) as err:
        await asyncio.wait_for(delivered(slow), 5)
    assert err.value.reason == "slow"


def test_decode_errors_are_counted_once_per_reason() -> None:
    inlet = RecordingInlet()
    errors = [DecodeError("json", "a"), DecodeError("priority", "b"), DecodeError("json", "c")]
    count_rejected(inlet, "falco_http", errors)
    assert inlet.rejects == Counter(json=2, priority=1)


# -------------------------------------------------------------------- tokens


def test_a_bearer_token_may_follow_several_spaces(tmp_path: Path) -> None:
    """RFC 6750 section 2.1: ``credentials = "Bearer" 1*SP b64token``."""
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    token = BearerToken(path, "sources.x.token_file")
    assert token.path == path
    assert token.matches("Bearer s3cret")
    assert token.matches("bearer   s3cret ")
    assert not token.matches("Bearer s3cre")
    assert not token.matches("Basic s3cret")
    assert not token.matches("Bearer s3cret extra")
    assert not token.matches(None)
    assert not token.matches("Bearer s3crét")


def test_a_token_file_emptied_later_is_counted_and_the_old_token_kept(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    metrics = Metrics()
    token = BearerToken(path, "sources.x.token_file", metrics)
    path.write_text("")
    os.utime(path, ns=(1, 1))  # a new stamp even on a coarse clock
    assert token.matches("Bearer s3cret")
    assert (
        sample(metrics, "eventd_secret_file_rejected_total", key="sources.x.token_file", reason="empty") == 1
    )


# ------------------------------------------------------------ over real HTTP


async def answer(
    url: str, body: bytes = b"{}", headers: dict[str, str] | None = None, method: str = "POST"
) -> tuple[int, str, Any]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.request(method, url, data=body, headers=JSON if headers is None else headers) as resp,
    ):
        return resp.status, await resp.text(), resp.headers


@pytest.mark.asyncio
async def test_every_refusal_says_why(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok\n")
    metrics = Metrics()
    source = FalcoHttpSource(config(token_file=token, max_body_bytes=1000, max_inflight_bytes=1000), metrics)
    inlet = RecordingInlet()
    auth = {"Authorization": "Bearer tok", **JSON}
    async with running(source, inlet) as url:
        status, text, headers = await answer(url + "/", headers=JSON)
        assert (status, text, headers["WWW-Authenticate"]) == (
            401,
            "missing or wrong bearer token\n",
            'Bearer realm="eventd"',
        )
        status, text, headers = await answer(url + "/", headers=auth, method="PUT")
        assert (status, text, headers["Allow"]) == (405, "only POST is accepted\n", "POST")
        media = "text/" + "p" * 100
        status, text, _ = await answer(url + "/", headers={**auth, "Content-Type": media + "; x=y"})
        assert (status, text) == (415, f"unsupported content type {media[:64]!r}, expected JSON\n")
        encoding = "b" * 40
        status, text, _ = await answer(url + "/", headers={**auth, "Content-Encoding": encoding})
        assert (status, text) == (415, f"unsupported content encoding {encoding[:32]!r}\n")
        status, text, _ = await answer(url + "/", b"x" * 1001, headers=auth)
        assert (status, text) == (413, "body of 1001 bytes exceeds the limit of 1000\n")
        status, text, _ = await answer(url + "/", b"[" + b" " * 998 + b"]", headers=auth)
        assert (status, text) == (200, '{"accepted":0,"rejected":0}')  # exactly the limit
        status, text, _ = await answer(url + "/nowhere", headers=auth)
        assert (status, text) == (404, "not found\n")
        zipped = gzip.compress(orjson.dumps(falco_alert()))
        status, _, _ = await answer(url + "/", zipped, {**auth, "Content-Encoding": " GZip "})
        assert status == 200
    assert inlet.rejects == Counter(unauthorized=1, method=1, content_type=1, encoding=1, too_large=1)
    assert sample(metrics, "eventd_events_rejected_total", source="falco_http", reason="not_found") == 1
    assert source.ready() is False


@pytest.mark.asyncio
async def test_a_body_that_stops_arriving_gets_408(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_input, "BODY_TIMEOUT_SECONDS", 0.2)
    source, inlet = FalcoHttpSource(config(), Metrics()), RecordingInlet()
    async with running(source, inlet):
        assert source.address is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", source.address[1])
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        head = await asyncio.wait_for(reader.read(4096), 10)
        writer.close()
    assert head.startswith(b"HTTP/1.1 408 ")
    assert head.endswith(b"\r\n\r\nrequest body not received in time\n")
    assert inlet.rejects == Counter(timeout=1)


@pytest.mark.asyncio
async def test_malformed_http_and_handler_failures_are_counted_apart() -> None:
    class Exploding(RecordingInlet):
        def offer(self, batch: Batch) -> bool:
            raise RuntimeError("pipeline bug")

    metrics = Metrics()
    source, inlet = FalcoHttpSource(config(), metrics), Exploding()
    async with running(source, inlet) as url:
        assert source.address is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", source.address[1])
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.read(4096), 10)).split(b" ")[1] == b"400"
        writer.close()
        assert (await answer(url + "/", orjson.dumps(falco_alert())))[0] == 500
    rejected = "eventd_events_rejected_total"
    assert sample(metrics, rejected, source="falco_http", reason="bad_request") == 1
    assert sample(metrics, rejected, source="falco_http", reason="server_error") == 1


@pytest.mark.asyncio
async def test_a_large_body_is_decoded_off_the_event_loop() -> None:
    """The event loop keeps serving other requests while a big batch decodes."""
    threads: list[int] = []

    class Watched(FalcoHttpSource):
        def parse(self, body: bytes) -> Any:
            threads.append(threading.get_ident())
            return super().parse(body)

    alerts = [falco_alert(n=i, pad="x" * 2000) for i in range(600)]
    big = orjson.dumps(alerts)
    assert len(big) > http_input.LARGE_BODY_BYTES
    source = Watched(config(max_body_bytes=4 << 20, max_inflight_bytes=4 << 20), Metrics())
    async with running(source, RecordingInlet()) as url:
        assert (await post(url + "/", orjson.dumps(alerts[0])))[0] == 200
        status, text = await post(url + "/", big)
        assert (status, orjson.loads(text)) == (200, {"accepted": 600, "rejected": 0})
    assert threads[0] == threading.get_ident()
    assert threads[1] != threading.get_ident()
