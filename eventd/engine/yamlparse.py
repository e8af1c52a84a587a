"""YAML text -> ``yamlsrc`` nodes, from libyaml's parser events.

Nodes are built here from the parser's *events* rather than by PyYAML's
composer: the C composer recurses once per nesting level and kills the
process (SIGSEGV) on a few tens of thousands of nested ``[``, while the
parser is a state machine.  Building iteratively also lets the nesting be
capped at ``MAX_NESTING`` the moment it is exceeded, before the rest of a
hostile file is even scanned.

A module of its own so that PyYAML is imported only when a file is really
parsed, not when the parsed-rules cache (``yamlcache``) already holds it.
"""

from __future__ import annotations

from collections.abc import Callable

import yaml
from msgspec import Struct

from eventd.engine.errors import RuleError
from eventd.engine.yamlsrc import MAX_NESTING, Map, Node, Scalar, Seq

try:  # the C parser is several times faster on large rule files
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader

#: ``Resolver.resolve(kind, value, implicit)``: the tag PyYAML's composer would
#: give a scalar (``implicit`` is the event's (plain, quoted) pair).  Typed
#: here because types-PyYAML leaves the method unannotated.
_resolve: Callable[[type[yaml.Node], str, tuple[bool, bool]], str] = yaml.resolver.Resolver().resolve
_NULL_TAG = "tag:yaml.org,2002:null"


def parse(text: str, file: str) -> tuple[list[Node], bool]:
    """The non-null documents of ``text``, and whether a YAML alias made
    two places share one node (``yamlcache`` does not keep such a tree:
    written out, a few aliases can stand for billions of nodes)."""
    builder = _Builder(file)
    return _build(builder, text), builder.shared


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
        #: Whether an alias put one node in two places.
        self.shared = False

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
            self.shared = True
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
