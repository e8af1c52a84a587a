"""The ``eventd`` command: argument parsing and dispatch only.

Each sub-command lives in its own module (``scan``, ``rules``, ``image``)
and receives the parsed arguments; the work itself is in the library.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from eventd import __version__
from eventd.cli import image, rules, run, scan


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventd",
        description="Match Kubernetes audit events and Falco alerts against Falco-language rules.",
    )
    parser.add_argument("--version", action="version", version=f"eventd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.register(commands)
    scan.register(commands)
    rules.register(commands)
    image.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `eventd scan ... | head`
        sys.stderr.close()
        return 0
