"""Compiling: collected items to rules (Falco's ``rule_loader_compiler.cpp``).

List references are substituted as text, exceptions expanded as text,
conditions parsed, macros expanded on the tree with the macros each item
can see, and every rule compiled with its source's fields, disabled rules
included (Falco compiles them too, so a broken disabled rule still refuses
the file).  Before compiling, each rule's tree goes through Falco's
``filter_warning_resolver`` (unsafe ``<NA>`` comparisons); the compiler
reports libsinsp's warnings (a constant that looks like a field or a
transformer, a regex a plain operator would do) and eventd's extensions
(``EVENTD_NOT_PORTABLE``, refused when ``strict``).

Error codes follow Falco: a condition that does not parse or compile is
``LOAD_ERR_COMPILE_CONDITION``, an output ``LOAD_ERR_COMPILE_OUTPUT``, an
undefined macro ``LOAD_ERR_VALIDATE``.
"""

from __future__ import annotations

from msgspec import Struct

from eventd.engine.ast import Check, Node, field_refs, walk
from eventd.engine.compiler import Note, compile_condition
from eventd.engine.errors import RuleError
from eventd.engine.lists import ListDef, resolve_lists, substitute_lists
from eventd.engine.load_result import (
    WARNING_UNUSED_LIST,
    WARNING_UNUSED_MACRO,
    ErrorCode,
    Finding,
    WarningCode,
)
from eventd.engine.loader_collector import Collector, RuleInfo
from eventd.engine.macros import Expanded, expand_body, expand_macros
from eventd.engine.output import OutputFormat, UnknownOutputField
from eventd.engine.parser import parse_condition
from eventd.engine.rule_exceptions import expand_condition
from eventd.engine.ruleset import Rule
from eventd.engine.yamlsrc import Where

MAX_CONDITION_DEPTH = 1000
_CONDITION = ErrorCode.LOAD_ERR_COMPILE_CONDITION.name
_OUTPUT = ErrorCode.LOAD_ERR_COMPILE_OUTPUT.name
_VALIDATE = ErrorCode.LOAD_ERR_VALIDATE.name
#: Falco's ``filter_warning_resolver``: fields whose missing values read as
#: ``<NA>``, and the operators for which comparing with ``<NA>`` is unsafe.
_NA = "<NA>"
_NA_FIELD_PREFIXES = ("ka.", "jevt.")
_NA_OPS = frozenset({"=", "==", "!=", "in", "intersects", "pmatch"})


def _located(err: RuleError, where: Where, key: str, code: str) -> RuleError:
    if err.code is None:
        err.code = _VALIDATE if err.message.startswith(("Undefined macro", "reference loop")) else code
    return err.located(file=where.file, line=where.line, item=where.item, key=key)


def unsafe_na_check(tree: Node) -> bool:
    """Whether ``tree`` compares a ``ka.*``/``jevt.*`` field with ``<NA>`` by
    (in)equality or membership: Falco warns ``LOAD_UNSAFE_NA_CHECK``."""
    for n in walk(tree):
        if not isinstance(n, Check) or n.op not in _NA_OPS or not n.field.name.startswith(_NA_FIELD_PREFIXES):
            continue
        value = n.value
        if value == _NA or (isinstance(value, tuple) and _NA in value):
            return True
    return False


class Compiled(Struct):
    rules: list[Rule]
    disabled: list[str]
    warnings: list[Finding]


def _note_finding(note: Note, r: RuleInfo) -> Finding:
    w = r.cond_where
    return Finding(note.code, note.text, w.file, w.line, w.item, "condition")


def compile_collection(col: Collector, *, strict: bool = False) -> Compiled:
    """Compile everything collected so far (Falco's ``rule_loader::compiler::compile``)."""
    warnings: list[Finding] = []
    list_items, used_lists = resolve_lists(
        [ListDef(li.name, tuple(li.items), li.index, li.visibility, li.where) for li in col.lists.values()]
    )
    list_pairs = list(list_items.items())

    def parse(cond: str, where: Where) -> Node:
        try:
            text, used = substitute_lists(cond, list_pairs)
            used_lists.update(used)
            return parse_condition(text, max_depth=MAX_CONDITION_DEPTH)
        except RuleError as err:
            raise _located(err, where, "condition", _CONDITION) from None

    # Macros: each body parsed alone, then expanded with the macros it can see.
    parsed = {m.name: parse(m.cond, m.cond_where) for m in col.macros.values()}
    expanded: dict[str, Expanded] = {}
    used_macros: set[str] = set()
    for m in col.macros.values():

        def visible(name: str, vis: int = m.visibility) -> Node | Expanded | None:
            info = col.macros.get(name)
            if info is None or info.index >= vis:
                return None
            return expanded.get(name, parsed[name])

        try:
            expanded[m.name], used = expand_body(parsed[m.name], visible)
        except RuleError as err:
            raise _located(err, m.cond_where, "condition", _VALIDATE) from None
        used_macros.update(used)

    rules: list[Rule] = []
    disabled: list[str] = []
    for r in col.rules.values():
        if r.unknown_source:
            continue
        fields = col.registry.fieldset(r.source)
        cond = expand_condition(r.cond, r.exceptions) if r.exceptions else r.cond
        try:
            output = OutputFormat.compile(r.output, fields)
        except UnknownOutputField as err:
            if r.skip_unknown:
                warnings.append(
                    r.output_where.finding(WarningCode.LOAD_UNKNOWN_FILTER, err.message, key="output")
                )
                continue
            raise _located(err, r.output_where, "output", _OUTPUT) from None
        except RuleError as err:
            raise _located(err, r.output_where, "output", _OUTPUT) from None
        tree = parse(cond, r.cond_where)
        try:
            tree, used = expand_macros(tree, expanded.get)
        except RuleError as err:
            raise _located(err, r.cond_where, "condition", _VALIDATE) from None
        used_macros.update(used)
        if unsafe_na_check(tree):
            warnings.append(r.cond_where.finding(WarningCode.LOAD_UNSAFE_NA_CHECK, "", key="condition"))
        unknown = sorted({f.name for f in field_refs(tree) if fields.lookup(f.name) is None})
        if unknown and r.skip_unknown:
            warnings.append(
                r.cond_where.finding(
                    WarningCode.LOAD_UNKNOWN_FILTER,
                    f"filter_check called with nonexistent field {unknown[0]}",
                    key="condition",
                )
            )
            continue
        notes: list[Note] = []
        try:
            predicate = compile_condition(tree, fields, strict=strict, notes=notes)
        except RuleError as err:
            raise _located(err, r.cond_where, "condition", _CONDITION) from None
        warnings.extend(_note_finding(n, r) for n in notes)
        if not r.enabled:
            disabled.append(r.name)
            continue
        rules.append(
            Rule(
                name=r.name,
                source=r.source,
                priority=r.priority,
                desc=r.desc,
                tags=tuple(sorted(r.tags)),
                condition=tree,
                predicate=predicate,
                output=output,
                order=r.index,
                file=r.where.file,
                line=r.where.line,
            )
        )
    rules.sort(key=lambda rule: rule.order)
    for m in col.macros.values():
        if m.name not in used_macros:
            warnings.append(m.where.finding(WarningCode.LOAD_UNUSED_MACRO, WARNING_UNUSED_MACRO))
    for li in col.lists.values():
        if li.name not in used_lists:
            warnings.append(li.where.finding(WarningCode.LOAD_UNUSED_LIST, WARNING_UNUSED_LIST))
    return Compiled(rules, disabled, warnings)
