"""Rules YAML as a small tree that remembers where everything came from.

Falco reads rules with yaml-cpp, which keeps every scalar as the text the
author wrote.  PyYAML's constructors would turn ``true`` into ``True`` and
``0x1f`` into ``31``, and a list item or an exception value must reach the
condition exactly as written, so the loader works on the *composed* node
graph instead: scalars stay text, and every node and every mapping key keeps
its line so that errors can point at it.

The ``decode_*`` helpers reproduce yaml-cpp's checks (and Falco's messages)
for the few shapes a rules file uses, raising located ``RuleError``\\ s.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeAlias

import yaml

from eventd.engine.errors import RuleError

try:  # the C composer is several times faster on large rule files
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader

_NULL_TAG = "tag:yaml.org,2002:null"
_TRUE = {"y", "yes", "true", "on"}
_FALSE = {"n", "no", "false", "off"}


@dataclass(frozen=True, slots=True)
class Scalar:
    """A scalar exactly as written (quotes removed); ``null`` for ``~``/empty."""

    text: str
    line: int
    null: bool = False


@dataclass(frozen=True, slots=True)
class Seq:
    items: tuple[Node, ...]
    line: int


@dataclass(frozen=True, slots=True)
class Map:
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


@dataclass(frozen=True, slots=True)
class Where:
    """Where an item lives, for error messages: file, line and item label."""

    file: str
    line: int
    item: str

    def error(self, message: str, *, key: str | None = None, line: int | None = None) -> RuleError:
        return RuleError(message, file=self.file, line=line or self.line, item=self.item, key=key)

    def warning(self, message: str, *, key: str | None = None, line: int | None = None) -> str:
        return str(self.error(message, key=key, line=line))

    def named(self, item: str) -> Where:
        return Where(self.file, self.line, item)


def load_documents(text: str, file: str) -> list[Node]:
    """The non-null documents of ``text``; YAML errors become ``RuleError``."""
    try:
        docs = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = err.problem or err.context or "invalid YAML"
        if err.context and err.problem:
            problem = f"{problem} ({err.context})"
        raise RuleError(
            f"YAML syntax error: {problem}",
            file=file,
            line=None if mark is None else mark.line + 1,
        ) from None
    except yaml.YAMLError as err:
        raise RuleError(f"YAML error: {err}", file=file) from None
    out: list[Node] = []
    for doc in docs:
        if doc is None:
            continue
        node = _convert(doc, {}, set(), file)
        if not (isinstance(node, Scalar) and node.null):
            out.append(node)
    return out


def _convert(node: yaml.Node, done: dict[int, Node], active: set[int], file: str) -> Node:
    """Convert a composed node; aliases share the converted node, cycles fail."""
    key = id(node)
    if key in done:
        return done[key]
    line = node.start_mark.line + 1
    if key in active:
        raise RuleError("recursive YAML alias", file=file, line=line)
    if isinstance(node, yaml.ScalarNode):
        out: Node = Scalar(node.value, line, node.tag == _NULL_TAG)
    else:
        active.add(key)
        if isinstance(node, yaml.SequenceNode):
            out = Seq(tuple(_convert(n, done, active, file) for n in node.value), line)
        else:
            entries: dict[str, tuple[int, Node]] = {}
            for k, v in node.value:
                if not isinstance(k, yaml.ScalarNode):
                    raise RuleError("mapping keys must be scalars", file=file, line=k.start_mark.line + 1)
                if k.value not in entries:
                    entries[k.value] = (k.start_mark.line + 1, _convert(v, done, active, file))
            out = Map(entries, line)
        active.discard(key)
    done[key] = out
    return out


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
