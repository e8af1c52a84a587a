"""Falco rules files -> a compiled ``RuleSet``.

Two phases, as in Falco's engine:

* **Collect** (``_Reader``/``_Collector``): every item of every file is
  validated and folded into one namespace of lists, macros and rules.  Each
  definition, append and replace takes the next global index; a redefinition
  keeps its original index (rule order) but moves its *visibility* to the new
  index, which decides which earlier lists and macros it can see.
* **Compile** (``_compile``): list references are substituted as text,
  exceptions expanded as text, conditions parsed, macros expanded on the tree
  and every rule compiled with its source's fields, disabled rules included
  (Falco compiles them too, so a broken disabled rule still refuses the file).

Falco compiles the whole collection after *each* file, so a file must be
complete given only the files before it; eventd does the same.  Any problem
raises ``RuleError`` naming file, line, item and key; the ``RuleSet`` is built
only when everything compiled, so nothing is ever half-loaded.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eventd.boundedfile import FileTooLarge, read_bounded
from eventd.engine.ast import Check, FieldRef, Node, walk
from eventd.engine.compiler import compile_condition
from eventd.engine.errors import RuleError
from eventd.engine.exceptions import (
    ExceptionDef,
    append_exceptions,
    expand_condition,
    read_exceptions,
    validate,
)
from eventd.engine.fields import default_registry
from eventd.engine.fields.base import FieldSet, Registry
from eventd.engine.lists import LIST_NAME, ListDef, resolve_lists, substitute_lists
from eventd.engine.macros import Expanded, expand_body, expand_macros
from eventd.engine.output import OutputFormat, UnknownOutputField
from eventd.engine.parser import parse_condition
from eventd.engine.priority import Priority
from eventd.engine.ruleset import Rule, RuleSet
from eventd.engine.versions import Version, engine_problem, parse_engine_requirement, plugin_problem
from eventd.engine.yamlsrc import (
    Map,
    Scalar,
    Seq,
    Where,
    decode_bool,
    decode_scalars,
    decode_str,
    load_documents,
    scalar_text,
)

MAX_CONDITION_DEPTH = 1000
RULE_MATCHING = ("first", "all")
DEFAULT_SOURCE = "syscall"
_MACRO_NAME = re.compile(r"[a-zA-Z]+[a-zA-Z0-9_]*")

WARNING_APPEND = (
    "'append' key is deprecated. Add an 'append' entry (e.g. 'condition: append') under 'override' instead."
)
WARNING_ENABLED = (
    "The standalone 'enabled' key usage is deprecated. The correct approach requires also "
    "a 'replace' entry under the 'override' key (i.e. 'enabled: replace')."
)
ERROR_OVERRIDE_APPEND = (
    "Keys 'override' and 'append: true' cannot be used together. Add an 'append' entry "
    "(e.g. 'condition: append') under 'override' instead."
)
ERROR_NO_PREVIOUS_MACRO = (
    "Macro uses 'append' or 'override.condition: append' but no macro by that name already exists"
)
ERROR_NO_PREVIOUS_LIST = (
    "List uses 'append' or 'override.items: append' but no list by that name already exists"
)
ERROR_NO_PREVIOUS_RULE_APPEND = (
    "Rule uses 'append' or 'override.<key>: append' but no rule by that name already exists"
)
ERROR_NO_PREVIOUS_RULE_REPLACE = (
    "An 'override.<key>: replace' to a rule was requested but no rule by that name already exists"
)
ERROR_INVALID_LIST_NAME = (
    "List has an invalid name. List names must match a regular expression: ([^()\"'[:space:]=,]+)"
)
ERROR_INVALID_MACRO_NAME = (
    "Macro has an invalid name. Macro names must match a regular expression: ([a-zA-Z]+[a-zA-Z0-9_]*)"
)

_LIST_KEYS = frozenset({"list", "items", "append", "override"})
_MACRO_KEYS = frozenset({"macro", "condition", "append", "override"})
_RULE_APPENDABLE = ("condition", "output", "desc", "tags", "exceptions")
# ``capture``/``capture_duration`` are replace-only in newer Falco; accepted, ignored.
_RULE_REPLACEABLE = (
    *_RULE_APPENDABLE,
    "priority",
    "enabled",
    "warn_evttypes",
    "skip-if-unknown-filter",
    "capture",
    "capture_duration",
)
_RULE_KEYS = frozenset({"rule", "source", "append", "override", *_RULE_REPLACEABLE})


# --------------------------------------------------------------------------- collected items


@dataclass
class _ListInfo:
    name: str
    items: list[str]
    where: Where
    index: int = 0
    visibility: int = 0


@dataclass
class _MacroInfo:
    name: str
    cond: str
    where: Where
    cond_where: Where
    index: int = 0
    visibility: int = 0


@dataclass
class _RuleInfo:
    name: str
    source: str
    cond: str
    output: str
    desc: str
    priority: Priority
    tags: set[str]
    exceptions: list[ExceptionDef]
    enabled: bool
    skip_unknown: bool
    where: Where
    cond_where: Where
    output_where: Where
    unknown_source: bool = False
    index: int = 0
    visibility: int = 0


@dataclass
class _RuleUpdate:
    """The keys an ``append``/``override`` item carries; ``None`` when absent."""

    cond: str | None = None
    output: str | None = None
    desc: str | None = None
    tags: set[str] | None = None
    exceptions: list[ExceptionDef] | None = None
    priority: Priority | None = None
    enabled: bool | None = None
    skip_unknown: bool | None = None
    cond_where: Where | None = None
    output_where: Where | None = None

    def has_any_value(self) -> bool:
        values = (self.cond, self.output, self.desc, self.tags, self.exceptions)
        flags = (self.priority, self.enabled, self.skip_unknown)
        return any(v is not None for v in values) or any(v is not None for v in flags)


@dataclass
class _Collector:
    """Everything read so far, in one namespace (Falco's ``rule_loader::collector``)."""

    registry: Registry
    lists: dict[str, _ListInfo] = field(default_factory=dict)
    macros: dict[str, _MacroInfo] = field(default_factory=dict)
    rules: dict[str, _RuleInfo] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    next_index: int = 0

    def _take_index(self) -> int:
        self.next_index += 1
        return self.next_index - 1

    def _define(self, table: dict, info: _ListInfo | _MacroInfo | _RuleInfo) -> None:
        """A new definition, or a redefinition that keeps the old index."""
        idx = self._take_index()
        prev = table.get(info.name)
        info.index = idx if prev is None else prev.index
        info.visibility = idx
        table[info.name] = info  # an existing key keeps its place in the dict

    def fieldset(self, source: str) -> FieldSet | None:
        return self.registry.fieldset(source) if source in self.registry else None

    # lists and macros

    def define_list(self, info: _ListInfo) -> None:
        self._define(self.lists, info)

    def append_list(self, info: _ListInfo) -> None:
        prev = self.lists.get(info.name)
        if prev is None:
            raise info.where.error(ERROR_NO_PREVIOUS_LIST)
        prev.items.extend(info.items)
        prev.visibility = self._take_index()

    def define_macro(self, info: _MacroInfo) -> None:
        self._define(self.macros, info)

    def append_macro(self, info: _MacroInfo) -> None:
        prev = self.macros.get(info.name)
        if prev is None:
            raise info.where.error(ERROR_NO_PREVIOUS_MACRO)
        prev.cond += " " + info.cond
        prev.cond_where = info.cond_where
        prev.visibility = self._take_index()

    # rules

    def define_rule(self, info: _RuleInfo) -> None:
        prev = self.rules.get(info.name)
        if prev is not None and prev.source != info.source:
            raise info.where.error("Rule has been re-defined with a different source")
        fields = self.fieldset(info.source)
        if fields is None:
            info.unknown_source = True
            self.warnings.append(info.where.warning(f"Unknown source {info.source}, skipping"))
        info.exceptions = [validate(ex, fields) for ex in info.exceptions]
        self._define(self.rules, info)

    def _previous_rule(self, name: str, where: Where, missing: str) -> tuple[_RuleInfo, FieldSet | None]:
        prev = self.rules.get(name)
        if prev is None:
            raise where.error(missing)
        return prev, None if prev.unknown_source else self.fieldset(prev.source)

    def append_rule(self, name: str, upd: _RuleUpdate, where: Where) -> None:
        prev, fields = self._previous_rule(name, where, ERROR_NO_PREVIOUS_RULE_APPEND)
        if not upd.has_any_value():
            raise where.error("Appended rule must have exceptions or condition property")
        if upd.cond:
            prev.cond += " " + upd.cond
            prev.cond_where = upd.cond_where or prev.cond_where
        if upd.output:
            prev.output += " " + upd.output
            prev.output_where = upd.output_where or prev.output_where
        if upd.desc:
            prev.desc += " " + upd.desc
        if upd.tags is not None:
            prev.tags |= upd.tags
        if upd.exceptions is not None:
            prev.exceptions = append_exceptions(prev.exceptions, upd.exceptions, fields)
        prev.visibility = self._take_index()

    def replace_rule(self, name: str, upd: _RuleUpdate, where: Where) -> None:
        prev, fields = self._previous_rule(name, where, ERROR_NO_PREVIOUS_RULE_REPLACE)
        if not upd.has_any_value():
            raise where.error("The rule must have at least one field that can be replaced")
        if upd.cond is not None:
            prev.cond = upd.cond
            prev.cond_where = upd.cond_where or prev.cond_where
        if upd.output is not None:
            prev.output = upd.output
            prev.output_where = upd.output_where or prev.output_where
        if upd.desc is not None:
            prev.desc = upd.desc
        if upd.tags is not None:
            prev.tags = upd.tags
        if upd.exceptions is not None:
            prev.exceptions = [validate(ex, fields) for ex in upd.exceptions]
        if upd.priority is not None:
            prev.priority = upd.priority
        if upd.enabled is not None:
            prev.enabled = upd.enabled
        if upd.skip_unknown is not None:
            prev.skip_unknown = upd.skip_unknown
        prev.visibility = self._take_index()

    def enable_rule(self, name: str, enabled: bool, where: Where) -> None:
        prev = self.rules.get(name)
        if prev is None:
            raise where.error("Rule has 'enabled' key but no rule by that name already exists")
        prev.enabled = enabled


# --------------------------------------------------------------------------- reading


class _Reader:
    """Reads the items of one file into the collector (Falco's ``rule_loader::reader``)."""

    def __init__(self, collector: _Collector, file: str) -> None:
        self.col = collector
        self.file = file

    def read(self, text: str) -> None:
        count = 0
        for doc in load_documents(text, self.file):
            if isinstance(doc, Map):
                raise RuleError("Rules content is not yaml array of objects", file=self.file, line=doc.line)
            if not isinstance(doc, Seq):
                raise RuleError("Rules content is not yaml", file=self.file, line=doc.line)
            for item in doc.items:
                count += 1
                if isinstance(item, Scalar) and item.null:
                    continue
                where = Where(self.file, item.line, f"item #{count}")
                if not isinstance(item, Map):
                    raise where.error(
                        "Unexpected element type. Each element should be a yaml associative array."
                    )
                self._read_item(item, where)

    def _read_item(self, item: Map, where: Where) -> None:
        if "required_engine_version" in item:
            self._engine_version(item, where)
        elif "required_plugin_versions" in item:
            self._plugin_versions(item, where)
        elif "list" in item:
            self._list(item, where)
        elif "macro" in item:
            self._macro(item, where)
        elif "rule" in item:
            self._rule(item, where)
        else:
            self.col.warnings.append(where.warning("Unknown top level item"))

    def _unknown_keys(self, item: Map, where: Where, allowed: frozenset[str]) -> None:
        for key in item:
            if key not in allowed:
                self.col.warnings.append(
                    where.warning(f"Unknown key '{key}' ignored", line=item.key_line(key))
                )

    # versions

    def _engine_version(self, item: Map, where: Where) -> None:
        key = "required_engine_version"
        text = decode_str(item, key, where)
        assert text is not None
        line = item.key_line(key)
        required = parse_engine_requirement(text)
        if required is None:
            raise where.error(
                f"Unable to parse engine version '{_shorten(text)}' as a semver string. "
                'Expected "x.y.z" semver format.',
                key=key,
                line=line,
            )
        problem = engine_problem(required)
        if problem is not None:
            raise where.error(problem, key=key, line=line)

    def _plugin_versions(self, item: Map, where: Where) -> None:
        key = "required_plugin_versions"
        node = item.get(key)
        if not isinstance(node, Seq):
            raise where.error("Value of required_plugin_versions must be a sequence", key=key)
        for plugin in node.items:
            pwhere = Where(self.file, plugin.line, where.item)
            if not isinstance(plugin, Map):
                raise pwhere.error("Plugin version must be a mapping", key=key)
            alternatives = [self._plugin_requirement(plugin, pwhere)]
            alts = plugin.get("alternatives")
            if alts is not None:
                if not isinstance(alts, Seq):
                    raise pwhere.error("Value of plugin version alternatives must be a sequence", key=key)
                for alt in alts.items:
                    awhere = Where(self.file, alt.line, where.item)
                    if not isinstance(alt, Map):
                        raise awhere.error("Plugin version alternative must be a mapping", key=key)
                    alternatives.append(self._plugin_requirement(alt, awhere))
            seen: set[str] = set()
            for name, version in alternatives:
                if Version.parse(version) is None:
                    raise pwhere.error(
                        f"Invalid required version '{_shorten(version)}' for plugin '{name}'", key=key
                    )
                if name in seen:
                    raise pwhere.error(
                        f"Defined multiple alternative version requirements for plugin '{name}'", key=key
                    )
                seen.add(name)
            problem = plugin_problem(alternatives)
            if problem is not None:
                raise pwhere.error(problem, key=key)

    @staticmethod
    def _plugin_requirement(node: Map, where: Where) -> tuple[str, str]:
        name = decode_str(node, "name", where)
        assert name is not None
        version = decode_str(node, "version", where.named(f"{where.item}: plugin '{name}'"))
        assert version is not None
        return name, version

    # overrides

    def _overrides(
        self, item: Map, where: Where, appendable: Sequence[str], replaceable: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        node = item.get("override")
        if node is None or (isinstance(node, Scalar) and node.null):
            return [], []
        if not isinstance(node, Map):
            raise where.error("Value of 'override' must be a mapping", key="override", line=node.line)
        appends: list[str] = []
        replaces: list[str] = []
        for key in node:
            line = node.key_line(key)
            op = scalar_text(node.get(key))
            if op == "append":
                if key not in appendable:
                    raise where.error(
                        f"Key '{key}' cannot be appended to, use 'replace' instead", key="override", line=line
                    )
                appends.append(key)
            elif op == "replace":
                if key not in replaceable:
                    raise where.error(f"Key '{key}' cannot be replaced", key="override", line=line)
                replaces.append(key)
            else:
                allowed = " ".join(
                    w for w, ok in (("append", key in appendable), ("replace", key in replaceable)) if ok
                )
                raise where.error(
                    f"Invalid override operation for key '{key}': '{op or ''}'. "
                    f"Allowed values are: {allowed}",
                    key="override",
                    line=line,
                )
        return appends, replaces

    def _append_flag(self, item: Map, where: Where) -> bool:
        append = decode_bool(item, "append", where, False)
        if append:
            self.col.warnings.append(where.warning(WARNING_APPEND, line=item.key_line("append")))
        return append

    # lists and macros

    def _list(self, item: Map, where: Where) -> None:
        name = decode_str(item, "list", where)
        assert name is not None
        where = where.named(f"list '{name}'")
        if not LIST_NAME.fullmatch(name):
            raise where.error(ERROR_INVALID_LIST_NAME)
        self._unknown_keys(item, where, _LIST_KEYS)
        if "items" not in item:
            raise where.error("Item has no mapping for key 'items'")
        items = decode_scalars(item, "items", where)
        append = self._append_flag(item, where)
        appends, replaces = self._overrides(item, where, ("items",), ("items",))
        if append and (appends or replaces):
            raise where.error(ERROR_OVERRIDE_APPEND)
        info = _ListInfo(name, items, where)
        if append or "items" in appends:
            self.col.append_list(info)
        else:
            self.col.define_list(info)

    def _macro(self, item: Map, where: Where) -> None:
        name = decode_str(item, "macro", where)
        assert name is not None
        where = where.named(f"macro '{name}'")
        if not _MACRO_NAME.fullmatch(name):
            raise where.error(ERROR_INVALID_MACRO_NAME)
        self._unknown_keys(item, where, _MACRO_KEYS)
        cond = decode_str(item, "condition", where)
        assert cond is not None
        cond_where = Where(where.file, item.key_line("condition"), where.item)
        append = self._append_flag(item, where)
        appends, replaces = self._overrides(item, where, ("condition",), ("condition",))
        if append and (appends or replaces):
            raise where.error(ERROR_OVERRIDE_APPEND)
        info = _MacroInfo(name, cond, where, cond_where)
        if append or "condition" in appends:
            self.col.append_macro(info)
        else:
            self.col.define_macro(info)

    # rules

    def _rule(self, item: Map, where: Where) -> None:
        name = decode_str(item, "rule", where)
        assert name is not None
        where = where.named(f"rule '{name}'")
        self._unknown_keys(item, where, _RULE_KEYS)
        append = self._append_flag(item, where)
        appends, replaces = self._overrides(item, where, _RULE_APPENDABLE, _RULE_REPLACEABLE)
        if append and (appends or replaces):
            raise where.error(ERROR_OVERRIDE_APPEND)
        if appends or replaces:
            self._rule_overrides(name, item, where, appends, replaces)
        elif append:
            upd = _RuleUpdate()
            if "condition" in item:
                upd.cond = decode_str(item, "condition", where)
                upd.cond_where = Where(where.file, item.key_line("condition"), where.item)
            if "exceptions" in item:
                upd.exceptions = read_exceptions(item, where, append=True, warnings=self.col.warnings)
            self.col.append_rule(name, upd, where)
        elif not any(k in item for k in ("condition", "output", "desc", "priority")):
            if "enabled" not in item:
                raise where.error("Item has no mapping for key 'enabled'")
            enabled = decode_bool(item, "enabled", where, True)
            self.col.warnings.append(where.warning(WARNING_ENABLED))
            self.col.enable_rule(name, enabled, where)
        else:
            self.col.define_rule(self._rule_definition(name, item, where))

    def _rule_definition(self, name: str, item: Map, where: Where) -> _RuleInfo:
        cond = decode_str(item, "condition", where)
        output = decode_str(item, "output", where)
        desc = decode_str(item, "desc", where)
        priority = self._priority(item, where)
        assert cond is not None and output is not None and desc is not None
        return _RuleInfo(
            name=name,
            source=decode_str(item, "source", where, required=False) or DEFAULT_SOURCE,
            cond=cond,
            output=output.strip(),
            desc=desc,
            priority=priority,
            enabled=decode_bool(item, "enabled", where, True),
            skip_unknown=self._rule_flags(item, where),
            tags=set(decode_scalars(item, "tags", where)) if "tags" in item else set(),
            exceptions=read_exceptions(item, where, append=False, warnings=self.col.warnings),
            where=where,
            cond_where=Where(where.file, item.key_line("condition"), where.item),
            output_where=Where(where.file, item.key_line("output"), where.item),
        )

    @staticmethod
    def _rule_flags(item: Map, where: Where) -> bool:
        """Decode ``warn_evttypes`` (syscall-only, so unused) and return ``skip-if-unknown-filter``."""
        decode_bool(item, "warn_evttypes", where, True)
        return decode_bool(item, "skip-if-unknown-filter", where, False)

    @staticmethod
    def _priority(item: Map, where: Where) -> Priority:
        text = decode_str(item, "priority", where)
        try:
            return Priority.parse(text)
        except ValueError:
            raise where.error("Invalid priority", key="priority", line=item.key_line("priority")) from None

    def _rule_overrides(
        self, name: str, item: Map, where: Where, appends: list[str], replaces: list[str]
    ) -> None:
        expected = {k for k in _RULE_REPLACEABLE if k in item}
        if appends:
            upd = self._rule_update(item, where, appends, expected, "append")
            self.col.append_rule(name, upd, where)
        if replaces:
            upd = self._rule_update(item, where, replaces, expected, "replace")
            self.col.replace_rule(name, upd, where)
        for key in sorted(expected):
            raise where.error(
                f"Unexpected key '{key}': no corresponding entry under 'override' is defined.",
                key=key,
                line=item.key_line(key),
            )

    def _rule_update(
        self, item: Map, where: Where, keys: list[str], expected: set[str], kind: str
    ) -> _RuleUpdate:
        upd = _RuleUpdate()
        for key in _RULE_REPLACEABLE:  # Falco's fixed order, whatever the override order
            if key not in keys:
                continue
            if key not in expected:
                article = "An" if kind == "append" else "A"
                raise where.error(
                    f"{article} {kind} override for '{key}' was specified but '{key}' is not defined"
                )
            expected.discard(key)
            line = item.key_line(key)
            if key == "condition":
                upd.cond = decode_str(item, key, where)
                upd.cond_where = Where(where.file, line, where.item)
            elif key == "output":
                upd.output = decode_str(item, key, where)
                upd.output_where = Where(where.file, line, where.item)
            elif key == "desc":
                upd.desc = decode_str(item, key, where)
            elif key == "tags":
                upd.tags = set(decode_scalars(item, key, where))
            elif key == "exceptions":
                upd.exceptions = read_exceptions(item, where, append=True, warnings=self.col.warnings)
            elif key == "priority":
                upd.priority = self._priority(item, where)
            elif key == "enabled":
                upd.enabled = decode_bool(item, key, where, True)
            elif key == "skip-if-unknown-filter":
                upd.skip_unknown = decode_bool(item, key, where, False)
            elif key == "warn_evttypes":
                decode_bool(item, key, where, True)
        return upd


# --------------------------------------------------------------------------- compiling


def _shorten(text: str, limit: int = 40) -> str:
    """``text`` cut for a message: hostile values can be megabytes long."""
    return text if len(text) <= limit else text[:limit] + "..."


def _located(err: RuleError, where: Where, key: str) -> RuleError:
    return err.located(file=where.file, line=where.line, item=where.item, key=key)


def _field_refs(node: Node) -> list[FieldRef]:
    refs = []
    for n in walk(node):
        if isinstance(n, Check):
            refs.append(n.field)
            if isinstance(n.value, FieldRef):
                refs.append(n.value)
    return refs


@dataclass
class _Compiled:
    rules: list[Rule]
    disabled: list[str]
    warnings: list[str]


def _compile(col: _Collector) -> _Compiled:
    """Compile everything collected so far (Falco's ``rule_loader::compiler``)."""
    warnings: list[str] = []
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
            raise _located(err, where, "condition") from None

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
            raise _located(err, m.cond_where, "condition") from None
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
                warnings.append(r.output_where.warning(f"rule skipped: {err.message}", key="output"))
                continue
            raise _located(err, r.output_where, "output") from None
        except RuleError as err:
            raise _located(err, r.output_where, "output") from None
        tree = parse(cond, r.cond_where)
        try:
            tree, used = expand_macros(tree, expanded.get)
        except RuleError as err:
            raise _located(err, r.cond_where, "condition") from None
        used_macros.update(used)
        unknown = sorted({f.name for f in _field_refs(tree) if fields.lookup(f.name) is None})
        if unknown and r.skip_unknown:
            warnings.append(
                r.cond_where.warning(f"rule skipped: unknown field '{unknown[0]}'", key="condition")
            )
            continue
        try:
            predicate = compile_condition(tree, fields)
        except RuleError as err:
            raise _located(err, r.cond_where, "condition") from None
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
            warnings.append(m.where.warning("Macro not referred to by any other rule/macro"))
    for li in col.lists.values():
        if li.name not in used_lists:
            warnings.append(li.where.warning("List not referred to by any other rule/macro"))
    return _Compiled(rules, disabled, warnings)


# --------------------------------------------------------------------------- public API


def load_rules_text(sources: Sequence[tuple[str, str]], *, registry: Registry | None = None) -> RuleSet:
    """Load rules from ``(display name, YAML text)`` pairs, in order."""
    col = _Collector(registry if registry is not None else default_registry())
    compiled = _Compiled([], [], [])
    for name, text in sources:
        try:
            _Reader(col, name).read(text)
            compiled = _compile(col)  # as Falco: every file must compile given those before it
        except RecursionError:
            # Every nesting has its own limit; this is the net under them, so
            # that no input can escape as anything but a ``RuleError``.
            raise RuleError("rules nested too deeply to load", file=name) from None
    return RuleSet(
        rules=tuple(compiled.rules),
        files=tuple(name for name, _ in sources),
        lists=len(col.lists),
        macros=len(col.macros),
        disabled=tuple(compiled.disabled),
        warnings=tuple(col.warnings + compiled.warnings),
    )


def rule_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files in order; a directory contributes its ``*.yaml``/``*.yml`` sorted by name."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml") and f.is_file()))
        else:
            out.append(p)
    return out


def load_rules(
    paths: Sequence[str | Path], *, registry: Registry | None = None, rule_matching: str = "first"
) -> RuleSet:
    """Load rule files and directories in order; raise ``RuleError`` or ``OSError``.

    ``rule_matching`` is only validated here; the matcher applies it.
    """
    if rule_matching not in RULE_MATCHING:
        raise ValueError(f"rule_matching must be one of {RULE_MATCHING}, not {rule_matching!r}")
    sources = [(str(f), _read_text(f)) for f in rule_files(paths)]
    return load_rules_text(sources, registry=registry)


def _read_text(path: Path) -> str:
    """The file as text (a UTF-8 BOM is dropped); invalid UTF-8 is a ``RuleError``,
    and so is a file past ``boundedfile.MAX_FILE_BYTES`` (``/dev/zero`` is not read whole)."""
    try:
        raw = read_bounded(path)
    except FileTooLarge as err:
        message = f"larger than {err.limit} bytes, the limit for a rules file"
        raise RuleError(message, file=str(path)) from None
    data = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RuleError(
            f"invalid UTF-8 at byte offset {err.start + len(raw) - len(data)} ({err.reason})",
            file=str(path),
            line=data.count(b"\n", 0, err.start) + 1,
        ) from None
