"""structlog set-up: one record per line on stderr, JSON or for humans.

stdout belongs to alerts (the default sink), so logs never go there.  The
format is JSON (one object per line, for log collectors) unless stderr is a
terminal, where it is a console line (time, level, event, key=value);
``--log-format`` / ``log_format`` choose either explicitly.  Keys are
consistent across modules: ``event`` (what happened, snake_case),
``level``, ``timestamp``, then facts such as ``source``,
``address``, ``count``, ``reason``.  Event bodies are never logged.

The Kafka client library (aiokafka) logs every failed connection attempt,
many a second while a broker is down.  Its records are folded into eventd's
own lines (``KafkaLogFolder``): one warning when a client starts failing or
a new kind of error appears, a summary with the count every ``SUMMARY_SECONDS`` while
it goes on, one line when it recovers; the first error is also counted at
once in the client's failure metric.

Configuration secrets never reach the logs, whatever a library puts into an
exception.  Tracebacks list frames without their local variables (a frame
of the HTTP client holds the token, the URL's password and its query).  A
last processor, run on every record (ours and the libraries'), replaces
the values registered with ``never_log`` (what secret files hold, URL
credentials) and hides userinfo, path and query of any URL quoted in text.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

from eventd.redact_url import HIDDEN, redact_urls_in

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


#: Libraries whose own log records are noise per request, and may quote
#: bytes of what a client sent (aiohttp's parse errors): errors only.
_QUIET_LIBRARIES = ("aiohttp.server", "aiohttp.access", "grpc")
#: Loggers of the Kafka client library, folded by ``KafkaLogFolder``.
KAFKA_LOGGERS = ("aiokafka", "kafka")

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


def resolve_format(fmt: str, stream: Any = None) -> Literal["json", "console"]:
    """``auto``: console on a terminal, JSON otherwise (a pipe, a file, a pod log)."""
    if fmt == "json":
        return "json"
    if fmt == "console":
        return "console"
    stream = sys.stderr if stream is None else stream
    try:
        return "console" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # closed or not a real stream
        return "json"


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    rendering = resolve_format(fmt)
    shared: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    exceptions: Processor
    if rendering == "console":
        # Tracebacks as text, never with local variables (see the module doc).
        exceptions = structlog.processors.format_exc_info
        renderer = structlog.dev.ConsoleRenderer(colors=_colors(), sort_keys=False)
    else:
        exceptions = structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, exceptions, scrub_event, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library: render their records as
    # the same lines, without tracebacks (one line per record).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _drop_traceback,
                scrub_event,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(_LEVELS[level], logging.ERROR))
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    # The Kafka client's warnings and errors are folded; at debug level its
    # own records are shown instead, as they come (and still counted).
    folder = KafkaLogFolder(passthrough=level == "debug")
    for name in KAFKA_LOGGERS:
        kafka_logger = logging.getLogger(name)
        kafka_logger.handlers[:] = [folder]
        kafka_logger.propagate = False
        kafka_logger.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def _colors() -> bool:
    """Colours only on a terminal (``--log-format console`` into a file stays plain)."""
    try:
        return sys.stderr.isatty() and sys.platform != "win32"
    except (AttributeError, ValueError):
        return False


def _drop_traceback(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    event.pop("exc_info", None)
    event.pop("exception", None)
    return event


def scrub_event(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
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


# ------------------------------------------------------- Kafka client records

#: While a client keeps failing, one summary line per this many seconds.
SUMMARY_SECONDS = 60.0
#: An error after this long without one starts a new failure (a new line).
QUIET_SECONDS = 60.0

flog = structlog.get_logger("eventd.kafka")


@dataclass(eq=False)
class KafkaClientLog:
    """One Kafka client's fold state: its name in log lines, and what to do
    at the first error of a failure (count it in eventd's metrics)."""

    client: str
    on_failure: Callable[[], None] | None = None
    failing: bool = False
    #: Errors folded since the last line, the last one's text and when.
    folded: int = 0
    last_error: str = ""
    #: The kinds of error seen in this failure (message templates): a kind
    #: not seen yet is a line; kinds that alternate (connect, metadata) are not.
    kinds: set[str] = field(default_factory=set)
    last_seen: float = 0.0
    last_line: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(
        self, kind: str, message: str, logger: str, now: float | None = None, *, quiet: bool = False
    ) -> None:
        """A warning or error of the client library.  ``quiet``: the record is
        shown as it is (debug level), so only count, write no folded line."""
        now = time.monotonic() if now is None else now
        seconds = 0.0
        with self._lock:
            new_failure = not self.failing or now - self.last_seen > QUIET_SECONDS
            if new_failure:
                self.kinds.clear()
            changed = not new_failure and kind not in self.kinds
            self.kinds.add(kind)
            self.last_seen, self.last_error = now, message
            if new_failure or changed:
                folded, self.folded = self.folded, 0
                self.failing, self.last_line = True, now
            elif now - self.last_line >= SUMMARY_SECONDS:
                folded, self.folded = self.folded + 1, 0
                seconds = round(now - self.last_line, 1)
                self.last_line = now
            else:
                self.folded += 1
                return
        if new_failure and self.on_failure is not None:
            self.on_failure()
        if quiet:
            return
        if new_failure:
            flog.warning("kafka_client_failing", client=self.client, error=message, library_logger=logger)
        elif changed:
            flog.warning(
                "kafka_client_new_error",
                client=self.client,
                error=message,
                library_logger=logger,
                folded=folded,
            )
        else:
            flog.warning(
                "kafka_client_still_failing",
                client=self.client,
                errors=folded,
                seconds=seconds,
                last_error=message,
            )

    def recovered(self) -> None:
        """The client works again (its owner saw a success): one line."""
        with self._lock:
            if not self.failing:
                return
            self.failing, folded, self.folded = False, self.folded, 0
            self.kinds.clear()
        flog.info("kafka_client_recovered", client=self.client, folded=folded)


#: The client whose tasks are running: set around the creation of a client
#: (``kafka_client_context``), inherited by the tasks the library starts.
_current_client: contextvars.ContextVar[KafkaClientLog | None] = contextvars.ContextVar(
    "eventd_kafka_client", default=None
)
_unnamed = KafkaClientLog("kafka")


@contextmanager
def kafka_client_context(client: KafkaClientLog) -> Iterator[None]:
    """Records the library logs from tasks created inside this block (the
    client's background tasks copy the context) are folded under ``client``."""
    token = _current_client.set(client)
    try:
        yield
    finally:
        _current_client.reset(token)


class KafkaLogFolder(logging.Handler):
    """Folds the Kafka client library's records into eventd's own lines."""

    def __init__(self, passthrough: bool = False) -> None:
        super().__init__(logging.DEBUG)
        self._passthrough = passthrough

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._passthrough:
                for handler in logging.getLogger().handlers:
                    if record.levelno >= handler.level:
                        handler.handle(record)
            if record.levelno < logging.WARNING:
                return
            client = _current_client.get() or _unnamed
            # The message template (before %-formatting) is the error's kind:
            # "Unable connect to node with id %s: %s" stays one kind whatever node.
            client.record(str(record.msg), scrub(record.getMessage()), record.name, quiet=self._passthrough)
        except Exception:  # a log handler must never raise into the library
            self.handleError(record)
