"""The webhook's dedup as configured, and copies of events still in flight.

A copy of an event that another request is delivering waits for that
request's outcome: a duplicate if it succeeded (dropped), new if it failed
(delivered again, at-least-once).  And ``dedup_window_seconds`` /
``dedup_max_entries`` are the ones in the config, not defaults.
"""

from __future__ import annotations

import asyncio
import functools

import aiohttp
import orjson
import pytest

from eventd.events.dedup import RecentKeys
from eventd.metrics import Metrics
from eventd.sources import audit_webhook, http_input
from eventd.sources.audit_webhook import AuditWebhookSource
from tests.support.builders import audit_event
from tests.support.waiting import wait_until
from tests.test_source_audit_webhook import JSON, RecordingInlet, config, duplicates, event_list, running


async def answer(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, dict]:
    async with session.post(url, data=body, headers=JSON) as resp:
        return resp.status, orjson.loads(await resp.read()) if resp.status == 200 else {}


@pytest.mark.asyncio
@pytest.mark.parametrize("first_succeeds", [True, False])
# 1.6 s: the copy may wait 0.8 s, under a second, and must still wait.
@pytest.mark.parametrize("budget", [10.0, 1.6])
async def test_a_copy_waits_for_the_batch_in_flight_and_follows_its_outcome(
    monkeypatch: pytest.MonkeyPatch, first_succeeds: bool, budget: float
) -> None:
    monkeypatch.setattr(http_input, "DELIVERY_TIMEOUT_SECONDS", budget)
    metrics, inlet = Metrics(), RecordingInlet()
    inlet.deliver = False  # the test resolves each batch
    shared, other = audit_event(auditID="shared"), audit_event(auditID="other")
    source = AuditWebhookSource(config(), metrics)
    async with running(source, inlet) as url, aiohttp.ClientSession() as session:
        first = asyncio.create_task(answer(session, url, event_list(shared)))
        await wait_until(lambda: len(inlet.batches) == 1)
        copy = asyncio.create_task(answer(session, url, event_list(shared, other)))
        await asyncio.sleep(0.1)
        assert len(inlet.batches) == 1 and not copy.done()  # the copy's request waits for that fate
        if first_succeeds:
            inlet.batches[0].done.set_result(None)
            assert await first == (200, {"accepted": 1, "duplicates": 0, "rejected": 0})
            await wait_until(lambda: len(inlet.batches) == 2)
            assert [e.doc["auditID"] for e in inlet.batches[1].events] == ["other"]
            inlet.batches[1].done.set_result(None)
            assert await copy == (200, {"accepted": 1, "duplicates": 1, "rejected": 0})
            assert duplicates(metrics) == 1
        else:
            inlet.batches[0].done.set_exception(RuntimeError("sink refused"))
            assert (await first)[0] == 503
            await wait_until(lambda: len(inlet.batches) == 2)  # the copy is delivered itself
            assert [e.doc["auditID"] for e in inlet.batches[1].events] == ["shared", "other"]
            inlet.batches[1].done.set_result(None)
            assert await copy == (200, {"accepted": 2, "duplicates": 0, "rejected": 0})
            assert duplicates(metrics) == 0


@pytest.mark.asyncio
async def test_copies_woken_by_a_failed_batch_do_not_both_deliver(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two copies wait for a batch that then fails: the first to sort again
    claims the events, and the second must wait for that one in turn (not
    deliver the same events a second time)."""
    monkeypatch.setattr(http_input, "DELIVERY_TIMEOUT_SECONDS", 10.0)
    metrics, inlet = Metrics(), RecordingInlet()
    inlet.deliver = False
    shared = audit_event(auditID="thrice")
    source = AuditWebhookSource(config(), metrics)
    async with running(source, inlet) as url, aiohttp.ClientSession() as session:
        first = asyncio.create_task(answer(session, url, event_list(shared)))
        await wait_until(lambda: len(inlet.batches) == 1)
        copies = [asyncio.create_task(answer(session, url, event_list(shared))) for _ in range(2)]
        await asyncio.sleep(0.1)
        inlet.batches[0].done.set_exception(RuntimeError("sink refused"))
        assert (await first)[0] == 503
        await wait_until(lambda: len(inlet.batches) == 2)
        await asyncio.sleep(0.1)
        assert len(inlet.batches) == 2, "the other copy must wait for the one delivering"
        inlet.batches[1].done.set_result(None)
        answers = sorted([await copy for copy in copies], key=lambda a: a[1]["accepted"])
        assert answers == [
            (200, {"accepted": 0, "duplicates": 1, "rejected": 0}),
            (200, {"accepted": 1, "duplicates": 0, "rejected": 0}),
        ]


@pytest.mark.asyncio
async def test_a_copy_stops_waiting_at_half_the_budget_and_counts_as_new(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_input, "DELIVERY_TIMEOUT_SECONDS", 0.4)
    metrics, inlet = Metrics(), RecordingInlet()
    inlet.deliver = False
    shared = audit_event(auditID="stuck")
    source = AuditWebhookSource(config(), metrics)
    async with running(source, inlet) as url, aiohttp.ClientSession() as session:
        first = asyncio.create_task(answer(session, url, event_list(shared)))
        await wait_until(lambda: len(inlet.batches) == 1)
        copy = asyncio.create_task(answer(session, url, event_list(shared)))
        await wait_until(lambda: len(inlet.batches) == 2, timeout=5)  # gave up waiting: delivered again
        inlet.batches[1].done.set_result(None)
        assert await copy == (200, {"accepted": 1, "duplicates": 0, "rejected": 0})
        assert (await first)[0] == 503  # never resolved: timed out


@pytest.mark.asyncio
async def test_the_configured_window_and_cap_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # The webhook's table reads the clock given to RecentKeys, time.monotonic
    # by default: made a number the test moves (the table itself is real;
    # the source still passes it the configured window and cap).
    now = [1000.0]
    monkeypatch.setattr(audit_webhook, "RecentKeys", functools.partial(RecentKeys, clock=lambda: now[0]))
    metrics, inlet = Metrics(), RecordingInlet()
    events = [audit_event(auditID=f"e{i}") for i in range(3)]
    source = AuditWebhookSource(config(dedup_window_seconds=30, dedup_max_entries=2), metrics)
    async with running(source, inlet) as url, aiohttp.ClientSession() as session:
        assert (await answer(session, url, event_list(events[0])))[1]["accepted"] == 1
        now[0] += 29
        assert (await answer(session, url, event_list(events[0])))[1]["duplicates"] == 1
        now[0] += 1  # 30 s after it was recorded: outside the window
        assert (await answer(session, url, event_list(events[0])))[1]["accepted"] == 1
        # cap of 2: the third identity pushes out the oldest
        assert (await answer(session, url, event_list(events[1], events[2])))[1]["accepted"] == 2
        assert (await answer(session, url, event_list(events[0])))[1]["accepted"] == 1


@pytest.mark.asyncio
async def test_a_large_batch_is_decoded_like_a_small_one(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics, inlet = Metrics(), RecordingInlet()
    n = audit_webhook.LARGE_BATCH_EVENTS + 1
    events = [audit_event(auditID=f"big-{i}") for i in range(n)]
    source = AuditWebhookSource(config(), metrics)
    async with running(source, inlet) as url, aiohttp.ClientSession() as session:
        status, body = await answer(session, url, event_list(*events, {"kind": "Event"}))
        assert (status, body) == (200, {"accepted": n, "duplicates": 0, "rejected": 1})
        status, body = await answer(session, url, orjson.dumps(events[: audit_webhook.LARGE_BATCH_EVENTS]))
        assert body == {"accepted": 0, "duplicates": audit_webhook.LARGE_BATCH_EVENTS, "rejected": 0}
    assert [d["auditID"] for d in inlet.docs()] == [e["auditID"] for e in events]
    assert all(e.origin == "webhook" for b in inlet.batches for e in b.events)
    assert audit_webhook._large(events[:1] * (n)) and not audit_webhook._large(events[:1] * (n - 1))
    assert audit_webhook._large({"items": events}) and not audit_webhook._large({"items": events[:-1]})


# ------------------------------------------------------ the answer's budget


def test_copies_may_be_waited_for_during_the_first_half_of_the_budget() -> None:
    budget = audit_webhook.AnswerBudget(start=100.0, seconds=20.0)
    assert budget.waiting_left(100.0) == 10.0
    assert budget.waiting_left(104.0) == 6.0
    assert budget.waiting_left(110.0) == 0.0  # the loop stops: "> 0" is false
    assert budget.waiting_left(113.0) == -3.0


def test_delivery_gets_the_second_half_plus_what_waiting_left_unused() -> None:
    budget = audit_webhook.AnswerBudget(start=100.0, seconds=20.0)
    assert budget.delivery_timeout(100.0) == 20.0  # nothing waited for: the whole budget
    assert budget.delivery_timeout(104.0) == 16.0
    assert budget.delivery_timeout(110.0) == 10.0
    assert budget.delivery_timeout(119.0) == 10.0  # late (a slow decode): still half of it


@pytest.mark.asyncio
async def test_delivery_is_given_what_is_left_of_the_answer_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The request hands its batch to ``delivered`` with the budget's own
    timeout (what waiting left of it), not ``delivered``'s default: the
    answer must come within the budget the API server allows."""
    monkeypatch.setattr(http_input, "DELIVERY_TIMEOUT_SECONDS", 30.0)
    given: list[float | None] = []
    real = audit_webhook.delivered

    async def recording(batch: audit_webhook.Batch, timeout: float | None = None) -> None:
        given.append(timeout)
        await real(batch, timeout)

    monkeypatch.setattr(audit_webhook, "delivered", recording)
    metrics, inlet = Metrics(), RecordingInlet()
    source = AuditWebhookSource(config(), metrics)
    async with running(source, inlet) as url, aiohttp.ClientSession() as session:
        assert (await answer(session, url, event_list(audit_event(auditID="timed"))))[0] == 200
    assert len(given) == 1 and given[0] is not None
    assert 15.0 <= given[0] <= 30.0  # the second half at least, never more than the whole
