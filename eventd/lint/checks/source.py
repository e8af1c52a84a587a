"""EVD001 (rule without ``source:`` on audit/alert fields) and EVD006
(a genuine syscall rule: fine for Falco, nothing for eventd to match)."""

from __future__ import annotations

from collections.abc import Iterator

from eventd.engine.source_inference import SYSCALL
from eventd.lint.findings import Finding, finding
from eventd.lint.model import Corpus


def run(corpus: Corpus) -> Iterator[Finding]:
    for rule in corpus.rules():
        if rule.tree is None:
            continue
        source, inferred = corpus.effective_source(rule)
        if inferred:
            yield finding(
                "EVD001",
                rule.file,
                rule.line,
                rule.label,
                f"no `source:`, so Falco and eventd treat it as a syscall rule and skip it "
                f'("Unknown source syscall, skipping"); every field it reads belongs to {source}, '
                "so it detects nothing",
                f"add `source: {source}` to the rule (or load with --infer-source)",
            )
        elif source == SYSCALL and rule.source in (None, SYSCALL):
            yield finding(
                "EVD006",
                rule.file,
                rule.line,
                rule.label,
                "a syscall rule: it runs in Falco only; eventd reads audit events and Falco's alerts",
                "keep it in Falco; to judge the alerts it raises in eventd, write a `source: falco` "
                "rule on container.image.* (see examples/guide/image-security-falco-alerts.yaml)",
            )
