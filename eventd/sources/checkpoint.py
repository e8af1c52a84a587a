"""The audit log tailer's read position, persisted so a restart resumes there.

A position names a file by device and inode *and* by a fingerprint of its
first bytes: inodes are reused once a rotated backup is compressed or
pruned, and a gzip backup has a new inode but the same content.  The offset
counts bytes of the file's content (decompressed for ``.gz`` backups) and
always sits on a line boundary.

The file is replaced atomically (temporary file, fsync, rename, fsync of the
directory): after a crash at any point it holds either the previous or the
new position, never a mix.  A leftover temporary file is simply overwritten
by the next save and never read.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import structlog

log = structlog.get_logger(__name__)

VERSION = 1


def fingerprint(head: bytes) -> str:
    """The fingerprint of a file whose content starts with ``head``."""
    return hashlib.sha256(head).hexdigest()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A position in one file, and enough to recognise that file again."""

    #: The name the file had when it was opened: for humans, never used to find it.
    path: str
    device: int
    inode: int
    #: Bytes of content before the next line to read.
    offset: int
    #: ``fingerprint()`` of the first ``fingerprint_bytes`` bytes of the content.
    fingerprint: str
    fingerprint_bytes: int
    #: Modification time of a plain file, rotation time of a gzip backup: no
    #: newer backup was rotated before it, which bounds the search for the
    #: files to read next when this one is gone.
    mtime_ns: int

    def same_content(self, head: bytes) -> bool:
        """True if a file starting with ``head`` starts like this one did."""
        n = self.fingerprint_bytes
        return len(head) >= n and fingerprint(head[:n]) == self.fingerprint


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used."""


def load_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint stored at ``path``, None if there is none.

    Raises ``CheckpointError`` for a file that is not a checkpoint of ours
    and ``OSError`` when it cannot be read.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not JSON ({err})") from None
    if not isinstance(obj, dict) or obj.get("version") != VERSION:
        raise CheckpointError(f"{path}: not a version {VERSION} checkpoint")
    try:
        cp = Checkpoint(
            path=_str(obj, "path"),
            device=_int(obj, "device"),
            inode=_int(obj, "inode"),
            offset=_int(obj, "offset"),
            fingerprint=_str(obj, "fingerprint"),
            fingerprint_bytes=_int(obj, "fingerprint_bytes"),
            mtime_ns=_int(obj, "mtime_ns"),
        )
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: {err}") from None
    if cp.offset < 0 or cp.fingerprint_bytes < 0:
        raise CheckpointError(f"{path}: negative offset or fingerprint length")
    return cp


def _int(obj: dict[str, object], key: str) -> int:
    value = obj[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{key} is not an integer")
    return value


def _str(obj: dict[str, object], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} is not a string")
    return value


def write_checkpoint(path: Path, cp: Checkpoint) -> None:
    """Replace the checkpoint at ``path`` atomically and durably."""
    data = orjson.dumps({"version": VERSION, **asdict(cp)})
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    # The rename itself is durable only once the directory is synced.
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class CheckpointStore:
    """One checkpoint file, saved from worker threads.

    Saves carry a sequence number (when the position was reached); a save
    that arrives after a newer one (two threads racing at shutdown) is
    ignored, so the stored position never moves backwards within a process.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._saved: Checkpoint | None = None
        self._seq = -1

    def load(self) -> Checkpoint | None:
        """The stored position; None (logged) when absent or unusable."""
        try:
            cp = load_checkpoint(self.path)
        except (CheckpointError, OSError) as err:
            log.error("audit_log_checkpoint_unusable", checkpoint=str(self.path), error=str(err))
            return None
        with self._lock:
            self._saved = cp
        return cp

    def save(self, cp: Checkpoint, seq: int) -> bool:
        """Persist ``cp`` reached at ``seq``; False if it was not newer."""
        with self._lock:
            if seq <= self._seq or cp == self._saved:
                return False
            if not self.path.parent.exists():
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_checkpoint(self.path, cp)
            self._saved, self._seq = cp, seq
            return True
