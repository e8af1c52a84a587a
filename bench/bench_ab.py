"""A/B: is a change faster?  Scans one corpus with two or more trees of
eventd, alternating, each run a fresh process pinned to one CPU, and
reports each tree's median and minimum.

Why: on a shared 2-core machine one run of a scan varies by 3-5%, more than
most single changes gain.  Alternating the trees and taking medians is what
told issue 15's 3% steps from noise (and showed two "optimisations" to be
losses).

    python bench/bench_ab.py main .                 # a git ref against the working tree
    python bench/bench_ab.py c39605f HEAD --pod-ratio 0.01 --rounds 6

A tree is a directory holding the ``eventd`` package (``.`` is this
checkout) or a git ref, checked out into a temporary worktree that is
removed afterwards.  Each run loads the built-in packs of its own tree and
scans the corpus in-process three times (``eventd scan``'s loop, alerts
serialised as the command does); its best time is the run's figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench.*`` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus import write_corpus

ROOT = Path(__file__).resolve().parent.parent

#: One run, in a fresh interpreter: the tree's own eventd, pinned to one CPU.
CHILD = """
import os, sys, time
tree, corpus = sys.argv[1], sys.argv[2]
sys.path.insert(0, tree)
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
from eventd.engine.loader import load_rules
from eventd.gctune import tune_after_startup
from eventd.rulepacks import builtin_rule_files
from eventd.scanner import Scanner
import eventd
assert os.path.realpath(eventd.__file__).startswith(os.path.realpath(tree)), eventd.__file__
ruleset = load_rules([str(f) for f in builtin_rule_files()])
tune_after_startup(collect=False)
best, alerts = float("inf"), 0
for _ in range(3):
    scanner = Scanner(ruleset, on_alert=lambda alert: alert.to_json())
    start = time.perf_counter()
    scanner.scan_path(corpus)
    best = min(best, time.perf_counter() - start)
    alerts = scanner.stats.alerts
print(best, alerts)
"""


def run_once(tree: Path, corpus: Path) -> tuple[float, int]:
    """Seconds of the best of three scans by ``tree``, and its alert count."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), str(corpus)],
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    if out.returncode != 0:
        raise SystemExit(f"{tree}: the scan failed:\n{out.stderr[-2000:]}")
    seconds, alerts = out.stdout.split()
    return float(seconds), int(alerts)


@contextmanager
def checked_out(spec: str, scratch: Path) -> Iterator[Path]:
    """The tree ``spec`` names: a directory as it is, else a git ref in a
    temporary worktree (removed on the way out)."""
    path = Path(spec)
    if (path / "eventd" / "__init__.py").is_file():
        yield path.resolve()
        return
    target = scratch / f"tree-{len(list(scratch.iterdir()))}"
    git = ["git", "-C", str(ROOT), "worktree"]
    added = subprocess.run([*git, "add", "--detach", "-q", str(target), spec], capture_output=True, text=True)
    if added.returncode != 0:
        raise SystemExit(f"{spec}: neither a directory holding eventd nor a git ref ({added.stderr.strip()})")
    try:
        yield target
    finally:
        subprocess.run([*git, "remove", "--force", str(target)], check=False)


def compare(trees: list[str], corpus: Path, rounds: int, scratch: Path) -> list[dict[str, object]]:
    """Alternate the trees ``rounds`` times; a row per tree."""
    with _all_checked_out(trees, scratch) as paths:
        times: dict[str, list[float]] = {spec: [] for spec in trees}
        alerts: dict[str, set[int]] = {spec: set() for spec in trees}
        for _ in range(rounds):
            for spec, path in zip(trees, paths, strict=True):
                seconds, count = run_once(path, corpus)
                times[spec].append(seconds)
                alerts[spec].add(count)
    first = statistics.median(times[trees[0]])
    return [
        {
            "tree": spec,
            "median_ms": round(statistics.median(times[spec]) * 1e3, 1),
            "min_ms": round(min(times[spec]) * 1e3, 1),
            "vs_first": round(statistics.median(times[spec]) / first, 3),
            "runs_ms": [round(t * 1e3, 1) for t in times[spec]],
            "alerts": sorted(alerts[spec]),
        }
        for spec in trees
    ]


@contextmanager
def _all_checked_out(trees: list[str], scratch: Path) -> Iterator[list[Path]]:
    if not trees:
        yield []
        return
    with checked_out(trees[0], scratch) as head, _all_checked_out(trees[1:], scratch) as rest:
        yield [head, *rest]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", help="directories holding eventd, or git refs")
    parser.add_argument("--rounds", type=int, default=4, help="runs per tree, alternating")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--pod-ratio", type=float, default=0.10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="OUT", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.events < 1:
        parser.error("--rounds and --events must be positive")
    with tempfile.TemporaryDirectory(prefix="eventd-ab-") as tmp:
        scratch = Path(tmp) / "trees"
        scratch.mkdir()
        corpus = Path(tmp) / "audit.jsonl"
        write_corpus(corpus, args.events, args.seed, args.pod_ratio)
        rows = compare(args.trees, corpus, args.rounds, scratch)
    print(f"A/B scan of {args.events:,} events, pod ratio {args.pod_ratio}, {args.rounds} alternating rounds")
    for row in rows:
        print(
            f"  {row['tree']:<24} median {row['median_ms']:>9.1f} ms  min {row['min_ms']:>9.1f} ms"
            f"  {row['vs_first']:.3f}x of the first  alerts {row['alerts']}"
        )
    if len({tuple(row["alerts"]) for row in rows}) > 1:  # type: ignore[arg-type]  # lists of ints
        print("  note: the trees raised different numbers of alerts")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
