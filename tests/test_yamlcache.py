"""The parsed-rules cache must give exactly the tree a parse gives, or nothing.

What could go wrong: a damaged or foreign entry read as rules, an alias
bomb written out, a read-only or missing directory breaking a command, the
directory growing without end, the daemon reading what a user's CLI wrote.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventd.engine import yamlcache, yamlparse
from eventd.engine.errors import RuleError
from eventd.engine.loader import load_rules_text
from eventd.engine.yamlsrc import load_documents
from eventd.rulepacks import builtin_rule_files

RULES = """
- list: trusted
  items: [docker.io, "gcr.io", 0x1f, "yes"]
- macro: pods
  condition: ka.target.resource = pods
- rule: Untrusted
  desc: d
  condition: pods and not ka.req.pod.images.registry in (trusted)
  output: image %ka.req.pod.images.name
  priority: WARNING
  source: k8s_audit
"""


def _entries(directory: Path) -> list[Path]:
    return sorted(directory.glob("rules-*.msgpack"))


def _no_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(text: str, file: str) -> None:
        raise AssertionError("parsed although the cache holds the text")

    monkeypatch.setattr(yamlparse, "parse", refuse)


def test_a_second_load_reads_the_tree_back_without_parsing(tmp_path, monkeypatch) -> None:
    with yamlcache.enabled({"EVENTD_CACHE_DIR": str(tmp_path)}):
        parsed = load_documents(RULES, "r.yaml")
    (entry,) = _entries(tmp_path)
    assert entry.stat().st_mode & 0o777 == 0o600 and tmp_path.stat().st_mode & 0o777 == 0o700
    _no_parse(monkeypatch)
    with yamlcache.enabled({"EVENTD_CACHE_DIR": str(tmp_path)}):
        assert load_documents(RULES, "r.yaml") == parsed
        ruleset = load_rules_text([("r.yaml", RULES)])
    assert [r.name for r in ruleset.rules] == ["Untrusted"]


def test_the_built_in_packs_round_trip(tmp_path) -> None:
    for path in builtin_rule_files():
        text = Path(path).read_text()
        parsed, _ = yamlparse.parse(text, str(path))
        with yamlcache.enabled({"EVENTD_CACHE_DIR": str(tmp_path)}) as cache:
            assert cache is not None
            cache.save(text, parsed)
            assert cache.load(text) == parsed


@pytest.mark.parametrize(
    "damage",
    [
        b"",
        b"\x00garbage",
        msgspec.msgpack.encode([{"type": "Scalar", "text": 1, "line": "x"}]),
        msgspec.msgpack.encode({"not": "a list"}),
        msgspec.msgpack.encode([{"type": "Unknown"}]),
        b"\xdd\xff\xff\xff\xff",  # an array header claiming 4 billion items
    ],
)
def test_a_damaged_entry_is_a_miss_and_is_rewritten(tmp_path, damage: bytes) -> None:
    env = {"EVENTD_CACHE_DIR": str(tmp_path)}
    with yamlcache.enabled(env):
        parsed = load_documents(RULES, "r.yaml")
    (entry,) = _entries(tmp_path)
    entry.write_bytes(damage)
    with yamlcache.enabled(env):
        assert load_documents(RULES, "r.yaml") == parsed
    assert entry.read_bytes() != damage


def test_an_entry_past_the_size_limit_is_not_read(tmp_path, monkeypatch) -> None:
    env = {"EVENTD_CACHE_DIR": str(tmp_path)}
    with yamlcache.enabled(env):
        parsed = load_documents(RULES, "r.yaml")
    monkeypatch.setattr(yamlcache, "MAX_BYTES", 16)
    _no_parse(monkeypatch)
    with yamlcache.enabled(env), pytest.raises(AssertionError, match="parsed although"):
        load_documents(RULES, "r.yaml")
    assert parsed


def test_aliases_and_errors_are_never_kept(tmp_path) -> None:
    bomb = "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n"
    with yamlcache.enabled({"EVENTD_CACHE_DIR": str(tmp_path)}):
        assert load_documents(bomb, "bomb.yaml")
        with pytest.raises(RuleError, match="YAML syntax error"):
            load_documents("- [unclosed", "bad.yaml")
        with pytest.raises(RuleError, match="YAML syntax error"):
            load_documents("- [unclosed", "bad.yaml")  # the same error, every time
    assert _entries(tmp_path) == []


def test_off_read_only_and_missing_directories_cost_only_the_parse(tmp_path) -> None:
    with yamlcache.enabled({"EVENTD_CACHE_DIR": "off"}) as cache:
        assert cache is None and load_documents(RULES, "r.yaml")
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o500)
    with yamlcache.enabled({"EVENTD_CACHE_DIR": str(read_only / "cache")}):
        assert load_documents(RULES, "r.yaml")
    assert not (read_only / "cache").exists() or os.geteuid() == 0
    with yamlcache.enabled({"EVENTD_CACHE_DIR": str(tmp_path / "a-file")}):
        (tmp_path / "a-file").write_text("not a directory")
        assert load_documents(RULES, "r.yaml")
    assert yamlcache.ACTIVE is None  # restored after each block


def test_where_the_cache_lives() -> None:
    assert yamlcache.directory_from({"XDG_CACHE_HOME": "/x"}) == Path("/x/eventd")
    assert yamlcache.directory_from({"HOME": "/home/u"}) == Path.home() / ".cache" / "eventd"
    assert yamlcache.directory_from({"EVENTD_CACHE_DIR": "/c", "XDG_CACHE_HOME": "/x"}) == Path("/c")
    assert yamlcache.directory_from({"EVENTD_CACHE_DIR": ""}) is None
    assert yamlcache.directory_from({}) is None


def test_the_directory_keeps_the_newest_entries(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(yamlcache, "MAX_FILES", 3)
    texts = [f"- item: {i}\n" for i in range(6)]
    with yamlcache.enabled({"EVENTD_CACHE_DIR": str(tmp_path)}) as cache:
        assert cache is not None
        for age, text in enumerate(texts):
            load_documents(text, "r.yaml")
            entry = cache._path(text)
            assert entry is not None
            os.utime(entry, ns=(age * 10**9, age * 10**9))
        kept = {cache._path(text) for text in texts[-3:]}
    assert set(_entries(tmp_path)) == kept


_scalars = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
_yaml_values = st.recursive(
    st.one_of(_scalars, st.none(), st.integers(), st.booleans()),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_scalars, children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_yaml_values)
def test_a_cached_tree_is_the_parsed_tree(tmp_path, value) -> None:
    import yaml

    text = yaml.safe_dump([value], allow_unicode=True)
    parsed, _ = yamlparse.parse(text, "r.yaml")
    with yamlcache.enabled({"EVENTD_CACHE_DIR": str(tmp_path)}):
        load_documents(text, "r.yaml")
        assert load_documents(text, "r.yaml") == parsed


def test_the_cli_keeps_the_built_in_packs_and_the_daemon_does_not_read_them(tmp_path) -> None:
    env = {**os.environ, "EVENTD_CACHE_DIR": str(tmp_path)}
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "eventd", "scan", str(empty)], env=env, capture_output=True, check=False
        )
        assert done.returncode == 0, done.stderr
    assert len(_entries(tmp_path)) == len(builtin_rule_files())
    assert yamlcache.ACTIVE is None


def test_the_cache_variable_is_not_a_daemon_setting() -> None:
    from eventd.config import ConfigError, load_config

    load_config(None, {yamlcache.ENV_NAME: "/somewhere"})  # accepted, and not a setting
    with pytest.raises(ConfigError, match="cache_dirs"):
        load_config(None, {"EVENTD_CACHE_DIRS": "/somewhere"})  # a typo is still refused


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722])
def test_a_directory_others_can_write_is_not_used(tmp_path, monkeypatch, mode: int) -> None:
    """A shared directory could hold a planted tree of other rules under the
    name of ours: it is neither read nor written."""
    shared = tmp_path / "shared"
    with yamlcache.enabled({"EVENTD_CACHE_DIR": str(shared)}):
        parsed = load_documents(RULES, "r.yaml")
    (entry,) = _entries(shared)
    planted = msgspec.msgpack.encode(load_documents("- rule: planted\n", "p.yaml"))
    entry.write_bytes(planted)
    shared.chmod(mode)
    with yamlcache.enabled({"EVENTD_CACHE_DIR": str(shared)}):
        assert load_documents(RULES, "r.yaml") == parsed  # parsed, not the planted tree
        load_documents("- other: 1\n", "o.yaml")
    assert _entries(shared) == [entry] and entry.read_bytes() == planted  # nothing written
    shared.chmod(0o700)
    with yamlcache.enabled({"EVENTD_CACHE_DIR": str(shared)}):
        assert load_documents(RULES, "r.yaml") != parsed  # a private directory is trusted
