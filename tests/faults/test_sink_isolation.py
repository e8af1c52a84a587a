"""One broken sink never holds up another sink, the inputs or the ops server
(issue 10, point 2), against real ``eventd run`` processes.

Each sink has its own bounded lane (``eventd/sinks/lane.py``).  What each
test breaks, and what must still hold:

* a stdout pipe nobody reads (a hung consumer): ``/healthz`` keeps
  answering, every webhook batch is acknowledged, Kafka gets every alert,
  stdout drops its oldest alerts and counts them (``queue_full``);
* a stdout pipe whose reader is gone (EPIPE): the same, with stdout's
  failed writes counted and nothing ever answered 503;
* an Alertmanager and a webhook receiver that accept connections and never
  answer: the pipeline does not slow down, Kafka gets every alert in time,
  their drops are counted and ``/readyz`` stays 200;
* the Kafka source feeding a file sink that cannot write: offsets are never
  committed past a record whose alerts are not in the file, and after a
  ``kill -9`` and a repair every alert ends up in the file;
* one webhook batch large enough to keep the matcher busy for seconds:
  ``/healthz`` answers all along;
* (expected to fail, a known bug) SIGTERM while stdout is not read: the
  stdout lane must not take the durable sinks' share of the grace period.

Configs use only keys that existed before the lanes (default buffers), so
on the old code each test fails on the fault it is about, not on a config
error.  Waits are bounded; no assertion is on how fast something was.
"""

from __future__ import annotations

import http.client
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from eventd.sinks.alertmanager import MAX_BATCH as ALERTMANAGER_MAX_BATCH
from tests.faults.accounting import (
    ALERT_NS,
    QUIET_NS,
    AuditBatch,
    Poster,
    Sent,
    assert_uuid_set,
    assert_webhook_accounting,
    audit_batch,
    audit_doc,
    batches,
    expected_uuids,
    http_status,
    post,
    read_kafka_alerts,
    scrape,
    send,
    start_webhook_to_kafka,
    uuid_names,
    wait_until,
    write_rules,
)
from tests.faults.blackhole import BlackHole
from tests.support.builders import audit_event
from tests.support.daemon_process import EventdProcess, free_port
from tests.support.kafka_broker import KafkaBroker, unique_name

pytestmark = pytest.mark.timeout(90)

#: Alerting events per webhook batch in the flood tests (one alert each, ~770 bytes).
FLOOD_BATCH = 200
#: Enough alerts to fill a 64 KiB pipe many times over *and* to overflow a
#: best-effort lane at its default bound (10,000 alerts), so drops must happen.
FLOOD_ALERTS = 12_000
#: How long a test waits for every batch of a flood to be acknowledged.  The
#: flood takes a few seconds here; the code before the lanes never finished
#: (a frozen loop, or about one second per alert past a 1,000-alert queue).
FLOOD_BOUND = 60.0
#: Client timeout of each ``/healthz`` and ``/readyz`` probe: a loop that
#: cannot answer within it is frozen, not busy.
PROBE_TIMEOUT = 3.0
#: Lane tasks of a best-effort HTTP sink (``max_concurrency``'s default): with
#: up to ``max_batch`` alerts each, what a black-holed receiver holds in flight.
HTTP_CONCURRENCY = 2
#: Most alerts a best-effort lane hands to one stdout write (``Sink.max_call``):
#: what a write blocked on a full pipe holds.
STDOUT_MAX_WRITE = 500


# ------------------------------------------------------------------ helpers


@dataclass
class Probe:
    """One ``GET`` of the ops server: when it was sent, when it was answered."""

    path: str
    sent: float
    answered: float
    status: int | None = None
    error: str = ""


@dataclass
class Prober:
    """Polls ops endpoints from a thread over a keep-alive connection, with a
    short client timeout, and records every answer and every failure.

    Keep-alive, because a loop that yields between slices of work serves a
    request on an open connection in fewer turns than one that must also
    accept: the probe measures whether the loop runs, not connection set-up.
    """

    port: int
    paths: tuple[str, ...] = ("/healthz",)
    timeout: float = PROBE_TIMEOUT
    interval: float = 0.01
    probes: list[Probe] = field(default_factory=list, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __enter__(self) -> Prober:
        self._thread = threading.Thread(target=self._run, name="ops-prober", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 2)

    @property
    def failures(self) -> list[Probe]:
        return [p for p in self.probes if p.status != 200]

    def answers(self, path: str, start: float = 0.0, end: float = float("inf")) -> list[Probe]:
        """Probes of ``path`` answered 200 between ``start`` and ``end`` (monotonic)."""
        return [p for p in self.probes if p.path == path and p.status == 200 and start <= p.answered <= end]

    def assert_all_answered(self, at_least: int = 1) -> None:
        assert not self.failures, (
            f"the ops server stopped answering within {self.timeout}s: "
            f"{[(p.path, p.status, p.error) for p in self.failures[:5]]}"
        )
        for path in self.paths:
            got = len(self.answers(path))
            assert got >= at_least, f"only {got} answers from {path}"

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            while not self._stop.is_set():
                for path in self.paths:
                    sent = time.monotonic()
                    try:
                        conn.request("GET", path)
                        response = conn.getresponse()
                        response.read()
                        self.probes.append(Probe(path, sent, time.monotonic(), response.status))
                    except (OSError, http.client.HTTPException) as err:
                        self.probes.append(Probe(path, sent, time.monotonic(), None, type(err).__name__))
                        conn.close()  # the next request reconnects
                self._stop.wait(self.interval)
        finally:
            conn.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    """A receiver that never answers (``tests/faults/blackhole.py``)."""
    with BlackHole() as hole:
        yield hole


def flood(url: str, tag: str) -> Poster:
    """A running poster sending ``FLOOD_ALERTS`` alerting events in batches of
    ``FLOOD_BATCH``; it gives up on a batch after ``FLOOD_BOUND``."""
    count = FLOOD_ALERTS // FLOOD_BATCH
    source = batches(tag, count=count, alerting=FLOOD_BATCH, quiet=0)
    return Poster(url, source, give_up_after=FLOOD_BOUND).start()


def wait_for_poster(poster: Poster, prober: Prober, proc: EventdProcess, *, timeout: float) -> Sent:
    """Wait (bounded) for every batch to be acknowledged; fail at once when a
    batch was not answered 2xx or the ops server stopped answering."""
    deadline = time.monotonic() + timeout
    try:
        while poster.running:
            refused = {status: n for status, n in poster.answers().items() if not 200 <= status < 300}
            assert not refused, f"batches answered other than 2xx (0: no answer): {refused}"
            prober.assert_all_answered(at_least=0)
            assert proc.proc.poll() is None, f"eventd exited: {proc.stderr()[-2000:]}"
            assert time.monotonic() < deadline, (
                f"only {len(poster.snapshot().batches)} batches acknowledged after {timeout}s; "
                f"answers so far: {poster.answers()}"
            )
            time.sleep(0.05)
    finally:
        poster.stop()  # on a failure: no new batches against a process about to be killed
    sent = poster.join(timeout=1)
    assert not poster.unacknowledged, f"{len(poster.unacknowledged)} batches never acknowledged"
    assert set(poster.statuses) == {200}, f"every attempt must be answered 200: {poster.statuses}"
    return sent


def sink_total(proc: EventdProcess, name: str, sink: str, **labels: str) -> float:
    return scrape(proc).value(name, sink=sink, **labels)


# -------------------------------------------------------------------- tests


def test_a_stdout_nobody_reads_freezes_nothing(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    """The old stdout sink wrote on the event loop: once the pipe was full,
    the whole process stopped, ``/healthz`` included."""
    topic = unique_name("faults-isolation-unread")
    kafka_broker.create_topic(topic)
    proc, url = start_webhook_to_kafka(
        tmp_path, kafka_broker.bootstrap, topic, tmp_path / "spool", stdout=True, stdout_mode="unread"
    )
    try:
        with Prober(proc.ops_port, ("/healthz",)) as prober:
            sent = wait_for_poster(flood(url, "unread"), prober, proc, timeout=FLOOD_BOUND)
            want = expected_uuids(sent.alerting)
            assert len(want) == FLOOD_ALERTS
            assert_uuid_set(read_kafka_alerts(kafka_broker.bootstrap, topic, want), want, "Kafka")
            prober.assert_all_answered(at_least=5)

        snap = scrape(proc)
        assert_webhook_accounting(snap, sent)
        # Far more than a pipe holds went to stdout: it must have dropped, and
        # every alert is delivered, dropped or queued, but for one write in flight.
        dropped = snap.value("eventd_sink_dropped_total", sink="stdout", reason="queue_full")
        assert dropped > 0
        assert snap.by("eventd_sink_dropped_total", "reason", sink="stdout") == {"queue_full": dropped}
        held = (
            dropped
            + snap.value("eventd_sink_queue_depth", sink="stdout")
            + snap.value("eventd_sink_deliveries_total", sink="stdout")
        )
        assert FLOOD_ALERTS - STDOUT_MAX_WRITE <= held <= FLOOD_ALERTS, f"stdout holds {held}"
        assert snap.value("eventd_sink_dropped_total", sink="kafka") == 0
        assert http_status(proc.url("/readyz")) == 200
    finally:
        proc.kill()


def test_sigterm_with_a_stdout_nobody_reads_still_closes_the_durable_sinks(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """A stdout nobody reads must not take the shutdown's time from the
    durable sinks either: the Kafka sink still gets its orderly close
    (flush the spool, stop the producer) within the grace period."""
    topic = unique_name("faults-isolation-term")
    kafka_broker.create_topic(topic)
    port = free_port()
    proc = EventdProcess(
        tmp_path,
        {
            "shutdown_grace_seconds": 4,
            "rules": [str(write_rules(tmp_path))],
            "sources": {"k8s_audit_webhook": {"listen": f"127.0.0.1:{port}"}},
            "sinks": {
                "stdout": {},
                "kafka": {
                    "bootstrap_servers": [kafka_broker.bootstrap],
                    "topic": topic,
                    "spool_dir": str(tmp_path / "spool"),
                },
            },
        },
        stdout="unread",
    )
    try:
        proc.wait_ready()
        sent = send(f"http://127.0.0.1:{port}/k8s-audit", batches("term", count=10, alerting=200, quiet=0))
        want = expected_uuids(sent.alerting)
        assert_uuid_set(read_kafka_alerts(kafka_broker.bootstrap, topic, want), want, "Kafka")
        proc.signal(signal.SIGTERM)
        proc.proc.wait(timeout=30)
        late = [line for line in proc.logs() if line.get("event") == "shutdown_grace_exceeded"]
        starved = [line["step"] for line in late if line.get("step") in ("sources", "sink:kafka")]
        assert not starved, f"shutdown steps left without time by the stdout lane: {starved}"
    finally:
        proc.kill()


def test_a_closed_stdout_costs_only_stdout(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    """The old code failed every alerting batch on EPIPE: each was answered 503
    and Kafka got nothing."""
    topic = unique_name("faults-isolation-epipe")
    kafka_broker.create_topic(topic)
    proc, url = start_webhook_to_kafka(
        tmp_path, kafka_broker.bootstrap, topic, tmp_path / "spool", stdout=True, stdout_mode="closed"
    )
    try:
        with Prober(proc.ops_port, ("/healthz", "/readyz")) as prober:
            source = batches("epipe", count=30, alerting=10, quiet=2, invalid=1)
            poster = Poster(url, source, give_up_after=20).start()
            sent = wait_for_poster(poster, prober, proc, timeout=45)
            want = expected_uuids(sent.alerting)
            assert_uuid_set(read_kafka_alerts(kafka_broker.bootstrap, topic, want), want, "Kafka")
            # Every stdout alert failed (or was dropped before it could), and is counted.
            wait_until(
                lambda: (
                    sum(scrape(proc).by("eventd_sink_dropped_total", "reason", sink="stdout").values())
                    == len(want)
                ),
                timeout=15,
                what="every stdout alert counted as dropped",
                proc=proc,
            )
            wait_until(
                lambda: sink_total(proc, "eventd_sink_up", "stdout") == 0,
                timeout=10,
                what="eventd_sink_up{sink=stdout} to turn 0",
                proc=proc,
            )
            prober.assert_all_answered(at_least=3)

        snap = scrape(proc)
        assert_webhook_accounting(snap, sent)
        assert snap.value("eventd_sink_failures_total", sink="stdout") >= 1
        assert snap.value("eventd_sink_deliveries_total", sink="stdout") == 0
        assert snap.value("eventd_sink_dropped_total", sink="stdout", reason="io_error") >= 1
        assert snap.value("eventd_sink_dropped_total", sink="kafka") == 0
        assert snap.value("eventd_sink_up", sink="kafka") == 1
        assert http_status(proc.url("/readyz")) == 200
    finally:
        proc.kill()


def test_black_holed_receivers_do_not_slow_the_pipeline(
    kafka_broker: KafkaBroker, tmp_path: Path, black_hole: BlackHole
) -> None:
    """The old HTTP sinks made the pipeline wait up to a second per alert once
    their 1,000-alert queue was full: a receiver that never answers slowed
    every input and every other sink to about one alert per second."""
    topic = unique_name("faults-isolation-blackhole")
    kafka_broker.create_topic(topic)
    receivers = {
        # Everything goes to both: no priority filter, no dedup.
        "alertmanager": {"url": black_hole.url, "min_priority": "debug", "dedup": None},
        "webhook": {"url": f"{black_hole.url}/hook", "dedup": None},
    }
    proc, url = start_webhook_to_kafka(
        tmp_path, kafka_broker.bootstrap, topic, tmp_path / "spool", other_sinks=receivers
    )
    try:
        with Prober(proc.ops_port, ("/healthz", "/readyz")) as prober:
            sent = wait_for_poster(flood(url, "blackhole"), prober, proc, timeout=FLOOD_BOUND)
            want = expected_uuids(sent.alerting)
            assert len(want) == FLOOD_ALERTS
            assert_uuid_set(read_kafka_alerts(kafka_broker.bootstrap, topic, want), want, "Kafka")
            prober.assert_all_answered(at_least=5)

        assert black_hole.connections >= 1, "eventd never tried the receivers"
        snap = scrape(proc)
        assert_webhook_accounting(snap, sent)
        assert snap.value("eventd_sink_dropped_total", sink="kafka") == 0
        in_flight = {"alertmanager": HTTP_CONCURRENCY * ALERTMANAGER_MAX_BATCH, "webhook": HTTP_CONCURRENCY}
        for sink, most_in_flight in in_flight.items():
            assert snap.value("eventd_sink_deliveries_total", sink=sink) == 0
            assert snap.value("eventd_sink_dropped_total", sink=sink, reason="queue_full") > 0, sink
            # Every alert is dropped (counted) or queued, but for the requests hanging.
            held = snap.value("eventd_sink_dropped_total", sink=sink) + snap.value(
                "eventd_sink_queue_depth", sink=sink
            )
            assert FLOOD_ALERTS - most_in_flight <= held <= FLOOD_ALERTS, f"{sink}: {held}"
        assert http_status(proc.url("/readyz")) == 200
    finally:
        proc.kill()


@dataclass(frozen=True)
class Produced:
    """An input record: where it landed and the audit batch it carries."""

    partition: int
    offset: int
    batch: AuditBatch


def produce(bootstrap: str, topic: str, records: list[tuple[int, AuditBatch]]) -> list[Produced]:
    """Write each batch as one record to its partition; where each one landed."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False})
    landed: list[Produced] = []
    errors: list[str] = []

    def report(batch: AuditBatch) -> Any:
        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                landed.append(Produced(msg.partition(), msg.offset(), batch))

        return on_delivery

    for partition, batch in records:
        producer.produce(topic, batch.body(), partition=partition, on_delivery=report(batch))
    assert producer.flush(15) == 0, "records not delivered to the broker"
    assert not errors, errors
    return landed


def file_alerts(path: Path) -> list[dict[str, Any]]:
    """The alerts in the file sink's output (whole lines only)."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [orjson.loads(line) for line in data.split(b"\n")[:-1] if line]


def assert_commits_covered(
    broker: KafkaBroker, group: str, topic: str, records: list[Produced], alerts_file: Path, partitions: int
) -> dict[int, int | None]:
    """No committed offset passes a record whose alerts are not in the file.

    Commits are read first, then the file: a commit made before the read
    must only cover alerts written before it."""
    committed = broker.committed(group, topic, partitions)
    in_file = {alert["uuid"] for alert in file_alerts(alerts_file)}
    for record in records:
        upto = committed.get(record.partition)
        if upto is not None and record.offset < upto:
            missing = expected_uuids(record.batch.alerting) - in_file
            assert not missing, (
                f"offset {upto} committed on partition {record.partition} past record "
                f"{record.offset}, whose {len(missing)} alerts are not in the file"
            )
    return committed


def test_kafka_source_commits_nothing_a_failing_durable_sink_has_not_written(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """The old file sink dropped alerts it could not write (``io_error``) and
    the batch counted as done, so the Kafka source committed its offsets: the
    alerts were gone for good."""
    partitions = 2
    topic = unique_name("faults-isolation-in")
    group = unique_name("faults-isolation-group")
    kafka_broker.create_topic(topic, partitions)
    out = tmp_path / "out"
    out.mkdir()
    aside = tmp_path / "out.aside"
    alerts_file = out / "alerts.jsonl"
    rules = write_rules(tmp_path)

    def start(name: str) -> EventdProcess:
        run_dir = tmp_path / name
        run_dir.mkdir()
        config = {
            "rules": [str(rules)],
            "sources": {
                "kafka": {
                    "bootstrap_servers": [kafka_broker.bootstrap],
                    "topics": [topic],
                    "group_id": group,
                    "session_timeout_seconds": 2,
                }
            },
            "sinks": {"file": {"path": str(alerts_file)}},
        }
        return EventdProcess(run_dir, config).ready_or_killed()

    first = start("first")
    try:
        # The file becomes unwritable: its directory is replaced by a regular file.
        out.rename(aside)
        out.write_text("not a directory\n")
        sources = [audit_batch("kafka-in", i, alerting=3, quiet=2) for i in range(20)]
        records = produce(kafka_broker.bootstrap, topic, [(i % partitions, b) for i, b in enumerate(sources)])
        events = sum(len(b.items) for b in sources)
        wait_until(
            lambda: (
                scrape(first).value("eventd_events_received_total", source="kafka") == events
                and scrape(first).value("eventd_sink_failures_total", sink="file") >= 2
            ),
            timeout=30,
            what="every record matched while the file sink fails",
            proc=first,
        )
        # Let it run: the old code would commit here, the new one must not.
        for _ in range(6):
            assert_commits_covered(kafka_broker, group, topic, records, alerts_file, partitions)
            time.sleep(0.5)
        assert http_status(first.url("/readyz")) == 503, "a durable sink that cannot write is not ready"
        assert scrape(first).value("eventd_sink_dropped_total", sink="file") == 0
    finally:
        first.kill()  # SIGKILL: what the file sink still held is gone with the process
    assert_commits_covered(kafka_broker, group, topic, records, alerts_file, partitions)

    out.unlink()
    aside.rename(out)
    second = start("second")
    try:
        names = uuid_names(doc for record in records for doc in record.batch.alerting)
        wait_until(
            lambda: set(names) <= {alert["uuid"] for alert in file_alerts(alerts_file)},
            timeout=30,
            what="every alert in the file after the restart",
            proc=second,
        )
        assert_uuid_set(file_alerts(alerts_file), names, "the alert file")
        ends = {p: max(r.offset for r in records if r.partition == p) + 1 for p in range(partitions)}
        wait_until(
            lambda: (
                assert_commits_covered(kafka_broker, group, topic, records, alerts_file, partitions) == ends
            ),
            timeout=20,
            what=f"the group to commit {ends}",
            proc=second,
        )
        assert second.stop() == 0
    finally:
        second.kill()


#: Rules that never match but are evaluated on every event, so that matching
#: one large batch keeps the pipeline busy for seconds.
BUSY_RULES = 300
BIG_BATCH_EVENTS = 10_000
BIG_BATCH_ALERTS = 100


def busy_rules(directory: Path) -> Path:
    path = directory / "busy_rules.yaml"
    path.write_text(
        "".join(
            f"""
- rule: Busy rule {i}
  desc: never matches, always evaluated
  condition: ka.target.name contains "never-{i}" and ka.user.name glob "*nobody-{i}*"
  output: never %ka.target.name
  priority: INFO
  source: k8s_audit
"""
            for i in range(BUSY_RULES)
        )
    )
    return path


def test_a_long_batch_does_not_starve_the_ops_server(tmp_path: Path) -> None:
    """The old pipeline matched a whole batch without yielding: a large
    ``EventList`` kept ``/healthz`` from answering until it was done."""
    port = free_port()
    rules = [str(write_rules(tmp_path)), str(busy_rules(tmp_path))]
    proc = EventdProcess(
        tmp_path,
        {
            "rules": rules,
            "sources": {"k8s_audit_webhook": {"listen": f"127.0.0.1:{port}"}},
            "sinks": {"stdout": {}},
        },
    )
    url = f"http://127.0.0.1:{port}/k8s-audit"
    try:
        proc.wait_ready()
        warm = audit_batch("warm", 0, alerting=1, quiet=1)
        assert post(url, warm.body())[0] == 200
        alerting = [audit_doc(f"big-a{n:06d}", ALERT_NS) for n in range(BIG_BATCH_ALERTS)]
        quiet = [
            audit_event(
                verb="get", resource="configmaps", namespace=QUIET_NS, name=f"cm-{n}", auditID=f"big-q{n:06d}"
            )
            for n in range(BIG_BATCH_EVENTS - BIG_BATCH_ALERTS)
        ]
        body = orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": alerting + quiet})

        with Prober(proc.ops_port, ("/healthz",)) as prober:
            time.sleep(0.2)
            started = time.monotonic()
            status, answer = post(url, body, timeout=60)
            finished = time.monotonic()
            time.sleep(0.2)
        assert status == 200, status
        assert answer.get("accepted") == BIG_BATCH_EVENTS, answer
        prober.assert_all_answered(at_least=1)
        # Answers all along the batch, not only before and after it: some in
        # each middle quarter of the time the request was open.
        span = finished - started
        quarters = [
            len(prober.answers("/healthz", started + q * span / 4, started + (q + 1) * span / 4))
            for q in range(4)
        ]
        assert quarters[1] >= 1 and quarters[2] >= 1 and sum(quarters) >= 6, (
            f"/healthz answers per quarter of the {span:.1f}s batch: {quarters}"
        )

        want = expected_uuids(alerting) | expected_uuids(warm.alerting)
        wait_until(lambda: len(proc.alerts) >= len(want), timeout=15, what="alerts on stdout", proc=proc)
        assert_uuid_set(proc.alerts, want, "stdout")
        snap = scrape(proc)
        assert snap.value("eventd_events_received_total", source="k8s_audit_webhook") == BIG_BATCH_EVENTS + 2
        assert proc.stop() == 0
    finally:
        proc.kill()
