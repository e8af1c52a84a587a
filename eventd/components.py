"""Which class implements each configured source and sink.

Adding an input or an output is a new module plus one line here; the class
is imported only when configured (the gRPC stack, say, costs start-up time
for users who never use it).

Constructing a source or sink validates it without side effects (files
readable, TLS loadable, names legal, directories usable) and starts nothing:
``eventd.daemon.validate`` builds them all for ``run``, ``run --check`` and
the manifest tests alike, so a config ``--check`` accepts is one ``run``
accepts.
"""

from __future__ import annotations

import importlib
from typing import Any

from eventd.config import ConfigError
from eventd.logs import scrub
from eventd.metrics import Metrics
from eventd.sinks.policy import PolicySink
from eventd.sources.base import Source

#: ``sources.<key>`` -> "module:Class", constructed as ``Class(section, metrics)``.
SOURCE_CLASSES = {
    "k8s_audit_webhook": "eventd.sources.audit_webhook:AuditWebhookSource",
    "falco_http": "eventd.sources.falco_http:FalcoHttpSource",
    "falco_file": "eventd.sources.falco_file:FalcoFileSource",
    "falco_grpc": "eventd.sources.falco_grpc:FalcoGrpcSource",
    "audit_log": "eventd.sources.audit_log:AuditLogSource",
    "kafka": "eventd.sources.kafka:KafkaSource",
}

#: ``sinks.<key>`` -> "module:Class", constructed as ``Class(section, metrics)``.
SINK_CLASSES = {
    "stdout": "eventd.sinks.stdout:StdoutSink",
    "file": "eventd.sinks.file:FileSink",
    "kafka": "eventd.sinks.kafka:KafkaSink",
    "slack": "eventd.sinks.slack:SlackSink",
    "alertmanager": "eventd.sinks.alertmanager:AlertmanagerSink",
    "webhook": "eventd.sinks.webhook:WebhookSink",
}


def _load(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def one_line(err: BaseException) -> str:
    """An exception's text on one line (its class name if it has none), for a
    start-up error that must fit the single line eventd prints."""
    return " ".join(str(err).split()) or type(err).__name__


def _construct(spec: str, section: Any, metrics: Metrics, key: str) -> Any:
    """``Class(section, metrics)``; a constructor's stray ``OSError`` or
    ``ValueError`` becomes a ``ConfigError`` naming ``key``, so every refusal
    reads the same (one line, key first) whichever check made it."""
    cls = _load(spec)
    try:
        return cls(section, metrics)
    except ConfigError:
        raise
    except (OSError, ValueError) as err:
        # scrub: the text of a stray exception may quote a secret it was given.
        raise ConfigError(key, scrub(one_line(err))) from None


def build_sources(sections: Any, metrics: Metrics) -> list[Source]:
    """Every configured source, constructed (which validates it) but not started."""
    sources = []
    for key, spec in SOURCE_CLASSES.items():
        section = getattr(sections, key)
        if section is not None:
            sources.append(_construct(spec, section, metrics, f"sources.{key}"))
    return sources


def build_sinks(sections: Any, metrics: Metrics) -> list[PolicySink]:
    """Every configured sink, behind its own filters and dedup (``PolicySink``),
    constructed (which validates it) but not started."""
    sinks = []
    for key, spec in SINK_CLASSES.items():
        section = getattr(sections, key)
        if section is not None:
            sinks.append(PolicySink(_construct(spec, section, metrics, f"sinks.{key}"), section, metrics))
    return sinks
