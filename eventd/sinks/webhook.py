"""Alerts as JSON to any HTTP endpoint, optionally signed.

The body is exactly ``alert.to_json()`` (one alert per request), so a
receiver reads the same document as from stdout, a file or Kafka.

Signature scheme (with ``hmac_secret_file``), for receivers to verify:

- ``X-Eventd-Timestamp: <unix seconds>`` (the time of this attempt);
- ``<signature_header>: sha256=<hex>`` where ``<hex>`` is the lower-case hex
  HMAC-SHA256, keyed with the secret file's content (surrounding whitespace
  stripped, UTF-8), of the bytes ``<timestamp>.<body>``: the timestamp header
  value, one ``.``, then the raw request body as received.

A receiver recomputes the HMAC over the raw body (before any JSON parsing),
compares in constant time (``hmac.compare_digest``) and rejects timestamps
too far from its clock (five minutes is usual), so a captured request cannot
be replayed later.  Retries are signed afresh with a new timestamp.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from typing import Any

from eventd.alerts import Alert
from eventd.checks import client_tls_files
from eventd.config import ConfigError, WebhookSinkConfig
from eventd.metrics import Metrics
from eventd.secretfile import SecretFile, secret_url
from eventd.sinks.http_delivery import HttpSink

TIMESTAMP_HEADER = "X-Eventd-Timestamp"


def signature(key: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value: ``sha256=`` + HMAC of ``<timestamp>.<body>``."""
    mac = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class WebhookSink(HttpSink):
    config_key = "sinks.webhook"

    def __init__(self, config: WebhookSinkConfig, metrics: Metrics, **kwargs: Any) -> None:
        if not config.url:
            raise ConfigError(f"{self.config_key}.url", "required when the webhook sink is enabled")
        client_tls_files(config.tls, f"{self.config_key}.tls")
        try:
            super().__init__(config, metrics, **kwargs)
        except OSError as err:  # ssl.SSLError: the files are there but not usable PEM
            raise ConfigError(f"{self.config_key}.tls", f"cannot load TLS files: {err}") from None
        self._url = secret_url(
            config.url, f"{self.config_key}.url", bearer_token=config.token_file is not None
        )
        self._signature_header = config.signature_header
        self._token = (
            SecretFile(config.token_file, f"{self.config_key}.token_file", metrics)
            if config.token_file
            else None
        )
        self._hmac = (
            SecretFile(config.hmac_secret_file, f"{self.config_key}.hmac_secret_file", metrics)
            if config.hmac_secret_file
            else None
        )

    @property
    def url(self) -> str:
        return self._url

    def body(self, alerts: Sequence[Alert]) -> bytes:
        (alert,) = alerts
        return alert.to_json()

    def headers(self, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.value()}"
        if self._hmac is not None:
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[self._signature_header] = signature(self._hmac.value().encode(), timestamp, body)
        return headers
