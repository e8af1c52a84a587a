"""Alerts as Slack messages a responder can act on, through an incoming webhook.

The message leads with what and how bad (priority emoji and rule in a header,
the attachment bar in the priority's colour), then where and who (cluster,
namespace, workload, user, images, node, time, uuid) in fixed fields whatever
the rule printed, then the rule's own output.  ``text`` carries a plain
summary for notifications and clients without Block Kit.

Event data is attacker-controlled (user names, pod names, commands), so every
value is escaped for Slack's markup: an audit user named ``<!channel>`` must
not page the whole channel, and ``<https://evil|docs>`` must not become a link.
The webhook URL is the credential and is read from a file, never logged.

``username`` (``sinks.slack.username``) is sent only when configured, and
only legacy incoming webhooks (custom integrations) honour it: the webhooks
of a Slack app post under the app's name and ignore it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from eventd.alerts import Alert
from eventd.checks import client_tls_files
from eventd.config import ConfigError, SlackSinkConfig
from eventd.events.timestamps import ns_to_rfc3339
from eventd.metrics import Metrics
from eventd.priority import Priority
from eventd.secretfile import SecretFile, check_http_url
from eventd.sinks.http_delivery import HttpSink

#: Priority -> (emoji shortcode, attachment colour).
_STYLE = {
    Priority.EMERGENCY: (":rotating_light:", "#b71c1c"),
    Priority.ALERT: (":rotating_light:", "#b71c1c"),
    Priority.CRITICAL: (":rotating_light:", "#d50000"),
    Priority.ERROR: (":red_circle:", "#e65100"),
    Priority.WARNING: (":warning:", "#ffab00"),
    Priority.NOTICE: (":large_blue_circle:", "#2196f3"),
    Priority.INFORMATIONAL: (":information_source:", "#9e9e9e"),
    Priority.DEBUG: (":mag:", "#9e9e9e"),
}

# Block Kit limits (characters): header text, a field, a section text.
_HEADER_MAX = 150
_FIELD_MAX = 2000
_SECTION_MAX = 3000


def slack_escape(text: str) -> str:
    """Slack's three control characters; makes mentions and links inert."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def image_reference(image: dict[str, Any]) -> str:
    """``registry/name:tag@digest`` from a normalised image, else the raw string."""
    name = image.get("name")
    if not name:
        return str(image.get("image") or "?")
    tag, digest = image.get("tag"), image.get("digest")
    return f"{name}{':' + tag if tag else ''}{'@' + digest if digest else ''}"


def alert_facts(alert: Alert) -> list[tuple[str, str]]:
    """The responder's facts in a fixed order, present ones only (unescaped)."""
    ctx = alert.context
    facts = [
        ("Cluster", ctx.get("cluster")),
        ("Namespace", ctx.get("namespace")),
        ("Workload", ctx.get("workload")),
        ("User", ctx.get("user")),
        ("Node", ctx.get("node") or alert.hostname),
        ("Time", ns_to_rfc3339(alert.time_ns)),
        ("Source", alert.source),
        ("UUID", alert.uuid),
    ]
    return [(k, str(v)) for k, v in facts if v]


def slack_message(alert: Alert, username: str = "") -> dict[str, Any]:
    """The webhook payload for one alert (``username``: legacy webhooks only)."""
    emoji, colour = _STYLE[alert.priority]
    title = f"{alert.priority.label}: {alert.rule}"
    facts = alert_facts(alert)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(f"{emoji} {title}", _HEADER_MAX)}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": _cut(f"*{k}*\n{slack_escape(v)}", _FIELD_MAX)} for k, v in facts
            ],
        },
    ]
    images = [image_reference(i) for i in alert.context.get("images") or () if isinstance(i, dict)]
    if images:
        listed = "\n".join(f"• `{slack_escape(i)}`" for i in images)
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _cut(f"*Images*\n{listed}", _SECTION_MAX)}}
        )
    output = slack_escape(alert.output.replace("```", "'''"))
    code = _cut(output, _SECTION_MAX - 6)
    blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"```{code}```"}})
    if alert.tags:
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": slack_escape(", ".join(alert.tags))}]}
        )
    where = "/".join(v for v in (alert.context.get("namespace"), alert.context.get("workload")) if v)
    fallback = f"{alert.priority.label}: {alert.rule}{f' ({where})' if where else ''}"
    message: dict[str, Any] = {
        "text": _cut(slack_escape(fallback), _SECTION_MAX),
        "attachments": [{"color": colour, "fallback": slack_escape(fallback), "blocks": blocks}],
    }
    if username:
        message["username"] = username
    return message


class SlackSink(HttpSink):
    config_key = "sinks.slack"

    def __init__(self, config: SlackSinkConfig, metrics: Metrics, **kwargs: Any) -> None:
        client_tls_files(config.tls, f"{self.config_key}.tls")
        try:
            super().__init__(config, metrics, **kwargs)
        except OSError as err:  # ssl.SSLError: the files are there but not usable PEM
            raise ConfigError(f"{self.config_key}.tls", f"cannot load TLS files: {err}") from None
        self._username = config.username
        self._url = SecretFile(
            config.webhook_url_file, f"{self.config_key}.webhook_url_file", metrics, check=check_http_url
        )

    @property
    def url(self) -> str:
        return self._url.value()

    def body(self, alerts: Sequence[Alert]) -> bytes:
        (alert,) = alerts
        return orjson.dumps(slack_message(alert, self._username))
