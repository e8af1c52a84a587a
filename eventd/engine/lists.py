"""Falco lists: named item sequences substituted into conditions as *text*.

Falco does not treat a list name as a token of the grammar.  Before a macro
or rule condition is parsed, every list name found between delimiters is
replaced by its items joined with ``", "``.  Rules in the wild depend on the
odd consequences (a list name on the right of ``=``, or inside a quoted
string when surrounded by blanks, is substituted too), so the algorithm here
follows Falco's step by step, including where it resumes searching after a
replacement.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: Valid list names: Falco's BareStr (POSIX ``[:space:]`` spelled out).
LIST_NAME = re.compile(r"[^()\"'\t\n\v\f\r =,]+")

_BLANKS = " \t\n\r"
_DELIMS = _BLANKS + "(),="


def quote_item(item: str) -> str:
    """Double-quote an item that holds a space, unless it already starts with a quote.

    Nothing is escaped: an item holding a quote or a comma breaks the
    condition, exactly as in Falco.
    """
    if " " in item and item[:1] not in ('"', "'"):
        return f'"{item}"'
    return item


@dataclass(frozen=True, slots=True)
class ListDef:
    """A list as collected: raw items, its position (``index``) and ``visibility``."""

    name: str
    items: tuple[str, ...]
    index: int
    visibility: int


def resolve_lists(lists: Sequence[ListDef]) -> tuple[dict[str, tuple[str, ...]], set[str]]:
    """Inline list references inside list items; return items by name and names used.

    An item naming a list whose index is below this list's visibility is
    replaced by that list's *raw* items (one level, as Falco does; deeper
    names stay as text and may still be substituted in conditions).
    ``lists`` must be in index order; the result keeps that order.
    """
    by_name = {ld.name: ld for ld in lists}
    out: dict[str, tuple[str, ...]] = {}
    used: set[str] = set()
    for ld in lists:
        items: list[str] = []
        for item in ld.items:
            ref = by_name.get(item)
            if ref is not None and ref.index < ld.visibility:
                used.add(ref.name)
                items.extend(ref.items)
            else:
                items.append(item)
        out[ld.name] = tuple(items)
    return out, used


def substitute_one(cond: str, name: str, items: Sequence[str]) -> tuple[str, bool]:
    """Replace every delimited occurrence of list ``name`` in ``cond``; report use."""
    sub = ", ".join(quote_item(i) for i in items)
    used = False
    start = cond.find(name)
    while start != -1:
        end = start + len(name)
        if (start == 0 or cond[start - 1] in _DELIMS) and (end >= len(cond) or cond[end] in _DELIMS):
            while start > 0 and cond[start - 1] in _BLANKS:
                start -= 1
            while end < len(cond) and cond[end] in _BLANKS:
                end += 1
            if not sub:  # an empty list also takes one adjacent comma away
                if start > 0 and cond[start - 1] == ",":
                    start -= 1
                elif end < len(cond) and cond[end] == ",":
                    end += 1
            head = cond[:start] + " " if start > 0 else ""
            cond = head + sub + " " + cond[end:]
            start += len(sub) + 1
            used = True
        start = cond.find(name, start + 1)
    return cond, used


def substitute_lists(cond: str, lists: Iterable[tuple[str, Sequence[str]]]) -> tuple[str, list[str]]:
    """Substitute every list, in order, into ``cond``; return the text and lists used.

    There is no visibility order between conditions and lists: any list,
    defined before or after the condition, is substituted.
    """
    used = []
    for name, items in lists:
        if name in cond:
            cond, hit = substitute_one(cond, name, items)
            if hit:
                used.append(name)
    return cond, used
