"""Comparison operators as predicate factories.

Each factory takes the right-hand side once, at compile time (already
normalised into the field's value space), precomputes what it can (sets,
compiled patterns, parsed numbers) and returns a predicate over **one
present scalar**.  Missing values and list-valued fields are the compiler's
business: it tests ``None`` once and maps a predicate over list values, so
the predicates here never see ``None`` or a tuple.

Typing follows Falco (falco-rules-language.md §7): every ``ka.*``/``json.*``
value is a string, so comparisons are textual; Falco alert ``output_fields``
keep their JSON types, so an ``int``/``float`` value compares numerically with
a numeric right-hand side, and a ``bool`` compares as ``true``/``false``.
"""

from __future__ import annotations

import operator
import re
import weakref
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any, TypeAlias

from re2 import _re2

from eventd.engine.errors import RuleError
from eventd.engine.glob import compile_glob
from eventd.engine.pathprefix import PathPrefixSet

Scalar: TypeAlias = str | int | float | bool
ScalarPredicate: TypeAlias = Callable[[Scalar], bool]

#: Decimal numbers as Falco writes them (sign, fraction, exponent).  The
#: exponent sign is optional here, a superset of Falco's ``[eE][+-]``.
_DECIMAL = re.compile(r"[+-]?[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?")
_HEX = re.compile(r"0[xX][0-9a-fA-F]+")
_HEX_BYTES = re.compile(r"(?:[0-9a-fA-F]{2})*")
#: The longest decimal integer a condition may hold: the lowest digit limit
#: Python's ``int()`` can be configured to, so that no setting makes it fail.
MAX_NUMBER_DIGITS = 640


def parse_number(text: str) -> int | float | None:
    """The number ``text`` spells (decimal or ``0x`` hex), else ``None``.

    A decimal integer longer than ``MAX_NUMBER_DIGITS`` is a ``RuleError``:
    ``int()`` would refuse it with a ``ValueError`` (CVE-2020-10735 guard).
    """
    if _HEX.fullmatch(text):
        return int(text, 16)  # power-of-two bases have no digit limit
    if _DECIMAL.fullmatch(text):
        if "." in text or "e" in text or "E" in text:
            return float(text)
        digits = len(text.lstrip("+-"))
        if digits > MAX_NUMBER_DIGITS:
            raise RuleError(f"number too long: {digits} digits (at most {MAX_NUMBER_DIGITS})")
        return int(text)
    return None


def text_of(value: Scalar) -> str:
    """A scalar as the text Falco compares: JSON spelling for booleans."""
    if value.__class__ is str:
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _is_number(value: Scalar) -> bool:
    return value.__class__ is not bool and isinstance(value, int | float)


# -- equality and ordering ---------------------------------------------------


def _equals(rhs: str) -> ScalarPredicate:
    number = parse_number(rhs)

    def equals(value: Scalar) -> bool:
        if value.__class__ is str:
            return value == rhs
        if number is not None and _is_number(value):
            return value == number
        return text_of(value) == rhs

    return equals


def _not_equals(rhs: str) -> ScalarPredicate:
    equals = _equals(rhs)

    def not_equals(value: Scalar) -> bool:
        if value.__class__ is str:
            return value != rhs
        return not equals(value)

    return not_equals


#: typeshed gives ``operator.lt`` and co. an ``Any`` result (``__lt__`` may
#: return anything); on the ``str``/``int``/``float`` operands used here it is a ``bool``.
_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _ordering(op: str, rhs: str) -> ScalarPredicate:
    compare = _ORDER[op]
    number = parse_number(rhs)

    def ordered(value: Scalar) -> bool:
        if value.__class__ is str:
            return compare(value, rhs)
        if number is not None and _is_number(value):
            return compare(value, number)
        return compare(text_of(value), rhs)

    return ordered


# -- substrings, bytes, patterns ---------------------------------------------


# The ``value if value.__class__ is str else text_of(value)`` spelling keeps
# the common case (a string) free of a function call.


def _contains(rhs: str) -> ScalarPredicate:
    return lambda value: rhs in (value if value.__class__ is str else text_of(value))


def _icontains(rhs: str) -> ScalarPredicate:
    needle = rhs.lower()
    return lambda value: needle in (value if value.__class__ is str else text_of(value)).lower()


def _startswith(rhs: str) -> ScalarPredicate:
    return lambda value: (value if value.__class__ is str else text_of(value)).startswith(rhs)


def _endswith(rhs: str) -> ScalarPredicate:
    return lambda value: (value if value.__class__ is str else text_of(value)).endswith(rhs)


def _hex_bytes(op: str, rhs: str) -> bytes:
    if not _HEX_BYTES.fullmatch(rhs):
        raise RuleError(f"operator '{op}' needs a hex byte string (pairs of hex digits), got '{rhs}'")
    return bytes.fromhex(rhs)


def _bcontains(rhs: str) -> ScalarPredicate:
    needle = _hex_bytes("bcontains", rhs)
    return lambda value: needle in text_of(value).encode()


def _bstartswith(rhs: str) -> ScalarPredicate:
    needle = _hex_bytes("bstartswith", rhs)
    return lambda value: text_of(value).encode().startswith(needle)


def _glob(rhs: str) -> ScalarPredicate:
    """``glob``: ``fnmatch(3)`` semantics, linear time (see ``eventd.engine.glob``)."""
    match = compile_glob(rhs)
    return lambda value: match(value if value.__class__ is str else text_of(value))


def _iglob(rhs: str) -> ScalarPredicate:
    """``iglob``: ``glob`` with ASCII case folding (``FNM_CASEFOLD`` in the C locale)."""
    match = compile_glob(rhs, fold=True)
    return lambda value: match(value if value.__class__ is str else text_of(value))


# Falco compiles a ``regex`` operand with RE2 in POSIX mode (``RE2::POSIX``:
# POSIX syntax, leftmost-longest) and matches the whole value
# (``ANCHOR_BOTH``).  POSIX syntax has ``[[:digit:]]`` and the other classes
# but no Perl extras: ``\d``, ``\w``, ``\b``, ``(?i)``, lookaround and
# backreferences are compile errors.  RE2 runs in time linear in the value.
# The binding's own ``re2.compile(...).fullmatch`` builds a match object and
# maps byte offsets back to characters on every call (about 5x slower), so
# the hot path calls the compiled ``RE2`` object directly.

_ANCHOR_BOTH = _re2.RE2.Anchor.ANCHOR_BOTH


def _re2_options() -> _re2.RE2.Options:
    options = _re2.RE2.Options()
    options.posix_syntax = True
    options.longest_match = True
    options.log_errors = False  # errors are reported as RuleError instead
    options.never_capture = True  # only "does it match" is asked
    return options


def compile_regex(pattern: str) -> _re2.RE2:
    """``pattern`` compiled as Falco compiles it; ``RuleError`` if RE2 refuses it."""
    try:
        encoded = pattern.encode()
    except UnicodeEncodeError:
        raise RuleError(f"invalid regular expression '{pattern}': not valid UTF-8") from None
    regexp = _re2.RE2(encoded, _re2_options())
    if not regexp.ok():
        reason = regexp.error().decode(errors="replace")
        raise RuleError(f"invalid regular expression '{pattern}': {reason} (RE2, POSIX syntax)")
    return regexp


#: Lone surrogates (a JSON ``"\\ud800"``) cannot be UTF-8: each becomes U+FFFD,
#: as libsinsp replaces each invalid byte of a ``regex`` operand.
_SURROGATES = dict.fromkeys(range(0xD800, 0xE000), 0xFFFD)


def _utf8(text: str) -> bytes:
    """``text`` as UTF-8 for RE2, which matches bytes."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return text.translate(_SURROGATES).encode()


def _regex(rhs: str) -> ScalarPredicate:
    # The binding ships no types: ``Match`` returns one ``(start, end)`` span
    # per group, ``(-1, -1)`` when the text does not match.
    match: Callable[[object, bytes, int, int], list[tuple[int, int]]] = compile_regex(rhs).Match

    def matches(value: Scalar) -> bool:
        data = _utf8(value if value.__class__ is str else text_of(value))
        return match(_ANCHOR_BOTH, data, 0, len(data))[0][0] >= 0

    return matches


# -- sets ----------------------------------------------------------------------


def set_predicate(items: Iterable[str]) -> ScalarPredicate:
    """Membership in ``items``, consistent with ``=`` for typed values."""
    texts = frozenset(items)
    numbers = frozenset(n for n in map(parse_number, texts) if n is not None)

    def member(value: Scalar) -> bool:
        if value.__class__ is str:
            return value in texts
        if _is_number(value):
            return value in numbers
        return text_of(value) in texts

    _TEXT_SETS[member] = texts
    return member


#: The strings a ``set_predicate`` admits, by predicate: what a string value
#: is tested against, which ``compiler`` and ``codegen`` inline (``text_set``).
_TEXT_SETS: weakref.WeakKeyDictionary[Callable[..., bool], frozenset[str]] = weakref.WeakKeyDictionary()


def text_set(pred: ScalarPredicate) -> frozenset[str] | None:
    """For a ``set_predicate``: the strings it admits, so that a caller
    holding a string can test ``value in texts`` without a call; the
    predicate stays right for every other type.  ``None`` for other
    predicates."""
    return _TEXT_SETS.get(pred)


def pmatch_predicate(items: Iterable[str]) -> ScalarPredicate:
    """Path-prefix match: the value equals an item or lies below one."""
    contains_prefix_of = PathPrefixSet(items).contains_prefix_of
    return lambda value: contains_prefix_of(text_of(value))


_VALUE_FACTORIES: dict[str, Callable[[str], ScalarPredicate]] = {
    "=": _equals,
    "==": _equals,
    "!=": _not_equals,
    "<": lambda rhs: _ordering("<", rhs),
    "<=": lambda rhs: _ordering("<=", rhs),
    ">": lambda rhs: _ordering(">", rhs),
    ">=": lambda rhs: _ordering(">=", rhs),
    "contains": _contains,
    "icontains": _icontains,
    "startswith": _startswith,
    "endswith": _endswith,
    "bcontains": _bcontains,
    "bstartswith": _bstartswith,
    "glob": _glob,
    "iglob": _iglob,
    "regex": _regex,
}

_LIST_FACTORIES: dict[str, Callable[[Iterable[str]], ScalarPredicate]] = {
    "in": set_predicate,
    "intersects": set_predicate,
    "pmatch": pmatch_predicate,
}


def make_predicate(op: str, rhs: str | tuple[str, ...]) -> ScalarPredicate:
    """The predicate of ``op`` against ``rhs`` over one present scalar.

    ``rhs`` is a string for value operators and a tuple for ``in``,
    ``intersects`` and ``pmatch``.  Raises ``RuleError`` for a right-hand
    side the operator cannot use (invalid regex or hex bytes).
    """
    if isinstance(rhs, tuple):
        factory = _LIST_FACTORIES.get(op)
        if factory is None:
            raise RuleError(f"operator '{op}' takes a single value, not a list")
        return factory(rhs)
    value_factory = _VALUE_FACTORIES.get(op)
    if value_factory is None:
        raise RuleError(f"operator '{op}' needs a list of values like (a, b), got '{rhs}'")
    return value_factory(rhs)


#: ``make_predicate`` for right-hand sides only known per event (``val(f)``):
#: the same few values recur, so their predicates are built once.
cached_predicate = lru_cache(maxsize=4096)(make_predicate)

#: Predicates of rule constants, shared while some rule holds them.  Weak
#: values: a reload that drops the rules drops them too, where a strong
#: cache would keep old lists alive, bounded in count but not in bytes.
_SHARED: weakref.WeakValueDictionary[
    tuple[str, str | tuple[str, ...], Callable[[str], str] | None], ScalarPredicate
] = weakref.WeakValueDictionary()


def shared_predicate(
    op: str, rhs: str | tuple[str, ...], normalise: Callable[[str], str] | None = None
) -> ScalarPredicate:
    """``make_predicate`` of ``rhs`` (each value passed through ``normalise``
    first, when given), built once per operator, constant and normaliser
    for as long as a compiled rule uses it.  ``ValueError`` from
    ``normalise`` propagates.

    Why: team rules repeat the same lists, the rule index compiles residual
    conditions again and the code generator plans each check again.  A set
    of 10,000 registries takes milliseconds to build, and normalising 10,000
    image names for ``pmatch`` tens of milliseconds: 50 rules sharing such a
    list took 4 s to load and 2 s more on first use without this.
    """
    key = (op, rhs, normalise)
    found = _SHARED.get(key)
    if found is None:
        value = rhs
        if normalise is not None:
            value = tuple(map(normalise, rhs)) if isinstance(rhs, tuple) else normalise(rhs)
        found = make_predicate(op, value)
        _SHARED[key] = found  # every factory returns a function: weakly referable
    return found
