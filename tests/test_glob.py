"""Globs and path prefixes as Falco matches them.

Falco's ``glob``/``iglob`` call ``fnmatch(3)`` (libsinsp ``sinsp_utils::glob_match``,
flags 0 or ``FNM_CASEFOLD``) and ``pmatch`` uses libsinsp's ``path_prefix_search``,
which splits paths at ``/`` (dropping empty segments) and matches entry segments
holding ``*``, ``?`` or ``[`` with the same ``fnmatch``.  The pmatch cases below
follow the situations of libsinsp's ``filter_op_pmatch.ut.cpp`` and
``prefix_search.ut.cpp`` (written here from scratch).  Where the C library is
glibc, eventd's matcher is compared with it directly on random patterns.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fnmatch
import platform
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from eventd.engine.glob import Glob, compile_glob
from eventd.engine.operators import make_predicate
from eventd.engine.pathprefix import PathPrefixSet

FNM_CASEFOLD = 1 << 4


def _libc_fnmatch():
    if platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    fn = libc.fnmatch
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


LIBC_FNMATCH = _libc_fnmatch()
needs_glibc = pytest.mark.skipif(LIBC_FNMATCH is None, reason="the C library is not glibc")


def libc_matches(pattern: str, value: str, fold: bool) -> bool:
    assert LIBC_FNMATCH is not None
    return LIBC_FNMATCH(pattern.encode(), value.encode(), FNM_CASEFOLD if fold else 0) == 0


# -- fnmatch semantics, case by case -------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("[!]-a]", "^", False),  # "]" first starts the range "]-a", which holds "^"; "!" negates
        ("[]-a]", "^", True),
        ("[a-]", "-", True),  # "-" last is a member
        ("[-a]", "-", True),
        ("[%--]", ",", True),  # "-" may end a range
        ("[a-c-e]", "d", False),  # after a range, "-e" is not another range
        ("[a-c-e]", "-", True),
        ("[[:alpha:]-z]", "-", True),  # a class cannot start a range
        ("[[:alpha]", ":", True),  # not a class name: "[", ":", "a", "l", ... are members
        ("[[:alpha:]", "a", False),  # never closed: the first "[" is literal...
        ("[[:alpha:]", "[a", True),  # ...and "[:alpha:]" is then a bracket expression
        ("[[:alpha:]", "[[:alpha:]", False),
        ("[a[:nope:]]", "a", True),  # members before an unknown class still match...
        ("[a[:nope:]]", "b", False),  # ...the rest does not
        ("[!a[:nope:]]", "b", False),  # and a negated one matches nothing
        ("[[=a=]b]", "b", True),  # equivalence class of one character
        ("[[.-.]]", "-", True),  # collating symbol of one character
        ("[[.ab.]]", "a", False),  # multi-character collating symbols are refused
        ("[a-", "[a-", False),  # a range cut short by the end refuses the pattern
        ("[ab", "[ab", True),  # an unclosed bracket is a literal "["
        ("[ab", "a", False),
        ("\\", "\\", False),
        ("\\a", "a", True),
    ],
)
def test_glob_follows_fnmatch(pattern: str, value: str, expected: bool) -> None:
    assert Glob(pattern)(value) is expected
    assert compile_glob(pattern)(value) is expected
    if LIBC_FNMATCH is not None:
        assert libc_matches(pattern, value, False) is expected


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("[A-Z]", "a", True),  # bounds and character are folded
        ("[A-z]", "_", False),  # folded to [a-z]: "_" (between Z and a) drops out
        ("[[:upper:]]", "a", False),  # classes test the character as written
        ("[[:upper:]]", "A", True),
        ("*.YAML", "values.yaml", True),
    ],
)
def test_iglob_follows_fnmatch_casefold(pattern: str, value: str, expected: bool) -> None:
    assert Glob(pattern, fold=True)(value) is expected
    if LIBC_FNMATCH is not None:
        assert libc_matches(pattern, value, True) is expected


_PATTERN_PARTS = [
    "a", "B", "z", "5", " ", "*", "?", "[", "]", "!", "^", "-", "\\", ":", "=", ".",
    "[:alpha:]", "[:upper:]", "[:digit:]", "[:nope:]", "[=a=]", "[=", "[.a.]", "[.ab.]",
    "[.", "[:", "a-z", "A-Z", "z-a",
]  # fmt: skip
_VALUE_CHARS = "aBzZ5 []!^-\\:=.A_"


@needs_glibc
@given(
    pattern=st.lists(st.sampled_from(_PATTERN_PARTS), max_size=7).map("".join),
    value=st.text(alphabet=_VALUE_CHARS, max_size=6),
    fold=st.booleans(),
)
@example(pattern="[[", value="[[", fold=False)
@example(pattern="[a-\\]]", value="]", fold=False)
@settings(max_examples=1500, deadline=None)
def test_glob_agrees_with_the_c_library(pattern: str, value: str, fold: bool) -> None:
    assert Glob(pattern, fold)(value) is libc_matches(pattern, value, fold)
    assert compile_glob(pattern, fold)(value) is libc_matches(pattern, value, fold)


@given(
    pattern=st.text(alphabet="ab*?[]!-", max_size=10),
    value=st.text(alphabet="ab-[]!", max_size=10),
)
@settings(max_examples=500, deadline=None)
def test_glob_agrees_with_a_backtracking_reference(pattern: str, value: str) -> None:
    # Python's fnmatch translates to a backtracking regex: fine on short
    # inputs, and it shares the C library's rules on this alphabet except
    # for "[!...-...]" ranges, which both read the same way too.
    if re.search(r"\[[!]?\]?[^]]*-", pattern):
        return  # fnmatch drops reversed ranges differently; covered by the C library test
    assert Glob(pattern)(value) is fnmatch.fnmatchcase(value, pattern)


@given(pattern=st.text(alphabet="ab*?[]!\\", max_size=12))
@settings(max_examples=300, deadline=None)
def test_every_piece_has_a_fixed_width(pattern: str) -> None:
    glob = Glob(pattern)
    assert len(glob.pieces) >= 1
    for piece in glob.pieces:
        regex = re.compile(piece.source, re.DOTALL)
        assert regex.groups == 0
        sample = "a" * piece.width
        # a fixed-width piece never matches a shorter or longer value
        assert regex.fullmatch(sample[:-1]) is None or piece.width == 0
        assert regex.fullmatch(sample + "a") is None


def test_glob_operator_compiles_each_pattern_once() -> None:
    predicate = make_predicate("glob", "*a*a*a*a*b")
    assert predicate("a" * 50_000) is False
    assert predicate("a" * 50_000 + "b") is True


# -- pmatch: path_prefix_search ------------------------------------------------------


def prefixes(*entries: str) -> PathPrefixSet:
    return PathPrefixSet(entries)


@pytest.mark.parametrize(
    ("entries", "value", "expected"),
    [
        # an open file /opt/dir/subdir/file.txt against various entry lists
        (("/opt/dir",), "/opt/dir/subdir/file.txt", True),
        (("/opt/dir/subdir",), "/opt/dir/subdir/file.txt", True),
        (("/opt/dir2",), "/opt/dir/subdir/file.txt", False),
        (("/opt/dir", "/opt/dir2"), "/opt/dir/subdir/file.txt", True),
        (("/opt/dir3", "/opt/dir2"), "/opt/dir/subdir/file.txt", False),
        (("/opt/*",), "/opt/dir/subdir/file.txt", True),
        (("/opt/*/subdir",), "/opt/dir/subdir/file.txt", True),
        (("/opt/di?/subdir",), "/opt/dir/subdir/file.txt", True),
        (("/opt/dii?/subdir",), "/opt/dir/subdir/file.txt", False),
        (("/opt/di[r]/subdir",), "/opt/dir/subdir/file.txt", True),
        (("/opt/di[!r]/subdir",), "/opt/dir/subdir/file.txt", False),
        (("/opt/di[t]/subdir",), "/opt/dir/subdir/file.txt", False),
        (("/opt/di/subdir",), "/opt/dir/subdir/file.txt", False),
        (("/opt/*/subdir2",), "/opt/dir/subdir/file.txt", False),
        (("/opt/*/*",), "/opt/dir/subdir/file.txt", True),
        (("/opt/*/*/subsubdir",), "/opt/dir/subdir/file.txt", False),
    ],
)
def test_pmatch_entries_are_globs_per_segment(entries, value, expected) -> None:
    assert prefixes(*entries).contains_prefix_of(value) is expected
    assert make_predicate("pmatch", entries)(value) is expected


def test_prefix_search_basics() -> None:
    tree = prefixes("/var/run", "/var/run/dmesg", "/etc/", "/lib", "/usr/lib", "/usr/local")
    assert tree.contains_prefix_of("/var/run/docker")
    assert tree.contains_prefix_of("/var/run")
    assert not tree.contains_prefix_of("/boot")
    assert not tree.contains_prefix_of("/var/lib/messages")
    assert not tree.contains_prefix_of("/var")  # shorter than every entry below it
    assert not tree.contains_prefix_of("/usr")


def test_prefix_search_with_glob_directories() -> None:
    tree = prefixes("/opt/*/subdir", "/opt2/*", "/opt3/*/subdir2/*")
    assert not tree.contains_prefix_of("/opt")
    assert tree.contains_prefix_of("/opt/dir/subdir")
    assert tree.contains_prefix_of("/opt/dir/subdir/file.txt")
    assert not tree.contains_prefix_of("/opt3/dir/subdir2")
    assert tree.contains_prefix_of("/opt3/dir/subdir2/file.txt")


def test_root_covers_everything() -> None:
    tree = prefixes("/")
    for value in ("/", "/one", "/one/two", "/one/two/three", "", "relative/path"):
        assert tree.contains_prefix_of(value)


def test_literal_and_glob_children_are_both_tried() -> None:
    # The literal child "app" leads nowhere for this value; the glob sibling does.
    tree = prefixes("/srv/app/conf", "/srv/*/logs")
    assert tree.contains_prefix_of("/srv/app/logs/x")
    assert tree.contains_prefix_of("/srv/app/conf")
    assert not tree.contains_prefix_of("/srv/app/data")


def test_segments_without_wildcards_compare_literally() -> None:
    assert prefixes("/a\\b").contains_prefix_of("/a\\b/c")
    assert prefixes("/a\\*").contains_prefix_of("/a*/c")  # escaped star: glob, literal "*"
    assert not prefixes("/a\\*").contains_prefix_of("/ab/c")


def test_registry_allow_lists_with_globs() -> None:
    allowed = prefixes("myregistry.io", "*.gcr.io/my-project", "docker.io/library")
    assert allowed.contains_prefix_of("eu.gcr.io/my-project/app:1")
    assert not allowed.contains_prefix_of("eu.gcr.io/my-project-evil/app:1")
    assert not allowed.contains_prefix_of("myregistry.io.evil.com/app")
    assert allowed.contains_prefix_of("myregistry.io/team/app@sha256:" + "0" * 64)


def _reference(entries: list[str], value: str) -> bool:
    parts = [p for p in value.split("/") if p]
    for entry in entries:
        wanted = [p for p in entry.split("/") if p]
        if len(parts) >= len(wanted) and all(
            fnmatch.fnmatchcase(part, want) if re.search(r"[*?\[]", want) else part == want
            for part, want in zip(parts, wanted, strict=False)
        ):
            return True
    return False


@given(
    entries=st.lists(st.text(alphabet="ab/*?", max_size=7), max_size=5),
    value=st.text(alphabet="ab/", max_size=9),
)
@settings(max_examples=500, deadline=None)
def test_path_prefix_set_agrees_with_a_segment_reference(entries: list[str], value: str) -> None:
    assert PathPrefixSet(entries).contains_prefix_of(value) is _reference(entries, value)


def test_many_glob_entries_stay_cheap_per_lookup() -> None:
    # Each trie node is visited at most once per lookup: 2000 glob entries
    # sharing no prefix cost one glob test each, not a combinatorial search.
    tree = PathPrefixSet(f"/data/team{i}-*/*/x{i}" for i in range(2000))
    assert tree.contains_prefix_of("/data/team1999-a/b/x1999/file")
    assert not tree.contains_prefix_of("/data/team1999-a/b/x1998/file")
