"""Parsed rules files, kept on disk by content, for the command-line tools.

Why: ``eventd scan`` and ``eventd rules check`` spent ~15 ms of every start
importing PyYAML and parsing the rule packs, a sixth of their start-up, and
the people who run them run them again and again (a pre-commit hook, a loop
over log files).  Like Python's ``.pyc`` files, the tree ``yamlsrc`` builds
from a text is kept in a per-user directory, named by the BLAKE2b-256 hash of the
text, and read back with msgspec against the node types, so a damaged,
truncated or foreign file is a miss, never a wrong tree of the wrong shape.

* Only the command-line tools use it (``enabled``); the daemon parses.
* Where: ``$EVENTD_CACHE_DIR``, else ``$XDG_CACHE_HOME/eventd``, else
  ``~/.cache/eventd``; ``EVENTD_CACHE_DIR=off`` turns it off.  The directory
  is created private (0700), entries are written whole (a temporary file
  renamed), and it keeps the newest ``MAX_FILES`` entries.
* Not kept: a text that failed to parse (its error is reported again), a
  tree sharing nodes through YAML aliases (written out, a few aliases can
  stand for billions of nodes) and anything over ``MAX_BYTES``.
* A directory that is not the user's own, or that others can write to, is
  not used at all (it could hold planted trees of other rules).  What is in
  the user's own private directory is trusted, as Python trusts ``.pyc``
  files there: whoever can write it can change the rules files too.
* Any error reading or writing is a miss, silently: a read-only home or a
  full disk costs the parse, nothing else.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

try:  # CPython's built-in BLAKE2: hashlib's import (OpenSSL) costs every start ~3 ms
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - a Python built without it
    from hashlib import blake2b

if TYPE_CHECKING:
    from eventd.engine.yamlsrc import Node

#: Part of every entry's name: bump it when what ``yamlparse`` builds changes.
FORMAT = 1
MAX_FILES = 64
MAX_BYTES = 8 << 20
OFF = "off"
#: Not a daemon setting (``config.NOT_SETTINGS``).
ENV_NAME = "EVENTD_CACHE_DIR"

#: The cache ``yamlsrc.load_documents`` uses now, if any (see ``enabled``).
ACTIVE: RulesCache | None = None


class RulesCache:
    """Trees of rules texts in ``directory``, one file per distinct text."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._decoder: msgspec.msgpack.Decoder[Any] | None = None
        self._trusted: bool | None = None

    def trusted(self) -> bool:
        """Whether entries may be read from the directory: it is ours and
        nobody else can write to it.  A shared one (``EVENTD_CACHE_DIR=/tmp/x``
        made by another user, or left group- or world-writable) could hold
        planted trees of other rules; then the cache is not used at all."""
        if self._trusted is None:
            try:
                st = os.stat(self.directory)
            except OSError:
                return False  # not there (yet): nothing to read
            self._trusted = st.st_uid == os.geteuid() and not st.st_mode & 0o022
        return self._trusted

    def _path(self, text: str) -> Path | None:
        try:
            data = text.encode()
        except UnicodeEncodeError:  # a lone surrogate (only given in-process): never cached
            return None
        digest = blake2b(data, digest_size=32).hexdigest()
        return self.directory / f"rules-{FORMAT}-{digest}.msgpack"

    def load(self, text: str) -> list[Node] | None:
        """The tree kept for ``text``, or ``None``."""
        path = self._path(text)
        if path is None or not self.trusted():
            return None
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_BYTES + 1)
        except OSError:
            return None
        if len(data) > MAX_BYTES:
            return None
        if self._decoder is None:
            from eventd.engine.yamlsrc import Node

            self._decoder = msgspec.msgpack.Decoder(list[Node])
        try:
            docs: list[Node] = self._decoder.decode(data)
        except (msgspec.DecodeError, RecursionError):
            return None
        return docs

    def save(self, text: str, docs: list[Node]) -> None:
        """Keep ``docs`` as the tree of ``text`` (best effort)."""
        path = self._path(text)
        if path is None:
            return
        try:
            data = msgspec.msgpack.encode(docs)
        except (msgspec.EncodeError, RecursionError):
            return
        if len(data) > MAX_BYTES:
            return
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._trusted = None  # made just now, perhaps
            if not self.trusted():
                return
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(temporary, path)
            self._prune()
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()

    def _prune(self) -> None:
        """Drop the oldest entries past ``MAX_FILES``."""
        entries = list(self.directory.glob("rules-*.msgpack"))
        if len(entries) <= MAX_FILES:
            return
        entries.sort(key=lambda p: p.stat().st_mtime_ns)
        for old in entries[: len(entries) - MAX_FILES]:
            with contextlib.suppress(OSError):
                old.unlink()


def directory_from(environ: Mapping[str, str]) -> Path | None:
    """Where the cache lives by the environment, ``None`` when it is off."""
    chosen = environ.get(ENV_NAME)
    if chosen is not None:
        return None if chosen in ("", OFF) else Path(chosen)
    base = environ.get("XDG_CACHE_HOME") or (str(Path.home() / ".cache") if "HOME" in environ else "")
    return Path(base) / "eventd" if base else None


@contextlib.contextmanager
def enabled(environ: Mapping[str, str] = os.environ) -> Iterator[RulesCache | None]:
    """Use the cache (if the environment allows it) while the block runs."""
    global ACTIVE
    directory = directory_from(environ)
    previous, ACTIVE = ACTIVE, None if directory is None else RulesCache(directory)
    try:
        yield ACTIVE
    finally:
        ACTIVE = previous
