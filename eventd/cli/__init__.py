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
import sys
from collections.abc import Sequence

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


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser.  With ``argv``, only the sub-command it names is imported;
    when it names none (``eventd --help``, ``--version``, a typo), the
    sub-commands are listed by name and help line alone.  Without ``argv``,
    every sub-command's full parser is built (for documentation and tests)."""
    parser = argparse.ArgumentParser(
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
