"""Scanning a file a block of lines at a time changes nothing but the work done.

``Scanner.scan_file`` reads blocks, lets ``Prefilter.select_block`` judge
each one whole, and falls back to line-by-line scanning for the blocks it
refuses.  The differential tests compare its alerts, rejected lines and
counters with line-by-line scanning (prefilter on) and with decoding every
line (prefilter off).
"""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventd.engine.loader import load_rules
from eventd.rulepacks import builtin_rule_files
from eventd.scanner import BLOCK_MISSES_BEFORE_LINES, NotAuditData, Scanner, _blocks, _lines_at
from tests.builders import audit_event, deployment, falco_alert, lease_renewal, pod
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


def _run(data: bytes, how: str, ruleset=BUILTIN, block_size: int = 512) -> dict[str, Any]:
    """Scan ``data`` one way; return everything a user could see."""
    alerts: list[bytes] = []
    rejects: list[tuple[int, str]] = []
    scanner = Scanner(
        ruleset,
        on_alert=lambda a: alerts.append(a.to_json()),
        on_reject=lambda _name, lineno, message: rejects.append((lineno, message)),
        prefilter=how != "no-prefilter",
        rule_matching="all",
    )
    verdict = "audit data"
    try:
        if how == "blocks":
            scanner.scan_file(io.BytesIO(data), "test", block_size=block_size)
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


def _same_as_lines(data: bytes, block_size: int = 512) -> dict[str, Any]:
    blocks, lines, full = (
        _run(data, how, block_size=block_size) for how in ("blocks", "lines", "no-prefilter")
    )
    if blocks["verdict"] != "audit data":  # gave up: how far each got in counting does not matter
        for result in (blocks, lines):
            del result["counts"], result["skipped"]
    assert blocks == lines
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
