"""The daemon's configuration: defaults, environment, errors naming keys."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from eventd.config import DEFAULT_CONFIG, Config, ConfigError, Listen, load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "eventd.example.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "eventd.yaml"
    path.write_text(text)
    return path


def test_embedded_default_is_loopback_on_the_ecosystem_ports() -> None:
    config = load_config(None, {})
    assert config == DEFAULT_CONFIG
    assert str(config.sources.k8s_audit_webhook.listen) == "127.0.0.1:9765"
    assert config.sources.k8s_audit_webhook.path == "/k8s-audit"
    assert str(config.sources.falco_http.listen) == "127.0.0.1:2801"
    assert str(config.server.listen) == "127.0.0.1:9376"
    assert config.sinks.stdout is not None and config.rules == ()
    assert config.sources.kafka is None and config.sources.audit_log is None


def test_a_file_replaces_the_defaults(tmp_path: Path) -> None:
    config = load_config(
        _write(tmp_path, "sources:\n  audit_log: {path: /tmp/a.log}\nsinks:\n  stdout: {}\n"), {}
    )
    assert config.sources.audit_log is not None and config.sources.audit_log.path == Path("/tmp/a.log")
    assert config.sources.k8s_audit_webhook is None and config.sources.falco_http is None


def test_environment_overrides_any_key(tmp_path: Path) -> None:
    env = {
        "EVENTD_SOURCES__KAFKA__BOOTSTRAP_SERVERS": "[a:9092, b:9092]",
        "EVENTD_SOURCES__KAFKA__TOPICS": "audit",
        "EVENTD_SOURCES__KAFKA__GROUP_ID": "eu1",
        "EVENTD_RULES": "[/etc/eventd/rules]",
        "EVENTD_SERVER__LISTEN": "0.0.0.0:9376",
        "EVENTD_SHUTDOWN_GRACE_SECONDS": "5",
        "UNRELATED": "x",
    }
    config = load_config(_write(tmp_path, "sinks: {stdout: {}}\n"), env)
    kafka = config.sources.kafka
    assert kafka is not None and kafka.bootstrap_servers == ("a:9092", "b:9092")
    assert kafka.topics == ("audit",) and kafka.group_id == "eu1"
    assert config.rules == ("/etc/eventd/rules",)
    assert config.server.listen == Listen("0.0.0.0", 9376) and config.shutdown_grace_seconds == 5.0


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("sources: {kafka: {topics: 5}}", "sources.kafka.topics", "list of strings"),
        ("sources: {kafak: {}}", "sources.kafak", "did you mean 'kafka'"),
        ("server: {listen: nope}", "server.listen", "host:port"),
        ("server: {listen: 'h:70000'}", "server.listen", "host:port"),
        ("sinks: {stdout: {format: xml}}", "sinks.stdout.format", "one of json, text"),
        ("queue_size: -3", "queue_size", "positive integer"),
        ("watch_rules: 'yes please'", "watch_rules", "true or false"),
        ("sources: {falco_grpc: {mode: push}}", "sources.falco_grpc.mode", "sub, get"),
        ("sources: [a]", "sources", "mapping"),
        ("sources: {k8s_audit_webhook: {tls: {cert: /a}}}", "sources.k8s_audit_webhook.tls.key", "required"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), {})
    assert info.value.key == key
    assert words in str(info.value) and str(info.value).startswith(key)


def test_yaml_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "server:\n  listen: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: invalid YAML"):
        load_config(path, {})


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml", {})


def _keys(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        out.append(prefix + f.name)
        tp = hints[f.name]
        options = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)] or (
            [tp] if dataclasses.is_dataclass(tp) else []
        )
        for option in options:
            if option is not Listen:
                out.extend(_keys(option, f"{prefix}{f.name}."))
    return out


def test_example_file_documents_every_key_and_loads() -> None:
    text = EXAMPLE.read_text()
    missing = [k for k in _keys(Config) if f"{k.rsplit('.', 1)[-1]}:" not in text]
    assert not missing, f"undocumented keys in {EXAMPLE.name}: {missing}"
    assert load_config(EXAMPLE, {}).sinks.stdout is not None


def _readme_name(key: str) -> list[str]:
    """How the README may name a key: literally, or through the shared sink
    rows (``sinks.<sink>.min_priority``, ``sinks.<http sink>.timeout_seconds``)."""
    parts = key.split(".")
    names = [key]
    if len(parts) >= 3 and parts[0] == "sinks":
        rest = ".".join(parts[2:])
        names += [f"sinks.<sink>.{rest}", f"sinks.<http sink>.{rest}"]
    return names


def test_readme_documents_every_key() -> None:
    readme = (EXAMPLE.parent.parent / "README.md").read_text()
    missing = [k for k in _keys(Config) if not any(f"`{n}`" in readme for n in _readme_name(k))]
    assert not missing, f"config keys missing from README: {missing}"
