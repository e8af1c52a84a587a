"""Observe what reaches the disk: every ``os.fsync``/``os.fdatasync`` (by the
path behind its descriptor, read from ``/proc/self/fd``) and every
``os.replace``, in call order.  The real calls still run: this only records."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest


class SyncLog:
    """``events`` is a list of ``("sync", path)`` and ``("rename", target)``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str]] = []
        for name in ("fsync", "fdatasync"):
            monkeypatch.setattr(os, name, self._syncing(getattr(os, name)))
        real_replace = os.replace

        def replace(src: Any, dst: Any, **kwargs: Any) -> None:
            real_replace(src, dst, **kwargs)
            self.events.append(("rename", str(Path(dst).resolve())))

        monkeypatch.setattr(os, "replace", replace)

    def _syncing(self, real: Any) -> Any:
        def sync(fd: int) -> None:
            self.events.append(("sync", os.readlink(f"/proc/self/fd/{fd}")))
            real(fd)

        return sync

    def synced(self) -> list[str]:
        """Paths synced, in order."""
        return [path for kind, path in self.events if kind == "sync"]

    def index(self, kind: str, path: Path | str) -> int:
        """Position of the first ``kind`` event on ``path`` (ValueError if none)."""
        return self.events.index((kind, str(Path(path).resolve())))

    def clear(self) -> None:
        self.events.clear()
