"""Alerts appended to a file as JSON lines (or Falco text lines), logrotate-friendly.

A durable sink: once ``send_many`` returned, the alerts are in the file (in
the kernel's page cache: a ``kill -9`` of eventd loses nothing), so inputs
may acknowledge them.  A write that fails (a full disk, a revoked
permission) is retried with backoff until it succeeds: meanwhile the sink
is not ``accepting`` (``/readyz`` says so) and its lane fills, which pushes
back on the inputs rather than dropping alerts.  Part of a write that got
through before the error is not written twice, so lines stay whole.

logrotate either renames the file away (``create``) or truncates it
(``copytruncate``).  Truncation needs nothing: the file is opened in append
mode, so writes land at the new end.  A rename is noticed on the next write
(the path no longer names our inode) and the file is reopened; ``reopen()``
does the same on demand (SIGHUP, logrotate's ``postrotate``).

All file I/O happens on a writer thread (``sinks/writer.py``): a hung disk
blocks this sink, never the event loop.  The file is created ``0640``:
alerts name users, workloads and commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Sequence

import structlog

from eventd.alerts import Alert
from eventd.backoff import backoff_delay
from eventd.config import FileSinkConfig
from eventd.metrics import Metrics
from eventd.sinks.base import Receipt, Sink
from eventd.sinks.writer import WriterThread, alert_lines

log = structlog.get_logger(__name__)

#: Retry delays of a failing write: from this, doubling, up to ``RETRY_MAX``.
RETRY_INITIAL = 0.1
RETRY_MAX = 5.0


class FileSink(Sink):
    config_key = "sinks.file"
    durable = True

    def __init__(self, config: FileSinkConfig, metrics: Metrics) -> None:
        self._path = config.path
        self._json = config.format == "json"
        self.metrics = metrics
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._failing = False
        self._reopen_requested = False
        self._writer: WriterThread | None = None
        self._m_deliveries = metrics.sink_deliveries.labels(self.name)

    async def start(self) -> None:
        await self._thread().call(self._open)

    async def send(self, alert: Alert) -> None:
        await self.send_many([alert])

    async def send_many(self, alerts: Sequence[Alert]) -> Receipt:
        data = alert_lines(alerts, self._json)
        view = memoryview(data)
        attempt = 0
        while view:
            try:
                view = await self._thread().call(self._write, view)
            except OSError as err:
                view = getattr(err, "remaining", view)
                self._failed(err)
                await asyncio.sleep(backoff_delay(attempt, RETRY_INITIAL, RETRY_MAX))
                attempt += 1
        if self._failing:
            log.info("file_sink_recovered", sink=self.name)
            self._failing = False
        self._m_deliveries.inc(len(alerts))
        return None

    async def close(self) -> None:
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        with contextlib.suppress(OSError):
            await writer.call(self._close_file, True)
        writer.stop()

    def healthy(self) -> bool:
        return not self._failing

    def accepting(self) -> bool:
        return not self._failing

    async def flush(self) -> None:
        """Wait until the writer thread finished what it was given."""
        if self._writer is not None:
            await self._writer.call(lambda: None)

    def reopen(self) -> None:
        """Start a new file at the path (after logrotate moved it away); done
        on the writer thread, after the writes already handed to it."""
        self._reopen_requested = True
        self._thread().submit(self._reopen_now)

    def _reopen_now(self) -> None:
        try:
            self._open()
        except OSError as err:  # the next write retries, and reports it
            self._reopen_requested = True
            log.warning("file_sink_reopen_failed", sink=self.name, error=err.strerror or type(err).__name__)

    # --------------------------------------------------- on the writer thread

    def _thread(self) -> WriterThread:
        if self._writer is None:
            self._writer = WriterThread("eventd-file-sink")
        return self._writer

    def _write(self, view: memoryview) -> memoryview:
        """Write all of ``view``; an ``OSError`` carries what is left as ``remaining``."""
        try:
            if self._fd is None or self._reopen_requested or self._rotated():
                self._open()
            assert self._fd is not None
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as err:
            err.remaining = view  # type: ignore[attr-defined]  # read back with getattr by the caller
            self._close_file(False)  # the next attempt reopens: the path may be fixed by then
            raise
        return view

    def _open(self) -> None:
        self._reopen_requested = False
        self._close_file(False)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        st = os.fstat(fd)
        self._fd, self._inode = fd, (st.st_dev, st.st_ino)

    def _rotated(self) -> bool:
        """True when the path is gone or names another file than ours."""
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._inode

    def _close_file(self, sync: bool) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if sync:
                os.fsync(fd)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    # ------------------------------------------------------- on the event loop

    def _failed(self, err: OSError) -> None:
        """Count and log (once per outage) a failed write; it will be retried."""
        reason = "disk_full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "io_error"
        self.metrics.sink_failures.labels(self.name, reason).inc()
        if not self._failing:
            log.error(
                "file_sink_io_error", sink=self.name, reason=reason, error=err.strerror or type(err).__name__
            )
        self._failing = True
