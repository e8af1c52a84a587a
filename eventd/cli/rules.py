"""``eventd rules check PATH...``: validate rule files and list what loaded."""

from __future__ import annotations

import argparse
import sys

import orjson

from eventd.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    add_falco_strict,
    add_rule_options,
    error,
    load_ruleset,
    load_ruleset_or_report,
)
from eventd.cli.lint import findings_as_json, report_as_warnings
from eventd.cli.lint import register as register_lint
from eventd.engine.errors import RuleError
from eventd.engine.load_result import ErrorCode, Finding


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("rules", help="work with rule files")
    sub = p.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    check = sub.add_parser(
        "check",
        help="validate rule files (in load order) and list the rules that loaded",
        description="Load the files in order, as `eventd scan -r` and `falco -r` do, and list the "
        "enabled rules. With no PATH, checks the built-in packs. Exit status 2 if refused.",
    )
    check.add_argument("paths", nargs="*", metavar="PATH", help="rule file or directory")
    check.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="json: the rules, and each warning (or the error) with its Falco code, file, line, item, text",
    )
    add_rule_options(check)
    add_falco_strict(check)
    check.set_defaults(handler=run_check)
    register_lint(sub)  # `eventd rules lint` (issue 13)


def run_check(args: argparse.Namespace) -> int:
    # `eventd rules lint`'s findings, as warnings after the load's own verdict
    # (in the JSON document: its `lint` list); they never change the exit status.
    status = _run_check(args)
    if args.format != "json":
        report_as_warnings(args.paths)
    return status


def _run_check(args: argparse.Namespace) -> int:
    if args.format == "json":
        return _check_json(args)
    ruleset = load_ruleset_or_report(
        args.paths,
        infer_source=args.infer_source,
        gatekeeper=args.gatekeeper_constraints,
        strict=args.falco_strict,
        each_extension=True,
    )
    if ruleset is None:
        return EXIT_USAGE
    from rich.console import Console  # only for the table: rich costs ~15 ms of start-up
    from rich.table import Table

    table = Table(title=f"{len(ruleset.rules)} rules enabled")
    for column in ("rule", "source", "priority", "tags", "defined at"):
        table.add_column(column)
    for r in ruleset.rules:
        where = f"{r.file}:{r.line}" if r.file else ""
        table.add_row(r.name, r.source, r.priority.label, ", ".join(r.tags), where)
    console = Console(width=max(Console().width, 120) if sys.stdout.isatty() else 160)
    console.print(table)
    console.print(
        f"{len(ruleset.files)} files, {ruleset.lists} lists, {ruleset.macros} macros, "
        f"{len(ruleset.rules)} rules enabled, {len(ruleset.disabled)} disabled"
    )
    return EXIT_OK


def _check_json(args: argparse.Namespace) -> int:
    """``--format json``: one document, also when the rules are refused, so
    that it can be compared with Falco's ``-V``/JSON load result item by item.

    ``errors`` and ``warnings`` are lists of load findings (code, codedesc,
    file, line, item, key, text, severity); ``warning_lines`` keeps the
    one-line form the text output prints; ``lint`` holds the findings of
    ``eventd rules lint`` (code, name, severity, file, line, item, message, fix).
    """
    doc: dict[str, object]
    try:
        ruleset = load_ruleset(
            args.paths,
            infer_source=args.infer_source,
            gatekeeper=args.gatekeeper_constraints,
            strict=args.falco_strict,
        )
    except RuleError as err:
        code = ErrorCode.__members__.get(err.code or "", ErrorCode.LOAD_ERR_VALIDATE)
        finding = Finding(code, err.message, err.file, err.line, err.item, err.key)
        error(f"rules refused: {err}")
        doc = {
            "successful": False,
            "errors": [finding.as_json()],
            "warnings": [],
            "lint": findings_as_json(args.paths),
        }
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        return EXIT_USAGE
    except OSError as err:
        error(f"cannot read rules: {err}")
        return EXIT_USAGE
    for finding in ruleset.findings:
        error(f"warning: {finding}")
    doc = {
        "successful": True,
        "files": list(ruleset.files),
        "lists": ruleset.lists,
        "macros": ruleset.macros,
        "rules": [
            {
                "name": r.name,
                "source": r.source,
                "priority": r.priority.label,
                "tags": list(r.tags),
                "file": r.file,
                "line": r.line,
            }
            for r in ruleset.rules
        ],
        "disabled": list(ruleset.disabled),
        "errors": [],
        "warnings": [f.as_json() for f in ruleset.findings],
        "warning_lines": list(ruleset.warnings),
        "lint": findings_as_json(args.paths),
    }
    sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    return EXIT_OK
