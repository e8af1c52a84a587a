"""Blocking writes on a thread of their own.

A write to stdout blocks as long as nobody reads the pipe, and a write to a
file blocks as long as its disk (or NFS server) does.  Done on the event
loop, either would freeze every input, every other sink and ``/healthz``.
So the stdout and file sinks hand their writes to a ``WriterThread`` and
await the result; their lane (``sinks/lane.py``) keeps queueing, bounded,
meanwhile.

The thread is a daemon thread, unlike ``asyncio.to_thread``'s pool: a write
that never returns (a reader that never comes back) must not keep the
process from exiting after the shutdown grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from eventd.alerts import Alert

T = TypeVar("T")

_Job = tuple[
    Callable[..., Any], tuple[Any, ...], asyncio.Future[Any] | None, asyncio.AbstractEventLoop | None
]


class WriterThread:
    """Runs submitted calls one at a time, in order, on one daemon thread."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the thread; its result or exception here.  A
        cancelled caller stops waiting; the call itself still runs."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, args, future, loop))
        return await future

    def submit(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` on the thread without waiting for it (its errors are
        ``fn``'s to handle)."""
        self._jobs.put((fn, (), None, None))

    def stop(self) -> None:
        """Let the thread end after the calls already submitted."""
        self._jobs.put(None)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, future, loop = job
            if future is None or loop is None:
                with contextlib.suppress(Exception):
                    fn(*args)
                continue
            try:
                result = fn(*args)
            except BaseException as err:  # handed to the caller, whatever it is
                _post(loop, future, None, err)
            else:
                _post(loop, future, result, None)


def _post(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, error: BaseException | None
) -> None:
    def settle() -> None:
        if future.done():  # the caller was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        loop.call_soon_threadsafe(settle)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte of ``data`` is written (pipes take parts)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def alert_lines(alerts: Sequence[Alert], json: bool) -> bytes:
    """``alerts`` as JSON lines, or as Falco's text lines, one write's worth."""
    if json:
        return b"".join(alert.to_json() + b"\n" for alert in alerts)
    return "".join(alert.text_line() + "\n" for alert in alerts).encode()
