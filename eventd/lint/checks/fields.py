"""EVD002 unknown field, EVD003 field alias, EVD004 undefined macro,
EVD005 condition syntax."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator

from eventd.engine.fields import default_registry
from eventd.engine.fields.aliases import alias_target, all_aliases
from eventd.engine.source_inference import SYSCALL, field_sources
from eventd.events.model import FALCO, K8S_AUDIT
from eventd.lint.findings import Finding, Severity, finding
from eventd.lint.model import CondItem, Corpus, checks_in, field_def, macro_refs

#: Hand-picked replacements for names guides invent; difflib finds typos.
_SUGGEST: dict[str, tuple[str, ...]] = {
    "ka.target.image": (
        "ka.req.pod.containers.image",
        "ka.req.pod.images.name",
        "ka.req.pod.images.registry",
    ),
    "image.repository": ("container.image.repository",),
    "ka.req.pod.image": ("ka.req.pod.containers.image", "ka.req.pod.images.name"),
    "container.image.registry.name": ("container.image.registry",),
}
_SOURCE_NAMES = frozenset({K8S_AUDIT, FALCO, SYSCALL, "k8saudit"})
_OUTPUT_FIELD = re.compile(r"%([A-Za-z_][\w.]*)")


def _suggestions(name: str, source: str) -> list[str]:
    out = list(_SUGGEST.get(name, ()))
    registry = default_registry()
    if not out and source in registry:
        names = list(registry.fieldset(source).defs)
        out += [n for n in difflib.get_close_matches(name, names, n=3, cutoff=0.8) if n not in out]
    return out


def _source_for_fields(corpus: Corpus, item: CondItem) -> str:
    if item.kind == "rule":
        return corpus.effective_source(item)[0]
    return SYSCALL  # a macro: judged by prefix below


def _check_field(name: str, source: str, item: CondItem, line: int, key: str) -> Finding | None:
    if item.kind == "macro":
        sources = field_sources(name)
        if sources is None or len(sources) != 1:
            return None
        source = next(iter(sources))
    alias = alias_target(source, name)
    if alias is None and name in all_aliases() and source == SYSCALL:
        alias = all_aliases()[name][1]
    if alias is not None:
        ideas = _suggestions(name, source)
        return finding(
            "EVD003",
            item.file,
            line,
            item.label,
            f"{key}: '{name}' is not a field in Falco or its plugins, which refuse the rule; "
            f"eventd reads it as an alias of '{alias}' and warns",
            "write " + " or ".join(f"`{s}`" for s in ideas) if ideas else f"write `{alias}`",
            Severity.ERROR,
        )
    if source == SYSCALL or field_def(name, source) is not None:
        return None
    ideas = _suggestions(name, source)
    return finding(
        "EVD002",
        item.file,
        line,
        item.label,
        f"{key}: no field '{name}' for source {source}",
        ("did you mean " + ", ".join(f"`{s}`" for s in ideas) + "?")
        if ideas
        else "see the field list in the README",
    )


def run(corpus: Corpus) -> Iterator[Finding]:
    for item in corpus.cond_items():
        if item.syntax_error is not None:
            yield finding(
                "EVD005",
                item.file,
                item.cond_line,
                item.label,
                f"condition: {item.syntax_error}",
                "fix the condition (the grammar is Falco's)",
            )
            continue
        assert item.tree is not None
        source = _source_for_fields(corpus, item)
        seen: set[str] = set()
        for check in checks_in(item.tree):
            for name in (check.field.name, getattr(check.value, "name", None)):
                if isinstance(name, str) and name not in seen:
                    seen.add(name)
                    found = _check_field(name, source, item, item.cond_line, "condition")
                    if found is not None:
                        yield found
        output = item.node.get("output")
        text = getattr(output, "text", "") or ""
        for name in dict.fromkeys(_OUTPUT_FIELD.findall(text)):
            name = name.rstrip(".")
            if name in seen or "." not in name:
                continue
            seen.add(name)
            found = _check_field(name, source, item, item.node.key_line("output"), "output")
            if found is not None:
                yield found
        yield from _macros(corpus, item, source)


def _macros(corpus: Corpus, item: CondItem, source: str) -> Iterator[Finding]:
    assert item.tree is not None
    for ref in {r.name: r for r in macro_refs(item.tree)}.values():
        if ref.name in corpus.macros:
            continue
        if ref.name in _SOURCE_NAMES:
            yield finding(
                "EVD004",
                item.file,
                item.cond_line,
                item.label,
                f"condition: '{ref.name}' names a source, not a macro: Falco refuses the rule "
                f"(\"Undefined macro '{ref.name}' used in filter\")",
                f"delete `{ref.name} and` from the condition and write "
                f"`source: {K8S_AUDIT if ref.name == 'k8saudit' else ref.name}`",
            )
            continue
        syscall = item.kind == "rule" and source == SYSCALL
        yield finding(
            "EVD004",
            item.file,
            item.cond_line,
            item.label,
            f"condition: macro '{ref.name}' is not defined in the files linted"
            + (" (Falco's own falco_rules.yaml defines many syscall macros)" if syscall else ""),
            "load the file that defines it before this one, or define it",
            Severity.NOTE if syscall else None,
        )
