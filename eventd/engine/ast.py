"""The syntax tree of a Falco condition.

Nodes are immutable and hashable so that the same macro body can be shared by
many rules and so that trees can be compared in tests (exception expansion is
checked by comparing trees, not text).  ``pos`` is the offset of the node in
the condition text it was parsed from; it is excluded from equality.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field  # ``Check.field`` would shadow ``field``
from typing import TypeAlias

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


@dataclass(frozen=True, slots=True)
class FieldRef:
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


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Node, ...]
    pos: int = dataclass_field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Node, ...]
    pos: int = dataclass_field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Not:
    child: Node
    pos: int = dataclass_field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Check:
    """``field op value``.

    ``value`` is ``None`` for ``exists``; a tuple of strings for list
    operators; a string for value operators; a ``FieldRef`` for ``val(f)``
    or a transformer on the right-hand side.  ``op`` is normalised: ``==``
    is stored as ``=``.
    """

    field: FieldRef
    op: str
    value: str | tuple[str, ...] | FieldRef | None = None
    pos: int = dataclass_field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class MacroRef:
    """A bare identifier in check position: a macro to be expanded."""

    name: str
    pos: int = dataclass_field(default=0, compare=False)


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
