"""Evaluate a rule set against events: index lookup, then compiled predicates.

This is plain synchronous code on purpose: it is pure CPU work, called in
batches by the daemon's consumer task and in a tight loop by ``eventd scan``.
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import TYPE_CHECKING

from eventd.engine.fields import default_registry
from eventd.engine.fields.base import Registry
from eventd.engine.index import Candidate, Prefilter, Route, RuleIndex
from eventd.engine.ruleset import Rule, RuleSet, check_rule_matching
from eventd.events.model import K8S_AUDIT, Event

if TYPE_CHECKING:  # structlog itself is imported lazily, see ``_log``
    from structlog.typing import FilteringBoundLogger


class Matcher:
    """Matches events against one immutable ``RuleSet``.

    ``rule_matching="first"`` stops at the first matching rule in load order,
    as Falco does by default; ``"all"`` reports every matching rule.
    A rule whose predicate raises (a bug, never expected) is counted in
    ``errors`` and skipped; the event still meets the other rules.
    """

    def __init__(
        self,
        ruleset: RuleSet,
        registry: Registry | None = None,
        *,
        rule_matching: str = "first",
    ) -> None:
        check_rule_matching(rule_matching)
        self.ruleset = ruleset
        self.first_only = rule_matching == "first"
        registry = registry or default_registry()
        by_source: dict[str, list[Rule]] = {}
        for rule in ruleset.rules:
            by_source.setdefault(rule.source, []).append(rule)
        self.indexes = {
            source: RuleIndex(rules, registry.fieldset(source)) for source, rules in by_source.items()
        }
        self.errors: Counter[str] = Counter()

    @functools.cached_property
    def prefilter(self) -> Prefilter | None:
        """A prefilter for these rules alone (``Prefilter.build``).  A scan
        and the daemon build their own, which also keep the events their
        other observers learn from."""
        return Prefilter.build(self.indexes)

    def match(self, event: Event) -> list[Rule]:
        index = self.indexes.get(event.source)
        if index is None:
            return []
        return self._evaluate(index.candidates(event), event)

    def match_routed(self, event: Event, route: Route) -> list[Rule]:
        """``match`` for an audit event whose indexed field values (``route``:
        the memo key's, then the others') were read off its line's routing
        header by ``Prefilter.select_block``.

        They are exactly what the fields give (the prefilter's guarantee),
        so they go into the event's field cache as they are: the index and
        the rules do not extract them again.
        """
        index = self.indexes.get(K8S_AUDIT)
        if index is None:
            return []
        low, high = route
        event.cache.update(zip(index.tokens, (*low, *high), strict=True))
        return self._evaluate(index.candidates_for(low, high), event)

    def _evaluate(self, candidates: list[Candidate], event: Event) -> list[Rule]:
        matched: list[Rule] = []
        for rule, predicate in candidates:
            try:
                hit = predicate(event)
            except Exception:  # a field extractor bug must not stop the stream
                self.errors[rule.name] += 1
                _log().exception("rule_evaluation_failed", rule=rule.name)
                continue
            if hit:
                matched.append(rule)
                if self.first_only:
                    break
        return matched


def _log() -> FilteringBoundLogger:
    """The logger, imported when first needed: structlog (and rich, which it
    loads when installed) costs ``eventd scan`` about 35 ms of start-up."""
    import structlog

    # ``get_logger`` is typed ``Any``; what it gives is a filtering bound
    # logger (the wrapper class of ``logs.configure_logging`` and structlog's default).
    logger: FilteringBoundLogger = structlog.get_logger(__name__)
    return logger
