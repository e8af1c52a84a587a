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
from tests.support.http_receiver import sample_alert
from tests.support.waiting import wait_until


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
    await sink.flush()  # the reopen runs on the writer thread
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
async def test_a_failing_write_blocks_and_is_retried_never_dropped(tmp_path: Path) -> None:
    """Durable: a write the disk refuses is retried until it succeeds; meanwhile
    the sink is neither healthy nor accepting (``/readyz``), and nothing is
    dropped or written twice."""
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full is needed to make writes fail")
    metrics = Metrics()
    sink = FileSink(FileSinkConfig(path=Path("/dev/full")), metrics)
    sending = asyncio.create_task(sink.send(sample_alert()))
    await wait_until(lambda: value(metrics, "eventd_sink_failures_total", reason="disk_full") >= 2)
    assert not sending.done()
    assert not sink.healthy() and not sink.accepting()
    assert value(metrics, "eventd_sink_dropped_total", reason="io_error") == 0
    assert value(metrics, "eventd_sink_deliveries_total") == 0
    sending.cancel()
    await asyncio.gather(sending, return_exceptions=True)
    await sink.close()


@pytest.mark.asyncio
async def test_the_blocked_write_completes_once_the_path_is_usable_again(tmp_path: Path) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the alert directory should be")
    path = blocker / "alerts.jsonl"
    metrics = Metrics()
    sink = FileSink(FileSinkConfig(path=path), metrics)
    alert = sample_alert()
    sending = asyncio.create_task(sink.send(alert))
    await wait_until(lambda: value(metrics, "eventd_sink_failures_total", reason="io_error") >= 1)
    assert not sink.accepting()
    blocker.unlink()
    await asyncio.wait_for(sending, 30)
    assert sink.accepting() and sink.healthy()
    assert path.read_bytes() == alert.to_json() + b"\n"
    assert value(metrics, "eventd_sink_deliveries_total") == 1
    await sink.close()
