"""Falco JSON alerts, one per line, from a file or from stdin.

This is how ``file_output`` / ``program_output`` (``program: eventd run``)
and ``falco | eventd`` reach eventd.  Only Falco alerts are accepted: an
audit event in this input is counted as rejected (reason ``not_falco``),
because audit logs have their own input with checkpoints and dedupe.

* ``path: "-"`` reads stdin without blocking the event loop (a pipe through
  ``connect_read_pipe``; a redirected regular file is read in chunks).  At
  end of input the source finishes: ``run`` returns, since nothing more can
  come (this is the one way it ends without ``stop``).
* A file with ``follow: false`` is read once, start to end, then ``run``
  returns.  A missing or unreadable file raises ``OSError``.
* A file with ``follow: true`` is tailed like ``tail -f``, starting at its
  current end: without a checkpoint, re-reading old alerts on every restart
  would raise them again.  Every ``poll_interval_seconds`` at end of file it
  checks the path: a new inode (rotation: the old file is finished first)
  or a smaller size (truncation) makes it read from the start; a file that
  appears later (or after rotation) is read from its start.

Following (rotation, truncation, bounded lines) is ``sources/tail.py``, the
tailer the audit log input uses too.  Lines longer than ``max_line_bytes``
(default ``MAX_LINE_BYTES``) are skipped (reason ``too_large``);
each read chunk becomes one batch, handed over with ``await inlet.put`` so
a full pipeline simply slows reading down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import sys
from pathlib import Path

import structlog

from eventd.checks import input_file
from eventd.config import FalcoFileConfig
from eventd.events.decode import decode_document
from eventd.events.errors import DecodeError
from eventd.events.model import FALCO, Event
from eventd.metrics import Metrics
from eventd.sources.base import Batch, Inlet, Source
from eventd.sources.tail import Line, LineSplitter, LogFile, PlainLog, follow, read_lines

log = structlog.get_logger(__name__)

#: Longest accepted line by default (Falco alerts are a few KiB; this bounds
#: memory); ``max_line_bytes`` in the config.
MAX_LINE_BYTES = FalcoFileConfig().max_line_bytes
#: Bytes read at once, and so roughly the largest batch.
CHUNK_BYTES = 64 * 1024


class FalcoFileSource(Source):
    """Falco JSON lines from ``config.path`` (``-``: stdin)."""

    config_key = "sources.falco_file"

    def __init__(self, config: FalcoFileConfig, metrics: Metrics, *, stdin: int | None = None) -> None:
        """``stdin`` is the descriptor read for ``path: "-"`` (default: fd 0)."""
        if config.path != "-":  # a file read once must be there; a followed one may come later
            input_file(Path(config.path), f"{self.config_key}.path", must_exist=not config.follow)
        self.config = config
        self._metrics = metrics
        self._stdin = stdin
        self._stopping = asyncio.Event()
        self._transport: asyncio.ReadTransport | None = None
        self._inlet: Inlet
        self._ready = False
        self._alerts = 0
        self._rejected = 0

    # ---------------------------------------------------------------- Source

    async def run(self, inlet: Inlet) -> None:
        self._inlet = inlet
        up = self._metrics.source_up.labels(self.name)
        try:
            if self.config.path == "-":
                await self._run_stdin(inlet)
            elif self.config.follow:
                await self._follow(Path(self.config.path))
            else:
                file = PlainLog(Path(self.config.path), self.config.max_line_bytes, 0)
                try:
                    self._set_ready()
                    await self.read_available(file)
                    await self.finish(file)
                finally:
                    file.close()
        finally:
            self._ready = False
            up.set(0)
        log.info("falco_file_finished", path=self.config.path, alerts=self._alerts, rejected=self._rejected)

    async def stop(self) -> None:
        self._stopping.set()
        if self._transport is not None:
            self._transport.close()  # the reader sees end of input

    def ready(self) -> bool:
        return self._ready

    def _set_ready(self) -> None:
        self._ready = True
        self._metrics.source_up.labels(self.name).set(1)

    # ----------------------------------------------------------------- stdin

    async def _run_stdin(self, inlet: Inlet) -> None:
        fd = sys.stdin.fileno() if self._stdin is None else self._stdin
        splitter = LineSplitter(0, self.config.max_line_bytes)
        # A duplicate, so that closing our transport leaves the caller's fd open.
        pipe = os.fdopen(os.dup(fd), "rb", buffering=0)
        if not _pollable(pipe.fileno()):  # `< alerts.json`, `< /dev/null`: reads never wait
            with pipe:
                self._set_ready()
                while not self._stopping.is_set() and (chunk := pipe.read(CHUNK_BYTES)):
                    await self._handle(splitter.feed(chunk), inlet)
                await self._handle_rest(splitter, inlet)
            return
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=CHUNK_BYTES)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        self._transport = transport
        self._set_ready()
        try:
            while chunk := await reader.read(CHUNK_BYTES):
                await self._handle(splitter.feed(chunk), inlet)
            await self._handle_rest(splitter, inlet)
        finally:
            transport.close()
            self._transport = None

    # ----------------------------------------------------------------- files

    async def _follow(self, path: Path) -> None:
        """Follow ``path`` by name (``tail.follow``), file after file."""
        at_end = True  # only the file found at start-up is joined at its end
        while not self._stopping.is_set():
            file = self._open(path, at_end)
            at_end = False
            self._set_ready()
            if file is None:
                await self.sleep(self.config.poll_interval_seconds)
                continue
            try:
                if not await follow(file, self, self.config.poll_interval_seconds):
                    return
            finally:
                file.close()
            log.info("falco_file_rotated", path=str(path))

    def _open(self, path: Path, at_end: bool) -> PlainLog | None:
        try:
            file = PlainLog(path, self.config.max_line_bytes, None if at_end else 0, follow=True)
        except FileNotFoundError:
            return None
        log.info("falco_file_opened", path=str(path), offset=file.offset)
        return file

    # ``TailReader``: how ``tail.follow`` consumes the followed file.

    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def read_available(self, file: LogFile) -> bool:
        while not self._stopping.is_set():
            lines = read_lines(file, CHUNK_BYTES)
            if lines is None:
                return True
            await self._handle(lines, self._inlet)
        return False

    async def finish(self, file: LogFile) -> bool:
        await self._handle_rest(file.splitter, self._inlet)
        return True

    def truncated(self, file: PlainLog, was_at: int, lost_partial: bool) -> None:
        if lost_partial:
            self._reject(self._inlet, DecodeError("truncated", "partial line lost to truncation"), 1)
        log.info("falco_file_truncated", path=str(file.path), offset=was_at)

    async def sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # ---------------------------------------------------------------- decode

    async def _handle_rest(self, splitter: LineSplitter, inlet: Inlet) -> None:
        """The unterminated last line, once the input is known to be complete."""
        rest = splitter.flush()
        if rest is not None:
            await self._handle([rest], inlet)

    async def _handle(self, lines: list[Line], inlet: Inlet) -> None:
        """Decode complete lines and hand the alerts over as one batch."""
        events: list[Event] = []
        too_long = size = 0
        for raw, _end in lines:
            if raw is None:
                too_long += 1
                continue
            size += len(raw)
            line = raw.strip()
            if not line:
                continue
            try:
                decoded, errors = decode_document(line, origin="falco_file")
            except DecodeError as err:
                self._reject(inlet, err, 1)
                continue
            if decoded and decoded[0].source == FALCO:
                events.extend(decoded)
            else:
                self._reject(
                    inlet,
                    DecodeError("not_falco", "audit data in a Falco alert input (use an audit source)"),
                    max(1, len(decoded) + len(errors)),
                )
        if too_long:
            limit = self.config.max_line_bytes
            self._reject(inlet, DecodeError("too_large", f"line longer than {limit} bytes"), too_long)
        if events:
            self._alerts += len(events)
            await inlet.put(Batch(events, self.name, size=size))

    def _reject(self, inlet: Inlet, error: DecodeError, count: int) -> None:
        self._rejected += count
        inlet.rejected(self.name, error, count)


def _pollable(fd: int) -> bool:
    """Whether the event loop can wait on ``fd``: pipes, sockets and ttys can;
    regular files and ``/dev/null`` cannot (epoll refuses them), and the
    loop's pipe transport would fail on them only later, in a callback."""
    with selectors.DefaultSelector() as selector:
        try:
            selector.register(fd, selectors.EVENT_READ)
        except PermissionError:
            return False
    return True
