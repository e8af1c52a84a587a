"""Alerts as JSON lines (or Falco text lines) on stdout: the embedded
default, and the way to pipe eventd into anything else.

Best-effort: a pipe nobody reads only fills this sink's lane (which drops
its oldest alerts, counted), and a closed pipe only fails this sink's
writes (counted, logged once): neither reaches the event loop, the inputs
or the other sinks.  Writes go to file descriptor 1 directly, on a writer
thread, so no Python buffer is left holding alerts that could block the
interpreter's exit.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import BinaryIO

import structlog

from eventd.alerts import Alert
from eventd.config import StdoutSinkConfig
from eventd.metrics import Metrics
from eventd.sinks.base import Receipt, Sink
from eventd.sinks.writer import WriterThread, alert_lines, write_all

log = structlog.get_logger(__name__)


class StdoutSink(Sink):
    config_key = "sinks.stdout"

    def __init__(self, config: StdoutSinkConfig, metrics: Metrics, stream: BinaryIO | None = None) -> None:
        self._json = config.format == "json"
        self._stream = stream
        self._metrics = metrics
        self._delivered = metrics.sink_deliveries.labels(self.name)
        self._writer: WriterThread | None = None
        self._failing = False

    async def start(self) -> None:
        self._thread()

    async def send(self, alert: Alert) -> None:
        await self.send_many([alert])

    async def send_many(self, alerts: Sequence[Alert]) -> Receipt:
        data = alert_lines(alerts, self._json)
        try:
            await self._thread().call(self._write, data)
        except OSError as err:
            self._metrics.sink_failures.labels(self.name, "io_error").inc()
            self._metrics.sink_dropped.labels(self.name, "io_error").inc(len(alerts))
            if not self._failing:
                log.error("stdout_sink_io_error", error=err.strerror or type(err).__name__)
            self._failing = True
            return None
        if self._failing:
            log.info("stdout_sink_recovered")
        self._failing = False
        self._delivered.inc(len(alerts))
        return None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.stop()
            self._writer = None

    def healthy(self) -> bool:
        return not self._failing

    def _thread(self) -> WriterThread:
        if self._writer is None:
            self._writer = WriterThread("eventd-stdout")
        return self._writer

    def _write(self, data: bytes) -> None:
        if self._stream is not None:
            self._stream.write(data)
            self._stream.flush()
        else:
            write_all(sys.stdout.fileno(), data)
