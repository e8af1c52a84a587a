"""A full spool and a full disk while Kafka is down: drops are counted exactly,
eventd stays alive, and it recovers.

Two different limits:

* the spool's own bound (``spool_max_bytes``): with the broker down the spool
  keeps exactly as many alerts as fit and drops the rest by policy
  (``spool_full``), oldest or newest; when the broker returns, exactly the
  kept alerts are delivered;
* the file system itself: a 1 MiB tmpfs filled up by another file (the
  usual way a node's disk fills), or a file-size limit (``RLIMIT_FSIZE``,
  set on the running eventd with ``prlimit``) where mounting is not allowed.
  Every alert is then dropped as ``disk_full`` while eventd keeps running;
  once space returns new alerts are spooled again and delivered when the
  broker is back.
"""

from __future__ import annotations

import errno
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_process import EventdProcess
from tests.faults.accounting import (
    RULE,
    assert_uuid_set,
    assert_webhook_accounting,
    batches,
    expected_uuids,
    http_status,
    metric,
    read_kafka_alerts,
    scrape,
    send,
    start_webhook_to_kafka,
    wait_until,
)
from tests.kafka_broker import KafkaBroker, unique_name

pytestmark = pytest.mark.timeout(120)

SPOOL_MAX_BYTES = 48 * 1024


def kafka_metric(proc: EventdProcess, name: str, **labels: str) -> float:
    return metric(proc, name, sink="kafka", **labels)


def handled(proc: EventdProcess) -> float:
    """Alerts the Kafka sink has finished with while the broker is down: each
    append either holds one more alert or counts one drop (of it, or of an
    older one), so this grows by exactly one per alert."""
    snap = scrape(proc)
    return snap.value("eventd_spool_alerts", sink="kafka") + snap.value(
        "eventd_sink_dropped_total", sink="kafka"
    )


# ------------------------------------------------------------ spool bound


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_a_full_spool_drops_exactly_the_overflow_by_policy_and_recovers(
    private_kafka_broker: KafkaBroker, tmp_path: Path, policy: str
) -> None:
    broker = private_kafka_broker
    broker.stop()
    topic = unique_name("faults-spool-full")
    proc, url = start_webhook_to_kafka(
        tmp_path,
        broker.bootstrap,
        topic,
        tmp_path / "spool",
        spool_max_bytes=SPOOL_MAX_BYTES,
        spool_full_policy=policy,
    )
    try:
        # Equal-size alerts (auditIDs of one length), many more than fit.
        sent = send(url, batches("full", count=20, alerting=10, invalid=1))
        order = [doc for batch in sent.batches for doc in batch.alerting]
        wait_until(
            lambda: handled(proc) == len(order), timeout=20, what="every alert spooled or dropped", proc=proc
        )
        snap = scrape(proc)
        kept = snap.value("eventd_spool_alerts", sink="kafka")
        size = snap.value("eventd_spool_bytes", sink="kafka")
        assert kept and size % kept == 0, "alerts of one size expected"
        capacity = SPOOL_MAX_BYTES // int(size // kept)
        assert kept == capacity < len(order)
        assert snap.by("eventd_sink_dropped_total", "reason", sink="kafka") == {
            "spool_full": len(order) - capacity
        }
        assert_webhook_accounting(snap, sent)
        assert proc.proc.poll() is None
        assert http_status(proc.url("/healthz")) == 200
        assert http_status(proc.url("/readyz")) == 503  # a nearly full spool is not ready

        broker.start()
        broker.create_topic(topic)
        wait_until(
            lambda: kafka_metric(proc, "eventd_spool_alerts") == 0,
            timeout=30,
            what="the spool to drain",
            proc=proc,
        )
        survivors = order[-capacity:] if policy == "drop_oldest" else order[:capacity]
        assert_uuid_set(
            read_kafka_alerts(broker.bootstrap, topic, expected_uuids(survivors), idle=3),
            expected_uuids(survivors),
            f"Kafka after {policy}",
        )
        later = send(url, batches("later", count=2))
        wait_until(
            lambda: kafka_metric(proc, "eventd_sink_deliveries_total") == capacity + len(later.alerting),
            timeout=30,
            what="delivery after recovery",
            proc=proc,
        )
        assert http_status(proc.url("/readyz")) == 200
        assert proc.stop() == 0
    finally:
        proc.kill()


# ------------------------------------------------------------- disk full


class TmpfsDisk:
    """A 1 MiB tmpfs holding the spool; a filler file can take all its space."""

    log_level = "info"

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.filler = mountpoint / "filler"
        mountpoint.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs here ({done.stderr.strip()}); the rlimit variant covers disk full"
            )

    @property
    def spool_dir(self) -> Path:
        return self.mountpoint / "spool"

    def fill(self, _pid: int) -> None:
        """Another file takes every free block."""
        chunk = b"\0" * 65536
        with self.filler.open("wb", buffering=0) as out:
            try:
                while out.write(chunk):
                    pass
            except OSError as err:
                assert err.errno == errno.ENOSPC, err

    def free(self, _pid: int) -> None:
        self.filler.unlink()

    def cap(self, _pid: int) -> None:
        """The spool alone may fill the 1 MiB."""

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.mountpoint)], check=False)


class FileSizeLimit:
    """``RLIMIT_FSIZE`` set on the running eventd: a write that would grow a
    file past it fails with EFBIG (Python ignores SIGXFSZ), as on a full disk.
    eventd's stderr is a file too, so the scenario logs at ``error`` level."""

    log_level = "error"
    CAP_BYTES = 256 * 1024

    def __init__(self, directory: Path) -> None:
        self.spool_dir = directory / "spool"
        self._saved: tuple[int, int] | None = None

    def fill(self, pid: int) -> None:
        """No file may grow at all."""
        self._limit(pid, 0)

    def free(self, pid: int) -> None:
        assert self._saved is not None
        resource.prlimit(pid, resource.RLIMIT_FSIZE, self._saved)

    def cap(self, pid: int) -> None:
        """A spool segment may grow to ``CAP_BYTES``, then the "disk" is full."""
        self._limit(pid, self.CAP_BYTES)

    def _limit(self, pid: int, size: int) -> None:
        self._saved = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (size, self._saved[1]))

    def close(self) -> None:
        pass


@pytest.fixture(params=["tmpfs", "rlimit"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TmpfsDisk | FileSizeLimit]:
    made = TmpfsDisk(tmp_path / "disk") if request.param == "tmpfs" else FileSizeLimit(tmp_path)
    try:
        yield made
    finally:
        made.close()


def test_disk_full_drops_are_counted_eventd_survives_and_recovers(
    private_kafka_broker: KafkaBroker, tmp_path: Path, disk: TmpfsDisk | FileSizeLimit
) -> None:
    broker = private_kafka_broker
    broker.stop()
    topic = unique_name("faults-disk-full")
    proc, url = start_webhook_to_kafka(
        tmp_path, broker.bootstrap, topic, disk.spool_dir, log_level=disk.log_level
    )
    pid = proc.proc.pid
    try:
        disk.fill(pid)
        full = send(url, batches("disk", count=5, invalid=1))
        wait_until(
            lambda: handled(proc) == len(full.alerting),
            timeout=20,
            what="every alert spooled or dropped",
            proc=proc,
        )
        snap = scrape(proc)
        assert snap.by("eventd_sink_dropped_total", "reason", sink="kafka") == {
            "disk_full": len(full.alerting)
        }
        assert snap.value("eventd_spool_alerts", sink="kafka") == 0
        assert proc.proc.poll() is None
        assert http_status(proc.url("/healthz")) == 200

        disk.free(pid)
        room = send(url, batches("room", count=5, invalid=1))
        wait_until(
            lambda: kafka_metric(proc, "eventd_spool_alerts") == len(room.alerting),
            timeout=20,
            what="alerts spooled again",
            proc=proc,
        )
        broker.start()
        broker.create_topic(topic)
        wait_until(
            lambda: kafka_metric(proc, "eventd_spool_alerts") == 0,
            timeout=30,
            what="the spool to drain",
            proc=proc,
        )
        expected = expected_uuids(room.alerting)
        assert_uuid_set(read_kafka_alerts(broker.bootstrap, topic, expected, idle=3), expected, "Kafka")

        snap = scrape(proc)
        assert_webhook_accounting(snap, full + room)
        assert snap.value("eventd_alerts_total", rule=RULE) == len(full.alerting) + len(room.alerting)
        assert snap.by("eventd_sink_dropped_total", "reason") == {"disk_full": len(full.alerting)}
        assert proc.stop() == 0
    finally:
        proc.kill()


def test_space_the_spool_filled_returns_once_the_broker_drains_it(
    private_kafka_broker: KafkaBroker, tmp_path: Path, disk: TmpfsDisk | FileSizeLimit
) -> None:
    broker = private_kafka_broker
    broker.stop()
    topic = unique_name("faults-self-full")
    proc, url = start_webhook_to_kafka(
        tmp_path, broker.bootstrap, topic, disk.spool_dir, log_level=disk.log_level
    )
    try:
        disk.cap(proc.proc.pid)
        flood = send(url, batches("flood", count=40, alerting=40, quiet=0))
        wait_until(
            lambda: handled(proc) == len(flood.alerting),
            timeout=30,
            what="every alert spooled or dropped",
            proc=proc,
        )
        dropped = kafka_metric(proc, "eventd_sink_dropped_total", reason="disk_full")
        assert dropped > 0, "the spool never filled the disk: the scenario proves nothing"

        broker.start()
        broker.create_topic(topic)
        wait_until(
            lambda: kafka_metric(proc, "eventd_spool_alerts") == 0,
            timeout=30,
            what="the spool to drain",
            proc=proc,
        )
        delivered = kafka_metric(proc, "eventd_sink_deliveries_total")
        assert delivered == len(flood.alerting) - dropped

        later = send(url, batches("later", count=2))
        wait_until(
            lambda: (
                kafka_metric(proc, "eventd_sink_deliveries_total")
                + kafka_metric(proc, "eventd_sink_dropped_total", reason="disk_full")
                == delivered + dropped + len(later.alerting)
            ),
            timeout=30,
            what="the new alerts delivered or dropped",
            proc=proc,
        )
        assert proc.proc.poll() is None
        expected = expected_uuids(later.alerting)
        read = read_kafka_alerts(broker.bootstrap, topic, expected, idle=2)
        fresh = [a for a in read if a["eventd"]["audit_id"].startswith("later")]
        assert_uuid_set(fresh, expected, "Kafka, alerts sent after the spool drained")
    finally:
        proc.kill()
