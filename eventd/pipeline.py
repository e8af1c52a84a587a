"""The middle of the daemon: a bounded queue, the matcher, the fan-out.

Sources put ``Batch``es into one bounded queue; a single consumer task takes
them in order, matches every event against the current rule set (plain
synchronous CPU work) and hands each alert to every sink.  Only then is the
batch's ``done`` future resolved, which is what lets inputs acknowledge
upstream (Kafka offsets, the tailer's checkpoint) without ever losing data.

The rule set is swapped between batches (``swap_matcher``): a batch is
matched entirely against one rule set, never a half-loaded one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import structlog

from eventd.alerts import Alert, build_alert, falco_passthrough_alert
from eventd.engine.matcher import Matcher
from eventd.events.errors import DecodeError
from eventd.events.model import FALCO
from eventd.image_metrics import ImagePullCounter
from eventd.metrics import Metrics
from eventd.sinks.base import Sink
from eventd.sources.base import Batch

log = structlog.get_logger(__name__)


class Pipeline:
    """Implements the sources' ``Inlet``; ``run`` is the consumer task."""

    def __init__(
        self,
        matcher: Matcher,
        sinks: Sequence[Sink],
        metrics: Metrics,
        *,
        queue_size: int = 256,
        hostname: str = "",
        cluster: str = "",
        trusted_registries: Sequence[str] = (),
    ) -> None:
        self.matcher = matcher
        self.image_pulls = ImagePullCounter(metrics, trusted_registries)
        self.sinks = tuple(sinks)
        self.metrics = metrics
        self.hostname = hostname
        self.cluster = cluster
        self._queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=queue_size)
        self._closing = False

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------------ inlet

    async def put(self, batch: Batch) -> None:
        await self._queue.put(batch)
        self.metrics.queue_depth.set(self._queue.qsize())

    def offer(self, batch: Batch) -> bool:
        if self._closing:
            return False
        try:
            self._queue.put_nowait(batch)
        except asyncio.QueueFull:
            return False
        self.metrics.queue_depth.set(self._queue.qsize())
        return True

    def rejected(self, source: str, error: DecodeError | str, count: int = 1) -> None:
        reason = error.reason if isinstance(error, DecodeError) else error
        self.metrics.events_rejected.labels(source, reason).inc(count)

    # --------------------------------------------------------------- consumer

    def swap_matcher(self, matcher: Matcher) -> None:
        """Use ``matcher`` from the next batch on."""
        self.matcher = matcher
        self.metrics.rules_loaded.set(len(matcher.ruleset.rules))

    async def run(self) -> None:
        """Consume batches until cancelled (``drain`` first for a clean stop)."""
        while True:
            batch = await self._queue.get()
            try:
                await self._process(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a sink bug must not stop the pipeline
                log.exception("batch_failed", source=batch.source, events=len(batch.events))
                if batch.done is not None and not batch.done.done():
                    batch.done.set_exception(RuntimeError("batch processing failed"))
            finally:
                self._queue.task_done()
                self.metrics.queue_depth.set(self._queue.qsize())

    async def drain(self) -> None:
        """Refuse new offers and wait until every queued batch is processed."""
        self._closing = True
        await self._queue.join()

    async def _process(self, batch: Batch) -> None:
        started = time.perf_counter()
        matcher = self.matcher  # one rule set for the whole batch
        alerts = self._match(batch, matcher)
        for alert in alerts:
            if self.cluster:
                alert.context["cluster"] = self.cluster
            for sink in self.sinks:
                await sink.send(alert)
        if batch.done is not None and not batch.done.done():
            batch.done.set_result(None)
        self.metrics.match_latency.observe(time.perf_counter() - started)

    def _match(self, batch: Batch, matcher: Matcher) -> list[Alert]:
        metrics = self.metrics
        alerts: list[Alert] = []
        matched_events = 0
        for event in batch.events:
            self.image_pulls.observe(event)
            if event.source == FALCO:
                # Falco alerts are alerts already: forward them, enriched.  Their
                # rule names come from the sender, so the label is capped.
                passed = falco_passthrough_alert(event)
                rule = metrics.capped("falco_rule", passed.rule)
                source = metrics.capped("falco_source", passed.source)
                metrics.alerts.labels(rule, passed.priority.label, source).inc()
                alerts.append(passed)
            rules = matcher.match(event)
            if rules:
                matched_events += 1
                for rule in rules:
                    alert = build_alert(rule, event, self.hostname)
                    metrics.alerts.labels(rule.name, rule.priority.label, rule.source).inc()
                    alerts.append(alert)
        metrics.events_received.labels(batch.source).inc(len(batch.events))
        if matched_events:
            metrics.events_matched.labels(batch.source).inc(matched_events)
        return alerts
