"""Rule ``exceptions``: reading, validation, appending, and textual expansion.

An exception is a named table of field values for which a rule must not
fire.  Falco turns the tables into condition *text* appended to the rule's
condition (``(<cond>) and not (<table>)``) before anything is parsed, so the
expansion here builds the same text, quoting included; the result is parsed
with the rest of the condition.
"""

from __future__ import annotations

from typing import TypeAlias

from msgspec import Struct
from msgspec.structs import replace

from eventd.engine.ast import ALL_OPS, LIST_OPS
from eventd.engine.errors import RuleError
from eventd.engine.fields.base import FieldSet
from eventd.engine.lists import quote_item
from eventd.engine.load_result import Finding, WarningCode, exception_name_not_unique
from eventd.engine.parser import parse_lhs
from eventd.engine.yamlsrc import Map, Node, Scalar, Seq, Where, decode_str

#: A ``fields``/``comps``/``values`` entry: a scalar, or a (nested) list.
Entry: TypeAlias = str | tuple["Entry", ...]

_SCALAR_COMPS = ("in", "pmatch", "intersects")


class ExceptionDef(Struct, frozen=True):
    """One exception of a rule.  ``fields``/``comps`` are ``None`` when absent."""

    name: str
    fields: Entry | None
    comps: Entry | None
    values: tuple[Entry, ...]
    where: Where

    @property
    def key(self) -> str:
        return f"exception '{self.name}'"

    def error(self, message: str) -> RuleError:
        return self.where.error(message, key=self.key)


def _entry(node: Node, where: Where, key: str) -> Entry | None:
    """yaml-cpp's view of an entry: scalar text, a list, or nothing (null/map)."""
    if isinstance(node, Scalar):
        if node.null:
            return None
        if node.text == "":
            raise where.error("Value must be non-empty", key=key, line=node.line)
        return node.text
    if isinstance(node, Seq):
        return tuple(_entry(n, where, key) or "" for n in node.items)
    return None


def _valid(entry: Entry | None) -> bool:
    """Falco's ``is_valid``: a non-empty scalar or a non-empty list."""
    return bool(entry)


def read_exceptions(item: Map, where: Where, *, append: bool, warnings: list[Finding]) -> list[ExceptionDef]:
    """Decode the ``exceptions`` key of a rule item (absent or null: none).

    ``append`` is true for appends and overrides, where ``fields`` may be
    left out (only values are added to an existing exception).
    """
    node = item.get("exceptions")
    if node is None or (isinstance(node, Scalar) and node.null):
        return []
    if not isinstance(node, Seq):
        raise where.error("Rule exceptions must be a sequence", key="exceptions", line=node.line)
    out: list[ExceptionDef] = []
    for ex in node.items:
        if not isinstance(ex, Map):
            raise where.error("Rule exception must be a mapping", key="exceptions", line=ex.line)
        ex_where = Where(where.file, ex.line, where.item)
        name = decode_str(ex, "name", ex_where.named(f"{where.item}: exceptions"))
        assert name is not None
        key = f"exception '{name}'"
        if any(e.name == name for e in out):
            # A warning in Falco (rule_loader_reader.cpp); both are kept.
            warnings.append(
                ex_where.finding(
                    WarningCode.LOAD_EXCEPTION_NAME_NOT_UNIQUE, exception_name_not_unique(name), key=key
                )
            )
        if "fields" not in ex and not append:
            raise ex_where.error("Item has no mapping for key 'fields'", key=key)
        # ``Map.get`` is None exactly when the key is absent.
        fields_node, comps_node = ex.get("fields"), ex.get("comps")
        fields = None if fields_node is None else _entry(fields_node, ex_where, key)
        comps = None if comps_node is None else _entry(comps_node, ex_where, key)
        values: tuple[Entry, ...] = ()
        vals = ex.get("values")
        if vals is not None:
            if not isinstance(vals, Seq):
                raise ex_where.error("Rule exception values must be a sequence", key=key, line=vals.line)
            values = tuple(_entry(v, ex_where, key) or "" for v in vals.items)
        elif append:
            warnings.append(
                ex_where.finding(
                    WarningCode.LOAD_APPEND_NO_VALUES,
                    "Overriding/appending exception with no values",
                    key=key,
                )
            )
        out.append(ExceptionDef(name, fields, comps, values, ex_where))
    return out


def _check_field(ex: ExceptionDef, field: str, fields: FieldSet | None) -> None:
    """Falco's ``is_valid_lhs_field``: a field (or transformed field) the source has."""
    if fields is None:
        return
    ref = parse_lhs(field)
    if ref is None or fields.lookup(ref.name) is None:
        raise ex.error(f"'{field}' is not a supported filter field")


def validate(ex: ExceptionDef, fields: FieldSet | None) -> ExceptionDef:
    """Check ``ex`` and fill in default ``comps``; ``fields`` is ``None`` for an unknown source."""
    if not _valid(ex.fields):
        raise ex.error("Rule exception item must have fields property with a list of fields")
    if isinstance(ex.fields, tuple):
        comps = ex.comps if _valid(ex.comps) else ("=",) * len(ex.fields)
        if not isinstance(comps, tuple) or len(comps) != len(ex.fields):
            raise ex.error("Fields and comps lists must have equal length")
        for comp in comps:
            if comp not in ALL_OPS:
                raise ex.error(f"'{_flat(comp)}' is not a supported comparison operator")
        for field in ex.fields:
            _check_field(ex, _flat(field), fields)
    else:
        comps = ex.comps if _valid(ex.comps) else "in"
        if isinstance(comps, tuple):
            raise ex.error("Fields and comps must both be strings")
        if comps not in _SCALAR_COMPS:
            raise ex.error("When fields is a single value, comps must be one of (in, pmatch, intersects)")
        assert isinstance(ex.fields, str)
        _check_field(ex, ex.fields, fields)
    return replace(ex, comps=comps)


def append_exceptions(
    prev: list[ExceptionDef], new: list[ExceptionDef], fields: FieldSet | None
) -> list[ExceptionDef]:
    """Falco's append: values join an exception of the same name, else a new one is added."""
    out = list(prev)
    for ex in new:
        pos = next((i for i, e in enumerate(out) if e.name == ex.name), None)
        if pos is None:
            if not _valid(ex.fields):
                raise ex.error("Rule exception must have fields property with a list of fields")
            if not ex.values:
                raise ex.error("Rule exception must have values property with a list of values")
            out.append(validate(ex, fields))
        else:
            if _valid(ex.fields):
                raise ex.error("Can not append exception fields to existing exception, only values")
            if _valid(ex.comps):
                raise ex.error("Can not append exception comps to existing exception, only values")
            out[pos] = replace(out[pos], values=out[pos].values + ex.values)
    return out


def _flat(entry: Entry) -> str:
    """A nested entry where a scalar is expected reads as empty text (yaml-cpp)."""
    return entry if isinstance(entry, str) else ""


def expand_condition(cond: str, exceptions: list[ExceptionDef]) -> str:
    """``(<cond>)`` followed by `` and not <E>`` for every exception with values."""
    out = f"({cond})"
    for ex in exceptions:
        text = _expand_scalar(ex) if isinstance(ex.fields, str) else _expand_table(ex)
        if text:
            out += " and not " + text
    return out


def _expand_scalar(ex: ExceptionDef) -> str:
    items = []
    for val in ex.values:
        if isinstance(val, tuple):
            raise ex.error("Expected values array to contain a list of strings")
        items.append(quote_item(val))
    if not items:
        return ""
    return f"({ex.fields} {ex.comps} ({', '.join(items)}))"


def _expand_table(ex: ExceptionDef) -> str:
    assert isinstance(ex.fields, tuple) and isinstance(ex.comps, tuple)
    groups = []
    for val in ex.values:
        row = val if isinstance(val, tuple) else ()
        if len(row) != len(ex.fields):
            raise ex.error("Fields and values lists must have equal length")
        checks = []
        for field, comp, value in zip(ex.fields, ex.comps, row, strict=True):
            if isinstance(value, tuple):
                rhs = "(" + ", ".join(quote_item(_flat(v)) for v in value) + ")"
            elif comp in LIST_OPS:
                rhs = value if value.startswith("(") else f"({value})"
            else:
                rhs = quote_item(value)
            checks.append(f" {_flat(field)} {_flat(comp)} {rhs}")
        groups.append("(" + " and ".join(checks) + ")")
    return "(" + " or ".join(groups) + ")" if groups else ""
