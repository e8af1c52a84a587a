"""Alerts into Prometheus Alertmanager (``POST /api/v2/alerts``), batched.

Alertmanager identifies an alert by its label set and groups, silences and
inhibits by labels, so labels carry only low-cardinality facts: the rule
(``alertname``), severity, source, cluster, namespace, workload and registry.
A uuid, user or pod name in a label would make every occurrence a separate
alert and a separate notification (the flood dedup exists to stop); those go
into annotations, which Alertmanager shows but does not group by.  For the
same reason a workload that is a single pod (``pods/web-7f9c-x2b`` from Falco
or ``pods/<name>/exec``) is an annotation, not a label.

``endsAt`` is ``startsAt`` + ``resolve_after_seconds``: Falco-style alerts
never send a "resolved", so Alertmanager resolves them silently.  The window
is counted from now when the event is older than that (a backfilled audit
log, a receiver that was down): otherwise such an alert would arrive already
resolved and nobody would be notified.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import orjson

from eventd.alerts import Alert
from eventd.checks import client_tls_files
from eventd.config import AlertmanagerSinkConfig, ConfigError
from eventd.events.timestamps import ns_to_rfc3339
from eventd.metrics import Metrics
from eventd.secretfile import SecretFile, secret_url
from eventd.sinks.http_delivery import HttpSink
from eventd.sinks.slack import alert_facts, image_reference

#: Alertmanager accepts arrays; one request per this many queued alerts.
MAX_BATCH = 64


def _labels(alert: Alert) -> dict[str, str]:
    ctx = alert.context
    labels = {
        "alertname": alert.rule,
        "severity": alert.priority.name.lower(),
        "priority": alert.priority.label,
        "source": alert.source,
        "eventd": "true",
    }
    for key in ("cluster", "namespace"):
        if ctx.get(key):
            labels[key] = str(ctx[key])
    workload = ctx.get("workload")
    if workload and not str(workload).startswith("pods/"):
        labels["workload"] = str(workload)
    images = ctx.get("images") or ()
    if images and isinstance(images[0], dict) and images[0].get("registry"):
        labels["registry"] = str(images[0]["registry"])
    return labels


def _annotations(alert: Alert) -> dict[str, str]:
    ctx = alert.context
    notes = {
        "summary": alert.output,
        "description": "\n".join(f"{k}: {v}" for k, v in alert_facts(alert)),
        "uuid": alert.uuid,
    }
    images = [image_reference(i) for i in ctx.get("images") or () if isinstance(i, dict)]
    if images:
        notes["images"] = ", ".join(images)
    for key in ("workload", "user", "audit_id", "node", "runbook"):
        if ctx.get(key):
            notes[key] = str(ctx[key])
    if alert.tags:
        notes["tags"] = ", ".join(alert.tags)
    return notes


def alertmanager_alert(
    alert: Alert, resolve_after_ns: int, generator_url: str, now_ns: int
) -> dict[str, Any]:
    """One element of the ``/api/v2/alerts`` array (``postableAlert``)."""
    ends = max(alert.time_ns, now_ns) + resolve_after_ns
    return {
        "labels": _labels(alert),
        "annotations": _annotations(alert),
        "startsAt": ns_to_rfc3339(alert.time_ns),
        "endsAt": ns_to_rfc3339(ends),
        "generatorURL": generator_url or f"eventd://{quote(alert.hostname)}/rules/{quote(alert.rule)}",
    }


class AlertmanagerSink(HttpSink):
    name = "alertmanager"
    max_batch = MAX_BATCH

    def __init__(self, config: AlertmanagerSinkConfig, metrics: Metrics, **kwargs: Any) -> None:
        client_tls_files(config.tls, "sinks.alertmanager.tls")
        try:
            super().__init__(config, metrics, **kwargs)
        except OSError as err:  # ssl.SSLError: the files are there but not usable PEM
            raise ConfigError("sinks.alertmanager.tls", f"cannot load TLS files: {err}") from None
        base = secret_url(config.url, "sinks.alertmanager.url", bearer_token=config.token_file is not None)
        self._url = base.rstrip("/") + "/api/v2/alerts"
        self._resolve_after_ns = int(config.resolve_after_seconds * 1e9)
        self._generator_url = config.generator_url
        self._token = (
            SecretFile(config.token_file, "sinks.alertmanager.token_file", metrics)
            if config.token_file
            else None
        )

    @property
    def url(self) -> str:
        return self._url

    @property
    def probe_url(self) -> str:
        # Alertmanager's own readiness endpoint, next to the alerts API.
        return self._url.removesuffix("/api/v2/alerts") + "/-/ready"

    def body(self, alerts: Sequence[Alert]) -> bytes:
        now = time.time_ns()
        return orjson.dumps(
            [alertmanager_alert(a, self._resolve_after_ns, self._generator_url, now) for a in alerts]
        )

    def headers(self, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.value()}"
        return headers
