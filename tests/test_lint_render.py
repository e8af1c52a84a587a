"""``eventd rules lint`` output: text, JSON, SARIF 2.1.0, exit status, and
``eventd rules check`` printing the same findings as warnings.

The SARIF schema below is written from the OASIS SARIF 2.1.0 standard
(sections 3.13 sarifLog, 3.14 run, 3.18 tool/toolComponent, 3.27 result,
3.28 location, 3.29 physicalLocation, 3.30 region, 3.49
reportingDescriptor, 3.55 fix); it keeps only what eventd emits and is
strict about it (unknown keys refused), so a misspelt property fails here
the way a code-scanning upload would.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jsonschema
import pytest

from eventd.lint import lint_texts
from eventd.lint.render import json_doc, sarif_doc, text
from tests.support.cli import run_eventd as run

_MESSAGE = {
    "type": "object",
    "required": ["text"],
    "properties": {"text": {"type": "string", "minLength": 1}},
    "additionalProperties": False,
}
SARIF_SUBSET = {
    "type": "object",
    "required": ["version", "runs"],
    "properties": {
        "$schema": {"type": "string", "format": "uri"},
        "version": {"const": "2.1.0"},
        "runs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["tool", "results"],
                "additionalProperties": False,
                "properties": {
                    "tool": {
                        "type": "object",
                        "required": ["driver"],
                        "additionalProperties": False,
                        "properties": {
                            "driver": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string"},
                                    "version": {"type": "string"},
                                    "informationUri": {"type": "string", "format": "uri"},
                                    "rules": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["id"],
                                            "additionalProperties": False,
                                            "properties": {
                                                "id": {"type": "string"},
                                                "name": {"type": "string"},
                                                "shortDescription": _MESSAGE,
                                                "help": _MESSAGE,
                                                "defaultConfiguration": {
                                                    "type": "object",
                                                    "additionalProperties": False,
                                                    "properties": {
                                                        "level": {
                                                            "enum": ["none", "note", "warning", "error"]
                                                        }
                                                    },
                                                },
                                            },
                                        },
                                    },
                                },
                            }
                        },
                    },
                    "results": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["message"],
                            "additionalProperties": False,
                            "properties": {
                                "ruleId": {"type": "string"},
                                "ruleIndex": {"type": "integer", "minimum": -1},
                                "level": {"enum": ["none", "note", "warning", "error"]},
                                "message": _MESSAGE,
                                "locations": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "properties": {
                                            "physicalLocation": {
                                                "type": "object",
                                                "additionalProperties": False,
                                                "properties": {
                                                    "artifactLocation": {
                                                        "type": "object",
                                                        "additionalProperties": False,
                                                        "properties": {
                                                            "uri": {
                                                                "type": "string",
                                                                "format": "uri-reference",
                                                            }
                                                        },
                                                    },
                                                    "region": {
                                                        "type": "object",
                                                        "additionalProperties": False,
                                                        "properties": {
                                                            "startLine": {"type": "integer", "minimum": 1}
                                                        },
                                                    },
                                                },
                                            },
                                            "logicalLocations": {
                                                "type": "array",
                                                "items": {
                                                    "type": "object",
                                                    "additionalProperties": False,
                                                    "properties": {"name": {"type": "string"}},
                                                },
                                            },
                                        },
                                    },
                                },
                                "fixes": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["artifactChanges"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "description": _MESSAGE,
                                            "artifactChanges": {"type": "array"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}

BROKEN = textwrap.dedent(
    """\
    - rule: Suspicious Image Pull
      desc: d
      condition: >
        ka.verb=create and ka.target.resource=pods and
        not ka.req.pod.containers.image startswith "myregistry.io"
      output: "x %ka.user.name"
      priority: WARNING
    """
)
WARN_ONLY = textwrap.dedent(
    """\
    - rule: Pods only
      desc: d
      condition: ka.verb=create and ka.target.resource=pods and ka.req.pod.images.registry exists
      output: "x %ka.user.name"
      priority: WARNING
      source: k8s_audit
    """
)


def test_sarif_validates_and_indexes_its_rules() -> None:
    found = lint_texts([("rules/broken.yaml", BROKEN)])
    doc = sarif_doc(found)
    jsonschema.validate(doc, SARIF_SUBSET, format_checker=jsonschema.FormatChecker())
    run_ = doc["runs"][0]
    rules = run_["tool"]["driver"]["rules"]
    assert len(run_["results"]) == len(found) > 0
    for result in run_["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "rules/broken.yaml"


def test_sarif_validator_is_strict() -> None:
    doc = sarif_doc(lint_texts([("r.yaml", BROKEN)]))
    doc["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SARIF_SUBSET)


def test_text_and_json_carry_every_part_of_a_finding() -> None:
    found = lint_texts([("r.yaml", BROKEN)])
    out = text(found)
    first = found[0]
    assert f"r.yaml:{first.line}: {first.severity.label} {first.code} {first.item}: " in out
    assert "    fix: " in out and out.rstrip().endswith("notes")
    doc = json.loads(json_doc(found))
    assert doc["count"] == len(found)
    assert set(doc["findings"][0]) == {"code", "name", "severity", "file", "line", "item", "message", "fix"}


def test_cli_exit_status_follows_the_worst_severity(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN)
    warn = tmp_path / "warn.yaml"
    warn.write_text(WARN_ONLY)
    bad = run("rules", "lint", str(broken))
    assert bad.returncode == 1 and "EVD001" in bad.stdout and "EVD011" in bad.stdout
    ok = run("rules", "lint", str(warn))
    assert ok.returncode == 0 and "EVD013" in ok.stdout


def test_cli_writes_sarif_and_json(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN)
    out = tmp_path / "lint.sarif"
    done = run("rules", "lint", "--format", "sarif", "-o", str(out), str(broken))
    assert done.returncode == 1 and done.stdout == ""
    jsonschema.validate(json.loads(out.read_text()), SARIF_SUBSET)
    as_json = run("rules", "lint", "--format", "json", str(broken))
    assert {f["code"] for f in json.loads(as_json.stdout)["findings"]} >= {"EVD001", "EVD011", "EVD013"}


def test_rules_check_prints_the_findings_as_warnings_without_changing_its_exit(tmp_path: Path) -> None:
    warn = tmp_path / "warn.yaml"
    warn.write_text(WARN_ONLY)
    done = run("rules", "check", str(warn))
    assert done.returncode == 0
    assert f"eventd: warning: {warn}:3: EVD013 rule 'Pods only'" in done.stderr
