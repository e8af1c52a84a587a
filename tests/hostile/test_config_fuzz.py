"""Hostile configuration: random YAML files and random ``EVENTD_*`` overrides.

The contract (``eventd/config.py``): every problem is a ``ConfigError``
naming the key it concerns, so that ``eventd run`` prints one line and
exits 2 instead of a traceback.  The documents here are built from the real
schema (every key path of ``Config``) with hostile values, so that they get
past "unknown key" into every converter.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventd.components import build_sources
from eventd.config import Config, ConfigError, load_config
from eventd.metrics import Metrics
from tests.hostile import HANG_GUARD, at_most_steps, linear

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Calls loading one fuzzed config may cost (the documents are small).
CONFIG_STEPS = linear(0, base=2_000_000)
pytestmark = pytest.mark.timeout(HANG_GUARD)


def _key_paths(cls: type, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of the schema, sections and leaves (``sources.kafka.tls.ca``...)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = (*prefix, f.name)
        out.append(path)
        inner = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
        if typing.get_origin(hints[f.name]) is tuple:
            inner = list(typing.get_args(hints[f.name])[:1])
        for tp in inner:
            if dataclasses.is_dataclass(tp):
                out.extend(_key_paths(tp, path))
    return out


KEY_PATHS = _key_paths(Config)

# Any text but NUL (an environment cannot hold one): non-ASCII digits, Unicode
# spaces and lone surrogates included, as they once broke the port parser.
_text = st.text(st.characters(min_codepoint=1), max_size=24)
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    _text,
    st.sampled_from(
        [
            "127.0.0.1:0", "0.0.0.0:99999", "[::1]:9765", ":80", "host:", "[]:1", "localhost:-1",
            "/nonexistent/file", "", " ", "debug", "WARNING", "all", "first", "sub", "get", "earliest",
            "PLAIN", "drop_oldest", "json", "text", "a,b,,c", "~", "1e400", "0x10", "yes", "null",
            "127.0.0.1:\u00b2", "127.0.0.1:\u0661\u0662", "127.0.0.1:\uff18\uff10", "\u00b2", "\u0663",
            "\uff11\uff12\uff17.0.0.1:80", "127.0.0.1:80\u00a0", "\ud800",
        ]
    ),
    st.lists(_text | st.integers(), max_size=3),
    st.dictionaries(_text, _text, max_size=2),
)  # fmt: skip


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A nested mapping with real key paths (and a few wrong ones) set to hostile values."""
    doc: dict[str, Any] = {}
    for path in draw(st.lists(st.sampled_from(KEY_PATHS), max_size=6)):
        if draw(st.integers(0, 9)) == 0:
            path = (*path[:-1], path[-1] + draw(st.sampled_from(["_", "s", "X"])))
        node = doc
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = draw(_values) if draw(st.integers(0, 3)) else {}
    return doc


def _load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config | None:
    path = tmp_path / "eventd.yaml"
    path.write_text(text, encoding="utf-8")
    with at_most_steps(CONFIG_STEPS):
        try:
            return load_config(path, environ or {})
        except ConfigError as err:
            assert str(err)
            return None


@FUZZ
@given(documents())
def test_random_documents_load_or_name_the_key(tmp_path_factory: pytest.TempPathFactory, doc: dict) -> None:
    tmp = tmp_path_factory.mktemp("cfg")
    path = tmp / "eventd.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with at_most_steps(CONFIG_STEPS):
        try:
            config = load_config(path, {})
        except ConfigError as err:
            assert err.key, f"a problem inside a mapping must name its key: {err}"
            top = err.key.split(".")[0].split("[")[0]
            assert top in doc, f"{err.key} is not a key of the document"
            return
    assert isinstance(config, Config)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(KEY_PATHS).map(lambda p: "EVENTD_" + "__".join(p).upper())
        # Names without a first key part once crashed the loader.
        | st.sampled_from(["EVENTD_", "EVENTD___CLUSTER", "EVENTD__", "EVENTD_SERVER____LISTEN"])
        | _text.map(lambda s: "EVENTD_" + s),
        _text
        | st.sampled_from(["[a, b]", "{a: 1}", "'unterminated", "- x", "&a [*a]", "!!binary x", ".nan"]),
        max_size=5,
    )
)
def test_random_environment_overrides_load_or_name_the_key(environ: dict[str, str]) -> None:
    with at_most_steps(CONFIG_STEPS):
        try:
            load_config(None, environ)
        except ConfigError as err:
            assert err.key, f"an override must name its key: {err}"


@settings(max_examples=100, deadline=None)
@given(
    st.text(
        alphabet="-:[]{}&*!|>'\"#%? \t\nsourceslistenk8s_audit_webhook.0123456789²٣\uff11\u00a0\u2028\ufeffé",
        max_size=100,
    )
)
def test_random_yaml_text_is_a_config_error(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    _load(tmp_path_factory.mktemp("cfg"), text)


def test_hostile_but_valid_values_are_refused_with_their_key(tmp_path: Path) -> None:
    cases = {
        "queue_size: 0\n": "queue_size",
        "queue_size: 1.5\n": "queue_size",
        "queue_size: true\n": "queue_size",
        "shutdown_grace_seconds: -1\n": "shutdown_grace_seconds",
        "rules: [[a]]\n": "rules",
        "rules: {a: 1}\n": "rules",
        "server: {listen: '127.0.0.1:65536'}\n": "server.listen",
        "server: {listen: '127.0.0.1:0x10'}\n": "server.listen",
        "server: {listen: 5}\n": "server.listen",
        f"cluster: {'x' * 1_000_000}\nhostname: [1]\n": "hostname",
        "sources: {kafka: {topics: [a, 1]}}\n": "sources.kafka.topics",
        "sinks: {kafka: {routes: [{rules: [x]}]}}\n": "sinks.kafka.routes[0].topic",
        "sinks: {stdout: {min_priority: loud}}\n": "sinks.stdout.min_priority",
        "log_level: TRACE\n": "log_level",
        "? [a, b]\n: 1\n": "",  # an unhashable key is a YAML error
        "a: &x [*x]\n": "a",
    }
    for text, key in cases.items():
        path = tmp_path / "eventd.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as err, at_most_steps(CONFIG_STEPS):
            load_config(path, {})
        assert err.value.key == key, text[:40]


@pytest.mark.parametrize("name", ["EVENTD_", "EVENTD___CLUSTER"])
def test_environment_names_without_a_key_are_named_in_the_error(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {name: "x"})
    assert err.value.key and name in str(err.value)


@pytest.mark.parametrize("where", ["file", "environment"])
def test_deeply_nested_yaml_is_a_config_error(tmp_path: Path, where: str) -> None:
    deep = "[" * 10_000 + "]" * 10_000
    path = tmp_path / "eventd.yaml"
    path.write_text(deep if where == "file" else "{}")
    with pytest.raises(ConfigError):
        load_config(path, {"EVENTD_RULES": deep} if where == "environment" else {})


def test_non_text_digits_in_a_listen_port_are_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "eventd.yaml"
    path.write_text("server: {listen: '127.0.0.1:\u00b2'}\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        load_config(path, {})


def test_invalid_utf8_config_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "eventd.yaml"
    path.write_bytes(b"cluster: \xff\xfe\n")
    with pytest.raises(ConfigError):
        load_config(path, {})


@pytest.mark.parametrize(
    "text",
    [
        "shutdown_grace_seconds: .nan\n",
        "sources: {k8s_audit_webhook: {dedup_window_seconds: .nan}}\n",
        "sources: {falco_grpc: {keepalive_seconds: .nan}}\n",
    ],
)
def test_nan_durations_are_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "eventd.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path, {})


@pytest.mark.parametrize(
    "sources",
    [
        {"k8s_audit_webhook": {"listen": "127.0.0.1:0", "token_file": "a\0b"}},
        {"falco_http": {"listen": "127.0.0.1:0", "tls": {"cert": "a\0b", "key": "k"}}},
        {
            "kafka": {
                "bootstrap_servers": ["127.0.0.1:1"],
                "topics": ["t"],
                "sasl": {"username": "u", "password_file": "a\0b"},
            }
        },
    ],
    ids=["token_file", "tls.cert", "sasl.password_file"],
)
@pytest.mark.asyncio
async def test_nul_in_a_path_is_a_config_error(tmp_path: Path, sources: dict[str, Any]) -> None:
    path = tmp_path / "eventd.yaml"
    path.write_text(yaml.safe_dump({"sources": sources}))
    with pytest.raises(ConfigError):
        config = load_config(path, {})
        build_sources(config.sources, Metrics())
