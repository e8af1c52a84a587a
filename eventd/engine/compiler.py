"""Syntax tree to predicate: ``compile_condition(tree, fields)(event) -> bool``.

The tree is turned into nested closures once, at load time, so that an
event costs one call per check and no tree walking.  Nested ``and``/``or``
are flattened (``a and (b and c)`` is one three-way ``and``), two- and
three-way forms get their own closures, evaluation keeps Falco's
left-to-right short-circuit order, and checks that can never be true
(``x in ()``) are folded away.  The rule index later replaces the closures
of the rules events actually reach with generated functions built from the
same ``CheckPlan`` (``engine.codegen``); the closures stay the reference
and serve what the generator declines.

Semantics (falco-rules-language.md §7 to §9):

* a missing value makes every check false except ``exists``;
* a list-valued field accepts ``exists``, ``in`` (every value in the set)
  and ``intersects`` (at least one value in the set), as in Falco.  eventd
  also accepts, on list fields, ``pmatch`` (every value lies under one of
  the paths: registry allow-lists) and the string operators ``contains
  icontains startswith endswith glob iglob regex``, true when *any* value
  matches.  Falco refuses these, so each use is reported as an
  ``EVENTD_NOT_PORTABLE`` note, and refused under ``strict``;
* operators are checked against the field's type as libsinsp 0.23 checks
  them (``flt_is_comparable``): every ``ka.*``/``json.*`` value is a string
  (``CHARBUF``), ``len(...)`` a number (``UINT64``), so ``bcontains`` and
  ``bstartswith`` (buffer operators) are refused, as in Falco;
* ``val(f)`` or a transformed field on the right compares with that field's
  value in the same event; the two sides must have the same type and both
  be lists or neither, and ``pmatch``/``regex`` refuse a field there
  (libsinsp's ``add_filter_value``).  ``glob``/``iglob`` take one, as in
  Falco; the pattern then comes from the event, so it is guarded at run
  time (``MAX_EVENT_PATTERN``) and compiled once per distinct value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeAlias, cast

from msgspec import Struct

from eventd.engine.ast import ALL_OPS, LIST_OPS, TRANSFORMERS, And, Check, FieldRef, MacroRef, Node, Not, Or
from eventd.engine.errors import FieldError, RuleError
from eventd.engine.fields.base import BoundField, FieldSet, Scalar
from eventd.engine.load_result import (
    WarningCode,
    field_misused,
    nonexistent_field,
    regex_simpler,
    transformer_misused,
)
from eventd.engine.operators import ScalarPredicate, cached_predicate, shared_predicate, text_of, text_set
from eventd.engine.parser import parse_lhs as _parse_lhs
from eventd.events.model import Event

Predicate: TypeAlias = Callable[[Event], bool]
#: Typed views of a ``BoundField.get``: ``yields_list`` tells which one a
#: getter is (the value conventions of ``fields.base``); ``Extracted`` cannot.
ScalarGetter: TypeAlias = Callable[[Event], Scalar | None]
ListGetter: TypeAlias = Callable[[Event], tuple[Scalar, ...] | None]

#: Operators Falco allows on list fields (``flt_is_comparable_any_list``).
FALCO_LIST_OPS = frozenset({"exists", "in", "intersects"})
#: eventd's extensions on list fields (not portable to Falco): ``pmatch``
#: (every value under one of the paths) and string operators (any value).
LIST_EXTENSION_OPS = frozenset({"pmatch"})
LIST_ANY_OPS = frozenset({"contains", "icontains", "startswith", "endswith", "glob", "iglob", "regex"})
#: Operators Falco allows per field type (libsinsp ``filter_compare.cpp``).
STRING_OPS = frozenset(
    {
        "=",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "contains",
        "in",
        "exists",
        "icontains",
        "startswith",
        "glob",
        "pmatch",
        "endswith",
        "intersects",
        "iglob",
        "regex",
    }
)
NUMERIC_OPS = frozenset({"=", "!=", "<", "<=", ">", ">=", "in", "intersects", "exists"})
#: Operators whose right-hand side lives in the field's value space, so the
#: field's ``rhs_normalizer`` applies to it (patterns and bounds are left as
#: written).
NORMALISED_OPS = frozenset({"=", "!=", "in", "intersects", "pmatch"})
#: Operators libsinsp refuses a right-hand-side field for (by enum name).
NO_RHS_FIELD_OPS = {"pmatch": "PMATCH", "regex": "REGEX"}
#: The longest pattern read from an event (``glob val(f)``) that is
#: compiled; a longer one makes the check false.  Globs run in linear time,
#: this bounds the memory the per-value predicate cache may hold.
MAX_EVENT_PATTERN = 4096
#: Characters that make a regex more than a literal (libsinsp's heuristic).
_RGX_SPECIAL = frozenset(".+*?^$()[]{}|\\")


class Note(Struct, frozen=True):
    """A warning found while compiling: Falco's code, text and the check's offset."""

    code: WarningCode
    text: str
    offset: int


class Options(Struct):
    """How strict to be and where to report notes (``None``: nowhere)."""

    strict: bool = False
    notes: list[Note] | None = None

    def note(self, code: WarningCode, text: str, offset: int) -> None:
        if self.notes is not None:
            self.notes.append(Note(code, text, offset))


_DEFAULT = Options()


def _always_true(event: Event) -> bool:
    return True


def _always_false(event: Event) -> bool:
    return False


def compile_condition(
    node: Node, fields: FieldSet, *, strict: bool = False, notes: list[Note] | None = None
) -> Predicate:
    """Compile a macro-free tree against ``fields``.

    Raises ``RuleError`` for a remaining macro reference or an operand an
    operator cannot use, and ``FieldError`` for an unknown field, a bad
    argument or an operator the field does not allow; each carries the
    offset of the check in the condition text.  Warnings (libsinsp's
    compiler warnings, eventd's extensions) go to ``notes``; ``strict``
    refuses the extensions as Falco does.
    """
    opts = Options(strict, notes)
    try:
        return _compile(node, fields, opts)
    except RecursionError:
        raise RuleError("condition is nested too deeply to compile", offset=node.pos) from None


def _compile(node: Node, fields: FieldSet, opts: Options) -> Predicate:
    if isinstance(node, Check):
        return compile_check(node, fields, opts)
    if isinstance(node, And):
        return _conjunction([_compile(c, fields, opts) for c in flatten(node, And)])
    if isinstance(node, Or):
        return _disjunction([_compile(c, fields, opts) for c in flatten(node, Or)])
    if isinstance(node, Not):
        return _negation(_compile(node.child, fields, opts))
    if isinstance(node, MacroRef):
        raise RuleError(f"Undefined macro '{node.name}' used in filter.", offset=node.pos)
    raise TypeError(f"not a condition node: {node!r}")


def flatten(node: And | Or, kind: type[And] | type[Or]) -> list[Node]:
    """The operands of ``node`` with same-kind children spliced in, in order."""
    out: list[Node] = []
    for child in node.children:
        if isinstance(child, kind):
            out.extend(flatten(child, kind))
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


def compile_check(check: Check, fields: FieldSet, opts: Options = _DEFAULT) -> Predicate:
    """Compile one ``field op value`` check (see ``compile_condition``)."""
    try:
        return _compile_check(check, fields, opts)
    except RuleError as exc:
        raise exc.located(offset=check.pos) from None


def yields_list(bound: BoundField) -> bool:
    """Whether the bound field produces a tuple: a list field, unless ``len``
    has turned its values into a count."""
    return bound.is_list and "len" not in bound.ref.transformers


def field_type(bound: BoundField) -> str:
    """The libsinsp type of the (transformed) value: ``len`` gives a number,
    everything else eventd extracts is text."""
    return "UINT64" if "len" in bound.ref.transformers else "CHARBUF"


def _bind(fields: FieldSet, ref: FieldRef) -> BoundField:
    if fields.lookup(ref.name) is None:
        raise FieldError(nonexistent_field(ref.name if ref.arg is None else f"{ref.name}[{ref.arg}]"))
    return fields.bind(ref)


def _check_operator(op: str, bound: BoundField, is_list: bool, opts: Options, pos: int) -> None:
    """libsinsp's ``check_op_type_compatibility``, plus eventd's list extensions."""
    if op == "exists":
        return
    if is_list:
        if op in FALCO_LIST_OPS:
            return
        falco = f"filter error: '{op}' operator not supported list filters"
        if op in LIST_EXTENSION_OPS or op in LIST_ANY_OPS:
            if opts.strict:
                raise FieldError(falco)
            opts.note(
                WarningCode.EVENTD_NOT_PORTABLE,
                f"'{op}' on list field '{bound.token}' is an eventd extension (Falco refuses it: {falco})",
                pos,
            )
            return
        raise FieldError(falco)
    if field_type(bound) == "UINT64":
        if op not in NUMERIC_OPS:
            raise FieldError(f"filter error: '{op}' operator not supported for numeric filters")
    elif op not in STRING_OPS:
        raise FieldError(f"filter error: '{op}' operator not supported for string filters")


class CheckPlan(Struct, frozen=True):
    """What one check does, decided once: the closures below and the code
    generator (``engine.codegen``) build the same test from it.

    ``kind`` is ``"false"`` (never true: ``x in ()``), ``"exists"``,
    ``"scalar"`` (``pred`` on the one value), ``"any"``/``"all"`` (``pred``
    on a list's values) or ``"call"`` (``call`` decides: a comparison with
    another field).
    """

    kind: str
    bound: BoundField | None = None
    pred: ScalarPredicate | None = None
    call: Predicate | None = None


def plan_check(check: Check, fields: FieldSet, opts: Options = _DEFAULT) -> CheckPlan:
    """Check ``check`` against ``fields`` and decide how to test it (see
    ``compile_check`` for the errors)."""
    try:
        return _plan_check(check, fields, opts)
    except RuleError as exc:
        raise exc.located(offset=check.pos) from None


def _plan_check(check: Check, fields: FieldSet, opts: Options) -> CheckPlan:
    op = "=" if check.op == "==" else check.op
    if op not in ALL_OPS:
        raise RuleError(f"unknown operator '{check.op}'")
    bound = _bind(fields, check.field)
    is_list = yields_list(bound)
    _check_operator(op, bound, is_list, opts, check.pos)
    if op == "exists":
        return CheckPlan("exists", bound)
    rhs = check.value
    if isinstance(rhs, FieldRef):
        other = _rhs_field(op, bound, fields, rhs)
        return CheckPlan("call", call=_field_comparison(op, bound, other, is_list))
    if (op in LIST_OPS) != isinstance(rhs, tuple) or rhs is None:
        raise RuleError(f"operator '{op}' cannot take the value {rhs!r}")
    _value_warnings(op, rhs, fields, opts, check.pos)
    pred = _constant_predicate(bound, op, rhs)
    if pred is None:
        return CheckPlan("false")  # `x in ()` matches nothing, even for lists
    if not is_list:
        return CheckPlan("scalar", bound, pred)
    return CheckPlan("any" if op == "intersects" or op in LIST_ANY_OPS else "all", bound, pred)


def _compile_check(check: Check, fields: FieldSet, opts: Options) -> Predicate:
    plan = _plan_check(check, fields, opts)
    bound, pred = plan.bound, plan.pred
    if plan.kind == "call" and plan.call is not None:
        return plan.call
    if plan.kind == "exists" and bound is not None:
        get = bound.get
        return lambda ev: get(ev) is not None
    if bound is None or pred is None:  # "false"
        return _always_false
    if plan.kind == "scalar":
        # Cast, as the value conventions say: not ``yields_list``, one scalar or None.
        return _scalar_check(cast(ScalarGetter, bound.get), pred)
    # Cast, as the value conventions say: ``yields_list``, a tuple of scalars or None.
    get_values = cast(ListGetter, bound.get)
    if plan.kind == "any":
        return lambda ev: (v := get_values(ev)) is not None and any(map(pred, v))
    return lambda ev: (v := get_values(ev)) is not None and all(map(pred, v))


def _rhs_field(op: str, lhs: BoundField, fields: FieldSet, ref: FieldRef) -> BoundField:
    """The right-hand-side field, checked as libsinsp's ``add_filter_value`` does."""
    if op in NO_RHS_FIELD_OPS:
        raise FieldError(f"operator '{NO_RHS_FIELD_OPS[op]}' doesn't support right-hand side fields")
    rhs = _bind(fields, ref)
    lt, ll, rt, rl = field_type(lhs), yields_list(lhs), field_type(rhs), yields_list(rhs)
    if (lt, ll) != (rt, rl):
        raise FieldError(
            f"field '{lhs.ref.name}' has type '{lt}{' (list)' if ll else ''}' while the right-hand "
            f"side field '{rhs.ref.name}' has incompatible type '{rt}{' (list)' if rl else ''}'"
        )
    return rhs


def _value_warnings(op: str, rhs: str | tuple[str, ...], fields: FieldSet, opts: Options, pos: int) -> None:
    """libsinsp's ``check_value_and_add_warnings`` for each constant value."""
    if opts.notes is None:
        return
    # The cheap tests below skip what cannot warn: a list of 10,000
    # registries is checked on every rule that names it.
    defs = fields.defs
    for value in rhs if isinstance(rhs, tuple) else (rhs,):
        if op == "regex" and _regex_is_simple(value):
            opts.note(WarningCode.LOAD_COMPILE_CONDITION, regex_simpler(value), pos)
        nospaces = "".join(value.split())
        # A field reference without transformers is ``name`` or ``name[arg]``
        # (``parse_lhs`` matches the whole text), so its name is what comes
        # before any "[".  Declared fields only: a dotted constant (an image
        # host) is not a Falco output key.
        if nospaces.partition("[")[0] in defs:
            ref = _parse_lhs(nospaces)
            if ref is not None and not ref.transformers and ref.name in defs:
                opts.note(WarningCode.LOAD_COMPILE_CONDITION, field_misused(value), pos)
        if nospaces.endswith(")") and "(" in nospaces:
            for t in (*sorted(TRANSFORMERS), "val"):
                if len(nospaces) >= len(t) + 2 and nospaces.startswith(t + "("):
                    opts.note(WarningCode.LOAD_COMPILE_CONDITION, transformer_misused(value), pos)


def _regex_is_simple(v: str) -> bool:
    """libsinsp's heuristic: no regex syntax beyond anchors at the ends and a
    leading or trailing ``.*``/``.+``/``.?``, so a plain operator would do."""
    n = len(v)
    i = 0
    while i < n:
        c = v[i]
        if (i == 0 and c == "^") or (i == n - 1 and c == "$"):
            i += 1
            continue
        if ((i == 0 and n > 1) or i == n - 2) and c == "." and i + 1 < n and v[i + 1] in "+*?":
            i += 2
            continue
        if c in _RGX_SPECIAL:
            return False
        i += 1
    return True


#: ``value_test``'s verdict on a value: ``None`` means the field is missing.
ValueTest: TypeAlias = Callable[[Scalar | None], bool]


def value_test(check: Check, fields: FieldSet) -> ValueTest | None:
    """``check`` as a test of its field's value alone (``None``: missing), or
    ``None`` when it cannot be one (a list field, a transformer, ``val(f)``).

    The rule index runs these on values read off a line's routing header
    (``engine.index``), before any decode, so they must be exactly what
    ``compile_check`` runs on the decoded event: the same normalised
    constant, the same predicate, and a missing value is false.
    """
    op = "=" if check.op == "==" else check.op
    if op not in ALL_OPS or fields.lookup(check.field.name) is None:
        return None
    bound = fields.bind(check.field)
    if not bound.plain or yields_list(bound) or field_type(bound) != "CHARBUF":
        return None
    if op == "exists":
        return _present
    rhs = check.value
    if rhs is None or isinstance(rhs, FieldRef) or (op in LIST_OPS) != isinstance(rhs, tuple):
        return None
    try:
        pred = _constant_predicate(bound, op, rhs)
    except RuleError:
        return None
    if pred is None:
        return _never  # `x in ()` matches nothing
    return lambda value: value is not None and pred(value)


def _constant_predicate(bound: BoundField, op: str, rhs: str | tuple[str, ...]) -> ScalarPredicate | None:
    """The predicate of ``op`` against a constant, normalised for the field;
    ``None`` for an empty list, which nothing matches.  One place for
    ``compile_check`` and ``value_test``, which must agree exactly."""
    if isinstance(rhs, tuple) and not rhs:
        return None
    try:
        return shared_predicate(op, rhs, _normaliser(bound, op))
    except ValueError as exc:
        raise FieldError(f"invalid value for field '{bound.token}': {exc}") from None


def _present(value: Scalar | None) -> bool:
    return value is not None


def _never(_value: Scalar | None) -> bool:
    return False


def _scalar_check(get: ScalarGetter, pred: ScalarPredicate) -> Predicate:
    texts = text_set(pred)
    if texts is not None:  # ``in``, ``=`` against a list: strings tested inline

        def member_check(ev: Event) -> bool:
            v = get(ev)
            if v.__class__ is str:
                return v in texts
            return v is not None and pred(v)

        return member_check

    def check(ev: Event) -> bool:
        v = get(ev)
        return v is not None and pred(v)

    return check


def _normaliser(bound: BoundField, op: str) -> Callable[[str], str] | None:
    """The field's ``rhs_normalizer``, for constants in its value space.

    Only for the field's own values: a transformer (``tolower(f)``) changes
    the value space and the constants are then taken as written.
    """
    normalise = bound.defn.rhs_normalizer
    if normalise is None or not bound.plain or op not in NORMALISED_OPS:
        return None
    return normalise


def _field_comparison(op: str, lhs: BoundField, rhs: BoundField, lhs_list: bool) -> Predicate:
    """``lhs op val(rhs)``: the right-hand side is read from the same event,
    and its predicate is built (and cached) per distinct value."""
    get_rhs = rhs.get
    list_op = op in LIST_OPS
    pattern = op in ("glob", "iglob")
    make = cached_predicate

    def predicate_for(value: Scalar | tuple[Scalar, ...]) -> ScalarPredicate | None:
        if pattern and _too_long(value):
            return None  # run-time guard: a pattern the event supplies
        if isinstance(value, tuple):
            key: str | tuple[str, ...] = tuple(map(text_of, value))
        else:
            key = (text_of(value),) if list_op else text_of(value)
        try:
            return make(op, key)
        except RuleError:  # e.g. the other field's value is not a valid regex
            return None

    if not lhs_list:
        get_lhs = cast(ScalarGetter, lhs.get)  # not ``yields_list``: one scalar or None

        def scalar(ev: Event) -> bool:
            a = get_lhs(ev)
            if a is None:
                return False
            b = get_rhs(ev)
            if b is None:
                return False
            pred = predicate_for(b)
            return pred is not None and pred(a)

        return scalar

    every = op != "intersects"
    get_lhs_values = cast(ListGetter, lhs.get)  # ``yields_list``: a tuple of scalars or None

    def listwise(ev: Event) -> bool:
        a = get_lhs_values(ev)
        if a is None:
            return False
        b = get_rhs(ev)
        if b is None:
            return False
        pred = predicate_for(b)
        if pred is None:
            return False
        return all(map(pred, a)) if every else any(map(pred, a))

    return listwise


def _too_long(value: Scalar | tuple[Scalar, ...]) -> bool:
    """Whether an event-supplied pattern (or any of a list's) passes ``MAX_EVENT_PATTERN``."""
    values = value if isinstance(value, tuple) else (value,)
    return any(len(text_of(v)) > MAX_EVENT_PATTERN for v in values)
