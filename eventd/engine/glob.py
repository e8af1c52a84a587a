"""Shell globs as Falco matches them, in time linear in the value.

Falco's ``glob`` and ``iglob`` hand the pattern to the C library's
``fnmatch(3)`` without flags (``iglob`` adds ``FNM_CASEFOLD``), and
``pmatch`` does the same for each path segment of an entry that holds a
wildcard.  The facts of that matcher (glibc, C locale) that eventd follows:

* ``*`` matches any run of characters, ``/`` and a leading ``.`` included;
  ``?`` matches any one character.
* A backslash makes the next character literal, outside and inside a bracket
  expression; a pattern ending in a lone backslash matches nothing.
* ``[...]`` is a bracket expression, negated by a leading ``!`` or ``^``; a
  ``]`` right after the opening (or the negation) is a member.  Members are
  characters, ranges ``a-z`` (by code, so a reversed range is empty),
  classes ``[:alpha:]`` (ASCII, as in the C locale), and the one-character
  forms ``[=c=]`` and ``[.c.]``.  A ``[`` whose expression never closes is a
  literal ``[``.  An unknown class name, a multi-character ``[.xy.]`` or a
  pattern ending inside a member stops the expression: it then matches only
  what the members before that point matched, and never when negated.
* Case folding is ASCII only; classes test the character as written.

Falco (and the C library) match such patterns by backtracking, which costs
up to O(n^k) for ``k`` stars.  Here every pattern is cut at its stars into
fixed-width pieces (each token consumes exactly one character), and the
pieces are placed greedily: the first at the start, the last at the end,
each middle one at its leftmost fit after the previous one.  Leftmost is
always safe because a star absorbs whatever lies between two pieces, so the
whole match costs at most one scan of the value per piece: O(n * m).
Values are Python strings, so ``?`` and bracket expressions consume one code
point where Falco, in the C locale, consumes one byte; for ASCII values
(image names, paths, verbs) the two agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import pairwise
from typing import Final, TypeAlias

from msgspec import Struct
from msgspec.structs import replace

#: A character set as sorted, disjoint, inclusive code-point intervals.
Chars: TypeAlias = tuple[tuple[int, int], ...]
#: A pattern token: ``STAR`` or the set of characters one position accepts.
Token: TypeAlias = Chars | None

STAR: Final = None  # Final: a constant None, so ``token is STAR`` narrows a Token
_MAX = 0x10FFFF
ANY: Chars = ((0, _MAX),)
NOTHING: Chars = ()
_LBRACKET = ord("[")

#: The C locale's character classes, which only hold ASCII characters.
_CLASSES: dict[str, Callable[[int], bool]] = {
    "alnum": lambda c: chr(c).isalnum(),
    "alpha": lambda c: chr(c).isalpha(),
    "blank": lambda c: c in (9, 32),
    "cntrl": lambda c: c < 32 or c == 127,
    "digit": lambda c: 48 <= c <= 57,
    "graph": lambda c: 33 <= c <= 126,
    "lower": lambda c: 97 <= c <= 122,
    "print": lambda c: 32 <= c <= 126,
    "punct": lambda c: 33 <= c <= 126 and not chr(c).isalnum(),
    "space": lambda c: 9 <= c <= 13 or c == 32,
    "upper": lambda c: 65 <= c <= 90,
    "xdigit": lambda c: chr(c) in "0123456789abcdefABCDEF",
}
#: Class names longer than this make the C library give up on the pattern.
_CLASS_NAME_MAX = 256


def _fold(c: int) -> int:
    """ASCII lower case, as ``tolower`` in the C locale."""
    return c + 32 if 65 <= c <= 90 else c


# -- bracket expressions ----------------------------------------------------------


class _Member(Struct, frozen=True):
    """One member of a bracket expression: a class, or a code range.

    ``fold_subject``: under ``iglob`` the tested character is case-folded
    first (plain characters and ranges); ``[=c=]`` and ``[.c.]`` compare it
    as written, and so do classes.  ``skip_fails`` records that the C
    library, after this member matched, gives up on a malformed ``[=``
    further on while looking for the closing ``]``.
    """

    lo: int = 0
    hi: int = -1
    fold_subject: bool = False
    klass: Callable[[int], bool] | None = None
    skip_fails: bool = False

    def matches(self, c: int, fold: bool) -> bool:
        if self.klass is not None:
            return c < 128 and self.klass(c)
        if self.fold_subject and fold:
            c = _fold(c)
        return self.lo <= c <= self.hi


#: What reading one member yields: the members, the index after them, and
#: whether the C library refuses the pattern at this point.
_Read: TypeAlias = tuple[list[_Member], int, bool]


class _Bracket(Struct):
    """A parsed bracket expression and where the pattern goes on after it."""

    negate: bool
    members: list[_Member]
    end: int | None  # index after the closing "]"; None if it never closes
    refused: bool  # reading stopped at a member the C library refuses


class _BracketParser:
    """Reads bracket expressions of one pattern the way the C library does."""

    def __init__(self, pattern: str, fold: bool) -> None:
        self.p = pattern
        self.fold = fold
        self._skips: dict[int, str] = {}

    def at(self, i: int) -> str:
        return self.p[i] if i < len(self.p) else ""

    def parse(self, start: int) -> _Bracket:
        """Parse the expression whose ``[`` sits just before ``start``."""
        i = start
        negate = self.at(i) in ("!", "^")
        i += negate
        members: list[_Member] = []
        first = True
        while True:
            c = self.at(i)
            if not c:
                return _Bracket(negate, members, None, False)
            if c == "]" and not first:
                return _Bracket(negate, members, i + 1, False)
            first = False
            read, after, refused = self._member(i)
            members += [replace(m, skip_fails=self.skip_from(after) == "fail") for m in read]
            if refused:
                end = self.skip_from(i)
                return _Bracket(negate, members, int(end[6:]) if end.startswith("close:") else None, True)
            i = after

    def _member(self, i: int) -> _Read:
        c, nxt = self.p[i], self.at(i + 1)
        if c == "\\":
            return self._start(ord(nxt), True, i + 2) if nxt else ([], i, True)
        if c == "[" and nxt == ":":
            return self._class(i)
        if c == "[" and nxt == "=":
            if self.at(i + 2) and self.at(i + 3) == "=" and self.at(i + 4) == "]":
                code = ord(self.p[i + 2])
                return [_Member(code, code)], i + 5, False
            return self._start(_LBRACKET, True, i + 1)
        if c == "[" and nxt == ".":
            name, after = self._collating(i)
            if name is None or len(name) != 1:
                return [], i, True
            return self._start(ord(name), False, after)
        return self._start(ord(c), True, i + 1)

    def _class(self, i: int) -> _Read:
        j = i + 2
        while True:
            if j - (i + 2) >= _CLASS_NAME_MAX:
                return [], i, True
            c = self.at(j)
            if c == ":" and self.at(j + 1) == "]":
                klass = _CLASSES.get(self.p[i + 2 : j])
                return ([], i, True) if klass is None else ([_Member(klass=klass)], j + 2, False)
            if not ("a" <= c < "z"):  # not a class name: "[" is an ordinary member
                return self._start(_LBRACKET, True, i + 1)
            j += 1

    def _collating(self, i: int) -> tuple[str | None, int]:
        """The name of ``[.name.]`` at ``i`` and the index after it."""
        k = self.p.find(".]", i + 2)
        return (None, i) if k < 0 else (self.p[i + 2 : k], k + 2)

    def _start(self, lo: int, plain: bool, i: int) -> _Read:
        """Members starting with character ``lo`` (``i`` is just after it).

        ``-x`` after it makes a range unless ``x`` is ``]``.  A plain start
        followed by a range is not a member on its own; a ``[.c.]`` start is
        not one as soon as any ``-`` follows, even ``-]`` (it is then lost).
        """
        if plain and self.fold:
            lo = _fold(lo)
        dash, after_dash = self.at(i) == "-", self.at(i + 1)
        ranged = dash and (after_dash not in ("", "]") if plain else after_dash != "")
        members = [] if ranged else [_Member(lo, lo, fold_subject=plain)]
        if not dash or after_dash == "]":
            return members, i, False
        hi, after = self._range_end(i + 1)
        if hi is None:
            return members, i, True
        return [*members, _Member(lo, hi, fold_subject=True)], after, False

    def _range_end(self, j: int) -> tuple[int | None, int]:
        c = self.at(j)
        if c == "[" and self.at(j + 1) == ".":
            name, after = self._collating(j)
            return (ord(name), after) if name is not None and len(name) == 1 else (None, j)
        if c == "\\":
            j += 1
            c = self.at(j)
        if not c:
            return None, j
        return (_fold(ord(c)) if self.fold else ord(c)), j + 1

    # After a member matched, the C library only looks for the closing "]",
    # with a simpler scan that refuses a malformed "[=" on the way.

    def _skip_step(self, i: int) -> int | str:
        """One step of that scan: the next index, or ``close:<i>``, ``end``, ``fail``."""
        c, nxt = self.at(i), self.at(i + 1)
        if not c:
            return "end"
        if c == "]":
            return f"close:{i + 1}"
        if c == "\\":
            return i + 2 if nxt else "fail"
        if c == "[" and nxt == ":":
            k = i + 2
            while "a" <= self.at(k) < "z":
                k += 1
            return k + 2 if self.at(k) == ":" and self.at(k + 1) == "]" else i + 1
        if c == "[" and nxt == "=":
            ok = self.at(i + 2) and self.at(i + 3) == "=" and self.at(i + 4) == "]"
            return i + 5 if ok else "fail"
        if c == "[" and nxt == ".":
            k = self.p.find(".]", i + 2)
            return k + 2 if k >= 0 else "fail"
        return i + 1

    def skip_from(self, i: int) -> str:
        """Where that scan ends when started at ``i`` (memoised: linear overall)."""
        path: list[int] = []
        step: int | str = i
        while isinstance(step, int):
            if step in self._skips:
                step = self._skips[step]
                break
            path.append(step)
            step = self._skip_step(step)
        for visited in path:
            self._skips[visited] = step
        return step


def bracket_token(pattern: str, start: int, fold: bool) -> tuple[Chars, int]:
    """The token for the ``[`` just before ``start`` and the index after it."""
    parsed = _BracketParser(pattern, fold).parse(start)

    def outcome(c: int) -> str:
        """``"yes"``, ``"no"`` or ``"bracket"`` (the "[" is read as a literal)."""
        for member in parsed.members:
            if member.matches(c, fold):
                if member.skip_fails:
                    return "no"
                if parsed.end is None:
                    return "bracket"
                return "no" if parsed.negate else "yes"
        if parsed.refused:
            return "no"
        if parsed.end is None:
            return "bracket"
        return "yes" if parsed.negate else "no"

    if parsed.end is None:
        # Never closed: the "[" is an ordinary character and the pattern
        # goes on right after it.
        return (((_LBRACKET, _LBRACKET),) if outcome(_LBRACKET) == "bracket" else NOTHING), start
    return _chars_where(lambda c: outcome(c) == "yes", parsed.members), parsed.end


def _chars_where(accepts: Callable[[int], bool], members: list[_Member]) -> Chars:
    """The code points ``accepts`` holds for, as intervals.

    ASCII is tested one by one (classes and case folding live there); above
    it every member is a plain interval, so ``accepts`` is constant between
    consecutive member bounds and one test per stretch suffices.
    """
    cuts = {128, _MAX + 1}
    for m in members:
        if m.klass is None:
            cuts.update(b for b in (m.lo, m.hi + 1) if 128 < b <= _MAX)
    spans: list[tuple[int, int]] = [(c, c) for c in range(128) if accepts(c)]
    bounds = sorted(cuts)
    spans += [(a, b - 1) for a, b in pairwise(bounds) if accepts(a)]
    return _merge(spans)


def _merge(spans: list[tuple[int, int]]) -> Chars:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return tuple(merged)


# -- tokens and pieces ------------------------------------------------------------------


def _literal(ch: str, fold: bool) -> Chars:
    code = ord(ch)
    if fold and ch.isascii() and ch.isalpha():
        low = _fold(code)
        return ((low - 32, low - 32), (low, low))
    return ((code, code),)


def tokenize(pattern: str, fold: bool = False) -> list[Token] | None:
    """The tokens of ``pattern``; ``None`` if it can match nothing at all."""
    tokens: list[Token] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if not tokens or tokens[-1] is not STAR:
                tokens.append(STAR)
        elif c == "?":
            tokens.append(ANY)
        elif c == "\\":
            if i == n:
                return None  # a trailing backslash matches nothing
            tokens.append(_literal(pattern[i], fold))
            i += 1
        elif c == "[":
            token, i = bracket_token(pattern, i, fold)
            tokens.append(token)
        else:
            tokens.append(_literal(c, fold))
    return tokens


def _class_text(chars: Chars) -> str:
    """``chars`` as one regex position (fixed width 1)."""
    if len(chars) == 1 and chars[0][0] == chars[0][1]:
        return re.escape(chr(chars[0][0]))
    if not chars:
        return r"[^\x00-\U0010ffff]"
    body = "".join(f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in chars)
    return f"[{body}]"


class Piece(Struct, frozen=True):
    """Tokens between two stars: always exactly ``width`` characters long.

    ``source`` is a regular expression of that fixed width, without
    repetition or alternation; ``literal`` is the plain text when every
    position is a single character (then ``str`` methods can do the work).
    """

    width: int
    source: str
    literal: str | None

    @classmethod
    def of(cls, tokens: list[Chars]) -> Piece:
        source = "".join(map(_class_text, tokens))
        if all(len(t) == 1 and t[0][0] == t[0][1] for t in tokens):
            return cls(len(tokens), source, "".join(chr(t[0][0]) for t in tokens))
        return cls(len(tokens), source, None)


def plan_source(pieces: tuple[Piece, ...]) -> str:
    """One regular expression placing ``pieces`` greedily (see the module docstring).

    The first piece is anchored at the start; each middle one sits in an
    atomic group ``(?>.*?piece)``: its leftmost fit, never revisited; the
    last follows a plain ``.*`` and must end the value (``fullmatch``).  No
    repeat is nested and none is retried once passed, so a match costs
    O(n * m) steps whatever the pattern and the value.
    """
    if len(pieces) == 1:
        return pieces[0].source
    middle = "".join(f"(?>.*?{p.source})" for p in pieces[1:-1])
    return f"{pieces[0].source}{middle}.*{pieces[-1].source}"


class Glob:
    """A compiled glob: ``Glob(p)(value)`` is ``fnmatch(p, value, 0) == 0``.

    ``pieces`` are the fixed-width runs between stars (one run when there is
    no star); ``regex`` places them (``None`` for a pattern that matches
    nothing, such as one ending in a lone backslash).
    """

    __slots__ = ("fold", "pattern", "pieces", "regex")

    def __init__(self, pattern: str, fold: bool = False) -> None:
        self.pattern = pattern
        self.fold = fold
        tokens = tokenize(pattern, fold)
        runs: list[list[Chars]] = [[]]
        for token in tokens or ():
            if token is STAR:
                runs.append([])
            else:
                runs[-1].append(token)
        self.pieces = tuple(Piece.of(run) for run in runs)
        self.regex = None if tokens is None else re.compile(plan_source(self.pieces), re.DOTALL)

    @property
    def starred(self) -> bool:
        return len(self.pieces) > 1

    def __call__(self, text: str) -> bool:
        return self.regex is not None and self.regex.fullmatch(text) is not None


def compile_glob(pattern: str, fold: bool = False) -> Callable[[str], bool]:
    """A predicate over strings for ``pattern``, compiled once.

    Plain text, ``prefix*``, ``*suffix`` and ``*text*`` become one string
    operation; every other pattern runs its ``Glob.regex``.
    """
    glob = Glob(pattern, fold)
    if glob.regex is None:
        return lambda text: False
    pieces = [p.literal for p in glob.pieces]
    literals = [lit for lit in pieces if lit is not None]
    if len(literals) == len(pieces):  # every piece is plain text
        if len(literals) == 1:
            exact = literals[0]
            return lambda text: text == exact
        if len(literals) == 2 and not literals[1]:
            head = literals[0]
            return lambda text: text.startswith(head)
        if len(literals) == 2 and not literals[0]:
            tail = literals[1]
            return lambda text: text.endswith(tail)
        if len(literals) == 3 and not literals[0] and not literals[2]:
            middle = literals[1]
            return lambda text: middle in text
    fullmatch = glob.regex.fullmatch
    return lambda text: fullmatch(text) is not None
