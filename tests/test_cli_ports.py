"""A taken default port: one line naming the key to change, exit 2, no traceback.

The embedded default listens on the Falco ecosystem's ports (9376 is
falco-exporter's, 2801 falcosidekick's), so on a machine that runs those a
port is often taken.  Each port is really occupied here (a bound, listening
socket) and the real ``eventd run`` is started without a config.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import sys

import pytest

from eventd.httpserver import listen_failure

#: The embedded default's listeners: key, port, the environment override.
DEFAULT_PORTS = [
    ("server", 9376, "EVENTD_SERVER__LISTEN"),
    ("sources.falco_http", 2801, "EVENTD_SOURCES__FALCO_HTTP__LISTEN"),
    ("sources.k8s_audit_webhook", 9765, "EVENTD_SOURCES__K8S_AUDIT_WEBHOOK__LISTEN"),
]


def _in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize(("key", "port", "env"), DEFAULT_PORTS, ids=[k for k, _, _ in DEFAULT_PORTS])
def test_a_taken_default_port_names_the_key(key: str, port: int, env: str) -> None:
    others = [p for _, p, _ in DEFAULT_PORTS if p != port]
    if any(map(_in_use, others)):
        pytest.skip("another default port is in use on this machine (eventd would stop there first)")
    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", port))
        except OSError:
            pytest.skip(f"port {port} is held by another process: the check below needs it held by us")
        taken.listen()
        proc = subprocess.run(
            [sys.executable, "-m", "eventd", "run"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("eventd:")]
    assert line == (
        f"eventd: cannot start: {key}.listen: cannot listen on 127.0.0.1:{port}: address already in use "
        f"(another process has it; set {key}.listen, or {env}, to a free host:port)"
    )
    # Everything else on stderr is the log of what started and was undone.
    assert all(line.startswith("{") for line in proc.stderr.splitlines() if not line.startswith("eventd:"))


def test_other_bind_failures_keep_the_systems_reason() -> None:
    err = OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
    assert listen_failure("192.0.2.1:9376", "server", err) == (
        "cannot listen on 192.0.2.1:9376: Cannot assign requested address"
    )
