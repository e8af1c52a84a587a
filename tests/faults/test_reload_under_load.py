"""SIGHUP reloads while batches stream in: no event dropped, and every batch is
matched against exactly one whole rule set.

The variable rule file alternates between two sets, with a broken file now
and then:

* set A: rules ``A1`` and ``A2``, both matching every event of kind E;
* set B: rules ``B1`` and ``B2``, both matching every event of kind F;
* broken: ``A1`` alone followed by a syntax error: refused whole, so the
  set running before it stays (a loader that installed the part it managed
  to read would show ``A1`` without ``A2``).

A second, fixed file has rule ``G`` matching kind G in every set.  With
``rule_matching: all`` each batch (one POST is one batch) must show one of
exactly two pictures: every E event alerted by A1 and A2 and no F alert, or
every F event alerted by B1 and B2 and no E alert; and every G event
alerted once, whatever the set.
"""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest

from tests.faults.accounting import (
    WEBHOOK,
    AuditBatch,
    Poster,
    assert_source_accounting,
    audit_doc,
    metric,
    scrape,
    wait_until,
)
from tests.support.daemon_process import EventdProcess, free_port

pytestmark = pytest.mark.timeout(90)

RELOADS = 15
KINDS = {"E": "reload-e", "F": "reload-f", "G": "reload-g"}


def rule(name: str, namespace: str) -> str:
    return f"""
- rule: {name}
  desc: fires on pod creates in {namespace}
  condition: ka.verb = create and ka.target.resource = pods and ka.target.namespace = {namespace}
  output: {name} saw %ka.auditid
  priority: NOTICE
  source: k8s_audit
"""


RULE_SETS = {
    "A": rule("A1", KINDS["E"]) + rule("A2", KINDS["E"]),
    "B": rule("B1", KINDS["F"]) + rule("B2", KINDS["F"]),
    "broken": rule("A1", KINDS["E"]) + "\n- rule: Broken\n  condition: ka.verb = (\n",
}
#: The rules each set makes fire, by event kind.
FIRES = {"A": {"E": {"A1", "A2"}}, "B": {"F": {"B1", "B2"}}}


def install(path: Path, text: str) -> None:
    """Replace the rule file atomically, as a config management tool would."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Load:
    """Endless batches of 3 E, 3 F and 3 G events; the batch number is in each auditID."""

    def __init__(self) -> None:
        self.batch_of: dict[str, int] = {}  # auditID -> batch number

    def __iter__(self) -> Iterator[AuditBatch]:
        for index in count():
            items = []
            for kind, namespace in KINDS.items():
                for n in range(3):
                    audit_id = f"b{index:06d}-{kind}{n}"
                    self.batch_of[audit_id] = index
                    items.append(audit_doc(audit_id, namespace))
            # ``alerting`` stays empty: which rules fire depends on the set, checked per batch.
            yield AuditBatch(tuple(items), (), len(items), 0)


def test_reloads_under_load_drop_nothing_and_never_mix_rule_sets(tmp_path: Path) -> None:
    variable = tmp_path / "variable.yaml"
    install(variable, RULE_SETS["A"])
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(rule("G", KINDS["G"]))
    port = free_port()
    proc = EventdProcess(
        tmp_path,
        {
            "rules": [str(fixed), str(variable)],
            "rule_matching": "all",
            "sources": {"k8s_audit_webhook": {"listen": f"127.0.0.1:{port}"}},
            "sinks": {"stdout": {}},
        },
    )
    load = Load()
    try:
        proc.wait_ready()
        poster = Poster(f"http://127.0.0.1:{port}/k8s-audit", load).start()
        expected = {"ok": 0, "refused": 0}
        for n in range(RELOADS):
            name = "broken" if n % 5 == 4 else ("B" if n % 2 == 0 else "A")
            result = "refused" if name == "broken" else "ok"
            install(variable, RULE_SETS[name])
            batches_before = len(poster.snapshot().batches)
            proc.signal(signal.SIGHUP)
            expected[result] += 1
            wait_until(
                lambda: metric(proc, "eventd_rule_reloads_total", result=result) == expected[result],  # noqa: B023
                timeout=15,
                what=f"reload {n} ({name})",
                proc=proc,
            )
            # Let a few batches run on this set before the next change.
            wait_until(
                lambda: len(poster.snapshot().batches) >= batches_before + 3,  # noqa: B023
                timeout=15,
                what="batches between reloads",
                proc=proc,
            )
        sent = poster.finish()
        assert not poster.unacknowledged

        received = sent.valid
        wait_until(
            lambda: metric(proc, "eventd_events_received_total", source=WEBHOOK) == received,
            timeout=15,
            what="every posted event to be received",
            proc=proc,
        )
        snap = scrape(proc)
        assert proc.stop() == 0  # drains: every alert is on stdout now
        assert sent.accepted == received and sent.duplicates == 0

        # Per batch: which rules fired on which events.
        fired: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for alert in proc.alerts:
            audit_id = alert["eventd"]["audit_id"]
            fired[load.batch_of[audit_id]][audit_id].add(alert["rule"])
        seen_sets = set()
        for index in range(len(sent.batches)):
            per_event = fired[index]
            pictures = [s for s, rules in FIRES.items() if _consistent(index, per_event, rules)]
            assert len(pictures) == 1, f"batch {index} matched a mix of rule sets: {dict(per_event)}"
            seen_sets.add(pictures[0])
        assert seen_sets == {"A", "B"}, "the load never saw both rule sets: the test proves nothing"
        assert len(proc.alerts) == len({a["uuid"] for a in proc.alerts}), "an alert was raised twice"
        assert expected["refused"] >= 2
        # Each batch: 3 G events (G) plus 3 E (A1, A2) or 3 F (B1, B2) events.
        batches = len(sent.batches)
        assert_source_accounting(snap, WEBHOOK, received=received, matched=6 * batches)
        assert snap.value("eventd_alerts_total") == len(proc.alerts) == 9 * batches
    finally:
        proc.kill()


def _consistent(index: int, per_event: dict[str, set[str]], fires: dict[str, set[str]]) -> bool:
    """Every event of batch ``index`` got exactly the rules this set fires (plus G on G)."""
    for kind in KINDS:
        want = fires.get(kind, set()) | ({"G"} if kind == "G" else set())
        for n in range(3):
            if per_event.get(f"b{index:06d}-{kind}{n}", set()) != want:
                return False
    return True
