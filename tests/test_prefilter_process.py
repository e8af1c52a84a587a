"""The scan's prefilter process: how it fails, stops, and holds memory.

That it judges exactly as a scan in one process does is checked with the
other ways of scanning in ``test_scanner_blocks.py``; here: a child killed
mid-scan is reported, never taken for the end of the input; a parent that
stops early leaves no process behind; a read error reaches the parent where
a scan in one process meets it; a child whose parent does not read stops
reading too; and the second process is used only where it pays.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from eventd import prefilter_process
from eventd.engine.loader import load_rules
from eventd.prefilter_process import PrefilterProcess, PrefilterProcessError, worthwhile
from eventd.rulepacks import builtin_rule_files
from eventd.scanner import Scanner, open_input
from tests.support.builders import audit_event, lease_renewal, pod

BUILTIN = load_rules(builtin_rule_files())


def _untrusted(i: int) -> bytes:
    name = f"miner-{i}"
    return orjson.dumps(audit_event(request=pod("evil.example.com/miner:1", name=name), name=name)) + b"\n"


def _log(path: Path, lines: int, every: int = 1) -> Path:
    """``lines`` audit lines, every ``every``-th one an alerting pod create."""
    lease = orjson.dumps(lease_renewal()) + b"\n"
    path.write_bytes(b"".join(_untrusted(i) if i % every == 0 else lease for i in range(lines)))
    return path


def _scan(path: Path, **options: Any) -> tuple[list[bytes], Scanner]:
    alerts: list[bytes] = []
    scanner = Scanner(BUILTIN, on_alert=lambda a: alerts.append(a.to_json()), **options)
    scanner.scan_path(str(path))
    return alerts, scanner


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


class _Recording(PrefilterProcess):
    """A prefilter process that remembers its instances (for their pids)."""

    made: list[PrefilterProcess] = []  # reset by the fixture

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.made.append(self)


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> list[PrefilterProcess]:
    _Recording.made = []
    monkeypatch.setattr(prefilter_process, "PrefilterProcess", _Recording)
    return _Recording.made


def test_a_file_scans_the_same_in_one_process_and_in_two(tmp_path: Path, recording) -> None:
    log = _log(tmp_path / "audit.log", 3000, every=7)
    one, single = _scan(log, prefilter_process=False)
    two, double = _scan(log, prefilter_process=True)
    assert len(recording) == 1 and _reaped(recording[0].pid)
    assert len(one) == 429 and two == one
    assert double.stats == single.stats


def test_gzip_is_read_by_the_child(tmp_path: Path) -> None:
    log = _log(tmp_path / "audit.log", 500, every=5)
    packed = tmp_path / "audit.log.gz"
    packed.write_bytes(gzip.compress(log.read_bytes()))
    assert _scan(packed, prefilter_process=True)[0] == _scan(log, prefilter_process=False)[0]


def test_a_killed_child_is_reported_not_taken_for_the_end_of_the_input(tmp_path: Path) -> None:
    # Far more kept lines than the pipe and both buffers hold: the child
    # cannot have sent everything before it is killed.
    log = _log(tmp_path / "audit.log", 6000)
    scanner = Scanner(BUILTIN)
    stream, raw = open_input(str(log))
    ended = "the prefilter process ended early \\(killed by signal 9\\)"
    with (
        raw,
        PrefilterProcess(stream, raw, scanner.prefilter, 4096, 1 << 20) as judged,
        pytest.raises(PrefilterProcessError, match=ended),
    ):
        scanner.scan_judged(judged, str(log), progress=lambda _pos: os.kill(judged.pid, signal.SIGKILL))
    assert _reaped(judged.pid)
    assert 0 < scanner.stats.alerts < 6000


def test_the_parent_stopping_early_kills_and_reaps_the_child(tmp_path: Path, recording) -> None:
    log = _log(tmp_path / "audit.log", 6000)

    def stop(_alert: Any) -> None:
        raise BrokenPipeError("stdout closed (| head)")

    scanner = Scanner(BUILTIN, on_alert=stop, prefilter_process=True)
    with pytest.raises(BrokenPipeError):
        scanner.scan_path(str(log))
    assert len(recording) == 1 and _reaped(recording[0].pid)


def test_a_read_error_reaches_the_parent_after_the_blocks_before_it(tmp_path: Path) -> None:
    """A truncated .gz: both ways raise the same error after the same alerts."""
    data = gzip.compress(_log(tmp_path / "audit.log", 2000, every=3).read_bytes())
    broken = tmp_path / "broken.log.gz"
    broken.write_bytes(data[: len(data) // 2])
    outcomes = []
    for in_two in (False, True):
        alerts: list[bytes] = []
        scanner = Scanner(BUILTIN, on_alert=lambda a, alerts=alerts: alerts.append(a.to_json()))
        scanner.prefilter_process = in_two
        with pytest.raises(EOFError) as info:
            scanner.scan_path(str(broken))
        outcomes.append((str(info.value), alerts, scanner.stats))
    assert outcomes[0] == outcomes[1]
    assert 0 < len(outcomes[0][1]) < 667


def _read_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/<pid>/io")
def test_a_child_whose_parent_does_not_read_stops_reading(tmp_path: Path) -> None:
    """Backpressure: with nobody reading the pipe, the child blocks on it
    after about a pipe and a buffer of kept lines, however long the input."""
    log = _log(tmp_path / "audit.log", 12000)  # every line kept: ~12 MB to send
    scanner = Scanner(BUILTIN)
    stream, raw = open_input(str(log))
    with raw, PrefilterProcess(stream, raw, scanner.prefilter, 1 << 16, 1 << 20) as judged:
        before = -1
        deadline = time.monotonic() + 10
        while (now := _read_bytes(judged.pid)) != before and time.monotonic() < deadline:
            before = now
            time.sleep(0.3)
        assert now < 2 << 20 < log.stat().st_size  # stalled after at most 2 MB of 12
        assert sum(block[0] for block, _ in judged if block) == 12000  # and it all comes once read


def test_the_second_process_is_used_only_where_it_pays(tmp_path: Path, monkeypatch) -> None:
    small, big = tmp_path / "small.log", tmp_path / "big.log"
    small.write_bytes(b"{}\n")
    with open(big, "wb") as f:
        f.truncate(prefilter_process.MIN_BYTES)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    # Earlier tests in this process may have left idle threads (executors).
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    with open(small, "rb") as s, open(big, "rb") as b:
        assert not worthwhile(s)
        assert worthwhile(b)
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
        assert not worthwhile(b)  # one CPU
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
        monkeypatch.setattr(threading, "active_count", lambda: 2)
        assert not worthwhile(b)  # another thread: no fork
    read_end, write_end = os.pipe()
    with open(read_end, "rb") as pipe:
        os.close(write_end)
        assert not worthwhile(pipe)


def _cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "eventd", "scan", "--no-stats", *args], capture_output=True, timeout=120
    )


def test_the_command_prints_the_same_either_way(tmp_path: Path) -> None:
    log = _log(tmp_path / "audit.log", 2000, every=9)
    one, two = _cli("--no-prefilter-process", str(log)), _cli("--prefilter-process", str(log))
    assert one.returncode == two.returncode == 0
    assert two.stdout == one.stdout and one.stdout.count(b"\n") == 223
    junk = tmp_path / "junk.log"
    junk.write_bytes(b"not json\n" * 100)
    refused = _cli("--prefilter-process", str(junk))
    assert refused.returncode == _cli("--no-prefilter-process", str(junk)).returncode != 0
    assert b"not audit data" in refused.stderr


def test_no_fork_means_one_process_not_a_failed_scan(tmp_path: Path, monkeypatch) -> None:
    log = _log(tmp_path / "audit.log", 300, every=7)
    expected = _scan(log, prefilter_process=False)[0]
    before = len(os.listdir("/proc/self/fd"))

    def refuse() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", refuse)
    assert _scan(log, prefilter_process=True)[0] == expected
    assert len(os.listdir("/proc/self/fd")) == before  # the pipe's ends were closed


def _scan_interrupted(log: Path, ignore_sigint: bool) -> tuple[int, bytes, bytes]:
    """``eventd scan --prefilter-process`` in a session of its own, sent
    SIGINT (Ctrl-C reaches the whole foreground process group) mid-scan."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN if ignore_sigint else signal.SIG_DFL)
    try:  # a child process starts with this disposition (SIG_IGN survives exec)
        proc = subprocess.Popen(
            [sys.executable, "-m", "eventd", "scan", "--no-stats", "--prefilter-process", str(log)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 30
    while not _children_of(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def _children_of(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in found.stdout.split()]


def test_ctrl_c_ends_both_processes_quietly(tmp_path: Path) -> None:
    code, _out, err = _scan_interrupted(_log(tmp_path / "audit.log", 20000), ignore_sigint=False)
    assert code == 130, err
    assert b"prefilter process" not in err


def test_a_scan_that_ignores_sigint_ignores_it_in_both_processes(tmp_path: Path) -> None:
    """``nohup``, a background job of a script: SIGINT is ignored from the
    start, so the prefilter process must not die of it either."""
    log = _log(tmp_path / "audit.log", 20000)
    code, out, err = _scan_interrupted(log, ignore_sigint=True)
    assert code == 0, err
    assert out == _cli("--no-prefilter-process", str(log)).stdout
