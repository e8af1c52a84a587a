"""Connection settings shared by eventd's Kafka clients (the source, the sink).

One place turns the config's ``bootstrap_servers``, ``tls`` (``ClientTLS``,
with a client certificate for mutual TLS) and ``sasl`` (PLAIN or
SCRAM-SHA-256/512, password read from ``password_file``) into keyword
arguments for aiokafka's consumer, producer and admin client.

Files are read on every call: a client calls it again when it reconnects,
so a rotated password or certificate is picked up without a restart.
Problems raise ``ConfigError`` naming the key, never a bare ``OSError``.
The password file is a ``SecretFile``: validated at the first read (no line
break or control character), and a rotation to a bad value keeps the last
good password (warned about and counted) instead of stopping the client.

Each client is created inside its ``KafkaClientLog`` context, so what the
library logs from the client's tasks is folded under the client's name
(``eventd.logs``) and its first error counted at once, not only when a
request times out half a minute later.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import AIOKafkaProducer

from eventd.config import ClientTLS, ConfigError, KafkaSASL
from eventd.logs import KafkaClientLog, kafka_client_context
from eventd.metrics import Metrics
from eventd.secretfile import SecretFile

if TYPE_CHECKING:
    from aiokafka import TopicPartition

log = structlog.get_logger(__name__)

#: Shown in the broker's request logs and quotas.
CLIENT_ID = "eventd"


def client_options(
    bootstrap_servers: Sequence[str],
    tls: ClientTLS | None,
    sasl: KafkaSASL | None,
    *,
    key: str,
    metrics: Metrics | None = None,
) -> dict[str, Any]:
    """aiokafka keyword arguments for one configured client.

    ``key`` is the config section (``sources.kafka``), used in error messages;
    ``metrics`` counts refused re-reads of the password file.
    """
    if not bootstrap_servers:
        raise ConfigError(f"{key}.bootstrap_servers", "at least one host:port is required")
    options: dict[str, Any] = {
        "bootstrap_servers": list(bootstrap_servers),
        "client_id": CLIENT_ID,
        "security_protocol": "PLAINTEXT",
    }
    if tls is not None:
        options["ssl_context"] = ssl_context(tls, key=f"{key}.tls")
        options["security_protocol"] = "SSL"
    if sasl is not None:
        options.update(sasl_options(sasl, key=f"{key}.sasl", metrics=metrics))
        options["security_protocol"] = "SASL_SSL" if tls is not None else "SASL_PLAINTEXT"
        if tls is None and sasl.mechanism == "PLAIN":
            log.warning("kafka_sasl_plain_without_tls", config=key, reason="password sent in clear text")
    return options


def ssl_context(tls: ClientTLS, *, key: str) -> ssl.SSLContext:
    """Verify the brokers against ``ca`` (the system store without it); present
    ``cert``/``key`` when given (mutual TLS)."""
    if (tls.cert is None) != (tls.key is None):
        raise ConfigError(key, "cert and key must be given together (client certificate for mutual TLS)")
    try:
        context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
        if tls.cert is not None and tls.key is not None:
            context.load_cert_chain(str(tls.cert), str(tls.key))
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(key, f"cannot load TLS files: {err}") from None
    return context


def sasl_options(sasl: KafkaSASL, *, key: str, metrics: Metrics | None = None) -> dict[str, Any]:
    if not sasl.username:
        raise ConfigError(f"{key}.username", "required with SASL")
    if sasl.password_file is None:
        raise ConfigError(f"{key}.password_file", "required with SASL")
    return {
        "sasl_mechanism": sasl.mechanism,
        "sasl_plain_username": sasl.username,
        "sasl_plain_password": read_secret(sasl.password_file, key=f"{key}.password_file", metrics=metrics),
    }


#: One ``SecretFile`` per password file and key, kept across reconnects so a
#: bad rotation falls back to the last good password.
_password_files: dict[tuple[Path, str], SecretFile] = {}


def read_secret(path: Path, *, key: str, metrics: Metrics | None = None) -> str:
    """The password in ``path`` (see ``SecretFile``); ``ConfigError`` naming
    ``key`` if the first read fails."""
    secret = _password_files.get((path, key))
    if secret is None:
        secret = _password_files[(path, key)] = SecretFile(path, key, metrics)
    return secret.value()


@dataclass(frozen=True, slots=True)
class ConsumedOffsets:
    """Input offsets to commit in the same transaction as a batch's alerts
    (``sources.kafka.exactly_once``).

    ``generation`` counts the source's consumer sessions and rebalances: once
    a transaction of a generation failed, the sink refuses the later ones of
    that generation, so no commit can pass the failed batch's records (the
    source starts a new generation from the last committed offsets).
    ``is_current`` says whether the source is still in that generation: a
    batch queued before a rebalance is not committed after it.
    """

    group_id: str
    offsets: Mapping[TopicPartition, int]
    generation: int
    is_current: Callable[[], bool]


def sink_client_log(sink: str, config_key: str, metrics: Metrics) -> KafkaClientLog:
    """The fold state of a sink's producer (named by its ``config_key`` in
    logs): the library's first error of a failure counts in
    ``eventd_sink_failures_total{sink=<sink>, reason="connection"}``."""
    failures = metrics.sink_failures.labels(sink, "connection")
    return KafkaClientLog(config_key, on_failure=failures.inc)


async def started_producer(
    options: dict[str, Any], client_log: KafkaClientLog | None = None
) -> AIOKafkaProducer:
    """An aiokafka producer, started; stopped again if starting fails (a
    half-started producer keeps connections and tasks).  Created and started
    in ``client_log``'s context: its tasks' log records are folded there."""
    with kafka_client_context(client_log) if client_log is not None else contextlib.nullcontext():
        producer = AIOKafkaProducer(**options)
        try:
            await producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
    return producer
