"""Syntax tree to predicate: ``compile_condition(tree, fields)(event) -> bool``.

The tree is turned into nested closures once, at load time, so that an
event costs one call per check and no tree walking.  Nested ``and``/``or``
are flattened (``a and (b and c)`` is one three-way ``and``), two- and
three-way forms get their own closures, evaluation keeps Falco's
left-to-right short-circuit order, and checks that can never be true
(``x in ()``) are folded away.

Semantics (falco-rules-language.md §7 to §9):

* a missing value makes every check false except ``exists``;
* a list-valued field accepts ``exists`` (at least one value), ``in``
  (every value in the set) and ``intersects`` (at least one value in the
  set), as in Falco.  eventd also accepts, on list fields, ``pmatch``
  (every value lies under one of the paths: registry allow-lists) and the
  string operators ``contains icontains startswith endswith glob iglob
  regex bcontains bstartswith``, true when *any* value matches (Falco
  refuses these on list fields, so no Falco rule changes meaning);
* ``val(f)`` or a transformed field on the right compares with that field's
  value in the same event; both sides must be lists or both single values,
  and the operator must not be a pattern (``glob``, ``iglob``, ``regex``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeAlias

from eventd.engine.ast import ALL_OPS, LIST_OPS, And, Check, FieldRef, MacroRef, Node, Not, Or
from eventd.engine.errors import FieldError, RuleError
from eventd.engine.fields.base import BoundField, Extracted, FieldSet
from eventd.engine.operators import ScalarPredicate, cached_predicate, make_predicate, text_of
from eventd.events.model import Event

Predicate: TypeAlias = Callable[[Event], bool]

#: Operators a list-valued field allows (Falco's three plus eventd's pmatch).
LIST_FIELD_OPS = frozenset({"exists", "in", "intersects", "pmatch"})
#: String operators eventd allows on list fields, true when any value matches.
LIST_ANY_OPS = frozenset(
    {"contains", "icontains", "startswith", "endswith", "glob", "iglob", "regex", "bcontains", "bstartswith"}
)
#: Operators whose right-hand side lives in the field's value space, so the
#: field's ``rhs_normalizer`` applies to it (patterns and bounds are left as
#: written).
NORMALISED_OPS = frozenset({"=", "!=", "in", "intersects", "pmatch"})
#: Operators whose right-hand side is a pattern.  Python's backtracking
#: matcher is not linear-time like Falco's RE2, so patterns must be constants
#: written by the rule author, never ``val(f)`` read from an event.
PATTERN_OPS = frozenset({"glob", "iglob", "regex"})


def _always_true(event: Event) -> bool:
    return True


def _always_false(event: Event) -> bool:
    return False


def compile_condition(node: Node, fields: FieldSet) -> Predicate:
    """Compile a macro-free tree against ``fields``.

    Raises ``RuleError`` for a remaining macro reference or an operand an
    operator cannot use, and ``FieldError`` for an unknown field, a bad
    argument or an operator the field does not allow; each carries the
    offset of the check in the condition text.
    """
    try:
        return _compile(node, fields)
    except RecursionError:
        raise RuleError("condition is nested too deeply to compile", offset=node.pos) from None


def _compile(node: Node, fields: FieldSet) -> Predicate:
    if isinstance(node, Check):
        return compile_check(node, fields)
    if isinstance(node, And):
        return _conjunction([_compile(c, fields) for c in _flatten(node, And)])
    if isinstance(node, Or):
        return _disjunction([_compile(c, fields) for c in _flatten(node, Or)])
    if isinstance(node, Not):
        return _negation(_compile(node.child, fields))
    if isinstance(node, MacroRef):
        raise RuleError(f"Undefined macro '{node.name}' used in filter.", offset=node.pos)
    raise TypeError(f"not a condition node: {node!r}")


def _flatten(node: And | Or, kind: type[And] | type[Or]) -> list[Node]:
    """The operands of ``node`` with same-kind children spliced in, in order."""
    out: list[Node] = []
    for child in node.children:
        if isinstance(child, kind):
            out.extend(_flatten(child, kind))
        else:
            out.append(child)
    return out


def _conjunction(preds: Sequence[Predicate]) -> Predicate:
    # Every operand was compiled (so every error is reported) before folding.
    if _always_false in preds:
        return _always_false
    p = [x for x in preds if x is not _always_true]
    if not p:
        return _always_true
    if len(p) == 1:
        return p[0]
    if len(p) == 2:
        a, b = p
        return lambda ev: a(ev) and b(ev)
    if len(p) == 3:
        a, b, c = p
        return lambda ev: a(ev) and b(ev) and c(ev)
    ops = tuple(p)

    def all_of(ev: Event) -> bool:
        # A plain loop: all() over a generator costs a frame per event.
        for x in ops:  # noqa: SIM110
            if not x(ev):
                return False
        return True

    return all_of


def _disjunction(preds: Sequence[Predicate]) -> Predicate:
    if _always_true in preds:
        return _always_true
    p = [x for x in preds if x is not _always_false]
    if not p:
        return _always_false
    if len(p) == 1:
        return p[0]
    if len(p) == 2:
        a, b = p
        return lambda ev: a(ev) or b(ev)
    if len(p) == 3:
        a, b, c = p
        return lambda ev: a(ev) or b(ev) or c(ev)
    ops = tuple(p)

    def any_of(ev: Event) -> bool:
        for x in ops:  # noqa: SIM110
            if x(ev):
                return True
        return False

    return any_of


def _negation(pred: Predicate) -> Predicate:
    if pred is _always_true:
        return _always_false
    if pred is _always_false:
        return _always_true
    return lambda ev: not pred(ev)


# -- checks ----------------------------------------------------------------------


def compile_check(check: Check, fields: FieldSet) -> Predicate:
    """Compile one ``field op value`` check (see ``compile_condition``)."""
    try:
        return _compile_check(check, fields)
    except RuleError as exc:
        raise exc.located(offset=check.pos) from None


def yields_list(bound: BoundField) -> bool:
    """Whether the bound field produces a tuple: a list field, unless ``len``
    has turned its values into a count."""
    return bound.is_list and "len" not in bound.ref.transformers


def _compile_check(check: Check, fields: FieldSet) -> Predicate:
    op = "=" if check.op == "==" else check.op
    if op not in ALL_OPS:
        raise RuleError(f"unknown operator '{check.op}'")
    bound = fields.bind(check.field)
    get = bound.get
    if op == "exists":
        return lambda ev: get(ev) is not None

    is_list = yields_list(bound)
    if is_list and op not in LIST_FIELD_OPS and op not in LIST_ANY_OPS:
        raise FieldError(
            f"list filter '{bound.token}' only supports operators 'exists', 'in' and "
            "'intersects' (and eventd's 'pmatch' and string operators, true for any value)"
        )
    rhs = check.value
    if isinstance(rhs, FieldRef):
        if op in PATTERN_OPS:
            raise RuleError(
                f"operator '{op}' needs a constant pattern, not a field: a pattern taken "
                "from the event could make matching arbitrarily slow"
            )
        return _field_comparison(op, bound, fields.bind(rhs), is_list)
    if (op in LIST_OPS) != isinstance(rhs, tuple) or rhs is None:
        raise RuleError(f"operator '{op}' cannot take the value {rhs!r}")
    rhs = _normalise(bound, op, rhs)
    if isinstance(rhs, tuple) and not rhs:
        return _always_false  # `x in ()` matches nothing, even for lists
    pred = make_predicate(op, rhs)
    if not is_list:
        return _scalar_check(get, pred)
    if op == "intersects" or op in LIST_ANY_OPS:
        return lambda ev: (v := get(ev)) is not None and any(map(pred, v))
    return lambda ev: (v := get(ev)) is not None and all(map(pred, v))


def _scalar_check(get: Callable[[Event], Extracted], pred: ScalarPredicate) -> Predicate:
    def check(ev: Event) -> bool:
        v = get(ev)
        return v is not None and pred(v)  # type: ignore[arg-type]

    return check


def _normalise(bound: BoundField, op: str, rhs: str | tuple[str, ...]) -> str | tuple[str, ...]:
    """Apply the field's ``rhs_normalizer`` to constants in its value space.

    Only for the field's own values: a transformer (``tolower(f)``) changes
    the value space and the constants are then taken as written.
    """
    normalise = bound.defn.rhs_normalizer
    if normalise is None or not bound.plain or op not in NORMALISED_OPS:
        return rhs
    try:
        if isinstance(rhs, tuple):
            return tuple(normalise(item) for item in rhs)
        return normalise(rhs)
    except ValueError as exc:
        raise FieldError(f"invalid value for field '{bound.token}': {exc}") from None


def _field_comparison(op: str, lhs: BoundField, rhs: BoundField, lhs_list: bool) -> Predicate:
    """``lhs op val(rhs)``: the right-hand side is read from the same event,
    and its predicate is built (and cached) per distinct value."""
    if yields_list(rhs) != lhs_list:
        kind = "a list" if lhs_list else "a single-valued"
        raise FieldError(
            f"'{lhs.token}' is {kind} field, so '{rhs.token}' compared with it with '{op}' must be one too"
        )
    get_lhs, get_rhs = lhs.get, rhs.get
    list_op = op in LIST_OPS
    make = cached_predicate

    def predicate_for(value: Extracted) -> ScalarPredicate | None:
        if isinstance(value, tuple):
            key: str | tuple[str, ...] = tuple(map(text_of, value))
        else:
            key = (text_of(value),) if list_op else text_of(value)  # type: ignore[arg-type]
        try:
            return make(op, key)
        except RuleError:  # e.g. the other field's value is not a valid regex
            return None

    if not lhs_list:

        def scalar(ev: Event) -> bool:
            a = get_lhs(ev)
            if a is None:
                return False
            b = get_rhs(ev)
            if b is None:
                return False
            pred = predicate_for(b)
            return pred is not None and pred(a)  # type: ignore[arg-type]

        return scalar

    every = op != "intersects"

    def listwise(ev: Event) -> bool:
        a = get_lhs(ev)
        if a is None:
            return False
        b = get_rhs(ev)
        if b is None:
            return False
        pred = predicate_for(b)
        if pred is None:
            return False
        return all(map(pred, a)) if every else any(map(pred, a))  # type: ignore[arg-type]

    return listwise
