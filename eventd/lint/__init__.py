"""``eventd rules lint``: the mistakes that make image rules detect nothing.

``lint_paths`` reads rule files (and Gatekeeper and Prometheus files given
alongside them), runs every check and returns findings sorted by file and
line.  The checks read the files on their own terms, item by item, so one
broken rule does not hide the findings of the others (the loader, by
design, refuses a whole file at its first problem).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from eventd.boundedfile import FileTooLarge, read_bounded
from eventd.engine.errors import RuleError
from eventd.engine.loader import rule_files
from eventd.engine.yamlsrc import Seq
from eventd.lint.checks import RULE_CHECKS
from eventd.lint.findings import CATALOGUE, Finding, Severity, finding
from eventd.lint.gatekeeper_checks import kubernetes_object
from eventd.lint.model import Corpus, RulesFile, read_documents, read_rules
from eventd.lint.prometheus_checks import prometheus

__all__ = ["CATALOGUE", "Finding", "Severity", "lint_paths", "lint_texts", "worst"]


def _read(path: Path) -> str:
    try:
        return read_bounded(path).decode("utf-8-sig")
    except FileTooLarge as err:
        raise OSError(f"{path}: larger than {err.limit} bytes") from None
    except UnicodeDecodeError as err:
        raise OSError(f"{path}: not UTF-8 ({err.reason})") from None


def lint_paths(paths: Sequence[str | Path]) -> list[Finding]:
    """Lint files and directories (``*.yaml``/``*.yml``), in order."""
    files = rule_files(paths)
    out: list[Finding] = []
    texts = []
    for f in files:
        try:
            texts.append((str(f), _read(f)))
        except OSError as err:
            out.append(finding("EVD000", str(f), 1, "file", f"cannot read: {err}", "check the path"))
    return out + lint_texts(texts)


def lint_texts(texts: Sequence[tuple[str, str]]) -> list[Finding]:
    """Lint ``(display name, text)`` pairs as if they were files loaded together."""
    out: list[Finding] = []
    rule_sets: list[RulesFile] = []
    for name, text in texts:
        try:
            docs, fence = read_documents(name, text)
        except RuleError as err:
            out.append(finding("EVD000", name, err.line or 1, "file", err.message, "fix the YAML syntax"))
            continue
        if fence is not None:
            out.append(
                finding(
                    "EVD000",
                    name,
                    fence,
                    "file",
                    "a Markdown code fence (```) left from a copied snippet makes the file invalid YAML; "
                    "kubectl, promtool and Falco refuse it",
                    "delete the line",
                )
            )
        if any(isinstance(d, Seq) for d in docs):
            rule_sets.append(read_rules(name, docs))
        for doc in docs:
            if not isinstance(doc, Seq):
                out += kubernetes_object(doc, name)
                out += prometheus(doc, name, text)
    corpus = Corpus(rule_sets)
    for check in RULE_CHECKS:
        out += check(corpus)
    return sorted(dict.fromkeys(out), key=lambda f: (f.file, f.line, f.code, f.item, f.message))


def worst(findings: Sequence[Finding]) -> Severity | None:
    """The highest severity present, or ``None``."""
    return max((f.severity for f in findings), default=None)
