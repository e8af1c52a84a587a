"""``eventd.sources.http_input``: what an operator reads, exactly (issue 17).

The survivors of the whole mutation run of 10:36 were, for the most part,
the configuration errors (their key and text), the log lines an operator
reads (listening, refusals, the drain and its timeout, a token sent without
TLS) and the in-flight count that the drain waits for.  These tests compare
each of them whole, against the real Falco ``http_output`` receiver
listening on loopback; the drain is made short by setting ``DRAIN_SECONDS``,
so no test waits on a clock beyond a generous bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
import structlog

from eventd.config import ConfigError, Listen
from eventd.metrics import Metrics
from eventd.sources import http_input
from eventd.sources.falco_http import FalcoHttpSource
from eventd.sources.http_input import _RefusalCounter
from tests.support.tls_certs import make_tls_files
from tests.test_source_falco_http import JSON, RecordingInlet, config, post, running

KEY = "sources.falco_http"
ELSEWHERE = Listen("10.1.2.3", 9765)  # never bound: construction only


def ours(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events this module logs (other modules' lines left out)."""
    return [e for e in logs if e["event"].startswith(("http_input", "token_without_tls"))]


def config_error(**kw: Any) -> tuple[str, str]:
    with pytest.raises(ConfigError) as err:
        FalcoHttpSource(config(**kw), Metrics())
    return err.value.key, str(err.value)


def ssl_error(load: str, *paths: Path) -> str:
    """What ``ssl`` says about these files, as the source quotes it."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        if load == "cert":
            ctx.load_cert_chain(*paths)
        else:
            ctx.load_verify_locations(cafile=paths[0])
    except (OSError, ssl.SSLError) as err:
        return str(err)
    raise AssertionError("expected an error")


# ------------------------------------------------------------ configuration


def test_a_path_without_a_leading_slash_is_refused() -> None:
    assert config_error(path="alerts") == (f"{KEY}.path", f"{KEY}.path: must start with '/', got 'alerts'")


def test_the_inflight_budget_must_hold_the_largest_body() -> None:
    message = "must be at least max_body_bytes (1000), or the largest bodies never fit"
    assert config_error(max_body_bytes=1000, max_inflight_bytes=999) == (
        f"{KEY}.max_inflight_bytes",
        f"{KEY}.max_inflight_bytes: {message}",
    )
    FalcoHttpSource(config(max_body_bytes=1000, max_inflight_bytes=1000), Metrics())


@pytest.mark.parametrize("field", ["header_timeout_seconds", "idle_timeout_seconds"])
def test_a_listener_limit_error_names_the_inputs_key(field: str) -> None:
    assert config_error(**{field: 0}) == (f"{KEY}.{field}", f"{KEY}.{field}: must be greater than 0")


def test_a_missing_or_garbage_certificate_names_the_tls_key(tmp_path: Path) -> None:
    pki = make_tls_files(tmp_path / "pki")
    missing = tmp_path / "missing.pem"
    tls = dataclasses.replace(pki.server_tls(False), cert=missing)
    why = ssl_error("cert", missing, pki.server_key)
    assert config_error(tls=tls) == (
        f"{KEY}.tls",
        f"{KEY}.tls: cannot load cert {missing} / key {pki.server_key}: {why}",
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    tls = dataclasses.replace(pki.server_tls(False), key=garbage)
    why = ssl_error("cert", pki.server_cert, garbage)
    assert config_error(tls=tls) == (
        f"{KEY}.tls",
        f"{KEY}.tls: cannot load cert {pki.server_cert} / key {garbage}: {why}",
    )


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_a_missing_or_garbage_client_ca_names_its_key(tmp_path: Path, content: str | None) -> None:
    pki = make_tls_files(tmp_path / "pki")
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_text(content)
    tls = dataclasses.replace(pki.server_tls(), client_ca=ca)
    assert config_error(tls=tls) == (
        f"{KEY}.tls.client_ca",
        f"{KEY}.tls.client_ca: cannot load {ca}: {ssl_error('ca', ca)}",
    )


def test_a_source_not_yet_run_is_not_ready_and_has_no_address() -> None:
    source = FalcoHttpSource(config(), Metrics())
    assert (source.ready(), source.address, source.in_flight) == (False, None, 0)


# --------------------------------------------------------- token without TLS


@pytest.mark.parametrize(
    ("listen", "token", "tls", "warned"),
    [
        (ELSEWHERE, True, False, True),  # the token crosses the network in clear
        (Listen("127.0.0.1", 0), True, False, False),  # loopback: never leaves the host
        (ELSEWHERE, True, True, False),  # TLS protects it
        (ELSEWHERE, False, False, False),  # no token (allow_unauthenticated)
    ],
)
def test_a_token_without_tls_off_loopback_is_warned_about(
    tmp_path: Path, listen: Listen, token: bool, tls: bool, warned: bool
) -> None:
    path = tmp_path / "token"
    path.write_text("tok\n")
    kw: dict[str, Any] = {"listen": listen, "allow_unauthenticated": not token}
    if token:
        kw["token_file"] = path
    if tls:
        kw["tls"] = make_tls_files(tmp_path / "pki").server_tls(False)
    with structlog.testing.capture_logs() as logs:
        FalcoHttpSource(config(**kw), Metrics())
    said = {
        "event": "token_without_tls",
        "log_level": "warning",
        "source": "falco_http",
        "listen": str(listen),
    }
    assert ours(logs) == ([said] if warned else [])


@pytest.mark.asyncio
async def test_the_token_files_refusals_are_counted_in_the_sources_metrics(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("tok\n")
    metrics = Metrics()
    source = FalcoHttpSource(config(token_file=path), metrics)
    path.write_text("")
    async with running(source, RecordingInlet()) as url:
        assert (await post(url + "/", b"[]", {"Authorization": "Bearer tok", **JSON}))[0] == 200
    labels = {"key": f"{KEY}.token_file", "reason": "empty"}
    assert metrics.registry.get_sample_value("eventd_secret_file_rejected_total", labels) == 1


# ------------------------------------------------------------- what is logged


def listening(
    port: int, *, tls: bool = False, certificates: bool = False, token: bool = False
) -> dict[str, Any]:
    return {
        "event": "http_input_listening",
        "log_level": "info",
        "source": "falco_http",
        "address": f"127.0.0.1:{port}",
        "path": "/alerts",
        "tls": tls,
        "client_certificates": certificates,
        "token": token,
    }


def stopping(in_flight: int = 0) -> dict[str, Any]:
    return {
        "event": "http_input_stopping",
        "log_level": "info",
        "source": "falco_http",
        "in_flight": in_flight,
    }


@pytest.mark.asyncio
async def test_listening_and_stopping_are_logged_with_what_protects_the_listener(tmp_path: Path) -> None:
    pki = make_tls_files(tmp_path / "pki")
    token = tmp_path / "token"
    token.write_text("tok\n")
    cases = [
        ({}, {}),
        ({"token_file": token}, {"token": True}),
        ({"tls": pki.server_tls(False)}, {"tls": True}),
        ({"tls": pki.server_tls()}, {"tls": True, "certificates": True}),
    ]
    for kw, facts in cases:
        metrics = Metrics()
        source = FalcoHttpSource(config(path="/alerts", **kw), metrics)
        with structlog.testing.capture_logs() as logs:
            async with running(source, RecordingInlet()):
                assert source.address is not None
                port = source.address[1]
                # The listener's metrics carry the source's name.
                assert (
                    metrics.registry.get_sample_value(
                        "eventd_listener_connections", {"listener": "falco_http"}
                    )
                    == 0
                )
        assert ours(logs) == [listening(port, **facts), stopping()]


@pytest.mark.asyncio
async def test_a_refusal_is_logged_with_its_status_reason_message_and_peer() -> None:
    source = FalcoHttpSource(config(), Metrics())
    async with running(source, RecordingInlet()) as url:
        with structlog.testing.capture_logs() as logs:
            status, _ = await post(url + "/", b"{", JSON)
    assert status == 400
    [said] = [e for e in ours(logs) if e["event"] == "http_input_rejected"]
    message = said.pop("message")
    assert message.startswith("invalid JSON: ")
    assert said == {
        "event": "http_input_rejected",
        "log_level": "debug",
        "source": "falco_http",
        "status": 400,
        "reason": "json",
        "remote": "127.0.0.1",
    }


@pytest.mark.asyncio
async def test_the_drain_counts_every_request_in_flight_and_gives_up_after_drain_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two requests whose bodies never finish arriving: both are in flight
    (the drain waits for the count to reach zero), and the drain gives up
    after ``DRAIN_SECONDS`` with a warning instead of waiting forever."""
    monkeypatch.setattr(http_input, "DRAIN_SECONDS", 0.1)
    source, inlet = FalcoHttpSource(config(), Metrics()), RecordingInlet()
    task = asyncio.create_task(source.run(inlet))
    writers = []
    try:
        for _ in range(200):
            if source.ready():
                break
            await asyncio.sleep(0.01)
        assert source.address is not None
        for _ in range(2):
            _, writer = await asyncio.open_connection("127.0.0.1", source.address[1])
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[")
            await writer.drain()
            writers.append(writer)
        for _ in range(500):
            if source.in_flight == 2:
                break
            await asyncio.sleep(0.01)
        assert source.in_flight == 2
        with structlog.testing.capture_logs() as logs:
            await asyncio.wait_for(source.stop(), 10)  # not DRAIN_SECONDS: would hang if unbounded
    finally:
        for writer in writers:
            writer.close()
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    timeout = {
        "event": "http_input_drain_timeout",
        "log_level": "warning",
        "source": "falco_http",
        "in_flight": 2,
    }
    assert ours(logs)[:2] == [stopping(2), timeout]
    assert source.ready() is False


def test_aiohttp_reports_are_counted_by_kind() -> None:
    """A malformed request (``HttpProcessingError``) is a bad request; any
    other report, with or without an exception attached, a server error."""
    from aiohttp.http_exceptions import BadStatusLine

    metrics = Metrics()
    count = _RefusalCounter("falco_http", metrics)

    def record(exc: BaseException | None) -> logging.LogRecord:
        info = (type(exc), exc, None) if exc is not None else None
        return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "x", None, info)

    count(record(BadStatusLine("NOT HTTP")))
    count(record(RuntimeError("handler bug")))
    count(record(None))

    def rejected(reason: str) -> float | None:
        return metrics.registry.get_sample_value(
            "eventd_events_rejected_total", {"source": "falco_http", "reason": reason}
        )

    assert (rejected("bad_request"), rejected("server_error")) == (1, 2)
