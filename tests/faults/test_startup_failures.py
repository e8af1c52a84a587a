"""Start-up fails cleanly, and ``eventd run --check`` knows what ``run`` knows.

Every config below used to pass ``--check`` ("config ok", exit 0) and then be
refused by ``run``, or crash it with a traceback.  Now ``--check`` and ``run``
construct every source and sink through the same entry point
(``eventd.daemon.validate``), so both refuse with the same single line naming
the key, and exit status 2.  Both run as real ``eventd run`` processes, side
by side, so each case costs one process start.

What only starting can tell (a port in use, a spool held by another process)
is refused by ``run`` with one line and exit status 2 as well, after undoing
the steps that had succeeded: the in-process tests check that the ports the
daemon had opened and the spool lock it had taken are free again while the
process that ran it lives on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from eventd.config import ConfigError, load_config
from eventd.daemon import Daemon
from eventd.sinks.spool import LOCK_FILE
from tests.support.daemon_process import free_port

pytestmark = pytest.mark.timeout(120)

#: A port nothing listens on: clients that would connect there never do at validation.
NOWHERE = "127.0.0.1:9"
#: How long one ``eventd run`` may take to refuse (it normally takes about half a second).
PROCESS_TIMEOUT = 30.0

Case = Callable[[Path], tuple[dict[str, Any], str]]


def _kafka_sink(tmp: Path, **settings: Any) -> dict[str, Any]:
    return {"sinks": {"kafka": {"bootstrap_servers": [NOWHERE], "spool_dir": str(tmp / "spool"), **settings}}}


def _a_file(tmp: Path, name: str = "a-file") -> Path:
    path = tmp / name
    path.write_text("not a directory\n")
    return path


#: Configs ``run`` refuses, and the key the refusal must name.
REFUSED: dict[str, Case] = {
    "open_listener_without_auth": lambda tmp: (
        {"sources": {"k8s_audit_webhook": {"listen": f"0.0.0.0:{free_port()}"}}},
        "sources.k8s_audit_webhook.listen",
    ),
    "webhook_sink_without_url": lambda tmp: ({"sinks": {"webhook": {}}}, "sinks.webhook.url"),
    "kafka_source_without_topics": lambda tmp: (
        {"sources": {"kafka": {"bootstrap_servers": [NOWHERE]}}},
        "sources.kafka.topics",
    ),
    "missing_token_file": lambda tmp: (
        {"sources": {"falco_http": {"listen": f"127.0.0.1:{free_port()}", "token_file": str(tmp / "none")}}},
        "sources.falco_http.token_file",
    ),
    "missing_listener_tls_files": lambda tmp: (
        {
            "sources": {
                "k8s_audit_webhook": {
                    "listen": f"127.0.0.1:{free_port()}",
                    "tls": {"cert": str(tmp / "cert.pem"), "key": str(tmp / "key.pem")},
                }
            }
        },
        "sources.k8s_audit_webhook.tls",
    ),
    "missing_kafka_ca": lambda tmp: (_kafka_sink(tmp, tls={"ca": str(tmp / "ca.pem")}), "sinks.kafka.tls.ca"),
    "missing_grpc_client_cert": lambda tmp: (
        {
            "sources": {
                "falco_grpc": {
                    "address": NOWHERE,
                    "tls": {"cert": str(tmp / "client.pem"), "key": str(_a_file(tmp, "client.key"))},
                }
            }
        },
        "sources.falco_grpc.tls.cert",
    ),
    "bad_sink_topic": lambda tmp: (_kafka_sink(tmp, topic="alerts/prod"), "sinks.kafka.topic"),
    "bad_source_topic": lambda tmp: (
        {"sources": {"kafka": {"bootstrap_servers": [NOWHERE], "topics": ["audit", "audit events"]}}},
        "sources.kafka.topics[1]",
    ),
    "spool_too_small": lambda tmp: (_kafka_sink(tmp, spool_max_bytes=1000), "sinks.kafka.spool_max_bytes"),
    "spool_dir_is_a_file": lambda tmp: (
        _kafka_sink(tmp, spool_dir=str(_a_file(tmp))),
        "sinks.kafka.spool_dir",
    ),
    "spool_dir_under_a_file": lambda tmp: (
        _kafka_sink(tmp, spool_dir=str(_a_file(tmp) / "spool")),
        "sinks.kafka.spool_dir",
    ),
    "audit_log_path_is_a_directory": lambda tmp: (
        {"sources": {"audit_log": {"path": str(tmp)}}},
        "sources.audit_log.path",
    ),
    "falco_file_missing": lambda tmp: (
        {"sources": {"falco_file": {"path": str(tmp / "alerts.json"), "follow": False}}},
        "sources.falco_file.path",
    ),
}


def write_config(tmp: Path, config: dict[str, Any]) -> Path:
    """The config with its own ops port and a short grace, as a file."""
    config.setdefault("server", {"listen": f"127.0.0.1:{free_port()}"})
    config.setdefault("sinks", {"stdout": {}})
    config.setdefault("shutdown_grace_seconds", 5)
    path = tmp / "eventd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def eventd(*commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run ``eventd`` once per argument list, all at once; a process still
    running after ``PROCESS_TIMEOUT`` (it accepted what it should refuse) is
    killed and fails the test."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "eventd", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results = []
    for proc, args in zip(procs, commands, strict=True):
        try:
            out, err = proc.communicate(timeout=PROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"eventd {' '.join(args)} was still running after {PROCESS_TIMEOUT} s")
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def message_lines(stderr: str) -> list[str]:
    """stderr without the JSON log lines: what eventd says to the operator."""
    lines = []
    for line in stderr.splitlines():
        try:
            json.loads(line)
        except ValueError:
            lines.append(line)
    return lines


def assert_one_line(result: subprocess.CompletedProcess[str], prefix: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = message_lines(result.stderr)
    assert line.startswith(prefix), line
    return line


def assert_free(*ports: int) -> None:
    """Each port can be bound again: nothing listens on it any more."""
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


@contextlib.contextmanager
def occupied() -> Iterator[int]:
    """A port somebody else is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@contextlib.contextmanager
def spool_held(directory: Path) -> Iterator[None]:
    """The spool's lock taken, as another eventd using the same directory would."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def lock_is_free(directory: Path) -> bool:
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


# ------------------------------------------------- --check and run agree


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_check_and_run_refuse_with_the_same_line(name: str, tmp_path: Path) -> None:
    config, key = REFUSED[name](tmp_path)
    path = write_config(tmp_path, config)
    check, run = eventd(["run", "--config", str(path), "--check"], ["run", "--config", str(path)])
    line = assert_one_line(check, f"eventd: config refused: {key}: ")
    assert assert_one_line(run, f"eventd: config refused: {key}: ") == line
    assert "config ok" not in check.stdout


def test_a_spool_dir_that_is_a_file_is_named_as_such(tmp_path: Path) -> None:
    path = write_config(tmp_path, _kafka_sink(tmp_path, spool_dir=str(_a_file(tmp_path))))
    (check,) = eventd(["run", "--config", str(path), "--check"])
    line = assert_one_line(check, "eventd: config refused: sinks.kafka.spool_dir: ")
    assert line.endswith(f"{tmp_path / 'a-file'} is a file, expected a directory")


def test_check_accepts_what_run_starts_and_creates_nothing(tmp_path: Path) -> None:
    """The control: a good config passes both, and ``--check`` has no side
    effects (the spool directory ``run`` creates does not exist after it)."""
    spool = tmp_path / "state" / "spool"
    webhook = free_port()
    config = {
        "sources": {"k8s_audit_webhook": {"listen": f"127.0.0.1:{webhook}"}},
        "sinks": {"stdout": {}, "kafka": {"bootstrap_servers": [NOWHERE], "spool_dir": str(spool)}},
    }
    path = write_config(tmp_path, config)
    (check,) = eventd(["run", "--config", str(path), "--check"])
    assert check.returncode == 0, check.stderr
    assert "config ok" in check.stdout
    assert "sources: k8s_audit_webhook; sinks: stdout, kafka" in check.stdout
    assert not spool.parent.exists()


# -------------------------------------------- what only starting can tell


@pytest.mark.parametrize("busy", ["server.listen", "sources.k8s_audit_webhook.listen", "sinks.kafka"])
def test_a_failed_start_is_one_line_and_exit_2(busy: str, tmp_path: Path) -> None:
    """A busy ops port, a busy source port (after the ops server and the other
    source are up), a spool another process holds: ``--check`` cannot know
    (it binds and opens nothing); ``run`` says which key, once."""
    spool = tmp_path / "spool"
    with occupied() as port, spool_held(spool) if busy == "sinks.kafka" else contextlib.nullcontext():
        ports = {key: free_port() for key in ("server.listen", "sources.k8s_audit_webhook.listen")}
        ports["sources.falco_http.listen"] = free_port()
        if busy in ports:
            ports[busy] = port
        config = {
            "server": {"listen": f"127.0.0.1:{ports['server.listen']}"},
            "sources": {
                "k8s_audit_webhook": {"listen": f"127.0.0.1:{ports['sources.k8s_audit_webhook.listen']}"},
                "falco_http": {"listen": f"127.0.0.1:{ports['sources.falco_http.listen']}"},
            },
            "sinks": {"kafka": {"bootstrap_servers": [NOWHERE], "spool_dir": str(spool)}},
        }
        path = write_config(tmp_path, config)
        check, run = eventd(["run", "--config", str(path), "--check"], ["run", "--config", str(path)])
        assert check.returncode == 0, check.stderr
        line = assert_one_line(run, f"eventd: cannot start: {busy}: ")
        if busy != "sinks.kafka":
            assert f"cannot listen on 127.0.0.1:{port}" in line
        assert_free(*(p for key, p in ports.items() if key != busy))


# ------------------------------------- the undo, seen from the same process


def daemon_config(tmp: Path, **ports: int) -> Any:
    config = {
        "server": {"listen": f"127.0.0.1:{ports['ops']}"},
        "sources": {
            "k8s_audit_webhook": {"listen": f"127.0.0.1:{ports['webhook']}"},
            "falco_http": {"listen": f"127.0.0.1:{ports['falco']}"},
        },
        "sinks": {"kafka": {"bootstrap_servers": [NOWHERE], "spool_dir": str(tmp / "spool")}},
        "shutdown_grace_seconds": 5,
    }
    path = tmp / "eventd.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_config(path, {})


@pytest.mark.asyncio
async def test_a_busy_source_port_undoes_the_started_steps(tmp_path: Path) -> None:
    """The ops server, the Kafka sink (its spool locked) and the webhook were
    up when the Falco input found its port taken: all are released again."""
    ops, webhook = free_port(), free_port()
    with occupied() as falco:
        daemon = Daemon(daemon_config(tmp_path, ops=ops, webhook=webhook, falco=falco))
        with pytest.raises(ConfigError) as refused:
            await daemon.run()
    assert refused.value.key == "sources.falco_http.listen"
    assert_free(ops, webhook, falco)
    assert lock_is_free(tmp_path / "spool")


@pytest.mark.asyncio
async def test_a_busy_ops_port_leaves_nothing_started(tmp_path: Path) -> None:
    """The ops server starts first: when its port is taken, no sink has
    opened its spool and no input listens."""
    with occupied() as ops:
        webhook, falco = free_port(), free_port()
        daemon = Daemon(daemon_config(tmp_path, ops=ops, webhook=webhook, falco=falco))
        with pytest.raises(ConfigError) as refused:
            await daemon.run()
    assert refused.value.key == "server.listen"
    assert_free(webhook, falco)
    assert not (tmp_path / "spool").exists() or lock_is_free(tmp_path / "spool")


@pytest.mark.asyncio
async def test_a_held_spool_stops_the_ops_server_again(tmp_path: Path) -> None:
    ops, webhook, falco = free_port(), free_port(), free_port()
    with spool_held(tmp_path / "spool"):
        daemon = Daemon(daemon_config(tmp_path, ops=ops, webhook=webhook, falco=falco))
        with pytest.raises(ConfigError) as refused:
            await daemon.run()
    assert refused.value.key == "sinks.kafka"
    assert "in use by another process" in str(refused.value)
    assert_free(ops, webhook, falco)
