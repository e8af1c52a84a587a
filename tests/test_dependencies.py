"""Dependencies that fit: every runtime dependency is justified in the README,
and what only the tests use (jsonschema) is not installed with the daemon."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def _project() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_every_runtime_dependency_has_a_line_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Dependencies", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    justified = {
        name.lower() for row in rows for name in re.findall(r"`([A-Za-z0-9_.-]+)`", row.split("|")[1])
    }
    runtime = {_name(r) for r in _project()["dependencies"]}
    assert runtime == justified, (runtime - justified, justified - runtime)
    for row in rows:
        assert len(row.split("|")[2].strip()) > 20, row  # a reason, not a placeholder


def test_jsonschema_is_a_test_dependency_only() -> None:
    project = _project()
    assert "jsonschema" not in {_name(r) for r in project["dependencies"]}
    assert "jsonschema" in {_name(r) for r in project["optional-dependencies"]["test"]}
    importers = [
        path.relative_to(REPO).as_posix()
        for path in (REPO / "eventd").rglob("*.py")
        if re.search(r"^\s*(from|import) jsonschema", path.read_text(), re.M)
    ]
    assert importers == ["eventd/alert_schema.py"]


def test_the_daemon_and_every_command_import_without_jsonschema() -> None:
    """As on a runtime-only install: jsonschema cannot be imported at all."""
    code = (
        "import sys; sys.modules['jsonschema'] = None\n"
        "import eventd.cli, eventd.daemon, eventd.cli.run, eventd.cli.scan\n"
        "from eventd.cli import main\n"
        "try:\n"
        "    import eventd.alert_schema\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'eventd[test]'" in proc.stdout
