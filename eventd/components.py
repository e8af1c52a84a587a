"""Which class implements each configured source and sink.

Adding an input or an output is a new module plus one line here; the class
is imported only when configured (the gRPC stack, say, costs start-up time
for users who never use it).
"""

from __future__ import annotations

import importlib
from typing import Any

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


def build_sources(sections: Any, metrics: Metrics) -> list[Source]:
    sources = []
    for key, spec in SOURCE_CLASSES.items():
        section = getattr(sections, key)
        if section is not None:
            sources.append(_load(spec)(section, metrics))
    return sources


def build_sinks(sections: Any, metrics: Metrics) -> list[PolicySink]:
    """Every configured sink, behind its own filters and dedup (``PolicySink``)."""
    sinks = []
    for key, spec in SINK_CLASSES.items():
        section = getattr(sections, key)
        if section is not None:
            sinks.append(PolicySink(_load(spec)(section, metrics), section, metrics))
    return sinks
