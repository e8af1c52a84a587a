"""Garbage-collector settings for long scans and the daemon.

eventd's per-event objects (decoded JSON, field caches) are acyclic and
freed by reference counting; the collector only has to find rare cycles.
Left at its defaults it runs a young collection every 700 allocations and
keeps re-walking the long-lived heap (rules, compiled closures, the dedup
table), which cost 7-50 % of throughput in the benchmarks.  So: freeze what
exists after start-up (it lives as long as the process) and collect the
young generation less often.
"""

from __future__ import annotations

import gc

#: Allocations between young-generation collections (CPython's default: 700).
YOUNG_THRESHOLD = 50_000


def tune_after_startup(*, collect: bool = True) -> None:
    """``collect=False`` freezes without a full collection first: for a
    short command (``eventd scan``) the few cycles start-up leaves behind
    cost less than the 4-5 ms a full collection adds to every run."""
    if collect:
        gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
