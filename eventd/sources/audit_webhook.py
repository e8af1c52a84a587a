"""The kube-apiserver audit webhook backend: ``POST <path>`` of ``EventList``.

The API server sends each batch from its own goroutine and retries any
non-2xx answer (and timeouts) for minutes, so batches arrive concurrently,
out of order and more than once.  Hence:

* events are deduplicated on ``(auditID, stage)`` over
  ``dedup_window_seconds``, whatever order they come in;
* a batch is answered ``200`` only once its alerts are safe (every durable
  sink accepted them; see ``sources/base.py``), ``503`` with
  ``Retry-After`` when the pipeline is full or that takes too long;
* an event counts as seen (a later copy is a duplicate) only once its
  batch is done: while the batch is in flight its identities are claimed,
  and a batch that fails or times out releases them, so the retry the 503
  asks for is processed, not dropped as a duplicate of alerts that were
  never made safe.  A copy arriving while the first is still in flight is
  processed too (at-least-once; its alerts carry the same ``uuid``).
  Checking and offering happen without an ``await`` in between, so
  concurrent requests on the event loop cannot interleave there.
* ``EventList`` items that no rule can match and no observer needs (most
  of them: lease renewals, controller reads) are never decoded into
  events (``webhook_items``), but they are checked, claimed, answered and
  counted as received exactly like the rest.

Beyond ``EventList`` a single ``Event`` or a JSON array of either is
accepted (both API versions, ``audit.k8s.io/v1`` and ``v1beta1``).  Events
that fail on their own are counted and skipped; a body that is not audit
data at all gets 400.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from eventd.config import AuditWebhookConfig
from eventd.events.dedup import RecentKeys, new_items
from eventd.events.errors import DecodeError
from eventd.metrics import Metrics
from eventd.sources import http_input
from eventd.sources.base import Batch, Inlet, record_filter
from eventd.sources.http_input import (
    HttpInput,
    Rejected,
    busy,
    count_rejected,
    delivered,
    json_response,
)
from eventd.sources.webhook_items import Parsed, parse_body, webhook_items


class AuditWebhookSource(HttpInput):
    config_key = "sources.k8s_audit_webhook"

    def __init__(self, config: AuditWebhookConfig, metrics: Metrics) -> None:
        super().__init__(config, metrics)
        self._recent = RecentKeys(config.dedup_window_seconds, config.dedup_max_entries)
        self._duplicates = metrics.events_dropped.labels(self.name, "duplicate")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", self.config.path, self.post_json(self._accept))

    def parse(self, body: bytes) -> Any:
        """orjson's document, with the raw bytes of ``EventList`` items
        (``webhook_items``: those no rule needs are never decoded)."""
        return parse_body(body, super().parse(body))

    async def _accept(self, parsed: Parsed, inlet: Inlet) -> web.Response:
        """``parsed`` is what ``parse`` made of the body."""
        # One rule set for the whole batch (see ``pipeline.RecordFilter``).
        prefilter = None if parsed.raw_items is None else record_filter(inlet)
        skippable = None if prefilter is None else prefilter.skippable
        try:
            if _large(parsed.document):  # on a thread: the event loop keeps serving meanwhile
                items, errors = await asyncio.to_thread(webhook_items, parsed, skippable)
            else:
                items, errors = webhook_items(parsed, skippable)
        except DecodeError as err:
            raise Rejected(400, err.reason, str(err)) from None
        parsed.raw_items = None  # they hold the whole body: let it go now
        loop = asyncio.get_running_loop()
        budget = AnswerBudget(loop.time(), http_input.DELIVERY_TIMEOUT_SECONDS)  # read now: tests shorten it
        fresh = new_items(items, self._recent, wait=True)
        while fresh.in_flight and (left := budget.waiting_left(loop.time())) > 0:
            # Copies of events another request is delivering: their fate decides.
            await asyncio.wait(fresh.in_flight, timeout=left)
            fresh = new_items(items, self._recent, wait=True)
        if fresh.in_flight:
            fresh = new_items(items, self._recent, wait=False)
        kept, keys, duplicates, accepted = fresh.events, fresh.keys, fresh.duplicates, fresh.accepted
        # A batch whose new items were all skipped is offered too (empty): it
        # is refused, claimed and answered exactly as if they were decoded.
        batch = Batch(kept, self.name, done=loop.create_future())
        if prefilter is not None:
            batch.prefiltered_with = prefilter.matcher
        if accepted and not inlet.offer(batch):
            raise busy()
        # Counted only now: a refused batch comes again and would count twice.
        if duplicates:
            self._duplicates.inc(duplicates)
        count_rejected(inlet, self.name, errors)
        if accepted:
            if prefilter is not None:
                prefilter.skipped(self.name, fresh.undecoded)  # received, as the pipeline counts the rest
            assert batch.done is not None
            self._recent.claim(keys, batch.done)
            try:
                await delivered(batch, budget.delivery_timeout(loop.time()))
            except Rejected:
                self._recent.release(keys, batch.done)
                raise
        return json_response({"accepted": accepted, "duplicates": duplicates, "rejected": len(errors)})


@dataclass(frozen=True, slots=True)
class AnswerBudget:
    """How long one request may take before it is answered, split in two.

    The API server gives up on a request after its own timeout, so the
    answer must come within ``seconds``.  Waiting for copies in flight in
    other requests may use the first half; delivery gets at least the second
    half, plus whatever the wait left unused.  Kept apart from the request
    handler so the arithmetic is tested on numbers, not on wall-clock time.
    """

    start: float
    seconds: float

    def waiting_left(self, now: float) -> float:
        """Time still allowed, at ``now``, to wait for copies in flight (<= 0: stop)."""
        return self.start + self.seconds / 2 - now

    def delivery_timeout(self, now: float) -> float:
        """Time given, at ``now``, to the delivery of this request's batch."""
        return max(self.seconds / 2, self.start + self.seconds - now)


#: Batches with more events than this are decoded on a worker thread.
LARGE_BATCH_EVENTS = 500


def _large(document: Any) -> bool:
    items = document.get("items") if isinstance(document, dict) else document
    return isinstance(items, list) and len(items) > LARGE_BATCH_EVENTS
