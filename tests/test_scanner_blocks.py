"""Scanning a file a block of lines at a time changes nothing but the work done.

``Scanner.scan_file`` reads blocks, lets ``Prefilter.select_block`` judge
each one whole, and falls back to line-by-line scanning for the blocks it
refuses.  The differential tests compare its alerts, rejected lines and
counters with the same judged in a forked child (``eventd.prefilter_process``),
with line-by-line scanning (prefilter on), with a stream read a
bounded line at a time (a pipe) and with decoding every line (prefilter
off); with a small ``max_line_bytes``, every way skips and reports the same
too-long lines.
"""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventd.engine.fields.pullsecrets import STORE as PULL_SECRETS
from eventd.engine.loader import load_rules
from eventd.prefilter_process import PrefilterProcess
from eventd.rulepacks import builtin_rule_files
from eventd.scanner import (
    BLOCK_MISSES_BEFORE_LINES,
    DEFAULT_MAX_LINE_BYTES,
    NotAuditData,
    Scanner,
    _blocks,
    _bounded_lines,
    _lines_at,
)
from tests.support.builders import audit_event, deployment, falco_alert, lease_renewal, pod
from tests.test_header import ODD_LINES, builder_lines

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BUILTIN = load_rules(builtin_rule_files())

# ------------------------------------------------------------------ helpers


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.sampled_from([b"a", b"bc", b"\n", b"{}", b"\r\n", b"x" * 50]), max_size=60).map(
        b"".join
    ),
    size=st.integers(1, 64),
)
def test_blocks_are_whole_lines_and_lose_nothing(data: bytes, size: int) -> None:
    blocks = list(_blocks(io.BytesIO(data), size))
    assert all(block.endswith(b"\n") for block in blocks[:-1])
    assert all(b"\n" not in block[:-1] for block in blocks[-1:] if not block.endswith(b"\n"))
    assert b"".join(blocks) == data


def test_a_line_longer_than_a_block_stays_whole() -> None:
    long = b"x" * 1000
    assert list(_blocks(io.BytesIO(b"a\n" + long + b"\nb"), 64)) == [b"a\n", long + b"\n", b"b"]


def _expected_lines(data: bytes, max_line: int) -> list[bytes | None]:
    """The lines of ``data``, newline kept, ``None`` for those longer than
    ``max_line`` (newline excluded): what every reader must give."""
    *whole, last = data.split(b"\n")
    lines = [line + b"\n" for line in whole] + ([last] if last else [])
    return [None if len(line.rstrip(b"\n")) > max_line else line for line in lines]


_long_line_data = st.lists(
    st.sampled_from([b"a", b"bc", b"\n", b"{}", b"\r\n", b"x" * 50, b"\0" * 7]), max_size=60
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(data=_long_line_data, size=st.integers(1, 64), max_line=st.integers(1, 60))
def test_blocks_skip_exactly_the_long_lines_and_stay_small(data: bytes, size: int, max_line: int) -> None:
    """``_blocks`` gives the short lines in blocks and ``None`` per long line,
    and no block is longer than a held line plus one read."""
    items = list(_blocks(io.BytesIO(data), size, max_line))
    lines = [line for item in items for line in ([None] if item is None else io.BytesIO(item).readlines())]
    assert lines == _expected_lines(data, max_line)
    assert all(len(item) <= max_line + size for item in items if item is not None)


@settings(max_examples=500, deadline=None)
@given(data=_long_line_data, max_line=st.integers(1, 60))
def test_bounded_lines_skip_exactly_the_long_lines(data: bytes, max_line: int) -> None:
    assert list(_bounded_lines(io.BytesIO(data), max_line)) == _expected_lines(data, max_line)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")), min_size=1, max_size=40),
    data=st.data(),
)
def test_lines_at_finds_the_lines_asked_for(lines: list[bytes], data: st.DataObject) -> None:
    block = b"".join(line + b"\n" for line in lines)
    indices = sorted(data.draw(st.sets(st.integers(0, len(lines) - 1))))
    assert _lines_at(block, indices) == [lines[i] + b"\n" for i in indices]


# ------------------------------------------------------------- differential


def _run(
    data: bytes, how: str, ruleset=BUILTIN, block_size: int = 512, max_line: int = DEFAULT_MAX_LINE_BYTES
) -> dict[str, Any]:
    """Scan ``data`` one way; return everything a user could see.

    Each way starts with nothing learned (``ka.target.pull_secret``): what a
    scan learns from earlier lines must come from this scan's own lines."""
    PULL_SECRETS.clear()
    alerts: list[bytes] = []
    rejects: list[tuple[int, str]] = []
    scanner = Scanner(
        ruleset,
        on_alert=lambda a: alerts.append(a.to_json()),
        on_reject=lambda _name, lineno, message: rejects.append((lineno, message)),
        prefilter=how != "no-prefilter",
        rule_matching="all",
        max_line_bytes=max_line,
    )
    verdict = "audit data"
    try:
        if how == "blocks":
            scanner.scan_file(io.BytesIO(data), "test", block_size=block_size)
        elif how == "process":  # read and judged in a forked child (eventd.prefilter_process)
            stream = io.BytesIO(data)
            with PrefilterProcess(stream, stream, scanner.prefilter, block_size, max_line) as judged:
                scanner.scan_judged(judged, "test")
        elif how == "stream":
            scanner.scan_stream(io.BytesIO(data), "test")
        else:
            scanner.scan_lines(io.BytesIO(data), "test")
    except NotAuditData as err:
        verdict = str(err)
    stats = scanner.stats
    return {
        "verdict": verdict,
        "alerts": alerts,
        "rejects": rejects,
        "counts": (stats.lines, stats.events, stats.rejected, stats.alerts),
        "skipped": stats.skipped,
    }


def _without_counts(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("counts", "skipped")}


def _same_as_lines(
    data: bytes, block_size: int = 512, max_line: int = DEFAULT_MAX_LINE_BYTES
) -> dict[str, Any]:
    blocks, process, lines, stream, full = (
        _run(data, how, block_size=block_size, max_line=max_line)
        for how in ("blocks", "process", "lines", "stream", "no-prefilter")
    )
    if blocks["verdict"] != "audit data":  # gave up: how far each got in counting does not matter
        blocks, process, lines, stream = map(_without_counts, (blocks, process, lines, stream))
    assert process == blocks
    assert blocks == lines
    assert stream == lines
    assert blocks["alerts"] == full["alerts"]
    return blocks


@SETTINGS
@given(
    lines=st.lists(builder_lines(), min_size=1, max_size=40),
    odd=st.lists(st.tuples(st.sampled_from(sorted(ODD_LINES)), st.integers(0, 40)), max_size=3),
    block_size=st.sampled_from([1, 300, 2000, 1 << 16]),
    last_newline=st.booleans(),
)
def test_block_scan_is_the_line_scan(lines: list[bytes], odd, block_size: int, last_newline: bool) -> None:
    for kind, at in odd:
        lines.insert(min(at, len(lines)), ODD_LINES[kind])
    data = b"\n".join(lines) + (b"\n" if last_newline else b"")
    _same_as_lines(data, block_size)


@SETTINGS
@given(
    lines=st.lists(builder_lines(), min_size=1, max_size=30),
    long=st.lists(
        st.tuples(st.sampled_from([b"x", b"\0", b" ", b"{"]), st.integers(1, 5000), st.integers(0, 30)),
        max_size=3,
    ),
    block_size=st.sampled_from([1, 300, 2000, 1 << 16]),
    last_newline=st.booleans(),
    data=st.data(),
)
def test_every_scan_skips_and_reports_the_same_long_lines(
    lines: list[bytes], long, block_size: int, last_newline: bool, data: st.DataObject
) -> None:
    """Audit lines are 400 to 1,800 bytes: a limit drawn in that range (or
    at a line's exact length) cuts some of them, alerting ones included, and
    runs of filler bytes add lines far past it."""
    for fill, count, at in long:
        lines.insert(min(at, len(lines)), fill * count)
    near = sorted({len(line) + d for line in lines for d in (-1, 0, 1)} - {0})
    max_line = data.draw(st.one_of(st.integers(1, 2000), st.sampled_from(near)), label="max_line")
    result = _same_as_lines(b"\n".join(lines) + (b"\n" if last_newline else b""), block_size, max_line)
    too_long = [lineno for lineno, message in result["rejects"] if "longer than" in message]
    expected = [i + 1 for i, line in enumerate(lines) if len(line) > max_line]
    if result["verdict"] == "audit data":
        assert too_long == expected
    else:  # the scan gave up on the input part way
        assert too_long == expected[: len(too_long)]


def _untrusted(name: str) -> dict[str, Any]:
    return audit_event(request=pod("evil.example.com/miner:1", name=name), name=name)


def _judged_blocks(data: bytes, block_size: int) -> tuple[Scanner, list[Any]]:
    """Scan ``data`` with the built-in packs; return the scanner and every
    answer ``select_block`` gave, in order."""
    scanner = Scanner(BUILTIN)
    assert scanner.prefilter is not None
    calls: list[Any] = []
    judge = scanner.prefilter.select_block
    scanner.prefilter.select_block = lambda block: calls.append(judge(block)) or calls[-1]
    scanner.scan_file(io.BytesIO(data), "test", block_size=block_size)
    return scanner, calls


def test_blocks_are_judged_whole_on_a_plain_audit_log() -> None:
    docs = [lease_renewal() for _ in range(200)]
    docs[50], docs[120] = _untrusted("a"), audit_event(resource="deployments", request=deployment("nginx"))
    data = b"".join(orjson.dumps(d) + b"\n" for d in docs)
    scanner, calls = _judged_blocks(data, 4096)
    assert len(calls) > 10 and all(routed is not None for routed in calls)
    assert scanner.stats.alerts == 2 and scanner.stats.parsed == 2 and scanner.stats.skipped == 198
    assert _same_as_lines(data, 4096)["counts"] == (200, 2, 0, 2)


def test_after_refused_blocks_the_rest_goes_line_by_line() -> None:
    """Falco alerts between audit events: blocks keep being refused, so the
    scanner stops trying (the answer is the same either way)."""
    docs: list[Any] = []
    for i in range(60):
        docs += [falco_alert(**{"container.image.repository": "evil.example.com/x"}), lease_renewal()]
        if i % 10 == 0:
            docs.append(_untrusted(f"p{i}"))
    data = b"".join(orjson.dumps(d) + b"\n" for d in docs)
    _scanner, calls = _judged_blocks(data, 1024)
    assert calls[-BLOCK_MISSES_BEFORE_LINES:] == [None] * BLOCK_MISSES_BEFORE_LINES
    assert len(calls) < len(list(_blocks(io.BytesIO(data), 1024))) / 2
    result = _same_as_lines(data, 1024)
    assert len(result["alerts"]) == 60 + 6


@pytest.mark.parametrize("kind", sorted(ODD_LINES))
def test_an_odd_line_costs_only_its_block(kind: str) -> None:
    lines = [orjson.dumps(lease_renewal()) for _ in range(100)]
    lines[10] = orjson.dumps(_untrusted("before"))
    lines[50] = ODD_LINES[kind]
    lines[90] = orjson.dumps(_untrusted("after"))
    result = _same_as_lines(b"\n".join(lines) + b"\n", block_size=2048)
    assert len(result["alerts"]) == 2


_TEACHERS = {
    "serviceaccount create": audit_event(
        resource="serviceaccounts",
        namespace="shop",
        name="builder",
        request={"kind": "ServiceAccount", "imagePullSecrets": [{"name": "robot-creds"}]},
    ),
    "registry secret patch": audit_event(
        verb="patch",
        resource="secrets",
        namespace="shop",
        name="robot-creds",
        code=200,
        request={"kind": "Secret", "type": "kubernetes.io/dockerconfigjson"},
    ),
    "pod create naming it": audit_event(namespace="shop", request=pod("myregistry.io/shop/web:1.4.2")),
}
_TEACHERS["pod create naming it"]["requestObject"]["spec"]["imagePullSecrets"] = [{"name": "robot-creds"}]


@pytest.mark.parametrize("teacher", sorted(_TEACHERS))
def test_the_prefilter_keeps_what_teaches_a_pull_secret(teacher: str) -> None:
    """A Secret read alerts on a name only an earlier write taught
    (``ka.target.pull_secret``): the scan must read that write, though no
    rule matches it, or the prefilter would change the alerts."""
    read = audit_event(verb="get", resource="secrets", namespace="shop", name="robot-creds", code=200)
    docs = [lease_renewal() for _ in range(60)]
    docs[10], docs[50] = _TEACHERS[teacher], read
    result = _same_as_lines(b"".join(orjson.dumps(d) + b"\n" for d in docs), block_size=2048)
    assert any(b"Image Pull Secret Read By Non-System User" in alert for alert in result["alerts"])
