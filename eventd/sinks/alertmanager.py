"""Alerts into Prometheus Alertmanager (``POST /api/v2/alerts``), batched.

Alertmanager identifies an alert by its label set and groups, silences and
inhibits by labels, so labels carry only low-cardinality facts: the rule
(``alertname``), severity, source, cluster, namespace, workload and registry.
A uuid, user or pod name in a label would make every occurrence a separate
alert and a separate notification (the flood dedup exists to stop); those go
into annotations, which Alertmanager shows but does not group by.  For the
same reason a workload that is a single pod (``pods/web-7f9c-x2b`` from Falco
or ``pods/<name>/exec``) is an annotation, not a label.

``severity`` holds the values routing trees match on (``critical``,
``warning``, ``info``; eventd's own Prometheus rules use the same), mapped
from the Falco priority and configurable per priority; the priority itself
is the ``priority`` label.  ``summary`` is the rule name (what a
notification title shows) and ``description`` the output line, as in
Prometheus' alerting conventions.  Links are sent only when they lead
somewhere: ``generatorURL`` and ``runbook_url`` are absolute URLs from the
config, or absent.

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
from urllib.parse import quote, urlsplit

import orjson

from eventd.alerts import Alert
from eventd.checks import client_tls_files
from eventd.config import AlertmanagerSeverity, AlertmanagerSinkConfig, ConfigError
from eventd.events.timestamps import ns_to_rfc3339
from eventd.metrics import Metrics
from eventd.priority import Priority
from eventd.secretfile import SecretFile, secret_url
from eventd.sinks.http_delivery import HttpSink
from eventd.sinks.slack import image_reference

#: Alertmanager accepts arrays; one request per this many queued alerts.
MAX_BATCH = 64


def severity_map(config: AlertmanagerSeverity, key: str = "severity") -> dict[Priority, str]:
    """``severity`` label value per priority; an empty value is refused
    (the error names ``<key>.<priority>``)."""
    out = {}
    for priority in Priority:
        value = getattr(config, priority.name.lower())
        if not value:
            raise ConfigError(f"{key}.{priority.name.lower()}", "must not be empty")
        out[priority] = value
    return out


DEFAULT_SEVERITY = severity_map(AlertmanagerSeverity())


def link_template(value: str, key: str) -> str:
    """An absolute http(s) URL (``{rule}`` allowed), or ``""`` for none.

    A relative or custom-scheme link is refused at start: Alertmanager and
    its receivers show it as a link that leads nowhere."""
    if not value:
        return ""
    parsed = urlsplit(value.replace("{rule}", "rule"))
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(key, f"expected an absolute http(s) URL, got {value!r}")
    return value


def _link(template: str, alert: Alert) -> str:
    return template.replace("{rule}", quote(alert.rule, safe="")) if template else ""


def _labels(alert: Alert, severity: dict[Priority, str]) -> dict[str, str]:
    ctx = alert.context
    labels = {
        "alertname": alert.rule,
        "severity": severity[alert.priority],
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


def _annotations(alert: Alert, runbook_url: str) -> dict[str, str]:
    ctx = alert.context
    notes = {"summary": alert.rule, "description": alert.output, "uuid": alert.uuid}
    images = [image_reference(i) for i in ctx.get("images") or () if isinstance(i, dict)]
    if images:
        notes["images"] = ", ".join(images)
    for key in ("workload", "user", "audit_id", "node"):
        if ctx.get(key):
            notes[key] = str(ctx[key])
    if alert.tags:
        notes["tags"] = ", ".join(alert.tags)
    if runbook_url:
        notes["runbook_url"] = _link(runbook_url, alert)
    return notes


def alertmanager_alert(
    alert: Alert,
    resolve_after_ns: int,
    now_ns: int,
    *,
    generator_url: str = "",
    runbook_url: str = "",
    severity: dict[Priority, str] = DEFAULT_SEVERITY,
) -> dict[str, Any]:
    """One element of the ``/api/v2/alerts`` array (``postableAlert``).

    ``generator_url`` and ``runbook_url`` are templates checked by
    ``link_template``; empty ones are left out."""
    ends = max(alert.time_ns, now_ns) + resolve_after_ns
    item: dict[str, Any] = {
        "labels": _labels(alert, severity),
        "annotations": _annotations(alert, runbook_url),
        "startsAt": ns_to_rfc3339(alert.time_ns),
        "endsAt": ns_to_rfc3339(ends),
    }
    if generator_url:
        item["generatorURL"] = _link(generator_url, alert)
    return item


class AlertmanagerSink(HttpSink):
    config_key = "sinks.alertmanager"
    max_batch = MAX_BATCH

    def __init__(self, config: AlertmanagerSinkConfig, metrics: Metrics, **kwargs: Any) -> None:
        client_tls_files(config.tls, f"{self.config_key}.tls")
        try:
            super().__init__(config, metrics, **kwargs)
        except OSError as err:  # ssl.SSLError: the files are there but not usable PEM
            raise ConfigError(f"{self.config_key}.tls", f"cannot load TLS files: {err}") from None
        base = secret_url(config.url, f"{self.config_key}.url", bearer_token=config.token_file is not None)
        self._url = base.rstrip("/") + "/api/v2/alerts"
        self._resolve_after_ns = int(config.resolve_after_seconds * 1e9)
        self._generator_url = link_template(config.generator_url, f"{self.config_key}.generator_url")
        self._runbook_url = link_template(config.runbook_url, f"{self.config_key}.runbook_url")
        self._severity = severity_map(config.severity, f"{self.config_key}.severity")
        self._token = (
            SecretFile(config.token_file, f"{self.config_key}.token_file", metrics)
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
            [
                alertmanager_alert(
                    a,
                    self._resolve_after_ns,
                    now,
                    generator_url=self._generator_url,
                    runbook_url=self._runbook_url,
                    severity=self._severity,
                )
                for a in alerts
            ]
        )

    def headers(self, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.value()}"
        return headers
