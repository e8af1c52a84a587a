"""A file write that blocks stalls the file sink, never the event loop.

Issue 10, point 2: "Writes to stdout and files never block the event
loop."  The stdout half is tried in ``test_sink_isolation.py`` (a stdout
nobody reads).  This is the file half: the file sink's path is a real FIFO
whose reader has it open but reads nothing, so once the kernel's pipe
buffer is full, ``write(2)`` blocks for as long as the reader wants, the
way a hung disk or NFS server does.

The reader is a thread of the test that waits for the event loop to keep
ticking while the write is stuck, and only then drains the pipe.  Were the
write done on the event loop, the loop could not tick, the reader would
give up waiting after ``PATIENCE`` seconds and drain anyway, and the test
would fail on ``loop_ticked_while_blocked`` instead of hanging.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time
from pathlib import Path

import pytest

from eventd.config import FileSinkConfig
from eventd.metrics import Metrics
from eventd.sinks.file import FileSink
from tests.support.http_receiver import sample_alert

pytestmark = pytest.mark.timeout(60)

#: How long the reader waits for the loop to show it is alive before draining anyway.
PATIENCE = 10.0
#: Loop ticks (10 ms sleeps) that count as "the loop kept running" while the write was stuck.
TICKS = 20


def pipe_is_full(fd: int) -> bool:
    """Whether a non-blocking write to the FIFO would block (its buffer is full)."""
    _, writable, _ = select.select([], [fd], [], 0)
    return not writable


@pytest.mark.asyncio
async def test_a_write_blocked_on_a_fifo_leaves_the_event_loop_running(tmp_path: Path) -> None:
    fifo = tmp_path / "alerts.fifo"
    os.mkfifo(fifo)
    # The reader opens first (non-blocking), so the sink's open does not wait for one.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    # A second writer-side descriptor only to ask whether the pipe is full.
    probe = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    sink = FileSink(FileSinkConfig(path=fifo), Metrics())
    await sink.start()

    alive = threading.Event()
    drained = bytearray()
    reading_done = threading.Event()

    def drain() -> None:
        alive.wait(PATIENCE)
        os.set_blocking(reader, True)
        try:
            while True:
                chunk = os.read(reader, 1 << 16)
                if not chunk:
                    return
                drained.extend(chunk)
        finally:
            reading_done.set()

    thread = threading.Thread(target=drain, name="fifo-reader", daemon=True)
    thread.start()
    # Several times the pipe buffer (64 KiB on Linux): the write must block.
    alerts = [sample_alert(f"rule {i}") for i in range(2000)]
    expected = b"".join(alert.to_json() + b"\n" for alert in alerts)
    assert len(expected) > 4 * (1 << 16)
    sending = asyncio.create_task(sink.send_many(alerts))
    try:
        ticks = 0
        deadline = time.monotonic() + PATIENCE
        while ticks < TICKS and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            # Only ticks while the write is really stuck count.
            if pipe_is_full(probe) and not sending.done():
                ticks += 1
        loop_ticked_while_blocked = ticks >= TICKS and not alive.is_set()
        alive.set()
        assert loop_ticked_while_blocked, f"the event loop ticked {ticks} times while the file write blocked"
        await asyncio.wait_for(sending, 30)
    finally:
        alive.set()
        await sink.close()
        os.close(probe)
        await asyncio.to_thread(reading_done.wait, 10)
        os.close(reader)
    # Everything written once, in order, once the reader came back.
    assert bytes(drained) == expected
