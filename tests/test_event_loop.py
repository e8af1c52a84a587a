"""``event_loop``: uvloop when installed (the ``uvloop`` extra, installed in
the container image), asyncio's own loop as the fallback."""

from __future__ import annotations

import asyncio
import sys
import tomllib
from pathlib import Path

import pytest

from eventd.config import ConfigError, load_config
from eventd.daemon import event_loop_factory

REPO = Path(__file__).resolve().parents[1]


def test_asyncio_is_asyncios_default_loop() -> None:
    assert event_loop_factory("asyncio") is None


def test_auto_falls_back_when_uvloop_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what a missing module looks like to import
    assert event_loop_factory("auto") is None
    with pytest.raises(ConfigError, match=r"^event_loop: uvloop is not installed"):
        event_loop_factory("uvloop")


def test_auto_uses_uvloop_when_it_is_installed() -> None:
    try:
        import uvloop
    except ImportError:
        assert event_loop_factory("auto") is None
        return
    factory = event_loop_factory("auto")
    assert factory is uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
        assert runner.run(asyncio.sleep(0, "ran")) == "ran"


def test_the_setting_is_validated_and_overridable(tmp_path: Path) -> None:
    assert load_config(None, {}).event_loop == "auto"
    assert load_config(None, {"EVENTD_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
    with pytest.raises(ConfigError, match="event_loop"):
        load_config(None, {"EVENTD_EVENT_LOOP": "tokio"})


def test_the_extra_exists_and_the_image_installs_it() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("uvloop") for req in extras["uvloop"])
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    assert '/wheels/eventd-*.whl)[uvloop]"' in dockerfile
