"""``eventd rules check PATH...``: validate rule files and list what loaded."""

from __future__ import annotations

import argparse
import sys

import orjson
from rich.console import Console
from rich.table import Table

from eventd.cli.common import EXIT_OK, EXIT_USAGE, load_ruleset_or_report


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
    check.add_argument("--format", choices=("text", "json"), default="text")
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    ruleset = load_ruleset_or_report(args.paths)
    if ruleset is None:
        return EXIT_USAGE
    if args.format == "json":
        doc = {
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
            "warnings": list(ruleset.warnings),
        }
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        return EXIT_OK
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
