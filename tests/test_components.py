"""A source or sink says what it is in one place: its ``config_key``.

The registry in ``eventd.components``, the classes it names and the config
sections of ``eventd.config`` must be one set, or a configured section is
never built (or a class's errors name keys the user never wrote)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from eventd.alerts import Alert
from eventd.components import (
    REGISTRIES,
    SINK_CLASSES,
    SOURCE_CLASSES,
    RegistryError,
    build_sinks,
    build_sources,
    component_class,
)
from eventd.config import (
    ConfigError,
    FalcoFileConfig,
    FileSinkConfig,
    KafkaSinkConfig,
    SinksConfig,
    SourcesConfig,
    StdoutSinkConfig,
    WebhookSinkConfig,
)
from eventd.metrics import Metrics
from eventd.sinks.base import Sink
from eventd.sinks.policy import PolicySink
from eventd.sources.base import Inlet, Source

CONFIG_SECTIONS = {"sources": SourcesConfig, "sinks": SinksConfig}
ENTRIES = [(kind, section) for kind, registry in REGISTRIES.items() for section in registry]


@pytest.mark.parametrize("kind", ["sources", "sinks"])
def test_registry_and_config_sections_are_the_same_set(kind: str) -> None:
    sections = {field.name for field in dataclasses.fields(CONFIG_SECTIONS[kind])}
    assert set(REGISTRIES[kind]) == sections


@pytest.mark.parametrize(("kind", "section"), ENTRIES, ids=[f"{k}.{s}" for k, s in ENTRIES])
def test_every_registered_class_declares_its_registry_key(kind: str, section: str) -> None:
    cls = component_class(kind, section)
    assert cls.config_key == f"{kind}.{section}"
    assert cls.name == section  # derived (a class declaring it too is refused, below)


def test_a_class_registered_under_another_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SINK_CLASSES, "file", "eventd.sinks.stdout:StdoutSink")
    with pytest.raises(RegistryError, match=r"sinks\.file: .*StdoutSink declares config_key 'sinks\.stdout'"):
        component_class("sinks", "file")
    with pytest.raises(RegistryError, match=r"sinks\.file"):
        build_sinks(SinksConfig(file=FileSinkConfig(path=Path("/nonexistent/alerts.jsonl"))), Metrics())


def test_a_registered_class_of_the_wrong_kind_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SOURCE_CLASSES, "kafka", "eventd.sinks.stdout:StdoutSink")
    with pytest.raises(RegistryError, match=r"sources\.kafka: .*StdoutSink is not a Source"):
        component_class("sources", "kafka")


def test_a_config_section_without_a_class_is_refused_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(SOURCE_CLASSES, "falco_file")
    with pytest.raises(RegistryError, match=r"sources\.falco_file: no class registered"):
        build_sources(SourcesConfig(falco_file=FalcoFileConfig(path="-")), Metrics())


def test_sections_are_built_in_config_order() -> None:
    sinks = build_sinks(
        SinksConfig(stdout=StdoutSinkConfig(), webhook=WebhookSinkConfig(url="http://a.test/")), Metrics()
    )
    assert [s.name for s in sinks] == ["stdout", "webhook"]
    assert [s.config_key for s in sinks] == ["sinks.stdout", "sinks.webhook"]  # PolicySink passes it on


def test_name_is_derived_from_config_key() -> None:
    class Pager(Sink):
        config_key = "sinks.pager"

        async def send(self, alert: Alert) -> None:
            raise AssertionError

    class Tap(Source):
        config_key = "sources.tap"

        async def run(self, inlet: Inlet) -> None:
            raise AssertionError

        async def stop(self) -> None:
            raise AssertionError

    assert (Pager.name, Tap.name) == ("pager", "tap")
    assert PolicySink(Pager(), StdoutSinkConfig(), Metrics()).config_key == "sinks.pager"


@pytest.mark.parametrize(
    ("base", "body", "message"),
    [
        (Sink, {"config_key": "sources.pager"}, "must read 'sinks.<name>'"),
        (Source, {"config_key": "sinks.tap"}, "must read 'sources.<name>'"),
        (Sink, {"config_key": "sinks."}, "must read 'sinks.<name>'"),
        (Sink, {"config_key": "sinks.a.b"}, "must read 'sinks.<name>'"),
        (Sink, {"config_key": "sinks.pager", "name": "pager"}, "declares name as well as config_key"),
    ],
)
def test_a_malformed_or_doubled_declaration_is_refused(
    base: type, body: dict[str, str], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        type("Bad", (base,), body)


@pytest.mark.parametrize(
    ("config", "key"),
    [
        (SinksConfig(webhook=WebhookSinkConfig()), "sinks.webhook.url"),
        (SinksConfig(kafka=KafkaSinkConfig(key="bogus")), "sinks.kafka.key"),
        (SinksConfig(kafka=KafkaSinkConfig(topic="a/b")), "sinks.kafka.topic"),
    ],
)
def test_config_errors_name_keys_under_the_declared_key(config: SinksConfig, key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        build_sinks(config, Metrics())
    assert refused.value.key == key


def test_only_configured_components_are_imported() -> None:
    """The registry stays lazy: a config without gRPC or Kafka loads neither."""
    probe = (
        "import json, sys\n"
        "from eventd.components import build_sinks, build_sources\n"
        "from eventd.config import FalcoFileConfig, SinksConfig, SourcesConfig, StdoutSinkConfig\n"
        "from eventd.metrics import Metrics\n"
        "build_sources(SourcesConfig(falco_file=FalcoFileConfig(path='-')), Metrics())\n"
        "build_sinks(SinksConfig(stdout=StdoutSinkConfig()), Metrics())\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'aiokafka')"
        " or m.startswith(('eventd.sources.', 'eventd.sinks.')))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert "eventd.sources.falco_file" in loaded and "eventd.sinks.stdout" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("grpc", "aiokafka")}
    assert not loaded & {"eventd.sources.falco_grpc", "eventd.sources.kafka", "eventd.sinks.kafka"}
