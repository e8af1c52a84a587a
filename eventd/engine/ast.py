"""The syntax tree of a Falco condition.

Nodes are immutable and hashable so that the same macro body can be shared by
many rules and so that trees can be compared in tests (exception expansion is
checked by comparing trees, not text).  ``pos`` is the offset of the node in
the condition text it was parsed from; it is excluded from equality.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeAlias

from msgspec import Struct

#: Operators that take no right-hand side.
UNARY_OPS = frozenset({"exists"})
#: Operators whose right-hand side is a list ``(a, b, ...)``.
LIST_OPS = frozenset({"in", "intersects", "pmatch"})
#: Operators comparing with one value.
VALUE_OPS = frozenset(
    {
        "=",
        "==",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "contains",
        "icontains",
        "bcontains",
        "startswith",
        "bstartswith",
        "endswith",
        "glob",
        "iglob",
        "regex",
    }
)
ALL_OPS = UNARY_OPS | LIST_OPS | VALUE_OPS
#: Field transformers that may wrap a field, e.g. ``tolower(ka.user.name)``.
TRANSFORMERS = frozenset({"tolower", "toupper", "b64", "basename", "len"})


class FieldRef(Struct, frozen=True):
    """A field as written: ``name``, optional ``[arg]``, optional transformers.

    ``transformers`` lists the wrapping functions outermost first, so
    ``toupper(tolower(x.y))`` is ``("toupper", "tolower")``.
    """

    name: str
    arg: str | None = None
    transformers: tuple[str, ...] = ()

    @property
    def token(self) -> str:
        """The text Falco uses as the ``output_fields`` key: ``name[arg]``."""
        base = self.name if self.arg is None else f"{self.name}[{self.arg}]"
        for fn in reversed(self.transformers):
            base = f"{fn}({base})"
        return base


class _Node(Struct, frozen=True):
    """Base of the condition nodes: equality and hashing ignore ``pos``."""

    def _key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__struct_fields__ if name != "pos")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Node) and type(other) is type(self) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash((type(self), self._key()))


class And(_Node, frozen=True):
    children: tuple[Node, ...]
    pos: int = 0


class Or(_Node, frozen=True):
    children: tuple[Node, ...]
    pos: int = 0


class Not(_Node, frozen=True):
    child: Node
    pos: int = 0


class Check(_Node, frozen=True):
    """``field op value``.

    ``value`` is ``None`` for ``exists``; a tuple of strings for list
    operators; a string for value operators; a ``FieldRef`` for ``val(f)``
    or a transformer on the right-hand side.  ``op`` is normalised: ``==``
    is stored as ``=``.
    """

    field: FieldRef
    op: str
    value: str | tuple[str, ...] | FieldRef | None = None
    pos: int = 0


class MacroRef(_Node, frozen=True):
    """A bare identifier in check position: a macro to be expanded."""

    name: str
    pos: int = 0


Node: TypeAlias = And | Or | Not | Check | MacroRef


def walk(node: Node) -> Iterator[Node]:
    """Yield every node of the tree, parents before children."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, And | Or):
            stack.extend(reversed(n.children))
        elif isinstance(n, Not):
            stack.append(n.child)


def field_refs(node: Node) -> Iterator[FieldRef]:
    """Every field a tree reads, left of each operator and right of it (``val(f)``)."""
    for n in walk(node):
        if isinstance(n, Check):
            yield n.field
            if isinstance(n.value, FieldRef):
                yield n.value
