"""``eventd run``: wire config, rules, sources, pipeline, sinks; run; stop cleanly.

Lifecycle:

* start: load and compile the rules (refuse to start on a broken rule set),
  start sinks, the ops server, the pipeline's consumer, then the sources;
* SIGHUP (or a changed rule file with ``watch_rules``): reload the rules in
  a worker thread; a broken new rule set is refused, logged and counted,
  and the running one stays;
* SIGTERM/SIGINT: stop accepting (sources stop), drain the queue, flush the
  sinks, persist offsets and checkpoints (the sources' ``stop``), exit 0 —
  or 1 if the grace period ran out before everything was delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import structlog

from eventd.components import build_sinks, build_sources
from eventd.config import Config
from eventd.engine.errors import RuleError
from eventd.engine.loader import load_rules
from eventd.engine.matcher import Matcher
from eventd.gctune import tune_after_startup
from eventd.metrics import Metrics
from eventd.pipeline import Pipeline
from eventd.rulepacks import builtin_rule_files
from eventd.server import OpsServer
from eventd.sources.base import Source

log = structlog.get_logger(__name__)

#: How often rule files are checked for changes with ``watch_rules``.
RULE_WATCH_INTERVAL = 2.0


def rule_paths(config: Config) -> list[Path]:
    return [Path(p) for p in config.rules] if config.rules else builtin_rule_files()


def build_matcher(config: Config) -> Matcher:
    """Load, compile and index the configured rules (raises ``RuleError``/``OSError``)."""
    return Matcher(load_rules(rule_paths(config)), rule_matching=config.rule_matching)


class Daemon:
    def __init__(self, config: Config, matcher: Matcher | None = None) -> None:
        self.config = config
        self._initial_matcher = matcher
        self.metrics = Metrics(config.metrics.label_value_cap)
        self.hostname = config.hostname or os.environ.get("NODE_NAME") or socket.gethostname()
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._failed = False
        self._reloads: set[asyncio.Future[bool]] = set()  # keep reload tasks referenced

    async def run(self) -> int:
        config = self.config
        matcher = self._initial_matcher or await asyncio.to_thread(build_matcher, config)
        self._initial_matcher = None
        log.info("rules_loaded", rules=len(matcher.ruleset.rules), files=len(matcher.ruleset.files))
        self.sinks = build_sinks(config.sinks, self.metrics)
        self.sources = build_sources(config.sources, self.metrics)
        self.pipeline = Pipeline(
            matcher,
            self.sinks,
            self.metrics,
            queue_size=config.queue_size,
            hostname=self.hostname,
            cluster=config.cluster,
            trusted_registries=config.metrics.trusted_registries,
        )
        self.metrics.rules_loaded.set(len(matcher.ruleset.rules))
        tune_after_startup()
        for sink in self.sinks:
            await sink.start()
        self.server = OpsServer(config.server.listen, self.metrics, self.readiness)
        await self.server.start()
        consumer = asyncio.create_task(self.pipeline.run(), name="pipeline")
        for source in self.sources:
            self._tasks.append(asyncio.create_task(self._run_source(source), name=source.name))
        if config.watch_rules:
            self._tasks.append(asyncio.create_task(self._watch_rules(), name="rule-watch"))
        self._install_signals()
        log.info(
            "started",
            sources=[s.name for s in self.sources],
            sinks=[s.name for s in self.sinks],
            ops=str(config.server.listen),
        )
        await self._stop.wait()
        return await self._shutdown(consumer)

    def readiness(self) -> dict[str, bool]:
        # A rule set is always loaded once running (start refuses a broken one);
        # an empty one is legitimate (a pure Falco forwarder).
        parts = {"rules": self.pipeline.matcher is not None}
        parts.update({f"source:{s.name}": s.ready() for s in self.sources})
        parts.update({f"sink:{s.name}": s.healthy() for s in self.sinks})
        return parts

    def request_stop(self) -> None:
        self._stop.set()

    async def reload(self) -> bool:
        """Load the rules again; keep the running set if the new one is broken."""
        async with self._reload_lock:
            try:
                matcher = await asyncio.to_thread(build_matcher, self.config)
            except (RuleError, OSError) as err:
                self.metrics.rule_reloads.labels("refused").inc()
                log.error("rules_reload_refused", error=str(err))
                return False
            self.pipeline.swap_matcher(matcher)
            self.metrics.rule_reloads.labels("ok").inc()
            log.info("rules_reloaded", rules=len(matcher.ruleset.rules))
            return True

    def _on_sighup(self) -> None:
        """Reload rules and reopen file outputs (logrotate sends SIGHUP too)."""
        for sink in self.sinks:
            reopen = getattr(sink.inner, "reopen", None)
            if reopen is not None:
                reopen()
        self._reloads.add(task := asyncio.ensure_future(self.reload()))
        task.add_done_callback(self._reloads.discard)

    # ---------------------------------------------------------------- internals

    async def _run_source(self, source: Source) -> None:
        try:
            await source.run(self.pipeline)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            # Sources retry transient errors themselves; reaching here is a
            # configuration or start-up failure: stop and let the orchestrator see it.
            log.error("source_failed", source=source.name, error=str(err), exc_info=True)
            self._failed = True
            self._stop.set()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    async def _watch_rules(self) -> None:
        def stamps() -> dict[Path, float]:
            found = {}
            for path in rule_paths(self.config):
                files = sorted(path.glob("*.y*ml")) if path.is_dir() else [path]
                for f in files:
                    with contextlib.suppress(OSError):
                        found[f] = f.stat().st_mtime
            return found

        last = stamps()
        while True:
            await asyncio.sleep(RULE_WATCH_INTERVAL)
            now = stamps()
            if now != last:
                last = now
                log.info("rules_changed")
                await self.reload()

    async def _shutdown(self, consumer: asyncio.Task[None]) -> int:
        deadline = time.monotonic() + self.config.shutdown_grace_seconds
        log.info("stopping", grace_seconds=self.config.shutdown_grace_seconds)
        drained = True
        # 1. stop accepting: sources stop; they wait for their own in-flight batches.
        stops = [asyncio.create_task(s.stop()) for s in self.sources]
        stop_waits = [*stops, *self._tasks]
        # 2. drain the queue while sources finish, then flush the sinks.
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await asyncio.gather(*stops, return_exceptions=True)
                await self.pipeline.drain()
                for sink in self.sinks:
                    await sink.close()
        except TimeoutError:
            drained = False
            log.error("shutdown_grace_exceeded", queued=self.pipeline.queued)
        for task in [*stop_waits, consumer]:
            task.cancel()
        await asyncio.gather(*stop_waits, consumer, return_exceptions=True)
        await self.server.stop()
        log.info("stopped", drained=drained)
        return 0 if drained and not self._failed else 1
