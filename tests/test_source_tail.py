"""The one file follower (``sources/tail.py``) both file inputs share: the
follow loop on real files, the line splitter's ``partial`` flag, and the
``max_line_bytes`` setting of the Falco file input."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventd.config import FalcoFileConfig
from eventd.metrics import Metrics
from eventd.sources.falco_file import FalcoFileSource
from eventd.sources.tail import LineSplitter, LogFile, PlainLog, follow, read_lines
from tests.test_source_falco_file import RecordingInlet, alert, append, running, until

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """A ``TailReader`` that records what ``follow`` asks of it."""

    def __init__(self) -> None:
        self.lines: list[bytes | None] = []
        self.truncations: list[tuple[int, bool]] = []
        self.finished = False
        self.stop = asyncio.Event()

    def stopping(self) -> bool:
        return self.stop.is_set()

    async def read_available(self, file: LogFile) -> bool:
        while (lines := read_lines(file, 7)) is not None:  # small reads: lines cross them
            self.lines += [line for line, _ in lines]
        return not self.stopping()

    async def finish(self, file: LogFile) -> bool:
        rest = file.splitter.flush()
        if rest is not None:
            self.lines.append(rest[0])
        self.finished = True
        return True

    def truncated(self, file: PlainLog, was_at: int, lost_partial: bool) -> None:
        self.truncations.append((was_at, lost_partial))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@pytest.mark.asyncio
async def test_follow_reads_truncation_and_rotation_of_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "live.log"
    path.write_bytes(b"one\ntw")
    file = PlainLog(path, 100, 0, follow=True)
    reader = Recorder()
    task = asyncio.create_task(follow(file, reader, 0.005))
    await until(lambda: reader.lines == [b"one"])
    # Truncated mid-line, then rewritten longer than before (the size alone
    # would not show it: the start of the file changed).
    path.write_bytes(b"fresh content, longer than before\n")
    await until(lambda: reader.lines[-1:] == [b"fresh content, longer than before"])
    assert reader.truncations == [(6, True)]
    # Rotation by renaming: the rest of the old file, unterminated last line
    # included, then ``follow`` returns True for the caller to open the next.
    append(path, b"last", newline=False)
    path.rename(tmp_path / "live.log.1")
    path.write_bytes(b"new file\n")
    assert await asyncio.wait_for(task, 5) is True
    assert reader.finished and reader.lines[-1] == b"last"
    file.close()


@pytest.mark.asyncio
async def test_follow_returns_false_when_the_source_stops(tmp_path: Path) -> None:
    path = tmp_path / "live.log"
    path.write_bytes(b"")
    file = PlainLog(path, 100, 0, follow=True)
    reader = Recorder()
    task = asyncio.create_task(follow(file, reader, 0.005))
    await asyncio.sleep(0.02)
    reader.stop.set()
    assert await asyncio.wait_for(task, 5) is False
    file.close()


@given(st.binary(max_size=60), st.integers(1, 20))
def test_partial_says_whether_a_line_is_in_progress(data: bytes, limit: int) -> None:
    splitter = LineSplitter(0, limit)
    splitter.feed(data)
    tail = data.rsplit(b"\n", 1)[-1]
    assert splitter.partial == bool(tail)


@pytest.mark.asyncio
async def test_falco_file_max_line_bytes_is_a_setting(tmp_path: Path) -> None:
    path = tmp_path / "alerts.json"
    small, large = alert("small"), alert("large", note="x" * 400)
    path.write_bytes(small + b"\n" + large + b"\n")
    config = FalcoFileConfig(path=str(path), follow=False, max_line_bytes=len(small) + 10)
    inlet = RecordingInlet()
    await asyncio.wait_for(FalcoFileSource(config, Metrics()).run(inlet), 5)
    assert inlet.rules() == ["small"]
    assert inlet.rejections == [("falco_file", "too_large", 1)]


@pytest.mark.asyncio
async def test_falco_file_counts_a_partial_line_lost_to_truncation(tmp_path: Path) -> None:
    path = tmp_path / "falco.json"
    path.write_bytes(b"")
    inlet = RecordingInlet()
    source = FalcoFileSource(FalcoFileConfig(path=str(path), poll_interval_seconds=0.01), Metrics())
    async with running(source, inlet):
        await until(source.ready)
        append(path, alert("a1"), alert("torn")[:30], newline=False)
        await until(lambda: inlet.rules() == ["a1"])
        path.write_bytes(alert("t1") + b"\n")
        await until(lambda: inlet.rules() == ["a1", "t1"])
    assert inlet.reasons() == ["truncated"]
