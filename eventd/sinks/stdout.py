"""Alerts as JSON lines (or Falco text lines) on stdout: the embedded
default, and the way to pipe eventd into anything else."""

from __future__ import annotations

import sys
from typing import BinaryIO

from eventd.alerts import Alert
from eventd.config import StdoutSinkConfig
from eventd.metrics import Metrics
from eventd.sinks.base import Sink


class StdoutSink(Sink):
    name = "stdout"

    def __init__(self, config: StdoutSinkConfig, metrics: Metrics, stream: BinaryIO | None = None) -> None:
        self._json = config.format == "json"
        self._out = stream if stream is not None else sys.stdout.buffer
        self._delivered = metrics.sink_deliveries.labels(self.name)

    async def send(self, alert: Alert) -> None:
        line = alert.to_json() if self._json else alert.text_line().encode()
        self._out.write(line + b"\n")
        self._delivered.inc()

    async def flush(self) -> None:
        self._out.flush()
