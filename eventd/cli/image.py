"""``eventd image REF...``: show how eventd parses and normalises references."""

from __future__ import annotations

import argparse
import sys

import orjson

from eventd import images


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "image",
        help="print the parsed, normalised image reference as JSON",
        description="Parse image references as the kubelet does and print registry, name, tag and "
        "digest as JSON, one line per reference. Exit status 1 if any reference is invalid.",
    )
    p.add_argument("refs", nargs="+", metavar="REF")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    status = 0
    for ref in args.refs:
        parsed = images.parse(ref)
        sys.stdout.buffer.write(orjson.dumps(images.to_json(parsed)) + b"\n")
        if not parsed.valid:
            status = 1
    return status
