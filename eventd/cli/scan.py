"""``eventd scan``: match audit logs and Falco JSON files offline."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from eventd.alerts import Alert
from eventd.cli.common import (
    EXIT_INPUT,
    EXIT_OK,
    EXIT_USAGE,
    add_falco_strict,
    add_rule_options,
    error,
    load_ruleset_or_report,
)
from eventd.engine.ruleset import RULE_MATCHING
from eventd.events import redact
from eventd.gctune import tune_after_startup
from eventd.priority import Priority
from eventd.scanner import (
    DEFAULT_MAX_LINE_BYTES,
    PREFILTER_PROCESS_MIN_BYTES,
    NotAuditData,
    Scanner,
    ScanStats,
)

if TYPE_CHECKING:
    from rich.progress import Progress

#: Rejected lines printed individually before only counting them.
MAX_REPORTED_REJECTS = 20
#: Inputs smaller than this finish before a progress bar is worth drawing.
PROGRESS_MIN_BYTES = 16 << 20


def _priority(text: str) -> Priority:
    try:
        return Priority.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _line_bytes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of bytes, got {text!r}")
    return value


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "scan",
        help="match audit logs or Falco JSON files against rules",
        description="Read JSON lines (audit Event, EventList, JSON array, or Falco JSON alert, "
        "detected per line; .gz read transparently; - for stdin) and print an alert per match.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument(
        "-r",
        "--rules",
        action="append",
        metavar="RULES",
        help="rule file or directory; repeat to load several in order (default: built-in packs)",
    )
    p.add_argument("--format", choices=("json", "text"), default="json")
    p.add_argument(
        "--min-priority",
        type=_priority,
        default=Priority.DEBUG,
        metavar="P",
        help="only alerts at least this severe (e.g. warning)",
    )
    p.add_argument("--rule-matching", choices=RULE_MATCHING, default="first")
    add_rule_options(p)
    add_falco_strict(p)
    p.add_argument("--no-prefilter", action="store_true", help="parse and validate every line (slower)")
    p.add_argument(
        "--prefilter-process",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="read and prefilter each file in a second process while this one matches "
        f"(default: for files of {PREFILTER_PROCESS_MIN_BYTES >> 20} MB or more, when a second CPU is free)",
    )
    p.add_argument(
        "--max-line-bytes",
        type=_line_bytes,
        default=DEFAULT_MAX_LINE_BYTES,
        metavar="N",
        help="skip and report lines longer than this, so no input can exhaust memory "
        f"(default: {DEFAULT_MAX_LINE_BYTES}, as the daemon's max_line_bytes)",
    )
    p.add_argument("--hostname", default=None, help="hostname put in alerts (default: this host)")
    p.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="take the redaction: settings from this eventd config file (default: the built-in "
        "ones; Secrets are always redacted)",
    )
    p.add_argument(
        "--stats",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="print the summary table on stderr (default: when stderr is a terminal)",
    )
    p.set_defaults(handler=run)


class _RejectReporter:
    """Prints the first rejected lines, counts the rest."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, name: str, lineno: int, message: str) -> None:
        self.count += 1
        if self.count <= MAX_REPORTED_REJECTS:
            error(f"{name}:{lineno}: {message}")

    def finish(self) -> None:
        if self.count > MAX_REPORTED_REJECTS:
            error(f"... {self.count - MAX_REPORTED_REJECTS} more rejected lines")


def _alert_writer(fmt: str) -> Callable[[Alert], None]:
    out = sys.stdout.buffer
    render: Callable[[Alert], bytes] = Alert.to_json if fmt == "json" else lambda a: a.text_line().encode()

    def write(alert: Alert) -> None:
        out.write(render(alert) + b"\n")

    return write


def _install_redaction(config_path: str | None) -> bool:
    """Redact as the daemon with this config would; False (reported) if refused."""
    if config_path is None:
        redact.install(redact.DEFAULT_POLICY)
        return True
    from eventd.config import ConfigError, load_config

    try:
        redact.install(redact.policy_from_config(load_config(config_path).redaction))
    except ConfigError as err:
        error(f"config refused: {err}")
        return False
    return True


def run(args: argparse.Namespace) -> int:
    if not _install_redaction(args.config):
        return EXIT_USAGE
    ruleset = load_ruleset_or_report(
        args.rules,
        infer_source=args.infer_source,
        gatekeeper=args.gatekeeper_constraints,
        strict=args.falco_strict,
    )
    if ruleset is None:
        return EXIT_USAGE
    tune_after_startup(collect=False)
    rejects = _RejectReporter()
    scanner = Scanner(
        ruleset,
        on_alert=_alert_writer(args.format),
        on_reject=rejects,
        prefilter=not args.no_prefilter,
        rule_matching=args.rule_matching,
        min_priority=args.min_priority,
        hostname=args.hostname or os.uname().nodename,  # gethostname(), without importing socket
        max_line_bytes=args.max_line_bytes,
        prefilter_process=args.prefilter_process,
    )
    status = EXIT_OK
    interactive = sys.stderr.isatty()
    sizes = {f: _size(f) for f in args.files}
    total = sum(sizes.values())
    progress = _progress_bar() if interactive and total >= PROGRESS_MIN_BYTES else None
    redraw = _Redraw()
    with progress or contextlib.nullcontext():
        done = 0
        for path in args.files:
            report = None
            if progress is not None:
                task = progress.add_task(os.path.basename(path), total=total)
                base = done

                def report(pos: int, task=task, base=base) -> None:
                    progress.update(task, completed=base + pos)
                    redraw.maybe(progress)

            try:
                scanner.scan_path(path, progress=report)
            except NotAuditData as err:
                error(str(err))
                status = EXIT_INPUT
            except BrokenPipeError:
                raise  # `| head`: cli.main ends quietly
            except OSError as err:
                error(f"{path}: {err.strerror or err}")
                status = EXIT_INPUT
            except (EOFError, zlib.error) as err:  # a truncated or corrupt .gz: what came before counts
                error(f"{path}: damaged gzip data ({err})")
                status = EXIT_INPUT
            done += sizes[path]
    sys.stdout.flush()
    rejects.finish()
    if args.stats or (args.stats is None and interactive):
        _print_summary(scanner.stats)
    return status


def _size(path: str) -> int:
    try:
        return os.path.getsize(path) if path != "-" else 0
    except OSError:
        return 0


def _progress_bar() -> Progress:
    # rich is imported only when something is drawn: it costs a scan's
    # start-up about 15 ms (bench/bench_startup.py).
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        # Redrawn by ``_Redraw``, not by rich's own thread: a scan that has
        # a thread does not fork its prefilter process (prefilter_process.worthwhile).
        auto_refresh=False,
    )


class _Redraw:
    """Redraws the progress bar at most ``PER_SECOND`` times a second."""

    PER_SECOND = 10

    def __init__(self) -> None:
        self._next = 0.0

    def maybe(self, progress: Progress) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + 1 / self.PER_SECOND
            progress.refresh()


def _print_summary(stats: ScanStats) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    totals = Table(title="eventd scan", show_header=False)
    totals.add_column("what")
    totals.add_column("count", justify="right")
    for label, value in (
        ("files", stats.files),
        ("lines read", stats.lines),
        ("lines parsed", stats.parsed),
        ("lines skipped by prefilter", stats.skipped),
        ("events decoded", stats.events),
        ("rejected", stats.rejected),
        ("alerts", stats.alerts),
    ):
        totals.add_row(label, f"{value:,}")
    for reason, count in stats.reject_reasons.most_common():
        totals.add_row(f"  rejected: {reason}", f"{count:,}")
    console.print(totals)
    if stats.by_rule:
        per_rule = Table(title="alerts per rule")
        per_rule.add_column("rule")
        per_rule.add_column("alerts", justify="right")
        for rule, count in stats.by_rule.most_common():
            per_rule.add_row(rule, f"{count:,}")
        console.print(per_rule)
