"""End-to-end benchmark: audit webhook -> ``eventd run`` -> Kafka, every alert checked.

A real Kafka-protocol broker (tansu, started as the tests start it) and a
real ``eventd run`` process (audit webhook on loopback, Kafka sink with
``acks: all``, built-in rule packs) are driven by ``bench/loadgen.py`` the
way the API server drives them: ``EventList`` batches of 400 events over
several connections, 503s retried.  Rates go up step by step; an
independent reader (confluent-kafka, partitions assigned, no group) checks
that every alert the workload must raise reached the topic.  A step
*passes* when every expected alert arrived and eventd kept up with the
offered rate.  Latencies run from the first POST of an event's batch to the
Kafka message timestamp of its alert.  A bare aiokafka producer sending the
same alert documents gives the yardstick: what the Kafka client alone can do
on this machine.

    python bench/bench_e2e.py [--quick] [--rates 2000,5000,...] [--step-seconds S]
                              [--soak-minutes M] [--json OUT] [--strict]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import math
import os
import resource
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):  # run as a script: make ``bench.*`` and ``tests.*`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaProducer
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from bench.loadgen import AlertKey, LoadResult, WebhookDriver, Workload, build_workload, expected_for
from eventd.config import AuditWebhookConfig, Config
from eventd.daemon import build_matcher
from eventd.events.dedup import RecentKeys
from tests.support.daemon_process import EventdProcess, free_port
from tests.support.kafka_broker import KafkaBroker

#: Target: highest sustained rate, events/s.
TARGET_EVENTS_PER_S = 40_000
#: Target: p99 latency at ``LATENCY_RATE``, milliseconds.
TARGET_P99_MS = 250.0
LATENCY_RATE = 5_000
#: Target: RSS at the end of the soak at most this times RSS after warm-up.
TARGET_RSS_GROWTH = 1.10
#: A step keeps up when eventd matched events at this share of the offered rate...
KEEP_UP = 0.95
#: ... and, after the last POST was answered, matched the rest and delivered
#: every alert within this many seconds (no backlog hidden in its queue).
MAX_DRAIN_SECONDS = 1.0
#: The shortest stretch of counter samples ``steady_rate`` fits a slope to.
MIN_SLOPE_SECONDS = 2.0
#: Above this CPU share used by unrelated processes during a step, the report warns.
BUSY_MACHINE = 0.25
#: The prefill's rate, events/s: high enough to be quick, low enough not to
#: flood eventd's queue (which would inflate its RSS for the rest of the run).
PREFILL_RATE = 10_000
#: Before a step, how long eventd may take to clear a backlog a failed step left.
SETTLE_SECONDS = 120.0
#: How often eventd's matched-events counter is read during a step.
COUNTER_SAMPLE_SECONDS = 0.2
TOPIC = "eventd-alerts"
BARE_TOPIC = "bench-bare-producer"
WEBHOOK_SOURCE = "k8s_audit_webhook"
CAVEAT = "load driver, Kafka reader and broker run on the same machine as eventd and compete with it for CPU"


@dataclass
class Options:
    rates: tuple[int, ...] = (2_000, 5_000, 10_000, 20_000, 30_000, 40_000, 50_000)
    step_seconds: float = 10.0
    #: Concurrent POSTs, like the API server's batches in flight.
    connections: int = 8
    #: Distinct template batches (400 events each) cycled through epochs.
    templates: int = 100
    seed: int = 1
    partitions: int = 3
    #: Messages the bare producer sends (the alert documents, cycled).
    bare_messages: int = 20_000
    soak_minutes: float = 0.0
    soak_rate: int = LATENCY_RATE
    #: After a step's last POST, how long eventd may take to deliver its alerts.
    drain_seconds: float = 30.0
    #: Low-rate run before anything else (connections, caches); not in the table.
    warmup_seconds: float = 2.0
    keep_going: bool = False
    #: After the ladder, steps halfway between the highest pass and the first failure.
    refine: int = 2
    #: Before the ladder, fill eventd's dedup table at ``PREFILL_RATE`` as
    #: production traffic would (see ``prefill_events``).
    prefill: bool = True
    #: eventd's ``event_loop`` setting (``auto``: uvloop when installed).
    event_loop: str = "auto"
    #: Pin eventd to this CPU (the targets are per core); None: not pinned.
    eventd_cpu: int | None = None


QUICK = Options(
    rates=(2_000, 5_000),
    step_seconds=2.0,
    templates=10,
    bare_messages=2_000,
    warmup_seconds=1.0,
    refine=0,
    prefill=False,
)


# ------------------------------------------------------------- process stats


_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> tuple[bytes, list[bytes]]:
    """The command name and the fields after it in ``/proc/<pid>/stat``
    (the name may hold spaces and parentheses, so split at the last ``)``)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read()
    return stat[stat.index(b"(") + 1 : stat.rindex(b")")], stat[stat.rindex(b")") + 2 :].split()


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU time of ``pid`` (all its threads)."""
    fields = _stat(pid)[1]
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15)


def memory_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of ``pid`` in MiB, from ``VmRSS`` and ``VmHWM``."""
    values = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024  # kB
    return values["VmRSS"], values["VmHWM"]


def quantile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank quantile; None for no values."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


# -------------------------------------------------------------- Kafka reader


class AlertReader:
    """Reads the alert topic in a thread and records when each alert landed.

    Independent of eventd: confluent-kafka (librdkafka), every partition
    assigned from the beginning, no consumer group.  For each alert key it
    keeps the Kafka message timestamp (this broker keeps the producer's
    create time, set when eventd handed the message to its producer) and the
    time the reader saw it (after the broker acknowledged and served it: an
    upper bound of the acknowledgement).
    """

    def __init__(self, bootstrap: str, topic: str, keep_payloads: int) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.keep_payloads = keep_payloads
        #: key -> (Kafka timestamp, read time), both ``time.time()`` seconds.
        self.arrivals: dict[AlertKey, tuple[float, float]] = {}
        self.duplicates = 0
        self.messages = 0
        #: (key, value, headers) of the first alerts, for the bare producer.
        self.payloads: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "eventd-bench-reader",  # required by librdkafka; never joined
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 20,
            }
        )
        try:
            meta = consumer.list_topics(self.topic, timeout=10).topics[self.topic]
            partitions = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in meta.partitions]
            consumer.assign(partitions)
            while not self._stop.is_set():
                for msg in consumer.consume(500, 0.05):
                    if msg.error() is not None:
                        raise KafkaException(msg.error())
                    self._record(msg, time.time())
        except BaseException as err:  # surfaced by wait_for
            self.error = err
        finally:
            consumer.close()

    def _record(self, msg: Any, seen: float) -> None:
        self.messages += 1
        value = msg.value()
        doc = orjson.loads(value)
        context = doc.get("eventd") or {}
        key = (context.get("audit_id") or "", context.get("stage") or "", doc.get("rule") or "")
        if key in self.arrivals:
            self.duplicates += 1
            return
        self.arrivals[key] = (msg.timestamp()[1] / 1000, seen)
        if len(self.payloads) < self.keep_payloads:
            self.payloads.append((msg.key(), value, list(msg.headers() or [])))

    async def wait_for(self, keys: set[AlertKey], deadline: float) -> set[AlertKey]:
        """Wait until every key arrived or ``deadline`` (monotonic); the missing keys."""
        pending = set(keys)
        while True:
            if self.error is not None:
                raise RuntimeError(f"alert reader failed: {self.error}") from self.error
            pending = {k for k in pending if k not in self.arrivals}
            if not pending or time.monotonic() > deadline:
                return pending
            await asyncio.sleep(0.05)


# ---------------------------------------------------------------- the steps


@dataclass
class StepResult:
    """One rate step (or the warm-up, or the soak); bench/README.md explains each field."""

    name: str
    offered_eps: float
    seconds: float
    batches: int
    events_accepted: int
    #: eventd's matching rate while the load ran (slope of eventd_events_received_total).
    achieved_eps: float
    #: Last POST answered -> every event matched and every alert in Kafka.
    drain_s: float | None
    retries_503: int
    retries_other: int
    batches_lost: int
    max_late_s: float
    expected_alerts: int
    arrived_alerts: int
    missing_alerts: int
    markers: int
    missing_markers: int
    unexpected_alerts: int
    duplicate_alerts: int
    #: First POST of the event's batch -> Kafka message timestamp of its alert.
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    #: First POST -> the independent reader saw the alert (upper bound of the ack).
    read_p99_ms: float | None
    wall_s: float
    cpu_s: float
    cpu_util: float
    bench_cpu_util: float
    broker_cpu_util: float
    #: CPU used by everything else on the machine (other people's jobs skew the numbers).
    other_cpu_util: float
    rss_mb: float
    peak_rss_mb: float
    kept_up: bool
    passed: bool
    rss_samples: list[tuple[float, float]] = field(default_factory=list)

    @property
    def alerts_per_s(self) -> float:
        return self.arrived_alerts / self.wall_s if self.wall_s else 0.0


@dataclass
class Samples:
    """Taken while a step runs: eventd's matched-events counter, and RSS for the soak."""

    counts: list[tuple[float, float]] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Bench:
    """The running pieces of one benchmark run."""

    options: Options
    workload: Workload
    eventd: EventdProcess
    driver: WebhookDriver
    reader: AlertReader
    #: Events eventd accepted since it started (what its counter must reach).
    accepted_total: int = 0

    @property
    def pid(self) -> int:
        return self.eventd.proc.pid

    async def received(self) -> float:
        return await asyncio.to_thread(
            self.eventd.metric, "eventd_events_received_total", source=WEBHOOK_SOURCE
        )

    async def processed_at(self, deadline: float) -> float | None:
        """``time.time()`` once eventd matched every accepted event (None: not by ``deadline``)."""
        while time.monotonic() <= deadline:
            if await self.received() >= self.accepted_total:
                return time.time()
            await asyncio.sleep(0.05)
        return None

    async def step(self, name: str, rate: float, seconds: float, rss_every: float = 0.0) -> StepResult:
        # A failed step may have left a backlog: never let it spill into this one.
        if await self.processed_at(time.monotonic() + SETTLE_SECONDS) is None:
            raise RuntimeError(f"eventd did not catch up with its backlog within {SETTLE_SECONDS:.0f}s")
        cpu0 = self._cpu()
        duplicates0 = self.reader.duplicates
        samples = Samples()
        sampler = asyncio.create_task(self._sample(samples, rss_every))
        try:
            load = await self.driver.run(rate, seconds)
            accepted = len(load.batches_accepted) * self.workload.events_per_batch
            self.accepted_total += accepted
            expected, markers = expected_for(self.workload, load.records)
            deadline = time.monotonic() + self.options.drain_seconds
            processed = await self.processed_at(deadline)
            missing = await self.reader.wait_for(expected, deadline)
        finally:
            sampler.cancel()
        cpu = {k: v - cpu0[k] for k, v in self._cpu().items()}
        rss, peak = memory_mb(self.pid)
        outcome = Outcome(accepted, expected, markers, missing, processed, cpu, rss, peak, duplicates0)
        return self._result(name, load, outcome, samples)

    def _cpu(self) -> dict[str, float]:
        return {
            "eventd": cpu_seconds(self.pid),
            "bench": own_cpu(),
            "broker": broker_cpu(),
            "machine": machine_busy_cpu(),
        }

    async def _sample(self, samples: Samples, rss_every: float) -> None:
        start = time.time()
        next_rss = 0.0
        while True:
            now = time.time()
            samples.counts.append((now, await self.received()))
            if rss_every and now - start >= next_rss:
                samples.rss.append((round(now - start, 1), round(memory_mb(self.pid)[0], 1)))
                next_rss += rss_every
            await asyncio.sleep(COUNTER_SAMPLE_SECONDS)

    def _result(self, name: str, load: LoadResult, out: Outcome, samples: Samples) -> StepResult:
        arrivals = self.reader.arrivals
        sent = {r.seq: r.sent for r in load.records}
        arrived = out.expected - out.missing
        latencies, reads = [], []
        for key in arrived:
            stamp, seen = arrivals[key]
            seq = self.workload.seq_of(key[0], key[1])
            assert seq is not None
            latencies.append((stamp - sent[seq]) * 1000)
            reads.append((seen - sent[seq]) * 1000)
        latencies.sort()
        reads.sort()
        unexpected = sum(
            1 for key in list(arrivals) if key not in out.expected and self.workload.seq_of(*key[:2]) in sent
        )
        last_alert = max((arrivals[k][0] for k in arrived), default=load.started)
        last_answer = max((r.done for r in load.batches_accepted), default=load.started)
        end = max(out.processed or time.time(), last_alert)
        wall = end - load.started
        drain = None if out.processed is None or out.missing else max(0.0, end - last_answer)
        achieved = steady_rate(samples.counts, load)
        kept_up = (
            not load.failed
            and drain is not None
            and drain <= MAX_DRAIN_SECONDS
            and achieved >= KEEP_UP * load.rate
        )
        return StepResult(
            name=name,
            offered_eps=load.rate,
            seconds=load.duration,
            batches=len(load.records),
            events_accepted=out.accepted,
            achieved_eps=round(achieved, 1),
            drain_s=None if drain is None else round(drain, 3),
            retries_503=load.retries_503,
            retries_other=load.retries_other,
            batches_lost=load.failed,
            max_late_s=round(load.max_late, 3),
            expected_alerts=len(out.expected),
            arrived_alerts=len(arrived),
            missing_alerts=len(out.missing),
            markers=len(out.markers),
            missing_markers=len(out.markers & out.missing),
            unexpected_alerts=unexpected,
            duplicate_alerts=self.reader.duplicates - out.duplicates0,
            latency_p50_ms=_ms(quantile(latencies, 0.50)),
            latency_p99_ms=_ms(quantile(latencies, 0.99)),
            latency_max_ms=_ms(latencies[-1] if latencies else None),
            read_p99_ms=_ms(quantile(reads, 0.99)),
            wall_s=round(wall, 3),
            cpu_s=round(out.cpu["eventd"], 2),
            cpu_util=round(out.cpu["eventd"] / wall, 3),
            bench_cpu_util=round(out.cpu["bench"] / wall, 3),
            broker_cpu_util=round(out.cpu["broker"] / wall, 3),
            other_cpu_util=round(
                max(0.0, out.cpu["machine"] - out.cpu["eventd"] - out.cpu["bench"] - out.cpu["broker"])
                / wall,
                3,
            ),
            rss_mb=round(out.rss, 1),
            peak_rss_mb=round(out.peak, 1),
            kept_up=kept_up,
            passed=kept_up and not out.missing,
            rss_samples=samples.rss,
        )


@dataclass
class Outcome:
    """What a step's load led to, gathered before it becomes a ``StepResult``."""

    accepted: int
    expected: set[AlertKey]
    markers: set[AlertKey]
    missing: set[AlertKey]
    #: ``time.time()`` when every accepted event was matched; None: not within the drain time.
    processed: float | None
    cpu: dict[str, float]
    rss: float
    peak: float
    duplicates0: int


def steady_rate(counts: list[tuple[float, float]], load: LoadResult) -> float:
    """eventd's matching rate while the load ran, in events/s.

    The least-squares slope of its matched-events counter from shortly after
    the first POST to the last one: neither the ramp-up nor the final
    batch's latency count, and a backlog piling up in eventd's queue (the
    webhook answers as soon as a batch is queued) shows as a slope below the
    offered rate.  A step too short for a slope (under ``MIN_SLOPE_SECONDS``
    of samples) gets the rate at which POSTs were answered instead; the
    drain limit of ``kept_up`` then bounds what eventd's queue can hide.
    """
    last_sent = max((r.sent for r in load.records), default=load.started)
    begin = load.started + min(1.0, load.duration / 5)
    window = [(t, c) for t, c in counts if begin <= t <= last_sent]
    if window and window[-1][0] - window[0][0] >= MIN_SLOPE_SECONDS:
        return _slope(window)
    accepted = load.batches_accepted
    if not accepted:
        return 0.0
    interval = load.duration / len(load.records)
    span = max(r.done for r in accepted) - load.started + interval
    return len(accepted) * load.events_per_batch / span


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points (at least two distinct x)."""
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    num = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return num / sum((x - mean_x) ** 2 for x, _ in points)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# ------------------------------------------------------------ bare producer


async def bare_producer(
    bootstrap: str,
    topic: str,
    payloads: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]],
    count: int,
) -> dict[str, Any]:
    """Send ``count`` of the alert documents eventd produced (same keys and
    headers, cycled) with a plain aiokafka producer, acks=all, as fast as it goes."""
    if not payloads:
        return {"messages": 0, "seconds": 0.0, "msgs_per_s": None, "cpu_us_per_msg": None}
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, client_id="bench-bare"
    )
    await producer.start()
    try:
        key, value, headers = payloads[0]
        await (await producer.send(topic, value=value, key=key, headers=headers))  # connect, metadata
        cpu0, start = own_cpu(), time.perf_counter()
        futures = []
        for i in range(count):
            key, value, headers = payloads[i % len(payloads)]
            futures.append(await producer.send(topic, value=value, key=key, headers=headers))
        await asyncio.gather(*futures)
        seconds, cpu = time.perf_counter() - start, own_cpu() - cpu0
    finally:
        await producer.stop()
    return {
        "messages": count,
        "seconds": round(seconds, 3),
        "msgs_per_s": round(count / seconds, 1),
        "cpu_us_per_msg": round(cpu / count * 1e6, 1),
    }


def orjson_parse_us_per_event(workload: Workload, bodies: int = 50) -> float:
    """CPU µs per event of ``orjson.loads`` on the workload's ``EventList``
    bodies: the floor any Python consumer of this input pays, in this process."""
    sample = [workload.body(seq) for seq in range(bodies)]
    events = bodies * workload.events_per_batch
    best = math.inf
    for _ in range(3):
        cpu0 = time.thread_time()  # this thread only: the reader thread runs beside it
        for body in sample:
            orjson.loads(body)
        best = min(best, time.thread_time() - cpu0)
    return round(best / events * 1e6, 2)


def own_cpu() -> float:
    """CPU seconds of this process: the load driver, the reader thread, the bare producer."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy_cpu() -> float:
    """CPU seconds all CPUs spent busy since boot (``/proc/stat``: all but idle and iowait)."""
    with open("/proc/stat") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK


def broker_cpu() -> float:
    """CPU seconds of the tansu brokers this process started (children named ``tansu``)."""
    total = 0.0
    me = str(os.getpid()).encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            name, fields = _stat(entry.name)
        except OSError:  # gone meanwhile
            continue
        if name == b"tansu" and fields[1] == me:
            total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def pin(pid: int, cpu: int) -> None:
    """Keep ``pid`` and all its threads on ``cpu``: "per core" figures."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {cpu})


# ------------------------------------------------------------------- the run


def eventd_config(
    webhook_port: int, bootstrap: str, topic: str, spool_dir: Path, event_loop: str = "auto"
) -> dict[str, Any]:
    return {
        "event_loop": event_loop,
        "sources": {WEBHOOK_SOURCE: {"listen": f"127.0.0.1:{webhook_port}"}},
        "sinks": {
            "kafka": {
                "bootstrap_servers": [bootstrap],
                "topic": topic,
                "acks": "all",
                "spool_dir": str(spool_dir),
            }
        },
        "log_level": "warning",
    }


def prefill_events() -> int:
    """Events that bring eventd to its steady state before the ladder.

    The webhook's dedup table keeps every (auditID, stage) for the dedup
    window, up to a fixed number of entries; in production it is full
    whenever the rate exceeds cap / window (1,000,000 / 300 s, about
    3,300 events/s).  A fresh process with an empty table is faster than
    one with a full table (a larger heap for Python's garbage collector),
    so measuring a fresh process would flatter eventd.
    """
    return int(inspect.signature(RecentKeys).parameters["max_entries"].default)


def soak_warmup_seconds(rate: float) -> float:
    """When eventd's memory should have stopped growing at ``rate``.

    The webhook's dedup table keeps every (auditID, stage) for the dedup
    window, up to a fixed number of entries (N): until it is full, RSS grows
    by design.  Once full, every new key evicts the oldest, and under that
    churn the table's hash storage is rebuilt, which leaves a one-time step
    in RSS.  The step comes after about 3.2 N inserts: ``RecentKeys`` alone,
    fed 8 N keys, grows to 154 MB by 1.4 N, steps +16 MB at 3.2 N and is
    flat from there to 8 N; the 20-minute soak at 10,000/s stepped at 160 s
    (3.2 x 50 s).  So the steady state starts after 3.5 N inserts (N/rate
    seconds each, or the window if shorter), plus thirty seconds for the
    allocator to settle.  (This read 2 N until the soaks of 2026-12-05
    showed the step landing after that warm-up.)
    """
    window = AuditWebhookConfig().dedup_window_seconds
    return 3.5 * min(window, prefill_events() / rate) + 30.0


async def run(options: Options, workdir: Path, broker: KafkaBroker | None = None) -> dict[str, Any]:
    """Run the whole benchmark; return the report (``report_lines`` prints it).

    ``broker``: an already running broker (the smoke test's); otherwise one
    is started here and stopped at the end.
    """
    own_broker = broker is None
    if broker is None:
        broker = KafkaBroker(workdir / "tansu.log")
        broker.start()
    eventd: EventdProcess | None = None
    reader: AlertReader | None = None
    try:
        topic, bare_topic = f"{TOPIC}-{os.getpid()}-{time.time_ns()}", f"{BARE_TOPIC}-{time.time_ns()}"
        broker.create_topic(topic, options.partitions)
        broker.create_topic(bare_topic, options.partitions)
        started = time.perf_counter()
        workload = build_workload(options.templates, options.seed).expect(build_matcher(Config()))
        print(
            f"workload: {options.templates} batches of {workload.events_per_batch} events, "
            f"{workload.alerts_per_pass} alerts per pass, built in {time.perf_counter() - started:.1f}s",
            file=sys.stderr,
        )
        webhook_port = free_port()
        eventd = EventdProcess(
            workdir,
            eventd_config(webhook_port, broker.bootstrap, topic, workdir / "spool", options.event_loop),
        )
        eventd.wait_ready()
        if options.eventd_cpu is not None:
            pin(eventd.proc.pid, options.eventd_cpu)
        reader = AlertReader(broker.bootstrap, topic, keep_payloads=options.bare_messages)
        reader.start()
        url = f"http://127.0.0.1:{webhook_port}/k8s-audit"
        async with WebhookDriver(url, workload, connections=options.connections) as driver:
            bench = Bench(options, workload, eventd, driver, reader)
            return await _measure(bench, broker.bootstrap, bare_topic)
    finally:
        if reader is not None:
            reader.stop()
        if eventd is not None:
            eventd.stop()
        if own_broker:
            broker.stop()


async def _measure(bench: Bench, bootstrap: str, bare_topic: str) -> dict[str, Any]:
    """Warm-up, then the soak (on a process never overloaded, so that its
    memory says something), the prefill, the ladder, the bare producer."""
    options = bench.options
    rss_start, _ = memory_mb(bench.pid)
    preparation = [await bench.step("warm-up", min(options.rates), options.warmup_seconds)]
    soak = None
    in_table = 0  # entries in eventd's dedup table so far (roughly)
    if options.soak_minutes > 0:
        seconds = options.soak_minutes * 60
        soak = await bench.step("soak", options.soak_rate, seconds, rss_every=min(5.0, seconds / 10))
        in_table = int(options.soak_rate * min(seconds, AuditWebhookConfig().dedup_window_seconds))
        _progress(soak)
    missing = prefill_events() - in_table
    if options.prefill and missing > 0:
        prefill = await bench.step("prefill", PREFILL_RATE, missing / PREFILL_RATE)
        preparation.append(prefill)
        _progress(prefill)
    steps: list[StepResult] = []

    async def step(rate: int) -> StepResult:
        result = await bench.step(f"{rate:,}/s", rate, options.step_seconds)
        steps.append(result)
        _progress(result)
        return result

    for rate in options.rates:
        if not (await step(rate)).passed and not options.keep_going:
            break
    for _ in range(options.refine):
        rate = _between(steps)
        if rate is None:
            break
        await step(rate)
    bare = await bare_producer(bootstrap, bare_topic, bench.reader.payloads, options.bare_messages)
    bare["orjson_parse_us_per_event"] = orjson_parse_us_per_event(bench.workload)
    return summarise(options, rss_start, preparation, steps, bare, soak)


def _between(steps: list[StepResult]) -> int | None:
    """A rate halfway between the highest pass and the lowest failure above it
    (rounded to 1,000/s), or None when they are already within 10 %."""
    passed = [s.offered_eps for s in steps if s.passed]
    if not passed:
        return None
    low = max(passed)
    failed = [s.offered_eps for s in steps if not s.passed and s.offered_eps > low]
    if not failed or min(failed) <= low * 1.1:
        return None
    rate = int(round((low + min(failed)) / 2, -3))
    return rate if low < rate < min(failed) else None


def _progress(result: StepResult) -> None:
    print(
        f"{result.name}: achieved {result.achieved_eps:,.0f}/s, alerts {result.arrived_alerts}/"
        f"{result.expected_alerts}, p99 {result.latency_p99_ms} ms, "
        f"{'PASS' if result.passed else 'FAIL'}",
        file=sys.stderr,
    )


def summarise(
    options: Options,
    rss_start: float,
    preparation: list[StepResult],
    steps: list[StepResult],
    bare: dict[str, Any],
    soak: StepResult | None,
) -> dict[str, Any]:
    best = max((s for s in steps if s.passed), key=lambda s: s.offered_eps, default=None)
    at_rate = next((s for s in steps if s.offered_eps == LATENCY_RATE), None)
    ratio = None
    if best is not None and bare.get("msgs_per_s"):
        ratio = {
            "events_per_bare_msg": round(best.achieved_eps / bare["msgs_per_s"], 3),
            "alerts_per_bare_msg": round(best.alerts_per_s / bare["msgs_per_s"], 4),
            "eventd_cpu_us_per_event": round(best.cpu_s / best.events_accepted * 1e6, 1),
            "eventd_cpu_us_per_alert": round(best.cpu_s / max(1, best.arrived_alerts) * 1e6, 1),
            "orjson_parse_us_per_event": bare.get("orjson_parse_us_per_event"),
            "bare_cpu_us_per_msg": bare["cpu_us_per_msg"],
        }
    everything = [*preparation, *steps, *([soak] if soak else [])]
    report: dict[str, Any] = {
        "options": {k: v for k, v in asdict(options).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "caveat": CAVEAT,
            # The warm-up lasts a second or two: too short to say anything.
            "max_other_cpu_util": max(
                (s.other_cpu_util for s in everything if s.name != "warm-up"), default=0.0
            ),
        },
        "max_sustained_eps": best.offered_eps if best else 0.0,
        "max_sustained_achieved_eps": best.achieved_eps if best else None,
        "latency_at_5000": {
            "p50_ms": at_rate.latency_p50_ms if at_rate else None,
            "p99_ms": at_rate.latency_p99_ms if at_rate else None,
            "read_p99_ms": at_rate.read_p99_ms if at_rate else None,
            "step_passed": at_rate.passed if at_rate else False,
        },
        "rss_start_mb": round(rss_start, 1),
        "peak_rss_mb": max(s.peak_rss_mb for s in everything),
        "bare_producer": bare,
        "ratio_vs_bare": ratio,
        "preparation": [asdict(s) for s in preparation],
        "steps": [asdict(s) for s in steps],
        "soak": None,
    }
    if soak is not None:
        report["soak"] = _soak_summary(options, soak)
    report["targets"] = targets(report, at_rate)
    return report


def _soak_summary(options: Options, soak: StepResult) -> dict[str, Any]:
    warmup = soak_warmup_seconds(options.soak_rate)
    note = None
    if soak.seconds < warmup + 60:
        warmup = soak.seconds / 2
        note = "soak shorter than the dedup table's fill and turnover: growth until then is expected"
    samples = soak.rss_samples
    after = next((m for t, m in samples if t >= warmup), samples[-1][1] if samples else None)
    end = samples[-1][1] if samples else None
    steady = [(t, m) for t, m in samples if t >= warmup]
    half = next((m for t, m in samples if t >= soak.seconds / 2), None)
    return {
        **asdict(soak),
        "warmup_s": round(warmup, 1),
        "rss_after_warmup_mb": after,
        "rss_end_mb": end,
        "growth": round(end / after, 3) if after and end else None,
        "rss_slope_mb_per_min": None if len(steady) < 2 else round(_slope(steady) * 60, 2),
        # A second view, insensitive to where the warm-up ends: a one-time
        # step (the dedup table's first rebuild under churn) can land just
        # after it at some rates; a leak still shows in the second half.
        "rss_half_mb": half,
        "growth_second_half": round(end / half, 3) if half and end else None,
        "note": note,
    }


def targets(report: dict[str, Any], at_rate: StepResult | None) -> list[dict[str, Any]]:
    best = report["max_sustained_eps"]
    checks = [
        {
            "target": f"sustains >= {TARGET_EVENTS_PER_S:,} events/s with every alert delivered",
            "value": best,
            "limit": TARGET_EVENTS_PER_S,
            "pass": best >= TARGET_EVENTS_PER_S,
        }
    ]
    p99 = at_rate.latency_p99_ms if at_rate else None
    checks.append(
        {
            "target": f"p99 POST -> Kafka < {TARGET_P99_MS:.0f} ms at {LATENCY_RATE:,} events/s",
            "value": p99,
            "limit": TARGET_P99_MS,
            "pass": bool(at_rate and at_rate.passed and p99 is not None and p99 < TARGET_P99_MS),
        }
    )
    soak = report["soak"]
    if soak is not None:
        growth = soak["growth"]
        checks.append(
            {
                "target": f"RSS flat over the soak (end <= {TARGET_RSS_GROWTH:.2f}x after warm-up)",
                "value": growth,
                "limit": TARGET_RSS_GROWTH,
                "pass": bool(soak["passed"] and growth is not None and growth <= TARGET_RSS_GROWTH),
            }
        )
    return checks


# ----------------------------------------------------------------- reporting


def report_lines(report: dict[str, Any]) -> list[str]:
    header = (
        "step", "offered/s", "achieved/s", "drain s", "503s", "alerts", "missing", "p50 ms", "p99 ms",
        "read p99", "cpu %", "drv %", "brk %", "other %", "RSS MB", "result",
    )  # fmt: skip
    rows = []
    soak = [report["soak"]] if report["soak"] else []
    for s in [*report["steps"], *soak]:
        rows.append(
            (
                s["name"],
                f"{s['offered_eps']:,.0f}",
                f"{s['achieved_eps']:,.0f}",
                _cell(s["drain_s"], 2),
                str(s["retries_503"]),
                str(s["expected_alerts"]),
                str(s["missing_alerts"]),
                _cell(s["latency_p50_ms"]),
                _cell(s["latency_p99_ms"]),
                _cell(s["read_p99_ms"]),
                f"{s['cpu_util'] * 100:.0f}",
                f"{s['bench_cpu_util'] * 100:.0f}",
                f"{s['broker_cpu_util'] * 100:.0f}",
                f"{s['other_cpu_util'] * 100:.0f}",
                f"{s['rss_mb']:.0f}",
                _verdict(s),
            )
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in (header, *rows)
    ]
    bare, ratio = report["bare_producer"], report["ratio_vs_bare"]
    lines.append("")
    lines.append(
        f"highest sustained rate: {report['max_sustained_eps']:,.0f} events/s offered "
        f"(eventd matched {report['max_sustained_achieved_eps'] or 0:,.0f}/s), every alert delivered"
    )
    lat = report["latency_at_5000"]
    lines.append(
        f"latency at {LATENCY_RATE:,} events/s: p50 {_cell(lat['p50_ms'])} ms, p99 {_cell(lat['p99_ms'])} ms "
        f"(Kafka timestamp); p99 read back {_cell(lat['read_p99_ms'])} ms"
    )
    lines.append(f"eventd RSS: {report['rss_start_mb']:.0f} MB at start, peak {report['peak_rss_mb']:.0f} MB")
    for prep in report["preparation"]:
        if prep["name"] == "prefill":
            lines.append(
                f"prefill (dedup table filled before the ladder): {prep['events_accepted']:,} events "
                f"offered at {prep['offered_eps']:,.0f}/s, matched at {prep['achieved_eps']:,.0f}/s, "
                f"{prep['retries_503']} 503 retries, {prep['missing_alerts']} of "
                f"{prep['expected_alerts']} alerts missing"
            )
    if bare.get("msgs_per_s"):
        lines.append(
            f"bare aiokafka producer: {bare['msgs_per_s']:,.0f} msgs/s, {bare['cpu_us_per_msg']} CPU µs/msg "
            f"({bare['messages']:,} alert documents, acks=all)"
        )
    if ratio:
        lines.append(
            f"eventd vs bare producer: {ratio['events_per_bare_msg']:.2f} events/s per msg/s, "
            f"{ratio['alerts_per_bare_msg']:.4f} alerts/s per msg/s; eventd "
            f"{ratio['eventd_cpu_us_per_event']} CPU µs/event, "
            f"{ratio['eventd_cpu_us_per_alert']} CPU µs/alert; orjson parse of the same "
            f"EventList bodies: {ratio['orjson_parse_us_per_event']} µs/event"
        )
    if report["soak"]:
        s = report["soak"]
        lines.append(
            f"soak: {s['seconds'] / 60:.1f} min at {s['offered_eps']:,.0f}/s, "
            f"RSS {s['rss_after_warmup_mb']} MB after {s['warmup_s']:.0f}s warm-up, "
            f"{s['rss_end_mb']} MB at the end ({s['rss_slope_mb_per_min']} MB/min in between); "
            f"second half {s['rss_half_mb']} -> {s['rss_end_mb']} MB ({s['growth_second_half']}x)"
            + (f" ({s['note']})" if s["note"] else "")
        )
    lines.append(f"caveat: {report['machine']['cpus']} CPUs; {CAVEAT}")
    other = report["machine"]["max_other_cpu_util"]
    if other > BUSY_MACHINE:
        lines.append(
            f"WARNING: other processes used up to {other * 100:.0f}% CPU during a step: "
            "eventd got less CPU than the machine has; rerun on an idle machine"
        )
    for check in report["targets"]:
        verdict = "PASS" if check["pass"] else "FAIL"
        lines.append(f"{verdict}: {check['target']} (measured {check['value']}, limit {check['limit']})")
    return lines


def _cell(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _verdict(step: dict[str, Any]) -> str:
    if step["passed"]:
        return "PASS"
    return "FAIL (alerts missing)" if step["missing_alerts"] else "FAIL (behind)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small steps for a CI smoke run")
    ap.add_argument("--rates", help="comma-separated events/s per step (default 2000,5000,10000,20000,40000)")
    ap.add_argument("--step-seconds", type=float, help="duration of each step (default 10)")
    ap.add_argument("--connections", type=int, help="concurrent POSTs (default 8)")
    ap.add_argument("--templates", type=int, help="distinct 400-event batches (default 100)")
    ap.add_argument("--bare-messages", type=int, help="messages the bare producer sends (default 20000)")
    ap.add_argument("--soak-minutes", type=float, default=0.0, help="then run this long at --soak-rate")
    ap.add_argument("--soak-rate", type=int, default=LATENCY_RATE)
    ap.add_argument("--keep-going", action="store_true", help="run every step even after one fails")
    ap.add_argument("--refine", type=int, help="extra steps between the highest pass and the first failure")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--event-loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    ap.add_argument("--eventd-cpu", type=int, help="pin eventd to this CPU (one core)")
    ap.add_argument("--json", metavar="OUT", help="write the report as JSON here")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target FAILs")
    args = ap.parse_args(argv)
    options = QUICK if args.quick else Options()
    overrides: dict[str, Any] = {
        "soak_minutes": args.soak_minutes,
        "soak_rate": args.soak_rate,
        "keep_going": args.keep_going,
        "seed": args.seed,
        "event_loop": args.event_loop,
        "eventd_cpu": args.eventd_cpu,
    }
    if args.rates:
        overrides["rates"] = tuple(int(r) for r in args.rates.split(","))
    for name in ("step_seconds", "connections", "templates", "bare_messages", "refine"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    options = replace(options, **overrides)
    with tempfile.TemporaryDirectory(prefix="eventd-bench-e2e-") as tmp:
        report = asyncio.run(run(options, Path(tmp)))
    print("\n".join(report_lines(report)))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    if args.strict and not all(c["pass"] for c in report["targets"]):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
