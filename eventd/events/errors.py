"""Why input was rejected, as a value with a short reason code for counters."""

from __future__ import annotations


class DecodeError(ValueError):
    """Input that is not an event we understand.

    ``reason`` is a short, stable code (``json``, ``not_audit``, ``shape``,
    ``timestamp`` ...) used as a metrics label; ``str()`` is the full
    message for humans and never contains event bodies.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
