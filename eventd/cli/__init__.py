"""The ``eventd`` command: argument parsing and dispatch only.

Each sub-command lives in its own module (``run``, ``scan``, ``rules``,
``image``) and receives the parsed arguments; the work itself is in the
library.  Only the module of the sub-command being run is imported: the
others are registered by name and help line alone, so ``eventd image``
never pays for the rule engine, nor ``eventd scan`` for the daemon's
network clients.  ``bench/bench_startup.py`` measures what that buys.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from eventd import __version__

#: Sub-command -> (module, the help line ``eventd --help`` shows).  Each
#: module's ``register`` adds its full parser; its own imports stay light
#: until its handler runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("eventd.cli.run", "run the daemon (audit webhook, Falco inputs, alerts to sinks)"),
    "scan": ("eventd.cli.scan", "match audit logs or Falco JSON files against rules"),
    "rules": ("eventd.cli.rules", "work with rule files"),
    "image": ("eventd.cli.image", "print the parsed, normalised image reference as JSON"),
}


def _chosen(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv`` (the first word that is not an option)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def _columns() -> int:
    """What ``shutil.get_terminal_size().columns`` gives: ``$COLUMNS``, else
    the terminal's width, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
        if columns > 0:
            return columns
    except ValueError:
        pass
    stdout = sys.__stdout__
    try:
        return (stdout is not None and os.get_terminal_size(stdout.fileno()).columns) or 80
    except (ValueError, OSError):
        return 80


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, with the width found by ``_columns``: argparse
    asks ``shutil`` for it, and builds a formatter for every argument it
    registers, so every command paid shutil's import (with bz2 and lzma,
    ~2.5 ms) before doing anything."""

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ) -> None:
        width = _columns() - 2 if width is None else width
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help uses ``_HelpFormatter``, sub-commands too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser.  With ``argv``, only the sub-command it names is imported;
    when it names none (``eventd --help``, ``--version``, a typo), the
    sub-commands are listed by name and help line alone.  Without ``argv``,
    every sub-command's full parser is built (for documentation and tests)."""
    parser = _Parser(
        prog="eventd",
        description="Match Kubernetes audit events and Falco alerts against Falco-language rules.",
    )
    parser.add_argument("--version", action="version", version=f"eventd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = None if argv is None else _chosen(argv)
    for name, (module, summary) in COMMANDS.items():
        if argv is None or name == chosen:
            importlib.import_module(module).register(commands)
        else:
            commands.add_parser(name, help=summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `eventd scan ... | head`
        sys.stderr.close()
        return 0
