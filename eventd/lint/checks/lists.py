"""EVD011: ``not`` over an any-element match on a list field.

On a list field (one value per container) eventd's string operators are
true when *any* value matches, and ``intersects`` when any value is in the
set; Falco refuses string operators on list fields outright
(falcosecurity/libs ``sinsp_filter_check::parse_filter_value`` via the
"list filter ... only supports operators" error).  ``not F startswith X``
therefore holds only when *no* container matches, and a pod with one
trusted and one untrusted image passes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from eventd.engine.ast import Check, Not, walk
from eventd.engine.compiler import LIST_ANY_OPS
from eventd.engine.source_inference import SYSCALL, field_sources
from eventd.lint.findings import Finding, finding
from eventd.lint.model import CondItem, Corpus, field_def

_ALLOW_LIST = re.compile(r"trust|allow|approv|known|good|permit", re.IGNORECASE)


def _is_list_field(name: str, source: str) -> bool:
    if source == SYSCALL:
        sources = field_sources(name)
        if sources is None or len(sources) != 1:
            return False
        source = next(iter(sources))
    defn = field_def(name, source)
    return defn is not None and defn.is_list


def _fix(check: Check) -> str:
    name = check.field.name
    target = "ka.req.pod.images.name" if name.startswith("ka.") else "container.image.name"
    if check.op == "intersects":
        return f"require every element: `not {name} in (...)`, or `not {target} pmatch (...)`"
    value = check.value if isinstance(check.value, str) else "..."
    return (
        f"require every element: `not {target} pmatch ({value.rstrip('/')})` (true only when every "
        "image lies under an allowed path)"
    )


def run(corpus: Corpus) -> Iterator[Finding]:
    for item in corpus.cond_items():
        if item.tree is None:
            continue
        source = corpus.effective_source(item)[0] if item.kind == "rule" else SYSCALL
        for node in walk(item.tree):
            if not isinstance(node, Not) or not isinstance(node.child, Check):
                continue
            check = node.child
            if check.op not in LIST_ANY_OPS and check.op != "intersects":
                continue
            if check.op == "intersects" and not any(
                _ALLOW_LIST.search(v) for v in (check.value if isinstance(check.value, tuple) else ())
            ):
                continue
            if not _is_list_field(check.field.name, source):
                continue
            yield _finding(item, check)


def _finding(item: CondItem, check: Check) -> Finding:
    return finding(
        "EVD011",
        item.file,
        item.cond_line,
        item.label,
        f"`not {check.field.name} {check.op} ...`: the field has one value per container and "
        f"`{check.op}` holds when any one matches, so the negation holds only when none does; a pod "
        "with one trusted and one untrusted image passes",
        _fix(check),
    )
