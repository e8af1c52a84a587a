"""Hostile-input tests: nothing a client or a file sends may crash, hang or
bloat eventd.

``budget`` is the hang guard shared by the suite.  It does not measure
anything: it turns "still running after a generous time" into a failure
instead of a stuck test run, so a regression to exponential or unbounded
work is reported, not waited out.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


class Hang(Exception):
    """The code under test was still running when its budget ran out."""


@contextlib.contextmanager
def budget(seconds: float) -> Iterator[None]:
    """Raise ``Hang`` inside the block if it runs longer than ``seconds``.

    Uses ``SIGALRM``, so it works in the main thread only (where pytest and
    hypothesis run tests); pure-Python loops are interrupted between bytecodes.
    """

    def expired(_signum: int, _frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
