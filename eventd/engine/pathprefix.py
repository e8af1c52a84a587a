"""Path-prefix sets for the ``pmatch`` operator.

``pmatch`` asks "is the value one of these paths, or below one of them?",
where *below* means at a ``/`` segment boundary: ``/etc`` covers
``/etc/passwd`` but not ``/etcx``, and ``myregistry.io`` covers
``myregistry.io/app`` but neither ``myregistry.io.evil.com/app`` nor
``myregistry.iox/app``.  Registry allow-lists can hold thousands of entries,
so the entries are kept in a trie of path segments: a lookup walks the
value's own segments and costs the same for ten entries or ten thousand.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: Trie key marking "an entry ends here".  Segments are strings, so ``None``
#: never collides with one.
_END = None


class PathPrefixSet:
    """A set of paths answering "does any entry equal or contain this value?".

    A trailing ``/`` on an entry is ignored (``/etc/`` means ``/etc``), so
    that entries written either way behave alike.
    """

    __slots__ = ("_root", "_size")

    def __init__(self, entries: Iterable[str]) -> None:
        self._root: dict[Any, Any] = {}
        self._size = 0
        for entry in entries:
            self._add(entry)

    def _add(self, entry: str) -> None:
        stripped = entry.rstrip("/")
        # "/" (and "") strip to "", whose single empty segment is the root
        # directory: it then covers every absolute path.
        node = self._root
        for segment in stripped.split("/"):
            node = node.setdefault(segment, {})
        if _END not in node:
            node[_END] = True
            self._size += 1

    def __len__(self) -> int:
        return self._size

    def contains_prefix_of(self, value: str) -> bool:
        """True if ``value`` equals an entry or lies under one."""
        node = self._root
        for segment in value.split("/"):
            node = node.get(segment)
            if node is None:
                return False
            if _END in node:
                return True
        return False
