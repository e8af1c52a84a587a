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

Files are read a block of lines at a time, and with the prefilter each block
is judged whole first (``Prefilter.select_block``): the headers of all its
lines in one decode.  Pipes are read a line at a time, so that alerts come
out as soon as their line comes in.

Memory is bounded whatever the input: a line longer than ``max_line_bytes``
is skipped (reported as ``too_large``) by reading on to its end in bounded
pieces, never held whole, and gzip is decompressed a block at a time.  So
what a scan holds of its input stays under twice ``max_line_bytes`` plus a
few blocks, be it ``/dev/zero``, a 2 GB line or a gzip bomb.
"""

from __future__ import annotations

import gzip
import io
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from msgspec import Struct, field

from eventd.alerts import Alert, build_alert
from eventd.engine.fields.pullsecrets import LEARNED_RESOURCES, may_learn
from eventd.engine.fields.pullsecrets import learn_from as learn_pull_secrets
from eventd.engine.fields.pullsecrets import read_by as pull_secrets_read_by
from eventd.engine.index import Prefilter, Route
from eventd.engine.matcher import Matcher
from eventd.engine.ruleset import RuleSet
from eventd.events.decode import decode_document
from eventd.events.errors import DecodeError
from eventd.priority import Priority

if TYPE_CHECKING:  # imported when a file is large enough to use it
    from eventd.prefilter_process import PrefilterProcess

_GZIP_MAGIC = b"\x1f\x8b"
#: An input whose first this-many documents are all rejected is not audit
#: data at all; stop complaining line by line and say so once.
NOT_AUDIT_AFTER = 20


#: Bytes read per block (the scan loop works a block of lines at a time).
#: Measured: blocks from 16 KiB to 4 MiB scan at the same speed; a small one
#: keeps the cost of a block that must go line by line (its headers were
#: decoded for nothing) small.
BLOCK_BYTES = 1 << 16
#: After this many blocks in a row that ``Prefilter.select_block`` could not
#: judge whole, the rest of the input goes line by line (a file that mixes
#: Falco alerts with audit events would otherwise be decoded twice).
BLOCK_MISSES_BEFORE_LINES = 3
#: Longest line scanned, newline excluded: the daemon's default
#: ``sources.audit_log.max_line_bytes``, so that a scan of a log skips the
#: lines the daemon following it would skip.
DEFAULT_MAX_LINE_BYTES = 262144
#: Smallest file read and prefiltered in a second process (``eventd.prefilter_process``):
#: forking and the pipe cost a few milliseconds, which a file this size repays.
PREFILTER_PROCESS_MIN_BYTES = 8 << 20


class NotAuditData(Exception):
    """A whole input is neither audit events nor Falco alerts."""


class ScanStats(Struct):
    files: int = 0
    lines: int = 0
    parsed: int = 0
    skipped: int = 0
    events: int = 0
    rejected: int = 0
    alerts: int = 0
    by_rule: Counter[str] = field(default_factory=Counter)
    reject_reasons: Counter[str] = field(default_factory=Counter)


RejectHandler = Callable[[str, int, str], None]


def open_input(path: str) -> tuple[BinaryIO, BinaryIO]:
    """Open a path (``-`` is stdin) for binary line reading.

    Returns ``(lines, raw)``: ``raw`` is the underlying file, whose position
    tells progress; gzip is detected by its magic bytes, not by the name.
    """
    # cast: binary stdin is a BufferedReader (buffered, as Python opens it);
    # typeshed types ``sys.stdin.buffer`` as any ``BinaryIO``.
    stdin = cast(io.BufferedReader, sys.stdin.buffer)
    raw = stdin if path == "-" else open(path, "rb")  # noqa: SIM115
    head = raw.peek(2)[:2]
    if head == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw  # type: ignore[return-value]  # read like a BufferedReader
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
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        prefilter_process: bool | None = None,
    ) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be positive, not {max_line_bytes}")
        self.matcher = Matcher(ruleset, rule_matching=rule_matching)
        self.prefilter = self._make_prefilter(ruleset) if prefilter else None
        self.on_alert = on_alert
        self.on_reject = on_reject
        self.min_priority = min_priority
        self.hostname = hostname
        self.max_line_bytes = max_line_bytes
        #: Read and prefilter files in a second process (``eventd.prefilter_process``):
        #: True, False, or None for when it pays (``prefilter_process.worthwhile``).
        self.prefilter_process = prefilter_process
        self.stats = ScanStats()
        self._good = 0  # lines of the current input that decoded
        self._bad = 0  # lines of the current input that did not
        self._first_error: str | None = None

    def _make_prefilter(self, ruleset: RuleSet) -> Prefilter | None:
        """The rules' prefilter; when a rule reads ``ka.target.pull_secret``,
        it never skips what the pull-secret store learns from (as the
        daemon's never does): a Secret read alerts on what earlier writes
        taught it, whether or not a rule matches those writes."""
        if not pull_secrets_read_by(ruleset.rules):
            return self.matcher.prefilter
        return Prefilter.build(self.matcher.indexes, keep_resources=LEARNED_RESOURCES, keep_when=may_learn)

    def scan_path(self, path: str, progress: Callable[[int], None] | None = None) -> None:
        stream, raw = open_input(path)
        try:
            judge = self._prefilter_process(stream, raw) if raw.seekable() else None
            if judge is not None:
                with judge:
                    self.scan_judged(judge, path, progress)
            elif raw.seekable():
                self.scan_file(stream, path, progress=progress, raw=raw)
            else:  # a pipe: one line at a time, so alerts are not held back waiting for input
                self.scan_stream(stream, path)
        finally:
            if path != "-":
                raw.close()

    def _prefilter_process(self, stream: BinaryIO, raw: BinaryIO) -> PrefilterProcess | None:
        """The second process reading and prefiltering this input, when it
        is wanted and can start (else the scan stays in this one)."""
        if self.prefilter is None or self.prefilter_process is False:
            return None
        from eventd.prefilter_process import PrefilterProcess, worthwhile

        if not self.prefilter_process and not worthwhile(raw):
            return None
        try:
            return PrefilterProcess(stream, raw, self.prefilter, BLOCK_BYTES, self.max_line_bytes)
        except OSError:  # no fork (process or memory limits): nothing was read yet
            return None

    def scan_file(
        self,
        stream: BinaryIO,
        name: str,
        *,
        progress: Callable[[int], None] | None = None,
        raw: BinaryIO | None = None,
        block_size: int = BLOCK_BYTES,
    ) -> None:
        """Scan a whole file a block of lines at a time (``judge_blocks``:
        with the prefilter, only the lines some rule may match are parsed)."""
        judged = judge_blocks(stream, self.prefilter, block_size, self.max_line_bytes)
        positions = None if progress is None or raw is None else raw.tell
        self.scan_judged(((block, positions() if positions else 0) for block in judged), name, progress)

    def scan_judged(
        self, judged: Iterable[tuple[Judged, int]], name: str, progress: Callable[[int], None] | None = None
    ) -> None:
        """Parse what ``judge_blocks`` kept of an input, block by block, each
        with the input's position after it (for ``progress``), here or from
        the prefilter process (``eventd.prefilter_process``)."""
        self._begin_input()
        first = 1  # line number of the block's first line
        for block, position in judged:
            if block is None:
                self._too_long(name, first)
                first += 1
            else:
                count, wanted, lines, routes = block
                kept = zip(wanted, lines, [None] * len(wanted) if routes is None else routes, strict=True)
                self._parse_kept(kept, count, first, name)
                first += count
            if progress is not None:
                progress(position)
        self._end_input(name)

    def scan_stream(self, stream: BinaryIO, name: str) -> None:
        """Scan a stream (a pipe) a line at a time, each line read with a
        bounded ``readline`` so that an endless line is skipped, not held."""
        self.scan_lines(_bounded_lines(stream, self.max_line_bytes), name, streaming=True)

    def scan_lines(self, lines: Iterable[bytes | None], name: str, *, streaming: bool = False) -> None:
        """Scan an iterable of lines, a chunk at a time (one line at a time
        when ``streaming``).  ``None`` stands for a line skipped as too long
        while reading; a line longer than ``max_line_bytes`` is skipped too,
        so that every way of reading skips the same lines."""
        self._begin_input()
        first = 1
        for chunk in _chunks(lines, self.max_line_bytes, streaming):
            if chunk is None:
                self._too_long(name, first)
                first += 1
            else:
                first += self._scan_chunk(chunk, first, name)
        self._end_input(name)

    def _begin_input(self) -> None:
        self.stats.files += 1
        self._good = self._bad = 0
        self._first_error = None

    def _end_input(self, name: str) -> None:
        if self._good == 0 and self._first_error is not None:
            raise NotAuditData(f"{name}: not audit data ({self._first_error})")

    def _scan_chunk(self, chunk: list[bytes], first: int, name: str) -> int:
        """Scan lines numbered from ``first``; return how many there were."""
        count, wanted, lines, _ = _judge_lines(chunk, self.prefilter)
        self._parse_kept(zip(wanted, lines, repeat(None)), count, first, name)
        return count

    def _parse_kept(
        self, kept: Iterable[tuple[int, bytes, Route | None]], count: int, first: int, name: str
    ) -> None:
        """Parse the lines the prefilter kept, ``(index, line, route)`` in
        order, of ``count`` lines numbered from ``first``; ``route`` is the
        line's routing values when a block header gave them.

        The others were skipped: each decoded as an audit event or a Falco
        alert header, evidence that the input is audit data.  It is counted
        where it stands, so "the first lines are all bad" (``NotAuditData``)
        means the same whether the prefilter is on or not.
        """
        stats = self.stats
        stats.lines += count
        parsed = 0
        previous = -1
        for i, line, route in kept:
            self._good += i - previous - 1
            previous = i
            parsed += 1
            if not line or line.isspace():
                stats.lines -= 1  # blank lines are not counted
                continue
            self._parse_line(line, first + i, name, route)
        self._good += count - previous - 1
        stats.skipped += count - parsed

    def _parse_line(self, line: bytes, lineno: int, name: str, route: Route | None = None) -> None:
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
        for error in errors:
            self._reject(name, lineno, error)
        for event in events:
            stats.events += 1
            learn_pull_secrets(event)  # ka.target.pull_secret (issue 13)
            # A block header's route describes the line's one native event.
            if route is not None and len(events) == 1:
                matched = self.matcher.match_routed(event, route)
            else:
                matched = self.matcher.match(event)
            for rule in matched:
                if rule.priority <= self.min_priority:
                    self._emit(build_alert(rule, event, self.hostname))

    def _emit(self, alert: Alert) -> None:
        self.stats.alerts += 1
        self.stats.by_rule[alert.rule] += 1
        if self.on_alert is not None:
            self.on_alert(alert)

    def _too_long(self, name: str, lineno: int) -> None:
        """Count and report a line skipped unread.  It is evidence neither
        way of the input being audit data: a binary file is caught by its
        other lines, and a log with one runaway line is still a log."""
        self.stats.lines += 1
        message = f"line longer than {self.max_line_bytes} bytes, skipped"
        self._reject(name, lineno, DecodeError("too_large", message))

    def _reject(self, name: str, lineno: int, err: DecodeError) -> None:
        self.stats.rejected += 1
        self.stats.reject_reasons[err.reason] += 1
        if self.on_reject is not None:
            self.on_reject(name, lineno, str(err))


#: What ``judge_blocks`` says of a block of lines: ``(count, wanted, lines,
#: routes)``, how many lines it holds, the indices of those to parse, those
#: lines, and their ``Route`` from the block's headers (or ``None``); or
#: ``None`` for a line skipped as too long.
JudgedBlock = tuple[int, list[int], list[bytes], list[Route] | None]
Judged = JudgedBlock | None


def judge_blocks(
    stream: BinaryIO,
    prefilter: Prefilter | None,
    block_size: int = BLOCK_BYTES,
    max_line: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[Judged]:
    """The blocks of a file (``_blocks``), each with the lines some rule may match.

    With the prefilter, each block is first judged whole
    (``Prefilter.select_block``): one decode of every line's routing
    header, and only the lines some rule may match are kept.  A block it
    cannot judge (a broken line, a Falco alert, an ``EventList``...) goes
    line by line (``Prefilter.skippable``), as does the rest of an input
    where that keeps happening.  Without it, every line is kept.

    Only the prefilter's fixed tables decide, never what earlier lines
    held, so this can run in another process (``eventd.prefilter_process``).
    """
    select_block = prefilter.select_block if prefilter is not None else None
    misses = 0  # blocks in a row that select_block could not judge
    for block in _blocks(stream, block_size, max_line):
        if block is None:
            yield None
            continue
        routed = select_block(block) if select_block is not None and block.endswith(b"\n") else None
        if routed is not None:
            misses = 0
            count, wanted, routes = routed
            yield count, wanted, _lines_at(block, wanted), routes
            continue
        if select_block is not None and block.endswith(b"\n"):
            misses += 1
            if misses >= BLOCK_MISSES_BEFORE_LINES:
                select_block = None
        yield _judge_lines(io.BytesIO(block).readlines(), prefilter)


def _judge_lines(chunk: list[bytes], prefilter: Prefilter | None) -> JudgedBlock:
    """``judge_blocks``'s verdict on lines judged one by one."""
    if prefilter is None:
        return len(chunk), list(range(len(chunk))), chunk, None
    skippable = prefilter.skippable
    # A comprehension, not a loop of statements: this line runs once per
    # input line and most lines end here.
    wanted = [i for i, line in enumerate(chunk) if not skippable(line)]
    return len(chunk), wanted, [chunk[i] for i in wanted], None


def _blocks(
    stream: BinaryIO, size: int = BLOCK_BYTES, max_line: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[bytes | None]:
    """Whole lines, about ``size`` bytes at a time, and ``None`` in place of
    each line longer than ``max_line`` (newline excluded).

    Every block ends with a newline but the last one of an input whose last
    line has none.  At most ``max_line`` bytes of an unfinished line are
    held: past that, the line is skipped by reading on to its newline, so
    what is held here stays under ``2 * (max_line + 2 * size)`` bytes
    whatever the input.
    """
    pending: list[bytes] = []  # the start of a line longer than what was read so far
    held = 0  # bytes in ``pending``
    skipping = False  # inside a line already known to be too long
    while data := stream.read(size):
        cut = data.rfind(b"\n") + 1
        if not cut:  # still inside one line
            if not skipping:
                held += len(data)
                skipping = held > max_line
                if skipping:
                    pending = []
                else:
                    pending.append(data)
            continue
        if skipping:
            yield None
            skipping = False
            block = data[data.find(b"\n") + 1 : cut]
        elif pending:
            pending.append(data[:cut])
            block = b"".join(pending)
        else:
            block = data if cut == len(data) else data[:cut]
        if len(block) > max_line:  # rare with the default limit: it is 4 blocks
            yield from _without_long_lines(block, max_line)
        elif block:
            yield block
        held = len(data) - cut
        skipping = held > max_line
        pending = [data[cut:]] if held and not skipping else []
    if skipping:
        yield None
    elif pending:
        yield b"".join(pending)


def _without_long_lines(block: bytes, max_line: int) -> Iterator[bytes | None]:
    """``block`` cut into runs of lines of at most ``max_line`` bytes, with
    ``None`` in place of each longer line."""
    find = block.find
    end = len(block)
    kept = start = 0  # start of the run of short lines, of the current line
    while start < end:
        newline = find(b"\n", start)
        stop = end if newline < 0 else newline
        if stop - start > max_line:
            if kept < start:
                yield block[kept:start]
            yield None
            kept = stop + 1
        start = stop + 1
    if kept < end:
        yield block[kept:]


def _bounded_lines(stream: BinaryIO, max_line: int) -> Iterator[bytes | None]:
    """The lines of ``stream``, each read as soon as it is complete, and
    ``None`` in place of each line longer than ``max_line`` (newline
    excluded), whose rest is read and dropped a block at a time."""
    readline = stream.readline
    limit = max_line + 1  # the longest line kept, with its newline
    while line := readline(limit):
        if len(line) == limit and line[-1] != 10:  # 10: b"\n"
            while (rest := readline(BLOCK_BYTES)) and rest[-1] != 10:
                pass
            yield None
        else:
            yield line


def _lines_at(block: bytes, indices: list[int]) -> list[bytes]:
    """The lines of ``block`` at ``indices`` (ascending), newline included.

    Walks the newlines up to the last index wanted: usually a few lines of
    a block are wanted, and splitting the whole block into one ``bytes``
    object per line costs several times more.
    """
    found: list[bytes] = []
    find = block.find
    start = line = 0
    for index in indices:
        while line < index:
            start = find(b"\n", start) + 1
            line += 1
        end = find(b"\n", start) + 1
        found.append(block[start:end])
        start, line = end, index + 1
    return found


def _chunks(
    lines: Iterable[bytes | None], max_line: int, streaming: bool = False
) -> Iterator[list[bytes] | None]:
    """Lists of lines: one line at a time when ``streaming`` (a pipe), so
    alerts are not held back waiting for input.  A line that is ``None`` or
    longer than ``max_line`` (newline excluded) comes alone, as ``None``."""
    chunk: list[bytes] = []
    for line in lines:
        if line is None or (len(line) > max_line and len(line) - line.endswith(b"\n") > max_line):
            if chunk:
                yield chunk
                chunk = []
            yield None
            continue
        chunk.append(line)
        if streaming or len(chunk) >= 4096:
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
