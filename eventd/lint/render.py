"""Findings as text (people), JSON (scripts) and SARIF 2.1.0 (code scanning).

SARIF facts used here (OASIS SARIF 2.1.0, sections 3.13-3.27): a log has
``version`` "2.1.0" and ``runs``; a run has ``tool.driver`` with ``name``
and reporting descriptors (``rules``) whose ``id`` a result's ``ruleId``
names and whose position ``ruleIndex`` gives; a result has a ``message``
with ``text``, a ``level`` among none/note/warning/error, and
``locations`` with a ``physicalLocation`` (``artifactLocation.uri``,
``region.startLine`` >= 1).  Code-scanning UIs show ``help.text`` and the
``fixes``' descriptions beside the line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import orjson

from eventd import __version__
from eventd.lint.findings import CATALOGUE, Finding

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def text(findings: Sequence[Finding]) -> str:
    """``FILE:LINE: severity CODE item: message`` plus an indented fix line."""
    lines = []
    for f in findings:
        lines.append(f"{f.file}:{f.line}: {f.severity.label} {f.code} {f.item}: {f.message}")
        lines.append(f"    fix: {f.fix}")
    counts = {s: sum(1 for f in findings if f.severity.label == s) for s in ("error", "warning", "note")}
    lines.append(
        f"{len(findings)} findings: {counts['error']} errors, {counts['warning']} warnings, "
        f"{counts['note']} notes"
    )
    return "\n".join(lines) + "\n"


def json_doc(findings: Sequence[Finding]) -> bytes:
    return orjson.dumps(
        {"findings": [f.as_dict() for f in findings], "count": len(findings)}, option=orjson.OPT_INDENT_2
    )


def _uri(path: str) -> str:
    """A relative path stays relative (resolved against the checkout by the
    consumer); an absolute one becomes a ``file://`` URI."""
    p = Path(path)
    return p.as_uri() if p.is_absolute() else p.as_posix()


def sarif_doc(findings: Sequence[Finding]) -> dict:
    codes = sorted({f.code for f in findings} | set(CATALOGUE))
    index = {code: i for i, code in enumerate(codes)}
    rules = [
        {
            "id": code,
            "name": CATALOGUE[code].name,
            "shortDescription": {"text": CATALOGUE[code].summary},
            "help": {"text": CATALOGUE[code].summary},
            "defaultConfiguration": {"level": CATALOGUE[code].severity.label},
        }
        for code in codes
    ]
    results = [
        {
            "ruleId": f.code,
            "ruleIndex": index[f.code],
            "level": f.severity.label,
            "message": {"text": f"{f.item}: {f.message}. Fix: {f.fix}"},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": _uri(f.file)},
                        "region": {"startLine": max(1, f.line)},
                    },
                    "logicalLocations": [{"name": f.item}],
                }
            ],
            "fixes": [{"description": {"text": f.fix}, "artifactChanges": []}],
        }
        for f in findings
    ]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "eventd",
                        "version": __version__,
                        "rules": rules,
                    }
                },
                "results": results,
            }
        ],
    }


def sarif(findings: Sequence[Finding]) -> bytes:
    return orjson.dumps(sarif_doc(findings), option=orjson.OPT_INDENT_2)
