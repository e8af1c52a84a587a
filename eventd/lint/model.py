"""The files being linted, read into items the checks can walk.

The linter does not load rules the way the engine does (which refuses a
whole file at the first problem): it reads every item on its own, parses
each condition *before* list substitution so that a value still says which
list it came from, and keeps the line of every list item so a finding can
point at the entry to change.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from eventd.engine.ast import Check, MacroRef, Node, walk
from eventd.engine.errors import RuleError
from eventd.engine.fields import default_registry
from eventd.engine.fields.aliases import alias_target
from eventd.engine.fields.base import FieldDef
from eventd.engine.parser import parse_condition
from eventd.engine.source_inference import (
    SYSCALL,
    expand_local_macros,
    field_names,
    infer_from_fields,
    is_rule_definition,
)
from eventd.engine.yamlsrc import Map, Scalar, Seq, load_documents
from eventd.engine.yamlsrc import Node as YamlNode

#: A Markdown code fence left in a file copied from a web page.
_FENCE = re.compile(r"^\s*```.*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Value:
    """A right-hand-side value, with where it was written."""

    text: str
    file: str
    line: int
    list_name: str | None  # the list it came from, if any


@dataclass
class ListItem:
    name: str
    file: str
    line: int
    items: tuple[Scalar, ...]


@dataclass
class CondItem:
    """A rule or a macro: something with a condition."""

    kind: str  # "rule" or "macro"
    name: str
    file: str
    line: int
    cond_line: int
    node: Map
    tree: Node | None = None
    syntax_error: str | None = None
    source: str | None = None  # as written; None when absent (rules only)

    @property
    def label(self) -> str:
        return f"{self.kind} '{self.name}'"


@dataclass
class RulesFile:
    path: str
    items: list[CondItem] = field(default_factory=list)
    lists: list[ListItem] = field(default_factory=list)


@dataclass
class YamlFile:
    """A file that is not a rules file (Kubernetes objects): its documents."""

    path: str
    docs: list[YamlNode]
    text: str


def read_documents(path: str, text: str) -> tuple[list[YamlNode], int | None]:
    """The documents of ``text``; on a YAML error caused by stray Markdown
    fences, the documents without them and the fence's line (so the rest of
    the file is still linted); any other error raises ``RuleError``."""
    try:
        return load_documents(text, path), None
    except RuleError:
        fence = _FENCE.search(text)
        if fence is None:
            raise
        line = text.count("\n", 0, fence.start()) + 1
        return load_documents(_FENCE.sub("", text), path), line


def _text(node: YamlNode | None) -> str | None:
    return node.text if isinstance(node, Scalar) and not node.null else None


def read_rules(path: str, docs: list[YamlNode]) -> RulesFile:
    """The lists, macros and rules of a rules file."""
    out = RulesFile(path)
    for doc in docs:
        if not isinstance(doc, Seq):
            continue
        for item in doc.items:
            if not isinstance(item, Map):
                continue
            if _text(item.get("list")) is not None:
                items = item.get("items")
                scalars = (
                    tuple(s for s in items.items if isinstance(s, Scalar)) if isinstance(items, Seq) else ()
                )
                out.lists.append(ListItem(_text(item.get("list")) or "", path, item.line, scalars))
                continue
            kind = "macro" if _text(item.get("macro")) is not None else "rule"
            name = _text(item.get(kind))
            cond = _text(item.get("condition"))
            if name is None or cond is None:
                continue
            if kind == "rule" and not is_rule_definition(item):
                continue
            entry = CondItem(kind, name, path, item.line, item.key_line("condition"), item)
            entry.source = _text(item.get("source")) if kind == "rule" else None
            try:
                entry.tree = parse_condition(cond, max_depth=1000)
            except (RuleError, RecursionError) as err:
                entry.syntax_error = getattr(err, "message", str(err))
            out.items.append(entry)
    return out


@dataclass
class Corpus:
    """Every rules file being linted, with the lists and macros of all of them
    (a list or macro can come from any file loaded with the others)."""

    files: list[RulesFile]
    lists: dict[str, ListItem] = field(default_factory=dict)
    macros: dict[str, CondItem] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in self.files:
            for li in f.lists:
                self.lists[li.name] = li
            for it in f.items:
                if it.kind == "macro":
                    self.macros[it.name] = it

    def rules(self) -> Iterator[CondItem]:
        for f in self.files:
            yield from (it for it in f.items if it.kind == "rule")

    def cond_items(self) -> Iterator[CondItem]:
        for f in self.files:
            yield from f.items

    def expanded(self, item: CondItem) -> Node | None:
        """The item's tree with every macro defined in the corpus substituted."""
        if item.tree is None:
            return None
        macros = {name: m.tree for name, m in self.macros.items() if m.tree is not None and name != item.name}
        return expand_local_macros(item.tree, macros)

    def effective_source(self, item: CondItem) -> tuple[str, bool]:
        """(source, inferred): the source written, else the one its fields
        imply, else ``syscall``."""
        if item.source:
            return item.source, False
        tree = self.expanded(item)
        inferred = infer_from_fields(field_names(tree)) if tree is not None else None
        return (inferred, True) if inferred else (SYSCALL, False)

    def values(self, value: object, item: CondItem, depth: int = 0) -> list[Value]:
        """The right-hand side as values, lists expanded to their items."""
        texts = value if isinstance(value, tuple) else (value,) if isinstance(value, str) else ()
        out: list[Value] = []
        for text in texts:
            li = self.lists.get(text)
            if li is not None and depth < 16:
                for scalar in li.items:
                    sub = self.values(scalar.text, item, depth + 1)
                    if sub and sub[0].list_name is None:
                        out.extend(Value(v.text, li.file, scalar.line, li.name) for v in sub)
                    else:
                        out.extend(sub)
            else:
                out.append(Value(text, item.file, item.cond_line, None))
        return out


def field_def(name: str, source: str) -> FieldDef | None:
    """The field ``name`` reads in ``source`` (aliases resolved), if eventd knows it."""
    registry = default_registry()
    if source not in registry:
        return None
    return registry.fieldset(source).lookup(name)


def is_alias(name: str, source: str) -> bool:
    return alias_target(source, name) is not None


def checks_in(tree: Node) -> Iterator[Check]:
    yield from (n for n in walk(tree) if isinstance(n, Check))


def macro_refs(tree: Node) -> Iterator[MacroRef]:
    yield from (n for n in walk(tree) if isinstance(n, MacroRef))
