"""Per-sink policy: which alerts a sink takes, and dedup with summaries.

falcosidekick filters each output only by minimum priority and forwards
every copy it receives, so one noisy workload (or one alert per node) floods
a Slack channel.  ``PolicySink`` wraps any sink and applies the sink's
section of the config before the sink sees an alert:

- filters: ``min_priority``, ``rules``, ``tags`` (any of), ``sources``;
- dedup: alerts of one rule with the same values of ``dedup.keys`` (context
  keys such as namespace, workload, images) within ``window_seconds`` are
  sent once; when the window closes, repeats are reported in ONE summary
  alert (``[repeated N more times in 300s] ...``) so the responder knows the
  scale without receiving N messages.

A window opens with the first alert sent and closes ``window_seconds`` later
(by the background task, on ``flush``, or when the next identical alert
arrives after it); the next identical alert after that is sent again and
opens a new window.  Open windows are capped in count (``dedup.max_windows``)
and in the bytes of the alerts they keep for their summaries
(``dedup.max_bytes``): past either, the oldest is closed early (its summary
sent), so a flood of distinct or huge alerts costs bounded memory.  Window
keys are fixed-size digests of the rule, source and key values, so a huge
key value costs 16 bytes, not its size.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from eventd.alerts import Alert
from eventd.config import SinkConfig
from eventd.events.timestamps import ns_to_rfc3339
from eventd.metrics import Metrics
from eventd.priority import Priority
from eventd.sinks.base import Receipt, Sink

if TYPE_CHECKING:
    from eventd.kafka_client import ConsumedOffsets

log = structlog.get_logger(__name__)

_SUMMARY_NAMESPACE = uuidlib.UUID("5c0f7b0e-2a61-4d8e-b7f4-3e9d2c1a6b58")


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(map(repr, value))
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(type(value).__name__)


def dedup_key(parts: Sequence[Any]) -> bytes:
    """A 16-byte digest of JSON-like ``parts``; mappings compare regardless of
    key order, so ``{a, b}`` and ``{b, a}`` are the same key."""
    encoded = orjson.dumps(list(parts), option=orjson.OPT_SORT_KEYS, default=_json_default)
    return hashlib.blake2b(encoded, digest_size=16).digest()


def tick_interval(window_seconds: float) -> float:
    """How often windows are checked for closing: a tenth of the window (a
    summary is at most that late), between 10 ms and 1 s."""
    return max(0.01, min(1.0, window_seconds / 10))


@dataclass(slots=True)
class _Window:
    first: Alert
    closes_at: float  # on the policy's clock
    repeats: int = 0
    last_seen_ns: int = 0
    size: int = 0  # bytes of ``first``, counted against ``dedup.max_bytes``


class PolicySink(Sink):
    """Filters and dedup in front of ``inner``; ``clock`` is monotonic seconds."""

    def __init__(
        self,
        inner: Sink,
        config: SinkConfig,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.config_key = inner.config_key
        self.name = inner.name
        self.durable = inner.durable
        self.transactional = inner.transactional
        self.concurrency = inner.concurrency
        self.max_call = inner.max_call
        self._clock = clock
        self._min_priority = Priority.parse(config.min_priority)
        self._rules = frozenset(config.rules)
        self._tags = frozenset(config.tags)
        self._sources = frozenset(config.sources)
        self._dedup = config.dedup
        #: Bounds of the sink's lane (``sinks/lane.py``).
        self.buffer = config.buffer
        # Insertion order is closing order: every window has the same length.
        self._windows: dict[bytes, _Window] = {}
        self._window_bytes = 0
        self._ticker: asyncio.Task[None] | None = None
        self._m_filtered = metrics.sink_filtered.labels(self.name, "filter")
        self._m_duplicate = metrics.sink_filtered.labels(self.name, "duplicate")

    # ---------------------------------------------------------------- Sink API

    async def start(self) -> None:
        await self.inner.start()
        if self._dedup is not None and self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name=f"sink-{self.name}-dedup")

    async def send(self, alert: Alert) -> None:
        if not self.accepts(alert):
            self._m_filtered.inc()
            return
        if self._dedup is None or await self._first_of_window(alert):
            await self.inner.send(alert)

    async def send_many(self, alerts: Sequence[Alert]) -> Receipt:
        kept = await self._kept(alerts)
        return await self.inner.send_many(kept) if kept else None

    async def send_transaction(self, alerts: Sequence[Alert], consumed: ConsumedOffsets) -> None:
        # Even with no alert left: the transaction commits the input offsets.
        await self.inner.send_transaction(await self._kept(alerts), consumed)

    async def _kept(self, alerts: Sequence[Alert]) -> list[Alert]:
        """The alerts the filters take and dedup lets through, in order."""
        kept = []
        for alert in alerts:
            if not self.accepts(alert):
                self._m_filtered.inc()
            elif self._dedup is None or await self._first_of_window(alert):
                kept.append(alert)
        return kept

    async def flush(self) -> None:
        await self._close_due()
        await self.inner.flush()

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        while self._windows:
            await self._close(next(iter(self._windows)))
        await self.inner.close()

    def healthy(self) -> bool:
        return self.inner.healthy()

    def accepting(self) -> bool:
        return self.inner.accepting()

    async def probe(self) -> None:
        await self.inner.probe()

    def reopen(self) -> None:
        self.inner.reopen()

    # ------------------------------------------------------------------ policy

    def accepts(self, alert: Alert) -> bool:
        """The filters: at least ``min_priority``, and the rule/tag/source lists."""
        return (
            alert.priority <= self._min_priority
            and (not self._rules or alert.rule in self._rules)
            and (not self._sources or alert.source in self._sources)
            and (not self._tags or not self._tags.isdisjoint(alert.tags))
        )

    async def _first_of_window(self, alert: Alert) -> bool:
        """Dedup: True if ``alert`` opens a window (send it), False if it
        repeats an open one (counted for the summary)."""
        dedup = self._dedup
        assert dedup is not None
        key = dedup_key([alert.rule, alert.source, *(alert.context.get(k) for k in dedup.keys)])
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now < window.closes_at:
            window.repeats += 1
            window.last_seen_ns = max(window.last_seen_ns, alert.time_ns)
            self._m_duplicate.inc()
            return False
        if window is not None:
            await self._close(key)
        size = len(alert.to_json())
        while self._windows and (
            len(self._windows) >= dedup.max_windows or self._window_bytes + size > dedup.max_bytes
        ):
            await self._close(next(iter(self._windows)))
        self._windows[key] = _Window(alert, now + dedup.window_seconds, 0, alert.time_ns, size)
        self._window_bytes += size
        return True

    async def _close_due(self) -> None:
        now = self._clock()
        while self._windows:
            key = next(iter(self._windows))
            if self._windows[key].closes_at > now:
                break
            await self._close(key)

    async def _close(self, key: bytes) -> None:
        window = self._windows.pop(key)
        self._window_bytes -= window.size
        if window.repeats and self._dedup is not None and self._dedup.summary:
            await self.inner.send(self._summary(window))

    def _summary(self, window: _Window) -> Alert:
        assert self._dedup is not None
        first, n, seconds = window.first, window.repeats, self._dedup.window_seconds
        window_end_ns = first.time_ns + int(seconds * 1e9)
        return Alert(
            time_ns=window.last_seen_ns,
            rule=first.rule,
            priority=first.priority,
            source=first.source,
            output=f"[repeated {n} more times in {seconds:g}s] {first.output}",
            output_fields={**first.output_fields, "eventd.repeat_count": n},
            tags=first.tags,
            hostname=first.hostname,
            # Deterministic: re-processing the same events yields the same summary uuid.
            uuid=str(uuidlib.uuid5(_SUMMARY_NAMESPACE, f"{first.uuid}\x00{window_end_ns}")),
            context={
                **first.context,
                "repeat_count": n,
                "first_seen": ns_to_rfc3339(first.time_ns),
                "last_seen": ns_to_rfc3339(window.last_seen_ns),
            },
        )

    async def _tick(self) -> None:
        assert self._dedup is not None
        interval = tick_interval(self._dedup.window_seconds)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._close_due()
            except Exception:  # a failing inner sink must not end dedup
                log.exception("dedup_summary_failed", sink=self.name)
