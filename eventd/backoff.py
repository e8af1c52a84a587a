"""Capped exponential backoff with jitter, for every retry in eventd.

The n-th consecutive failure waits a uniformly random time in
``[c/2, c]`` with ``c = min(maximum, initial * 2**n)``: the wait doubles per
failure up to ``maximum`` (so it really grows), and the random half spreads
reconnecting clients apart so a restarted broker, Falco or Alertmanager is
not hit by all of them at once.
"""

from __future__ import annotations

import random


def backoff_ceiling(failures: int, initial: float, maximum: float) -> float:
    # min() on the exponent first: 2**failures overflows floats after ~1000 failures.
    return min(maximum, initial * 2.0 ** min(failures, 64))


def backoff_delay(failures: int, initial: float, maximum: float, rng: random.Random | None = None) -> float:
    """The delay after ``failures`` consecutive failures (0 = the first one)."""
    ceiling = backoff_ceiling(failures, initial, maximum)
    return (rng or random).uniform(ceiling / 2, ceiling)


class Backoff:
    """The same, counting failures itself: ``next_delay()`` then ``reset()`` on success."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = max(initial, maximum)
        self._rng = rng or random.Random()
        self.failures = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return backoff_ceiling(self.failures, self.initial, self.maximum)

    def next_delay(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        delay = backoff_delay(self.failures, self.initial, self.maximum, self._rng)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """After a healthy connection the next failure starts small again."""
        self.failures = 0
