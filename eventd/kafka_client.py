"""Connection settings shared by eventd's Kafka clients (the source, the sink).

One place turns the config's ``bootstrap_servers``, ``tls`` (``ClientTLS``,
with a client certificate for mutual TLS) and ``sasl`` (PLAIN or
SCRAM-SHA-256/512, password read from ``password_file``) into keyword
arguments for aiokafka's consumer, producer and admin client.

Files are read on every call: a client calls it again when it reconnects,
so a rotated password or certificate is picked up without a restart.
Problems raise ``ConfigError`` naming the key, never a bare ``OSError``.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from eventd.config import ClientTLS, ConfigError, KafkaSASL

log = structlog.get_logger(__name__)

#: Shown in the broker's request logs and quotas.
CLIENT_ID = "eventd"


def client_options(
    bootstrap_servers: Sequence[str],
    tls: ClientTLS | None,
    sasl: KafkaSASL | None,
    *,
    key: str,
) -> dict[str, Any]:
    """aiokafka keyword arguments for one configured client.

    ``key`` is the config section (``sources.kafka``), used in error messages.
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
        options.update(sasl_options(sasl, key=f"{key}.sasl"))
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


def sasl_options(sasl: KafkaSASL, *, key: str) -> dict[str, Any]:
    if not sasl.username:
        raise ConfigError(f"{key}.username", "required with SASL")
    if sasl.password_file is None:
        raise ConfigError(f"{key}.password_file", "required with SASL")
    return {
        "sasl_mechanism": sasl.mechanism,
        "sasl_plain_username": sasl.username,
        "sasl_plain_password": read_secret(sasl.password_file, key=f"{key}.password_file"),
    }


def read_secret(path: Path, *, key: str) -> str:
    """The file's text without the trailing newline editors and Secrets add."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise ConfigError(key, f"cannot read {path}: {reason}") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise ConfigError(key, f"{path} is empty")
    return secret
