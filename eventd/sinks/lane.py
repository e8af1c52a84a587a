"""One sink's own queue and tasks: what keeps sinks from holding each other up.

falcosidekick sends every alert to every output inline; one slow output
slows them all.  Here the pipeline only ever puts alerts into a sink's
``SinkLane``; the lane's tasks call the sink.  A lane is bounded in alerts
*and* in bytes (``sinks.<sink>.buffer``), and what happens when it is full
depends on the sink (``Sink.durable``):

* **best-effort** sinks (stdout, Slack, Alertmanager, webhook): ``offer``
  never waits; past either bound the *oldest* queued alerts are dropped and
  counted (``eventd_sink_dropped_total{reason="queue_full"}``).  A dead
  receiver, a pipe nobody reads or a stdout that was closed costs that
  sink's alerts and nothing else.
* **durable** sinks (Kafka with its spool, the alert file): ``submit``
  waits for room, which is how a full spool or disk pushes back on the
  inputs, and returns a future that resolves once the sink accepted the
  alerts (and, on request, once the destination acknowledged them).  The
  pipeline resolves a batch only when every durable lane did, so input is
  acknowledged only for alerts that are safe.

Each lane also watches its sink's health once a second
(``eventd_sink_up``), and probes an unhealthy destination while idle, so
health recovers when the destination does, not when the next alert happens
to get through.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from eventd.alerts import Alert
from eventd.config import BufferConfig
from eventd.metrics import Metrics
from eventd.sinks.base import Sink
from eventd.wakeup import Changed

if TYPE_CHECKING:
    from eventd.kafka_client import ConsumedOffsets

log = structlog.get_logger(__name__)

#: How often a lane publishes its sink's health.
HEALTH_INTERVAL = 1.0
#: An unhealthy, idle sink is probed every this many health checks (5 s).
PROBE_EVERY = 5
#: One probe may take this long.
PROBE_TIMEOUT = 5.0


class LaneClosed(Exception):
    """The lane was closed before the sink accepted these alerts."""


@dataclass(slots=True)
class _Item:
    alerts: list[Alert]
    size: int
    #: Durable lanes: resolved once the sink accepted (or delivered) ``alerts``.
    done: asyncio.Future[None] | None = None
    until_delivered: bool = False
    #: Exactly-once: commit these input offsets with the alerts.
    consumed: ConsumedOffsets | None = None


class SinkLane:
    """A sink's bounded queue and the tasks that drain it."""

    def __init__(self, sink: Sink, metrics: Metrics, buffer: BufferConfig | None = None) -> None:
        buffer = buffer or sink.buffer
        self.sink = sink
        self.name = sink.name
        self.durable = sink.durable
        self.max_alerts = buffer.max_alerts
        self.max_bytes = buffer.max_bytes
        self._queue: deque[_Item] = deque()
        self._alerts = 0
        self._bytes = 0
        self._busy = 0  # items taken by a task and not finished
        self._changed = Changed()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._checks_since_probe = 0
        self._m_dropped = metrics.sink_dropped
        self._m_depth = metrics.sink_queue_depth.labels(self.name)
        self._m_bytes = metrics.sink_queue_bytes.labels(self.name)
        self._m_up = metrics.sink_up.labels(self.name)
        self._m_up.set(1)

    # ------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the lane's tasks (the sink itself is started by the daemon)."""
        if self._tasks:
            return
        workers = 1 if self.durable else max(1, self.sink.concurrency)  # durable: in order
        self._tasks = [
            asyncio.create_task(self._work(), name=f"sink-{self.name}-{i}") for i in range(workers)
        ]
        self._tasks.append(asyncio.create_task(self._watch_health(), name=f"sink-{self.name}-health"))

    async def drain(self) -> None:
        """Take no more alerts; return once every queued one went to the sink."""
        self._closing = True
        self._notify()
        await self._wait(lambda: not self._queue and not self._busy)

    async def stop(self) -> int:
        """Stop the tasks; what is still queued is dropped (counted as
        ``shutdown``), and durable waiters fail.  Returns that count."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        left = sum(len(item.alerts) for item in self._queue)
        if left:
            self._m_dropped.labels(self.name, "shutdown").inc(left)
            log.error("sink_undelivered_at_shutdown", sink=self.name, alerts=left)
        for item in self._queue:
            _fail(item, LaneClosed(f"sink {self.name} closed"))
        self._queue.clear()
        self._alerts = self._bytes = 0
        self._publish()
        return left

    # ----------------------------------------------------------- pipeline side

    def select(self, alerts: Sequence[Alert]) -> list[Alert]:
        """The alerts this sink's filters take (checked before queueing, so a
        filtered alert never takes queue space)."""
        accepts = self.sink.accepts
        return [alert for alert in alerts if accepts(alert)]

    def offer(self, alerts: list[Alert]) -> None:
        """Best-effort lanes: queue ``alerts``, dropping the oldest past the bounds."""
        for alert in alerts:
            size = len(alert.to_json())
            self._queue.append(_Item([alert], size))
            self._alerts += 1
            self._bytes += size
        dropped = 0
        while len(self._queue) > 1 and (self._alerts > self.max_alerts or self._bytes > self.max_bytes):
            oldest = self._queue.popleft()
            self._alerts -= len(oldest.alerts)
            self._bytes -= oldest.size
            dropped += len(oldest.alerts)
        if dropped:
            self._m_dropped.labels(self.name, "queue_full").inc(dropped)
        self._publish()
        self._notify()

    async def submit(
        self, alerts: list[Alert], *, until_delivered: bool = False, consumed: ConsumedOffsets | None = None
    ) -> asyncio.Future[None]:
        """Durable lanes: wait for room, queue ``alerts``; the future resolves
        once the sink accepted them (``until_delivered``: once the destination
        acknowledged them; ``consumed``: once they and these input offsets are
        committed in one transaction) and fails if the lane closes first."""
        size = sum(len(alert.to_json()) for alert in alerts)
        # An item larger than the bounds still goes in once the queue is empty.
        await self._wait(
            lambda: (
                self._closing
                or not self._queue
                or (self._alerts + len(alerts) <= self.max_alerts and self._bytes + size <= self.max_bytes)
            )
        )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        item = _Item(alerts, size, done, until_delivered, consumed)
        if self._closing:
            _fail(item, LaneClosed(f"sink {self.name} is closing"))
            return done
        self._queue.append(item)
        self._alerts += len(alerts)
        self._bytes += size
        self._publish()
        self._notify()
        return done

    def accepting(self) -> bool:
        """Whether a durable sink can take input now (``/readyz``)."""
        return not self._closing and self.sink.accepting()

    def health(self) -> dict[str, object]:
        """Detail for ``/healthz``."""
        return {
            "up": self.sink.healthy(),
            "durable": self.durable,
            "accepting": self.accepting(),
            "queued_alerts": self._alerts,
            "queued_bytes": self._bytes,
        }

    # ------------------------------------------------------------------ tasks

    async def _work(self) -> None:
        while True:
            await self._wait(lambda: bool(self._queue))
            items = self._take()
            self._busy += 1
            try:
                await self._deliver(items)
            finally:
                self._busy -= 1
                self._notify()

    def _take(self) -> list[_Item]:
        """The next item (durable), or up to the sink's ``max_call`` queued alerts."""
        queue = self._queue
        items = [queue.popleft()]
        if not self.durable:
            limit = self.sink.max_call
            while queue and len(items) < limit:
                items.append(queue.popleft())
        for item in items:
            self._alerts -= len(item.alerts)
            self._bytes -= item.size
        self._publish()
        self._notify()  # room for a waiting ``submit``
        return items

    async def _deliver(self, items: list[_Item]) -> None:
        alerts = [alert for item in items for alert in item.alerts]
        consumed = items[0].consumed  # durable lanes take one item at a time
        try:
            if consumed is not None:
                await self.sink.send_transaction(alerts, consumed)
                receipt = None  # committed: delivered
            else:
                receipt = await self.sink.send_many(alerts)
        except asyncio.CancelledError:
            if not self.durable:  # durable items fail instead: their inputs send them again
                self._m_dropped.labels(self.name, "shutdown").inc(len(alerts))
            for item in items:
                _fail(item, LaneClosed(f"sink {self.name} closed"))
            raise
        except Exception as err:  # a sink bug must not end the lane
            log.error("sink_failed", sink=self.name, alerts=len(alerts), error_type=type(err).__name__)
            if not self.durable:
                self._m_dropped.labels(self.name, "internal_error").inc(len(alerts))
            for item in items:
                _fail(item, err)
            return
        for item in items:
            if item.done is None:
                continue
            if item.until_delivered and receipt is not None:
                _chain(receipt, item.done)
            elif not item.done.done():
                item.done.set_result(None)

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL)
            if self._health_check():
                await self._probe()

    def _health_check(self) -> bool:
        """Publish the sink's health; True when a probe is due now.

        Counted in checks, not seconds, so the schedule is tested without a
        clock: an unhealthy sink with nothing to send is probed at every
        ``PROBE_EVERY``-th check (a busy one is judged by its deliveries).
        """
        healthy = self.sink.healthy()
        self._m_up.set(1 if healthy else 0)
        self._checks_since_probe += 1
        if healthy or self._queue or self._busy or self._checks_since_probe < PROBE_EVERY:
            return False
        self._checks_since_probe = 0
        return True

    async def _probe(self) -> None:
        """One probe, bounded by ``PROBE_TIMEOUT``; a failure leaves the sink down."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await self.sink.probe()
        except Exception as err:
            log.debug("sink_probe_failed", sink=self.name, error_type=type(err).__name__)

    # ---------------------------------------------------------------- helpers

    async def _wait(self, predicate: Callable[[], bool]) -> None:
        await self._changed.wait_for(predicate)

    def _notify(self) -> None:
        self._changed.notify()

    def _publish(self) -> None:
        self._m_depth.set(self._alerts)
        self._m_bytes.set(self._bytes)


def _fail(item: _Item, err: BaseException) -> None:
    if item.done is not None and not item.done.done():
        item.done.set_exception(err)
        item.done.exception()  # retrieved: nobody may be waiting any more


def _chain(source: asyncio.Future[None], target: asyncio.Future[None]) -> None:
    def copy(src: asyncio.Future[None]) -> None:
        if target.done():
            return
        if src.cancelled():
            target.set_exception(LaneClosed("delivery abandoned"))
            target.exception()
        elif (err := src.exception()) is not None:
            target.set_exception(err)
            target.exception()
        else:
            target.set_result(None)

    source.add_done_callback(copy)
