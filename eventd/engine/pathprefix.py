"""Path-prefix sets for the ``pmatch`` operator, as Falco (libsinsp) matches them.

``pmatch`` asks "is the value one of these paths, or below one of them?".
Values and entries are cut into segments at ``/``, empty segments dropped
(so ``/etc/``, ``//etc`` and ``etc`` are all the one segment ``etc``), and a
value matches an entry when it has at least the entry's segments and each
entry segment matches the value's segment in the same place: ``/etc``
covers ``/etc/passwd`` but neither ``/etcx`` nor ``/et``, and
``myregistry.io`` covers ``myregistry.io/app`` but not
``myregistry.io.evil.com/app``.  An entry with no segment (``/``) covers
every value.

An entry segment holding ``*``, ``?`` or ``[`` is a glob (``fnmatch``
without flags, see ``eventd.engine.glob``) matched against one value
segment: ``/opt/*/bin`` covers ``/opt/app/bin/tool``, and a ``*`` never
reaches across a ``/``.  Other segments compare literally (a backslash in
them is an ordinary character).

Registry allow-lists can hold thousands of entries, so the entries are kept
in a trie of segments: literal segments are looked up in a dict (a lookup
costs the same for ten entries or ten thousand), glob segments are tried one
by one.  Each trie node is visited at most once per lookup, so a lookup is
linear in the size of the value and of the trie, never exponential.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from eventd.engine.glob import compile_glob

_WILDCARDS = frozenset("*?[")


def segments(path: str) -> list[str]:
    """The non-empty ``/``-separated segments of ``path``."""
    return [s for s in path.split("/") if s]


def is_glob_segment(segment: str) -> bool:
    """Whether Falco matches ``segment`` as a glob rather than literally."""
    return not _WILDCARDS.isdisjoint(segment)


class _Node:
    __slots__ = ("children", "globs", "terminal")

    def __init__(self) -> None:
        self.terminal = False  # an entry ends here: everything below matches
        self.children: dict[str, _Node] = {}
        # glob segment text -> (its matcher, subtree), in insertion order
        self.globs: dict[str, tuple[Callable[[str], bool], _Node]] = {}

    def child(self, segment: str) -> _Node:
        if is_glob_segment(segment):
            found = self.globs.get(segment)
            if found is None:
                found = self.globs[segment] = (compile_glob(segment), _Node())
            return found[1]
        node = self.children.get(segment)
        if node is None:
            node = self.children[segment] = _Node()
        return node


class PathPrefixSet:
    """A set of paths answering "does any entry equal or contain this value?"."""

    __slots__ = ("_has_globs", "_root", "_size")

    def __init__(self, entries: Iterable[str]) -> None:
        self._root = _Node()
        self._size = 0
        self._has_globs = False
        for entry in entries:
            self._add(entry)

    def _add(self, entry: str) -> None:
        node = self._root
        for segment in segments(entry):
            self._has_globs = self._has_globs or is_glob_segment(segment)
            node = node.child(segment)
        if not node.terminal:
            node.terminal = True
            self._size += 1

    def __len__(self) -> int:
        """The number of distinct entries (after dropping empty segments)."""
        return self._size

    def contains_prefix_of(self, value: str) -> bool:
        """True if ``value`` equals an entry or lies under one."""
        if self._has_globs:
            return self._search(segments(value))
        node = self._root
        if node.terminal:
            return True
        parts = value.split("/")
        if "" in parts:  # a leading, trailing or doubled "/": drop the empty segments
            parts = [p for p in parts if p]
        for segment in parts:
            node = node.children.get(segment)  # type: ignore[assignment]  # None: tested next
            if node is None:
                return False
            if node.terminal:
                return True
        return False

    def _search(self, parts: list[str]) -> bool:
        """Depth-first search through literal and glob children.

        A node is reached only through its parent, and only at its own
        depth, so each is visited at most once.
        """
        stack = [(self._root, 0)]
        while stack:
            node, depth = stack.pop()
            if node.terminal:
                return True
            if depth == len(parts):
                continue
            part = parts[depth]
            for matches, child in node.globs.values():
                if matches(part):
                    stack.append((child, depth + 1))
            literal = node.children.get(part)
            if literal is not None:
                stack.append((literal, depth + 1))
        return False
