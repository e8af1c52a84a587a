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
    python3 scripts/mutation.py                        # every module (about an hour on 2 cores)
    python3 scripts/mutation.py eventd/events/dedup.py # one module
    python3 scripts/mutation.py --survivors dedup      # print the surviving mutants' diffs again

It prints a Markdown table (killed/survived/other per module) and writes it,
with the diff of every surviving mutant, to ``<workdir>/report.md``.
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
    "eventd/sinks/spool.py": ["tests/test_spool.py", "tests/test_spool_properties.py"],
    "eventd/sinks/kafka.py": ["tests/test_sink_kafka.py", "tests/test_sink_kafka_prefix.py"],
    "eventd/sinks/policy.py": ["tests/test_sink_policy.py", "tests/test_sink_lane.py"],
    "eventd/sinks/lane.py": ["tests/test_sink_lane.py", "tests/test_sink_lane_edges.py"],
    "eventd/events/redact.py": [
        "tests/hostile/test_secret_redaction.py",
        "tests/test_redact.py",
        "tests/test_decode.py",
        "tests/test_wrappers.py",
    ],
    "eventd/events/dedup.py": ["tests/test_dedup.py", "tests/test_source_audit_webhook.py"],
    "eventd/sources/checkpoint.py": ["tests/test_checkpoint.py", "tests/faults/test_damaged_state.py"],
    "eventd/sources/audit_webhook.py": ["tests/test_source_audit_webhook.py"],
    "eventd/sources/http_input.py": [
        "tests/test_source_audit_webhook.py",
        "tests/test_source_falco_http.py",
        "tests/hostile/test_endpoints.py",
    ],
    "eventd/sources/kafka.py": ["tests/test_source_kafka.py"],
    "eventd/pipeline.py": [
        "tests/test_pipeline_hooks.py",
        "tests/test_pipeline_delivery.py",
        "tests/test_metrics_exposition.py",
    ],
    "eventd/engine/exceptions.py": [
        "tests/test_exceptions.py",
        "tests/test_loader_errors.py",
        "tests/test_loader.py",
    ],
    "eventd/engine/output.py": ["tests/test_output.py", "tests/test_loader_errors.py"],
    "eventd/image_metrics.py": ["tests/test_image_metrics.py", "tests/test_pipeline_hooks.py"],
}

#: mutmut's exit-code statuses we count as "killed" (the tests noticed).
KILLED = {"killed", "timeout", "caught by type check"}


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


def configure(tree: Path, module: str, tests: list[str]) -> None:
    """Point mutmut at one module and its tests (appended to the copy's pyproject)."""
    present = [t for t in tests if (tree / t).exists()]
    config = {
        "source_paths": ["eventd"],
        "only_mutate": [module],
        "also_copy": ["rules", "examples", "deploy", "bench", "scripts"],
        "pytest_add_cli_args": ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"],
        "pytest_add_cli_args_test_selection": present,
        # The broker fixtures and asyncio loops are not fork-safe in a process
        # that already ran the suite.
        "process_isolation": "forkserver",
        "timeout_multiplier": 10.0,
        "timeout_constant": 5.0,
        "use_git_change_detection": False,
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


def run_module(module: str, workdir: Path, max_children: int) -> dict[str, str]:
    tree = workdir / slug(module)
    copy_tree(tree)
    configure(tree, module, MODULES[module])
    env = {**os.environ, "PYTHONPATH": ""}
    env.pop("CI", None)
    print(f"mutation: {module} in {tree}", file=sys.stderr, flush=True)
    with open(tree / "mutmut.log", "w") as log:
        subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)],
            cwd=tree,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    return statuses(tree)


def summarise(results: dict[str, dict[str, str]], workdir: Path) -> str:
    rows = ["| module | mutants | killed | survived | other | killed % |", "|---|---:|---:|---:|---:|---:|"]
    details = []
    for module, found in results.items():
        killed = sum(1 for s in found.values() if s in KILLED)
        survived = sorted(name for name, s in found.items() if s == "survived")
        other = len(found) - killed - len(survived)
        score = 100.0 * killed / len(found) if found else 0.0
        rows.append(f"| {module} | {len(found)} | {killed} | {len(survived)} | {other} | {score:.1f} |")
        tree = workdir / slug(module)
        for name in survived:
            details.append(f"### {name}\n\n```diff\n{diff_of(tree, name).strip()}\n```\n")
        for name, s in sorted(found.items()):
            if s not in KILLED and s != "survived":
                details.append(f"### {name} ({s})\n")
    return "\n".join(rows) + "\n\n## Survivors\n\n" + "\n".join(details)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all of MODULES)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/eventd-mutation"))
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--survivors", action="store_true", help="only report on the last runs, do not run")
    args = parser.parse_args()
    modules = [resolve(m) for m in args.modules] or list(MODULES)
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {}
    for module in modules:
        tree = args.workdir / slug(module)
        if args.survivors:
            results[module] = statuses(tree) if tree.exists() else {}
        else:
            results[module] = run_module(module, args.workdir, args.max_children)
    report = summarise(results, args.workdir)
    (args.workdir / "report.md").write_text(report, encoding="utf-8")
    print(report.split("\n## Survivors")[0])
    print(f"survivors' diffs: {args.workdir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
