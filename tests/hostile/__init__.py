"""Hostile-input tests: nothing a client or a file sends may crash, hang or
bloat eventd.

Complexity is asserted on work done, never on wall-clock time (which depends
on the machine's load; timings belong in ``bench/``): ``at_most_steps``
counts the function calls, Python and C, that a block makes and fails when
they exceed a bound derived from the input's size, so a regression to
quadratic or exponential work fails on any machine, fast or slow.  What it
cannot see is work inside one C call (a regular expression backtracking);
those inputs are bounded in length before they reach a pattern.

Hangs are guarded by pytest-timeout (``HANG_GUARD`` seconds for a whole
test, set per module): generous, it measures nothing, it only turns a stuck
run into a report.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

#: Seconds a hostile test may run before pytest-timeout reports it as hung.
HANG_GUARD = 600


class TooMuchWork(AssertionError):
    """The code under test made more calls than its input's size allows."""


@dataclass(slots=True)
class Steps:
    count: int = 0


def linear(size: int, per_unit: int = 20, base: int = 200_000) -> int:
    """A step bound linear in ``size``: ``per_unit`` calls per byte or item,
    plus ``base`` for fixed costs (loading a rule set, building an event)."""
    return base + per_unit * size


@contextlib.contextmanager
def at_most_steps(limit: int) -> Iterator[Steps]:
    """Count the calls made inside the block; raise ``TooMuchWork`` past ``limit``.

    Also when the block raises (the documented error may come only after
    unbounded work), so it can sit inside ``pytest.raises``.
    """
    steps = Steps()

    def profile(_frame: FrameType, event: str, _arg: Any) -> None:
        if event == "call" or event == "c_call":
            steps.count += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield steps
    finally:
        sys.setprofile(previous)
        if steps.count > limit:
            raise TooMuchWork(f"{steps.count} calls, more than the {limit} the input's size allows")
