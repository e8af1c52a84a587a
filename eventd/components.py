"""Which class implements each configured source and sink.

Adding an input or an output is a new module whose class declares its
``config_key`` (``sinks.webhook``), a section of that name in
``eventd.config`` and one line here.  The registry is "module:Class" text
so a class is imported only when configured (the gRPC stack, say, costs
start-up time for users who never use it); loading a class checks that it
declares the key it is registered under, and ``tests/test_components.py``
holds the registry, the classes and the config sections to the same set.

Constructing a source or sink validates it without side effects (files
readable, TLS loadable, names legal, directories usable) and starts nothing:
``eventd.daemon.validate`` builds them all for ``run``, ``run --check`` and
the manifest tests alike, so a config ``--check`` accepts is one ``run``
accepts.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Literal

from eventd.config import ConfigError, SinksConfig, SourcesConfig
from eventd.logs import scrub
from eventd.metrics import Metrics
from eventd.sinks.base import Sink
from eventd.sinks.policy import PolicySink
from eventd.sources.base import Source

Kind = Literal["sources", "sinks"]

#: ``sources.<section>`` -> "module:Class", constructed as ``Class(section, metrics)``.
SOURCE_CLASSES = {
    "k8s_audit_webhook": "eventd.sources.audit_webhook:AuditWebhookSource",
    "falco_http": "eventd.sources.falco_http:FalcoHttpSource",
    "falco_file": "eventd.sources.falco_file:FalcoFileSource",
    "falco_grpc": "eventd.sources.falco_grpc:FalcoGrpcSource",
    "audit_log": "eventd.sources.audit_log:AuditLogSource",
    "kafka": "eventd.sources.kafka:KafkaSource",
}

#: ``sinks.<section>`` -> "module:Class", constructed as ``Class(section, metrics)``.
SINK_CLASSES = {
    "stdout": "eventd.sinks.stdout:StdoutSink",
    "file": "eventd.sinks.file:FileSink",
    "kafka": "eventd.sinks.kafka:KafkaSink",
    "slack": "eventd.sinks.slack:SlackSink",
    "alertmanager": "eventd.sinks.alertmanager:AlertmanagerSink",
    "webhook": "eventd.sinks.webhook:WebhookSink",
}

REGISTRIES: dict[Kind, dict[str, str]] = {"sources": SOURCE_CLASSES, "sinks": SINK_CLASSES}
_BASES: dict[Kind, type] = {"sources": Source, "sinks": Sink}


class RegistryError(LookupError):
    """The registry and the classes or config sections disagree: a bug in
    eventd (a component added in one place only), never a user's mistake."""


def component_class(kind: Kind, section: str) -> type[Any]:
    """The class registered for ``<kind>.<section>``, imported now.

    Refused (``RegistryError``) when nothing is registered there, or when the
    class declares another ``config_key``: its errors would then name keys
    the user never wrote."""
    key = f"{kind}.{section}"
    spec = REGISTRIES[kind].get(section)
    if spec is None:
        raise RegistryError(f"{key}: no class registered for it in eventd/components.py")
    module, _, name = spec.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, _BASES[kind])):
        raise RegistryError(f"{key}: {spec} is not a {_BASES[kind].__name__}")
    if vars(cls).get("config_key") != key:
        raise RegistryError(f"{key}: {spec} declares config_key {getattr(cls, 'config_key', None)!r}")
    return cls


def configured(sections: SourcesConfig | SinksConfig) -> list[tuple[str, Any]]:
    """``(section name, section)`` of every configured section, in the
    config's order; sections come from ``eventd.config``, not the registry,
    so one without a registered class is refused rather than never built."""
    return [
        (field.name, value)
        for field in dataclasses.fields(sections)
        if (value := getattr(sections, field.name)) is not None
    ]


def one_line(err: BaseException) -> str:
    """An exception's text on one line (its class name if it has none), for a
    start-up error that must fit the single line eventd prints."""
    return " ".join(str(err).split()) or type(err).__name__


def _construct(kind: Kind, section: str, config: Any, metrics: Metrics) -> Any:
    """``Class(config, metrics)``; a constructor's stray ``OSError`` or
    ``ValueError`` becomes a ``ConfigError`` naming the section, so every
    refusal reads the same (one line, key first) whichever check made it."""
    cls = component_class(kind, section)
    try:
        return cls(config, metrics)
    except ConfigError:
        raise
    except (OSError, ValueError) as err:
        # scrub: the text of a stray exception may quote a secret it was given.
        raise ConfigError(cls.config_key, scrub(one_line(err))) from None


def build_sources(sections: SourcesConfig, metrics: Metrics) -> list[Source]:
    """Every configured source, constructed (which validates it) but not started."""
    return [_construct("sources", name, config, metrics) for name, config in configured(sections)]


def build_sinks(sections: SinksConfig, metrics: Metrics) -> list[PolicySink]:
    """Every configured sink, behind its own filters and dedup (``PolicySink``),
    constructed (which validates it) but not started."""
    return [
        PolicySink(_construct("sinks", name, config, metrics), config, metrics)
        for name, config in configured(sections)
    ]
