"""The cached timestamp paths give what the plain parse and format give.

``rfc3339_to_ns`` takes a fast path for audit events' shape
(``YYYY-MM-DDTHH:MM:SS.ffffffZ``) that parses each distinct second once, and
``ns_to_rfc3339`` / ``ns_to_clock`` format each distinct second once (issue
15: an alert needs all three).  These properties check the cached answers
against a reference written straight from the format, on hostile text too.
"""

from __future__ import annotations

import calendar
import time
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventd.events.timestamps import ns_to_clock, ns_to_rfc3339, rfc3339_to_ns

DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=1)
#: Characters that look like digits to ``str.isdigit`` but are not ASCII.
LOOKALIKES = st.sampled_from(["\u0661", "\u00b2", "\uff11", "a", " ", "+", "_"])


def _reference_ns(text: str) -> int:
    """The value of ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, computed independently."""
    seconds = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1_000_000_000 + int(text[20:26]) * 1000


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1)))
def test_fast_path_matches_reference(moment: datetime) -> None:
    text = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert len(text) == 27
    assert rfc3339_to_ns(text) == _reference_ns(text)


@given(st.lists(st.one_of(DIGITS, LOOKALIKES), min_size=6, max_size=6))
def test_fraction_must_be_ascii_digits(chars: list[str]) -> None:
    text = "2024-05-01T10:00:00." + "".join(chars) + "Z"
    if all(c.isascii() and c.isdigit() for c in chars):
        assert rfc3339_to_ns(text) == _reference_ns(text)
    else:
        with pytest.raises(ValueError, match="not an RFC 3339 timestamp"):
            rfc3339_to_ns(text)


@pytest.mark.parametrize(
    "text",
    [
        "2024-13-01T10:00:00.123456Z",  # month out of range
        "2024-05-01T24:00:00.123456Z",  # hour out of range
        "2024-05-01X10:00:00.123456Z",  # bad separator
        "2024-05-01T10:00:0\u0661.123456Z",  # non-ASCII digit in the seconds
    ],
)
def test_invalid_text_keeps_its_error(text: str) -> None:
    """The error names the whole text, as the plain parse's does, even when
    the fast path was tried first."""
    with pytest.raises(ValueError, match="timestamp") as err:
        rfc3339_to_ns(text)
    assert repr(text) in str(err.value)


@given(st.integers(min_value=-(10**18), max_value=4 * 10**18))
def test_formatting_matches_reference(ns: int) -> None:
    seconds, frac = divmod(ns, 1_000_000_000)
    parts = time.gmtime(seconds)
    assert ns_to_rfc3339(ns) == time.strftime("%Y-%m-%dT%H:%M:%S", parts) + f".{frac:09d}Z"
    assert ns_to_clock(ns) == time.strftime("%H:%M:%S", parts) + f".{frac:09d}"


def test_round_trip_of_a_formatted_time() -> None:
    ns = 1_714_557_600_123_456_000
    assert rfc3339_to_ns(ns_to_rfc3339(ns)) == ns
