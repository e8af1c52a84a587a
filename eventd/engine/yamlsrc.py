"""Rules YAML as a small tree that remembers where everything came from.

Falco reads rules with yaml-cpp, which keeps every scalar as the text the
author wrote.  PyYAML's constructors would turn ``true`` into ``True`` and
``0x1f`` into ``31``, and a list item or an exception value must reach the
condition exactly as written, so the loader builds its own small tree from
the YAML parser's events instead: scalars stay text, and every node and
every mapping key keeps its line so that errors can point at it.

The ``decode_*`` helpers reproduce yaml-cpp's checks (and Falco's messages)
for the few shapes a rules file uses, raising located ``RuleError``\\ s.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeAlias

from msgspec import Struct

from eventd.engine import yamlcache
from eventd.engine.errors import RuleError
from eventd.engine.load_result import Finding, WarningCode

#: Deepest nesting of sequences and mappings a rules file may use.  Real
#: files need about six levels (items, exceptions, values, rows).
MAX_NESTING = 64

_PARSE = "LOAD_ERR_YAML_PARSE"
_TRUE = {"y", "yes", "true", "on"}
_FALSE = {"n", "no", "false", "off"}


class Scalar(Struct, frozen=True, tag=True):
    """A scalar exactly as written (quotes removed); ``null`` for ``~``/empty."""

    text: str
    line: int
    null: bool = False


class Seq(Struct, frozen=True, tag=True):
    items: tuple[Node, ...]
    line: int


class Map(Struct, frozen=True, tag=True):
    """A mapping with string keys; the first of duplicate keys wins (yaml-cpp)."""

    entries: dict[str, tuple[int, Node]]
    line: int

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> Node | None:
        entry = self.entries.get(key)
        return None if entry is None else entry[1]

    def key_line(self, key: str) -> int:
        entry = self.entries.get(key)
        return self.line if entry is None else entry[0]

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)


Node: TypeAlias = Scalar | Seq | Map


class Where(Struct, frozen=True):
    """Where an item lives, for error messages: file, line and item label."""

    file: str
    line: int
    item: str

    def error(self, message: str, *, key: str | None = None, line: int | None = None) -> RuleError:
        return RuleError(message, file=self.file, line=line or self.line, item=self.item, key=key)

    def finding(
        self, code: WarningCode, message: str, *, key: str | None = None, line: int | None = None
    ) -> Finding:
        """A warning with Falco's ``code`` located here."""
        return Finding(code, message, self.file, line or self.line, self.item, key)

    def named(self, item: str) -> Where:
        return Where(self.file, self.line, item)


def load_documents(text: str, file: str) -> list[Node]:
    """The non-null documents of ``text``; YAML errors become ``RuleError``.

    From the parsed-rules cache when it is on (``yamlcache``; ``eventd
    scan`` and ``eventd rules check`` turn it on), else parsed by
    ``yamlparse``, which says how and why.
    """
    store = yamlcache.ACTIVE
    if store is not None:
        found = store.load(text)
        if found is not None:
            return found
    from eventd.engine import yamlparse  # imports PyYAML, ~12 ms: only when parsing

    try:
        docs, shared = yamlparse.parse(text, file)
    except RuleError as err:
        err.code = err.code or _PARSE
        raise
    if store is not None and not shared:
        store.save(text, docs)
    return docs


def scalar_text(node: Node | None) -> str | None:
    """The text of a non-null scalar, else ``None``."""
    if isinstance(node, Scalar) and not node.null:
        return node.text
    return None


def decode_str(item: Map, key: str, where: Where, *, required: bool = True) -> str | None:
    """A required (or optional) non-empty scalar, with Falco's error messages."""
    if key not in item:
        if not required:
            return None
        raise where.error(f"Item has no mapping for key '{key}'")
    node = item.get(key)
    line = item.key_line(key)
    if isinstance(node, Scalar) and node.null:
        raise where.error(f"Mapping for key '{key}' is empty", line=line)
    if not isinstance(node, Scalar):
        raise where.error("Value is not a scalar value", key=key, line=line)
    if node.text == "":
        raise where.error("Value must be non-empty", key=key, line=line)
    return node.text


def parse_bool(text: str) -> bool | None:
    """yaml-cpp's booleans: ``y/yes/true/on`` and negatives, as lower, Title or UPPER."""
    for value, words in ((True, _TRUE), (False, _FALSE)):
        for w in words:
            if text in (w, w.capitalize(), w.upper()):
                return value
    return None


def decode_bool(item: Map, key: str, where: Where, default: bool) -> bool:
    text = decode_str(item, key, where, required=False)
    if text is None:
        return default
    value = parse_bool(text)
    if value is None:
        raise where.error("Can't decode YAML scalar value", key=key, line=item.key_line(key))
    return value


def decode_scalars(item: Map, key: str, where: Where) -> list[str]:
    """A sequence of scalars (list ``items``, rule ``tags``)."""
    node = item.get(key)
    line = item.key_line(key)
    if not isinstance(node, Seq):
        raise where.error("Value is not a sequence", key=key, line=line)
    out = []
    for v in node.items:
        if not isinstance(v, Scalar) or v.null:
            raise where.error("sequence value is not scalar", key=key, line=v.line)
        out.append(v.text)
    return out
