"""Kafka source -> ``eventd run`` -> Kafka sink, with one or more replicas in
one consumer group: per-replica and total rates, every alert checked.

This is how eventd scales past one process: replicas share the audit
topic's partitions through a Kafka consumer group.  The benchmark starts a
real Kafka-protocol broker (tansu, as the tests start it), fills an audit
topic of ``--partitions`` partitions with ``--events`` realistic audit
events (``bench/corpus.py``, keyed by auditID), then starts ``--replicas``
real ``eventd run`` processes in one group (Kafka source, Kafka sink with
``acks: all``, built-in rule packs) and times how fast they drain the topic:

* total rate: the events counted after every replica was up, over the time
  until the last one was counted, from each replica's
  ``eventd_events_received_total{source="kafka"}`` read every 0.2 s;
* per replica: its share of the events, the rate over its own active
  stretch, and its CPU µs per event (from ``/proc``), next to orjson's
  parse cost of the same records in this process;
* every alert the rules must raise (computed in-process with the same
  rules) is read back from the alert topic by an independent reader; a
  rebalance may deliver copies, which carry the same ``uuid``.

The broker and this driver share the machine with eventd: on 2 cores, two
replicas and the broker compete for CPU, so the total shows what one
machine gives, not what two nodes would.  ``--pin`` keeps replica ``i`` on
CPU ``i mod cores``.

    python bench/bench_kafka.py [--events N] [--replicas 1,2] [--partitions P]
                                [--pod-ratio R] [--event-loop auto|uvloop|asyncio]
                                [--pin] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):  # run as a script: make ``bench.*`` and ``tests.*`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import Producer

from bench.bench_e2e import cpu_seconds, memory_mb, pin
from bench.corpus import DEFAULT_POD_RATIO, generate
from eventd.engine.loader import load_rules
from eventd.rulepacks import builtin_rule_files
from eventd.scanner import Scanner
from tests.faults.accounting import read_kafka_alerts
from tests.support.daemon_process import EventdProcess
from tests.support.kafka_broker import KafkaBroker, unique_name

#: Target: Kafka source -> Kafka sink on one core, events/s.
TARGET_ONE_REPLICA_EPS = 60_000
#: How often each replica's counter is read.
SAMPLE_SECONDS = 0.2
#: Longest a drain may take before the run gives up.
DRAIN_TIMEOUT = 600.0


def records(events: int, seed: int, pod_ratio: float) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` of each audit event: keyed by auditID, so a partition
    holds every stage of an event and dedup stays local to one replica."""
    out = []
    for doc in generate(events, seed, pod_ratio):
        out.append((doc["auditID"].encode(), orjson.dumps(doc)))
    return out


def expected_uuids(values: list[bytes]) -> set[str]:
    """The uuids of the alerts the daemon's rules raise on these records."""
    found: set[str] = set()
    # The built-in packs, as ``eventd run`` loads them without ``rules:``.
    scanner = Scanner(load_rules(builtin_rule_files()), on_alert=lambda a: found.add(a.uuid))
    scanner.scan_lines([v + b"\n" for v in values], "expected")
    return found


def orjson_parse_us(values: list[bytes]) -> float:
    """CPU µs per record of ``orjson.loads`` alone: the floor for any Python consumer."""
    best = float("inf")
    for _ in range(3):
        start = time.thread_time()
        for value in values:
            orjson.loads(value)
        best = min(best, time.thread_time() - start)
    return best / len(values) * 1e6


def produce(bootstrap: str, topic: str, recs: list[tuple[bytes, bytes]]) -> float:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": False})
    start = time.perf_counter()
    for key, value in recs:
        while True:
            try:
                producer.produce(topic, value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120) != 0:
        raise SystemExit("audit events not produced")
    return time.perf_counter() - start


def replica_config(run_dir: Path, bootstrap: str, topic: str, group: str, alert_topic: str, loop: str):  # type: ignore[no-untyped-def]
    return {
        "event_loop": loop,
        "log_level": "warning",
        "sources": {"kafka": {"bootstrap_servers": [bootstrap], "topics": [topic], "group_id": group}},
        "sinks": {
            "kafka": {
                "bootstrap_servers": [bootstrap],
                "topic": alert_topic,
                "acks": "all",
                "spool_dir": str(run_dir / "spool"),
            }
        },
    }


def run_group(
    broker: KafkaBroker,
    work: Path,
    recs: list[tuple[bytes, bytes]],
    want: set[str],
    args: argparse.Namespace,
    n: int,
) -> dict[str, Any]:
    """Drain a freshly filled topic with ``n`` replicas in one group."""
    topic, alert_topic, group = unique_name("audit"), unique_name("alerts"), unique_name("eventd")
    broker.create_topic(topic, args.partitions)
    broker.create_topic(alert_topic, args.partitions)
    produce_seconds = produce(broker.bootstrap, topic, recs)
    total = len(recs)
    procs: list[EventdProcess] = []
    try:
        for i in range(n):
            run_dir = work / f"{topic}-replica{i}"
            run_dir.mkdir(parents=True)
            proc = EventdProcess(
                run_dir, replica_config(run_dir, broker.bootstrap, topic, group, alert_topic, args.event_loop)
            )
            procs.append(proc)
        for i, proc in enumerate(procs):
            proc.wait_ready(timeout=60)
            if args.pin:
                pin(proc.proc.pid, i % (os.cpu_count() or 1))
        spy = None
        if args.py_spy:  # sample replica 0 while it drains (collapsed stacks, for flame graphs)
            spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(procs[0].proc.pid), "--format", "raw", "--rate", "250",
                 "--output", f"{args.py_spy}.{n}", "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)
        # The baseline: counters and CPU read together once every replica is
        # up (the first ones to start may have consumed some events already).
        counts0 = [p.metric("eventd_events_received_total", source="kafka") for p in procs]
        cpu0 = [cpu_seconds(p.proc.pid) for p in procs]
        t0 = time.monotonic()
        if sum(counts0) >= total:  # drained while the others started: nothing left to time
            print("the replicas drained the topic while starting: use more --events", file=sys.stderr)
        counts = list(counts0)
        last_moved = [t0] * n
        while sum(counts) < total:
            if time.monotonic() - t0 > DRAIN_TIMEOUT:
                raise SystemExit(f"{n} replica(s) drained {sum(counts):,.0f} of {total:,} events in time")
            time.sleep(SAMPLE_SECONDS)
            now = time.monotonic()
            for i, proc in enumerate(procs):
                count = proc.metric("eventd_events_received_total", source="kafka")
                if count > counts[i]:
                    last_moved[i] = now
                counts[i] = count
        cpu = [cpu_seconds(p.proc.pid) - c for p, c in zip(procs, cpu0, strict=True)]
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        rss = [memory_mb(p.proc.pid)[0] for p in procs]
        measured = [c - c0 for c, c0 in zip(counts, counts0, strict=True)]
        wall = max(max(last_moved) - t0, SAMPLE_SECONDS)
        found = read_kafka_alerts(broker.bootstrap, alert_topic, want, timeout=120, quiet=1.0)
        uuids = [a["uuid"] for a in found]
        per_replica = []
        for i in range(n):
            active = last_moved[i] - t0
            per_replica.append(
                {
                    "events": int(counts[i]),
                    "events_measured": int(measured[i]),
                    "events_per_s": round(measured[i] / active) if measured[i] else 0,
                    "cpu_s": round(cpu[i], 2),
                    "cpu_us_per_event": round(cpu[i] / max(1, measured[i]) * 1e6, 1),
                    "rss_mb": round(rss[i], 1),
                }
            )
        return {
            "replicas": n,
            "partitions": args.partitions,
            "events": total,
            "produce_seconds": round(produce_seconds, 1),
            "drain_seconds": round(wall, 2),
            "events_measured": int(sum(measured)),
            "total_events_per_s": round(sum(measured) / wall),
            "per_replica": per_replica,
            "alerts_expected": len(want),
            "alerts_delivered": len(set(uuids) & want),
            "alert_copies": len(uuids) - len(set(uuids)),
            "alerts_missing": len(want - set(uuids)),
        }
    finally:
        for proc in procs:
            proc.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--replicas", default="1,2", help="comma-separated replica counts, one run each")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--pod-ratio", type=float, default=DEFAULT_POD_RATIO)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--event-loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    ap.add_argument("--pin", action="store_true", help="pin replica i to CPU i mod cores")
    ap.add_argument("--py-spy", metavar="OUT", help="sample replica 0 with py-spy into OUT.<replicas>")
    ap.add_argument("--json", metavar="OUT", help="write the report as JSON here")
    args = ap.parse_args(argv)
    recs = records(args.events, args.seed, args.pod_ratio)
    values = [v for _, v in recs]
    want = expected_uuids(values)
    parse_us = orjson_parse_us(values)
    runs = []
    with tempfile.TemporaryDirectory(prefix="eventd-bench-kafka-") as tmp:
        work = Path(tmp)
        broker = KafkaBroker(work / "tansu.log")
        broker.start()
        try:
            for n in (int(r) for r in args.replicas.split(",")):
                result = run_group(broker, work, recs, want, args, n)
                runs.append(result)
                print(f"{n} replica(s): {result['total_events_per_s']:,} events/s", file=sys.stderr)
        finally:
            broker.stop()
    print(
        f"Kafka -> eventd -> Kafka: {args.events:,} audit events ({args.pod_ratio:.0%} pod/workload "
        f"writes), {args.partitions} partitions, event loop {args.event_loop}; orjson parse of the same "
        f"records: {parse_us:.2f} µs/event ({os.cpu_count()} CPUs shared with the broker and this driver)"
    )
    for run in runs:
        print(
            f"{run['replicas']} replica(s): {run['total_events_per_s']:,} events/s total over "
            f"{run['drain_seconds']} s; alerts {run['alerts_delivered']}/{run['alerts_expected']} delivered, "
            f"{run['alert_copies']} copies, {run['alerts_missing']} missing"
        )
        for i, r in enumerate(run["per_replica"]):
            print(
                f"  replica {i}: {r['events']:,} events at {r['events_per_s']:,}/s, "
                f"{r['cpu_us_per_event']} CPU µs/event "
                f"({r['cpu_us_per_event'] / parse_us:.1f}x orjson parse), "
                f"RSS {r['rss_mb']} MB"
            )
    one = next((r for r in runs if r["replicas"] == 1), None)
    if one is not None:
        ok = one["total_events_per_s"] >= TARGET_ONE_REPLICA_EPS and not one["alerts_missing"]
        print(
            f"{'PASS' if ok else 'FAIL'}: one replica >= {TARGET_ONE_REPLICA_EPS:,} events/s with every "
            f"alert delivered (measured {one['total_events_per_s']:,}/s)"
        )
    if args.json:
        report = {"orjson_parse_us_per_event": round(parse_us, 2), "runs": runs, "args": vars(args)}
        Path(args.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 1 if any(r["alerts_missing"] for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
