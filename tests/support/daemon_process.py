"""Run a real ``eventd run`` process for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Literal

import yaml

#: What the test does with eventd's stdout: ``read`` it (alerts land in
#: ``EventdProcess.alerts``), leave the pipe ``unread`` (it fills and stays
#: full, like a consumer that hangs), or close its read end at once
#: (``closed``: every write fails with EPIPE, like a consumer that died).
StdoutMode = Literal["read", "unread", "closed"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EventdProcess:
    """``eventd run --config`` in a subprocess; alerts read from its stdout
    (unless ``stdout`` says otherwise, see ``StdoutMode``)."""

    def __init__(
        self,
        tmp: Path,
        config: dict[str, Any],
        env: dict[str, str] | None = None,
        *,
        stdout: StdoutMode = "read",
    ) -> None:
        self.ops_port = free_port()
        config.setdefault("server", {"listen": f"127.0.0.1:{self.ops_port}"})
        config.setdefault("shutdown_grace_seconds", 10)
        self.config_path = tmp / "eventd.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.stderr_path = tmp / "eventd.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eventd", "run", "--config", str(self.config_path)],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={**os.environ, **(env or {})},
        )
        self.alerts: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        if stdout == "read":
            self._reader.start()
        elif stdout == "closed":
            assert self.proc.stdout is not None
            self.proc.stdout.close()  # the child keeps the write end: its writes get EPIPE

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.alerts.append(json.loads(line))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ops_port}{path}"

    def ready_or_killed(self, timeout: float = 20.0) -> EventdProcess:
        """``wait_ready``, killing the process if it never becomes ready (so a
        failed start-up leaves nothing running); returns ``self``."""
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"eventd exited with {self.proc.returncode}: {self.stderr()}")
            try:
                with urllib.request.urlopen(self.url("/readyz"), timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"eventd not ready: {self.stderr()}")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as resp:
            return resp.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                series, _, value = line.rpartition(" ")
                parts = series[len(name) :].strip("{}").split(",") if "{" in series else []
                if all(p in parts for p in want.split(",") if p):
                    total += float(value)
        return total

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; stderr: {self.stderr()[-2000:]}")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        if self._reader.is_alive():
            self._reader.join(timeout=5)
        self._stderr.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()  # an unread pipe: nobody else will close it
        self._stderr.close()

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out
