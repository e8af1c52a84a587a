"""Loaded, compiled rules: what the loader produces and the matcher consumes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from msgspec import Struct

from eventd.engine.ast import Node
from eventd.engine.load_result import Finding
from eventd.events.model import Event
from eventd.priority import Priority

if TYPE_CHECKING:
    from eventd.engine.output import OutputFormat


class Rule(Struct, frozen=True):
    """One enabled rule, ready to evaluate.

    ``condition`` is the final tree (exceptions added, lists substituted,
    macros expanded): the index and the prefilter read it to learn which
    events the rule can possibly match.  ``predicate`` is that tree compiled.
    """

    name: str
    source: str
    priority: Priority
    desc: str
    tags: tuple[str, ...]
    condition: Node
    predicate: Callable[[Event], bool]
    output: OutputFormat
    order: int
    file: str | None = None
    line: int | None = None


class RuleSet(Struct, frozen=True):
    """The enabled rules in load order, plus what ``eventd rules check`` reports."""

    rules: tuple[Rule, ...]
    files: tuple[str, ...] = ()
    lists: int = 0
    macros: int = 0
    disabled: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    #: The same warnings with Falco's codes (``load_result.Finding``).
    findings: tuple[Finding, ...] = ()


#: Falco's ``rule_matching`` settings: stop at the first matching rule (in
#: load order) or raise an alert for every rule that matches.
RULE_MATCHING = ("first", "all")


def check_rule_matching(value: str) -> None:
    """Refuse a ``rule_matching`` value Falco does not have (``ValueError``)."""
    if value not in RULE_MATCHING:
        raise ValueError(f"rule_matching must be one of {RULE_MATCHING}, not {value!r}")
