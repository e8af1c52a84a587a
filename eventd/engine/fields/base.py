"""What a field is, and how a field reference in a rule becomes an extractor.

A *field family* module (``k8saudit``, ``jsonfields``, ``falco_alert``,
``images``) declares ``FieldDef`` objects.  A ``FieldSet`` holds the fields of
one rule source.  ``FieldSet.bind`` checks a ``FieldRef`` written in a rule
(name, argument, transformers) and returns a ``BoundField`` whose ``get`` is a
closure: it extracts the value once per event and memoises it in
``Event.cache``, because many rules read the same few fields.

Value conventions (the compiler and the output formatter rely on them):

* a missing value is ``None``; extractors never return an empty tuple;
* a scalar field returns one scalar, a ``str`` for every ``ka.*``/``json.*``
  field; Falco ``output_fields`` keep their JSON type (``int``, ``float``,
  ``bool``, ``str``);
* a list field returns a non-empty ``tuple`` of scalars, also when an index
  argument selects a single element (the field stays list-typed, as in Falco).
"""

from __future__ import annotations

import base64
import binascii
import enum
import posixpath
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias, TypedDict

from msgspec import Struct

from eventd.engine.ast import FieldRef
from eventd.engine.errors import FieldError
from eventd.events.model import Event

Scalar: TypeAlias = str | int | float | bool
Extracted: TypeAlias = Scalar | tuple[Scalar, ...] | None
#: ``extract(event, arg)``: arg is ``None``, an ``int`` index, or a ``str`` key.
Extractor: TypeAlias = Callable[[Event, Any], Extracted]


class ArgKind(enum.Enum):
    """What may follow the field name in brackets."""

    NONE = "none"  # no argument allowed
    INDEX = "index"  # optional ``[N]``: digits, no leading zero
    KEY = "key"  # required ``[string]``


class FieldDef(Struct, frozen=True):
    """A field a rule can read.

    ``indexable`` marks cheap single-valued string fields (verb, resource,
    stage...) that the rule index keys on; each must also be readable from
    a raw line's header (``events.header.HEADER_FIELDS``).

    ``rhs_normalizer`` rewrites right-hand-side constants once, at compile
    time, into the field's value space (image-name fields normalise
    allow-list entries such as ``nginx`` to ``docker.io/library/nginx``).
    """

    name: str
    desc: str
    extract: Extractor
    is_list: bool = False
    arg: ArgKind = ArgKind.NONE
    indexable: bool = False
    rhs_normalizer: Callable[[str], str] | None = None


class FieldOptions(TypedDict, total=False):
    """The optional parts of a ``FieldDef``, as keyword arguments.

    A family module's table of definitions names a shared combination once
    (``_LI = FieldOptions(is_list=True, arg=ArgKind.INDEX)``) and spreads it
    into each ``FieldDef(..., **_LI)``; typed this way the type checker
    checks every key and value against ``FieldDef``'s own parameters.
    """

    is_list: bool
    arg: ArgKind
    indexable: bool
    rhs_normalizer: Callable[[str], str] | None


class BoundField(Struct, frozen=True):
    """A field reference checked against its ``FieldDef``, ready to extract."""

    ref: FieldRef
    defn: FieldDef
    get: Callable[[Event], Extracted]

    @property
    def token(self) -> str:
        return self.ref.token

    @property
    def is_list(self) -> bool:
        return self.defn.is_list

    @property
    def plain(self) -> bool:
        """True when the value is the field's own (no transformer applied)."""
        return not self.ref.transformers


def parse_index(text: str) -> int | None:
    """Falco's index argument: digits only, no leading zero (``0`` is fine).

    At most 9 digits: no list is longer, and ``int()`` raises ``ValueError``
    on a few thousand.
    """
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0") or len(text) > 9:
        return None
    return int(text)


def _b64(value: Scalar) -> Scalar | None:
    try:
        return base64.b64decode(str(value), validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return None


_TRANSFORMS: dict[str, Callable[[Scalar], Scalar | None]] = {
    "tolower": lambda v: str(v).lower(),
    "toupper": lambda v: str(v).upper(),
    "b64": _b64,
    "basename": lambda v: posixpath.basename(str(v)),
    "len": lambda v: len(str(v)),
}


def _apply_transform(name: str, value: Extracted) -> Extracted:
    fn = _TRANSFORMS[name]
    if value is None:
        return None
    if isinstance(value, tuple):
        if name == "len":  # len of a list field is the number of values
            return len(value)
        out = tuple(r for r in (fn(v) for v in value) if r is not None)
        return out or None
    return fn(value)


class FieldSet:
    """The fields of one rule source, plus an optional resolver for fields
    that exist by naming convention (Falco ``output_fields`` keys)."""

    def __init__(
        self,
        source: str,
        defs: Iterable[FieldDef],
        dynamic: Callable[[str], FieldDef | None] | None = None,
        aliases: dict[str, str] | None = None,
    ) -> None:
        self.source = source
        #: Guide-invented names read as real fields (see ``aliases.py``);
        #: consulted before ``dynamic`` so ``image.repository`` is not taken
        #: for an absent ``output_fields`` key.
        self.aliases = dict(aliases or {})
        self.defs: dict[str, FieldDef] = {}
        for d in defs:
            if d.name in self.defs:
                raise ValueError(f"field {d.name} declared twice for source {source}")
            self.defs[d.name] = d
        self._dynamic = dynamic
        #: ``bind``'s results, by reference: rules repeat the same fields, and
        #: the code generator binds each check again (see ``bind``).
        self._bound: dict[FieldRef, BoundField] = {}

    def lookup(self, name: str) -> FieldDef | None:
        found = self.defs.get(name)
        if found is None and name in self.aliases:
            return self.lookup(self.aliases[name])
        if found is None and self._dynamic is not None:
            found = self._dynamic(name)
        return found

    #: References whose binding is kept; past this the memory starts over
    #: (a daemon reloading ever-changing rules must not grow it forever).
    MAX_BOUND = 4096

    def bind(self, ref: FieldRef) -> BoundField:
        """Check ``ref`` and return its extractor; raise ``FieldError``.

        A reference bound once is given the same ``BoundField`` again: its
        getter is stateless and keyed by the reference's token, so sharing
        it changes nothing but the cost of loading 1,000 rules.
        """
        found = self._bound.get(ref)
        if found is not None:
            return found
        bound = self._bind(ref)
        if len(self._bound) >= self.MAX_BOUND:
            self._bound.clear()
        self._bound[ref] = bound
        return bound

    def _bind(self, ref: FieldRef) -> BoundField:
        defn = self.lookup(ref.name)
        if defn is None:
            raise FieldError(f"unknown field '{ref.name}' for source {self.source}")
        arg: Any = None
        if defn.arg is ArgKind.NONE:
            if ref.arg is not None:
                raise FieldError(f"field '{ref.name}' does not allow nor require an argument")
        elif defn.arg is ArgKind.KEY:
            if ref.arg is None or ref.arg == "":
                raise FieldError(f"field '{ref.name}' requires an argument but none provided")
            arg = ref.arg
        elif ref.arg is not None:
            arg = parse_index(ref.arg)
            if arg is None:
                raise FieldError(
                    f"field '{ref.name}': index argument must be digits without a leading zero, "
                    f"got '{ref.arg}'"
                )
        for t in ref.transformers:
            if t not in _TRANSFORMS:
                raise FieldError(f"unknown field transformer '{t}'")
        return BoundField(ref, defn, _make_getter(ref, defn, arg))


def _make_getter(ref: FieldRef, defn: FieldDef, arg: Any) -> Callable[[Event], Extracted]:
    key = ref.token
    extract = defn.extract
    transformers = tuple(reversed(ref.transformers))  # innermost first
    miss = _MISSING

    if not transformers:

        def get(ev: Event) -> Extracted:
            cache = ev.cache
            # The untyped event memo holds only what this getter stored under
            # its own key (``miss``: not yet).
            v: Extracted = cache.get(key, miss)
            if v is miss:
                v = cache[key] = extract(ev, arg)
            return v

        return get

    def get_transformed(ev: Event) -> Extracted:
        cache = ev.cache
        v: Extracted = cache.get(key, miss)  # as in ``get`` above
        if v is miss:
            v = extract(ev, arg)
            for t in transformers:
                v = _apply_transform(t, v)
            cache[key] = v
        return v

    return get_transformed


_MISSING = object()


class Registry:
    """All field sets, by rule source."""

    def __init__(self, sets: Iterable[FieldSet]) -> None:
        self.sets = {s.source: s for s in sets}

    def __contains__(self, source: str) -> bool:
        return source in self.sets

    def fieldset(self, source: str) -> FieldSet:
        return self.sets[source]

    def bind(self, source: str, ref: FieldRef) -> BoundField:
        return self.sets[source].bind(ref)
