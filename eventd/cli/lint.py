"""``eventd rules lint PATH...``: report the mistakes that make rules,
Gatekeeper policies and Prometheus alerts on images detect nothing.

Exit status: 0 when no error-level finding (warnings and notes are shown
but pass CI), 1 when there is one, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from eventd.cli.common import EXIT_OK, error

if TYPE_CHECKING:
    from eventd.lint import Finding

# ``eventd.lint`` is imported by the functions that lint, not here: ``eventd
# rules check`` of the built-in packs lints nothing, and the import costs it
# ~10 ms of start-up.

EXIT_FINDINGS = 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``lint`` under ``eventd rules``."""
    p = sub.add_parser(
        "lint",
        help="find rule mistakes that make image rules detect nothing (text, json or sarif)",
        description="Lint Falco rule files, Gatekeeper ConstraintTemplates/Constraints and Prometheus "
        "rules for image-security mistakes. Exit status 1 if an error-level finding is present.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="file or directory (*.yaml, *.yml)")
    p.add_argument("--format", choices=("text", "json", "sarif"), default="text")
    p.add_argument("--output", "-o", metavar="FILE", help="write the report here instead of stdout")
    p.set_defaults(handler=run_lint)


def run_lint(args: argparse.Namespace) -> int:
    from eventd.lint import Severity, lint_paths, worst
    from eventd.lint.render import json_doc, sarif, text

    findings = lint_paths(args.paths)
    if args.format == "json":
        data = json_doc(findings) + b"\n"
    elif args.format == "sarif":
        data = sarif(findings) + b"\n"
    else:
        data = text(findings).encode()
    if args.output:
        try:
            with open(args.output, "wb") as out:
                out.write(data)
        except OSError as err:
            error(f"cannot write {args.output}: {err}")
            return 2
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return EXIT_FINDINGS if worst(findings) == Severity.ERROR else EXIT_OK


def _lint_or_nothing(paths: list[str] | None) -> list[Finding]:
    """Findings of ``paths``; none without paths (the built-in packs) or for
    unreadable files, which the check itself reports."""
    if not paths:
        return []
    from eventd.lint import lint_paths

    try:
        return lint_paths(paths)
    except OSError:
        return []


def findings_as_json(paths: list[str] | None) -> list[dict[str, object]]:
    """The ``lint`` list of ``eventd rules check --format json``: the same
    findings ``eventd rules lint --format json`` gives."""
    return [f.as_dict() for f in _lint_or_nothing(paths)]


def report_as_warnings(paths: list[str] | None) -> None:
    """What ``eventd rules check`` prints: every finding as a warning on stderr."""
    for f in _lint_or_nothing(paths):
        error(f"warning: {f.file}:{f.line}: {f.code} {f.item}: {f.message} (fix: {f.fix})")
