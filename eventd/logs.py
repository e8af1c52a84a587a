"""structlog set-up: one JSON object per line on stderr.

stdout belongs to alerts (the default sink), so logs never go there.  Keys
are consistent across modules: ``event`` (what happened, snake_case),
``level``, ``timestamp``, then facts such as ``source``,
``address``, ``count``, ``reason``.  Event bodies are never logged.

Configuration secrets never reach the logs, whatever a library puts into an
exception.  Tracebacks list frames without their local variables (a frame
of the HTTP client holds the token, the URL's password and its query).  A
last processor, run on every record (ours and the libraries'), replaces
the values registered with ``never_log`` (what secret files hold, URL
credentials) and hides userinfo, path and query of any URL quoted in text.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import structlog
from structlog.tracebacks import ExceptionDictTransformer

from eventd.redact_url import HIDDEN, redact_urls_in

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


#: Libraries whose own log records are noise per request, and may quote
#: bytes of what a client sent (aiohttp's parse errors): errors only.
_QUIET_LIBRARIES = ("aiohttp.server", "aiohttp.access", "aiokafka", "grpc")

#: Registered secrets shorter than this are not searched for in log text:
#: hiding every "abc" in every record would garble the logs.  Such short
#: values are still kept out by the other means (no locals, URL redaction).
MIN_SCRUBBED_LENGTH = 6

_never_logged: tuple[str, ...] = ()
_registry_lock = threading.Lock()


def never_log(*values: str) -> None:
    """Register secret values to be replaced by ``***`` wherever a log record
    would carry them (an exception message quoting a header, a URL...)."""
    global _never_logged
    fresh = [v for v in values if len(v) >= MIN_SCRUBBED_LENGTH]
    if not fresh:
        return
    with _registry_lock:
        known = set(_never_logged).union(fresh)
        # Longest first: a secret containing another is replaced whole.
        _never_logged = tuple(sorted(known, key=len, reverse=True))


def scrub(text: str) -> str:
    """``text`` without registered secrets and with every URL in it redacted."""
    for secret in _never_logged:
        if secret in text:
            text = text.replace(secret, HIDDEN)
    return redact_urls_in(text)


def configure_logging(level: str = "info") -> None:
    shared = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            scrub_event,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library: render their records as
    # the same JSON lines, without tracebacks (one line per record).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _drop_traceback,
                scrub_event,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(_LEVELS[level], logging.ERROR))
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)


def _drop_traceback(_logger: object, _name: str, event: dict) -> dict:  # type: ignore[type-arg]
    event.pop("exc_info", None)
    event.pop("exception", None)
    return event


def scrub_event(_logger: object, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """The last processor before rendering: ``scrub`` applied to every value."""
    return {key: _scrubbed(value) for key, value in event.items()}


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {key: _scrubbed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(item) for item in value]
    # What the JSON renderer would print for any other object, scrubbed.
    return scrub(repr(value))
