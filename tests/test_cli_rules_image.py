"""``eventd rules check`` and ``eventd image`` end to end, as subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eventd.engine.loader import load_rules
from eventd.rulepacks import builtin_rule_files
from tests.test_cli_scan import ROOT, Result, eventd, start

FALCO_STYLE = ROOT / "tests" / "data" / "rules" / "falco_style_k8s.yaml"
DIGEST = "sha256:" + "0123456789abcdef" * 4
BROKEN = """\
- macro: fine
  condition: ka.verb = create

- rule: Broken Output
  desc: names a field that does not exist
  condition: fine
  output: "user=%ka.user.nam"
  priority: WARNING
  source: k8s_audit
"""


def _json(result: Result) -> dict:
    assert result.rc == 0, result.err
    return json.loads(result.out)


# -------------------------------------------------------------- rules check


def test_rules_check_without_paths_checks_the_builtin_packs(tmp_path: Path) -> None:
    runs = [
        start("rules", "check", cwd=tmp_path),
        start("rules", "check", "--format", "json", cwd=tmp_path),
    ]
    text, as_json = (r.wait() for r in runs)
    expected = load_rules(builtin_rule_files())
    assert text.rc == 0, text.err
    # Only the packs' uses of eventd's extensions are warned about (issue 12).
    assert all("is an eventd extension" in line for line in text.err.splitlines())
    assert f"{len(expected.rules)} rules enabled" in text.out
    assert "Image From Untrusted Registry" in text.out
    doc = _json(as_json)
    assert [r["name"] for r in doc["rules"]] == [r.name for r in expected.rules]
    assert doc["files"] == [str(p) for p in builtin_rule_files()]
    assert doc["disabled"] == [] and {w["code"] for w in doc["warnings"]} == {"EVENTD_NOT_PORTABLE"}


def test_rules_check_json_lists_names_priorities_and_sources(tmp_path: Path) -> None:
    result = eventd("rules", "check", "--format", "json", FALCO_STYLE, cwd=tmp_path)
    doc = _json(result)
    assert [(r["name"], r["priority"], r["source"]) for r in doc["rules"]] == [
        ("Privileged Pod Launched", "Critical", "k8s_audit"),  # priority replaced by an override
        ("Exec Into Pod", "Notice", "k8s_audit"),
        ("Credentials In ConfigMap", "Warning", "k8s_audit"),
    ]
    assert doc["rules"][0]["file"] == str(FALCO_STYLE)
    assert doc["rules"][0]["line"] == 74
    assert doc["disabled"] == ["Unexpected Namespace", "Every Deletion"]
    assert doc["files"] == [str(FALCO_STYLE)]
    # Warnings are in the document and on stderr, and do not fail the check.
    lines = doc["warning_lines"]
    assert any("Node Shell Spawned" in w and "syscall" in w for w in lines)
    assert any("never_true" in w for w in lines)
    assert [w["code"] for w in doc["warnings"] if "never_true" in w["item"]] == ["LOAD_UNUSED_MACRO"]
    assert result.err.splitlines()[-len(lines) :] == [f"eventd: warning: {w}" for w in lines]


def test_rules_check_text_lists_rules_and_prints_warnings(tmp_path: Path) -> None:
    result = eventd("rules", "check", FALCO_STYLE, cwd=tmp_path)
    assert result.rc == 0
    for name in ("Privileged Pod Launched", "Exec Into Pod", "Credentials In ConfigMap"):
        assert name in result.out
    assert "Node Shell Spawned" not in result.out
    assert "3 rules enabled, 2 disabled" in result.out
    assert f"eventd: warning: {FALCO_STYLE}:135: rule 'Node Shell Spawned'" in result.err


def test_rules_check_loads_paths_in_order(tmp_path: Path) -> None:
    (tmp_path / "local.yaml").write_text(
        "- rule: Exec Into Pod\n  enabled: false\n  override:\n    enabled: replace\n"
    )
    doc = _json(eventd("rules", "check", "--format", "json", FALCO_STYLE, "local.yaml", cwd=tmp_path))
    assert [r["name"] for r in doc["rules"]] == ["Privileged Pod Launched", "Credentials In ConfigMap"]
    assert "Exec Into Pod" in doc["disabled"]
    assert doc["files"] == [str(FALCO_STYLE), "local.yaml"]


def test_broken_rules_file_exits_2_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(BROKEN)
    (tmp_path / "syntax.yaml").write_text("- list: a\n  items: [x, y\n")
    runs = [
        start("rules", "check", "broken.yaml", cwd=tmp_path),
        start("rules", "check", "--format", "json", "syntax.yaml", cwd=tmp_path),
        start("rules", "check", "missing.yaml", cwd=tmp_path),
    ]
    broken, syntax, missing = (r.wait() for r in runs)
    assert broken.rc == 2 and broken.out == ""
    assert broken.err.startswith("eventd: rules refused: broken.yaml:7: rule 'Broken Output': output:")
    assert "%ka.user.nam" in broken.err
    assert syntax.rc == 2
    # --format json reports the refusal too, with Falco's code (issue 12)
    (err,) = json.loads(syntax.out)["errors"]
    assert (err["code"], err["file"], err["line"]) == ("LOAD_ERR_YAML_PARSE", "syntax.yaml", 3)
    assert syntax.err.startswith("eventd: rules refused: syntax.yaml:")
    assert "YAML" in syntax.err
    assert missing.rc == 2
    assert "missing.yaml" in missing.err and "No such file" in missing.err


# -------------------------------------------------------------------- image


VALID = [
    # (reference, registry, name, tag, digest)
    ("nginx", "docker.io", "docker.io/library/nginx", None, None),
    ("bitnami/redis:7.2", "docker.io", "docker.io/bitnami/redis", "7.2", None),
    ("localhost:5000/team/app:1.0", "localhost:5000", "localhost:5000/team/app", "1.0", None),
    ("registry:5000/app", "registry:5000", "registry:5000/app", None, None),
    ("localhost:5000", "docker.io", "docker.io/library/localhost", "5000", None),  # no "/": a tag
    (f"quay.io/org/app:v1@{DIGEST}", "quay.io", "quay.io/org/app", "v1", DIGEST),
    (f"10.0.0.5:5000/tools/debug@{DIGEST}", "10.0.0.5:5000", "10.0.0.5:5000/tools/debug", None, DIGEST),
]


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """``eventd image`` run once on every valid reference: raw -> JSON line."""
    result = eventd("image", *(v[0] for v in VALID), cwd=tmp_path_factory.mktemp("image"))
    assert result.rc == 0, result.err
    docs = [json.loads(line) for line in result.out.splitlines()]
    assert [d["raw"] for d in docs] == [v[0] for v in VALID]
    return {d["raw"]: d for d in docs}


@pytest.mark.parametrize(("ref", "registry", "name", "tag", "digest"), VALID, ids=[v[0][:30] for v in VALID])
def test_image_parses_and_normalises(
    parsed: dict[str, dict], ref: str, registry: str, name: str, tag: str | None, digest: str | None
) -> None:
    doc = parsed[ref]
    assert doc["valid"] is True and doc["error"] is None
    assert (doc["registry"], doc["name"], doc["tag"], doc["digest"]) == (registry, name, tag, digest)
    assert doc["pinned"] is (digest is not None)
    assert doc["has_port"] is (":" in registry)


def test_invalid_references_are_reported_and_exit_1(tmp_path: Path) -> None:
    refs = [
        "nginx:1.27",
        "Nginx",
        f"gcr.io/p/app@{DIGEST[:-1]}",
        "gcr.io/p/app@sha256:" + "0123456789ABCDEF" * 4,
        "a" * 64,
    ]
    result = eventd("image", *refs, cwd=tmp_path)
    assert result.rc == 1
    docs = [json.loads(line) for line in result.out.splitlines()]
    assert [d["raw"] for d in docs] == refs  # one line per reference, in order, valid ones too
    assert [d["valid"] for d in docs] == [True, False, False, False, False]
    assert [d["error"] for d in docs] == [None, "uppercase", "digest_length", "format", "identifier"]
    for doc in docs[1:]:
        assert doc["error_message"]
        assert doc["registry"] is None and doc["name"] is None


def test_image_needs_a_reference(tmp_path: Path) -> None:
    result = eventd("image", cwd=tmp_path)
    assert result.rc == 2
    assert "REF" in result.err
