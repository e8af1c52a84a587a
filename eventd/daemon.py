"""``eventd run``: wire config, rules, sources, pipeline, sinks; run; stop cleanly.

Lifecycle:

* validate (``validate``, also what ``run --check`` does): construct every
  source and sink, which checks what can be checked without side effects;
  a refusal is a ``ConfigError`` naming the key;
* start: load and compile the rules (refuse to start on a broken rule set),
  start the ops server, the sinks, the pipeline's consumer, then the
  sources, and wait until every listener is bound.  Each step pushes its
  undo onto an ``AsyncExitStack``, so a step that fails (a port in use, a
  spool held by another process) undoes the ones before it in reverse order
  and nothing is left listening; the failure is a ``StartError`` naming the key;
* SIGHUP (or a changed rule file with ``watch_rules``): reload the rules in
  a worker thread; a broken new rule set is refused, logged and counted,
  and the running one stays;
* SIGTERM/SIGINT: stop accepting (sources stop), drain the queue, flush the
  sinks, persist offsets and checkpoints (the sources' ``stop``), exit 0 —
  or 1 if the grace period ran out before everything was delivered.  This
  is the same exit stack unwinding: stop the sources, drain the pipeline,
  close the sinks, cancel what is left, stop the ops server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from eventd.components import build_sinks, build_sources, one_line
from eventd.config import Config, ConfigError
from eventd.engine.errors import RuleError
from eventd.engine.fields import pullsecrets
from eventd.engine.matcher import Matcher
from eventd.events import redact
from eventd.gctune import tune_after_startup
from eventd.metrics import Metrics
from eventd.pipeline import Pipeline
from eventd.ruleload import load_with_options
from eventd.rulepacks import builtin_rule_files
from eventd.server import OpsServer
from eventd.sinks.policy import PolicySink
from eventd.sources.base import Source
from eventd.sources.http_input import HttpInput

log = structlog.get_logger(__name__)

#: How often rule files are checked for changes with ``watch_rules``.
RULE_WATCH_INTERVAL = 2.0
#: How often start-up looks whether the HTTP inputs are listening yet.
LISTEN_POLL_INTERVAL = 0.01


class StartError(ConfigError):
    """A start-up step failed on a config that validates (a port in use, a
    spool directory held by another process); ``str()`` names the key."""


@dataclass(frozen=True, slots=True)
class Components:
    """The configured sources and sinks, constructed but not started."""

    sources: list[Source]
    sinks: list[PolicySink]


def validate(config: Config, metrics: Metrics | None = None) -> Components:
    """Construct every configured sink and source without starting any.

    The one validation entry point, used by ``run --check``, by ``run`` (which
    then starts exactly these objects) and by the manifest tests: what the
    constructors check (files readable, TLS loadable, topic names, spool
    directory usable, URLs, authentication of non-loopback listeners) is what
    ``--check`` reports, so ``--check`` accepts only configs ``run`` accepts,
    save for what only binding or opening can tell.  Raises ``ConfigError``.
    """
    metrics = metrics if metrics is not None else Metrics.configured(config.metrics)
    # The ops server checks its own section (limits) on construction; a
    # throw-away one serves for that (``run`` builds its own with its callbacks).
    OpsServer(config.server.listen, metrics, dict, limits=config.server)
    check_exactly_once(config)
    sinks = build_sinks(config.sinks, metrics)
    return Components(build_sources(config.sources, metrics), sinks)


def check_exactly_once(config: Config) -> None:
    """``sources.kafka.exactly_once`` commits input offsets in the Kafka sink's
    transactions: there must be a Kafka sink, on the same cluster, acks all."""
    source, sink = config.sources.kafka, config.sinks.kafka
    if source is None or not source.exactly_once:
        return
    key = "sources.kafka.exactly_once"
    if sink is None:
        raise ConfigError(key, "needs sinks.kafka: the offsets are committed in its transactions")
    if set(sink.bootstrap_servers) != set(source.bootstrap_servers):
        raise ConfigError(key, "needs sinks.kafka on the same cluster (the same bootstrap_servers)")
    if sink.acks != "all":
        raise ConfigError(key, "needs sinks.kafka.acks: all (transactions are acknowledged by all replicas)")


def _start_error(key: str, err: BaseException) -> StartError:
    """``err`` as a ``StartError`` for ``key`` (keeping a ``ConfigError``'s own key)."""
    if isinstance(err, ConfigError):
        return StartError(err.key, str(err).removeprefix(f"{err.key}: "))
    return StartError(key, f"cannot start: {one_line(err)}")


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop ``eventd run`` runs on (``event_loop`` in the config), for
    ``asyncio.Runner``; None means asyncio's default loop.

    uvloop (libuv) makes the loop's own work (sockets, callbacks, timers)
    cheaper, which is a visible share of the daemon's CPU per event
    (bench/bench_e2e.py measures both); ``auto`` uses it when installed.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "event_loop", "uvloop is not installed (pip install 'eventd[uvloop]')"
            ) from None
        return None
    return uvloop.new_event_loop


def rule_paths(config: Config) -> list[Path]:
    return [Path(p) for p in config.rules] if config.rules else builtin_rule_files()


def build_matcher(config: Config) -> Matcher:
    """Load, compile and index the configured rules (raises ``RuleError``/``OSError``)."""
    pullsecrets.STORE.configure(config.pull_secrets_max_entries, config.pull_secrets_max_bytes)
    ruleset = load_with_options(
        rule_paths(config),
        infer_source=config.rules_infer_source,
        gatekeeper_constraints=config.gatekeeper_constraints,
        strict=config.rules_strict,
    )
    return Matcher(ruleset, rule_matching=config.rule_matching)


class Daemon:
    def __init__(self, config: Config, matcher: Matcher | None = None) -> None:
        self.config = config
        # Every source decodes (and so redacts) with this process-wide policy.
        redact.install(redact.policy_from_config(config.redaction))
        self._initial_matcher = matcher
        self.metrics = Metrics.configured(config.metrics)
        self.hostname = config.hostname or os.environ.get("NODE_NAME") or socket.gethostname()
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._failed = False
        #: A start-up failure (a source that could not listen); raised by ``run``.
        self._fatal: StartError | None = None
        #: Start-up is over (every listener bound); later source failures are runtime failures.
        self._started = False
        self._drained = True
        #: Set when stopping begins; every shutdown step shares this deadline.
        self._deadline: float | None = None
        self._reloads: set[asyncio.Future[bool]] = set()  # keep reload tasks referenced

    async def run(self) -> int:
        """Validate, start, run until stopped, stop; the exit status.

        Raises ``ConfigError`` when the config is refused (nothing started)
        and ``StartError`` when a start-up step failed (everything started
        before it stopped again), both naming the key.
        """
        config = self.config
        matcher = self._initial_matcher
        if matcher is None:
            matcher = await asyncio.to_thread(build_matcher, config)
        self._initial_matcher = None
        log.info("rules_loaded", rules=len(matcher.ruleset.rules), files=len(matcher.ruleset.files))
        components = validate(config, self.metrics)
        self.sinks = components.sinks
        self.sources = components.sources
        self.pipeline = Pipeline(
            matcher,
            self.sinks,
            self.metrics,
            queue_size=config.queue_size,
            queue_max_bytes=config.queue_max_bytes,
            hostname=self.hostname,
            cluster=config.cluster,
            trusted_registries=config.metrics.trusted_registries,
        )
        self.metrics.rules_loaded.set(len(matcher.ruleset.rules))
        self.server = OpsServer(
            config.server.listen, self.metrics, self.readiness, self.health, limits=config.server
        )
        tune_after_startup()
        self._install_signals()
        async with contextlib.AsyncExitStack() as stack:
            await self._start(stack)
            log.info(
                "started",
                sources=[s.name for s in self.sources],
                sinks=[s.name for s in self.sinks],
                ops=str(config.server.listen),
            )
            await self._stop.wait()
            self._begin_shutdown()
        if self._fatal is not None:
            raise self._fatal
        log.info("stopped", drained=self._drained)
        return 0 if self._drained and not self._failed else 1

    def readiness(self) -> dict[str, bool]:
        """Whether eventd can take input and hand it off durably: rules loaded,
        every source accepting, every *durable* sink accepting.  Best-effort
        sinks (Slack, Alertmanager, ...) are not part of it: their outage must
        not take a replica out of its Service; see ``health`` for them."""
        # A rule set is always loaded once running (start refuses a broken one);
        # an empty one is legitimate (a pure Falco forwarder).
        parts = {"rules": self.pipeline.matcher is not None}
        parts.update({f"source:{s.name}": s.ready() for s in self.sources})
        parts.update({f"sink:{lane.name}": lane.accepting() for lane in self.pipeline.lanes if lane.durable})
        return parts

    def health(self) -> dict[str, object]:
        """Detail for ``/healthz``: every sink's and source's state."""
        return {
            "sinks": self.pipeline.sink_health(),
            "sources": {s.name: {"ready": s.ready()} for s in self.sources},
        }

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
            sink.reopen()
        self._reloads.add(task := asyncio.ensure_future(self.reload()))
        task.add_done_callback(self._reloads.discard)

    # ---------------------------------------------------------------- internals

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        """Start everything, each step pushing its undo onto ``stack``.

        The ops server comes first (a busy ops port fails before anything
        else started) and stops last, so ``/metrics`` covers the drain.
        Unwinding runs: stop the sources, drain, close the sinks, cancel the
        remaining tasks, stop the ops server.
        """
        try:
            await self.server.start()
        except Exception as err:
            raise _start_error("server.listen", err) from None
        stack.push_async_callback(self.server.stop)
        stack.push_async_callback(self._cancel_tasks)
        for sink in self.sinks:
            try:
                await sink.start()
            except Exception as err:
                raise _start_error(sink.config_key, err) from None
            stack.push_async_callback(self._close_sink, sink)
        self._tasks.append(consumer := asyncio.create_task(self.pipeline.run(), name="pipeline"))
        stack.push_async_callback(self._drain_pipeline, consumer)
        runs = {
            source: asyncio.create_task(self._run_source(source), name=source.name) for source in self.sources
        }
        self._tasks.extend(runs.values())
        stack.push_async_callback(self._stop_sources)
        if self.config.watch_rules:
            self._tasks.append(asyncio.create_task(self._watch_rules(), name="rule-watch"))
        await self._listening(runs)

    async def _listening(self, runs: dict[Source, asyncio.Task[None]]) -> None:
        """Wait until every HTTP input listens (or failed to), so that a busy
        port fails the start-up instead of a daemon that said it started.
        Other sources connect on their own schedule (a broker may be down)."""
        pending = [s for s in runs if isinstance(s, HttpInput)]
        while pending and self._fatal is None and not self._stop.is_set():
            pending = [s for s in pending if not s.ready() and not runs[s].done()]
            if pending:
                await asyncio.sleep(LISTEN_POLL_INTERVAL)
        if self._fatal is not None:
            raise self._fatal
        self._started = True

    async def _run_source(self, source: Source) -> None:
        try:
            await source.run(self.pipeline)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            if isinstance(err, ConfigError) and not self._started:
                # A source that cannot listen: a start-up failure, undone and
                # reported as one line by ``run``'s caller.
                self._fatal = self._fatal or _start_error(source.config_key, err)
                self._stop.set()
                return
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

    # ---------------------------------------------------------------- shutdown

    def _begin_shutdown(self) -> None:
        """Start the grace period (once: on SIGTERM, or when a start-up step failed)."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.config.shutdown_grace_seconds
            log.info("stopping", grace_seconds=self.config.shutdown_grace_seconds)

    async def _shutdown(self, step: str, work: Callable[[], Awaitable[object]]) -> None:
        """Run one shutdown step within what is left of the grace period.

        A step that runs out of time or fails marks the stop as not drained
        (exit status 1) and the unwinding goes on, so a stuck sink cannot keep
        the ops server or the other steps from being stopped.
        """
        self._begin_shutdown()
        assert self._deadline is not None
        left = self._deadline - time.monotonic()
        if left <= 0:
            self._drained = False
            log.error("shutdown_grace_exceeded", step=step, queued=self.pipeline.queued)
            return
        try:
            async with asyncio.timeout(left):
                await work()
        except TimeoutError:
            self._drained = False
            log.error("shutdown_grace_exceeded", step=step, queued=self.pipeline.queued)
        except Exception as err:
            self._drained = False
            log.error("shutdown_step_failed", step=step, error=one_line(err))

    async def _stop_sources(self) -> None:
        """Stop accepting: sources stop, waiting for their own in-flight batches."""

        async def stop_all() -> None:
            await asyncio.gather(*(s.stop() for s in self.sources), return_exceptions=True)

        await self._shutdown("sources", stop_all)

    async def _drain_pipeline(self, consumer: asyncio.Task[None]) -> None:
        """Let the consumer finish what is queued (it keeps running until
        ``_cancel_tasks``, for sources still finishing)."""
        if not consumer.done():
            assert self._deadline is not None
            # Best-effort sinks get half of what is left, so a stdout nobody
            # reads cannot eat the time the durable sinks need to close.
            left = self._deadline - time.monotonic()
            await self._shutdown("pipeline", lambda: self.pipeline.drain(best_effort_seconds=left / 2))
        await self.pipeline.stop_lanes()  # the sinks close next

    async def _close_sink(self, sink: PolicySink) -> None:
        await self._shutdown(f"sink:{sink.name}", sink.close)

    async def _cancel_tasks(self) -> None:
        """Cancel the source, consumer and rule-watch tasks still running."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
