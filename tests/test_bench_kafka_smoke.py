"""Smoke run of the scale-out benchmark's machinery (``bench/bench_kafka.py``)
and of the start-up benchmark (``bench/bench_startup.py``).

A real broker and real ``eventd run`` replicas drain a small topic: what is
checked is that every expected alert is read back, that the replicas'
counts add up to the topic, and that the report has its fields, never how
fast anything is."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import bench_kafka, bench_startup
from tests.support.kafka_broker import KafkaBroker

EVENTS = 3000


def test_two_replicas_in_one_group_drain_the_topic_and_deliver_every_alert(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    recs = bench_kafka.records(EVENTS, seed=5, pod_ratio=0.05)
    want = bench_kafka.expected_uuids([v for _, v in recs])
    assert want  # the corpus raises alerts with the built-in packs
    args = argparse.Namespace(partitions=4, event_loop="auto", pin=False, py_spy=None)
    for replicas in (1, 2):
        run = bench_kafka.run_group(kafka_broker, tmp_path / str(replicas), recs, want, args, replicas)
        assert run["replicas"] == replicas and len(run["per_replica"]) == replicas
        assert sum(r["events"] for r in run["per_replica"]) >= EVENTS  # a rebalance may re-read some
        assert run["alerts_missing"] == 0 and run["alerts_delivered"] == len(want)
        assert all(r["events_per_s"] >= 0 and r["cpu_s"] >= 0 for r in run["per_replica"])


def test_startup_benchmark_reports_every_command(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "startup.json"
    assert bench_startup.main(["--repeat", "1", "--top", "3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("eventd scan", "eventd rules check", "eventd image", "python -c pass"):
        assert name in printed
    assert "slowest imports of `eventd scan" in printed
