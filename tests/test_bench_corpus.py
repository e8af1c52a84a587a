"""The benchmark's generators produce valid audit events and loadable rule files.

No timings here: these tests only guard that the bench measures what it
claims (a realistic, reproducible corpus and rule sets eventd accepts).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.corpus import TRUSTED_REGISTRIES, generate, lines, write_corpus
from bench.rulesets import big_registry_list, dump, generate_rules, registry_filter_rules
from eventd.engine.loader import load_rules
from eventd.events.timestamps import rfc3339_to_ns

REQUIRED = ("auditID", "stage", "stageTimestamp", "verb", "user")


def _events_of(line: bytes) -> list[dict[str, Any]]:
    doc = orjson.loads(line)
    if doc["kind"] == "EventList":
        assert doc["apiVersion"] == "audit.k8s.io/v1"
        return doc["items"]
    return [doc]


def _is_create(ev: dict[str, Any]) -> bool:
    return ev["verb"] == "create" and ev["objectRef"]["resource"] in ("pods", "deployments")


def test_lines_are_valid_audit_events(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_corpus(path, 3000, seed=7, pod_ratio=0.05, eventlist_ratio=0.02)
    raw = path.read_bytes().splitlines()
    events = [ev for line in raw for ev in _events_of(line)]
    assert len(events) == 3000
    assert len(raw) < 3000  # some lines are EventLists
    for ev in events:
        assert ev["kind"] == "Event" and ev["apiVersion"] == "audit.k8s.io/v1"
        for key in REQUIRED:
            assert ev.get(key), (key, ev)
        assert isinstance(ev["user"]["username"], str)
        assert ev["stage"] in ("ResponseStarted", "ResponseComplete")
        assert rfc3339_to_ns(ev["requestReceivedTimestamp"]) <= rfc3339_to_ns(ev["stageTimestamp"])
        has_bodies = "requestObject" in ev, "responseObject" in ev
        assert (
            has_bodies
            == {
                "Metadata": (False, False),
                "Request": (True, False),
                "RequestResponse": (True, True),
            }[ev["level"]]
        )


def test_mix_is_realistic() -> None:
    events = list(generate(4000, seed=3, pod_ratio=0.04))
    kinds = Counter((ev["verb"], ev["objectRef"]["resource"]) for ev in events)
    assert kinds["update", "leases"] > len(events) / 2
    assert kinds["get", "secrets"] > 0
    # RBAC reasons quote names, so the raw JSON carries \" escapes.
    assert b'\\"system:kube-controller-manager\\"' in b"".join(lines(events[:500]))
    creates = [ev for ev in events if _is_create(ev)]
    assert all(ev["level"] == "RequestResponse" for ev in creates)
    assert any("initContainers" in (ev["requestObject"].get("spec") or {}) for ev in creates)
    sizes = [len(orjson.dumps(ev)) for ev in creates if ev["objectRef"]["resource"] == "pods"]
    assert sum(sizes) / len(sizes) > 4000  # several KB each
    images = {
        c["image"]
        for ev in creates
        if ev["objectRef"]["resource"] == "pods"
        for c in ev["requestObject"]["spec"]["containers"]
    }
    assert any(i.endswith(":latest") for i in images)
    assert any("@sha256:" in i for i in images)
    assert any(i.startswith("registry:5000/") for i in images)
    assert any(i.split("/")[0] in TRUSTED_REGISTRIES for i in images)
    assert any("/" not in i for i in images)  # implicit docker.io library images


@pytest.mark.parametrize(("seed", "ratio"), [(1, 0.04), (2, 0.03), (3, 0.05), (4, 0.20), (5, 0.0)])
def test_pod_ratio_is_the_fraction_of_events(seed: int, ratio: float) -> None:
    n = 5000
    creates = sum(1 for ev in generate(n, seed, ratio) if _is_create(ev))
    # ±4 binomial standard deviations, plus one event for ratio 0.
    tolerance = 4 * (ratio * (1 - ratio) / n) ** 0.5 + 1 / n
    assert abs(creates / n - ratio) <= tolerance


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_corpus(a, 1500, seed=11, eventlist_ratio=0.05)
    write_corpus(b, 1500, seed=11, eventlist_ratio=0.05)
    write_corpus(c, 1500, seed=12, eventlist_ratio=0.05)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_rejects_bad_ratio() -> None:
    with pytest.raises(ValueError):
        next(generate(1, 1, 1.5))


@pytest.mark.parametrize("n", [1, 10, 50, 1000])
def test_rule_sets_are_well_formed(n: int) -> None:
    items = generate_rules(n)
    rules = [it for it in items if "rule" in it]
    assert len(rules) == n
    assert len({r["rule"] for r in rules}) == n
    for rule in rules:
        assert {"rule", "desc", "condition", "output", "priority", "source"} <= rule.keys()
        assert rule["source"] == "k8s_audit"
    text = " ".join(r["condition"] for r in rules) + " ".join(
        it["condition"] for it in items if "macro" in it
    )
    assert "ka.req.pod.images." in text


def test_big_registry_list() -> None:
    items = generate_rules(10, allowed_registries=10_000)
    (registries,) = [it["items"] for it in items if it.get("list") == "bench_trusted_registries"]
    assert len(registries) == 10_000 == len(set(registries))
    assert registries == big_registry_list(10_000)


@pytest.mark.parametrize(
    ("name", "items"),
    [
        ("r10", generate_rules(10)),
        ("r50", generate_rules(50)),
        ("r1000", generate_rules(1000)),
        ("r10big", generate_rules(10, allowed_registries=10_000)),
        ("filter", registry_filter_rules()),
    ],
)
def test_rule_files_load(tmp_path: Path, name: str, items: list[dict[str, Any]]) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(dump(items), encoding="utf-8")
    ruleset = load_rules([str(path)])
    assert len(ruleset.rules) == sum(1 for it in items if "rule" in it)
    # Only uses of eventd's extensions (pmatch on image lists) are warned about.
    assert {f.code.name for f in ruleset.findings} <= {"EVENTD_NOT_PORTABLE"}


def test_generated_rules_match_the_corpus(tmp_path: Path) -> None:
    """The 10-rule set and the registry filter fire on part of the corpus, not on none or all."""
    from eventd.scanner import scan_paths

    corpus = tmp_path / "audit.jsonl"
    write_corpus(corpus, 3000, seed=5)
    for name, items in (("r10", generate_rules(10)), ("filter", registry_filter_rules())):
        path = tmp_path / f"{name}.yaml"
        path.write_text(dump(items), encoding="utf-8")
        stats = scan_paths([str(corpus)], load_rules([str(path)]))
        assert stats.rejected == 0
        assert 0 < stats.alerts < 300, name
