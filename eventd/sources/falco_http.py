"""A falcosidekick-compatible receiver for Falco's ``http_output``.

Falco posts one JSON alert per request to ``POST <path>`` (default ``/``);
an alert that is not valid (unknown priority, empty rule, bad time...) gets
400 with the reason, as falcosidekick does.  Some shippers batch, so a body
may also be a JSON array of alerts or newline-delimited alerts (NDJSON,
``application/x-ndjson`` or plain JSON content type): in a batch, invalid
items are counted and skipped and the rest is accepted (200), so that a
sender retrying on 400 does not deliver the good alerts twice; only a batch
with no valid alert at all is refused.

Also served, as by falcosidekick (handlers.go in falcosecurity/falcosidekick):
``GET /healthz`` (``{"status": "ok"}``) and ``GET /ping`` (``pong``), both
without auth, for probes and the scripts and charts that check a
falcosidekick; and ``POST /test`` (authenticated like alerts), which injects
a synthetic Debug "Test rule" alert to check the wiring end to end.
Backpressure: 503 with ``Retry-After`` when the pipeline is full (Falco
itself drops the alert; batching shippers retry).
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import orjson
from aiohttp import web

from eventd.config import ConfigError, FalcoHttpConfig
from eventd.events.errors import DecodeError
from eventd.events.falco_json import falco_alert_event
from eventd.events.model import Event
from eventd.events.timestamps import ns_to_clock, ns_to_rfc3339
from eventd.metrics import Metrics
from eventd.sources.base import Batch, Inlet
from eventd.sources.http_input import (
    HttpInput,
    Rejected,
    busy,
    count_rejected,
    delivered,
    json_response,
)

HEALTH_PATH = "/healthz"
PING_PATH = "/ping"
TEST_PATH = "/test"
TEST_RULE = "Test rule"


class FalcoHttpSource(HttpInput):
    config_key = "sources.falco_http"
    content_types = frozenset({"application/json", "application/x-ndjson"})

    def __init__(self, config: FalcoHttpConfig, metrics: Metrics) -> None:
        super().__init__(config, metrics)
        if config.path in (HEALTH_PATH, PING_PATH, TEST_PATH):
            raise ConfigError(f"{self.config_key}.path", f"{config.path} is reserved")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(HEALTH_PATH, _healthz, allow_head=True)
        app.router.add_get(PING_PATH, _ping, allow_head=True)
        app.router.add_route("*", TEST_PATH, self.guarded(self._test))
        app.router.add_route("*", self.config.path, self.post_json(self._accept))

    def parse(self, body: bytes) -> Any:
        """One JSON document, or else NDJSON: a list with one item per line,
        a ``DecodeError`` standing in for each line that is not JSON."""
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as err:
            lines = [line for line in body.splitlines() if line.strip()]
            if len(lines) < 2:
                raise Rejected(400, "json", f"invalid JSON: {err}") from None
            return [_json_line(line) for line in lines]

    async def _accept(self, document: Any, inlet: Inlet) -> web.Response:
        if isinstance(document, dict):
            try:
                event = falco_alert_event(document, origin="falco_http")
            except DecodeError as err:
                raise Rejected(400, err.reason, str(err)) from None
            return await self._offer([event], [], inlet)
        if isinstance(document, list):
            events, errors = _decode_batch(document)
            if errors and not events:
                # The refusal itself counts the first error.
                count_rejected(inlet, self.name, errors[1:])
                raise Rejected(400, errors[0].reason, f"no valid alert in the batch: {errors[0]}")
            return await self._offer(events, errors, inlet)
        raise Rejected(400, "not_falco", "body is neither a Falco alert nor a list of alerts")

    async def _offer(self, events: list[Event], errors: list[DecodeError], inlet: Inlet) -> web.Response:
        batch = Batch(events, self.name, done=asyncio.get_running_loop().create_future())
        if events and not inlet.offer(batch):
            raise busy()
        count_rejected(inlet, self.name, errors)
        if events:
            await delivered(batch)
        return json_response({"accepted": len(events), "rejected": len(errors)})

    async def _test(self, request: web.Request) -> web.Response:
        self.authorize(request)
        if request.method != "POST":
            raise Rejected(405, "method", "only POST is accepted", {"Allow": "POST"})
        event = falco_alert_event(synthetic_alert(), origin="falco_http")
        return await self._offer([event], [], self._active_inlet())


def _json_line(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as err:
        return DecodeError("json", f"invalid JSON line: {err}")


def _decode_batch(items: list[Any]) -> tuple[list[Event], list[DecodeError]]:
    events: list[Event] = []
    errors: list[DecodeError] = []
    for item in items:
        if isinstance(item, DecodeError):
            errors.append(item)
            continue
        try:
            events.append(falco_alert_event(item, origin="falco_http"))
        except DecodeError as err:
            errors.append(err)
    return events, errors


def synthetic_alert() -> dict[str, Any]:
    """A synthetic Debug alert shaped like Falco's, stamped now."""
    now = time.time_ns()
    message = "This is a test alert from eventd"
    return {
        "time": ns_to_rfc3339(now),
        "rule": TEST_RULE,
        "priority": "Debug",
        "source": "debug",
        "hostname": socket.gethostname(),
        "output": f"{ns_to_clock(now)}: Debug {message}",
        "output_fields": {"evt.time": now, "proc.name": "eventd"},
        "tags": ["test"],
    }


async def _healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _ping(request: web.Request) -> web.Response:
    return web.Response(text="pong\n")
