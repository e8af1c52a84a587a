"""Collecting: folding read items into one namespace (Falco's ``rule_loader_collector.cpp``).

Each definition, append and replace takes the next global index; a
redefinition keeps its original index (rule order) but moves its
*visibility* to the new index, which decides which earlier lists and macros
it can see.  Appends and overrides change the collected item in place.
Exceptions are validated here against the rule's source, as Falco's
``validate_exception_info`` does.  Problems are ``LOAD_ERR_VALIDATE``.
"""

from __future__ import annotations

from typing import TypeVar

from msgspec import Struct, field

from eventd.engine.errors import RuleError
from eventd.engine.fields.base import FieldSet, Registry
from eventd.engine.load_result import (
    ERROR_NO_PREVIOUS_LIST,
    ERROR_NO_PREVIOUS_MACRO,
    ERROR_NO_PREVIOUS_RULE_APPEND,
    ERROR_NO_PREVIOUS_RULE_REPLACE,
    WARNING_REDEFINED_SOURCE,
    ErrorCode,
    Finding,
    WarningCode,
)
from eventd.engine.rule_exceptions import ExceptionDef, append_exceptions, validate
from eventd.engine.yamlsrc import Where
from eventd.priority import Priority


def _invalid(where: Where, message: str) -> RuleError:
    err = where.error(message)
    err.code = ErrorCode.LOAD_ERR_VALIDATE.name
    return err


def validated(err: RuleError) -> RuleError:
    """``err`` with Falco's ``LOAD_ERR_VALIDATE`` code unless it has one."""
    if err.code is None:
        err.code = ErrorCode.LOAD_ERR_VALIDATE.name
    return err


class ListInfo(Struct):
    name: str
    items: list[str]
    where: Where
    index: int = 0
    visibility: int = 0


class MacroInfo(Struct):
    name: str
    cond: str
    where: Where
    cond_where: Where
    index: int = 0
    visibility: int = 0


class RuleInfo(Struct):
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


class RuleUpdate(Struct):
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


#: One kind of definition; ``Collector._define`` keeps each in its own table.
_Info = TypeVar("_Info", ListInfo, MacroInfo, RuleInfo)


class Collector(Struct):
    """Everything read so far, in one namespace (Falco's ``rule_loader::collector``)."""

    registry: Registry
    lists: dict[str, ListInfo] = field(default_factory=dict)
    macros: dict[str, MacroInfo] = field(default_factory=dict)
    rules: dict[str, RuleInfo] = field(default_factory=dict)
    warnings: list[Finding] = field(default_factory=list)
    next_index: int = 0

    def _take_index(self) -> int:
        self.next_index += 1
        return self.next_index - 1

    def _define(self, table: dict[str, _Info], info: _Info) -> None:
        """A new definition, or a redefinition that keeps the old index."""
        idx = self._take_index()
        prev = table.get(info.name)
        info.index = idx if prev is None else prev.index
        info.visibility = idx
        table[info.name] = info  # an existing key keeps its place in the dict

    def fieldset(self, source: str) -> FieldSet | None:
        return self.registry.fieldset(source) if source in self.registry else None

    # lists and macros

    def define_list(self, info: ListInfo) -> None:
        self._define(self.lists, info)

    def append_list(self, info: ListInfo) -> None:
        prev = self.lists.get(info.name)
        if prev is None:
            raise _invalid(info.where, ERROR_NO_PREVIOUS_LIST)
        prev.items.extend(info.items)
        prev.visibility = self._take_index()

    def define_macro(self, info: MacroInfo) -> None:
        self._define(self.macros, info)

    def append_macro(self, info: MacroInfo) -> None:
        prev = self.macros.get(info.name)
        if prev is None:
            raise _invalid(info.where, ERROR_NO_PREVIOUS_MACRO)
        prev.cond += " " + info.cond
        prev.cond_where = info.cond_where
        prev.visibility = self._take_index()

    # rules

    def define_rule(self, info: RuleInfo) -> None:
        prev = self.rules.get(info.name)
        if prev is not None and prev.source != info.source:
            raise _invalid(info.where, WARNING_REDEFINED_SOURCE)
        fields = self.fieldset(info.source)
        if fields is None:
            info.unknown_source = True
            self.warnings.append(
                info.where.finding(WarningCode.LOAD_UNKNOWN_SOURCE, f"Unknown source {info.source}, skipping")
            )
        try:
            info.exceptions = [validate(ex, fields) for ex in info.exceptions]
        except RuleError as err:
            raise validated(err) from None
        self._define(self.rules, info)

    def _previous_rule(self, name: str, where: Where, missing: str) -> tuple[RuleInfo, FieldSet | None]:
        prev = self.rules.get(name)
        if prev is None:
            raise _invalid(where, missing)
        return prev, None if prev.unknown_source else self.fieldset(prev.source)

    def append_rule(self, name: str, upd: RuleUpdate, where: Where) -> None:
        prev, fields = self._previous_rule(name, where, ERROR_NO_PREVIOUS_RULE_APPEND)
        if not upd.has_any_value():
            raise _invalid(where, "Appended rule must have exceptions or condition property")
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
            try:
                prev.exceptions = append_exceptions(prev.exceptions, upd.exceptions, fields)
            except RuleError as err:
                raise validated(err) from None
        prev.visibility = self._take_index()

    def replace_rule(self, name: str, upd: RuleUpdate, where: Where) -> None:
        prev, fields = self._previous_rule(name, where, ERROR_NO_PREVIOUS_RULE_REPLACE)
        if not upd.has_any_value():
            raise _invalid(where, "The rule must have at least one field that can be replaced")
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
            try:
                prev.exceptions = [validate(ex, fields) for ex in upd.exceptions]
            except RuleError as err:
                raise validated(err) from None
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
            raise _invalid(where, "Rule has 'enabled' key but no rule by that name already exists")
        prev.enabled = enabled
