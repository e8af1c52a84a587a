"""Conditions as generated Python functions: no call per check on the hot path.

``engine.compiler`` turns a condition into nested closures: every ``and``,
every check and every field read is a Python call, even when the field's
value is already in the event's cache.  On a pod create that meets the
seven image rules, running them with every field already cached took
11.7 µs of the 33.5 µs their matching cost.  Here a condition becomes the
source of one function whose body is a single expression:

* a field value is read from the event's cache inline
  (``cache.get(key, MISSING)``), and its getter is called only on a miss;
* a string tested against a set is tested inline (``value in texts``);
* ``and``, ``or`` and ``not`` are Python's own, so the short-circuit order
  is Falco's left-to-right one, as in the closures.

Both are built from the same ``CheckPlan`` (``compiler.plan_check``), so
they agree on every event; ``tests/test_codegen.py`` checks that on random
conditions and events, and the rule index's differential tests run through
this code.

Nothing from the rule text goes into the source: constants, keys, getters
and predicates are handed to a factory as arguments (``a0``, ``a1``...).
The source therefore depends only on the condition's shape, and rules of
the same shape (team rules from one template) share one compiled code
object.  Conditions nested deeper than ``MAX_DEPTH`` or with more than
``MAX_CHECKS`` checks are declined (``None``): the closures serve them.

Generation happens lazily, when the rule index first offers a rule for some
event (``RuleIndex.memo_lookup``), so start-up and ``eventd rules check``
do not pay for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from types import CodeType
from typing import Any

from eventd.engine.ast import And, Check, Node, Not, Or
from eventd.engine.compiler import Predicate, flatten, plan_check
from eventd.engine.fields.base import BoundField, Extracted, FieldSet
from eventd.engine.operators import text_set
from eventd.events.model import Event

#: Deepest ``and``/``or``/``not`` nesting generated (Python's parser allows
#: 200 nested parentheses; each level here opens at most two).
MAX_DEPTH = 50
#: Most checks in one generated function.
MAX_CHECKS = 1000

_MISSING = object()


class _Declined(Exception):
    """The condition is left to the closures."""


def generate(node: Node, fields: FieldSet) -> Predicate | None:
    """``node`` (macro-free, already compiled once by ``compile_condition``,
    so every check is known good) as one generated function, or ``None``."""
    emitter = _Emitter(fields)
    try:
        body = emitter.expression(node, 0)
    except (_Declined, RecursionError):
        return None
    try:
        predicate: Predicate = _build(body, emitter.args)
    except (SyntaxError, RecursionError, MemoryError):  # never expected: the closures still serve
        return None
    return predicate


def generate_render(
    fields: Sequence[BoundField],
    keys: Sequence[str],
    template: str,
    show: Callable[[Extracted], str],
    widths: Sequence[int],
    pad: Callable[[str, int], str],
) -> Callable[[Event], tuple[str, dict[str, Any]]]:
    """One function giving an output's text and its ``output_fields`` for an
    event (``engine.output.OutputFormat.render``).

    Each value is read once (inline, from the event's cache) into a local
    ``vN``; the text is ``template % (...)`` of the values shown (a string
    as it is, anything else through ``show``, then through ``pad`` when the
    token has a width), and the fields dict is written as a literal keyed by
    ``keys`` (the tokens as written), lists for tuples.  Rendering an alert thus makes
    no intermediate lists and no call per value.
    """
    emitter = _Arguments()
    to_list, a_tuple, shown = emitter._arg(list), emitter._arg(tuple), emitter._arg(show)
    padded = emitter._arg(pad)
    texts, entries = [], []
    for i, (bound, token, width) in enumerate(zip(fields, keys, widths, strict=True)):
        v = f"v{i}"
        text = f"({v} if ({v} := {emitter.read(bound, i)}).__class__ is str else {shown}({v}))"
        texts.append(f"{padded}({text}, {emitter._arg(width)})" if width else text)
        key = emitter._arg(token)
        entries.append(f"{key}: ({to_list}({v}) if {v}.__class__ is {a_tuple} else {v})")
    body = f"({emitter._arg(template)} % ({', '.join(texts)},), {{{', '.join(entries)}}})"
    render: Callable[[Event], tuple[str, dict[str, Any]]] = _build(body, emitter.args)
    return render


def _build(body: str, args: list[object]) -> Any:
    """The function ``ev -> body``, ``body`` being our own expression over
    the arguments ``a0``, ``a1``... given as ``args``."""
    names = ", ".join(f"a{i}" for i in range(len(args)))
    source = (
        f"def make(MISSING, any, all, map, str{', ' if names else ''}{names}):\n"
        "    def generated(ev):\n"
        "        c = ev.cache.get\n"
        f"        return {body}\n"
        "    return generated\n"
    )
    namespace: dict[str, object] = {"__builtins__": {}}
    exec(_compiled(source), namespace)  # our own source: shapes and argument names only
    make = namespace["make"]
    assert callable(make)  # defined by the line above
    return make(_MISSING, any, all, map, str, *args)


def _compiled(source: str) -> CodeType:
    """The code of ``source``, shared by every rule of the same shape; a
    long source (a rule with hundreds of checks) is compiled but not kept,
    so the cache stays under ``CACHED_SOURCES * CACHED_SOURCE_CHARS``."""
    if len(source) > CACHED_SOURCE_CHARS:
        return _compile(source)
    return _cached_compile(source)


def _compile(source: str) -> CodeType:
    return compile(source, "<eventd condition>", "exec")


#: Code objects kept for reuse, and the longest source among them (a few MB in all).
CACHED_SOURCES = 256
CACHED_SOURCE_CHARS = 16384
_cached_compile = lru_cache(maxsize=CACHED_SOURCES)(_compile)


_NEGATED = {"True": "False", "False": "True"}


def _fold(parts: list[str], joiner: str) -> str:
    """``parts`` joined by ``and``/``or``, with constant operands folded as
    ``compiler._conjunction`` and ``_disjunction`` fold them: a check that
    can never be true (``x in ()``) makes a whole ``and`` false before any
    field is read, so both read the same fields."""
    settles, neutral = ("False", "True") if joiner == "and" else ("True", "False")
    if settles in parts:
        return settles
    kept = [p for p in parts if p != neutral]
    if not kept:
        return neutral
    return kept[0] if len(kept) == 1 else "(" + f" {joiner} ".join(kept) + ")"


class _Arguments:
    """The values a generated function gets as arguments, and the inline
    field read written over them."""

    def __init__(self) -> None:
        self.args: list[object] = []

    def _arg(self, value: object) -> str:
        self.args.append(value)
        return f"a{len(self.args) - 1}"

    def read(self, bound: BoundField, n: int) -> str:
        """The expression of ``bound``'s value: from the event's cache, else
        from its getter (which fills the cache), through temporary ``tN``."""
        key, get = self._arg(bound.ref.token), self._arg(bound.get)
        return f"(t{n} if (t{n} := c({key}, MISSING)) is not MISSING else {get}(ev))"


class _Emitter(_Arguments):
    """Walks a condition and writes its expression, collecting the arguments."""

    def __init__(self, fields: FieldSet) -> None:
        super().__init__()
        self.fields = fields
        self.checks = 0

    def expression(self, node: Node, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise _Declined
        if isinstance(node, Check):
            return self.check(node)
        if isinstance(node, And | Or):
            parts = [self.expression(c, depth + 1) for c in flatten(node, type(node))]
            return _fold(parts, "and" if isinstance(node, And) else "or")
        if isinstance(node, Not):
            inner = self.expression(node.child, depth + 1)
            return _NEGATED.get(inner) or f"(not {inner})"
        raise _Declined  # a macro reference: the closure compiler reports it

    def check(self, check: Check) -> str:
        self.checks += 1
        if self.checks > MAX_CHECKS:
            raise _Declined
        plan = plan_check(check, self.fields)
        if plan.kind == "call" and plan.call is not None:
            return f"{self._arg(plan.call)}(ev)"
        bound, pred = plan.bound, plan.pred
        if bound is None:  # "false": never true
            return "False"
        v = f"v{self.checks}"
        read = f"({v} := {self.read(bound, self.checks)})"
        if plan.kind == "exists" or pred is None:
            return f"({read} is not None)"
        p = self._arg(pred)
        if plan.kind == "scalar":
            texts = text_set(pred)
            if texts is not None:  # a string is looked up inline; other types go to the predicate
                t = self._arg(texts)
                return f"({v} in {t} if {read}.__class__ is str else ({v} is not None and {p}({v})))"
            return f"({read} is not None and {p}({v}))"
        every = "all" if plan.kind == "all" else "any"
        return f"({read} is not None and {every}(map({p}, {v})))"
