"""Start-up checks that sources and sinks run in their constructors.

A constructor must refuse what would fail later (a missing certificate, a
spool directory that is a file, a topic name Kafka refuses) with a
``ConfigError`` naming the key, and without side effects: nothing here
creates, writes or binds anything, so ``eventd run --check`` can construct
every source and sink and report exactly what ``eventd run`` would refuse.
Only reading is allowed (opening a file to see that it can be read).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from eventd.config import ClientTLS, ConfigError

#: The smallest ``spool_max_bytes`` accepted: below one page the spool holds
#: a handful of typical alerts (0.5-2 KiB each) and drops every larger one.
MIN_SPOOL_BYTES = 4096

#: Kafka's legal topic names (``[A-Za-z0-9._-]``, at most 249, not ``.``/``..``).
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


def readable_file(path: Path, key: str) -> None:
    """``path`` can be opened for reading and is not a directory (opened
    non-blocking, so a named pipe cannot hang start-up)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise ConfigError(key, f"cannot read {path}: {err.strerror or err}") from None
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise ConfigError(key, f"{path} is a directory, expected a file")
    finally:
        os.close(fd)


def input_file(path: Path, key: str, *, must_exist: bool) -> None:
    """A file an input reads: readable when it exists, never a directory.
    A followed file may appear later (Falco or the API server creates it),
    so only ``must_exist`` refuses a missing one."""
    if must_exist or path.exists():
        readable_file(path, key)


def client_tls_files(tls: ClientTLS | None, key: str) -> None:
    """Every file a client TLS section names is readable; the key names the file's setting."""
    if tls is None:
        return
    for name in ("ca", "cert", "key"):
        path = getattr(tls, name)
        if path is not None:
            readable_file(path, f"{key}.{name}")


def writable_directory(path: Path, key: str) -> None:
    """``path`` is a writable directory, or can be created as one: its nearest
    existing ancestor is a writable directory.  Nothing is created."""
    if path.exists() or path.is_symlink():
        if path.is_file():
            raise ConfigError(key, f"{path} is a file, expected a directory")
        if not path.is_dir():
            raise ConfigError(key, f"{path} is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(key, f"{path} is not writable")
        return
    ancestor = next(p for p in path.absolute().parents if p.exists())
    if not ancestor.is_dir():
        raise ConfigError(key, f"cannot create {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(key, f"cannot create {path}: {ancestor} is not writable")


def spool_settings(directory: Path, max_bytes: int, key: str) -> None:
    """A spool can live in ``directory`` and hold more than a few alerts."""
    if max_bytes < MIN_SPOOL_BYTES:
        raise ConfigError(
            f"{key}.spool_max_bytes", f"{max_bytes} is too small, the minimum is {MIN_SPOOL_BYTES}"
        )
    writable_directory(directory, f"{key}.spool_dir")


def kafka_topic(topic: str, key: str) -> None:
    """A legal Kafka topic name: a bad one would fail every request forever."""
    if not _TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
        raise ConfigError(key, f"invalid Kafka topic name {topic!r} (letters, digits, '.', '_', '-')")
