"""structlog set-up: one JSON object per line on stderr.

stdout belongs to alerts (the default sink), so logs never go there.  Keys
are consistent across modules: ``event`` (what happened, snake_case),
``level``, ``timestamp``, then facts such as ``source``,
``address``, ``count``, ``reason``.  Event bodies are never logged.
"""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


#: Libraries whose own log records are noise per request, and may quote
#: bytes of what a client sent (aiohttp's parse errors): errors only.
_QUIET_LIBRARIES = ("aiohttp.server", "aiohttp.access", "aiokafka", "grpc")


def configure_logging(level: str = "info") -> None:
    shared = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.dict_tracebacks,
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
