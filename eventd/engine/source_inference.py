"""Which rule source a rule's fields belong to, and ``--infer-source``.

Falco gives a rule without ``source:`` the ``syscall`` source; an audit rule
pasted from a guide without that key is then skipped ("Unknown source
syscall, skipping") and detects nothing.  eventd keeps that behaviour by
default.  With ``--infer-source`` (``rules_infer_source: true``) a rule
without ``source:`` whose fields all belong to one non-syscall source gets
that source, and the loader says so.

Everything here is a pure function over the parsed YAML documents of one
file (``yamlsrc`` nodes), so the loader needs a single call at its entry
point and the linter (``eventd.lint``) shares the same classification.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from msgspec import Struct

from eventd.engine.ast import And, MacroRef, Node, Not, Or, field_refs, walk
from eventd.engine.errors import RuleError
from eventd.engine.fields.aliases import all_aliases
from eventd.engine.load_result import Finding as LoadFinding
from eventd.engine.load_result import WarningCode
from eventd.engine.parser import parse_condition
from eventd.engine.yamlsrc import Map, Scalar, Seq
from eventd.engine.yamlsrc import Node as YamlNode
from eventd.events.model import FALCO, K8S_AUDIT

SYSCALL = "syscall"

#: Field name prefixes that only non-syscall sources have, and the sources
#: that have them.  ``json.*`` exists for both eventd sources, so alone it
#: decides nothing; ``container.*``/``k8s.*`` are syscall fields in Falco.
_PREFIX_SOURCES: tuple[tuple[str, frozenset[str]], ...] = (
    ("ka.", frozenset({K8S_AUDIT})),
    ("jevt.", frozenset({K8S_AUDIT})),
    ("json.", frozenset({K8S_AUDIT, FALCO})),
    ("falco.", frozenset({FALCO})),
)

#: Macro expansion depth for classification; real files nest a few levels.
_MAX_MACRO_DEPTH = 32


def field_sources(name: str) -> frozenset[str] | None:
    """The non-syscall sources a field name can belong to, or ``None`` when
    it may be a syscall field (``proc.name``, ``container.image.repository``)."""
    for prefix, sources in _PREFIX_SOURCES:
        if name.startswith(prefix):
            return sources
    return None


def infer_from_fields(names: Iterable[str]) -> str | None:
    """The one source every field belongs to, or ``None`` when there are no
    fields, some field may be a syscall field, or several sources fit."""
    candidates: frozenset[str] | None = None
    for name in names:
        sources = field_sources(name)
        if sources is None:
            return None
        candidates = sources if candidates is None else candidates & sources
    if candidates is None or len(candidates) != 1:
        return None
    return next(iter(candidates))


def expand_local_macros(tree: Node, macros: dict[str, Node], depth: int = 0) -> Node:
    """``tree`` with every macro defined in ``macros`` substituted (undefined
    ones stay ``MacroRef``); used only to read fields, never to compile."""
    if depth > _MAX_MACRO_DEPTH:
        return tree
    if isinstance(tree, MacroRef):
        body = macros.get(tree.name)
        return tree if body is None else expand_local_macros(body, macros, depth + 1)
    if isinstance(tree, And):
        return And(tuple(expand_local_macros(c, macros, depth) for c in tree.children), tree.pos)
    if isinstance(tree, Or):
        return Or(tuple(expand_local_macros(c, macros, depth) for c in tree.children), tree.pos)
    if isinstance(tree, Not):
        return Not(expand_local_macros(tree.child, macros, depth), tree.pos)
    return tree


def field_names(tree: Node) -> list[str]:
    """Every field a tree reads, left and right of the operator."""
    return [ref.name for ref in field_refs(tree)]


def try_parse(text: str) -> Node | None:
    """The condition's tree, or ``None`` if it does not parse (the loader
    reports that with its own message)."""
    try:
        return parse_condition(text, max_depth=1000)
    except (RuleError, RecursionError):
        return None


def _items(docs: Sequence[YamlNode]) -> Iterable[Map]:
    for doc in docs:
        if isinstance(doc, Seq):
            yield from (item for item in doc.items if isinstance(item, Map))


def _text(node: YamlNode | None) -> str | None:
    return node.text if isinstance(node, Scalar) and not node.null else None


def local_macros(docs: Sequence[YamlNode]) -> dict[str, Node]:
    """The macros a file defines, parsed (the last definition wins)."""
    out: dict[str, Node] = {}
    for item in _items(docs):
        name, cond = _text(item.get("macro")), _text(item.get("condition"))
        if name is not None and cond is not None:
            tree = try_parse(cond)
            if tree is not None:
                out[name] = tree
    return out


def is_rule_definition(item: Map) -> bool:
    """A full rule (not an append, override or enable-only item)."""
    if _text(item.get("rule")) is None or "override" in item:
        return False
    if (_text(item.get("append")) or "").lower() in ("true", "yes", "on", "y"):
        return False
    return all(k in item for k in ("condition", "output", "desc", "priority"))


class Inference(Struct, frozen=True):
    """A rule given a source by ``--infer-source``."""

    rule: str
    line: int
    source: str


def infer_sources(docs: Sequence[YamlNode]) -> list[Inference]:
    """The rules without ``source:`` whose fields all belong to one
    non-syscall source, with that source."""
    macros = local_macros(docs)
    found = []
    for item in _items(docs):
        if "source" in item or not is_rule_definition(item):
            continue
        cond = _text(item.get("condition"))
        tree = try_parse(cond) if cond is not None else None
        if tree is None:
            continue
        source = infer_from_fields(field_names(expand_local_macros(tree, macros)))
        if source is not None:
            found.append(Inference(_text(item.get("rule")) or "", item.line, source))
    return found


class Notice(Struct, frozen=True):
    """A warning for the load: a source inferred, or a field alias used."""

    kind: str  # INFERRED or ALIAS
    file: str
    line: int
    item: str
    key: str
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.item}: {self.key}: {self.text}"


INFERRED = "inferred"
ALIAS = "alias"


def with_inferred_sources(
    docs: Sequence[YamlNode], file: str, *, infer_source: bool
) -> tuple[list[YamlNode], list[Notice]]:
    """The documents, with ``source:`` added where inferred (only when
    ``infer_source``), and the notices to show: one per inferred source and
    one per use of a field alias (always, since aliases are never silent).

    The input nodes are not modified: changed items are new ``Map`` objects.
    """
    notices = alias_notices(docs, file)
    if not infer_source:
        return list(docs), notices
    by_line = {inf.line: inf for inf in infer_sources(docs)}
    if not by_line:
        return list(docs), notices
    marker = _source_marker_macro(docs, by_line, file)
    if marker is not None:
        notices.append(marker[1])
    out: list[YamlNode] = []
    for doc in docs:
        if not isinstance(doc, Seq):
            out.append(doc)
            continue
        items: list[YamlNode] = []
        for item in doc.items:
            inf = by_line.get(item.line) if isinstance(item, Map) else None
            if inf is None or not isinstance(item, Map):
                items.append(item)
                continue
            entries = dict(item.entries)
            entries["source"] = (item.line, Scalar(inf.source, item.line))
            items.append(Map(entries, item.line))
            notices.append(
                Notice(
                    INFERRED,
                    file,
                    item.line,
                    f"rule '{inf.rule}'",
                    "source",
                    f"none given; inferred '{inf.source}' from its fields (--infer-source; "
                    "Falco would skip it as a syscall rule)",
                )
            )
        if marker is not None and not any(isinstance(d, Seq) for d in out):
            items.insert(0, marker[0])  # before every rule: macros are visible to later items only
        out.append(Seq(tuple(items), doc.line))
    return out, notices


#: Guides write the source's name as if it were a macro (``k8s_audit and
#: ka.verb=create ...``).  Falco refuses that ("Undefined macro"); with
#: ``--infer-source`` eventd reads it as "this is an event of that source".
_SOURCE_MARKERS = {K8S_AUDIT: "ka.auditid exists", FALCO: "falco.rule exists"}


def _source_marker_macro(
    docs: Sequence[YamlNode], inferred: dict[int, Inference], file: str
) -> tuple[Map, Notice] | None:
    """A definition for a source name used as a macro by an inferred rule and
    defined nowhere in the file, with its notice; ``None`` when not needed."""
    macros = local_macros(docs)
    for item in _items(docs):
        inf = inferred.get(item.line)
        cond = _text(item.get("condition"))
        if inf is None or cond is None or inf.source in macros or inf.source not in _SOURCE_MARKERS:
            continue
        tree = try_parse(cond)
        if tree is None or not any(isinstance(n, MacroRef) and n.name == inf.source for n in walk(tree)):
            continue
        line = item.line
        body = _SOURCE_MARKERS[inf.source]
        entries: dict[str, tuple[int, YamlNode]] = {
            "macro": (line, Scalar(inf.source, line)),
            "condition": (line, Scalar(body, line)),
        }
        notice = Notice(
            INFERRED,
            file,
            item.key_line("condition"),
            f"rule '{inf.rule}'",
            "condition",
            f"'{inf.source}' is a source, not a macro (Falco: \"Undefined macro\"); "
            f"read as '{body}' (--infer-source)",
        )
        return Map(entries, line), notice
    return None


_ALIAS_RE = re.compile(
    r"(?<![\w.])("
    + "|".join(re.escape(a) for a in sorted(all_aliases(), key=len, reverse=True))
    + r")(?![\w.\[])"
)


def alias_notices(docs: Sequence[YamlNode], file: str) -> list[Notice]:
    """One warning per condition or output that names a field alias."""
    aliases = all_aliases()
    notices = []
    for item in _items(docs):
        label = next(
            (f"{kind} '{_text(item.get(kind))}'" for kind in ("rule", "macro") if _text(item.get(kind))),
            None,
        )
        if label is None:
            continue
        for key in ("condition", "output"):
            text = _text(item.get(key))
            if not text:
                continue
            for alias in sorted(set(_ALIAS_RE.findall(text))):
                source, real = aliases[alias]
                notices.append(
                    Notice(
                        ALIAS,
                        file,
                        item.key_line(key),
                        label,
                        key,
                        f"'{alias}' is not a Falco field; eventd reads it as an alias of '{real}' "
                        f"in {source} rules (see `eventd rules lint`)",
                    )
                )
    return notices


def load_findings(notices: Sequence[Notice]) -> list[LoadFinding]:
    """The notices as the loader's warnings, with Falco's warning codes: an
    inferred source under "Unknown event source", an alias under "Unknown
    field" (what Falco reports for both)."""
    return [
        LoadFinding(
            WarningCode.LOAD_UNKNOWN_SOURCE if n.kind == INFERRED else WarningCode.LOAD_UNKNOWN_FILTER,
            n.text,
            n.file,
            n.line,
            n.item,
            n.key,
        )
        for n in notices
    ]


def prepare_documents(
    docs: Sequence[YamlNode], file: str, *, infer_source: bool
) -> tuple[list[YamlNode], list[LoadFinding]]:
    """The loader's hook: ``with_inferred_sources`` with its notices as load warnings."""
    out, notices = with_inferred_sources(docs, file, infer_source=infer_source)
    return out, load_findings(notices)
