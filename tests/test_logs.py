"""Logs people can read and that do not flood.

* The format: console lines on a terminal (a real pty), JSON otherwise,
  ``--log-format`` to choose; checked on a real ``eventd run``.
* The Kafka client library's records folded into eventd's own lines: the
  fold itself on a driven clock, and a real outage (the tansu broker killed
  under a running eventd): no raw library line, one ``kafka_client_failing``
  line, and the failure counted long before the producer's request timeout.
"""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import structlog
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.logs import (
    QUIET_SECONDS,
    SUMMARY_SECONDS,
    KafkaClientLog,
    KafkaLogFolder,
    kafka_client_context,
    resolve_format,
)
from tests.support.daemon_process import EventdProcess, free_port
from tests.support.kafka_broker import KafkaBroker

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# ------------------------------------------------------------------ format


def test_auto_format_is_console_on_a_terminal_and_json_otherwise(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as tty:
            assert resolve_format("auto", tty) == "console"
            assert resolve_format("json", tty) == "json"
    finally:
        os.close(leader)
        os.close(follower)
    with (tmp_path / "f").open("w") as plain:
        assert resolve_format("auto", plain) == "json"
        assert resolve_format("console", plain) == "console"


def _busy_config(tmp_path: Path, port: int) -> Path:
    """A config whose ops port is taken: eventd logs its start, then refuses."""
    path = tmp_path / "eventd.yaml"
    path.write_text(yaml.safe_dump({"server": {"listen": f"127.0.0.1:{port}"}, "sinks": {"stdout": {}}}))
    return path


def _run(args: list[str], stderr: Any) -> int:
    return subprocess.run(
        [sys.executable, "-m", "eventd", "run", *args], stdout=subprocess.DEVNULL, stderr=stderr, timeout=60
    ).returncode


def test_run_logs_json_into_a_file_and_console_lines_on_a_terminal(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = _busy_config(tmp_path, busy.getsockname()[1])
        # Into a file: JSON, one object per line.
        with (tmp_path / "json").open("wb") as out:
            assert _run(["--config", str(config)], out) == 2
        logged = (tmp_path / "json").read_text().splitlines()
        records = [json.loads(line) for line in logged if line.startswith("{")]
        assert any(r["event"] == "rules_loaded" for r in records)
        # On a real terminal: console lines, not JSON.
        leader, follower = pty.openpty()
        try:
            assert _run(["--config", str(config)], follower) == 2
            os.close(follower)
            text = b""
            while True:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the terminal's other side is closed
                    break
                if not chunk:
                    break
                text += chunk
        finally:
            os.close(leader)
        lines = text.decode(errors="replace").splitlines()
        line = next(line for line in lines if "rules_loaded" in line)
        assert "\x1b[" in line  # coloured, on a terminal
        plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
        assert re.match(r"\d{4}-\d\d-\d\dT\S+ \[info +\] rules_loaded +rules=\d+", plain), plain
        # Forced: console into a file, JSON on... a file as well (the flag wins).
        with (tmp_path / "console").open("wb") as out:
            assert _run(["--config", str(config), "--log-format", "console"], out) == 2
        forced = (tmp_path / "console").read_text().splitlines()
        line = next(line for line in forced if "rules_loaded" in line)
        assert not line.startswith("{") and "\x1b[" not in line  # no colours into a file


def test_log_format_is_also_a_config_key(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = _busy_config(tmp_path, busy.getsockname()[1])
        with (tmp_path / "out").open("wb") as out:
            proc = subprocess.run(
                [sys.executable, "-m", "eventd", "run", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=out,
                env={**os.environ, "EVENTD_LOG_FORMAT": "console"},
                timeout=60,
            )
        assert proc.returncode == 2
        text = (tmp_path / "out").read_text()
        assert "rules_loaded" in text and not any(line.startswith("{") for line in text.splitlines())
        assert _run(["--config", str(config), "--log-format", "yaml"], subprocess.PIPE) == 2


# ------------------------------------------------------------------- folding


class Counted:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def test_a_flood_of_client_errors_is_one_line_then_a_summary_a_minute() -> None:
    failures = Counted()
    client = KafkaClientLog("sinks.kafka", on_failure=failures)
    kind = "Unable connect to node with id %s: %s"
    with structlog.testing.capture_logs() as lines:
        # 30 errors a second for 100 s, as aiokafka logs them with a dead broker.
        for i in range(3000):
            client.record(kind, f"Unable connect to node with id 1: refused ({i})", "aiokafka", now=i / 30)
        assert failures.count == 1  # counted at the first error, once
        client.record("Unable to update metadata from %s", "metadata", "aiokafka.client", now=100.5)
        client.record(kind, "connect again", "aiokafka", now=100.6)  # seen already: folded
        client.record("Unable to update metadata from %s", "metadata", "aiokafka.client", now=100.7)
        client.recovered()
        client.recovered()  # already recovered: nothing more
        client.record(kind, "again", "aiokafka", now=200)
    events = [line["event"] for line in lines]
    assert events == [
        "kafka_client_failing",
        "kafka_client_still_failing",  # after SUMMARY_SECONDS
        "kafka_client_new_error",
        "kafka_client_recovered",
        "kafka_client_failing",
    ]
    summary = lines[1]
    assert summary["errors"] == int(SUMMARY_SECONDS * 30) and summary["client"] == "sinks.kafka"
    assert lines[2]["folded"] == 3000 - 1 - summary["errors"]
    assert failures.count == 2


def test_a_new_error_after_a_quiet_minute_is_a_new_failure() -> None:
    failures = Counted()
    client = KafkaClientLog("sinks.kafka", on_failure=failures)
    with structlog.testing.capture_logs() as lines:
        client.record("k", "one", "aiokafka", now=0)
        client.record("k", "two", "aiokafka", now=500)
    assert [line["event"] for line in lines] == ["kafka_client_failing", "kafka_client_failing"]
    assert failures.count == 2


def test_at_debug_level_records_are_counted_but_not_folded_into_lines() -> None:
    failures = Counted()
    client = KafkaClientLog("sinks.kafka", on_failure=failures)
    with structlog.testing.capture_logs() as lines:
        client.record("k", "one", "aiokafka", now=0, quiet=True)
        client.record("k", "two", "aiokafka", now=1, quiet=True)
    assert lines == [] and failures.count == 1


def test_library_records_fold_under_the_client_whose_context_made_them() -> None:
    folder = KafkaLogFolder()
    library = logging.getLogger("aiokafka.test_logs")
    library.handlers[:] = [folder]
    library.propagate = False
    mine = KafkaClientLog("sinks.kafka")
    try:
        with structlog.testing.capture_logs() as lines:
            with kafka_client_context(mine):
                library.error("Unable connect to node with id %s: %s", 1, "refused")
                library.error("Unable connect to node with id %s: %s", 2, "refused")
                library.info("connected")  # below WARNING: not folded, not shown
            library.error("Unable connect to node with id %s: %s", 3, "refused")  # no client context
    finally:
        library.handlers.clear()
        library.propagate = True
    assert [(line["event"], line["client"]) for line in lines] == [
        ("kafka_client_failing", "sinks.kafka"),
        ("kafka_client_failing", "kafka"),
    ]
    assert mine.folded == 1


# ----------------------------------------------------------- a real outage


def _sink_failures(ops_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{ops_port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("eventd_sink_failures_total{") and 'sink="kafka"' in line
    )


def test_a_broker_outage_is_one_line_and_counted_at_once(
    private_kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    falco_port = free_port()
    private_kafka_broker.create_topic("outage")
    config = {
        "sources": {"falco_http": {"listen": f"127.0.0.1:{falco_port}"}},
        "sinks": {
            "kafka": {
                "bootstrap_servers": [private_kafka_broker.bootstrap],
                "topic": "outage",
                "spool_dir": str(tmp_path / "spool"),
                # Before the fold, the failure was counted only when a
                # request timed out: this long after the outage began.
                "request_timeout_seconds": 60,
            }
        },
    }
    daemon = EventdProcess(tmp_path, config, stdout="unread")
    try:
        daemon.wait_ready()
        body = (EXAMPLES / "falco-alert-sample.json").read_bytes()
        request = urllib.request.Request(
            f"http://127.0.0.1:{falco_port}/", body, {"Content-Type": "application/json"}
        )
        assert urllib.request.urlopen(request, timeout=30).status == 200
        assert private_kafka_broker.read_topic("outage", 1, 15.0)  # delivered: producer connected
        assert _sink_failures(daemon.ops_port) == 0
        private_kafka_broker.stop()
        deadline = time.monotonic() + 30  # half the request timeout
        while _sink_failures(daemon.ops_port) == 0:
            assert time.monotonic() < deadline, "the outage was not counted before the request timeout"
            time.sleep(0.25)
        time.sleep(3)  # the library goes on failing meanwhile
    finally:
        daemon.stop()
    records = [json.loads(line) for line in daemon.stderr().splitlines() if line.startswith("{")]
    assert not [r for r in records if str(r.get("logger", "")).startswith("aiokafka")]
    failing = [r for r in records if r["event"] == "kafka_client_failing"]
    assert len(failing) == 1 and failing[0]["client"] == "sinks.kafka"


@given(
    st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=QUIET_SECONDS - 0.5), st.sampled_from("abcd")),
        min_size=1,
        max_size=300,
    )
)
@settings(max_examples=200, deadline=None)
def test_folding_loses_no_error_and_bounds_the_lines(steps: list[tuple[float, str]]) -> None:
    """Within one failure (gaps below QUIET_SECONDS): every record is a line,
    or counted in a later line, or still pending; lines are at most one per
    kind plus one per SUMMARY_SECONDS."""
    failures = Counted()
    client = KafkaClientLog("sinks.kafka", on_failure=failures)
    now = 0.0
    with structlog.testing.capture_logs() as lines:
        for gap, kind in steps:
            now += gap
            client.record(kind, f"error {kind}", "aiokafka", now=now)
    reported = sum(line.get("folded", 0) + line.get("errors", 0) for line in lines)
    summaries = [line for line in lines if line["event"] == "kafka_client_still_failing"]
    assert len(lines) - len(summaries) + reported + client.folded == len(steps)
    assert len(lines) - len(summaries) == len({kind for _, kind in steps})
    assert len(summaries) <= now // SUMMARY_SECONDS
    assert failures.count == 1
