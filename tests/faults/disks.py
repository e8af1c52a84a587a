"""Full disks for the fault tests: a 1 MiB tmpfs filled by another file (the
usual way a node's disk fills), or a file-size limit (``RLIMIT_FSIZE``, set on
the running eventd with ``prlimit``) where mounting is not allowed."""

from __future__ import annotations

import errno
import resource
import subprocess
from pathlib import Path

import pytest


class TmpfsDisk:
    """A 1 MiB tmpfs holding the spool; a filler file can take all its space."""

    log_level = "info"

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.filler = mountpoint / "filler"
        mountpoint.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs here ({done.stderr.strip()}); the rlimit variant covers disk full"
            )

    @property
    def spool_dir(self) -> Path:
        return self.mountpoint / "spool"

    def fill(self, _pid: int) -> None:
        """Another file takes every free block."""
        chunk = b"\0" * 65536
        with self.filler.open("wb", buffering=0) as out:
            try:
                while out.write(chunk):
                    pass
            except OSError as err:
                assert err.errno == errno.ENOSPC, err

    def free(self, _pid: int) -> None:
        self.filler.unlink()

    def cap(self, _pid: int) -> None:
        """The spool alone may fill the 1 MiB."""

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.mountpoint)], check=False)


class FileSizeLimit:
    """``RLIMIT_FSIZE`` set on the running eventd: a write that would grow a
    file past it fails with EFBIG (Python ignores SIGXFSZ), as on a full disk.
    eventd's stderr is a file too, so the scenario logs at ``error`` level."""

    log_level = "error"
    CAP_BYTES = 256 * 1024

    def __init__(self, directory: Path) -> None:
        self.spool_dir = directory / "spool"
        self._saved: tuple[int, int] | None = None

    def fill(self, pid: int) -> None:
        """No file may grow at all."""
        self._limit(pid, 0)

    def free(self, pid: int) -> None:
        assert self._saved is not None
        resource.prlimit(pid, resource.RLIMIT_FSIZE, self._saved)

    def cap(self, pid: int) -> None:
        """A spool segment may grow to ``CAP_BYTES``, then the "disk" is full."""
        self._limit(pid, self.CAP_BYTES)

    def _limit(self, pid: int, size: int) -> None:
        self._saved = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (size, self._saved[1]))

    def close(self) -> None:
        pass
