"""The kube-apiserver audit webhook backend: ``POST <path>`` of ``EventList``.

The API server sends each batch from its own goroutine and retries any
non-2xx answer (and timeouts) for minutes, so batches arrive concurrently,
out of order and more than once.  Hence:

* events are deduplicated on ``(auditID, stage)`` over
  ``dedup_window_seconds``, whatever order they come in;
* a batch is answered ``200`` only once the pipeline took it, and ``503``
  with ``Retry-After`` when the pipeline is full;
* events of a refused batch are *not* remembered as seen, otherwise the
  retry the 503 asks for would be dropped as a duplicate.  Checking,
  offering and (on refusal) forgetting happen without an ``await`` in
  between, so concurrent requests on the event loop cannot interleave there.

Beyond ``EventList`` a single ``Event`` or a JSON array of either is
accepted (both API versions, ``audit.k8s.io/v1`` and ``v1beta1``).  Events
that fail on their own are counted and skipped; a body that is not audit
data at all gets 400.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from eventd.config import AuditWebhookConfig
from eventd.events.audit import audit_events
from eventd.events.dedup import RecentKeys, audit_key, drop_duplicates
from eventd.events.errors import DecodeError
from eventd.events.model import Event
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


class AuditWebhookSource(HttpInput):
    name = "k8s_audit_webhook"

    def __init__(self, config: AuditWebhookConfig, metrics: Metrics) -> None:
        super().__init__(config, metrics)
        self._recent = RecentKeys(config.dedup_window_seconds)
        self._duplicates = metrics.events_dropped.labels(self.name, "duplicate")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", self.config.path, self.post_json(self._accept))

    async def _accept(self, document: Any, inlet: Inlet) -> web.Response:
        try:
            events, errors = audit_events(document, origin="webhook")
        except DecodeError as err:
            raise Rejected(400, err.reason, str(err)) from None
        kept, duplicates = drop_duplicates(events, self._recent)
        batch = Batch(kept, self.name, done=asyncio.get_running_loop().create_future())
        if kept and not inlet.offer(batch):
            self._forget(kept)
            raise busy()
        # Counted only now: a refused batch comes again and would count twice.
        if duplicates:
            self._duplicates.inc(duplicates)
        count_rejected(inlet, self.name, errors)
        if kept:
            try:
                await delivered(batch)
            except Rejected as err:
                if err.reason == "failed":  # not processed: the retry must not look like a repeat
                    self._forget(kept)
                raise
        return json_response({"accepted": len(kept), "duplicates": duplicates, "rejected": len(errors)})

    def _forget(self, events: list[Event]) -> None:
        for event in events:
            key = audit_key(event)
            if key is not None:
                self._recent.forget(key)
