"""Smoke run of the end-to-end benchmark's machinery (``bench/bench_e2e.py``).

Tiny rates and durations against the real broker and a real ``eventd run``:
what is checked is that the machinery works (every expected alert is traced
back from Kafka, the report has every field), never how fast anything is.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import orjson

from bench import bench_e2e
from bench.loadgen import MARKER_IMAGE, MARKER_RULE, build_workload
from eventd.config import Config
from eventd.daemon import build_matcher
from tests.support.kafka_broker import KafkaBroker

STEP_FIELDS = {f.name for f in dataclasses.fields(bench_e2e.StepResult)}
REPORT_KEYS = {
    "options",
    "machine",
    "max_sustained_eps",
    "max_sustained_achieved_eps",
    "latency_at_5000",
    "rss_start_mb",
    "peak_rss_mb",
    "bare_producer",
    "ratio_vs_bare",
    "preparation",
    "steps",
    "soak",
    "targets",
}


def test_workload_gives_every_pass_fresh_audit_ids_traceable_to_their_batch() -> None:
    workload = build_workload(3, seed=7, batch_size=50).expect(build_matcher(Config()))
    seen: set[tuple[str, str]] = set()
    for seq in (0, 2, 3, 7):  # epochs 1, 1, 2, 3
        items = orjson.loads(workload.body(seq))["items"]
        assert len(items) == workload.events_per_batch == 50
        epoch, _ = workload.epoch_and_template(seq)
        for item in items:
            key = (item["auditID"], item["stage"])
            assert key not in seen  # the daemon's dedup would drop a repeat
            seen.add(key)
            assert item["auditID"].startswith(f"{epoch:08x}")
            assert workload.seq_of(*key) == seq
        markers = [i for i in items if MARKER_IMAGE in orjson.dumps(i).decode()]
        assert len(markers) == 1
        expected, marker = workload.keys(seq)
        assert marker == (markers[0]["auditID"], markers[0]["stage"], MARKER_RULE)
        assert marker in expected
    assert workload.seq_of("not-an-id-at-all", "ResponseComplete") is None


def test_benchmark_run_traces_every_expected_alert_and_reports_every_field(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    options = dataclasses.replace(
        bench_e2e.QUICK,
        rates=(800, 1_200),
        step_seconds=1.0,
        templates=3,
        connections=2,
        bare_messages=50,
        warmup_seconds=0.5,
        soak_minutes=0.04,
        soak_rate=800,
        keep_going=True,  # a slow machine must not cut the run short: speed is not checked here
    )
    report = asyncio.run(bench_e2e.run(options, tmp_path, broker=kafka_broker))

    assert report.keys() >= REPORT_KEYS
    assert [s["name"] for s in report["steps"]] == ["800/s", "1,200/s"]
    assert [s["name"] for s in report["preparation"]] == ["warm-up"]
    soak = report["soak"]
    assert soak is not None and soak["rss_samples"] and soak["growth"] is not None
    for step in [*report["preparation"], *report["steps"], soak]:
        assert step.keys() >= STEP_FIELDS
        assert step["batches_lost"] == 0
        assert step["events_accepted"] == step["batches"] * 400
        # Every alert the rules raise, and one marker per batch, came back from Kafka.
        assert step["expected_alerts"] > 0
        assert step["missing_alerts"] == 0
        assert step["arrived_alerts"] == step["expected_alerts"]
        assert step["markers"] == step["batches"]
        assert step["missing_markers"] == 0
        assert step["unexpected_alerts"] == 0
        assert step["latency_p50_ms"] is not None and step["latency_p99_ms"] is not None
        assert step["peak_rss_mb"] >= step["rss_mb"] > 0
    assert sum(s["cpu_s"] for s in report["steps"]) + soak["cpu_s"] > 0
    bare = report["bare_producer"]
    assert bare["messages"] == 50 and bare["msgs_per_s"] > 0
    assert [c["pass"] in (True, False) for c in report["targets"]] == [True, True, True]
    lines = bench_e2e.report_lines(report)
    assert sum(line.startswith(("PASS: ", "FAIL: ")) for line in lines) == 3
    orjson.dumps(report)  # the --json output
