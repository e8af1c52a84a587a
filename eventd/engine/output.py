"""Rule outputs: ``%field`` formats compiled once, rendered per alert.

Follows libsinsp's event formatter as Falco drives it: a token is ``%``, an
optional width (``%20ka.user.name`` pads or cuts to 20 characters), then a
field, optionally with ``[arg]`` and wrapped in transformers
(``%toupper(ka.user.name)``).  The field name is the longest known field the
text starts with, so ``%ka.target.name/%ka.target.resource`` works.  Falco
always forces the leading ``*``, so a missing value prints ``<NA>`` instead of
suppressing the alert; list values print ``(a,b)``.  ``output_fields`` maps the
token text as written to the typed value (lists become Python lists, missing
values ``None``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from eventd.engine.ast import TRANSFORMERS, FieldRef
from eventd.engine.codegen import MAX_CHECKS, generate_render
from eventd.engine.errors import FieldError, RuleError
from eventd.engine.fields.base import BoundField, Extracted, FieldSet
from eventd.events.model import Event

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")
_TRANSFORMER = re.compile(r"([a-z0-9]+)\(")
_DIGITS = re.compile(r"[0-9]+")
#: The widest ``%<width>field`` an output may ask for.
MAX_WIDTH = 10_000
#: The most transformers one output token may nest (``toupper(tolower(f))`` is 2).
MAX_TRANSFORMERS = 64


class UnknownOutputField(FieldError):
    """An output names no known field; ``skip-if-unknown-filter`` may skip the rule."""


def value_text(value: Extracted) -> str:
    """How a value prints in the output line."""
    if type(value) is str:
        return value
    if value is None:
        return "<NA>"
    if isinstance(value, tuple):
        try:  # list fields hold strings: join them in C
            return "(" + ",".join(value) + ")"  # type: ignore[arg-type]  # non-strings: TypeError, below
        except TypeError:
            return "(" + ",".join(map(value_text, value)) + ")"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def padded(text: str, width: int) -> str:
    """A ``%<width>field`` value: cut or padded with spaces to ``width``."""
    return text[:width].ljust(width)


class OutputFormat:
    """A compiled output format.  Immutable once compiled.

    Rendering runs once per alert, so the literal text is kept as a
    printf-style template (``%`` doubled) and the values are put in by C.
    """

    __slots__ = ("_bound", "_render", "_template", "_widths", "text", "tokens")

    def __init__(self, text: str, parts: tuple[tuple[str, BoundField | None, int], ...]) -> None:
        self.text = text
        fields = [(token, bound, width) for token, bound, width in parts if bound is not None]
        #: The text as written of each field token, in order (``output_fields`` keys).
        self.tokens: tuple[str, ...] = tuple(token for token, _, _ in fields)
        self._bound = tuple(bound for _, bound, _ in fields)
        #: Each token's ``%<width>``, 0 when it has none (most).
        self._widths = tuple(width for _, _, width in fields)
        #: Renders text and fields (``codegen.generate_render``), made at the first render.
        self._render: Callable[[Event], tuple[str, dict[str, Any]]] | None = None
        self._template = "".join(
            token.replace("%", "%%") if bound is None else "%s" for token, bound, _ in parts
        )

    @classmethod
    def compile(cls, text: str, fields: FieldSet) -> OutputFormat:
        """Parse and bind ``text``; raise ``RuleError`` (with the offset of the token)."""
        text = text.strip()
        parts: list[tuple[str, BoundField | None, int]] = []
        lit_start = 0
        i = 0
        n = len(text)
        while i < n:
            if text[i] != "%":
                i += 1
                continue
            if lit_start != i:
                parts.append((text[lit_start:i], None, 0))
            if i == n - 1:
                raise RuleError("invalid formatting syntax: formatting cannot end with a %", offset=i)
            j = i + 1
            width = 0
            m = _DIGITS.match(text, j)
            if m is not None:
                if m.end() == n:
                    raise RuleError(
                        "invalid formatting syntax: formatting cannot end with a number", offset=i
                    )
                digits = m.group().lstrip("0")
                if len(digits) > len(str(MAX_WIDTH)) or int(digits or "0") > MAX_WIDTH:
                    raise RuleError(
                        f"invalid formatting syntax: width too large (at most {MAX_WIDTH})", offset=i
                    )
                width = int(digits or "0")
                j = m.end()
            try:
                ref, end = _parse_token(text, j, fields)
                bound = fields.bind(ref)
            except RuleError as err:
                raise err.located(offset=i) from None
            parts.append((text[j:end], bound, width))
            i = lit_start = end
        if lit_start < n:
            parts.append((text[lit_start:], None, 0))
        return cls(text, tuple(parts))

    def render(self, event: Event) -> tuple[str, dict[str, Any]]:
        """The output line for ``event`` and its ``output_fields`` (a fresh dict)."""
        render = self._render
        if render is None:
            render = self._render = self._renderer()
        return render(event)

    def _renderer(self) -> Callable[[Event], tuple[str, dict[str, Any]]]:
        """One generated function (``codegen.generate_render``), made at the
        first render; an output with more tokens than a generated function
        takes is rendered value by value."""
        if not self._bound:
            text = self._template % ()
            return lambda _event: (text, {})
        if len(self._bound) <= MAX_CHECKS:
            return generate_render(self._bound, self.tokens, self._template, value_text, self._widths, padded)
        getters = tuple(b.get for b in self._bound)

        def render(event: Event) -> tuple[str, dict[str, Any]]:
            values = [get(event) for get in getters]
            widths = zip(values, self._widths, strict=True)
            shown = [padded(value_text(v), w) if w else value_text(v) for v, w in widths]
            fields = dict(zip(self.tokens, [list(v) if type(v) is tuple else v for v in values], strict=True))
            return self._template % tuple(shown), fields

        return render

    def fields_read(self) -> frozenset[str]:
        """The names of the fields this output prints (transformers' inner fields)."""
        return frozenset(bound.ref.name for bound in self._bound)

    def __repr__(self) -> str:
        return f"OutputFormat({self.text!r})"


def _parse_token(text: str, pos: int, fields: FieldSet) -> tuple[FieldRef, int]:
    """Read one field reference at ``pos``; return it and where it ends."""
    starts: list[int] = []  # where each transformer begins, outermost first
    names: list[str] = []
    while (m := _TRANSFORMER.match(text, pos)) is not None and m.group(1) in TRANSFORMERS:
        if len(names) == MAX_TRANSFORMERS:
            raise RuleError(f"invalid formatting token: more than {MAX_TRANSFORMERS} nested transformers")
        starts.append(pos)
        names.append(m.group(1))
        pos = m.end()
    ref, end = _parse_field(text, pos, fields)
    for start in reversed(starts):
        if end >= len(text) or text[end] != ")":
            raise FieldError(f"invalid formatting token '{text[start:end]}': missing ')'")
        end += 1
    return FieldRef(ref.name, ref.arg, tuple(names)), end


def _parse_field(text: str, pos: int, fields: FieldSet) -> tuple[FieldRef, int]:
    """Read a field name and its optional ``[arg]`` at ``pos``."""
    m = _NAME.match(text, pos)
    name = _known_prefix(m.group(), fields) if m is not None else None
    if name is None:
        shown = m.group() if m is not None else text[pos : pos + 20]
        raise UnknownOutputField(
            f"invalid formatting token '%{shown}': no such field for source {fields.source}"
        )
    end = pos + len(name)
    arg = None
    if end < len(text) and text[end] == "[":
        close = text.find("]", end + 1)
        if close == -1:
            raise FieldError(f"invalid formatting token '{text[pos:]}': missing ']'")
        arg = text[end + 1 : close]
        if len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "\"'":
            arg = arg[1:-1]
        end = close + 1
    return FieldRef(name, arg), end


def _known_prefix(candidate: str, fields: FieldSet) -> str | None:
    """``candidate`` if it is a field, else the longest declared field it starts with."""
    if fields.lookup(candidate) is not None:
        return candidate
    best = None
    for name in fields.defs:
        if candidate.startswith(name) and (best is None or len(name) > len(best)):
            best = name
    return best
