"""Load driver for the end-to-end benchmark: the kube-apiserver's audit webhook, imitated.

The API server posts ``EventList`` batches of up to 400 events, several at a
time from their own goroutines, and retries every non-2xx answer.  The driver
does the same over N keep-alive connections, at a target rate in events/s, so
the daemon meets the traffic shape it meets in production.

What makes the benchmark checkable is the workload (``Workload``):

* **Fresh events forever from a fixed corpus.**  eventd drops events whose
  ``(auditID, stage)`` it saw within its dedup window, so replaying a corpus
  would measure the dedup table, not the pipeline.  Every audit ID in the
  pre-serialised batches starts with ``00000000``; each pass over the
  corpus (an *epoch*) replaces that prefix with the epoch number, a
  ``bytes.replace`` on the body instead of a re-serialisation, so the driver
  costs little CPU next to the daemon it measures.
* **A known set of alerts.**  Each template batch carries one *marker* event,
  a pod or Deployment create whose main container image comes from
  ``MARKER_IMAGE``, a registry no allow-list trusts; ``MARKER_RULE`` must
  alert on it.  This needs nothing from eventd to be known.  Beyond the
  markers, ``Workload.expect`` lists every alert the rules raise on each
  template, computed in-process with eventd's own matcher over the same
  decoded batch.  The daemon must then *deliver* all of them.
* **Send times by batch.**  An alert carries its event's audit ID, and the
  audit ID gives the epoch and template, hence the sequence number of the
  POST that carried it and when that POST first went out (``BatchRecord``).
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench.corpus import DEFAULT_POD_RATIO, generate
from eventd.engine.matcher import Matcher
from eventd.events.audit import audit_events

#: The API server's ``--audit-webhook-batch-max-size``.
BATCH_SIZE = 400
#: Every template audit ID starts with this; the epoch number replaces it.
PLACEHOLDER = "00000000"
_ID_FIELD = b'"auditID":"'
#: An image no allow-list trusts: a marker event must raise ``MARKER_RULE``.
MARKER_IMAGE = "attacker.example.net/tools/miner:6.1"
MARKER_RULE = "Image From Untrusted Registry"

#: What identifies one alert: (audit ID, stage, rule).
AlertKey = tuple[str, str, str]


@dataclass(frozen=True)
class Template:
    """One pre-serialised ``EventList`` and what it must produce.

    Audit IDs here are *tails* (the audit ID after the 8-character prefix);
    ``Workload.keys`` turns them into full keys for a given epoch.
    """

    body: bytes
    events: int
    #: (audit ID tail, stage, rule) of every alert the rules raise.
    expected: frozenset[AlertKey] = frozenset()
    #: (audit ID tail, stage) of the marker event.
    marker: tuple[str, str] = ("", "")


@dataclass(frozen=True)
class Workload:
    """Template batches cycled through epochs; see the module docstring."""

    templates: tuple[Template, ...]
    #: (audit ID tail, stage) -> template index, to trace an alert to its POST.
    where: dict[tuple[str, str], int] = field(repr=False)

    @property
    def events_per_batch(self) -> int:
        return self.templates[0].events

    def epoch_and_template(self, seq: int) -> tuple[int, int]:
        """Batch sequence number -> (epoch >= 1, template index)."""
        epoch, index = divmod(seq, len(self.templates))
        return epoch + 1, index

    def body(self, seq: int) -> bytes:
        epoch, index = self.epoch_and_template(seq)
        prefix = _ID_FIELD + f"{epoch:08x}".encode()
        return self.templates[index].body.replace(_ID_FIELD + PLACEHOLDER.encode(), prefix)

    def keys(self, seq: int) -> tuple[set[AlertKey], AlertKey]:
        """The alerts batch ``seq`` must produce, and its marker alert."""
        epoch, index = self.epoch_and_template(seq)
        template = self.templates[index]
        prefix = f"{epoch:08x}"
        expected = {(prefix + tail, stage, rule) for tail, stage, rule in template.expected}
        tail, stage = template.marker
        return expected, (prefix + tail, stage, MARKER_RULE)

    def seq_of(self, audit_id: str, stage: str) -> int | None:
        """The sequence number of the batch that carried this event, or None
        when the audit ID is not from this workload."""
        index = self.where.get((audit_id[8:], stage))
        try:
            epoch = int(audit_id[:8], 16)
        except ValueError:
            return None
        if index is None or epoch < 1:
            return None
        return (epoch - 1) * len(self.templates) + index

    def expect(self, matcher: Matcher) -> Workload:
        """A copy whose templates list every alert ``matcher`` raises on them.

        Decoded the way the webhook decodes a body (``audit_events``), so the
        oracle sees exactly the events the daemon sees.
        """
        templates = []
        for template in self.templates:
            events, errors = audit_events(orjson.loads(template.body), origin="webhook")
            if errors or len(events) != template.events:
                raise ValueError(f"a template batch does not decode cleanly: {errors[:3]}")
            expected = frozenset(
                (event.doc["auditID"][8:], event.doc["stage"], rule.name)
                for event in events
                for rule in matcher.match(event)
            )
            tail, stage = template.marker
            if (tail, stage, MARKER_RULE) not in expected:
                raise ValueError(f"the rules raise no {MARKER_RULE!r} alert on the marker event")
            templates.append(Template(template.body, template.events, expected, template.marker))
        return Workload(tuple(templates), self.where)

    @property
    def alerts_per_pass(self) -> int:
        return sum(len(t.expected) for t in self.templates)


def build_workload(
    batches: int, seed: int = 1, *, batch_size: int = BATCH_SIZE, pod_ratio: float = DEFAULT_POD_RATIO
) -> Workload:
    """``batches`` templates of ``batch_size`` corpus events, one of them a marker.

    Call ``expect`` on the result to fill in the expected alerts.
    """
    if batches < 1 or batch_size < 2:
        raise ValueError("need at least one batch of at least two events")
    rng = random.Random(seed ^ 0xB0D1E5)
    background = generate(batches * (batch_size - 1), seed, pod_ratio)
    creates = generate(batches, seed + 1, pod_ratio=1.0)
    templates: list[Template] = []
    where: dict[tuple[str, str], int] = {}
    for index in range(batches):
        items = [_templated(ev) for ev in _take(background, batch_size - 1)]
        marker = _marker(_templated(next(creates)))
        items.insert(rng.randrange(batch_size), marker)
        for ev in items:
            where[(ev["auditID"][8:], ev["stage"])] = index
        body = orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items})
        templates.append(Template(body, len(items), marker=(marker["auditID"][8:], marker["stage"])))
    return Workload(tuple(templates), where)


def _take(events: Iterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return [next(events) for _ in range(n)]


def _templated(event: dict[str, Any]) -> dict[str, Any]:
    event["auditID"] = PLACEHOLDER + event["auditID"][len(PLACEHOLDER) :]
    return event


def _marker(create: dict[str, Any]) -> dict[str, Any]:
    """A pod or Deployment create whose main container runs ``MARKER_IMAGE``."""
    marker = copy.deepcopy(create)
    for key in ("requestObject", "responseObject"):
        obj = marker[key]
        spec = obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]
        spec["containers"][0]["image"] = MARKER_IMAGE
    return marker


# ---------------------------------------------------------------- the driver


@dataclass
class BatchRecord:
    """One POSTed batch: when it first went out and how it ended."""

    seq: int
    #: ``time.time()`` of the first attempt (latencies are measured from here).
    sent: float
    #: Seconds the batch went out after its slot (all connections were busy).
    late: float
    attempts: int = 0
    retries_503: int = 0
    retries_other: int = 0
    #: Final HTTP status; None when the driver gave up on connection errors.
    status: int | None = None
    accepted: bool = False
    #: ``time.time()`` of the accepting answer.
    done: float = 0.0


@dataclass
class LoadResult:
    """What ``WebhookDriver.run`` offered and what eventd accepted."""

    rate: float
    duration: float
    #: ``time.time()`` when the run began (batch 0 was due).
    started: float
    records: list[BatchRecord]
    events_per_batch: int

    @property
    def batches_accepted(self) -> list[BatchRecord]:
        return [r for r in self.records if r.accepted]

    @property
    def retries_503(self) -> int:
        return sum(r.retries_503 for r in self.records)

    @property
    def retries_other(self) -> int:
        return sum(r.retries_other for r in self.records)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.records if not r.accepted)

    @property
    def max_late(self) -> float:
        return max((r.late for r in self.records), default=0.0)


class WebhookDriver:
    """POSTs the workload's batches to the audit webhook at a target rate.

    Open loop, like the API server: batch *k* of a run is due at
    ``start + k * batch_size / rate``, whatever happened to earlier ones.
    At most ``connections`` requests are in flight; when all are busy (eventd
    slow to answer, or retrying 503s) the next batch goes out late, which
    shows as an achieved rate below the offered one.  A refused batch is
    retried after ``backoff_initial`` seconds, doubling up to
    ``backoff_max``, for ``give_up_after`` seconds at most (the API server
    gives up too, and then the batch is lost and the step fails).

    Sequence numbers continue across runs, so no two runs share an audit ID.
    """

    def __init__(
        self,
        url: str,
        workload: Workload,
        *,
        connections: int = 8,
        backoff_initial: float = 0.05,
        backoff_max: float = 1.0,
        give_up_after: float = 30.0,
    ) -> None:
        self.url = url
        self.workload = workload
        self.connections = connections
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.give_up_after = give_up_after
        self.next_seq = 0
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> WebhookDriver:
        connector = aiohttp.TCPConnector(limit=self.connections, force_close=False)
        timeout = aiohttp.ClientTimeout(total=30)  # the API server's request timeout
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def run(self, rate: float, duration: float) -> LoadResult:
        """Offer ``rate`` events/s for ``duration`` seconds; return when every
        batch is accepted or given up."""
        loop = asyncio.get_running_loop()
        interval = self.workload.events_per_batch / rate
        count = max(1, round(duration / interval))
        slots = asyncio.Semaphore(self.connections)
        records: list[BatchRecord] = []
        tasks: list[asyncio.Task[None]] = []
        started, start = time.time(), loop.time()
        for k in range(count):
            delay = start + k * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            record = BatchRecord(self.next_seq, time.time(), max(0.0, loop.time() - start - k * interval))
            self.next_seq += 1
            records.append(record)
            tasks.append(asyncio.create_task(self._post(record, slots)))
        await asyncio.gather(*tasks)
        return LoadResult(rate, duration, started, records, self.workload.events_per_batch)

    async def _post(self, record: BatchRecord, slots: asyncio.Semaphore) -> None:
        try:
            body = self.workload.body(record.seq)
            deadline = time.monotonic() + self.give_up_after
            delay = self.backoff_initial
            while True:
                record.attempts += 1
                record.status = await self._send(body)
                if record.status is not None and 200 <= record.status < 300:
                    record.accepted, record.done = True, time.time()
                    return
                if record.status is not None and record.status < 500:
                    return  # the body itself is refused: retrying cannot help
                if time.monotonic() + delay > deadline:
                    return
                if record.status == 503:
                    record.retries_503 += 1
                else:
                    record.retries_other += 1
                await asyncio.sleep(delay)
                delay = min(self.backoff_max, delay * 2)
        finally:
            slots.release()

    async def _send(self, body: bytes) -> int | None:
        assert self._session is not None, "use WebhookDriver as an async context manager"
        try:
            async with self._session.post(
                self.url, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None


def expected_for(workload: Workload, records: Iterable[BatchRecord]) -> tuple[set[AlertKey], set[AlertKey]]:
    """Every alert and every marker alert the accepted batches must produce."""
    expected: set[AlertKey] = set()
    markers: set[AlertKey] = set()
    for record in records:
        if record.accepted:
            alerts, marker = workload.keys(record.seq)
            expected |= alerts
            markers.add(marker)
    return expected, markers
