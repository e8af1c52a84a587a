#!/usr/bin/env python3
"""Mutation testing of the modules where a bug costs data or secrets (issue 17).

Line coverage says a line ran, not that a test would notice it being wrong.
This plants small bugs (mutmut 3: flipped comparisons, dropped calls, changed
constants...) one at a time and runs the tests that exercise the module; a
mutant the tests do not notice ("survived") is a test to write, or an
equivalent rewrite to list in ``tests/MUTATION.md`` with its reason.

Every module runs in its own COPY of the tree (``--workdir``, by default
``/tmp/eventd-mutation/<module>``), never in the working tree, because mutmut
rewrites the files it mutates, and against a small targeted set of test
files (``MODULES`` below), because the full suite takes minutes and every
mutant runs it again.  mutmut only runs, for each mutant, the tests that
called the mutated function in a first clean run.

    pip install -e '.[test,mutation]'
    python3 scripts/mutation.py                        # every module (hours on 2 busy cores)
    python3 scripts/mutation.py eventd/events/dedup.py # one module
    python3 scripts/mutation.py --mutants 'eventd.sources.kafka.xǁOffsetTrackerǁ*' eventd/sources/kafka.py
    python3 scripts/mutation.py --survivors /tmp/eventd-mutation  # report on the last runs again
    python3 scripts/mutation.py --replay /tmp/eventd-mutation/report.md  # earlier survivors vs today's tests

It prints a Markdown table (killed/survived per module; "log-only" survivors
change nothing but a logging call) and writes it, with the diff of every
surviving mutant, to ``<workdir>/report.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Module -> the test files that exercise it (fast: seconds, not minutes).
MODULES: dict[str, list[str]] = {
    "eventd/sinks/spool.py": [
        "tests/test_spool_edges.py",
        "tests/test_spool_mutants.py",
        "tests/test_spool.py",
        "tests/test_spool_properties.py",
        "tests/faults/test_damaged_state.py",
    ],
    "eventd/sinks/kafka.py": [
        "tests/test_sink_kafka_mutants.py",
        "tests/test_sink_kafka.py",
        "tests/test_sink_kafka_prefix.py",
        "tests/test_components.py",
    ],
    "eventd/sinks/policy.py": ["tests/test_sink_policy.py", "tests/test_sink_lane.py"],
    "eventd/sinks/lane.py": [
        "tests/test_sink_lane_bounds.py",
        "tests/test_sink_lane.py",
        "tests/test_sink_lane_edges.py",
    ],
    "eventd/events/redact.py": [
        "tests/hostile/test_secret_redaction.py",
        "tests/test_redact_inprocess.py",
        "tests/test_decode.py",
        "tests/test_wrappers.py",
    ],
    "eventd/events/dedup.py": [
        "tests/test_dedup.py",
        "tests/test_source_audit_webhook.py",
        "tests/test_source_audit_webhook_dedup.py",
    ],
    "eventd/sources/checkpoint.py": ["tests/test_checkpoint.py", "tests/faults/test_damaged_state.py"],
    "eventd/sources/audit_webhook.py": [
        "tests/test_source_audit_webhook.py",
        "tests/test_source_audit_webhook_dedup.py",
        "tests/test_source_audit_webhook_skip.py",
    ],
    "eventd/sources/http_input.py": [
        "tests/test_http_input_inprocess.py",
        "tests/test_http_input_mutants.py",
        "tests/test_source_audit_webhook.py",
        "tests/test_source_falco_http.py",
        "tests/hostile/test_endpoints.py",
    ],
    # The in-process files only: the broker tests (tests/test_source_kafka.py)
    # cost 25-30 s a mutant; mutants that only they would kill show as survivors.
    "eventd/sources/kafka.py": ["tests/test_source_kafka_offsets.py", "tests/test_source_kafka_logic.py"],
    "eventd/pipeline.py": [
        "tests/test_pipeline_edges.py",
        "tests/test_pipeline_hooks.py",
        "tests/test_pipeline_delivery.py",
        "tests/test_metrics_exposition.py",
        # The record prefilter (``RecordFilter``, ``_observed``).
        "tests/test_index_prefilter.py",
        "tests/test_source_audit_webhook_skip.py",
    ],
    "eventd/engine/rule_exceptions.py": [
        "tests/test_exceptions_errors.py",
        "tests/test_exceptions.py",
        "tests/test_loader_errors.py",
        "tests/test_loader.py",
        "tests/test_falco_loading.py",
    ],
    "eventd/engine/output.py": ["tests/test_output.py", "tests/test_loader_errors.py"],
    "eventd/image_metrics.py": [
        "tests/test_image_metrics.py",
        "tests/test_pipeline_hooks.py",
        "tests/test_image_pull_alert.py",
    ],
}

#: Extra pytest arguments per module.  Tests that start eventd in a subprocess
#: with another working directory cannot run under mutmut (the child inherits
#: MUTANT_UNDER_TEST but cannot find mutmut's config): their in-process
#: counterparts cover the same code.
EXTRA_ARGS: dict[str, list[str]] = {
    "eventd/events/redact.py": ["-k", "not scan_ and not daemon_"],
}

#: mutmut's exit-code statuses we count as "killed" (the tests noticed): a
#: mutant that crashes the test process (``segfault``: endless recursion in C
#: code) fails the run as surely as a failing assertion.
KILLED = {"killed", "timeout", "caught by type check", "segfault"}


def slug(module: str) -> str:
    return module.removeprefix("eventd/").removesuffix(".py").replace("/", "-")


def resolve(name: str) -> str:
    """``dedup``, ``events/dedup.py`` or ``eventd/events/dedup.py`` -> the MODULES key."""
    matches = [m for m in MODULES if m == name or m.endswith("/" + name) or slug(m).endswith(name)]
    if len(matches) != 1:
        raise SystemExit(f"mutation: {name!r} names {len(matches)} modules of {sorted(MODULES)}")
    return matches[0]


def copy_tree(dest: Path) -> None:
    """A fresh copy of the working tree, without git data, caches or old mutants."""
    if dest.exists():
        shutil.rmtree(dest)
    ignore = shutil.ignore_patterns(
        ".git", "mutants", "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache", "*.egg-info"
    )
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)


def configure(tree: Path, module: str, tests: list[str], debug: bool = False) -> None:
    """Point mutmut at one module and its tests (appended to the copy's pyproject);
    ``debug`` makes mutmut print each pytest command and its exit code."""
    present = [t for t in tests if (tree / t).exists()]
    config = {
        "source_paths": ["eventd"],
        "only_mutate": [module],
        "also_copy": ["rules", "examples", "deploy", "bench", "scripts"],
        "pytest_add_cli_args": ["-x", "-q", "-p", "no:cacheprovider", *EXTRA_ARGS.get(module, [])],
        "pytest_add_cli_args_test_selection": present,
        # The broker fixtures and asyncio loops are not fork-safe in a process
        # that already ran the suite.
        "process_isolation": "forkserver",
        "timeout_multiplier": 10.0,
        "timeout_constant": 5.0,
        "use_git_change_detection": False,
        "debug": debug,
    }
    lines = ["", "[tool.mutmut]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in config.items()]
    with open(tree / "pyproject.toml", "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def statuses(tree: Path) -> dict[str, str]:
    """mutant name -> status, from ``mutmut results --all true``."""
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s+(\S+): (.+)$", line)
        if m:
            found[m.group(1)] = m.group(2).strip()
    return found


def diff_of(tree: Path, name: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "mutmut", "show", name], cwd=tree, capture_output=True, text=True
    ).stdout


def run_module(
    module: str, workdir: Path, max_children: int, mutants: list[str] | None = None, debug: bool = False
) -> None:
    """Mutate ``module`` in a fresh copy; ``mutants``: only these mutant names
    (``fnmatch`` patterns such as ``eventd.sources.kafka.x_decode*``)."""
    tree = workdir / slug(module)
    copy_tree(tree)
    configure(tree, module, MODULES[module], debug)
    env = {**os.environ, "PYTHONPATH": ""}
    env.pop("CI", None)
    print(f"mutation: {module} in {tree}", file=sys.stderr, flush=True)
    with open(tree / "mutmut.log", "w") as log:
        subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *(mutants or [])],
            cwd=tree,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )


def log_only(diff: str) -> bool:
    """A mutant that only changes a logging call (its event name or fields),
    possibly on a continuation line of a call spanning several lines."""
    lines = [line for line in diff.splitlines() if not line.startswith(("+++", "---", "@@", "#"))]
    changed = [i for i, line in enumerate(lines) if line[:1] in "+-"]
    return bool(changed) and all(_inside_log_call(lines, i) for i in changed)


def _inside_log_call(lines: list[str], index: int) -> bool:
    """Whether diff line ``index`` is part of a ``log.<level>(`` call."""
    if _LOG_CALL.search(lines[index]):
        return True
    depth = 0
    for i in range(index - 1, -1, -1):
        text = lines[i][1:]
        depth += text.count("(") - text.count(")")
        if _LOG_CALL.search(text):
            return depth > 0
        if lines[i][:1] == " " and not text.strip():
            return False
    return False


_LOG_CALL = re.compile(r"\blog\.(debug|info|warning|error|exception)\(")


def summarise(trees: dict[str, Path]) -> str:
    """Markdown: a table per module, then every survivor's diff (``trees``:
    module -> the copy of the tree its last run used)."""
    rows = [
        "| module | mutants | killed | survived | of which log-only | no tests | not run | killed % "
        "| w/o log-only |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    details = []
    for module, tree in trees.items():
        found = statuses(tree) if tree.exists() else {}
        killed = sum(1 for s in found.values() if s in KILLED)
        survived = sorted(name for name, s in found.items() if s == "survived")
        other = sorted(name for name, s in found.items() if s not in KILLED and s != "survived")
        diffs = {name: diff_of(tree, name).strip() for name in survived}
        logs = sum(1 for d in diffs.values() if log_only(d))
        judged = len(found) - len(other)
        score = f"{100.0 * killed / judged:.1f}" if judged else "-"
        rest = judged - logs
        score_wo = f"{100.0 * killed / rest:.1f}" if rest else "-"
        untested = sum(1 for name in other if found[name] == "no tests")
        counts = f"{len(found)} | {killed} | {len(survived)} | {logs} | {untested} | {len(other) - untested}"
        rows.append(f"| {module} | {counts} | {score} | {score_wo} |")
        for name in survived:
            tag = " (log only)" if log_only(diffs[name]) else ""
            details.append(f"### {name}{tag}\n\n```diff\n{diffs[name]}\n```\n")
        for name in other:
            details.append(f"### {name} ({found[name]})\n")
    return "\n".join(rows) + "\n\n## Survivors\n\n" + "\n".join(details)


def replay(report: Path, workdir: Path, tests: dict[str, list[str]] | None = None) -> str:
    """Plant every survivor of an earlier ``report.md`` again, in a fresh copy
    of today's tree, and run the module's tests: which of them the tests
    written since kill.  Quicker than a new mutmut run (no stats run, no
    mutants of functions whose mutants all died already), and it follows
    the code: a survivor whose lines changed since is reported as gone.

    Only survivors that change whole lines are replayed (mutmut's diffs);
    log-only ones are skipped (they are counted as such in any case).
    Returns a Markdown list, one line per survivor.
    """
    text = report.read_text(encoding="utf-8")
    tree = workdir / "replay"
    copy_tree(tree)
    out = []
    for block in text.split("\n### ")[1:]:
        name = block.split("\n", 1)[0].strip()
        if "(" in name or "```diff" not in block:
            continue  # log-only, or not checked / no tests
        diff = block.split("```diff", 1)[1].split("```", 1)[0]
        hunk = [line for line in diff.splitlines() if line[:1] in " +-" and line[:3] not in ("+++", "---")]
        # The hunk with its context lines, so that a line that occurs twice
        # in the module is found at the mutant's own place.
        old = [line[1:] for line in hunk if line[:1] in " -"]
        new = [line[1:] for line in hunk if line[:1] in " +"]
        module = "eventd/" + "/".join(name.split(".")[1:-1]) + ".py"
        selection = (tests or MODULES).get(module)
        if selection is None or old == new:
            continue
        path = tree / module
        source = path.read_text(encoding="utf-8")
        # mutmut shows a method without its class's indentation.
        for indent in ("", "    "):
            before, after = (
                "\n".join(indent + line if line else line for line in part) for part in (old, new)
            )
            if source.count(before) == 1:
                break
        else:
            out.append(f"- `{name}`: not replayed (its lines changed since the run, or occur twice)")
            continue
        path.write_text(source.replace(before, after), encoding="utf-8")
        try:
            selected = [t for t in selection if (tree / t).exists()]
            try:
                result = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "pytest",
                        "-x",
                        "-q",
                        "-p",
                        "no:randomly",
                        "-p",
                        "no:cacheprovider",
                        *EXTRA_ARGS.get(module, []),
                        *selected,
                    ],
                    cwd=tree,
                    env={**os.environ, "PYTHONPATH": str(tree)},
                    capture_output=True,
                    timeout=300,
                    check=False,
                )
                verdict = "survived" if result.returncode == 0 else "killed"
            except subprocess.TimeoutExpired:
                verdict = "killed (hung)"
        finally:
            path.write_text(source, encoding="utf-8")
        out.append(f"- `{name}`: {verdict}")
        print(out[-1], file=sys.stderr, flush=True)
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all of MODULES)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/eventd-mutation"))
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument(
        "--mutants",
        action="append",
        metavar="PATTERN",
        help="run only the mutants matching PATTERN (fnmatch, repeatable); the rest show as not run",
    )
    parser.add_argument("--debug", action="store_true", help="mutmut prints every pytest command it runs")
    parser.add_argument(
        "--replay",
        type=Path,
        metavar="REPORT",
        help="plant the survivors listed in an earlier REPORT (report.md) in today's tree and run the "
        "tests of the modules given (default: all) against each; writes WORKDIR/replay.md",
    )
    parser.add_argument(
        "--survivors",
        action="append",
        type=Path,
        metavar="WORKDIR",
        help="only report on earlier runs in WORKDIR (repeatable: the last one holding a module wins)",
    )
    args = parser.parse_args()
    modules = [resolve(m) for m in args.modules] or list(MODULES)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.replay:
        only = {m: MODULES[m] for m in modules}
        listing = replay(args.replay, args.workdir, only)
        (args.workdir / "replay.md").write_text(listing, encoding="utf-8")
        print(listing)
        return 0
    trees: dict[str, Path] = {}
    for module in modules:
        if args.survivors:
            for workdir in args.survivors:
                if (workdir / slug(module) / "mutants").exists():
                    trees[module] = workdir / slug(module)
        else:
            run_module(module, args.workdir, args.max_children, args.mutants, args.debug)
            trees[module] = args.workdir / slug(module)
    report = summarise(trees)
    (args.workdir / "report.md").write_text(report, encoding="utf-8")
    print(report.split("\n## Survivors")[0])
    print(f"survivors' diffs: {args.workdir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
