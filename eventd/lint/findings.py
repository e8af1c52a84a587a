"""What a lint finding is, and the catalogue of stable codes.

Codes are an interface: CI configurations and SARIF consumers key on them,
so a code is never renumbered or reused; a retired check keeps its number.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(enum.IntEnum):
    """Ordered so that ``max()`` gives the worst; names are SARIF levels."""

    NOTE = 1
    WARNING = 2
    ERROR = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Check:
    """One entry of the catalogue: what the code means, in general."""

    code: str
    name: str
    severity: Severity
    summary: str


#: Every code eventd's linter can report.  ``severity`` is the default; a
#: finding may be raised at a lower level where the context makes it less
#: certain (a syscall rule's field eventd cannot know).
CATALOGUE: dict[str, Check] = {
    c.code: c
    for c in (
        Check("EVD000", "unreadable-file", Severity.ERROR, "The file is not valid YAML or not a known kind."),
        Check(
            "EVD001",
            "missing-source",
            Severity.ERROR,
            "A rule without `source:` is a syscall rule; one on audit or alert fields is skipped "
            "and detects nothing.",
        ),
        Check(
            "EVD002",
            "unknown-field",
            Severity.ERROR,
            "The condition or output names a field that does not exist.",
        ),
        Check(
            "EVD003",
            "field-alias",
            Severity.WARNING,
            "A guide-invented field name eventd reads as an alias; Falco refuses it.",
        ),
        Check("EVD004", "undefined-macro", Severity.ERROR, "The condition names a macro no file defines."),
        Check("EVD005", "condition-syntax", Severity.ERROR, "The condition does not parse."),
        Check(
            "EVD006",
            "syscall-rule-skipped",
            Severity.NOTE,
            "eventd reads no syscalls: the rule loads in Falco only; eventd can judge Falco's "
            "alerts instead.",
        ),
        Check(
            "EVD010",
            "registry-prefix-without-slash",
            Severity.ERROR,
            "A registry prefix compared without a trailing `/` also admits look-alike hosts.",
        ),
        Check(
            "EVD011",
            "negated-any-element",
            Severity.ERROR,
            "`not` over an any-element match on a list field fires only when every element is bad.",
        ),
        Check(
            "EVD012",
            "granularity-mismatch",
            Severity.ERROR,
            "Values of one granularity (registry) compared whole with a field of another (repository).",
        ),
        Check(
            "EVD013",
            "pods-only",
            Severity.WARNING,
            "An image rule on `pods` only never sees Deployment, Job or CronJob templates.",
        ),
        Check(
            "EVD014",
            "mutable-tag-as-pinned",
            Severity.WARNING,
            "An image reference with a tag (or none) compared as if it named fixed content.",
        ),
        Check(
            "EVD015",
            "implicit-latest",
            Severity.WARNING,
            "An image reference without tag or digest is `latest` spelled by omission.",
        ),
        Check(
            "EVD020",
            "gatekeeper-prefix",
            Severity.ERROR,
            "A Gatekeeper policy matches registries with a bare string prefix (`starts_with`).",
        ),
        Check(
            "EVD021",
            "gatekeeper-container-families",
            Severity.WARNING,
            "A Gatekeeper template checks `containers` only; init and ephemeral containers pass.",
        ),
        Check(
            "EVD022",
            "gatekeeper-not-enforced",
            Severity.WARNING,
            "A Constraint in `dryrun` or `warn` mode admits what it reports.",
        ),
        Check(
            "EVD023",
            "gatekeeper-excluded-namespaces",
            Severity.NOTE,
            "Namespaces excluded from a Constraint are not checked at admission.",
        ),
        Check(
            "EVD030",
            "prometheus-unescaped-dot",
            Severity.WARNING,
            "An unescaped `.` in a registry regex matches any character.",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem at one place, with what to do about it."""

    code: str
    severity: Severity
    file: str
    line: int
    item: str
    message: str
    fix: str

    @property
    def name(self) -> str:
        return CATALOGUE[self.code].name

    def as_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "name": self.name,
            "severity": self.severity.label,
            "file": self.file,
            "line": self.line,
            "item": self.item,
            "message": self.message,
            "fix": self.fix,
        }


def finding(
    code: str, file: str, line: int, item: str, message: str, fix: str, severity: Severity | None = None
) -> Finding:
    """A finding at the catalogue's default severity unless told otherwise."""
    return Finding(code, severity or CATALOGUE[code].severity, file, line, item, message, fix)
