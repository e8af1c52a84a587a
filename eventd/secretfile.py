"""Secrets kept in files (mounted Kubernetes Secrets), re-read when they change.

Read once at construction, so a missing, empty or malformed file stops the
daemon at start-up with the config key named; then re-read whenever the
file's mtime, size or inode change, so a rotated token or URL is used
without a restart.  If the file vanishes, is empty or malformed for a
moment (mid-rotation, a bad edit), the last good value stays in force, a
warning names the key and ``eventd_secret_file_rejected_total`` counts it.

One trailing newline (``\\n`` or ``\\r\\n``) is dropped: secret files usually
end with one nobody meant.  Any other line break or control character is
refused: a value that goes into an HTTP header would make the HTTP client
raise (and its traceback print the header), or split the header.  Spaces
around the value are stripped.  Values are never logged, nor quoted in
errors; every value read is registered with ``logs.never_log`` so that no
library's exception message can carry it into the logs either.
"""

from __future__ import annotations

import os
import unicodedata
import weakref
from collections.abc import Callable
from pathlib import Path

import structlog
import yarl
from prometheus_client import Counter

from eventd.boundedfile import FileTooLarge, read_bounded
from eventd.config import ConfigError
from eventd.logs import never_log
from eventd.metrics import Metrics
from eventd.redact_url import http_url_problem, redact_url, url_secrets

#: Largest secret file read (tokens, keys, URLs are far smaller).
MAX_SECRET_BYTES = 64 * 1024

log = structlog.get_logger(__name__)

#: Checks a value beyond the common rules; raises ``ValueError`` with a
#: reason that must not quote the value.
Check = Callable[[str], None]

#: Unicode categories refused inside a secret: control characters (C0, DEL,
#: C1 including NEL) and the line and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})

_rejected_counters: weakref.WeakKeyDictionary[Metrics, Counter] = weakref.WeakKeyDictionary()


def clean_secret(text: str) -> str:
    """The secret in a file's text: one trailing newline dropped, surrounding
    spaces stripped; ``ValueError`` (naming no value) if anything else is wrong."""
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if any(unicodedata.category(c) in _REFUSED_CATEGORIES for c in text):
        raise ValueError("holds a line break or control character (only one trailing newline is allowed)")
    text = text.strip()
    if not text:
        raise EmptySecret("is empty")
    return text


def check_http_url(value: str) -> None:
    """A ``check`` for files that hold a URL (a Slack webhook)."""
    problem = http_url_problem(value)
    if problem is not None:
        raise ValueError(f"does not hold a usable URL: it {problem}")


def secret_url(url: str, key: str, *, bearer_token: bool) -> str:
    """``url`` from the config, checked at start; its userinfo and query are
    secrets (``user:password@``, ``?apikey=``), registered with ``never_log``.

    ``bearer_token``: a token file is configured too; the HTTP client refuses
    an ``Authorization`` header next to URL credentials, and would refuse it
    at the first alert, so it is refused here, at start.
    """
    never_log(*url_secrets(url))
    problem = http_url_problem(url)
    if problem is not None:
        raise ConfigError(key, f"{problem}: {redact_url(url)}")
    if bearer_token and (yarl.URL(url).raw_user is not None or yarl.URL(url).raw_password is not None):
        raise ConfigError(key, f"user:password@ cannot be combined with a token_file: {redact_url(url)}")
    return url


class EmptySecret(ValueError):
    """The file holds nothing (often a rotation caught half-way)."""


def rejected_counter(metrics: Metrics) -> Counter:
    """``eventd_secret_file_rejected_total`` on ``metrics``' registry (created once)."""
    counter = _rejected_counters.get(metrics)
    if counter is None:
        counter = Counter(
            "eventd_secret_file_rejected_total",
            "Re-reads of a secret file refused (unreadable, empty, malformed), by config key and "
            "reason; the last good value stays in force.",
            ["key", "reason"],
            registry=metrics.registry,
        )
        _rejected_counters[metrics] = counter
    return counter


class SecretFile:
    """One secret file, validated at start and on every change.

    ``key`` names the setting in errors and warnings; ``check`` adds rules
    of the value's own (a URL must be a URL); ``metrics`` gets the count of
    refused re-reads.
    """

    def __init__(
        self, path: Path, key: str, metrics: Metrics | None = None, *, check: Check | None = None
    ) -> None:
        self.path = path
        self.key = key
        self._check = check
        self._rejected = rejected_counter(metrics) if metrics is not None else None
        self._stamp: tuple[int, int, int] | None = None
        self._value = ""
        self._unreadable = False
        try:
            self._value = self._read() or ""
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(key, f"cannot read secret file {path}: {_reason(err)}") from None
        except ValueError as err:
            raise ConfigError(key, f"secret file {path} {err}") from None

    def value(self) -> str:
        """The current secret (the last good one while the file is unreadable or malformed)."""
        try:
            fresh = self._read()
            self._unreadable = False
        except (OSError, UnicodeDecodeError) as err:
            if not self._unreadable:  # once per outage, not once per use
                self._refused("unreadable", error=_reason(err))
            self._unreadable = True
        except EmptySecret as err:
            self._refused("empty", error=str(err))
        except ValueError as err:
            self._refused("malformed", error=str(err))
        else:
            if fresh is not None:
                self._value = fresh
        return self._value

    def _read(self) -> str | None:
        """The file's new value; None if it has not changed since the last
        read (the value is then not read again, nor judged again)."""
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return None
        try:  # /dev/zero or a runaway file must not be read until memory runs out
            raw = read_bounded(self.path, MAX_SECRET_BYTES).decode("utf-8")
        except FileTooLarge:
            raise ValueError(f"is larger than {MAX_SECRET_BYTES} bytes") from None
        # Judged once per change: a malformed file is refused (and counted) once.
        self._stamp = stamp
        never_log(raw, raw.strip(), *raw.splitlines())  # even a refused value is never logged
        value = clean_secret(raw)
        if self._check is not None:
            self._check(value)
        never_log(value)
        return value

    def _refused(self, reason: str, *, error: str) -> None:
        log.warning("secret_file_rejected", key=self.key, reason=reason, error=error, kept="last good value")
        if self._rejected is not None:
            self._rejected.labels(self.key, reason).inc()


def _reason(err: Exception) -> str:
    """An I/O error's reason without its text (which may quote the path and more)."""
    strerror = getattr(err, "strerror", None)
    return strerror if isinstance(strerror, str) and strerror else type(err).__name__
