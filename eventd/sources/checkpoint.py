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

The file carries a CRC32 of its fields: a flipped digit in ``offset`` would
otherwise be a valid position that silently skips (or repeats) data.  Files
written before the CRC existed (no ``crc32`` key) are still accepted; any
key we do not know is refused, so damage cannot hide the CRC by renaming it.
A checkpoint that cannot be used (garbage, empty, wrong CRC, a directory,
unreadable) is reported by ``CheckpointStore.load`` as ``Unusable`` rather
than as "no checkpoint": the tailer must then re-read, not start at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

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


_FIELDS = frozenset(f.name for f in fields(Checkpoint))
_KEYS = _FIELDS | {"version", "crc32"}


def _crc(body: dict[str, object]) -> int:
    """CRC32 of the checkpoint's fields, independent of their order in the file."""
    return zlib.crc32(orjson.dumps({k: body[k] for k in sorted(_FIELDS)}))


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used."""


#: Why a checkpoint was unusable: ``invalid`` (the content is not a
#: checkpoint of ours) or ``unreadable`` (a directory, no permission, I/O).
UnusableReason = Literal["invalid", "unreadable"]


@dataclass(frozen=True, slots=True)
class Unusable:
    """A checkpoint file exists but cannot be trusted; the data it covered
    must be read again (duplicates are dropped downstream, loss is not)."""

    reason: UnusableReason
    error: str
    #: Where the damaged file was moved so the next save can succeed (None
    #: if it could not be moved).
    moved_to: Path | None = None


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
    unknown = sorted(obj.keys() - _KEYS)
    if unknown:
        raise CheckpointError(f"{path}: unknown keys {unknown}")
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
    if "crc32" in obj and obj["crc32"] != _crc(obj):
        raise CheckpointError(f"{path}: CRC mismatch (damaged file)")
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
    body: dict[str, object] = asdict(cp)
    data = orjson.dumps({"version": VERSION, **body, "crc32": _crc(body)})
    tmp = _temporary(path)
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


def _move_aside(path: Path) -> Path | None:
    """Rename a damaged checkpoint to ``<name>.unusable`` (``.unusable.<n>`` if
    a directory of that name is in the way); None if it cannot be moved."""
    for n in range(10):
        target = path.with_name(f"{path.name}.unusable" + (f".{n}" if n else ""))
        with contextlib.suppress(OSError):  # e.g. a file cannot replace a directory: next name
            os.replace(path, target)
            return target
    return None


def _temporary(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


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

    def load(self) -> Checkpoint | Unusable | None:
        """The stored position; None when there is none (a first start).

        An unusable file is logged, moved aside (kept for a human, and out of
        the way of the next save, which could not replace a directory) and
        returned as ``Unusable``: the caller must not treat it as a first
        start, which would skip what was written while eventd was down.
        """
        tmp = _temporary(self.path)
        if os.path.isdir(tmp):  # a leftover file is overwritten by the next save; a directory is not
            moved = _move_aside(tmp)
            log.warning("audit_log_checkpoint_temp_moved", checkpoint=str(tmp), moved_to=str(moved))
        try:
            cp = load_checkpoint(self.path)
        except CheckpointError as err:
            return self._unusable("invalid", err)
        except OSError as err:
            return self._unusable("unreadable", err)
        with self._lock:
            self._saved = cp
        return cp

    def _unusable(self, reason: UnusableReason, err: Exception) -> Unusable:
        moved = _move_aside(self.path)
        log.warning(
            "audit_log_checkpoint_unusable",
            checkpoint=str(self.path),
            reason=reason,
            error=str(err),
            moved_to=str(moved) if moved else None,
        )
        return Unusable(reason, str(err), moved)

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
