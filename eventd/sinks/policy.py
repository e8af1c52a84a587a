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
opens a new window.  Open windows are capped: past ``max_windows`` the oldest
is closed early (its summary sent), so a flood of distinct keys costs
bounded memory.
"""

from __future__ import annotations

import asyncio
import time
import uuid as uuidlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import structlog

from eventd.alerts import Alert
from eventd.config import SinkConfig
from eventd.engine.priority import Priority
from eventd.events.timestamps import ns_to_rfc3339
from eventd.metrics import Metrics
from eventd.sinks.base import Sink

log = structlog.get_logger(__name__)

#: Open dedup windows kept per sink (one per distinct rule + key values).
DEFAULT_MAX_WINDOWS = 10_000
_SUMMARY_NAMESPACE = uuidlib.UUID("5c0f7b0e-2a61-4d8e-b7f4-3e9d2c1a6b58")


def hashable(value: Any) -> Hashable:
    """A hashable, order-insensitive-for-mappings copy of a JSON-like value."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), hashable(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(hashable(v) for v in value)
    if isinstance(value, set | frozenset):
        return tuple(sorted(map(repr, value)))
    return value


@dataclass(slots=True)
class _Window:
    first: Alert
    closes_at: float  # on the policy's clock
    repeats: int = 0
    last_seen_ns: int = 0


class PolicySink(Sink):
    """Filters and dedup in front of ``inner``; ``clock`` is monotonic seconds."""

    def __init__(
        self,
        inner: Sink,
        config: SinkConfig,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_windows: int = DEFAULT_MAX_WINDOWS,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self._clock = clock
        self._min_priority = Priority.parse(config.min_priority)
        self._rules = frozenset(config.rules)
        self._tags = frozenset(config.tags)
        self._sources = frozenset(config.sources)
        self._dedup = config.dedup
        self._max_windows = max_windows
        # Insertion order is closing order: every window has the same length.
        self._windows: dict[Hashable, _Window] = {}
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
        if self._dedup is None:
            await self.inner.send(alert)
            return
        key = self._key(alert)
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now < window.closes_at:
            window.repeats += 1
            window.last_seen_ns = max(window.last_seen_ns, alert.time_ns)
            self._m_duplicate.inc()
            return
        if window is not None:
            await self._close(key)
        elif len(self._windows) >= self._max_windows:
            await self._close(next(iter(self._windows)))
        self._windows[key] = _Window(alert, now + self._dedup.window_seconds, 0, alert.time_ns)
        await self.inner.send(alert)

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

    # ------------------------------------------------------------------ policy

    def accepts(self, alert: Alert) -> bool:
        """The filters: at least ``min_priority``, and the rule/tag/source lists."""
        return (
            alert.priority <= self._min_priority
            and (not self._rules or alert.rule in self._rules)
            and (not self._sources or alert.source in self._sources)
            and (not self._tags or not self._tags.isdisjoint(alert.tags))
        )

    def _key(self, alert: Alert) -> Hashable:
        assert self._dedup is not None
        ctx = alert.context
        return (alert.rule, alert.source, *(hashable(ctx.get(k)) for k in self._dedup.keys))

    async def _close_due(self) -> None:
        now = self._clock()
        while self._windows:
            key = next(iter(self._windows))
            if self._windows[key].closes_at > now:
                break
            await self._close(key)

    async def _close(self, key: Hashable) -> None:
        window = self._windows.pop(key)
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
        interval = max(0.01, min(1.0, self._dedup.window_seconds / 10))
        while True:
            await asyncio.sleep(interval)
            try:
                await self._close_due()
            except Exception:  # a failing inner sink must not end dedup
                log.exception("dedup_summary_failed", sink=self.name)
