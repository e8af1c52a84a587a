"""Start-up benchmark: how long ``eventd scan``, ``eventd rules check`` and
``eventd image`` take before they do any work, and which imports cost what.

Each command runs on an empty input (``scan``: an empty file with the
built-in packs, so rule loading is included; ``rules check --format json``;
``image nginx``) as a fresh process, best of ``--repeat`` wall times, next to
a bare ``python -c pass`` (the interpreter's own start-up on this machine).
Then ``python -X importtime`` of the same commands lists the modules with the
highest cumulative import time, the view that shows what to make lazy.

Bytecode matters: a pip-installed eventd has its ``.pyc`` files; a checkout
run with ``PYTHONDONTWRITEBYTECODE`` compiles every module on every start.
So the commands run with a bytecode cache in a temporary directory
(``PYTHONPYCACHEPREFIX``), warmed by one untimed run, and so does the
parsed-rules cache (``EVENTD_CACHE_DIR``, see ``eventd.engine.yamlcache``).
No test asserts these timings.

    python bench/bench_startup.py [--repeat N] [--top K] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):  # run as a script: make ``bench.*`` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_scan import eventd_command

#: Target: each command's start-up, milliseconds (wall, best of runs).
TARGET_MS = 80.0


def _targeted(name: str) -> bool:
    """Whether the target applies: the commands the issue names, warm."""
    return name.startswith("eventd") and "--version" not in name and "cache off" not in name


def commands(empty: Path) -> dict[str, list[str]]:
    eventd = eventd_command()
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "eventd --version": [*eventd, "--version"],
        "eventd scan (empty file, built-in packs)": [*eventd, "scan", str(empty)],
        # The first run of new rules: the parsed-rules cache cannot help (+1 ms for env).
        "eventd scan, rules cache off (via env)": [
            "env",
            "EVENTD_CACHE_DIR=off",
            *eventd,
            "scan",
            str(empty),
        ],
        "eventd rules check --format json": [*eventd, "rules", "check", "--format", "json"],
        "eventd image nginx": [*eventd, "image", "nginx"],
    }


def best_wall_ms(argv: list[str], env: dict[str, str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        best = min(best, time.perf_counter() - start)
    return best * 1000


def import_times(argv: list[str], env: dict[str, str], top: int) -> list[tuple[str, float, float]]:
    """(module, self ms, cumulative ms) of the ``top`` slowest imports, by cumulative time."""
    python_argv = argv[1:] if argv[0] == sys.executable else argv  # a script: run by this Python
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *python_argv],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = line.removeprefix("import time:").split("|")
        rows.append((name.strip(), int(self_us) / 1000, int(cumulative_us) / 1000))
    return sorted(rows, key=lambda r: r[2], reverse=True)[:top]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=10, help="best of N runs per command")
    ap.add_argument("--top", type=int, default=12, help="slowest imports listed per command")
    ap.add_argument("--json", metavar="OUT", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="eventd-bench-startup-") as tmp:
        empty = Path(tmp) / "empty.jsonl"
        empty.write_bytes(b"")
        env = {
            **os.environ,
            "PYTHONPYCACHEPREFIX": str(Path(tmp) / "pycache"),
            "EVENTD_CACHE_DIR": str(Path(tmp) / "rules-cache"),  # warmed, like the bytecode
        }
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        results: dict[str, Any] = {}
        for name, cmd in commands(empty).items():
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            results[name] = {"wall_ms": round(best_wall_ms(cmd, env, args.repeat), 1)}
            if _targeted(name):
                results[name]["imports"] = import_times(cmd, env, args.top)
    bare = results["python -c pass"]["wall_ms"]
    print(f"start-up, best of {args.repeat} (2-core machine shared with other work; wall ms):")
    for name, r in results.items():
        over = "" if name == "python -c pass" else f"  (+{r['wall_ms'] - bare:.0f} over bare python)"
        verdict = ""
        if _targeted(name):
            verdict = "  PASS" if r["wall_ms"] < TARGET_MS else f"  FAIL (target < {TARGET_MS:.0f} ms)"
        print(f"  {name:45} {r['wall_ms']:7.1f} ms{over}{verdict}")
    for name, r in results.items():
        if "imports" not in r:
            continue
        print(f"\nslowest imports of `{name}` (python -X importtime; cumulative ms, self ms):")
        for module, self_ms, cumulative_ms in r["imports"]:
            print(f"  {cumulative_ms:7.1f} {self_ms:6.1f}  {module}")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
