"""Alerts appended to a file as JSON lines (or Falco text lines), logrotate-friendly.

logrotate either renames the file away (``create``) or truncates it
(``copytruncate``).  Truncation needs nothing: the file is opened in append
mode, so writes land at the new end.  A rename is noticed on the next write
(the path no longer names our inode) and the file is reopened; ``reopen()``
does the same on demand (SIGHUP, logrotate's ``postrotate``).

Lines from one pipeline batch are written with one system call: the buffer
is flushed once per event-loop turn rather than per alert, so ``tail -f``
readers see alerts at once without a write per line.  The file is created
``0640``: alerts name users, workloads and commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import BinaryIO

import structlog

from eventd.alerts import Alert
from eventd.config import FileSinkConfig
from eventd.metrics import Metrics
from eventd.sinks.base import Sink

log = structlog.get_logger(__name__)


class FileSink(Sink):
    name = "file"

    def __init__(self, config: FileSinkConfig, metrics: Metrics) -> None:
        self._path = config.path
        self._json = config.format == "json"
        self.metrics = metrics
        self._file: BinaryIO | None = None
        self._inode: tuple[int, int] | None = None
        self._flush_pending = False
        self._unflushed = 0  # lines written to the buffer, not yet to the file
        self._failing = False
        self._m_deliveries = metrics.sink_deliveries.labels(self.name)

    async def start(self) -> None:
        self._open()

    async def send(self, alert: Alert) -> None:
        line = (alert.to_json() if self._json else alert.text_line().encode()) + b"\n"
        try:
            if self._file is None or self._rotated():
                self._open()
            assert self._file is not None
            self._file.write(line)
        except OSError as err:
            self._failed(err, 1)
            return
        self._unflushed += 1
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush_buffer)

    async def flush(self) -> None:
        self._flush_buffer()

    async def close(self) -> None:
        self._flush_buffer()
        if self._file is not None:
            try:
                os.fsync(self._file.fileno())
                self._file.close()
            except OSError as err:
                self._failed(err)
            self._file = None

    def healthy(self) -> bool:
        return not self._failing

    def reopen(self) -> None:
        """Close and reopen the path (after logrotate moved the file away)."""
        try:
            self._open()
        except OSError as err:
            self._failed(err)

    # ----------------------------------------------------------------- helpers

    def _open(self) -> None:
        if self._file is not None:
            self._flush_buffer()  # what was written before the rotation ends the old file
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        self._file = None
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._file = os.fdopen(fd, "ab")
        st = os.fstat(fd)
        self._inode = (st.st_dev, st.st_ino)

    def _rotated(self) -> bool:
        """True when the path is gone or names another file than ours."""
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._inode

    def _flush_buffer(self) -> None:
        self._flush_pending = False
        if self._file is None:
            return
        try:
            self._file.flush()
        except OSError as err:
            self._failed(err)
            return
        if self._unflushed:
            self._m_deliveries.inc(self._unflushed)
            self._unflushed = 0
        self._failing = False

    def _failed(self, err: OSError, lost: int = 0) -> None:
        """Count and log an I/O error, drop what the buffer held; the next send reopens."""
        self.metrics.sink_failures.labels(self.name, "io_error").inc()
        lost += self._unflushed
        self._unflushed = 0
        if lost:
            self.metrics.sink_dropped.labels(self.name, "io_error").inc(lost)
        if not self._failing:
            log.error("file_sink_io_error", sink=self.name, error=err.strerror or type(err).__name__)
        self._failing = True
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
