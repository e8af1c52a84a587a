"""The middle of the daemon: a bounded queue, the matcher, the fan-out.

Sources put ``Batch``es into one bounded queue; a single consumer task takes
them in order and matches every event against the current rule set (plain
synchronous CPU work, in slices of at most ``MATCH_SLICE_SECONDS`` that
yield to the event loop so inputs and ``/healthz`` stay responsive during a
large batch).  Each alert then goes to
every sink's own lane (``sinks/lane.py``): best-effort lanes take it at once
(dropping their oldest alerts when full), durable lanes make the consumer
wait for room, which is how a full spool or disk pushes back on the inputs.

A batch's ``done`` future resolves once every *durable* sink accepted the
batch's alerts (with ``until_delivered``: once the destination acknowledged
them), which is what lets inputs acknowledge upstream (a webhook 200, Kafka
offsets, the tailer's checkpoint) without ever losing an alert.  Batches of
one source complete in the order they were queued, so a source never sees a
later batch done before an earlier one.  A batch that raises no alert for a
durable sink is done as soon as the batches before it are.

The rule set is swapped between batches (``swap_matcher``): a batch is
matched entirely against one rule set, never a half-loaded one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import structlog

from eventd.alerts import Alert, build_alert, falco_passthrough_alert
from eventd.engine.fields.pullsecrets import LEARNED_RESOURCES, may_learn
from eventd.engine.fields.pullsecrets import learn_from as learn_pull_secrets
from eventd.engine.index import Prefilter
from eventd.engine.matcher import Matcher
from eventd.events.errors import DecodeError
from eventd.events.model import FALCO
from eventd.image_metrics import POD_RESOURCES, ImagePullCounter, may_count
from eventd.metrics import Metrics
from eventd.sinks.base import Sink
from eventd.sinks.lane import LaneClosed, SinkLane
from eventd.sources.base import Batch
from eventd.wakeup import Changed

log = structlog.get_logger(__name__)

#: Matching yields to the event loop at least this often (seconds), so a
#: large batch against many rules never holds up inputs or ``/healthz``.
MATCH_SLICE_SECONDS = 0.01


class Pipeline:
    """Implements the sources' ``Inlet``; ``run`` is the consumer task."""

    def __init__(
        self,
        matcher: Matcher,
        sinks: Sequence[Sink],
        metrics: Metrics,
        *,
        queue_size: int = 256,
        queue_max_bytes: int = 64 * 1024 * 1024,
        hostname: str = "",
        cluster: str = "",
        trusted_registries: Sequence[str] = (),
    ) -> None:
        self.matcher = matcher
        self.image_pulls = ImagePullCounter(metrics, trusted_registries)
        self.sinks = tuple(sinks)
        self.lanes = tuple(SinkLane(sink, metrics) for sink in self.sinks)
        self.metrics = metrics
        self.hostname = hostname
        self.cluster = cluster
        self._queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=queue_size)
        #: The queue is bounded in bytes too (``Batch.size``: the input bytes).
        self._max_bytes = queue_max_bytes
        self._queued_bytes = 0
        self._dequeued = Changed()
        self._closing = False
        #: Per source: completion of the newest batch (batches complete in order).
        self._last_completion: dict[str, asyncio.Future[None]] = {}
        self._record_filter: tuple[Matcher, RecordFilter | None] | None = None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------------ inlet

    async def put(self, batch: Batch) -> None:
        await self._dequeued.wait_for(lambda: self._fits(batch))
        self._queued_bytes += batch.size
        await self._queue.put(batch)
        self.metrics.queue_depth.set(self._queue.qsize())

    def offer(self, batch: Batch) -> bool:
        """Take ``batch`` now, or refuse it: when the queue is full, or a
        durable sink cannot take alerts (a full spool or disk), so the sender
        retries later instead of waiting on a request that cannot finish."""
        if self._closing or not self.accepting() or not self._fits(batch):
            return False
        try:
            self._queue.put_nowait(batch)
        except asyncio.QueueFull:
            return False
        self._queued_bytes += batch.size
        self.metrics.queue_depth.set(self._queue.qsize())
        return True

    def _fits(self, batch: Batch) -> bool:
        """Within ``queue_max_bytes`` (a batch larger than it alone goes in
        when the queue holds no bytes)."""
        return not self._queued_bytes or self._queued_bytes + batch.size <= self._max_bytes

    def record_filter(self) -> RecordFilter | None:
        """The current rule set's filter for raw records (see ``RecordFilter``);
        None when the rules read a field no record header carries."""
        matcher = self.matcher
        cached = self._record_filter
        if cached is None or cached[0] is not matcher:
            cached = self._record_filter = (matcher, RecordFilter.build(matcher, self.metrics))
        return cached[1]

    def rejected(self, source: str, error: DecodeError | str, count: int = 1) -> None:
        reason = error.reason if isinstance(error, DecodeError) else error
        self.metrics.events_rejected.labels(source, reason).inc(count)

    # ------------------------------------------------------------------ state

    def accepting(self) -> bool:
        """Every durable sink can take alerts now (part of ``/readyz``)."""
        return all(lane.accepting() for lane in self.lanes if lane.durable)

    def sink_health(self) -> dict[str, dict[str, object]]:
        """Per-sink detail for ``/healthz``."""
        return {lane.name: lane.health() for lane in self.lanes}

    # --------------------------------------------------------------- consumer

    def swap_matcher(self, matcher: Matcher) -> None:
        """Use ``matcher`` from the next batch on."""
        self.matcher = matcher
        self.metrics.rules_loaded.set(len(matcher.ruleset.rules))

    async def run(self) -> None:
        """Consume batches until cancelled (``drain`` first for a clean stop)."""
        for lane in self.lanes:
            lane.start()
        try:
            while True:
                batch = await self._queue.get()
                self._queued_bytes -= batch.size
                self._dequeued.notify()
                try:
                    await self._process(batch)
                except asyncio.CancelledError:
                    _fail(batch, LaneClosed("eventd stopped before the batch was processed"))
                    raise
                except Exception:  # a bug must not stop the pipeline
                    log.exception("batch_failed", source=batch.source, events=len(batch.events))
                    _fail(batch, RuntimeError("batch processing failed"))
                finally:
                    self._queue.task_done()
                    self.metrics.queue_depth.set(self._queue.qsize())
        finally:
            await self.stop_lanes()

    async def stop_lanes(self) -> None:
        """Stop every lane's tasks (what is still queued is counted as dropped);
        before the sinks close, so no lane task calls a closed sink."""
        for lane in self.lanes:
            await lane.stop()

    async def drain(self, best_effort_seconds: float | None = None) -> None:
        """Refuse new offers, process every queued batch, wait until every
        durable lane handed its alerts to its sink, then give best-effort
        lanes up to ``best_effort_seconds`` (what is left then is counted as
        dropped when the consumer stops)."""
        self._closing = True
        await self._queue.join()
        # Durable lanes first: their alerts are the ones inputs acknowledged.
        for lane in self.lanes:
            if lane.durable:
                await lane.drain()
        best_effort = [asyncio.ensure_future(lane.drain()) for lane in self.lanes if not lane.durable]
        if best_effort:
            _, late = await asyncio.wait(best_effort, timeout=best_effort_seconds)
            for waiting in late:
                waiting.cancel()
            if late:
                log.warning("best_effort_sinks_not_drained", sinks=len(late))

    async def _process(self, batch: Batch) -> None:
        started = time.perf_counter()
        # One rule set for the whole batch: the one its source prefiltered it
        # with, if any (a reload in between must not judge the events the
        # source skipped and the ones it kept by two different rule sets).
        matcher = batch.prefiltered_with if isinstance(batch.prefiltered_with, Matcher) else self.matcher
        alerts = await self._match(batch, matcher)
        if self.cluster:
            for alert in alerts:
                alert.context["cluster"] = self.cluster
        waits: list[asyncio.Future[None]] = []
        for lane in self.lanes:
            chosen = lane.select(alerts) if alerts else alerts
            if batch.consumed is not None and lane.sink.transactional:
                # Exactly-once: every batch goes, alerts or not, to commit its offsets.
                waits.append(await lane.submit(chosen, until_delivered=True, consumed=batch.consumed))
            elif not chosen:
                continue
            elif lane.durable:
                waits.append(await lane.submit(chosen, until_delivered=batch.until_delivered))
            else:
                lane.offer(chosen)
        self._complete(batch, waits)
        self.metrics.match_latency.observe(time.perf_counter() - started)

    def _complete(self, batch: Batch, waits: list[asyncio.Future[None]]) -> None:
        """Resolve ``batch.done`` when ``waits`` and the source's previous batch are done."""
        previous = self._last_completion.get(batch.source)
        completion = _all_done(waits, previous)
        self._last_completion[batch.source] = completion
        done = batch.done
        if done is not None:
            completion.add_done_callback(lambda c: _copy_outcome(c, done))

    async def _match(self, batch: Batch, matcher: Matcher) -> list[Alert]:
        metrics = self.metrics
        alerts: list[Alert] = []
        matched_events = 0
        slice_ends = time.perf_counter() + MATCH_SLICE_SECONDS
        for event in batch.events:
            if time.perf_counter() > slice_ends:
                await asyncio.sleep(0)  # let inputs and the ops server run
                slice_ends = time.perf_counter() + MATCH_SLICE_SECONDS
            self.image_pulls.observe(event)
            learn_pull_secrets(event)  # ka.target.pull_secret (issue 13)
            if event.source == FALCO:
                # Falco alerts are alerts already: forward them, enriched.  Their
                # rule names come from the sender, so the label is capped.
                passed = falco_passthrough_alert(event)
                rule_label = metrics.capped("falco_rule", passed.rule)
                source_label = metrics.capped("falco_source", passed.source)
                metrics.alerts.labels(rule_label, passed.priority.label, source_label).inc()
                metrics.falco_alert(passed)  # falco-exporter's family, when on
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


#: Resources whose events ``_match`` feeds to observers other than the rules.
_OBSERVED = POD_RESOURCES | LEARNED_RESOURCES


def _observed(resource: object, subresource: object, verb: object, stage: object) -> bool:
    """Whether an event with these routing values may teach the observers
    ``_match`` runs on every event, rules or not, so it must be decoded:
    ``image_metrics`` (``may_count``) and the image-pull-secret store
    (``ka.target.pull_secret``, ``may_learn``)."""
    return may_count(resource, subresource, verb, stage) or may_learn(resource, subresource, verb, stage)


class RecordFilter:
    """Which raw records a source may drop before decoding them, for one rule set.

    A record (a Kafka message, a line of the audit log) whose header shows
    that no rule can match it, and that ``image_metrics`` would not count (a
    pod or workload write), produces nothing downstream: decoding it, with
    redaction and an ``Event`` object, is pure cost.  The verdict is the
    rule index's own (``engine.index.Prefilter``), so it changes no alert;
    Falco alerts are never dropped (the daemon forwards each one).  Dropped
    records are still counted in ``eventd_events_received_total``.

    A source asks the pipeline for the current filter once per batch, uses
    it for every record of the batch and hands it back in
    ``Batch.prefiltered_with``, so the whole batch meets one rule set even
    across a reload.
    """

    __slots__ = ("_received", "matcher", "skippable")

    def __init__(self, matcher: Matcher, prefilter: Prefilter, metrics: Metrics) -> None:
        self.matcher = matcher
        #: ``skippable(record)``: True when the record can be dropped.
        self.skippable = prefilter.skippable
        self._received = metrics.events_received

    @classmethod
    def build(cls, matcher: Matcher, metrics: Metrics) -> RecordFilter | None:
        prefilter = Prefilter.build(
            matcher.indexes, keep_resources=_OBSERVED, keep_when=_observed, keep_falco_alerts=True
        )
        return None if prefilter is None else cls(matcher, prefilter, metrics)

    def skipped(self, source: str, count: int) -> None:
        """Count ``count`` dropped records of ``source`` as received events."""
        if count:
            self._received.labels(source).inc(count)


def _all_done(
    waits: list[asyncio.Future[None]], previous: asyncio.Future[None] | None
) -> asyncio.Future[None]:
    """A future done once every one of ``waits`` and ``previous`` is; it fails
    with the first failure among ``waits`` (``previous`` only orders)."""
    completion: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    pending = [f for f in (*waits, previous) if f is not None and not f.done()]

    def finish() -> None:
        error = next((_error(w) for w in waits if _error(w) is not None), None)
        if error is None:
            completion.set_result(None)
        else:
            completion.set_exception(error)
            completion.exception()  # the batch may have nobody waiting for it

    if not pending:
        finish()
        return completion
    left = len(pending)

    def one_done(_: asyncio.Future[None]) -> None:
        nonlocal left
        left -= 1
        if not left:
            finish()

    for future in pending:
        future.add_done_callback(one_done)
    return completion


def _error(future: asyncio.Future[None]) -> BaseException | None:
    if future.cancelled():
        return LaneClosed("delivery abandoned")
    return future.exception()


def _copy_outcome(source: asyncio.Future[None], target: asyncio.Future[None]) -> None:
    if target.done():
        return
    error = _error(source)
    if error is None:
        target.set_result(None)
    else:
        target.set_exception(error)


def _fail(batch: Batch, error: BaseException) -> None:
    if batch.done is not None and not batch.done.done():
        batch.done.set_exception(error)
