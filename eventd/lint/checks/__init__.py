"""Rule-file checks, one module per family; each exports ``run(corpus)``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from eventd.lint.checks import fields, lists, registry, source, workloads
from eventd.lint.findings import Finding
from eventd.lint.model import Corpus

RULE_CHECKS: tuple[Callable[[Corpus], Iterator[Finding]], ...] = (
    source.run,
    fields.run,
    registry.run,
    lists.run,
    workloads.run,
)
