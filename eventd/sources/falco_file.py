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

Lines longer than ``MAX_LINE_BYTES`` are skipped (reason ``too_large``);
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
from typing import BinaryIO

import structlog

from eventd.checks import input_file
from eventd.config import FalcoFileConfig
from eventd.events.decode import decode_document
from eventd.events.errors import DecodeError
from eventd.events.model import FALCO, Event
from eventd.metrics import Metrics
from eventd.sources.base import Batch, Inlet, Source

log = structlog.get_logger(__name__)

#: Longest accepted line (Falco alerts are a few KiB; this bounds memory).
MAX_LINE_BYTES = 1024 * 1024
#: Bytes read at once, and so roughly the largest batch.
CHUNK_BYTES = 64 * 1024


class LineSplitter:
    """Chunks of bytes -> complete lines, dropping lines over ``max_line``
    without ever buffering more than that."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self._rest = b""
        self._skipping = False  # inside an overlong line, until its newline

    def feed(self, chunk: bytes) -> tuple[list[bytes], int]:
        """Complete lines in ``chunk`` (plus what came before), and the number
        of overlong lines dropped."""
        too_long = 0
        if self._skipping:
            cut = chunk.find(b"\n")
            if cut < 0:
                return [], 0
            chunk = chunk[cut + 1 :]
            self._skipping = False
        lines = (self._rest + chunk if self._rest else chunk).split(b"\n")
        self._rest = lines.pop()
        if len(self._rest) > self.max_line:
            self._rest, self._skipping = b"", True
            too_long += 1
        kept = [line for line in lines if len(line) <= self.max_line]
        return kept, too_long + len(lines) - len(kept)

    def finish(self) -> list[bytes]:
        """The last line if the input ended without a newline; resets."""
        rest, self._rest, self._skipping = self._rest, b"", False
        return [rest] if rest else []

    def reset(self) -> bool:
        """Forget a partial line (the file was truncated); True if there was one."""
        had = bool(self._rest) or self._skipping
        self._rest, self._skipping = b"", False
        return had


class FalcoFileSource(Source):
    """Falco JSON lines from ``config.path`` (``-``: stdin)."""

    name = "falco_file"

    def __init__(self, config: FalcoFileConfig, metrics: Metrics, *, stdin: int | None = None) -> None:
        """``stdin`` is the descriptor read for ``path: "-"`` (default: fd 0)."""
        if config.path != "-":  # a file read once must be there; a followed one may come later
            input_file(Path(config.path), f"sources.{self.name}.path", must_exist=not config.follow)
        self.config = config
        self._metrics = metrics
        self._stdin = stdin
        self._stopping = asyncio.Event()
        self._transport: asyncio.ReadTransport | None = None
        self._ready = False
        self._splitter = LineSplitter()
        self._alerts = 0
        self._rejected = 0

    # ---------------------------------------------------------------- Source

    async def run(self, inlet: Inlet) -> None:
        up = self._metrics.source_up.labels(self.name)
        try:
            if self.config.path == "-":
                await self._run_stdin(inlet)
            elif self.config.follow:
                await self._follow(Path(self.config.path), inlet)
            else:
                with open(self.config.path, "rb") as f:
                    self._set_ready()
                    await self._read_to_end(f, inlet)
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
        # A duplicate, so that closing our transport leaves the caller's fd open.
        pipe = os.fdopen(os.dup(fd), "rb", buffering=0)
        if not _pollable(pipe.fileno()):  # `< alerts.json`, `< /dev/null`: reads never wait
            with pipe:
                self._set_ready()
                await self._read_to_end(pipe, inlet)
            return
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=CHUNK_BYTES)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        self._transport = transport
        self._set_ready()
        try:
            while chunk := await reader.read(CHUNK_BYTES):
                await self._handle(*self._splitter.feed(chunk), inlet)
            await self._handle(self._splitter.finish(), 0, inlet)
        finally:
            transport.close()
            self._transport = None

    # ----------------------------------------------------------------- files

    async def _read_to_end(self, f: BinaryIO, inlet: Inlet) -> None:
        while not self._stopping.is_set() and (chunk := f.read(CHUNK_BYTES)):
            await self._handle(*self._splitter.feed(chunk), inlet)
        await self._handle(self._splitter.finish(), 0, inlet)

    async def _follow(self, path: Path, inlet: Inlet) -> None:
        f: BinaryIO | None = None
        inode: tuple[int, int] | None = None
        at_end = True  # only the file found at start-up is joined at its end
        try:
            while not self._stopping.is_set():
                if f is None:
                    f, inode = self._open(path, at_end)
                    at_end = False
                    self._set_ready()
                    if f is None:
                        await self._pause()
                        continue
                chunk = f.read(CHUNK_BYTES)
                if chunk:
                    await self._handle(*self._splitter.feed(chunk), inlet)
                    continue
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    st = None
                if st is None or (st.st_dev, st.st_ino) != inode:
                    # Rotated or removed: finish the old file, then start the new one.
                    await self._read_to_end(f, inlet)
                    f.close()
                    f = None
                    log.info("falco_file_rotated", path=str(path))
                    continue
                if st.st_size < f.tell():
                    f.seek(0)
                    if self._splitter.reset():
                        self._reject(inlet, DecodeError("truncated", "partial line lost to truncation"), 1)
                    log.info("falco_file_truncated", path=str(path))
                    continue
                await self._pause()
        finally:
            if f is not None:
                f.close()

    def _open(self, path: Path, at_end: bool) -> tuple[BinaryIO | None, tuple[int, int] | None]:
        try:
            f = open(path, "rb")  # noqa: SIM115 - stays open across polls; _follow closes it
        except FileNotFoundError:
            return None, None
        st = os.fstat(f.fileno())
        if at_end:
            f.seek(0, os.SEEK_END)
        log.info("falco_file_opened", path=str(path), offset=f.tell())
        return f, (st.st_dev, st.st_ino)

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.config.poll_interval_seconds)

    # ---------------------------------------------------------------- decode

    async def _handle(self, lines: list[bytes], too_long: int, inlet: Inlet) -> None:
        """Decode complete lines and hand the alerts over as one batch."""
        if too_long:
            self._reject(
                inlet, DecodeError("too_large", f"line longer than {MAX_LINE_BYTES} bytes"), too_long
            )
        events: list[Event] = []
        for raw in lines:
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
        if events:
            self._alerts += len(events)
            await inlet.put(Batch(events, self.name, size=sum(map(len, lines))))

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
