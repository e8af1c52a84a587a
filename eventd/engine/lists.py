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
from functools import lru_cache
from typing import TypeAlias

from msgspec import Struct

from eventd.engine.errors import RuleError
from eventd.engine.yamlsrc import Where

#: Valid list names: Falco's BareStr (POSIX ``[:space:]`` spelled out).
LIST_NAME = re.compile(r"[^()\"'\t\n\v\f\r =,]+")

#: The longest a condition may grow to by list substitution (1 MiB).
MAX_CONDITION_LENGTH = 1 << 20
#: The most items all lists together may hold once nested lists are inlined.
MAX_LIST_ITEMS = 1_000_000

_BLANKS = " \t\n\r"
_DELIMS = _BLANKS + "(),="
_DELIM_CLASS = re.escape(_DELIMS)


def quote_item(item: str) -> str:
    """Double-quote an item that holds a space, unless it already starts with a quote.

    Nothing is escaped: an item holding a quote or a comma breaks the
    condition, exactly as in Falco.
    """
    if " " in item and item[:1] not in ('"', "'"):
        return f'"{item}"'
    return item


class ListDef(Struct, frozen=True):
    """A list as collected: raw items, its position (``index``) and ``visibility``."""

    name: str
    items: tuple[str, ...]
    index: int
    visibility: int
    #: Where the list was defined, for errors (``None`` in unit tests).
    where: Where | None = None


def resolve_lists(lists: Sequence[ListDef]) -> tuple[dict[str, tuple[str, ...]], set[str]]:
    """Inline list references inside list items; return items by name and names used.

    An item naming a list whose index is below this list's visibility is
    replaced by that list's *raw* items (one level, as Falco does; deeper
    names stay as text and may still be substituted in conditions).
    ``lists`` must be in index order; the result keeps that order.  Raise
    ``RuleError`` once the lists together exceed ``MAX_LIST_ITEMS``: a list
    naming a long list many times grows quadratically with the file.
    """
    by_name = {ld.name: ld for ld in lists}
    out: dict[str, tuple[str, ...]] = {}
    used: set[str] = set()
    total = 0
    for ld in lists:
        items: list[str] = []
        for item in ld.items:
            ref = by_name.get(item)
            if ref is not None and ref.index < ld.visibility:
                used.add(ref.name)
                items.extend(ref.items)
            else:
                items.append(item)
            if total + len(items) > MAX_LIST_ITEMS:
                message = (
                    "too large after inlining nested lists: "
                    f"all lists together would hold more than {MAX_LIST_ITEMS} items"
                )
                if ld.where is None:
                    raise RuleError(message, item=f"list '{ld.name}'")
                raise ld.where.error(message, key="items")
        total += len(items)
        out[ld.name] = tuple(items)
    return out, used


@lru_cache(maxsize=4096)
def _occurrences(name: str) -> re.Pattern[str]:
    """``name`` between delimiters (or the ends of the text).

    A list name holds no delimiter, so these are exactly the places Falco's
    scan accepts, found in one C-level pass.
    """
    return re.compile(rf"(?<![^{_DELIM_CLASS}]){re.escape(name)}(?![^{_DELIM_CLASS}])")


#: A slice ``text[start:end]`` of the rewritten condition.
_Slice: TypeAlias = tuple[str, int, int]


def _trim_blanks(parts: list[_Slice]) -> int:
    """Drop trailing blanks from the rewritten text; return how many went."""
    removed = 0
    while parts:
        text, start, end = parts[-1]
        cut = end
        while cut > start and text[cut - 1] in _BLANKS:
            cut -= 1
        removed += end - cut
        if cut > start:
            parts[-1] = (text, start, cut)
            break
        parts.pop()
    return removed


def _last_char(parts: list[_Slice]) -> str:
    if not parts:
        return ""
    text, _, end = parts[-1]
    return text[end - 1]


def substitute_one(cond: str, name: str, items: Sequence[str]) -> tuple[str, bool]:
    """Replace every delimited occurrence of list ``name`` in ``cond``; report use.

    Falco edits the text around each match, text already rewritten included
    (blanks before the name go, and for an empty list one comma).  Rebuilding
    the string per match would be quadratic, so the rewritten part is kept as
    slices (``parts``) that are trimmed in place; ``cond[pos:]`` is the rest.
    Raise ``RuleError`` as soon as the text grows past ``MAX_CONDITION_LENGTH``.
    """
    sub = ", ".join(quote_item(i) for i in items)
    inner, first = f" {sub} ", f"{sub} "  # after some text / at the very start
    parts: list[_Slice] = []
    size = pos = resume = 0
    n = len(cond)
    for m in _occurrences(name).finditer(cond):
        start, end = m.span()
        if start < resume:
            continue
        head_end = start
        while head_end > pos and cond[head_end - 1] in _BLANKS:
            head_end -= 1
        if head_end == pos:
            size -= _trim_blanks(parts)
        while end < n and cond[end] in _BLANKS:
            end += 1
        if not sub:
            if (cond[head_end - 1] if head_end > pos else _last_char(parts)) == ",":
                if head_end > pos:
                    head_end -= 1
                else:
                    text, a, b = parts[-1]
                    parts[-1] = (text, a, b - 1)
                    size -= 1
            elif end < n and cond[end] == ",":
                end += 1
        if head_end > pos:
            parts.append((cond, pos, head_end))
            size += head_end - pos
        # Falco resumes its search one character late after a match at 0.
        piece, resume = (inner, end) if parts else (first, end + 1)
        parts.append((piece, 0, len(piece)))
        size += len(piece)
        pos = end
        if size + n - pos > MAX_CONDITION_LENGTH:
            raise RuleError(
                f"condition too long after substituting list '{name}': "
                f"more than {MAX_CONDITION_LENGTH} characters"
            )
    if not parts:
        return cond, False
    return "".join(text[a:b] for text, a, b in parts) + cond[pos:], True


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
