"""Textual list substitution and macro expansion, with Falco's visibility rules."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventd.engine.ast import And, Check, FieldRef, MacroRef, Node, Not
from eventd.engine.errors import RuleError
from eventd.engine.lists import ListDef, quote_item, resolve_lists, substitute_lists, substitute_one
from eventd.engine.loader import load_rules_text
from eventd.engine.macros import expand_macros
from eventd.engine.parser import parse_condition

# ----------------------------------------------------------------- quoting


@pytest.mark.parametrize(
    ("item", "quoted"),
    [
        ("plain", "plain"),
        ("two words", '"two words"'),
        ('"already quoted"', '"already quoted"'),
        ("'single quoted'", "'single quoted'"),
        ("", ""),
        ("tab\tonly", "tab\tonly"),  # only a space triggers quoting, as in Falco
    ],
)
def test_quote_item(item: str, quoted: str) -> None:
    assert quote_item(item) == quoted


# ----------------------------------------------------------------- substitution text


@pytest.mark.parametrize(
    ("cond", "items", "expected"),
    [
        ("x in (l)", ["a", "b"], "x in ( a, b )"),
        ("x in (l, c)", ["a"], "x in ( a , c)"),
        ("x=l", ["a"], "x= a "),  # right-hand side of '='
        ("x = l", ["a"], "x = a "),
        ('x contains "foo l bar"', ["a"], 'x contains "foo a bar"'),  # inside quotes, blanks around
        ('x = "l"', ["a"], 'x = "l"'),  # a quote is not a delimiter
        ("x in (ll, l2, l.x)", ["a"], "x in (ll, l2, l.x)"),  # not delimited
        ("l", ["a"], "a "),
        ("x in (l)", ["two words"], 'x in ( "two words" )'),
        ("x in (l)", [], "x in (  )"),  # empty list: an always-false check
        ("x in (a, l)", [], "x in (a  )"),  # ... and the comma on its left goes
        ("x in (l, a)", [], "x in (   a)"),  # ... or the one on its right
        ("l l", ["a"], "a l"),  # Falco resumes one character late after a match at 0
        ("x in (l) or y in (l)", ["a"], "x in ( a ) or y in ( a )"),
    ],
)
def test_substitute_one(cond: str, items: list[str], expected: str) -> None:
    out, used = substitute_one(cond, "l", items)
    assert out == expected
    assert used is (out != cond)


def test_substitute_lists_applies_every_list_in_order() -> None:
    lists = [("first", ("second",)), ("second", ("x", "y"))]
    out, used = substitute_lists("ka.verb in (first)", lists)
    assert parse_condition(out) == parse_condition("ka.verb in (x, y)")
    assert used == ["first", "second"]
    out, used = substitute_lists("ka.verb in (first)", list(reversed(lists)))
    assert parse_condition(out) == parse_condition("ka.verb in (second)") and used == ["first"]


_ITEM = st.text(alphabet="abcXYZ019-_./: ", min_size=1, max_size=12).filter(lambda s: s.strip(" ") != "")


@given(items=st.lists(_ITEM, min_size=1, max_size=6))
def test_substituted_list_parses_back_to_its_items(items: list[str]) -> None:
    out, used = substitute_one("ka.user.name in (mylist)", "mylist", items)
    assert used
    check = parse_condition(out)
    assert isinstance(check, Check) and check.value == tuple(items)


@given(st.text(alphabet="ab (),=x\n", max_size=30))
def test_absent_name_leaves_condition_untouched(cond: str) -> None:
    assert substitute_one(cond, "zz", ["a"]) == (cond, False)


# ----------------------------------------------------------------- nested lists


def test_resolve_lists_inlines_only_earlier_lists_one_level() -> None:
    lists = [
        ListDef("c", ("x",), 0, 0),
        ListDef("b", ("c", "y"), 1, 1),
        ListDef("a", ("b", "z", "later"), 2, 2),
        ListDef("later", ("w",), 3, 3),
    ]
    items, used = resolve_lists(lists)
    assert items["b"] == ("x", "y")
    assert items["a"] == ("c", "y", "z", "later")  # raw items of b; 'later' not visible
    assert used == {"b", "c"}


def test_redefined_list_sees_lists_defined_before_its_new_position() -> None:
    items, _ = resolve_lists([ListDef("a", ("b",), 0, 2), ListDef("b", ("x",), 1, 1)])
    assert items["a"] == ("x",)


def _rules(*parts: str):
    return load_rules_text([("r.yaml", "".join(textwrap.dedent(p) for p in parts))])


def rule_item(cond: str) -> str:
    return f"- rule: R\n  desc: d\n  condition: {cond}\n  output: o\n  priority: INFO\n  source: k8s_audit\n"


def test_conditions_see_lists_defined_later_and_nested_lists() -> None:
    rs = _rules(
        """
        - macro: m
          condition: ka.user.name in (admins)
        - list: base
          items: [root]
        - list: admins
          items: [base, "jane doe"]
        """,
        rule_item("m and ka.verb in (verbs)"),
        """
        - list: verbs
          items: []
        """,
    )
    assert rs.rules[0].condition == parse_condition('ka.user.name in (root, "jane doe") and ka.verb in ( )')


def test_three_level_nesting_leaves_deepest_name_as_text() -> None:
    """Falco inlines the *raw* items of an earlier list: one level only."""
    rs = _rules(
        """
        - list: lc
          items: [x]
        - list: lb
          items: [lc, y]
        - list: la
          items: [lb, z]
        """,
        rule_item("ka.user.name in (la)"),
    )
    assert rs.rules[0].condition == parse_condition("ka.user.name in (lc, y, z)")


def test_list_and_macro_sharing_a_name_list_wins() -> None:
    rs = _rules(
        """
        - list: users
          items: [a]
        - macro: users
          condition: ka.verb=get
        """,
        rule_item("ka.user.name in (users)"),
    )
    assert rs.rules[0].condition == parse_condition("ka.user.name in (a)")


# ----------------------------------------------------------------- macro expansion


def _check(n: int) -> Check:
    return Check(FieldRef("ka.verb"), "=", str(n))


def test_expand_macros_substitutes_subtrees_keeping_grouping() -> None:
    body = parse_condition("ka.verb=a or ka.verb=b")
    out, used = expand_macros(parse_condition("not m and ka.uri=x"), {"m": body}.get)
    assert out == parse_condition("not (ka.verb=a or ka.verb=b) and ka.uri=x")
    assert used == ["m"]


def test_expand_macros_is_recursive_and_shares_untouched_subtrees() -> None:
    inner = parse_condition("ka.verb=get")
    macros = {"outer": parse_condition("inner and ka.uri=/x"), "inner": inner}
    root = parse_condition("(ka.user.name=a and ka.uri=/y) or outer")
    out, used = expand_macros(root, macros.get)
    assert out == parse_condition("(ka.user.name=a and ka.uri=/y) or (ka.verb=get and ka.uri=/x)")
    assert out.children[0] is root.children[0]  # type: ignore[union-attr]
    assert used == ["outer", "inner"]
    same, _ = expand_macros(root.children[0], macros.get)  # type: ignore[union-attr]
    assert same is root.children[0]  # type: ignore[union-attr]


def test_expand_macros_errors_prefer_loops_and_carry_offsets() -> None:
    with pytest.raises(RuleError, match=r"Undefined macro 'nope' used in filter\.") as info:
        expand_macros(parse_condition("ka.verb=x and nope"), {}.get)
    assert info.value.offset == 14
    loop = {"a": MacroRef("b"), "b": MacroRef("a")}
    with pytest.raises(RuleError, match="reference loop in macro 'a'"):
        expand_macros(And((MacroRef("unknown"), MacroRef("a"))), loop.get)


def test_expand_macros_handles_deep_trees() -> None:
    node: Node = MacroRef("m")
    for _ in range(5000):
        node = Not(node)
    out, _ = expand_macros(node, {"m": _check(1)}.get)
    depth = 0
    while isinstance(out, Not):
        out, depth = out.child, depth + 1
    assert (depth, out) == (5000, _check(1))


def test_macro_visibility_follows_redefinition_and_append() -> None:
    rs = _rules(
        """
        - macro: a
          condition: ka.verb=get
        - macro: b
          condition: ka.verb=list
        - macro: a
          condition: b
        - macro: m
          condition: ka.verb=get
        - macro: n
          condition: ka.verb=patch
        - macro: m
          condition: or n
          override:
            condition: append
        """,
        rule_item("a and m"),
    )
    assert rs.rules[0].condition == parse_condition("ka.verb=list and (ka.verb=get or ka.verb=patch)")


def test_unexpanded_nested_body_is_resolved_with_the_outer_visibility() -> None:
    """Macros are expanded in index order, each replaced by its expansion.  A
    body met before its own turn (``b`` inside ``a``) is expanded with what the
    *outer* macro can see, so ``c`` is undefined there, as in Falco."""
    with pytest.raises(RuleError, match="Undefined macro 'c'") as info:
        _rules(
            """
            - macro: a
              condition: ka.verb=get
            - macro: b
              condition: ka.verb=list
            - macro: a
              condition: b
            - macro: c
              condition: ka.verb=watch
            - macro: b
              condition: or c
              override:
                condition: append
            """
        )
    assert (info.value.item, info.value.line) == ("macro 'a'", 7)


def test_rules_see_every_macro_whatever_its_position() -> None:
    rs = _rules(
        """
        """,
        rule_item("late"),
        """
        - macro: late
          condition: ka.verb=get
        """,
    )
    assert rs.rules[0].condition == parse_condition("ka.verb=get")


def test_macro_cannot_see_later_macro_even_if_a_rule_uses_both() -> None:
    with pytest.raises(RuleError, match="Undefined macro 'b'") as info:
        _rules(
            """
            - macro: a
              condition: b
            - macro: b
              condition: ka.verb=get
            """
        )
    assert (info.value.item, info.value.line) == ("macro 'a'", 3)
