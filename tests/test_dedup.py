"""The audit dedup table (``events/dedup.py``), driven directly with a moving clock.

The webhook and the tailer only ever see it through long waits; here the
clock is a number the test moves, so the window's edges, the entry cap and
the claims of batches in flight are exact.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.events.dedup import KEY_BYTES, RecentKeys, audit_key, drop_duplicates, new_events, new_items
from eventd.events.model import FALCO, K8S_AUDIT, Event


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def key(n: int) -> bytes:
    return n.to_bytes(KEY_BYTES, "big")


def audit(audit_id: object, stage: object = "ResponseComplete", **doc: object) -> Event:
    return Event(K8S_AUDIT, {"auditID": audit_id, "stage": stage, **doc})


# ----------------------------------------------------------------- the window


def test_an_entry_lives_exactly_window_seconds() -> None:
    clock = Clock()
    recent = RecentKeys(300, clock=clock)
    assert not recent.seen(key(1))
    clock.now += 299.999
    assert recent.seen(key(1))  # inside the window: a duplicate (and not refreshed)
    clock.now = 1000.0 + 300  # the window's end instant is outside it
    assert not recent.known(key(1))
    assert len(recent) == 0  # expired entries are gone, not just hidden
    assert not recent.seen(key(1))  # new again, and recorded anew
    clock.now += 1
    assert recent.seen(key(1))


def test_seeing_a_duplicate_does_not_extend_its_window() -> None:
    clock = Clock()
    recent = RecentKeys(10, clock=clock)
    recent.seen(key(1))
    for _ in range(9):
        clock.now += 1
        assert recent.seen(key(1))
    clock.now += 1  # 10 s after the first sighting
    assert not recent.seen(key(1))


def test_expiry_is_oldest_first_and_keeps_younger_entries() -> None:
    clock = Clock()
    recent = RecentKeys(10, clock=clock)
    for n in range(5):
        recent.seen(key(n))
        clock.now += 3
    # now = 1015: keys recorded at 1000 and 1003 are out, 1006, 1009, 1012 in
    assert [recent.known(key(n)) for n in range(5)] == [False, False, True, True, True]
    assert len(recent) == 3


def test_the_table_is_capped_oldest_first() -> None:
    clock = Clock()
    recent = RecentKeys(300, max_entries=3, clock=clock)
    for n in range(5):
        assert not recent.seen(key(n))
        clock.now += 1
    assert len(recent) == 3
    assert [recent.known(key(n)) for n in range(5)] == [False, False, True, True, True]
    assert not recent.seen(key(0))  # evicted: new again, and it evicts key 2
    assert [recent.known(key(n)) for n in range(5)] == [True, False, False, True, True]


@settings(max_examples=200, deadline=None)
@given(
    window=st.integers(1, 20),
    cap=st.integers(1, 6),
    steps=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 7)), max_size=60),
)
def test_matches_a_reference_model(window: int, cap: int, steps: list[tuple[int, int]]) -> None:
    """Any sequence of (clock advance, key): duplicate iff recorded less than
    ``window`` seconds ago and not pushed out by ``cap`` newer records."""
    clock = Clock(0.0)
    recent = RecentKeys(window, max_entries=cap, clock=clock)
    model: OrderedDict[int, float] = OrderedDict()
    for advance, n in steps:
        clock.now += advance
        for old in [k for k, stamp in model.items() if clock.now - stamp >= window]:
            del model[old]
        expected = n in model
        if not expected:
            model[n] = clock.now
            while len(model) > cap:
                model.popitem(last=False)
        assert recent.seen(key(n)) == expected
        assert len(recent) == len(model)


# ------------------------------------------------------------- identities


def test_identity_is_audit_id_and_stage_of_audit_events_only() -> None:
    a = audit_key(audit("id-1", "ResponseComplete"))
    assert a is not None and len(a) == KEY_BYTES
    assert audit_key(audit("id-1", "ResponseComplete", verb="other")) == a  # only id and stage count
    assert audit_key(audit("id-1", "ResponseStarted")) != a
    assert audit_key(audit("id-2", "ResponseComplete")) != a
    assert audit_key(audit("id-1", None)) == audit_key(audit("id-1", 5))  # a stage that is not text
    assert audit_key(audit("id-1", None)) != a
    assert audit_key(audit(None)) is None
    assert audit_key(audit(42)) is None
    assert audit_key(Event(K8S_AUDIT, {"stage": "ResponseComplete"})) is None
    assert audit_key(Event(FALCO, {"auditID": "id-1", "stage": "ResponseComplete"})) is None
    # the separator keeps ("a", "b\0c") and ("a\0b", "c") apart
    assert audit_key(audit("a", "b\x00c")) != audit_key(audit("a\x00b", "c"))
    assert audit_key(audit("\ud800 lone surrogate")) is not None


def test_drop_duplicates_keeps_order_and_counts() -> None:
    clock = Clock()
    recent = RecentKeys(60, clock=clock)
    falco = Event(FALCO, {"rule": "r", "auditID": "x"})
    events = [audit("a"), audit("b"), audit("a"), falco, falco, audit("a", "ResponseStarted"), audit(None)]
    kept, dropped = drop_duplicates(events, recent)
    assert kept == [events[0], events[1], falco, falco, events[5], events[6]]
    assert dropped == 1
    again, dropped = drop_duplicates(events, recent)
    assert again == [falco, falco, events[6]] and dropped == 4
    clock.now += 60
    assert drop_duplicates(events, recent) == ([*kept], 1)


def test_tables_of_two_sources_are_independent() -> None:
    clock = Clock()
    webhook, tailer = RecentKeys(60, clock=clock), RecentKeys(30, clock=clock)
    event = audit("shared")
    assert drop_duplicates([event], webhook)[1] == 0
    assert drop_duplicates([event], tailer)[1] == 0
    clock.now += 30
    assert drop_duplicates([event], webhook)[1] == 1
    assert drop_duplicates([event], tailer)[1] == 0


# ------------------------------------------------------------------ claims


@pytest.mark.asyncio
async def test_claimed_keys_count_as_seen_only_once_the_batch_succeeded() -> None:
    clock = Clock()
    recent = RecentKeys(60, clock=clock)
    events = [audit("a"), audit("b"), audit("a")]
    fresh = new_events(events, recent, wait=True)
    assert fresh.events == events[:2] and fresh.duplicates == 1 and not fresh.in_flight
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    recent.claim(fresh.keys, done)
    assert recent.claimed(fresh.keys[0]) is done
    assert not recent.known(fresh.keys[0])  # claimed, not seen
    # a copy arriving now waits for the batch in flight, or counts as new
    waiting = new_events([audit("a"), audit("c")], recent, wait=True)
    assert [e.doc["auditID"] for e in waiting.events] == ["c"] and waiting.in_flight == {done}
    assert [e.doc["auditID"] for e in new_events([audit("a")], recent, wait=False).events] == ["a"]
    clock.now += 10
    done.set_result(None)
    await asyncio.sleep(0)
    assert recent.claimed(fresh.keys[0]) is None
    assert recent.known(fresh.keys[0]) and recent.known(fresh.keys[1])
    assert new_events([audit("a")], recent, wait=True).duplicates == 1
    clock.now += 59.9  # recorded when the batch succeeded, not when it was claimed
    assert recent.known(fresh.keys[0])
    clock.now += 0.1
    assert not recent.known(fresh.keys[0])


@pytest.mark.asyncio
@pytest.mark.parametrize("outcome", ["exception", "cancelled"])
async def test_a_failed_batch_releases_its_claims(outcome: str) -> None:
    recent = RecentKeys(60, clock=Clock())
    fresh = new_events([audit("a")], recent, wait=True)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    recent.claim(fresh.keys, done)
    if outcome == "exception":
        done.set_exception(RuntimeError("sink refused"))
        done.exception()
    else:
        done.cancel()
    await asyncio.sleep(0)
    assert recent.claimed(fresh.keys[0]) is None
    assert not recent.known(fresh.keys[0])
    assert new_events([audit("a")], recent, wait=True).events  # the retry is new


@pytest.mark.asyncio
async def test_release_drops_only_the_claims_of_that_batch() -> None:
    recent = RecentKeys(60, clock=Clock())
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    ka, kb = audit_key(audit("a")), audit_key(audit("b"))
    assert ka is not None and kb is not None
    recent.claim([ka], first)
    recent.release([ka], first)  # the sender gave up waiting
    assert recent.claimed(ka) is None
    recent.claim([ka, kb], second)  # the retry claims again
    recent.release([ka, kb], first)  # a late release of the old batch changes nothing
    assert recent.claimed(ka) is second and recent.claimed(kb) is second
    first.set_result(None)  # the old batch finishing late records nothing it no longer holds
    await asyncio.sleep(0)
    assert not recent.known(ka)
    second.set_result(None)
    await asyncio.sleep(0)
    assert recent.known(ka) and recent.known(kb)


@pytest.mark.asyncio
async def test_settled_claims_respect_the_cap() -> None:
    recent = RecentKeys(60, max_entries=2, clock=Clock())
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    keys = [key(n) for n in range(4)]
    recent.claim(keys, done)
    done.set_result(None)
    await asyncio.sleep(0)
    assert len(recent) == 2
    assert [recent.known(k) for k in keys] == [False, False, True, True]


def test_items_without_an_event_are_sorted_like_the_rest_and_counted_undecoded() -> None:
    """``new_items``: the webhook's skipped items (no event) are claimed and
    answered like the others; ``undecoded`` counts the new ones, which the
    webhook reports as received."""
    recent = RecentKeys(60)
    keys = [bytes([n]) * KEY_BYTES for n in range(4)]
    events = [Event(K8S_AUDIT, {"auditID": "decoded"})]
    items = [(keys[0], None), (keys[1], events[0]), (keys[2], None), (keys[2], None), (keys[3], None)]
    assert not recent.seen(keys[3])  # recorded: seen before
    fresh = new_items(items, recent, wait=True)
    assert fresh.undecoded == 2  # keys 0 and 2; the copy of 2 and the known 3 are duplicates
    assert fresh.events == events
    assert fresh.keys == keys[:3]
    assert fresh.duplicates == 2
