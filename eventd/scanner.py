"""Offline scanning: read JSON lines from files, match them, report alerts.

Each line may be an audit ``Event``, an ``EventList``, an array of them, or
a Falco JSON alert.  Bad lines are reported with their number and counted;
the scan goes on.  A file whose first lines are all bad is not audit data at
all, which is an error, not a stream of complaints.

The prefilter (see ``engine.index``) decodes only a small header of each
line and lets lines that no rule can match skip the full decode.  It checks
the JSON syntax of the whole line, so broken lines are still reported; it
does not apply every check of the full decoder to the parts it skips
(invalid UTF-8 inside a string, a number too large for a double) nor the
audit-event checks (a missing ``stageTimestamp``), since no rule could
match such a line anyway.  ``--no-prefilter`` decodes and checks every line.
"""

from __future__ import annotations

import gzip
import io
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from eventd.alerts import Alert, build_alert
from eventd.engine.matcher import Matcher
from eventd.engine.priority import Priority
from eventd.engine.ruleset import RuleSet
from eventd.events.decode import decode_document
from eventd.events.errors import DecodeError

_GZIP_MAGIC = b"\x1f\x8b"
#: An input whose first this-many documents are all rejected is not audit
#: data at all; stop complaining line by line and say so once.
NOT_AUDIT_AFTER = 20


class NotAuditData(Exception):
    """A whole input is neither audit events nor Falco alerts."""


@dataclass(slots=True)
class ScanStats:
    files: int = 0
    lines: int = 0
    parsed: int = 0
    skipped: int = 0
    events: int = 0
    rejected: int = 0
    alerts: int = 0
    bytes_read: int = 0
    by_rule: Counter[str] = field(default_factory=Counter)
    reject_reasons: Counter[str] = field(default_factory=Counter)


RejectHandler = Callable[[str, int, str], None]


def open_input(path: str) -> tuple[BinaryIO, BinaryIO]:
    """Open a path (``-`` is stdin) for binary line reading.

    Returns ``(lines, raw)``: ``raw`` is the underlying file, whose position
    tells progress; gzip is detected by its magic bytes, not by the name.
    """
    raw: io.BufferedReader = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    head = raw.peek(2)[:2]
    if head == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw  # type: ignore[return-value]
    return raw, raw


class Scanner:
    """Streams lines through a ``Matcher`` and hands alerts to ``on_alert``."""

    def __init__(
        self,
        ruleset: RuleSet,
        *,
        on_alert: Callable[[Alert], None] | None = None,
        on_reject: RejectHandler | None = None,
        prefilter: bool = True,
        rule_matching: str = "first",
        min_priority: Priority = Priority.DEBUG,
        hostname: str = "",
    ) -> None:
        self.matcher = Matcher(ruleset, rule_matching=rule_matching)
        self.prefilter = self.matcher.prefilter if prefilter else None
        self.on_alert = on_alert
        self.on_reject = on_reject
        self.min_priority = min_priority
        self.hostname = hostname
        self.stats = ScanStats()
        self._good = 0  # lines of the current input that decoded
        self._bad = 0  # lines of the current input that did not
        self._first_error: str | None = None

    def scan_path(self, path: str, progress: Callable[[int], None] | None = None) -> None:
        lines, raw = open_input(path)
        try:
            self.scan_lines(lines, path, progress=progress if path != "-" else None, raw=raw)
        finally:
            if path != "-":
                raw.close()

    def scan_lines(
        self,
        lines: Iterable[bytes],
        name: str,
        *,
        progress: Callable[[int], None] | None = None,
        raw: BinaryIO | None = None,
    ) -> None:
        """Scan one input, a chunk of lines at a time: the prefilter sorts out
        the lines no rule can match, the rest go to ``_parse_line``."""
        stats = self.stats
        stats.files += 1
        skippable = self.prefilter.skippable if self.prefilter is not None else None
        self._good = self._bad = 0
        self._first_error = None
        streaming = raw is not None and not raw.seekable()  # a pipe: do not wait for a full chunk
        chunks = _chunks(lines, streaming)
        first = 1  # line number of the chunk's first line
        for chunk in chunks:
            stats.lines += len(chunk)
            if skippable is None:
                wanted: Iterable[int] = range(len(chunk))
            else:
                # A comprehension, not a loop of statements: this line runs
                # once per input line and most lines end here.
                wanted = [i for i, line in enumerate(chunk) if not skippable(line)]
                stats.skipped += len(chunk) - len(wanted)
                # A skipped line decoded as an audit event or a Falco alert
                # header: evidence that this input is audit data.
                self._good += len(chunk) - len(wanted)
            for i in wanted:
                line = chunk[i]
                if len(line) < 3 and not line.strip():
                    stats.lines -= 1  # blank lines are not counted
                    continue
                self._parse_line(line, first + i, name)
            first += len(chunk)
            if progress is not None:
                progress(raw.tell())  # type: ignore[union-attr]
        if self._good == 0 and self._first_error is not None:
            raise NotAuditData(f"{name}: not audit data ({self._first_error})")

    def _parse_line(self, line: bytes, lineno: int, name: str) -> None:
        stats = self.stats
        stats.parsed += 1
        try:
            events, errors = decode_document(line)
        except DecodeError as err:
            self._bad += 1
            self._first_error = self._first_error or f"line {lineno}: {err}"
            self._reject(name, lineno, err)
            if not self._good and self._bad >= NOT_AUDIT_AFTER:
                raise NotAuditData(f"{name}: not audit data ({self._first_error})") from None
            return
        self._good += 1
        for err in errors:
            self._reject(name, lineno, err)
        match = self.matcher.match
        for event in events:
            stats.events += 1
            for rule in match(event):
                if rule.priority <= self.min_priority:
                    self._emit(build_alert(rule, event, self.hostname))

    def _emit(self, alert: Alert) -> None:
        self.stats.alerts += 1
        self.stats.by_rule[alert.rule] += 1
        if self.on_alert is not None:
            self.on_alert(alert)

    def _reject(self, name: str, lineno: int, err: DecodeError) -> None:
        self.stats.rejected += 1
        self.stats.reject_reasons[err.reason] += 1
        if self.on_reject is not None:
            self.on_reject(name, lineno, str(err))


#: Bytes read per chunk of lines (the scan loop works a chunk at a time).
CHUNK_BYTES = 1 << 20


def _chunks(lines: Iterable[bytes], streaming: bool = False) -> Iterator[list[bytes]]:
    """Lists of lines: ``readlines`` in C when ``lines`` is a file; one line
    at a time from a pipe, so alerts are not held back waiting for input."""
    if streaming:
        for line in lines:
            yield [line]
        return
    readlines = getattr(lines, "readlines", None)
    if readlines is not None:
        while chunk := readlines(CHUNK_BYTES):
            yield chunk
        return
    chunk: list[bytes] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= 4096:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def scan_paths(paths: Iterable[str | Path], ruleset: RuleSet, **options: Any) -> ScanStats:
    """Scan files in order and return the statistics (the API the bench uses).

    ``options`` are ``Scanner``'s keyword arguments (``on_alert``,
    ``prefilter``, ``rule_matching``...).
    """
    scanner = Scanner(ruleset, **options)
    for path in paths:
        scanner.scan_path(str(path))
    return scanner.stats
