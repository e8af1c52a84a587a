"""Exact accounting for the fault-injection suite.

Every fault test sends deterministic audit events whose fate is known in
advance, injects a fault, and then checks that eventd accounted for every
single one, from two independent sides:

* the metrics (one ``/metrics`` snapshot): each event in a batch answered
  2xx was received or refused with a reason; each received event matched
  or did not; the alert counters say exactly how many alerts were raised;
* the alerts themselves, read where they were delivered (Kafka, stdout):
  after removing the copies that at-least-once delivery allows (same
  ``uuid``, and then they must be the same alert), the set of uuids is
  exactly the expected set.  Expected uuids come from eventd's public
  ``alert_uuid`` applied to the documents the test built.

The load driver (``Poster``) behaves like kube-apiserver's webhook backend:
it retries every batch that was not answered 2xx (503, a reset, a refused
connection while eventd restarts), so a batch counts as sent only once
eventd acknowledged it.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from eventd.alerts import alert_uuid
from eventd.events.model import K8S_AUDIT, Event
from tests.support.builders import audit_event, pod
from tests.support.daemon_process import EventdProcess, StdoutMode, free_port
from tests.support.kafka_broker import unique_name

WEBHOOK = "k8s_audit_webhook"
#: The one rule of ``RULES``: pod creates in ``ALERT_NS`` alert, those in ``QUIET_NS`` do not.
RULE = "Fault pod created"
ALERT_NS = "fault-alert"
QUIET_NS = "fault-quiet"
RULES = f"""
- rule: {RULE}
  desc: a pod was created in the namespace the fault tests watch
  condition: ka.verb = create and ka.target.resource = pods and ka.target.namespace = {ALERT_NS}
  output: pod %ka.target.name created in %ka.target.namespace (audit %ka.auditid)
  priority: WARNING
  source: k8s_audit
"""
#: Why an event without ``stageTimestamp`` is refused (``events_rejected_total{reason}``).
INVALID_REASON = "timestamp"
IMAGE = "registry.example.com/team/app:1.0"


def write_rules(directory: Path) -> Path:
    path = directory / "fault_rules.yaml"
    path.write_text(RULES)
    return path


# ------------------------------------------------------------------ events


def audit_doc(audit_id: str, namespace: str) -> dict[str, Any]:
    """A pod create; equal-length ``audit_id``s give equal-size alerts."""
    return audit_event(request=pod(IMAGE), namespace=namespace, auditID=audit_id)


def invalid_doc(audit_id: str) -> dict[str, Any]:
    """An audit event eventd must refuse (no ``stageTimestamp``)."""
    doc = audit_doc(audit_id, ALERT_NS)
    del doc["stageTimestamp"]
    return doc


@dataclass(frozen=True)
class AuditBatch:
    """One webhook POST: ``items`` in order; ``alerting`` must raise ``RULE``."""

    items: tuple[dict[str, Any], ...]
    alerting: tuple[dict[str, Any], ...]
    valid: int
    invalid: int

    def body(self) -> bytes:
        return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": list(self.items)})


def audit_batch(tag: str, index: int, *, alerting: int = 4, quiet: int = 4, invalid: int = 0) -> AuditBatch:
    """Deterministic, unique auditIDs ``<tag>-<index>-<a|q|x><n>`` of equal length per tag."""
    prefix = f"{tag}-{index:06d}"
    hits = tuple(audit_doc(f"{prefix}-a{n:04d}", ALERT_NS) for n in range(alerting))
    misses = tuple(audit_doc(f"{prefix}-q{n:04d}", QUIET_NS) for n in range(quiet))
    bad = tuple(invalid_doc(f"{prefix}-x{n:04d}") for n in range(invalid))
    return AuditBatch(hits + misses + bad, hits, alerting + quiet, invalid)


def batches(tag: str, *, count: int | None = None, **sizes: int) -> Iterator[AuditBatch]:
    """``count`` batches (endless without), numbered from 0."""
    index = 0
    while count is None or index < count:
        yield audit_batch(tag, index, **sizes)
        index += 1


def expected_uuids(docs: Iterable[dict[str, Any]], rule: str = RULE) -> set[str]:
    return set(uuid_names(docs, rule))


def uuid_names(docs: Iterable[dict[str, Any]], rule: str = RULE) -> dict[str, str]:
    """Expected alert uuid -> the auditID it is for (to name what is missing)."""
    return {alert_uuid(rule, Event(K8S_AUDIT, doc)): doc["auditID"] for doc in docs}


# ------------------------------------------------------------ load driver


def post(url: str, body: bytes, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """POST JSON; ``(status, answer)``, status 0 when there was no answer at all."""
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, orjson.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, {}
    except (OSError, http.client.HTTPException):  # refused, reset, cut mid-answer, timed out
        return 0, {}


@dataclass
class Sent:
    """What eventd acknowledged (2xx), summed over batches."""

    batches: list[AuditBatch] = field(default_factory=list)
    valid: int = 0
    invalid: int = 0
    #: From eventd's answers: events it took, and (auditID, stage) repeats it dropped.
    accepted: int = 0
    duplicates: int = 0

    def add(self, batch: AuditBatch, answer: dict[str, Any]) -> None:
        self.batches.append(batch)
        self.valid += batch.valid
        self.invalid += batch.invalid
        self.accepted += int(answer.get("accepted", 0))
        self.duplicates += int(answer.get("duplicates", 0))

    @property
    def alerting(self) -> list[dict[str, Any]]:
        return [doc for batch in self.batches for doc in batch.alerting]

    def __add__(self, other: Sent) -> Sent:
        return Sent(
            self.batches + other.batches,
            self.valid + other.valid,
            self.invalid + other.invalid,
            self.accepted + other.accepted,
            self.duplicates + other.duplicates,
        )


class Poster:
    """kube-apiserver's webhook backend in a thread: posts ``source`` batches in
    order and retries each one until it is answered 2xx.

    ``stop()`` stops taking new batches; the batch in progress is still
    retried until acknowledged (or ``give_up_after`` seconds), so that after
    ``join()`` every batch eventd may have seen is either in ``sent`` or was
    never answered 2xx and is reported in ``unacknowledged``.
    """

    def __init__(
        self,
        url: str,
        source: Iterable[AuditBatch],
        *,
        retry_delay: float = 0.05,
        give_up_after: float = 30.0,
        pause: float = 0.0,
    ) -> None:
        self.url = url
        self._source = iter(source)
        self._retry_delay = retry_delay
        self._give_up_after = give_up_after
        self._pause = pause
        self._stop = threading.Event()
        self._lock = threading.Lock()
        #: Held for a whole attempt, so ``reset`` never splits one.
        self._attempt = threading.Lock()
        self.sent = Sent()
        #: Attempts by answer status (0: no answer), retries included.
        self.statuses: dict[int, int] = {}
        self.unacknowledged: list[AuditBatch] = []
        self._thread = threading.Thread(target=self._run, name="poster", daemon=True)

    def start(self) -> Poster:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = 60.0) -> Sent:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "poster did not finish"
        return self.sent

    def finish(self, timeout: float = 60.0) -> Sent:
        self.stop()
        return self.join(timeout)

    @property
    def running(self) -> bool:
        """Still posting, or retrying the batch in progress."""
        return self._thread.is_alive()

    def answers(self) -> dict[int, int]:
        """A copy of ``statuses`` that is safe to take while the poster runs."""
        with self._lock:
            return dict(self.statuses)

    def snapshot(self) -> Sent:
        """A consistent copy of ``sent`` while the poster runs."""
        with self._lock:
            return self.sent + Sent()

    def reset(self) -> Sent:
        """Start counting afresh; the old count.  Waits for the attempt in
        flight, so after a restart of eventd every later acknowledgement is
        the new process's."""
        with self._attempt, self._lock:
            old, self.sent = self.sent, Sent()
            return old

    def _run(self) -> None:
        for batch in self._source:
            if self._stop.is_set():
                return
            self._deliver(batch)
            if self._pause:
                self._stop.wait(self._pause)

    def _deliver(self, batch: AuditBatch) -> None:
        body = batch.body()
        deadline = time.monotonic() + self._give_up_after
        while True:
            with self._attempt:
                status, answer = post(self.url, body)
                with self._lock:
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    if 200 <= status < 300:
                        self.sent.add(batch, answer)
                        return
            if time.monotonic() > deadline:
                self.unacknowledged.append(batch)
                return
            time.sleep(self._retry_delay)


def send(url: str, source: Iterable[AuditBatch]) -> Sent:
    """Post every batch of a finite ``source`` in order, each until acknowledged."""
    poster = Poster(url, source).start()
    sent = poster.join()
    assert not poster.unacknowledged, f"{len(poster.unacknowledged)} batches never acknowledged"
    return sent


# ----------------------------------------------------------------- metrics

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class MetricsSnapshot:
    """One scrape of ``/metrics``, so that related counters are read together."""

    def __init__(self, text: str) -> None:
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            m = _SAMPLE.match(line)
            if m is not None:
                labels = dict(_LABEL.findall(m.group(2) or ""))
                self.samples.append((m.group(1), labels, float(m.group(3))))

    def value(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s series that carry all of ``labels``."""
        return sum(
            v for n, have, v in self.samples if n == name and all(have.get(k) == w for k, w in labels.items())
        )

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """``name``'s values keyed by ``label`` (non-zero series only)."""
        out: dict[str, float] = {}
        for n, have, v in self.samples:
            if n == name and v and all(have.get(k) == w for k, w in labels.items()):
                out[have.get(label, "")] = out.get(have.get(label, ""), 0.0) + v
        return out


def scrape(proc: EventdProcess) -> MetricsSnapshot:
    return MetricsSnapshot(proc.metrics())


def metric(proc: EventdProcess, name: str, **labels: str) -> float:
    return scrape(proc).value(name, **labels)


def assert_source_accounting(
    snap: MetricsSnapshot,
    source: str,
    *,
    received: int,
    matched: int,
    rejected: dict[str, int] | None = None,
    duplicates: int = 0,
) -> None:
    """Every event of ``source`` is received or refused with a reason; every
    received one matched or not: the exact counts, nothing else."""
    got = {
        "received": snap.value("eventd_events_received_total", source=source),
        "matched": snap.value("eventd_events_matched_total", source=source),
        "rejected": snap.by("eventd_events_rejected_total", "reason", source=source),
        "dropped": snap.by("eventd_events_dropped_total", "reason", source=source),
    }
    want = {
        "received": received,
        "matched": matched,
        "rejected": {k: v for k, v in (rejected or {}).items() if v},
        "dropped": {"duplicate": duplicates} if duplicates else {},
    }
    assert got == want, f"accounting of {source}: got {got}, want {want}"


def assert_webhook_accounting(snap: MetricsSnapshot, sent: Sent) -> None:
    """The webhook's counters against what the load driver got acknowledged."""
    answered = sent.accepted + sent.duplicates
    assert answered == sent.valid, f"eventd's answers count {answered} events, the batches {sent.valid}"
    assert_source_accounting(
        snap,
        WEBHOOK,
        received=sent.accepted,
        matched=len(expected_uuids(sent.alerting)),
        rejected={INVALID_REASON: sent.invalid},
        duplicates=sent.duplicates,
    )


# ------------------------------------------------------------------ alerts


class AlertsMissing(AssertionError):
    """Expected alerts were not delivered (or unexpected ones were): the
    failure a fault test exists to catch, told apart from set-up timeouts."""


def unique_alerts(alerts: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Alerts by uuid; copies sharing a uuid must be the same alert."""
    found: dict[str, dict[str, Any]] = {}
    for alert in alerts:
        first = found.setdefault(alert["uuid"], alert)
        if first is not alert:
            assert _identity(first) == _identity(alert), f"two alerts share uuid {alert['uuid']}"
    return found


def _identity(alert: dict[str, Any]) -> tuple[Any, ...]:
    return alert["rule"], alert["output"], alert["time"], (alert.get("eventd") or {}).get("audit_id")


def assert_uuid_set(
    alerts: Iterable[dict[str, Any]], expected: set[str] | dict[str, str], where: str
) -> dict[str, dict[str, Any]]:
    """After dedup by uuid, exactly ``expected`` (with a readable difference;
    pass ``uuid_names`` to see which auditIDs are missing)."""
    unique = unique_alerts(alerts)
    missing, extra = set(expected) - unique.keys(), unique.keys() - set(expected)
    if missing or extra:
        names = sorted(expected[u] for u in missing) if isinstance(expected, dict) else []
        extra_ids = sorted(str((unique[u].get("eventd") or {}).get("audit_id")) for u in extra)
        raise AlertsMissing(
            f"{where}: {len(missing)} of {len(expected)} expected alerts missing {_sample(names)}, "
            f"{len(extra)} unexpected {_sample(extra_ids)}"
        )
    return unique


def _sample(names: list[str], shown: int = 12) -> str:
    if len(names) <= shown:
        return str(names)
    return f"{names[: shown // 2]} ... {names[-shown // 2 :]}"


def read_kafka_alerts(
    bootstrap: str,
    topic: str,
    want: set[str],
    *,
    timeout: float = 30.0,
    quiet: float = 0.5,
    idle: float | None = None,
) -> list[dict[str, Any]]:
    """Every alert in ``topic`` from the beginning, copies included: read until
    every uuid in ``want`` was seen and then nothing new came for ``quiet``
    seconds (so extra copies or strays show up too), or ``timeout``.  When
    the producer is known to be done (its spool is empty), ``idle`` seconds
    without a new message end the read early even if some are missing.

    An independent reader: partitions assigned directly, no group joined.
    """
    group = unique_name("faults-reader")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    deadline = time.monotonic() + timeout
    try:
        while True:
            meta = consumer.list_topics(topic, timeout=5).topics.get(topic)
            if meta is not None and meta.error is None and meta.partitions:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} not found")
            time.sleep(0.1)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        alerts: list[dict[str, Any]] = []
        seen: set[str] = set()
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            silent = time.monotonic() - last_new
            if (want <= seen and silent > quiet) or (idle is not None and silent > idle):
                break
            msg = consumer.poll(0.05)
            if msg is None:
                continue
            if msg.error() is not None:
                raise KafkaException(msg.error())
            alert = orjson.loads(msg.value())
            alerts.append(alert)
            seen.add(alert["uuid"])
            last_new = time.monotonic()
        return alerts
    finally:
        consumer.close()


# ------------------------------------------------------------------- misc


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, what: str, proc: EventdProcess | None = None
) -> None:
    """Poll ``predicate`` (short sleeps); fail with eventd's stderr tail if given."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.proc.poll() is not None:
            code, tail = proc.proc.returncode, proc.stderr()[-3000:]
            raise AssertionError(f"eventd exited ({code}) waiting for {what}: {tail}")
        if time.monotonic() > deadline:
            tail = proc.stderr()[-3000:] if proc is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
        time.sleep(0.05)


def wait_still(count: Callable[[], float], *, still_seconds: float, timeout: float, what: str) -> float:
    """``count()`` once it has stood still for ``still_seconds``: an input
    that stopped reading (its events counter no longer moves)."""
    seen = count()
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(still_seconds)
        now = count()
        if now == seen:
            return seen
        assert time.monotonic() < deadline, f"{what} never stopped reading"
        seen = now


def assert_paused_by_a_full_spool(proc: EventdProcess, spool_max_bytes: int) -> None:
    """What a full spool must look like under the default ``block`` policy:
    within its bound, nothing dropped, not ready, still alive."""
    snap = scrape(proc)
    assert snap.value("eventd_spool_bytes", sink="kafka") <= spool_max_bytes
    assert snap.by("eventd_sink_dropped_total", "reason") == {}, "a full spool must pause, not drop"
    assert http_status(proc.url("/readyz")) == 503, "a durable sink that takes nothing is not ready"
    assert http_status(proc.url("/healthz")) == 200


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (``VmRSS`` in ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def start_webhook_to_kafka(
    tmp_path: Path,
    bootstrap: str,
    topic: str,
    spool_dir: Path,
    *,
    stdout: bool = False,
    stdout_mode: StdoutMode = "read",
    other_sinks: dict[str, object] | None = None,
    log_level: str = "info",
    **kafka: object,
) -> tuple[EventdProcess, str]:
    """A ready eventd with the webhook in and Kafka (and maybe stdout, read
    or not as ``stdout_mode`` says, and ``other_sinks``) out, and the
    webhook's URL; killed if it never becomes ready."""
    port = free_port()
    sinks: dict[str, object] = {"stdout": {}} if stdout else {}
    sinks.update(other_sinks or {})
    sinks["kafka"] = {
        "bootstrap_servers": [bootstrap],
        "topic": topic,
        "spool_dir": str(spool_dir),
        "request_timeout_seconds": 3,
        **kafka,
    }
    proc = EventdProcess(
        tmp_path,
        {
            "log_level": log_level,
            "rules": [str(write_rules(tmp_path))],
            "sources": {"k8s_audit_webhook": {"listen": f"127.0.0.1:{port}"}},
            "sinks": sinks,
        },
        stdout=stdout_mode,
    ).ready_or_killed()
    return proc, f"http://127.0.0.1:{port}/k8s-audit"


def report(scenario: str, **figures: object) -> None:
    """Print one line of what a fault scenario measured (``pytest -s`` shows
    it); the README's reliability section quotes these lines."""
    print(f"FIGURES {scenario}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


def start_kafka_to_kafka(
    run_dir: Path,
    source_bootstrap: str,
    topic: str,
    group: str,
    sink_bootstrap: str,
    alert_topic: str,
    **source: object,
) -> EventdProcess:
    """An eventd consuming ``topic`` in ``group`` (``source`` adds settings of
    ``sources.kafka``) and producing alerts to ``alert_topic`` through a spool
    in ``run_dir``; not waited for (a group member is ready when it joined)."""
    run_dir.mkdir(parents=True)
    return EventdProcess(
        run_dir,
        {
            "rules": [str(write_rules(run_dir))],
            "sources": {
                "kafka": {
                    "bootstrap_servers": [source_bootstrap],
                    "topics": [topic],
                    "group_id": group,
                    **source,
                }
            },
            "sinks": {
                "kafka": {
                    "bootstrap_servers": [sink_bootstrap],
                    "topic": alert_topic,
                    "spool_dir": str(run_dir / "spool"),
                    "request_timeout_seconds": 2,
                }
            },
        },
    )
