"""Fixtures shared by the fault tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.disks import FileSizeLimit, TmpfsDisk


@pytest.fixture(params=["tmpfs", "rlimit"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TmpfsDisk | FileSizeLimit]:
    made = TmpfsDisk(tmp_path / "disk") if request.param == "tmpfs" else FileSizeLimit(tmp_path)
    try:
        yield made
    finally:
        made.close()
