"""Each sub-command imports only what it needs (issue: start-up under 80 ms;
the timings themselves are in bench/bench_startup.py, never asserted here).

A fresh interpreter runs the command through ``eventd.cli.main`` and then
lists the modules that were loaded: ``eventd image`` must not load the rule
engine, and no one-shot command may load the daemon's network stack, rich
(only for tables and progress bars on a terminal) or structlog (the
daemon's logging)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import json, sys
from eventd.cli import main
code = main(sys.argv[1:])
heavy = ("rich", "structlog", "aiohttp", "aiokafka", "grpc", "eventd.daemon", "eventd.engine", "asyncio",
         "eventd.gatekeeper", "eventd.lint", "yaml", "shutil", "hashlib")
names = {m if not m.startswith("eventd.") else ".".join(m.split(".")[:2]) for m in sys.modules}
print(json.dumps({"code": code, "loaded": sorted(n.split(".")[0] if not n.startswith("eventd.") else n
      for n in names if n.startswith(heavy))}), file=sys.stderr)
"""


def loaded(*argv: str) -> tuple[int, set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stderr.splitlines()[-1])
    return report["code"], set(report["loaded"])


def test_image_loads_no_rule_engine() -> None:
    code, modules = loaded("image", "nginx")
    assert code == 0
    assert modules == set()


@pytest.mark.parametrize("argv", [("scan", "EMPTY"), ("rules", "check", "--format", "json")])
def test_scan_and_rules_check_load_no_daemon_rich_or_structlog(tmp_path: Path, argv: tuple[str, ...]) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    args = [str(empty) if a == "EMPTY" else a for a in argv]
    loaded(*args)  # fills the parsed-rules cache (EVENTD_CACHE_DIR, set by conftest)
    code, modules = loaded(*args)
    assert code == 0
    assert "eventd.engine" in modules  # they do need the rules
    assert not modules & {"rich", "structlog", "aiohttp", "aiokafka", "grpc", "eventd.daemon", "asyncio"}
    # Gatekeeper Constraint files are read only when given, and the linter
    # only lints rule files given (the built-in packs: none).
    assert not modules & {"eventd.gatekeeper", "eventd.lint"}
    # With the parsed-rules cache warm (the first run filled it), no YAML
    # parser; no shutil (argparse's help width) nor hashlib (the first alert's).
    assert not modules & {"yaml", "shutil", "hashlib"}


def test_version_and_help_load_no_sub_command() -> None:
    probe = "import sys; from eventd.cli import build_parser; build_parser(['--version']); " + (
        "print(sorted(m for m in sys.modules if m.startswith('eventd.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "['eventd.cli']"
