"""Audit events and Falco alerts from Kafka topics, delivered at least once.

eventd replicas sharing a ``group_id`` share the topics' partitions.  Each
message is one JSON document: audit data (Event, EventList, array, or a
GKE/AKS record) or a Falco alert.  A message that is none of these is
counted as rejected and its offset still counts as processed, so one poison
message never blocks its partition.

Offsets are committed only once the alerts of a batch are acknowledged by
their destination (the pipeline resolves the batch's ``done`` with
``until_delivered``: the Kafka sink's broker ack, not merely its local
spool), per partition and in fetch order.  A replica that dies for good,
its spool with it, has therefore committed nothing it had not delivered:
the group re-reads the rest (at-least-once; duplicates keep their
``uuid``).  A batch the pipeline could not make safe is never committed:
the session restarts from the last commit and reads it again.  Before the
group takes partitions away (a replica joins or leaves), in-flight batches
are waited for (bounded) and what was delivered is committed, so the next
owner starts where this one stopped; on ``stop`` the same happens within
``drain_timeout_seconds``.  Backpressure is plain: ``inlet.put`` waits, so
fetching waits.

aiokafka reconnects to brokers by itself.  The source watches whether
fetches still come back to report ``source_up`` and count reconnects, and
rebuilds the consumer, with backoff, when a session fails outright (brokers
unreachable at start-up, a batch abandoned).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from eventd.backoff import Backoff
from eventd.checks import client_tls_files, kafka_topic
from eventd.config import ConfigError, KafkaSourceConfig
from eventd.events.decode import decode_document
from eventd.events.errors import DecodeError
from eventd.events.model import Event
from eventd.kafka_client import ConsumedOffsets, client_options
from eventd.metrics import Metrics
from eventd.sources.base import Batch, Inlet, Source, record_filter

log = structlog.get_logger(__name__)

#: How long one fetch waits for records; also how quickly ``stop`` is noticed.
POLL_MS = 250
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
#: Bounds on shutdown work that needs the brokers (which may be gone).
COMMIT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 10.0


class BatchAbandoned(Exception):
    """A batch's ``done`` was cancelled or failed: its alerts are not safe, so
    its offsets must not be committed; the session restarts from the last
    commit."""


class OffsetTracker:
    """Batches in flight, in fetch order, and the offsets safe to commit.

    A batch's offsets become committable only once it and every batch
    fetched before it are done, so a commit never passes an unprocessed
    message.  A batch that failed in the pipeline (its alerts could not be
    made safe) stops the line: ``settle`` raises ``BatchAbandoned`` and the
    session starts over from the last commit.
    """

    def __init__(self) -> None:
        self._inflight: deque[tuple[asyncio.Future[None], dict[TopicPartition, int]]] = deque()
        #: Next offset to read, per partition, covering every finished batch.
        self.processed: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        #: Set whenever a batch finishes: the committer's cue.
        self.wakeup = asyncio.Event()

    def add(self, offsets: dict[TopicPartition, int]) -> asyncio.Future[None]:
        """Register a batch ending before ``offsets``; returns its ``done``."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(lambda _: self.wakeup.set())
        self._inflight.append((done, offsets))
        return done

    def inflight(self) -> list[asyncio.Future[None]]:
        return [done for done, _ in self._inflight]

    def settle(self) -> None:
        """Fold finished batches at the head of the line into ``processed``."""
        while self._inflight and self._inflight[0][0].done():
            done, offsets = self._inflight[0]
            if done.cancelled():
                raise BatchAbandoned("a batch was cancelled before its events were processed")
            if done.exception() is not None:
                raise BatchAbandoned(f"a batch's alerts could not be made safe: {done.exception()}")
            self._inflight.popleft()
            self.processed.update(offsets)

    def uncommitted(self, assigned: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        """Processed offsets not committed yet, for partitions this member owns."""
        committed = self.committed
        return {
            tp: offset
            for tp, offset in self.processed.items()
            if tp in assigned and committed.get(tp) != offset
        }

    def reset(self) -> None:
        """Forget everything after a rebalance: batches fetched before it are
        never committed by this member (the next owner re-reads them)."""
        self._inflight = deque()
        self.processed.clear()
        self.committed.clear()


class KafkaSource(Source):
    """One consumer-group member reading ``topics``."""

    config_key = "sources.kafka"

    def __init__(self, config: KafkaSourceConfig, metrics: Metrics) -> None:
        self.config = config
        self._metrics = metrics
        self._key = self.config_key
        if not config.topics:
            raise ConfigError(f"{self._key}.topics", "at least one topic is required")
        for i, topic in enumerate(config.topics):
            kafka_topic(topic, f"{self._key}.topics[{i}]")
        if config.session_timeout_seconds < 1:
            raise ConfigError(f"{self._key}.session_timeout_seconds", "must be at least 1 second")
        client_tls_files(config.tls, f"{self._key}.tls")
        # Fails fast on a bad TLS/SASL config.
        client_options(config.bootstrap_servers, config.tls, config.sasl, key=self._key, metrics=metrics)
        self._session_ms = int(config.session_timeout_seconds * 1000)
        self._tracker = OffsetTracker()
        #: Consumer sessions and rebalances so far (``ConsumedOffsets.generation``).
        self._generation = 0
        self._commit_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False
        self._up = False
        self._rebalancing = False
        self._polling_since = time.monotonic()
        self._assigned: frozenset[TopicPartition] = frozenset()

    @property
    def assigned(self) -> frozenset[TopicPartition]:
        """The partitions this member currently owns (diagnostics)."""
        return self._assigned

    def ready(self) -> bool:
        return self._up

    # ---------------------------------------------------------------- Source

    async def run(self, inlet: Inlet) -> None:
        self._running = True
        self._finished.clear()
        reconnects = self._metrics.source_reconnects.labels(self.name)
        #: The session retry backoff of this ``run`` (tests read its failures).
        self._backoff = backoff = Backoff(BACKOFF_INITIAL, BACKOFF_MAX)
        try:
            while not self._stopping.is_set():
                healthy = await self._session(inlet)
                if self._stopping.is_set():
                    break
                reconnects.inc()
                if healthy:
                    backoff.reset()
                delay = backoff.next_delay()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            self._set_up(False)
            self._running = False
            self._finished.set()

    async def stop(self) -> None:
        """Stop fetching, wait for in-flight batches, commit, leave the group."""
        self._stopping.set()
        if self._running:
            await self._finished.wait()

    # -------------------------------------------------------------- sessions

    async def _session(self, inlet: Inlet) -> bool:
        """One consumer's life; True if it connected (resets the backoff).

        ``ConfigError`` (unreadable password or certificate files) escapes:
        retrying would not help, the daemon reports it.  Anything else is
        logged and retried.
        """
        config = self.config
        consumer = self._new_consumer()
        consumer.subscribe(list(config.topics), listener=_Rebalance(self, consumer))
        self._tracker.reset()
        self._generation += 1  # exactly-once: a fresh start after a failed transaction
        committer: asyncio.Task[None] | None = None
        started = False
        try:
            if not await self._start(consumer):
                return True  # stopped before the brokers answered
            started = True
            log.info("kafka_consumer_started", group=config.group_id, topics=len(config.topics))
            self._set_up(True)
            self._polling_since = time.monotonic()
            committer = asyncio.create_task(self._commit_loop(consumer), name=f"{self.name}-commit")
            await self._consume(consumer, inlet, committer)
            return True
        except Exception as err:  # whatever it was, retry: a source never gives up
            expected = isinstance(err, KafkaError | OSError | BatchAbandoned)
            log.warning(
                "kafka_session_failed", error=str(err), error_type=type(err).__name__, exc_info=not expected
            )
            return started
        finally:
            try:
                if committer is not None:
                    committer.cancel()
                    await asyncio.gather(committer, return_exceptions=True)
                if started and self._stopping.is_set() and not _being_cancelled():
                    await self._drain(consumer)
            finally:  # even when the daemon's grace ends the drain: leave the group, close
                self._set_up(False)
                self._assigned = frozenset()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(consumer.stop(), CLOSE_TIMEOUT)

    def _consumer_options(self) -> dict[str, Any]:
        """The consumer's settings: offsets are committed by the source alone,
        never automatically (that could pass an undelivered message)."""
        config = self.config
        return {
            **client_options(
                config.bootstrap_servers, config.tls, config.sasl, key=self._key, metrics=self._metrics
            ),
            "group_id": config.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": config.auto_offset_reset,
            "session_timeout_ms": self._session_ms,
            "heartbeat_interval_ms": heartbeat_ms(self._session_ms),
        }

    def _new_consumer(self) -> AIOKafkaConsumer:
        """One session's consumer (the seam the in-process tests replace)."""
        return AIOKafkaConsumer(**self._consumer_options())

    async def _start(self, consumer: AIOKafkaConsumer) -> bool:
        """Connect and join; False if ``stop`` came first (silent brokers can
        keep ``start`` waiting for the whole request timeout)."""
        start = asyncio.create_task(consumer.start())
        stopped = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not start.done():
                start.cancel()
                await asyncio.gather(start, return_exceptions=True)
        if start.cancelled():
            return False
        start.result()
        return True

    async def _consume(self, consumer: AIOKafkaConsumer, inlet: Inlet, committer: asyncio.Task[None]) -> None:
        name = self.name
        max_batch = self.config.max_batch
        while not self._stopping.is_set():
            if committer.done():
                committer.result()  # re-raises what ended it (an abandoned batch)
                raise BatchAbandoned("offset committer stopped")
            records = await consumer.getmany(timeout_ms=POLL_MS, max_records=max_batch)
            self._watch(consumer)
            if not records:
                continue
            events: list[Event] = []
            offsets: dict[TopicPartition, int] = {}
            size = skipped = 0
            prefilter = record_filter(inlet)  # one rule set for the whole batch
            skippable = None if prefilter is None else prefilter.skippable
            for tp, messages in records.items():
                offsets[tp] = messages[-1].offset + 1
                for message in messages:
                    value = message.value
                    if value and skippable is not None and skippable(value):
                        skipped += 1  # no rule can match it: its offset is processed as is
                        continue
                    size += len(value or b"")
                    self._decode(value, events, inlet)
            if prefilter is not None:
                prefilter.skipped(name, skipped)
            done = self._tracker.add(offsets)
            consumed = None
            if self.config.exactly_once:  # the sink's transaction commits these offsets
                consumed = ConsumedOffsets(
                    self.config.group_id, dict(offsets), self._generation, self._still(self._generation)
                )
            if events or consumed is not None:
                batch = Batch(events, name, done, until_delivered=True, consumed=consumed, size=size)
                batch.prefiltered_with = None if prefilter is None else prefilter.matcher
                await inlet.put(batch)
                self._polling_since = time.monotonic()
            else:  # nothing usable: the offsets are processed as they are
                done.set_result(None)

    def _still(self, generation: int) -> Callable[[], bool]:
        """Whether the source is still in ``generation`` (no restart, no rebalance since)."""
        return lambda: self._generation == generation

    def _decode(self, value: bytes | None, events: list[Event], inlet: Inlet) -> None:
        if not value:
            inlet.rejected(self.name, "empty")
            return
        try:
            decoded, errors = decode_document(value, origin="kafka")
        except DecodeError as err:
            log.debug("kafka_message_rejected", reason=err.reason, size=len(value))
            inlet.rejected(self.name, err)
            return
        events.extend(decoded)
        for error in errors:
            inlet.rejected(self.name, error)

    # --------------------------------------------------------------- offsets

    async def _commit_loop(self, consumer: AIOKafkaConsumer) -> None:
        wakeup = self._tracker.wakeup
        while True:
            await wakeup.wait()
            wakeup.clear()
            await self._commit(consumer)

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        """Commit what is processed; aiokafka retries while brokers are away."""
        async with self._commit_lock:
            stopped: BatchAbandoned | None = None
            try:
                self._tracker.settle()
            except BatchAbandoned as err:
                stopped = err  # what was done before the failed batch is still committed
            offsets = self._tracker.uncommitted(consumer.assignment())
            if self.config.exactly_once:
                # Committed already, by the transactions that produced the alerts.
                self._tracker.committed.update(offsets)
                offsets = {}
            if not offsets:
                if stopped is not None:
                    raise stopped
                return
            try:
                await consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as err:
                # The group moved on: the new owner re-reads from the last commit.
                log.info("kafka_commit_refused", reason=str(err), partitions=len(offsets))
                return
            except KafkaError as err:
                log.warning("kafka_commit_failed", error=str(err), partitions=len(offsets))
                return
            self._tracker.committed.update(offsets)
            if stopped is not None:
                raise stopped

    async def _hand_back(self, consumer: AIOKafkaConsumer, revoked: Collection[TopicPartition]) -> None:
        """Before partitions go: finish their batches and commit (bounded by the
        rebalance timeout, after which the group would move on without us)."""
        self._rebalancing = True
        if revoked:
            budget = revoke_budget(self._session_ms)
            busy = self._tracker.inflight()
            if busy:
                _, pending = await asyncio.wait(busy, timeout=budget)
                if pending:
                    log.warning("kafka_revoke_batches_unfinished", batches=len(pending))
            try:
                await asyncio.wait_for(self._commit(consumer), budget)
            except (TimeoutError, BatchAbandoned) as err:
                log.warning("kafka_revoke_commit_skipped", reason=str(err) or type(err).__name__)
        self._tracker.reset()
        self._generation += 1  # transactions queued for the old assignment are refused
        self._assigned = frozenset()
        log.info("kafka_partitions_revoked", partitions=len(revoked))

    def _on_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self._assigned = frozenset(assigned)
        self._rebalancing = False
        self._polling_since = time.monotonic()
        log.info("kafka_partitions_assigned", partitions=len(assigned))

    async def _drain(self, consumer: AIOKafkaConsumer) -> None:
        """On stop: wait (bounded) for in-flight batches, then commit what was
        delivered; the rest is re-read by the group."""
        busy = self._tracker.inflight()
        if busy:
            _, pending = await asyncio.wait(busy, timeout=self.config.drain_timeout_seconds)
            if pending:
                log.warning("kafka_stop_batches_undelivered", batches=len(pending))
        try:
            await asyncio.wait_for(self._commit(consumer), COMMIT_TIMEOUT)
        except (TimeoutError, BatchAbandoned) as err:
            log.warning("kafka_final_commit_failed", reason=str(err) or type(err).__name__)

    # ------------------------------------------------------------ liveness

    def _watch(self, consumer: AIOKafkaConsumer) -> None:
        """Brokers count as reachable while fetches come back.

        aiokafka refreshes a partition's poll time on every fetch response,
        at least every fetch wait (0.5 s).  Only judged while this member
        owns partitions, is not rebalancing and has been fetching (not
        waiting on the pipeline) for a whole session timeout.
        """
        assigned = consumer.assignment()
        if not assigned or self._rebalancing:
            return
        newest = max(consumer.last_poll_timestamp(tp) or 0 for tp in assigned)
        up = brokers_up(
            self._up,
            poll_age_ms=time.time() * 1000 - newest,
            fetching_ms=(time.monotonic() - self._polling_since) * 1000,
            session_ms=self._session_ms,
        )
        if up and not self._up:
            self._metrics.source_reconnects.labels(self.name).inc()
            log.info("kafka_brokers_reachable_again")
            self._set_up(True)
        elif not up and self._up:
            log.warning("kafka_brokers_unreachable", group=self.config.group_id)
            self._set_up(False)

    def _set_up(self, up: bool) -> None:
        self._up = up
        self._metrics.source_up.labels(self.name).set(1 if up else 0)


def heartbeat_ms(session_ms: int) -> int:
    """The group heartbeat: a third of the session (the usual ratio, so two
    lost heartbeats do not cost the partitions), within 0.1 to 3 s."""
    return max(100, min(3000, session_ms // 3))


def revoke_budget(session_ms: int) -> float:
    """Seconds a revoke may spend finishing batches, and again committing:
    half the session, so the group does not move on without this member."""
    return session_ms / 1000 / 2


def brokers_up(up: bool, *, poll_age_ms: float, fetching_ms: float, session_ms: int) -> bool:
    """Whether ``source_up`` should say the brokers are reachable.

    ``poll_age_ms``: since the newest fetch response of an owned partition;
    ``fetching_ms``: since the source last waited on the pipeline (or was
    assigned partitions).  Up again as soon as a fetch is fresh; down only
    when none came back for a session timeout *and* the source has been
    fetching for that long (a full pipeline stops fetches, not brokers).
    """
    if poll_age_ms < session_ms:
        return True
    if up and fetching_ms > session_ms:
        return False
    return up


def _being_cancelled() -> bool:
    """True while the current task is being cancelled (the daemon's grace ran
    out): then nothing may wait for the pipeline any more."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _Rebalance(ConsumerRebalanceListener):
    """aiokafka calls these around every group rebalance."""

    def __init__(self, source: KafkaSource, consumer: AIOKafkaConsumer) -> None:
        self._source = source
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        await self._source._hand_back(self._consumer, revoked)

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self._source._on_assigned(assigned)
