"""Hostile sizes against every reader: ``eventd scan`` inputs, rule files, config files.

``eventd scan`` must hold at most about ``--max-line-bytes`` plus a block of
any input, so an input without newlines (``/dev/zero``), one huge line or a
gzip bomb is skipped a piece at a time instead of being read whole.  Each
attack runs the real command in a subprocess and asserts its peak resident
size (``ru_maxrss`` from ``wait4``, the kernel's VmHWM of that process)
against ``PEAK_RSS_LIMIT``: a size assertion, not a timing one.  Inputs are
a few hundred MB, streamed from a generator process or compressed, never
written to disk as such; before the bound, each of them made the scan hold
the input whole, at least twice over.

Every subprocess also runs under an address-space cap (``ADDRESS_SPACE_CAP``)
so that a regression fails fast with ``MemoryError`` instead of eating the
test machine.
"""

from __future__ import annotations

import gzip
import re
import resource
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from eventd.boundedfile import MAX_FILE_BYTES
from eventd.config import AuditLogConfig
from tests.support.builders import audit_event, pod

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "audit-sample.jsonl"
SCAN = (sys.executable, "-m", "eventd", "scan")
MIB = 1 << 20
#: Size of each attack.  The scan used to hold such an input whole, twice
#: (the line being built and its join): well past ``PEAK_RSS_LIMIT``.
ATTACK_BYTES = 400 * MIB
#: Generous: the scan measures about 36 MB on every attack here and the
#: README states 100 MB; Python builds differ.  Attacks are 400 MB.
PEAK_RSS_LIMIT = 200 * MIB
#: Address space allowed to each subprocess (the scan's is about 60 MB).
ADDRESS_SPACE_CAP = 2 << 30
#: ``eventd scan``'s default limit is the daemon's.
MAX_LINE_BYTES = AuditLogConfig().max_line_bytes
TOO_LONG = f"line longer than {MAX_LINE_BYTES} bytes, skipped"


@dataclass
class Outcome:
    rc: int
    out: bytes
    err: str
    peak_rss: int  # bytes

    @property
    def alerts(self) -> list[tuple[str, str]]:
        """(rule, uuid) of each alert printed: the uuid is derived from the
        rule and the event, so equal lists mean the same alerts."""
        return [(alert["rule"], alert["uuid"]) for alert in map(orjson.loads, self.out.splitlines())]


def _cap_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))


#: Runs the command as its child and reports the child's own peak RSS.  A
#: direct child of pytest would not do: on Linux a process's ``ru_maxrss``
#: starts from its parent's resident size at ``fork`` and survives ``exec``,
#: so late in a long test run every child would "peak" at pytest's size.  A
#: grandchild forked from this small, freshly exec'd wrapper starts near zero.
_WRAPPER = """
import json, resource, subprocess, sys, time
stop, report, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
proc = subprocess.Popen(argv)
while stop and proc.poll() is None:  # kill once it has read ``stop`` bytes
    try:
        io_text = open(f"/proc/{proc.pid}/io").read()
    except OSError:
        break
    if int(io_text.split("rchar:")[1].split()[0]) >= stop:
        proc.kill()
        break
    time.sleep(0.05)  # a polling interval, not a limit
rc = proc.wait()
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
with open(report, "w") as out:
    json.dump({"rc": rc, "peak": peak}, out)
"""


def _measured(
    argv: list[str], tmp_path: Path, *, stdin: int | None = None, stop_after_read: int | None = None
) -> Outcome:
    """Run ``argv`` and return what it printed and its peak RSS (see ``_WRAPPER``).

    ``stop_after_read`` kills it once it has read that many bytes (for an
    input that never ends).
    """
    out_path, err_path, report = tmp_path / "stdout", tmp_path / "stderr", tmp_path / "measured.json"
    wrapped = [sys.executable, "-c", _WRAPPER, str(stop_after_read or 0), str(report), *argv]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        subprocess.run(
            wrapped, stdin=stdin, stdout=out, stderr=err, cwd=tmp_path, preexec_fn=_cap_address_space
        )
    measured = orjson.loads(report.read_bytes())
    return Outcome(measured["rc"], out_path.read_bytes(), err_path.read_text(), measured["peak"])


def _generator(code: str) -> subprocess.Popen[bytes]:
    """A process writing the output of ``code`` (with ``w`` = write to stdout) into a pipe."""
    prelude = "import sys\nw = sys.stdout.buffer.write\n"
    return subprocess.Popen(
        [sys.executable, "-c", prelude + code], stdout=subprocess.PIPE, preexec_fn=_cap_address_space
    )


def _scan_pipe(code: str, tmp_path: Path, *flags: str) -> Outcome:
    """``<generator> | eventd scan [flags] -``."""
    gen = _generator(code)
    assert gen.stdout is not None
    try:
        return _measured([*SCAN, *flags, "-"], tmp_path, stdin=gen.stdout.fileno())
    finally:
        gen.stdout.close()
        gen.wait()


def _sample_alerts(tmp_path: Path) -> list[tuple[str, str]]:
    result = _measured([*SCAN, str(SAMPLE)], tmp_path)
    assert result.rc == 0 and result.alerts
    return result.alerts


def _gzip_bomb(path: Path, before: bytes, run: bytes, times: int, after: bytes) -> None:
    """A gzip file of ``before``, ``run * times``, ``after``: one member,
    written without compressing ``run`` more than once.

    After a full flush the compressor starts afresh, so every copy of ``run``
    compresses to the same bytes; 400 MB of zeros take 400 KB and no time.
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the gzip frame is written here
    crc = zlib.crc32(before)
    head = packer.compress(before) + packer.flush(zlib.Z_FULL_FLUSH)
    piece = packer.compress(run) + packer.flush(zlib.Z_FULL_FLUSH)
    for _ in range(times):
        crc = zlib.crc32(run, crc)
    tail = packer.compress(after) + packer.flush()
    crc = zlib.crc32(after, crc)
    size = len(before) + len(run) * times + len(after)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + head)  # magic, deflate, no flags, no mtime
        for _ in range(times):
            f.write(piece)
        f.write(tail + struct.pack("<II", crc, size & 0xFFFFFFFF))


def _bounded(result: Outcome) -> None:
    assert result.peak_rss < PEAK_RSS_LIMIT, f"peak RSS {result.peak_rss / MIB:.0f} MiB"


# ---------------------------------------------------------------- eventd scan


def test_scan_limit_is_the_daemon_default() -> None:
    # Imported here: a scanner without it fails this test only.
    from eventd.scanner import DEFAULT_MAX_LINE_BYTES

    assert MAX_LINE_BYTES == DEFAULT_MAX_LINE_BYTES


def test_zeros_through_a_pipe_are_one_line_skipped(tmp_path: Path) -> None:
    """``head -c 400M /dev/zero | eventd scan -``: no newline, ever."""
    head = subprocess.Popen(["head", "-c", str(ATTACK_BYTES), "/dev/zero"], stdout=subprocess.PIPE)
    assert head.stdout is not None
    try:
        result = _measured([*SCAN, "-"], tmp_path, stdin=head.stdout.fileno())
    finally:
        head.stdout.close()
        head.wait()
    assert result.rc == 0, result.err
    assert result.err.splitlines() == [f"eventd: -:1: {TOO_LONG}"]
    _bounded(result)


def test_dev_zero_by_name_stays_bounded(tmp_path: Path) -> None:
    """``eventd scan /dev/zero`` never ends; it is stopped once it has read
    ``ATTACK_BYTES``, and must not have grown with them."""
    result = _measured([*SCAN, "/dev/zero"], tmp_path, stop_after_read=ATTACK_BYTES)
    assert result.rc == -9, result.err  # still scanning when killed, not failed early
    _bounded(result)


def test_a_sparse_file_of_zeros_is_one_line_skipped(tmp_path: Path) -> None:
    """A file (read in blocks, unlike a pipe) holding no newline: on disk it
    takes nothing."""
    zeros = tmp_path / "zeros.log"
    with open(zeros, "wb") as f:
        f.truncate(ATTACK_BYTES)
    result = _measured([*SCAN, str(zeros)], tmp_path)
    assert result.rc == 0, result.err
    assert result.err.splitlines() == [f"eventd: {zeros}:1: {TOO_LONG}"]
    _bounded(result)


def test_a_huge_line_in_a_pipe_is_skipped_and_the_scan_goes_on(tmp_path: Path) -> None:
    """The sample, a 400 MB line, the sample again: both samples alert."""
    lines = SAMPLE.read_bytes().count(b"\n")
    code = (
        f"sample = open({str(SAMPLE)!r}, 'rb').read()\nw(sample)\nblock = b'x' * (1 << 20)\n"
        f"for _ in range({ATTACK_BYTES // MIB}):\n    w(block)\nw(b'\\n')\nw(sample)\n"
    )
    result = _scan_pipe(code, tmp_path)
    assert result.rc == 0, result.err
    assert result.err.splitlines() == [f"eventd: -:{lines + 1}: {TOO_LONG}"]
    assert result.alerts == _sample_alerts(tmp_path) * 2
    _bounded(result)


@pytest.mark.parametrize("how", ["file", "pipe"])
def test_a_gzip_bomb_is_decompressed_a_block_at_a_time(tmp_path: Path, how: str) -> None:
    """400 MB of zeros in 400 KB of gzip, between two copies of the sample."""
    sample = SAMPLE.read_bytes()
    bomb = tmp_path / "bomb.log.gz"
    _gzip_bomb(bomb, sample, bytes(MIB), ATTACK_BYTES // MIB, b"\n" + sample)
    assert bomb.stat().st_size < 2 * MIB
    if how == "file":
        name = str(bomb)
        result = _measured([*SCAN, name], tmp_path)
    else:
        name = "-"
        result = _scan_pipe(f"w(open({str(bomb)!r}, 'rb').read())", tmp_path)
    assert result.rc == 0, result.err
    zeros_line = sample.count(b"\n") + 1
    assert result.err.splitlines() == [f"eventd: {name}:{zeros_line}: {TOO_LONG}"]
    assert result.alerts == _sample_alerts(tmp_path) * 2
    _bounded(result)


@pytest.mark.parametrize("damage", ["truncated", "invalid deflate"])
def test_a_damaged_gzip_ends_its_input_with_one_line(tmp_path: Path, damage: str) -> None:
    """What decoded before the damage is scanned; then one error line, exit 1."""
    packed = gzip.compress(SAMPLE.read_bytes() * 50)
    # 10 bytes of gzip header, then a deflate block of the reserved type 3.
    data = packed[: len(packed) // 2] if damage == "truncated" else packed[:10] + b"\xff" * 64
    (tmp_path / "damaged.log.gz").write_bytes(data)
    result = _measured([*SCAN, "damaged.log.gz"], tmp_path)
    assert result.rc == 1
    assert result.err.splitlines()[-1].startswith("eventd: damaged.log.gz: damaged gzip data (")
    assert "Traceback" not in result.err
    assert bool(result.alerts) == (damage == "truncated")


def _untrusted_line(padding: int = 0) -> bytes:
    """An audit line that raises an alert, padded with spaces to a length."""
    line = orjson.dumps(audit_event(request=pod("evil.example.com/miner:1")))
    return line + b" " * padding


@pytest.mark.parametrize("how", ["file", "pipe"])
def test_max_line_bytes_sets_the_limit(tmp_path: Path, how: str) -> None:
    """A line of exactly the limit is scanned, one byte more is skipped,
    reported and counted in the summary."""
    limit = 2000
    unpadded = len(_untrusted_line())
    at_limit, past_limit = _untrusted_line(limit - unpadded), _untrusted_line(limit + 1 - unpadded)
    data = at_limit + b"\n" + past_limit + b"\n" + at_limit + b"\n"
    flags = ["--max-line-bytes", str(limit), "--stats"]
    if how == "file":
        (tmp_path / "in.log").write_bytes(data)
        name = "in.log"
        result = _measured([*SCAN, *flags, name], tmp_path)
    else:
        name = "-"
        result = _scan_pipe(f"w({data!r})", tmp_path, *flags)
    assert result.rc == 0, result.err
    assert len(result.alerts) == 2
    assert f"eventd: {name}:2: line longer than {limit} bytes, skipped" in result.err.splitlines()
    assert re.search(r"rejected: too_large\s*│\s*1\s*│", result.err), result.err


@pytest.mark.parametrize("value", ["0", "-5", "lots"])
def test_max_line_bytes_must_be_a_positive_number(tmp_path: Path, value: str) -> None:
    result = _measured([*SCAN, "--max-line-bytes", value, str(SAMPLE)], tmp_path)
    assert result.rc == 2 and "--max-line-bytes" in result.err and not result.out


# ------------------------------------------------------- rule and config files


def _padded_yaml(path: Path, head: str, size: int) -> None:
    """Valid YAML of ``size`` bytes: ``head`` then comment lines."""
    comment = b"#" + b"x" * 1022 + b"\n"
    with open(path, "wb") as f:
        f.write(head.encode())
        f.write(comment * ((size - len(head)) // len(comment) + 1))


def test_a_rules_file_past_the_limit_is_refused(tmp_path: Path) -> None:
    rules = tmp_path / "huge_rules.yaml"
    _padded_yaml(rules, "- list: registries\n  items: [docker.io]\n", MAX_FILE_BYTES + 1)
    result = _measured([*SCAN, "-r", str(rules), str(SAMPLE)], tmp_path)
    assert result.rc == 2
    assert f"{rules}: larger than {MAX_FILE_BYTES} bytes" in result.err


def test_a_rules_file_just_under_the_limit_loads(tmp_path: Path) -> None:
    rules = tmp_path / "big_rules.yaml"
    _padded_yaml(rules, "- list: registries\n  items: [docker.io]\n", MAX_FILE_BYTES - 2048)
    assert rules.stat().st_size <= MAX_FILE_BYTES
    result = _measured([sys.executable, "-m", "eventd", "rules", "check", str(rules)], tmp_path)
    assert result.rc == 0, result.err


@pytest.mark.parametrize(
    "command", [["scan", "-r", "/dev/zero", str(SAMPLE)], ["rules", "check", "/dev/zero"]]
)
def test_dev_zero_as_rules_is_refused_without_reading_it_whole(tmp_path: Path, command: list[str]) -> None:
    result = _measured([sys.executable, "-m", "eventd", *command], tmp_path)
    assert result.rc == 2
    assert f"/dev/zero: larger than {MAX_FILE_BYTES} bytes" in result.err
    _bounded(result)


@pytest.mark.parametrize("kind", ["padded", "/dev/zero"])
def test_a_config_file_past_the_limit_is_refused(tmp_path: Path, kind: str) -> None:
    config = Path("/dev/zero")
    if kind == "padded":
        config = tmp_path / "eventd.yaml"
        _padded_yaml(config, "log_level: info\n", MAX_FILE_BYTES + 1)
    result = _measured([sys.executable, "-m", "eventd", "run", "--config", str(config), "--check"], tmp_path)
    assert result.rc == 2
    assert f"{config}: larger than {MAX_FILE_BYTES} bytes" in result.err
    _bounded(result)


def test_a_secret_file_that_never_ends_is_refused(tmp_path: Path) -> None:
    """``token_file: /dev/zero`` (or any huge file) is refused at start with
    one line naming the key, after reading at most the secret limit."""
    config = tmp_path / "eventd.yaml"
    config.write_text("sources:\n  k8s_audit_webhook:\n    token_file: /dev/zero\nsinks:\n  stdout: {}\n")
    result = _measured([sys.executable, "-m", "eventd", "run", "--config", str(config), "--check"], tmp_path)
    assert result.rc == 2
    assert "sources.k8s_audit_webhook.token_file: secret file /dev/zero is larger than" in result.err
    _bounded(result)
