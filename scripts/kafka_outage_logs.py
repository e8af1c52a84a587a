"""Measure what eventd logs while its Kafka broker is down.

Runs ``eventd run`` (from this checkout, or from ``--tree`` to compare with
another version) with a Kafka sink on a real broker (tansu, as the tests),
delivers one alert so the producer is connected, kills the broker, and for
``--seconds`` goes on posting ``--rate`` Falco alerts a second (they wait in
the spool) while it counts the lines eventd writes to stderr, how many of
them come from the Kafka client library, and when
``eventd_sink_failures_total{sink="kafka"}`` first becomes non-zero.

    python3 scripts/kafka_outage_logs.py --seconds 100
    git archive HEAD | tar -x -C /tmp/eventd-head
    python3 scripts/kafka_outage_logs.py --seconds 100 --tree /tmp/eventd-head

A measurement, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.daemon_process import free_port  # noqa: E402
from tests.support.kafka_broker import KafkaBroker  # noqa: E402

FAILURES = re.compile(r'^eventd_sink_failures_total\{[^}]*sink="kafka"[^}]*\} (\S+)$', re.M)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.read().decode()


def _failures(ops: str) -> float:
    return sum(float(v) for v in FAILURES.findall(_get(ops + "/metrics")))


def measure(seconds: float, tree: Path, rate: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        broker = KafkaBroker(tmp / "tansu.log")
        broker.start()
        ops, webhook = free_port(), free_port()
        config = {
            "server": {"listen": f"127.0.0.1:{ops}"},
            "sources": {"falco_http": {"listen": f"127.0.0.1:{webhook}"}},
            "sinks": {
                "kafka": {
                    "bootstrap_servers": [broker.bootstrap],
                    "topic": "outage",
                    "spool_dir": str(tmp / "spool"),
                    "request_timeout_seconds": 30,
                }
            },
        }
        (tmp / "eventd.yaml").write_text(json.dumps(config))
        stderr_path = tmp / "stderr"
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "eventd", "run", "--config", str(tmp / "eventd.yaml")],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=tree,
                env={**os.environ, "PYTHONPATH": str(tree)},
            )
        try:
            base = f"http://127.0.0.1:{ops}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if "ok" in _get(base + "/readyz"):
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(stderr_path.read_text()[-2000:])
                time.sleep(0.2)
            alert = (ROOT / "examples" / "falco-alert-sample.json").read_bytes()
            request = urllib.request.Request(
                f"http://127.0.0.1:{webhook}/", alert, {"Content-Type": "application/json"}
            )
            urllib.request.urlopen(request, timeout=30).read()
            time.sleep(2)  # delivered: the producer is connected
            before = len(stderr_path.read_text().splitlines())
            broker.stop()
            down = time.monotonic()
            first_failure = None
            posted = 0
            while (elapsed := time.monotonic() - down) < seconds:
                if first_failure is None and _failures(base) > 0:
                    first_failure = round(elapsed, 1)
                while rate and posted < elapsed * rate:
                    urllib.request.urlopen(request, timeout=30).read()
                    posted += 1
                time.sleep(0.1)
            lines = stderr_path.read_text().splitlines()[before:]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            broker.stop()
    library = [line for line in lines if '"logger": "aiokafka' in line or '"logger":"aiokafka' in line]
    return {
        "tree": str(tree),
        "outage_seconds": seconds,
        "alerts_posted_during_outage": posted,
        "stderr_lines": len(lines),
        "library_lines": len(library),
        "seconds_to_first_failure_count": first_failure,
        "events": sorted({json.loads(line).get("event", "?")[:60] for line in lines if line.startswith("{")})[
            :12
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=100.0)
    parser.add_argument("--rate", type=float, default=1.0, help="alerts a second during the outage")
    parser.add_argument(
        "--tree", type=Path, default=ROOT, help="eventd source tree to run (default: this one)"
    )
    args = parser.parse_args()
    print(json.dumps(measure(args.seconds, args.tree.resolve(), args.rate), indent=2))


if __name__ == "__main__":
    main()
