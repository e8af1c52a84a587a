"""Waiting for a condition on shared state, in asyncio code."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Changed:
    """Wakes every waiter at each change: a condition variable without a lock,
    so synchronous code (``offer``) can signal too."""

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def notify(self) -> None:
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_result(None)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            if self._future is None:
                self._future = asyncio.get_running_loop().create_future()
            # Shielded: one cancelled waiter must not cancel the others' wake-up.
            await asyncio.shield(self._future)
