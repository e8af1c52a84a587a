"""The contract between the pipeline and outputs.

``send`` is called from the pipeline's consumer for every alert and must not
block it for long: a sink keeps its own bounded queue and delivers from its
own task, so one slow output never stalls the others.  ``flush`` waits until
everything sent so far is delivered (or parked durably); ``close`` flushes
and releases resources.
"""

from __future__ import annotations

import abc

from eventd.alerts import Alert


class Sink(abc.ABC):
    name: str = "sink"

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections, start delivery tasks."""

    @abc.abstractmethod
    async def send(self, alert: Alert) -> None:
        """Take one alert (may wait briefly when the sink's queue is full)."""

    async def flush(self) -> None:  # noqa: B027 - optional hook
        """Wait until everything sent so far is delivered or parked durably."""

    async def close(self) -> None:
        await self.flush()

    def healthy(self) -> bool:
        return True
