"""``eventd run``: the long-running daemon."""

from __future__ import annotations

import argparse
import asyncio
import os

from eventd.cli.common import EXIT_USAGE, error


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "run",
        help="run the daemon (audit webhook, Falco inputs, alerts to sinks)",
        description="Run eventd. Without --config: audit webhook on 127.0.0.1:9765/k8s-audit, Falco "
        "JSON on 127.0.0.1:2801/, /healthz /readyz /metrics on 127.0.0.1:9376, alerts on stdout, "
        "built-in rules. Every setting can be overridden with EVENTD_<KEY>__<SUBKEY>.",
    )
    p.add_argument(
        "-c",
        "--config",
        default=os.environ.get("EVENTD_CONFIG"),
        metavar="FILE",
        help="YAML config file (replaces the embedded default; env EVENTD_CONFIG)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the config and the rules, then exit (0 when both are good)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: the daemon pulls in aiohttp, gRPC and Kafka clients, which
    # `eventd scan` and the other commands do not need to pay for at start-up.
    from eventd.config import ConfigError, load_config
    from eventd.daemon import Daemon, build_matcher
    from eventd.engine.errors import RuleError
    from eventd.logs import configure_logging

    try:
        config = load_config(args.config)
    except ConfigError as err:
        error(f"config refused: {err}")
        return EXIT_USAGE
    configure_logging(config.log_level)
    try:
        matcher = build_matcher(config)
    except (RuleError, OSError) as err:
        error(f"rules refused: {err}")
        return EXIT_USAGE
    if args.check:
        print(f"config ok; {len(matcher.ruleset.rules)} rules loaded")
        return 0
    try:
        return asyncio.run(Daemon(config, matcher).run())
    except ConfigError as err:  # raised by a source or sink checking its files at start
        error(f"config refused: {err}")
        return EXIT_USAGE
