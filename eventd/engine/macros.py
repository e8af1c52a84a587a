"""Macro expansion on the syntax tree.

Unlike lists, a macro is parsed on its own and its *tree* replaces each
reference, so ``a or b`` used as ``not m`` stays grouped.  Expansion is
recursive: a substituted body is expanded again with the same set of
visible macros, and a macro met again on its own expansion path is a
reference loop.  As in Falco, every problem is collected and the first loop
(else the first undefined macro) is reported, at the offset of the reference
in the text it was parsed from.

The walk is iterative because conditions may nest up to 1000 levels, which
would exhaust Python's recursion limit.  Its size is bounded as it goes
(``MAX_EXPANDED_NODES``): a few lines of macros that each use the previous
one twice would otherwise expand to billions of nodes.
"""

from __future__ import annotations

from collections.abc import Callable

from msgspec import Struct

from eventd.engine.ast import And, MacroRef, Node, Not, Or
from eventd.engine.errors import RuleError

#: The most nodes a condition may have once macros are expanded, counting a
#: macro's nodes once per use: rules are compiled per use, and macros that
#: each use the previous one twice double the count at every level.
MAX_EXPANDED_NODES = 100_000


class Expanded(Struct, frozen=True):
    """A tree without macro references, and its size counted per use.

    A lookup returning one is inserted as it is (shared, not walked again),
    so a macro used by many rules costs its size once, not per use.
    """

    tree: Node
    size: int


#: Returns the body of a visible macro (parsed, or already expanded), or ``None``.
MacroLookup = Callable[[str], Node | Expanded | None]

_VISIT = 0
_BUILD = 1


def expand_macros(root: Node, lookup: MacroLookup) -> tuple[Node, list[str]]:
    """Return ``root`` with every macro reference replaced, and the macros used.

    Raise ``RuleError`` (with ``offset``) for a reference loop, an undefined
    macro, or a result larger than ``MAX_EXPANDED_NODES``.  Subtrees without
    references are shared, not copied.
    """
    expanded, used = expand_body(root, lookup)
    return expanded.tree, used


def expand_body(root: Node, lookup: MacroLookup) -> tuple[Expanded, list[str]]:
    """``expand_macros``, keeping the size for lookups that reuse the result."""
    loops: list[MacroRef] = []
    unknown: list[MacroRef] = []
    used: list[str] = []
    out: list[Node] = []
    sizes: list[int] = []  # the size of each tree in ``out``
    total = 0  # every node built so far, the bound checked as the walk goes
    stack: list[tuple[int, Node, tuple[str, ...]]] = [(_VISIT, root, ())]
    while stack:
        op, node, path = stack.pop()
        added = 1  # nodes this step adds to the result
        if op == _BUILD:
            sizes.append(1 + _pop_sizes(node, sizes))
            out.append(_rebuild(node, out))
        elif isinstance(node, MacroRef):
            body = lookup(node.name)
            if body is None or node.name in path:
                (unknown if body is None else loops).append(node)
                out.append(node)
                sizes.append(1)
            elif isinstance(body, Expanded):
                used.append(node.name)
                out.append(body.tree)
                sizes.append(body.size)
                added = body.size
            else:
                used.append(node.name)
                stack.append((_VISIT, body, (*path, node.name)))
                continue
        elif isinstance(node, And | Or | Not):
            stack.append((_BUILD, node, path))
            children = node.children if isinstance(node, And | Or) else (node.child,)
            stack.extend((_VISIT, child, path) for child in reversed(children))
            continue
        else:
            out.append(node)
            sizes.append(1)
        total += added
        if total > MAX_EXPANDED_NODES:
            _raise_first(loops, unknown)
            raise RuleError(
                f"condition too large after expanding macros: more than {MAX_EXPANDED_NODES} nodes",
                offset=node.pos,
            )
    _raise_first(loops, unknown)
    return Expanded(out[0], sizes[0]), used


def _raise_first(loops: list[MacroRef], unknown: list[MacroRef]) -> None:
    """Falco's order: the first reference loop, else the first undefined macro."""
    if loops:
        raise RuleError(f"reference loop in macro '{loops[0].name}'", offset=loops[0].pos)
    if unknown:
        raise RuleError(f"Undefined macro '{unknown[0].name}' used in filter.", offset=unknown[0].pos)


def _pop_sizes(node: Node, sizes: list[int]) -> int:
    """Pop the sizes of ``node``'s children; return their sum."""
    count = len(node.children) if isinstance(node, And | Or) else 1
    first = len(sizes) - count
    total = sum(sizes[first:])
    del sizes[first:]
    return total


def _rebuild(node: Node, out: list[Node]) -> Node:
    """Pop ``node``'s expanded children off ``out`` and rebuild it if they changed."""
    if isinstance(node, Not):
        child = out.pop()
        return node if child is node.child else Not(child, pos=node.pos)
    assert isinstance(node, And | Or)
    first = len(out) - len(node.children)
    kids = tuple(out[first:])
    del out[first:]
    if all(a is b for a, b in zip(kids, node.children, strict=True)):
        return node
    return type(node)(kids, pos=node.pos)
