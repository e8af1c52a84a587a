"""Operator predicates and the path-prefix trie, tested directly."""

from __future__ import annotations

import fnmatch
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from re2 import _re2

from eventd.engine.errors import RuleError
from eventd.engine.operators import (
    cached_predicate,
    compile_regex,
    make_predicate,
    parse_number,
    pmatch_predicate,
    set_predicate,
    text_of,
)
from eventd.engine.pathprefix import PathPrefixSet


def holds(op: str, rhs, value) -> bool:
    return make_predicate(op, rhs)(value)


# -- helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("0", 0),
        ("42", 42),
        ("-7", -7),
        ("+3", 3),
        ("007", 7),
        ("1.5", 1.5),
        ("2.", 2.0),
        ("1e3", 1000.0),
        ("1.5e+2", 150.0),
        ("2E-1", 0.2),
        ("0x1F", 31),
        ("0XfF", 255),
    ],
)
def test_parse_number_accepts_decimal_and_hex(text, number):
    assert parse_number(text) == number
    assert type(parse_number(text)) is type(number)


@pytest.mark.parametrize(
    "text", ["", "abc", "1_000", " 1", "1 ", "0x", "0xg", "nan", "inf", ".5", "1e", "--1"]
)
def test_parse_number_rejects_everything_else(text):
    assert parse_number(text) is None


def test_text_of_spells_booleans_as_json():
    assert [text_of(v) for v in ("x", True, False, 3, 1.5)] == ["x", "true", "false", "3", "1.5"]


# -- equality --------------------------------------------------------------------


def test_equality_on_strings_is_exact():
    assert holds("=", "admin", "admin")
    assert not holds("=", "admin", "Admin")
    assert not holds("=", "1", "01")  # strings never compare as numbers
    assert holds("!=", "admin", "root")
    assert not holds("!=", "admin", "admin")


def test_equality_on_numbers_is_numeric_when_rhs_is_a_number():
    assert holds("=", "5", 5)
    assert holds("=", "5.0", 5)
    assert holds("=", "0x10", 16)
    assert holds("=", "1.5", 1.5)
    assert holds("==", "05", 5)
    assert not holds("=", "6", 5)
    assert holds("!=", "6", 5)
    assert not holds("!=", "5.0", 5)
    # a non-numeric right-hand side falls back to text
    assert not holds("=", "five", 5)
    assert holds("!=", "five", 5)


def test_equality_on_booleans_uses_true_false():
    assert holds("=", "true", True)
    assert holds("=", "false", False)
    assert not holds("=", "1", True)  # a bool is not a number
    assert not holds("=", "True", True)
    assert holds("!=", "true", False)


# -- ordering --------------------------------------------------------------------


def test_ordering_is_numeric_for_numbers():
    assert holds("<", "10", 9)
    assert holds("<=", "9", 9)
    assert holds(">", "0x8", 9)
    assert holds(">=", "9.5", 10)
    assert not holds(">", "10", 9)


def test_ordering_is_lexicographic_for_strings_as_in_falco():
    assert holds("<", "9", "10")  # "10" < "9" as text
    assert not holds(">", "9", "10")
    assert holds(">=", "abc", "abd")
    assert holds("<=", "abc", "abc")


def test_ordering_falls_back_to_text_for_non_numeric_rhs_or_bools():
    assert holds("<", "b", 5)  # "5" < "b"
    assert holds(">", "f", True)  # "true" > "f"


# -- substrings and bytes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "rhs", "value", "expected"),
    [
        ("contains", "dmi", "admin", True),
        ("contains", "DMI", "admin", False),
        ("icontains", "DMI", "admin", True),
        ("icontains", "x", "admin", False),
        ("startswith", "ad", "admin", True),
        ("startswith", "Ad", "admin", False),
        ("endswith", "min", "admin", True),
        ("endswith", "adm", "admin", False),
        ("contains", "ru", True, True),  # typed values compare as their text
        ("startswith", "12", 123, True),
        ("endswith", "", "x", True),
        ("bcontains", "646d", "admin", True),
        ("bcontains", "4D", "aMb", True),
        ("bcontains", "6e6f", "admin", False),
        ("bstartswith", "6164", "admin", True),
        ("bstartswith", "646d", "admin", False),
        ("bcontains", "c3a9", "caf\u00e9", True),  # UTF-8 bytes of the value
    ],
)
def test_substring_operators(op, rhs, value, expected):
    assert holds(op, rhs, value) is expected


@pytest.mark.parametrize("rhs", ["6", "zz", "61 62", "0x61", "6g"])
@pytest.mark.parametrize("op", ["bcontains", "bstartswith"])
def test_byte_operators_reject_invalid_hex(op, rhs):
    with pytest.raises(RuleError, match="hex byte string"):
        make_predicate(op, rhs)


# -- globs and regexes --------------------------------------------------------------
# Globs follow glibc's fnmatch(3) as libsinsp calls it (sinsp_utils::glob_match,
# flags 0 or FNM_CASEFOLD); tests/test_glob.py holds the finer cases and the
# differential test against the C library.


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("*", "", True),
        ("*", "a/b/c", True),  # * crosses "/" (no FNM_PATHNAME)
        ("/etc/*", "/etc/passwd", True),
        ("/etc/*", "/etcx", False),
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("[ab]x", "bx", True),
        ("[ab]x", "cx", False),
        ("[!ab]x", "cx", True),
        ("[^ab]x", "ax", False),
        ("[a-c]", "b", True),
        ("[]]", "]", True),
        ("[!]]", "a", True),
        ("[", "[", True),  # unclosed bracket is literal
        ("a[", "a[", True),
        (r"\*", "*", True),
        (r"\*", "x", False),
        (r"[\]]", "]", True),  # a backslash escapes inside brackets too
        (r"[\]]", "\\", False),
        ("a\\", "a\\", False),  # a trailing lone backslash matches nothing
        ("[z-a]", "m", False),  # a reversed range is empty, not an error
        ("[[:digit:]]*", "7up", True),
        ("[[:digit:]]*", "up", False),
        ("[[:nope:]]", "a", False),  # an unknown class matches nothing
        ("a.c", "abc", False),  # regex characters are literal
        ("a+", "aa", False),
        ("abc", "xabcx", False),  # whole value
        ("ABC", "abc", False),
        ("*\n*", "a\nb", True),
    ],
)
def test_glob(pattern, value, expected):
    assert holds("glob", pattern, value) is expected


def test_iglob_ignores_case():
    assert holds("iglob", "ABC*", "abcdef")
    assert holds("iglob", "[A-C]x", "bX")
    assert not holds("glob", "ABC*", "abcdef")


def test_iglob_folds_ascii_only_as_in_the_c_locale():
    assert holds("iglob", "*NGINX*", "docker.io/library/nginx:1")
    assert not holds("iglob", "É", "é")


def test_glob_on_typed_values_uses_their_text():
    assert holds("glob", "1*", 12)
    assert holds("iglob", "T*", True)


@given(
    pattern=st.text(alphabet="ab*?[]!/", max_size=8),
    value=st.text(alphabet="ab/![]", max_size=8),
)
@settings(max_examples=300, deadline=None)
def test_glob_agrees_with_fnmatch_where_both_define_it(pattern, value):
    # Without backslashes, "^", "-" and classes Python's fnmatch and the C
    # library share their rules, so a plain translation is a reference.
    assert holds("glob", pattern, value) is fnmatch.fnmatchcase(value, pattern)


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("a.*", "abc", True),
        ("b", "abc", False),  # whole value, not a search (ANCHOR_BOTH)
        ("ab", "abc", False),
        ("abc$", "abc\n", False),  # no "$ before a trailing newline" loophole
        ("[0-9]+", "123", True),
        ("(get|list)", "list", True),
        ("(get|list)", "watch", False),
        ("1.", 12, True),
        ("[[:digit:]]+", "123", True),  # POSIX classes
        ("[[:alpha:]][[:alnum:]_-]*", "kube-proxy_1", True),
        ("[[:upper:]]+", "abc", False),
        ("[[:space:]]", "\t", True),
        ("a.c", "a\nc", False),  # "." does not match a newline
        ("a{2,3}", "aaa", True),
        ("(a+)+b", "a" * 5000, False),
        ("é.", "éx", True),  # UTF-8: "." is one character
    ],
)
def test_regex_matches_the_whole_value(pattern, value, expected):
    assert holds("regex", pattern, value) is expected


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("(", "missing )"),
        (r"\d+", "invalid escape sequence"),  # Perl classes are not POSIX syntax
        (r"\w", "invalid escape sequence"),
        (r"\bword", "invalid escape sequence"),
        ("(?i)admin", "repetition operator"),  # no Perl flags either
        ("a(?=b)", "repetition operator"),  # nor lookaround
        (r"(a)\1", "invalid escape sequence"),  # nor backreferences
        ("[[:foo:]]", "invalid character class range"),
        ("a{1001}", "invalid repetition size"),  # RE2's repeat limit
        ("[z-a]", "invalid character class range"),
    ],
)
def test_regexes_re2_refuses_are_compile_errors(pattern, reason):
    with pytest.raises(RuleError, match="invalid regular expression") as info:
        make_predicate("regex", pattern)
    assert reason in info.value.message
    assert "RE2, POSIX syntax" in info.value.message


def test_regex_operands_are_compiled_by_re2_once():
    compiled = compile_regex("[[:digit:]]+")
    assert isinstance(compiled, _re2.RE2)
    assert compiled.options().posix_syntax and compiled.options().longest_match


def test_regex_on_a_lone_surrogate_sees_a_replacement_character():
    # JSON may carry "\ud800"; libsinsp matches invalid UTF-8 as U+FFFD.
    assert holds("regex", "a.b", "a\ud800b")
    assert not holds("regex", "a..b", "a\ud800b")


@given(value=st.text(alphabet="ab1-_.:/\n", max_size=12))
@settings(max_examples=300, deadline=None)
def test_re2_agrees_with_python_re_on_shared_syntax(value):
    for pattern in ["[ab]+", "a.*b", "[0-9a-f]+", "(ab|a)*:?", "[^/]+/[^/]+", ".*"]:
        expected = re.fullmatch(pattern, value) is not None
        assert holds("regex", pattern, value) is expected, pattern


# -- sets and path prefixes -----------------------------------------------------------


def test_set_membership_is_consistent_with_equality():
    member = set_predicate(("a", "5", "0x10", "true", "1.5"))
    assert member("a")
    assert not member("A")
    assert member(5)
    assert member(16)
    assert member(1.5)
    assert member(True)
    assert not member(False)
    assert not member("16")  # strings stay strings
    assert not member(6)


def test_intersects_on_a_scalar_is_in():
    assert holds("intersects", ("a", "b"), "b")
    assert not holds("intersects", ("a", "b"), "c")


@pytest.mark.parametrize(
    ("entries", "value", "expected"),
    [
        (("/etc",), "/etc", True),
        (("/etc",), "/etc/passwd", True),
        (("/etc",), "/etcx", False),
        (("/etc",), "/et", False),
        (("/etc/",), "/etc/passwd", True),  # trailing "/" ignored
        (("/etc/",), "/etc", True),
        (("/",), "/anything", True),
        (("/",), "relative", True),  # "/" has no segment: it covers everything
        (("/etc",), "etc/passwd", True),  # empty segments are dropped, so is the leading "/"
        (("/etc",), "//etc///passwd", True),
        (("/opt/*",), "/opt/app/bin", True),  # glob segments (filter_op_pmatch.ut.cpp)
        (("/opt/*",), "/opt", False),
        (("/opt/*/bin",), "/opt/app/lib", False),
        (("/opt/a*",), "/opt/x/app", False),  # "*" stays within its segment
        (("myregistry.io",), "myregistry.io/x", True),
        (("myregistry.io",), "myregistry.io", True),
        (("myregistry.io",), "myregistry.io.evil.com/x", False),
        (("myregistry.io",), "myregistry.iox/x", False),
        (("docker.io/org",), "docker.io/org-evil/app", False),
        (("docker.io/org",), "docker.io/org/app", True),
        (("a/b", "a"), "a/c", True),
        (("a/b/c",), "a/b", False),
        ((), "a", False),
    ],
)
def test_pmatch_matches_on_segment_boundaries(entries, value, expected):
    assert PathPrefixSet(entries).contains_prefix_of(value) is expected
    if entries:
        assert pmatch_predicate(entries)(value) is expected


def test_path_prefix_set_counts_distinct_entries():
    assert len(PathPrefixSet(["/a", "/a/", "/b", "/a/c"])) == 3


def test_path_prefix_set_with_ten_thousand_entries():
    entries = [f"registry{i}.example.com/team{i % 7}" for i in range(10_000)]
    prefixes = PathPrefixSet(entries)
    assert prefixes.contains_prefix_of("registry9999.example.com/team3/app:1")
    assert not prefixes.contains_prefix_of("registry9999.example.com/team4/app:1")
    assert not prefixes.contains_prefix_of("registry10000.example.com/team0/app")


def _reference_pmatch(entries: list[str], value: str) -> bool:
    parts = [p for p in value.split("/") if p]
    for entry in entries:
        wanted = [p for p in entry.split("/") if p]
        if parts[: len(wanted)] == wanted:
            return True
    return False


@given(
    entries=st.lists(st.text(alphabet="ab/.", max_size=6), max_size=6),
    value=st.text(alphabet="ab/.", max_size=8),
)
@settings(max_examples=300, deadline=None)
def test_path_prefix_set_agrees_with_string_reference(entries, value):
    assert PathPrefixSet(entries).contains_prefix_of(value) is _reference_pmatch(entries, value)


def test_pmatch_on_typed_values_uses_their_text():
    assert holds("pmatch", ("1",), 1)


# -- dispatch -------------------------------------------------------------------------


def test_make_predicate_checks_the_shape_of_the_rhs():
    with pytest.raises(RuleError, match="single value"):
        make_predicate("=", ("a",))
    with pytest.raises(RuleError, match="list of values"):
        make_predicate("in", "a")


def test_cached_predicate_builds_each_predicate_once():
    assert cached_predicate("regex", "x+y") is cached_predicate("regex", "x+y")
    assert cached_predicate("in", ("a", "b"))("b")


def test_rule_constants_share_one_predicate_while_rules_hold_it() -> None:
    """Rules with the same list share its predicate (team rules repeat the
    trusted registries); once no rule holds it, it is gone, so reloads do
    not pile up old lists."""
    import gc

    from eventd.engine import operators
    from eventd.engine.loader import load_rules_text

    registries = tuple(f"registry-{i}.example.com" for i in range(2000))
    rule = """
- rule: R{n}
  desc: d
  condition: ka.verb = create and ka.req.pod.images.registry in ({items})
  output: o
  priority: INFO
  source: k8s_audit
"""
    text = "".join(rule.format(n=n, items=", ".join(registries)) for n in range(3))
    ruleset = load_rules_text([("shared.yaml", text)])
    assert [r.name for r in ruleset.rules] == ["R0", "R1", "R2"]
    assert ("in", registries, None) in operators._SHARED
    before = operators._SHARED[("in", registries, None)]
    assert operators.shared_predicate("in", registries) is before
    del ruleset, before
    gc.collect()
    assert ("in", registries, None) not in operators._SHARED


def test_normalised_constants_are_normalised_once_and_shared() -> None:
    """``pmatch`` on image names normalises every entry (``nginx`` is
    ``docker.io/library/nginx``); rules sharing a list share that work and
    its predicate, keyed by the list as written and the normaliser."""
    import gc

    from eventd import images
    from eventd.engine import operators
    from eventd.engine.loader import load_rules_text

    prefixes = ("nginx", "myregistry.io", "gcr.io/my-project")
    rule = """
- rule: P{n}
  desc: d
  condition: ka.verb = create and not ka.req.pod.images.name pmatch ({items})
  output: o
  priority: INFO
  source: k8s_audit
"""
    text = "".join(rule.format(n=n, items=", ".join(prefixes)) for n in range(2))
    ruleset = load_rules_text([("shared.yaml", text)])
    key = ("pmatch", prefixes, images.normalize_prefix)
    shared = operators._SHARED[key]
    assert operators.shared_predicate("pmatch", prefixes, images.normalize_prefix) is shared
    assert shared("docker.io/library/nginx") and not shared("docker.io/library/nginx-evil")
    assert ("pmatch", prefixes, None) not in operators._SHARED  # never built unnormalised
    del ruleset, shared
    gc.collect()
    assert key not in operators._SHARED
