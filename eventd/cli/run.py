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
        "--log-format",
        choices=("json", "console"),
        default=None,
        help="log lines on stderr: JSON objects, or console lines for humans (default: console when "
        "stderr is a terminal, JSON otherwise; config key log_format)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the config, the rules and every source and sink (files, TLS, names, "
        "directories; nothing is started or bound), then exit: 0 when good, 2 otherwise",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Exit status 2, with one line on stderr naming the key and the cause,
    for every refusal: config, rules, a source or sink, a failed start-up."""
    # Imported here: the daemon pulls in aiohttp, gRPC and Kafka clients, which
    # `eventd scan` and the other commands do not need to pay for at start-up.
    from eventd.config import ConfigError, load_config
    from eventd.daemon import Daemon, StartError, build_matcher, event_loop_factory, validate
    from eventd.engine.errors import RuleError
    from eventd.logs import configure_logging

    try:
        config = load_config(args.config)
    except ConfigError as err:
        error(f"config refused: {err}")
        return EXIT_USAGE
    configure_logging(config.log_level, args.log_format or config.log_format)
    try:
        matcher = build_matcher(config)
    except (RuleError, OSError) as err:
        error(f"rules refused: {err}")
        return EXIT_USAGE
    if args.check:
        try:
            # The validation `run` does too (inside Daemon.run): same verdict, same message.
            components = validate(config)
        except ConfigError as err:
            error(f"config refused: {err}")
            return EXIT_USAGE
        sources = ", ".join(s.name for s in components.sources) or "none"
        sinks = ", ".join(s.name for s in components.sinks) or "none"
        print(f"config ok; {len(matcher.ruleset.rules)} rules loaded; sources: {sources}; sinks: {sinks}")
        return 0
    try:
        loop_factory = event_loop_factory(config.event_loop)
    except ConfigError as err:
        error(f"config refused: {err}")
        return EXIT_USAGE
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(Daemon(config, matcher).run())
    except StartError as err:  # a port in use, a spool held elsewhere: undone before we get here
        error(f"cannot start: {err}")
        return EXIT_USAGE
    except ConfigError as err:  # refused by validation: nothing was started
        error(f"config refused: {err}")
        return EXIT_USAGE
