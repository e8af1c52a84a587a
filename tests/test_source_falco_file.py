"""The Falco JSON-lines source: real files (tail, truncation, rotation), real
pipes as stdin, and a child process reading its actual stdin."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventd.config import ConfigError, FalcoFileConfig
from eventd.events.errors import DecodeError
from eventd.metrics import Metrics
from eventd.sources.base import Batch
from eventd.sources.falco_file import MAX_LINE_BYTES, FalcoFileSource
from eventd.sources.tail import LineSplitter

pytestmark = pytest.mark.timeout(30)

AUDIT_LINE = orjson.dumps(
    {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "auditID": "a1",
        "stage": "ResponseComplete",
        "stageTimestamp": "2024-05-01T10:00:00.000000Z",
        "verb": "get",
    }
)


def alert(rule: str, priority: str = "Critical", **fields: object) -> bytes:
    return orjson.dumps(
        {
            "hostname": "falco-xczjd",
            "output": f"13:44:05.478445995: {priority} {rule}",
            "priority": priority,
            "rule": rule,
            "source": "syscall",
            "tags": ["container"],
            "time": "2023-05-25T13:44:05.478445995Z",
            "output_fields": fields or {"proc.tty": 34816, "user.loginuid": -1, "k8s.pod.name": None},
        }
    )


class RecordingInlet:
    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.rejections: list[tuple[str, str, int]] = []

    async def put(self, batch: Batch) -> None:
        self.batches.append(batch)

    def offer(self, batch: Batch) -> bool:
        raise AssertionError("a file source must wait for room (put), not offer")

    def rejected(self, source: str, error: DecodeError | str, count: int = 1) -> None:
        reason = error.reason if isinstance(error, DecodeError) else error
        self.rejections.append((source, reason, count))

    def rules(self) -> list[str]:
        return [e.doc["rule"] for b in self.batches for e in b.events]

    def reasons(self) -> list[str]:
        return [r for _, r, _ in self.rejections]


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(source: FalcoFileSource, inlet: RecordingInlet) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(source.run(inlet))
    try:
        yield task
    finally:
        await source.stop()
        await asyncio.wait_for(task, 5)


def append(path: Path, *lines: bytes, newline: bool = True) -> None:
    with path.open("ab") as f:
        f.write(b"\n".join(lines) + (b"\n" if newline else b""))


# ------------------------------------------------------------------ line split


@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=20),
    st.lists(st.integers(1, 30), min_size=1, max_size=10),
)
def test_splitter_reassembles_lines_across_chunks(lines: list[bytes], sizes: list[int]) -> None:
    """The shared tailer's splitter (``sources/tail.py``) as this input uses it."""
    data = b"".join(line + b"\n" for line in lines)
    splitter = LineSplitter(0, 16)
    got, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        got += splitter.feed(data[pos : pos + size])
        pos, i = pos + size, i + 1
    assert [line for line, _ in got if line is not None] == [line for line in lines if len(line) <= 16]
    assert sum(line is None for line, _ in got) == sum(len(line) > 16 for line in lines)
    assert splitter.flush() is None


def test_splitter_returns_an_unterminated_last_line() -> None:
    splitter = LineSplitter(0, MAX_LINE_BYTES)
    assert splitter.feed(b"a\nb") == [(b"a", 2)]
    assert splitter.flush() == (b"b", 3)


# ----------------------------------------------------------------- whole files


@pytest.mark.asyncio
async def test_file_without_follow_is_read_once_with_reasons(tmp_path: Path) -> None:
    path = tmp_path / "alerts.json"
    path.write_bytes(
        b"\n".join(
            [
                alert("one"),
                b"{not json",
                AUDIT_LINE,
                b"",
                alert("bad priority", priority="Loud"),
                b'{"rule": "no time", "priority": "Error", "output": "x"}',
                b"x" * (MAX_LINE_BYTES + 10),
                b'{"hello": "world"}',
                alert("two", priority="Info"),  # no final newline
            ]
        )
    )
    inlet = RecordingInlet()
    source = FalcoFileSource(FalcoFileConfig(path=str(path), follow=False), Metrics())
    await asyncio.wait_for(source.run(inlet), 5)
    assert inlet.rules() == ["one", "two"]
    docs = [e.doc for b in inlet.batches for e in b.events]
    assert docs[0]["output_fields"] == {"proc.tty": 34816, "user.loginuid": -1, "k8s.pod.name": None}
    assert docs[1]["priority"] == "Informational"
    assert all(e.origin == "falco_file" for b in inlet.batches for e in b.events)
    assert sorted(inlet.reasons()) == sorted(
        ["json", "not_falco", "priority", "time", "too_large", "not_audit"]
    )
    assert {s for s, _, _ in inlet.rejections} == {"falco_file"}


def test_missing_file_without_follow_is_refused_at_construction(tmp_path: Path) -> None:
    """Refused when the config is validated (``run --check`` too), not when it runs."""
    with pytest.raises(ConfigError, match=r"^sources\.falco_file\.path: cannot read .*nope"):
        FalcoFileSource(FalcoFileConfig(path=str(tmp_path / "nope"), follow=False), Metrics())


def test_a_directory_is_refused_even_when_followed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory, expected a file"):
        FalcoFileSource(FalcoFileConfig(path=str(tmp_path), follow=True), Metrics())


def test_a_followed_file_may_appear_later(tmp_path: Path) -> None:
    FalcoFileSource(FalcoFileConfig(path=str(tmp_path / "later.json"), follow=True), Metrics())


# ---------------------------------------------------------------------- follow


def follow_config(path: Path) -> FalcoFileConfig:
    return FalcoFileConfig(path=str(path), follow=True, poll_interval_seconds=0.01)


@pytest.mark.asyncio
async def test_follow_appends_truncation_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "falco.json"
    path.write_bytes(alert("old, before start") + b"\n")
    inlet = RecordingInlet()
    source = FalcoFileSource(follow_config(path), Metrics())
    async with running(source, inlet) as task:
        await until(source.ready)
        append(path, alert("a1"), b"garbage")
        await until(lambda: inlet.rules() == ["a1"])
        assert inlet.reasons() == ["json"]
        # A line written in two pieces is read once it is complete.
        line = alert("a2")
        append(path, line[:20], newline=False)
        append(path, line[20:])
        await until(lambda: inlet.rules() == ["a1", "a2"])

        # Truncation (copytruncate): read again from the start.
        path.write_bytes(alert("t1") + b"\n")
        await until(lambda: inlet.rules()[-1:] == ["t1"])

        # Rotation: the rest of the old file, then the new file from its start.
        append(path, alert("last of old"))
        path.rename(tmp_path / "falco.json.1")
        path.write_bytes(alert("first of new") + b"\n")
        await until(lambda: inlet.rules()[-2:] == ["last of old", "first of new"])
        append(path, alert("n2"))
        await until(lambda: inlet.rules()[-1:] == ["n2"])
        assert "old, before start" not in inlet.rules()
        assert not task.done()
    assert inlet.rules() == ["a1", "a2", "t1", "last of old", "first of new", "n2"]


@pytest.mark.asyncio
async def test_follow_waits_for_the_file_to_appear(tmp_path: Path) -> None:
    path = tmp_path / "later.json"
    inlet = RecordingInlet()
    source = FalcoFileSource(follow_config(path), Metrics())
    async with running(source, inlet):
        await until(source.ready)
        path.write_bytes(alert("x1") + b"\n" + AUDIT_LINE + b"\n")
        await until(lambda: inlet.rules() == ["x1"] and inlet.reasons() == ["not_falco"])


# ----------------------------------------------------------------------- stdin


@pytest.mark.asyncio
async def test_stdin_pipe_until_end_of_input() -> None:
    read_fd, write_fd = os.pipe()
    inlet = RecordingInlet()
    source = FalcoFileSource(FalcoFileConfig(path="-"), Metrics(), stdin=read_fd)
    try:
        task = asyncio.create_task(source.run(inlet))
        await until(source.ready)
        line = alert("p1")
        os.write(write_fd, line[:30])
        await asyncio.sleep(0)
        os.write(write_fd, line[30:] + b"\n[1, 2]\n" + alert("p2", "Warning"))  # no final newline
        await until(lambda: inlet.rules() == ["p1"])
        assert not task.done()
        os.close(write_fd)
        write_fd = -1
        await asyncio.wait_for(task, 5)  # end of input: the source finishes
        assert inlet.rules() == ["p1", "p2"]
        assert inlet.reasons() == ["not_audit"]
    finally:
        os.close(read_fd)  # the source read a duplicate: ours is still open
        if write_fd >= 0:
            os.close(write_fd)


@pytest.mark.asyncio
async def test_stop_ends_a_stdin_pipe_without_input() -> None:
    read_fd, write_fd = os.pipe()
    source = FalcoFileSource(FalcoFileConfig(path="-"), Metrics(), stdin=read_fd)
    try:
        task = asyncio.create_task(source.run(RecordingInlet()))
        await until(source.ready)
        await source.stop()
        await asyncio.wait_for(task, 5)
    finally:
        os.close(read_fd)
        os.close(write_fd)


CHILD = textwrap.dedent(
    """
    import asyncio, json
    from eventd.config import FalcoFileConfig
    from eventd.metrics import Metrics
    from eventd.sources.falco_file import FalcoFileSource

    class Inlet:
        rules, reasons = [], []
        async def put(self, batch):
            self.rules += [e.doc["rule"] for e in batch.events]
        def rejected(self, source, error, count=1):
            self.reasons.append(error.reason)

    inlet = Inlet()
    asyncio.run(FalcoFileSource(FalcoFileConfig(path="-"), Metrics()).run(inlet))
    print(json.dumps({"rules": inlet.rules, "reasons": inlet.reasons}))
    """
)


def run_child(**kw: object) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, timeout=20, **kw)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return json.loads(done.stdout.decode().splitlines()[-1])


STDIN_DATA = alert("s1") + b"\n" + AUDIT_LINE + b"\n" + alert("s2") + b"\n"


def test_real_stdin_of_a_process_is_a_pipe() -> None:
    assert run_child(input=STDIN_DATA) == {"rules": ["s1", "s2"], "reasons": ["not_falco"]}


def test_real_stdin_redirected_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "in.json").write_bytes(STDIN_DATA)
    with (tmp_path / "in.json").open("rb") as stdin:  # `eventd run < alerts.json`
        assert run_child(stdin=stdin) == {"rules": ["s1", "s2"], "reasons": ["not_falco"]}


def test_real_stdin_from_dev_null() -> None:
    assert run_child(stdin=subprocess.DEVNULL) == {"rules": [], "reasons": []}
