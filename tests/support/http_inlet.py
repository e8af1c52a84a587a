"""An in-test pipeline for the HTTP inputs: takes batches while
``accepting`` (else the input must answer 503), resolves their ``done`` at
once while ``deliver`` (else the test resolves it), counts rejections."""

from __future__ import annotations

from collections import Counter

from eventd.events.errors import DecodeError
from eventd.sources.base import Batch


class RecordingInlet:
    def __init__(self, source: str) -> None:
        self.source = source
        self.batches: list[Batch] = []
        self.rejects: Counter[str] = Counter()
        self.accepting = True
        self.deliver = True

    async def put(self, batch: Batch) -> None:
        self.batches.append(batch)

    def offer(self, batch: Batch) -> bool:
        if self.accepting:
            self.batches.append(batch)
            if batch.done is not None and self.deliver:  # an instant pipeline
                batch.done.set_result(None)
        return self.accepting

    def rejected(self, source: str, error: DecodeError | str, count: int = 1) -> None:
        assert source == self.source
        self.rejects[error.reason if isinstance(error, DecodeError) else error] += count

    def docs(self) -> list[dict]:
        return [e.doc for b in self.batches for e in b.events]
