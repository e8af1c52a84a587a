"""Secrets kept in files (mounted Kubernetes Secrets), re-read when they change.

Read once at construction, so a missing or empty file stops the daemon at
start-up with the config key named; then re-read whenever the file's
mtime, size or inode change, so a rotated token or URL is used without a
restart.  If the file vanishes or is empty for a moment (mid-rotation), the
last good value stays in force.  Surrounding whitespace is stripped: secret
files usually end with a newline nobody meant.  Values are never logged.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from eventd.config import ConfigError

log = structlog.get_logger(__name__)


class SecretFile:
    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._value = ""
        self._unreadable = False
        try:
            self._refresh()
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or type(err).__name__
            raise ConfigError(key, f"cannot read secret file {path}: {reason}") from None
        if not self._value:
            raise ConfigError(key, f"secret file {path} is empty")

    def value(self) -> str:
        """The current secret (the last good one while the file is unreadable)."""
        try:
            self._refresh()
            self._unreadable = False
        except (OSError, UnicodeDecodeError) as err:
            if not self._unreadable:  # once per outage, not once per use
                log.warning("secret_file_unreadable", path=str(self.path), error=type(err).__name__)
            self._unreadable = True
        return self._value

    def _refresh(self) -> None:
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        text = self.path.read_text(encoding="utf-8").strip()
        self._stamp = stamp
        if text:
            self._value = text
        else:
            log.warning("secret_file_empty", path=str(self.path))
