"""FileSink: JSON and text lines, logrotate (rename, copytruncate, reopen), I/O errors."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import orjson
import pytest

from eventd.config import FileSinkConfig
from eventd.metrics import Metrics
from eventd.sinks.file import FileSink
from tests.http_receiver import sample_alert


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"sink": "file", **labels}) or 0


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


@pytest.mark.asyncio
async def test_json_lines_are_appended_and_visible_without_an_explicit_flush(tmp_path: Path) -> None:
    path = tmp_path / "log" / "alerts.jsonl"
    path.parent.mkdir()
    path.write_bytes(b'{"earlier":true}\n')
    metrics = Metrics()
    sink = FileSink(FileSinkConfig(path=path), metrics)
    await sink.start()
    alerts = [sample_alert(f"rule {i}") for i in range(3)]
    for alert in alerts:
        await sink.send(alert)
    await asyncio.sleep(0)  # one loop turn: the batch is written with one flush
    assert lines(path) == [b'{"earlier":true}', *(a.to_json() for a in alerts)]
    assert orjson.loads(lines(path)[1])["rule"] == "rule 0"
    assert value(metrics, "eventd_sink_deliveries_total") == 3
    await sink.close()


@pytest.mark.asyncio
async def test_text_format_and_private_permissions(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "alerts.log"
    sink = FileSink(FileSinkConfig(path=path, format="text"), Metrics())
    alert = sample_alert()
    await sink.send(alert)
    await sink.flush()
    assert lines(path) == [alert.text_line().encode()]
    assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0  # not world-readable
    await sink.close()


@pytest.mark.asyncio
async def test_renamed_file_is_noticed_and_a_new_one_started(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    sink = FileSink(FileSinkConfig(path=path), Metrics())
    await sink.start()
    await sink.send(sample_alert("before"))
    path.rename(tmp_path / "alerts.jsonl.1")  # logrotate "create"
    await sink.send(sample_alert("after"))
    await sink.flush()
    assert [orjson.loads(x)["rule"] for x in lines(tmp_path / "alerts.jsonl.1")] == ["before"]
    assert [orjson.loads(x)["rule"] for x in lines(path)] == ["after"]
    os.unlink(path)  # deleted outright: recreated on the next alert
    await sink.send(sample_alert("recreated"))
    await sink.close()
    assert [orjson.loads(x)["rule"] for x in lines(path)] == ["recreated"]


@pytest.mark.asyncio
async def test_reopen_starts_the_new_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    sink = FileSink(FileSinkConfig(path=path), Metrics())
    await sink.send(sample_alert("one"))
    path.rename(tmp_path / "old")
    sink.reopen()  # SIGHUP / postrotate
    assert path.exists() and path.read_bytes() == b""
    assert len(lines(tmp_path / "old")) == 1
    await sink.close()


@pytest.mark.asyncio
async def test_copytruncate_leaves_no_hole(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    sink = FileSink(FileSinkConfig(path=path), Metrics())
    for _ in range(5):
        await sink.send(sample_alert())
    await sink.flush()
    with path.open("r+b") as f:  # logrotate "copytruncate"
        f.truncate(0)
    alert = sample_alert("after truncate")
    await sink.send(alert)
    await sink.close()
    assert path.read_bytes() == alert.to_json() + b"\n"


@pytest.mark.asyncio
async def test_write_errors_are_counted_and_make_the_sink_unhealthy(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full is needed to make writes fail")
    metrics = Metrics()
    sink = FileSink(FileSinkConfig(path=Path("/dev/full")), metrics)
    await sink.send(sample_alert())
    await sink.send(sample_alert())
    await sink.flush()
    assert not sink.healthy()
    assert value(metrics, "eventd_sink_failures_total", reason="io_error") == 1
    assert value(metrics, "eventd_sink_dropped_total", reason="io_error") == 2
    assert value(metrics, "eventd_sink_deliveries_total") == 0
    await sink.close()
