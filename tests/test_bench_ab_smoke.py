"""``bench/bench_ab.py`` end to end on a small corpus: a directory tree and a
git ref side by side, the ref's temporary worktree removed afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AB = [sys.executable, str(ROOT / "bench" / "bench_ab.py")]


def _worktrees() -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True, check=False
    )
    return out.stdout.splitlines()


def test_ab_compares_a_directory_with_a_git_ref(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    before = _worktrees()
    out = tmp_path / "ab.json"
    proc = subprocess.run(
        [*AB, str(ROOT), "HEAD", "--events", "3000", "--rounds", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [row["tree"] for row in rows] == [str(ROOT), "HEAD"]
    assert rows[0]["vs_first"] == 1.0
    assert all(row["median_ms"] > 0 and len(row["runs_ms"]) == 1 for row in rows)
    assert rows[0]["alerts"] == rows[1]["alerts"] and rows[0]["alerts"][0] > 0
    assert _worktrees() == before  # the ref's worktree is gone


def test_ab_refuses_an_unknown_tree(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_ab.py"),
            "no-such-ref-or-dir",
            "--events",
            "100",
            "--rounds",
            "1",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "no-such-ref-or-dir: neither a directory holding eventd nor a git ref" in proc.stderr
