"""Macro expansion on the syntax tree.

Unlike lists, a macro is parsed on its own and its *tree* replaces each
reference, so ``a or b`` used as ``not m`` stays grouped.  Expansion is
recursive: a substituted body is expanded again with the same set of
visible macros, and a macro met again on its own expansion path is a
reference loop.  As in Falco, every problem is collected and the first loop
(else the first undefined macro) is reported, at the offset of the reference
in the text it was parsed from.

The walk is iterative because conditions may nest up to 1000 levels, which
would exhaust Python's recursion limit.
"""

from __future__ import annotations

from collections.abc import Callable

from eventd.engine.ast import And, MacroRef, Node, Not, Or
from eventd.engine.errors import RuleError

#: Returns the (parsed) body of a visible macro, or ``None``.
MacroLookup = Callable[[str], Node | None]

_VISIT = 0
_BUILD = 1


def expand_macros(root: Node, lookup: MacroLookup) -> tuple[Node, list[str]]:
    """Return ``root`` with every macro reference replaced, and the macros used.

    Raise ``RuleError`` (with ``offset``) for a reference loop or an
    undefined macro.  Subtrees without references are shared, not copied.
    """
    loops: list[MacroRef] = []
    unknown: list[MacroRef] = []
    used: list[str] = []
    out: list[Node] = []
    stack: list[tuple[int, Node, tuple[str, ...]]] = [(_VISIT, root, ())]
    while stack:
        op, node, path = stack.pop()
        if op == _BUILD:
            out.append(_rebuild(node, out))
        elif isinstance(node, MacroRef):
            body = lookup(node.name)
            if body is None or node.name in path:
                (unknown if body is None else loops).append(node)
                out.append(node)
            else:
                used.append(node.name)
                stack.append((_VISIT, body, (*path, node.name)))
        elif isinstance(node, And | Or):
            stack.append((_BUILD, node, path))
            stack.extend((_VISIT, child, path) for child in reversed(node.children))
        elif isinstance(node, Not):
            stack.append((_BUILD, node, path))
            stack.append((_VISIT, node.child, path))
        else:
            out.append(node)
    if loops:
        raise RuleError(f"reference loop in macro '{loops[0].name}'", offset=loops[0].pos)
    if unknown:
        raise RuleError(f"Undefined macro '{unknown[0].name}' used in filter.", offset=unknown[0].pos)
    return out[0], used


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
