"""Falco condition text to syntax tree.

A hand-written recursive-descent parser of the libsinsp filter grammar
(falco-rules-language.md §6), so that every condition Falco accepts means
the same thing here.  The grammar, in our own words (``|`` alternatives,
``*`` repetition, ``?`` option, quoted text literal; blanks are space, tab,
newline, carriage return, form feed, vertical tab and backspace)::

    condition   := or-expr                          -- whole text, blanks around
    or-expr     := and-expr ( "or" joint and-expr )*
    and-expr    := not-expr ( "and" joint not-expr )*
    joint       := blank+ | <nothing, when "(" follows>
    not-expr    := ( "not" blank+ )* ( "not(" or-expr ")" | operand )
    operand     := "(" or-expr ")" | lhs comparison | macro-name
    lhs         := field | transformer "(" lhs ")"  -- no blank before "("
    comparison  := "exists"
                 | ( "<" | "<=" | ">" | ">=" ) ( number | rhs-field )
                 | ( "=" | "==" | "!=" ) ( string | rhs-field )
                 | word-op blank+ ( string | rhs-field )
                 | ( "in" | "intersects" | "pmatch" ) ( value-list | rhs-field )
    word-op     := "contains" | "icontains" | "bcontains" | "startswith"
                 | "bstartswith" | "endswith" | "glob" | "iglob" | "regex"
    rhs-field   := "val(" field ")" | transformer "(" lhs ")"
    value-list  := "(" ( string ( "," string )* )? ")"
    field       := field-name ( "[" ( quoted | arg-bare ) "]" )?
    string      := quoted | bare
    transformer := "tolower" | "toupper" | "b64" | "basename" | "len"

    macro-name  := [a-zA-Z][a-zA-Z0-9_]*            -- no dot
    field-name  := macro-name ( "." [a-zA-Z][a-zA-Z0-9_]* )+
    number      := 0[xX][0-9a-zA-Z]+ | [+-]?[0-9]+ ( "." [0-9]* )? ( [eE][+-][0-9]+ )?
    bare        := one or more characters other than blanks ( ) , = " '
    arg-bare    := one or more characters other than blanks [ ] " '
    quoted      := "..." or '...' with backslash escapes (see _quoted)

Precedence is Falco's: ``not`` binds tightest, then ``and``, then ``or``.
Keywords are matched the way libsinsp matches them: ``not`` needs a blank or
``(`` after it (so ``notes.x`` is a field and ``nothing`` a macro), ``and``
and ``or`` are recognised only where an operator may follow an operand and
then need a blank or ``(``.  An even run of ``not`` cancels out, as in
libsinsp, so ``not not a`` is the tree of ``a``.

Deliberate differences from libsinsp, all on inputs it rejects or garbles:
word operators accept any blank after them (libsinsp's note says it should);
lists written by name after a list operator (``x in mylist``)
are an error, because eventd substitutes lists textually before parsing;
operator modifiers (``startswith oneof (...)``) and transformers eventd does
not implement are rejected with a message naming them.

Nesting depth is counted in libsinsp's units (one per grammar rule entered)
and limited by ``max_depth``, 1000 for rules as in Falco.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from eventd.engine.ast import TRANSFORMERS, And, Check, FieldRef, MacroRef, Node, Not, Or
from eventd.engine.errors import ConditionSyntaxError

_BLANKS = " \t\n\r\f\v\b"
_BLANK_RUN = re.compile(r"[ \t\n\r\f\v\b]*")
_NOT_BLANK = re.compile(r"not[ \t\n\r\f\v\b]+")
# libsinsp writes these ``[a-zA-Z]+[a-zA-Z0-9_]*``; the same language spelled
# without the ambiguous split, which backtracks quadratically in Python's
# ``re`` on a long run of letters that is not followed by a dot.
_IDENTIFIER = re.compile(r"[a-zA-Z][a-zA-Z0-9_]*")
_FIELD_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9_]*(?:\.[a-zA-Z][a-zA-Z0-9_]*)+")
_ARG_BARE = re.compile(r"[^\[\]\"' \t\n\r\f\v\b]+")
_BARE = re.compile(r"[^()\"' \t\n\r\f\v\b=,]+")
_HEX_NUMBER = re.compile(r"0[xX][0-9a-zA-Z]+")
_NUMBER = re.compile(r"[+-]?[0-9]+\.?[0-9]*(?:[eE][+-][0-9]+)?")
_MODIFIER = re.compile(r"(oneof|anyof|allof)[ \t\n\r\f\v\b]*\(")

_NUM_OPS = ("<=", "<", ">=", ">")
_EQ_OPS = ("==", "=", "!=")
_WORD_OPS = (
    "glob",
    "iglob",
    "contains",
    "icontains",
    "bcontains",
    "startswith",
    "bstartswith",
    "endswith",
    "regex",
)
_LIST_OPS = ("intersects", "in", "pmatch")
_ALL_OP_NAMES = ", ".join(f"'{op}'" for op in ("exists", *_NUM_OPS, *_EQ_OPS, *_WORD_OPS, *_LIST_OPS))
#: Transformers of newer libsinsp that eventd does not implement.
_FOREIGN_TRANSFORMERS = frozenset({"join", "concat", "getopt"})
_TRANSFORMER_NAMES = ", ".join(sorted(TRANSFORMERS))

#: ``\x`` escapes inside quotes, as libsinsp's unescaping defines them.  A
#: backslash before a space yields a lone backslash: libsinsp keeps that for
#: an old, wrongly escaped upstream rule.  Escaping the *other* quote
#: character is an error there, and so here.
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", " ": "\\", "\\": "\\", "/": "/"}


def unescape(body: str, quote: str, offset: int = 0) -> str:
    """The text of a quoted string's ``body`` (quotes removed), as libsinsp's
    ``unescape_str`` (0.23) reads it: ``\\b \\f \\n \\r \\t \\\\ \\/``, the
    string's own quote, and backslash-space for a lone backslash; any other
    escape, or the *other* quote escaped, is an error with libsinsp's text.
    """
    if "\\" not in body:
        return body
    out: list[str] = []
    escaped = False
    for k, c in enumerate(body):
        if not escaped:
            if c == "\\":
                escaped = True
            else:
                out.append(c)
            continue
        escaped = False
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif c in "\"'":
            if c != quote:
                other = "'" if c == '"' else '"'
                raise ConditionSyntaxError(
                    f"invalid \\{c} escape in {other}-quoted string", offset=offset + k - 1
                )
            out.append(c)
        else:
            raise ConditionSyntaxError(f"unsupported string escape sequence: \\{c}", offset=offset + k - 1)
    return "".join(out)


def parse_condition(text: str, *, max_depth: int = 1000) -> Node:
    """Parse ``text`` into a tree; raise ``ConditionSyntaxError`` with the
    offset of the problem.  Identifiers without a dot become ``MacroRef``s,
    to be expanded by the caller."""
    parser = _Parser(text, max_depth)
    try:
        return parser.parse()
    except RecursionError:
        # The depth count keeps the parser well inside Python's stack; this
        # only happens when the caller is itself deep or max_depth is huge.
        raise ConditionSyntaxError(
            "condition is nested too deeply for the parser's stack", offset=parser.i
        ) from None


def parse_lhs(text: str) -> FieldRef | None:
    """``text`` as a left-hand side (a field, or transformers around one, with
    blanks allowed inside the parentheses), else ``None``.

    Falco validates an exception's ``fields`` entries this way
    (``is_valid_lhs_field``), so ``tolower( ka.user.name)`` is a field.
    """
    p = _Parser(text, 64)
    try:
        p._blank()
        if m := _FIELD_NAME.match(text, p.i):
            ref = p._field(m, 1)
        elif (
            (m := _IDENTIFIER.match(text, p.i))
            and m.group() in TRANSFORMERS
            and text.startswith("(", m.end())
        ):
            p.i = m.end() + 1
            ref = p._transformed(m.group(), 1)
        else:
            return None
        p._blank()
    except ConditionSyntaxError:
        return None
    return ref if p.i == p.n else None


class _Parser:
    """One parse of one text; ``i`` is the cursor.

    Every rule method takes ``depth``, the libsinsp-style nesting count of
    the rule being entered, and fails once it reaches ``max_depth``.
    """

    def __init__(self, text: str, max_depth: int) -> None:
        self.text = text
        self.n = len(text)
        self.i = 0
        self.max_depth = max_depth

    # -- driver ----------------------------------------------------------------

    def parse(self) -> Node:
        if not self.text:
            raise ConditionSyntaxError("condition is empty", offset=0)
        node = self._or(1)
        if self.i != self.n:
            raise ConditionSyntaxError(
                f"unexpected token after '{self._last_token()}', expecting 'or', 'and'", offset=self.i
            )
        return node

    def _last_token(self) -> str:
        """The token before the cursor, as libsinsp names it in its end-of-condition error."""
        end = self.i
        while end > 0 and self.text[end - 1] in _BLANKS:
            end -= 1
        start = end
        while start > 0 and self.text[start - 1] not in _BLANKS and self.text[start - 1] not in "()":
            start -= 1
        if start == end and end > 0:
            start = end - 1
        return self.text[start:end][-40:]

    # -- boolean structure ---------------------------------------------------------

    def _or(self, depth: int) -> Node:
        self._enter(depth)
        self._blank()
        start = self.i
        children = [self._and(depth + 1)]
        self._blank()
        while self.text.startswith("or", self.i):
            children.append(self._after_keyword("or", depth, self._and))
            self._blank()
        return children[0] if len(children) == 1 else Or(tuple(children), pos=start)

    def _and(self, depth: int) -> Node:
        self._enter(depth)
        self._blank()
        start = self.i
        children = [self._not(depth + 1)]
        self._blank()
        while self.text.startswith("and", self.i):
            children.append(self._after_keyword("and", depth, self._not))
            self._blank()
        return children[0] if len(children) == 1 else And(tuple(children), pos=start)

    def _after_keyword(self, keyword: str, depth: int, operand: Callable[[int], Node]) -> Node:
        """The operand after ``and``/``or``: a blank then an operand, or a
        parenthesised group glued to the keyword (``and(...)``)."""
        self.i += len(keyword)
        if self._blank():
            return operand(depth + 1)
        if self._peek("("):
            return self._group(depth + 1)
        raise self._expected(f"a blank or '(' after '{keyword}'")

    def _not(self, depth: int) -> Node:
        self._enter(depth)
        self._blank()
        start = self.i
        negate = False
        while m := _NOT_BLANK.match(self.text, self.i):
            negate = not negate
            self.i = m.end()
        if self.text.startswith("not(", self.i):
            negate = not negate
            self.i += 3
            child = self._group(depth + 1)
        elif self._peek("("):
            child = self._group(depth + 2)  # libsinsp enters its check rule first
        else:
            child = self._operand(depth + 1)
        return Not(child, pos=start) if negate else child

    def _group(self, depth: int) -> Node:
        """``( or-expr )`` with the cursor on the ``(``.  Not a frame of its
        own in the recursion: the depth it stands for is passed on."""
        opened = self.i
        self.i += 1
        child = self._or(depth + 1)
        self._blank()
        if not self._peek(")"):
            raise self._expected(f"')' to close the '(' at offset {opened}")
        self.i += 1
        return child

    # -- checks ------------------------------------------------------------------

    def _operand(self, depth: int) -> Node:
        """A comparison or a macro name (groups are handled by ``_not``)."""
        self._enter(depth)
        start = self.i
        if m := _FIELD_NAME.match(self.text, start):
            lhs = self._field(m, depth + 1)
            return self._comparison(lhs, start, depth + 1)
        if m := _IDENTIFIER.match(self.text, start):
            name = m.group()
            if self.text.startswith("(", m.end()):
                self._check_transformer(name, start, lhs=True)
                self.i = m.end() + 1
                lhs = self._transformed(name, depth + 1)
                return self._comparison(lhs, start, depth + 1)
            self.i = m.end()
            return MacroRef(name, pos=start)
        raise self._expected("a field comparison, a macro name, 'not' or '('")

    def _check_transformer(self, name: str, at: int, *, lhs: bool) -> None:
        if name in TRANSFORMERS:
            return
        if name == "val":
            if lhs:
                raise ConditionSyntaxError(
                    "'val(...)' may only appear on the right-hand side of a comparison", offset=at
                )
            return
        if name in _FOREIGN_TRANSFORMERS:
            raise ConditionSyntaxError(
                f"field transformer '{name}' is not supported by eventd (supported: {_TRANSFORMER_NAMES})",
                offset=at,
            )
        raise ConditionSyntaxError(
            f"unknown field transformer '{name}': expected one of {_TRANSFORMER_NAMES}", offset=at
        )

    def _field(self, m: re.Match[str], depth: int) -> FieldRef:
        """A field name matched by ``m`` and its optional ``[arg]``."""
        self._enter(depth)
        self.i = m.end()
        arg = None
        if self._peek("["):
            self.i += 1
            if self._peek('"') or self._peek("'"):
                arg = self._quoted()
            elif a := _ARG_BARE.match(self.text, self.i):
                arg = a.group()
                self.i = a.end()
            else:
                raise self._expected("a field argument (a quoted or bare string) after '['")
            if not self._peek("]"):
                raise self._expected("']' to close the field argument")
            self.i += 1
        return FieldRef(m.group(), arg)

    def _transformed(self, name: str, depth: int) -> FieldRef:
        """The inside of ``name(`` ... ``)``: a field or a nested transformer."""
        self._enter(depth)
        self._blank()
        at = self.i
        if m := _FIELD_NAME.match(self.text, at):
            inner = self._field(m, depth + 1)
        elif (m := _IDENTIFIER.match(self.text, at)) and self.text.startswith("(", m.end()):
            self._check_transformer(m.group(), at, lhs=True)
            self.i = m.end() + 1
            inner = self._transformed(m.group(), depth + 1)
        else:
            raise self._expected(f"a field or a nested transformer inside '{name}(...)'")
        self._blank()
        if not self._peek(")"):
            raise self._expected(f"')' to close '{name}('")
        self.i += 1
        return FieldRef(inner.name, inner.arg, (name, *inner.transformers))

    def _comparison(self, lhs: FieldRef, start: int, depth: int) -> Check:
        self._enter(depth)
        self._blank()
        text, at = self.text, self.i
        if text.startswith("exists", at):
            self.i += 6
            return Check(lhs, "exists", None, pos=start)
        for op in _NUM_OPS:
            if text.startswith(op, at):
                self.i += len(op)
                return Check(lhs, op, self._number(depth + 1), pos=start)
        for op in _EQ_OPS:
            if text.startswith(op, at):
                self.i += len(op)
                self._reject_modifier(op)
                return Check(lhs, "=" if op == "==" else op, self._string(depth + 1), pos=start)
        for op in _WORD_OPS:
            if text.startswith(op, at):
                self.i += len(op)
                if not self._blank():
                    raise self._expected(f"a blank after '{op}'")
                self._reject_modifier(op)
                return Check(lhs, op, self._string(depth + 1), pos=start)
        for op in _LIST_OPS:
            if text.startswith(op, at):
                self.i += len(op)
                self._reject_modifier(op)
                return Check(lhs, op, self._value_list(op, depth + 1), pos=start)
        raise self._expected(f"a comparison operator (one of {_ALL_OP_NAMES})")

    def _reject_modifier(self, op: str) -> None:
        """Newer libsinsp reads ``op oneof (a, b)`` (also ``anyof``,
        ``allof``) as one operator over a list; eventd does not, and says so
        instead of failing on the ``(``."""
        at = _BLANK_RUN.match(self.text, self.i).end()  # type: ignore[union-attr]  # `*`: always matches
        if m := _MODIFIER.match(self.text, at):
            raise ConditionSyntaxError(
                f"operator modifier '{m.group(1)}' ('{op} {m.group(1)} (...)') is not supported by eventd",
                offset=at,
            )

    # -- right-hand sides ------------------------------------------------------------

    def _number(self, depth: int) -> str | FieldRef:
        self._enter(depth)
        self._blank()
        if (field := self._rhs_field(depth + 1)) is not None:
            return field
        if m := _HEX_NUMBER.match(self.text, self.i) or _NUMBER.match(self.text, self.i):
            self.i = m.end()
            return m.group()
        raise self._expected("a number, 'val(<field>)' or a transformed field")

    def _string(self, depth: int) -> str | FieldRef:
        self._enter(depth)
        self._blank()
        if (field := self._rhs_field(depth + 1)) is not None:
            return field
        at = self.i
        value = self._plain_string()
        if value is None:
            raise self._expected("a string value, 'val(<field>)' or a transformed field")
        if self._peek("(") and _IDENTIFIER.fullmatch(self.text, at, self.i):
            # A bare ``foo(x.y)``: say what is wrong rather than "unexpected '('".
            self._check_transformer(value, at, lhs=False)
        return value

    def _plain_string(self) -> str | None:
        """A quoted or bare string at the cursor, or ``None``."""
        if self._peek('"') or self._peek("'"):
            return self._quoted()
        if m := _BARE.match(self.text, self.i):
            self.i = m.end()
            return m.group()
        return None

    def _value_list(self, op: str, depth: int) -> tuple[str, ...] | FieldRef:
        self._enter(depth)
        self._blank()
        at = self.i
        if self._peek("("):
            self.i += 1
            self._blank()
            items: list[str] = []
            if not self._peek(")"):
                items.append(self._list_item("a list item or ')'"))
                self._blank()
                while self._peek(","):
                    self.i += 1
                    self._blank()
                    items.append(self._list_item("a list item after ','"))
                    self._blank()
            if not self._peek(")"):
                raise self._expected(f"',' or ')' in the value list opened at offset {at}")
            self.i += 1
            return tuple(items)
        if (field := self._rhs_field(depth + 1)) is not None:
            return field
        if m := _IDENTIFIER.match(self.text, at):
            if self.text.startswith("(", m.end()):
                self._check_transformer(m.group(), at, lhs=False)
            raise ConditionSyntaxError(
                f"expected '(' after '{op}', found '{m.group()}': lists are substituted "
                "before parsing, so this name is not a defined list",
                offset=at,
            )
        raise self._expected(f"'(' and a list of values after '{op}'")

    def _list_item(self, expected: str) -> str:
        value = self._plain_string()
        if value is None:
            raise self._expected(expected)
        return value

    def _rhs_field(self, depth: int) -> FieldRef | None:
        """``val(field)`` or a transformed field at the cursor, else ``None``."""
        text, at = self.text, self.i
        if text.startswith("val(", at):
            self._enter(depth)
            self.i += 4
            self._blank()
            m = _FIELD_NAME.match(text, self.i)
            if m is None:
                raise self._expected("a field name inside 'val(...)'")
            field = self._field(m, depth + 1)
            self._blank()
            if not self._peek(")"):
                raise self._expected("')' to close 'val('")
            self.i += 1
            return field
        m = _IDENTIFIER.match(text, at)
        if m and m.group() in TRANSFORMERS and text.startswith("(", m.end()):
            self._enter(depth)
            self.i = m.end() + 1
            return self._transformed(m.group(), depth + 1)
        return None

    # -- lexical helpers ----------------------------------------------------------

    def _quoted(self) -> str:
        """A quoted string at the cursor, read as libsinsp's lexer reads it.

        The string ends at the first quote character *not preceded by a
        backslash*, whatever that backslash itself is, so ``"a\\\\" and x``
        does not end after ``a\\\\`` (libsinsp 0.23 ``parser::lex_quoted_str``);
        the body is then unescaped by ``unescape``.  A NUL ends the text
        there, as it ends libsinsp's C string.
        """
        text, start = self.text, self.i
        quote = text[start]
        prev = ""
        j = start + 1
        while j < self.n:
            c = text[j]
            if c == "\0":
                break
            if c == quote and prev != "\\":
                self.i = j + 1
                return unescape(text[start + 1 : j], quote, start + 1)
            prev = c
            j += 1
        raise ConditionSyntaxError(f"unterminated string: expected a closing {quote}", offset=start)

    def _blank(self) -> bool:
        end = _BLANK_RUN.match(self.text, self.i).end()  # type: ignore[union-attr]  # `*`: always matches
        moved = end != self.i
        self.i = end
        return moved

    def _peek(self, s: str) -> bool:
        return self.text.startswith(s, self.i)

    def _enter(self, depth: int) -> None:
        if depth >= self.max_depth:
            raise ConditionSyntaxError(
                f"condition is nested too deeply (limit {self.max_depth})", offset=self.i
            )

    def _expected(self, what: str) -> ConditionSyntaxError:
        return ConditionSyntaxError(f"expected {what}, found {self._found()}", offset=self.i)

    def _found(self) -> str:
        if self.i >= self.n:
            return "the end of the condition"
        c = self.text[self.i]
        if c in _BLANKS:
            return repr(c)
        m = _BARE.match(self.text, self.i)
        token = m.group()[:24] if m else c
        return f"'{token}'"
