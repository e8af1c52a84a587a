"""RFC 3339 timestamps <-> integer nanoseconds since the epoch.

Audit events carry microsecond ``MicroTime`` values and Falco alerts carry
nanoseconds; Python's ``datetime`` stops at microseconds, so the fraction is
parsed by hand and everything internal is an ``int`` of nanoseconds.
"""

from __future__ import annotations

import calendar
import re
import time
from functools import lru_cache

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9})\d*)?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))",
    re.ASCII,
)


def rfc3339_to_ns(text: object) -> int:
    """Parse ``2024-05-01T10:00:00.123456Z`` (any offset) to epoch nanoseconds.

    Raises ``ValueError`` naming the text when it is not RFC 3339.
    """
    # Fast path for the shape every audit event has (``...:SS.ffffffZ``):
    # an alert needs its event's time, and events of one log share few
    # distinct seconds, so the date part is parsed once per second.
    if type(text) is str and len(text) == 27 and text[26] == "Z" and text[19] == ".":
        fraction = text[20:26]
        if fraction.isascii() and fraction.isdigit():
            seconds = _utc_seconds(text[:19])
            if seconds is not None:
                return seconds + int(fraction) * 1000
    m = _RFC3339.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 60):
        raise ValueError(f"timestamp out of range: {text!r}")
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if m.group(9):
        offset = (int(m.group(10)) * 60 + int(m.group(11))) * 60
        seconds -= offset if m.group(9) == "+" else -offset
    fraction = m.group(7) or ""
    return seconds * 1_000_000_000 + int(fraction.ljust(9, "0") or 0)


@lru_cache(maxsize=1024)
def _utc_seconds(prefix: str) -> int | None:
    """Epoch nanoseconds of a whole second ``YYYY-MM-DDTHH:MM:SS`` (UTC), or
    None when it is not valid (the caller then takes the full path, whose
    error names the whole text)."""
    try:
        return rfc3339_to_ns(prefix + "Z")
    except ValueError:
        return None


@lru_cache(maxsize=1024)
def _second_texts(seconds: int) -> tuple[str, str]:
    """``YYYY-MM-DDTHH:MM:SS`` and ``HH:MM:SS`` of an epoch second (UTC):
    formatted once per second, since every alert prints both."""
    parts = time.gmtime(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", parts), time.strftime("%H:%M:%S", parts)


def ns_to_rfc3339(ns: int) -> str:
    """Falco's JSON ``time``: ``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`` in UTC."""
    seconds, frac = divmod(ns, 1_000_000_000)
    return f"{_second_texts(seconds)[0]}.{frac:09d}Z"


def ns_to_clock(ns: int) -> str:
    """Falco's output prefix time: ``HH:MM:SS.nnnnnnnnn`` in UTC."""
    seconds, frac = divmod(ns, 1_000_000_000)
    return f"{_second_texts(seconds)[1]}.{frac:09d}"


def now_ns() -> int:
    return time.time_ns()
