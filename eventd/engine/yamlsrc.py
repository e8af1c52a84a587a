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

from collections.abc import Callable, Iterator
from typing import TypeAlias

import yaml
from msgspec import Struct

from eventd.engine.errors import RuleError
from eventd.engine.load_result import Finding, WarningCode

try:  # the C parser is several times faster on large rule files
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader

#: Deepest nesting of sequences and mappings a rules file may use.  Real
#: files need about six levels (items, exceptions, values, rows).
MAX_NESTING = 64

#: ``Resolver.resolve(kind, value, implicit)``: the tag PyYAML's composer would
#: give a scalar (``implicit`` is the event's (plain, quoted) pair).  Typed
#: here because types-PyYAML leaves the method unannotated.
_resolve: Callable[[type[yaml.Node], str, tuple[bool, bool]], str] = yaml.resolver.Resolver().resolve
_NULL_TAG = "tag:yaml.org,2002:null"
_PARSE = "LOAD_ERR_YAML_PARSE"
_TRUE = {"y", "yes", "true", "on"}
_FALSE = {"n", "no", "false", "off"}


class Scalar(Struct, frozen=True):
    """A scalar exactly as written (quotes removed); ``null`` for ``~``/empty."""

    text: str
    line: int
    null: bool = False


class Seq(Struct, frozen=True):
    items: tuple[Node, ...]
    line: int


class Map(Struct, frozen=True):
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

    Nodes are built here from libyaml's parser *events* rather than by
    PyYAML's composer: the C composer recurses once per nesting level and
    kills the process (SIGSEGV) on a few tens of thousands of nested ``[``,
    while the parser is a state machine.  Building iteratively also lets the
    nesting be capped at ``MAX_NESTING`` the moment it is exceeded, before
    the rest of a hostile file is even scanned.
    """
    builder = _Builder(file)
    try:
        return _build(builder, text)
    except RuleError as err:
        err.code = err.code or _PARSE
        raise


def _build(builder: _Builder, text: str) -> list[Node]:
    file = builder.file
    try:
        for event in yaml.parse(text, Loader=_Loader):
            builder.feed(event)
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
    except UnicodeEncodeError as err:
        # libyaml takes UTF-8: a lone surrogate (text given to load_rules_text,
        # never a file read as UTF-8) cannot be passed to it.
        raise RuleError(f"invalid text at offset {err.start}: {err.reason}", file=file) from None
    return builder.docs


def _is_null(event: yaml.ScalarEvent) -> bool:
    """Whether a scalar is YAML null, resolved as PyYAML's composer would."""
    tag = event.tag
    if tag is None or tag == "!":
        tag = _resolve(yaml.ScalarNode, event.value, event.implicit)
    return tag == _NULL_TAG


def _line(event: yaml.Event) -> int:
    """The 1-based line ``event`` starts on.

    The parser marks every event it emits; types-PyYAML types the mark as
    optional only because an event built by hand may lack one (0: unknown).
    """
    mark = event.start_mark
    return 0 if mark is None else mark.line + 1


class _Open(Struct):
    """A sequence (``entries`` is ``None``) or mapping still being built."""

    line: int
    anchor: str | None
    items: list[Node]
    entries: dict[str, tuple[int, Node]] | None
    #: A mapping's key read, its value not yet.
    key: Scalar | None = None


class _Builder:
    """Turns parser events into nodes; aliases share the node, cycles fail.

    Anchors are scoped to their document, as in PyYAML.  An anchor maps to
    ``None`` while its collection is still open, so an alias inside it is a
    cycle.
    """

    def __init__(self, file: str) -> None:
        self.file = file
        self.docs: list[Node] = []
        self.stack: list[_Open] = []
        self.anchors: dict[str, Node | None] = {}

    def error(self, message: str, event: yaml.Event) -> RuleError:
        return RuleError(message, file=self.file, line=_line(event) or None)

    def feed(self, event: yaml.Event) -> None:
        if isinstance(event, yaml.ScalarEvent):
            node: Node = Scalar(event.value, _line(event), _is_null(event))
            self.anchor(event, node)
            self.add(node, event)
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor not in self.anchors:
                raise self.error(f"YAML syntax error: undefined alias '*{event.anchor}'", event)
            target = self.anchors[event.anchor]
            if target is None:
                raise self.error("recursive YAML alias", event)
            self.add(target, event)
        elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            if self.stack and self.stack[-1].entries is not None and self.stack[-1].key is None:
                raise self.error("mapping keys must be scalars", event)
            if len(self.stack) >= MAX_NESTING:
                raise self.error(
                    f"YAML nested too deeply: more than {MAX_NESTING} levels of sequences and mappings",
                    event,
                )
            self.anchor(event, None)
            is_map = isinstance(event, yaml.MappingStartEvent)
            self.stack.append(_Open(_line(event), event.anchor, [], {} if is_map else None))
        elif isinstance(event, yaml.CollectionEndEvent):
            top = self.stack.pop()
            node = Seq(tuple(top.items), top.line) if top.entries is None else Map(top.entries, top.line)
            if top.anchor is not None:
                self.anchors[top.anchor] = node
            self.add(node, event)
        elif isinstance(event, yaml.DocumentStartEvent):
            self.anchors = {}

    def anchor(self, event: yaml.NodeEvent, node: Node | None) -> None:
        name = event.anchor
        if name is None:
            return
        if name in self.anchors:
            raise self.error(f"YAML syntax error: duplicate anchor '&{name}'", event)
        self.anchors[name] = node

    def add(self, node: Node, event: yaml.Event) -> None:
        """Put a finished node into its parent (or the document list)."""
        if not self.stack:
            if not (isinstance(node, Scalar) and node.null):
                self.docs.append(node)
            return
        top = self.stack[-1]
        if top.entries is None:
            top.items.append(node)
        elif top.key is None:
            if not isinstance(node, Scalar):
                raise self.error("mapping keys must be scalars", event)
            top.key = node
        else:
            if top.key.text not in top.entries:
                top.entries[top.key.text] = (top.key.line, node)
            top.key = None


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
