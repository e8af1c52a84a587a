"""The condition compiler, over a small field set of our own."""

from __future__ import annotations

import fnmatch
import operator
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventd.engine.ast import And, Check, FieldRef, MacroRef, Node, Not, Or
from eventd.engine.compiler import compile_check, compile_condition
from eventd.engine.errors import FieldError, RuleError
from eventd.engine.fields.base import ArgKind, FieldDef, FieldSet
from eventd.engine.parser import parse_condition
from eventd.events.model import Event

#: Extractor calls, in order, so tests can see evaluation order.
CALLS: list[str] = []


def _scalar(key: str):
    def extract(ev: Event, arg: Any):
        CALLS.append(key)
        return ev.doc.get(key)

    return extract


def _list(key: str):
    def extract(ev: Event, arg: Any):
        CALLS.append(key)
        values = ev.doc.get(key)
        if not values:
            return None
        if arg is not None:
            return (values[arg],) if arg < len(values) else None
        return tuple(values)

    return extract


def _keyed(ev: Event, arg: Any):
    return ev.doc.get("m", {}).get(arg)


def _image(name: str) -> str:
    if not name:
        raise ValueError("empty image name")
    return name if "/" in name else f"docker.io/library/{name}"


FIELDS = FieldSet(
    "test",
    [
        FieldDef("t.s", "a string", _scalar("s")),
        FieldDef("t.s2", "another string", _scalar("s2")),
        FieldDef("t.n", "a JSON-typed scalar", _scalar("n")),
        FieldDef("t.l", "a list", _list("l"), is_list=True, arg=ArgKind.INDEX),
        FieldDef("t.l2", "another list", _list("l2"), is_list=True),
        FieldDef("t.k", "keyed", _keyed, arg=ArgKind.KEY),
        FieldDef("t.img", "image name", _scalar("img"), rhs_normalizer=_image),
        FieldDef("t.imgs", "image names", _list("imgs"), is_list=True, rhs_normalizer=_image),
    ],
)


def compiled(text: str):
    return compile_condition(parse_condition(text), FIELDS)


def run(text: str, **doc: Any) -> bool:
    return compiled(text)(Event("test", doc))


# -- every operator on str / int / bool / missing -----------------------------------------


@pytest.mark.parametrize(
    ("condition", "value", "expected"),
    [
        ("t.s = admin", "admin", True),
        ("t.s = admin", "root", False),
        ("t.s == admin", "admin", True),
        ("t.s != admin", "root", True),
        ("t.s != admin", "admin", False),
        ("t.s < 2", "10", True),  # strings order as text, as in Falco
        ("t.s <= 10", "10", True),
        ("t.s > 9", "10", False),  # strings order as text, as in Falco
        ("t.s >= 10", "9", True),
        ("t.s contains dmi", "admin", True),
        ("t.s icontains DMI", "admin", True),
        ("t.s startswith adm", "admin", True),
        ("t.s endswith min", "admin", True),
        ("t.s glob 'a*n'", "admin", True),
        ("t.s iglob 'A*N'", "admin", True),
        ("t.s regex 'ad.*'", "admin", True),
        ("t.s regex 'dm'", "admin", False),
        ("t.s in (root, admin)", "admin", True),
        ("t.s in (root)", "admin", False),
        ("t.s intersects (admin)", "admin", True),
        ("t.s pmatch (/etc)", "/etc/passwd", True),
        ("t.s pmatch (/etc)", "/etcx", False),
        ("t.s exists", "", True),
    ],
)
def test_operators_on_strings(condition, value, expected):
    assert run(condition, s=value) is expected


@pytest.mark.parametrize(
    ("condition", "value", "expected"),
    [
        ("t.n = 5", 5, True),
        ("t.n = 5.0", 5, True),
        ("t.n = 0x5", 5, True),
        ("t.n != 5", 5, False),
        ("t.n < 10", 9, True),  # numbers order numerically
        ("t.n > 10", 9, False),
        ("t.n >= 1.5", 1.5, True),
        ("t.n contains 2", 123, True),
        ("t.n startswith 12", 123, True),
        ("t.n in (1, 2, 3)", 2, True),
        ("t.n in (1, 3)", 2, False),
        ("t.n pmatch (1)", 1, True),
        ("t.n = true", True, True),
        ("t.n = false", True, False),
        ("t.n != true", False, True),
        ("t.n in (true)", True, True),
        ("t.n = 1", True, False),  # a bool is not a number
        ("t.n contains ru", True, True),
        ("t.n exists", False, True),
        ("t.n exists", 0, True),
    ],
)
def test_operators_on_typed_values(condition, value, expected):
    assert run(condition, n=value) is expected


ALL_CHECKS = [
    "t.s = a",
    "t.s != a",
    "t.s < 1",
    "t.s <= 1",
    "t.s > 1",
    "t.s >= 1",
    "t.s contains a",
    "t.s icontains a",
    "t.s startswith a",
    "t.s endswith a",
    "t.s glob '*'",
    "t.s iglob '*'",
    "t.s regex '.*'",
    "t.s in (a)",
    "t.s intersects (a)",
    "t.s pmatch (/)",
    "t.l in (a)",
    "t.l intersects (a)",
    "t.l pmatch (a)",
    "t.s = val(t.s2)",
    "t.s in val(t.s2)",
    "t.l in val(t.l2)",
]


@pytest.mark.parametrize("condition", ALL_CHECKS)
def test_a_missing_value_makes_every_operator_false(condition):
    present = {"s2": "a", "l2": ["a"]}
    assert run(condition, **present) is False
    assert run(f"not {condition}", **present) is True  # so "not" is true, as in Falco


@pytest.mark.parametrize("condition", ["t.s exists", "t.l exists", "t.k[x] exists"])
def test_exists_is_true_only_when_a_value_was_extracted(condition):
    assert run(condition) is False
    assert run(condition, s="", l=["a"], m={"x": "1"}) is True


def test_val_with_a_missing_right_hand_side_is_false():
    assert run("t.s = val(t.s2)", s="a") is False
    assert run("t.s != val(t.s2)", s="a") is False
    assert run("t.s = val(t.s2)", s="a", s2="a") is True
    assert run("t.s != val(t.s2)", s="a", s2="b") is True


# -- list fields ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "values", "expected"),
    [
        ("t.l in (a, b)", ["a", "b", "a"], True),  # in = every value
        ("t.l in (a, b)", ["a", "c"], False),
        ("t.l intersects (a, b)", ["c", "b"], True),  # intersects = at least one
        ("t.l intersects (a, b)", ["c", "d"], False),
        ("t.l exists", ["x"], True),
        ("t.l pmatch (reg.io, /opt)", ["reg.io/a", "/opt/b"], True),  # eventd: every value
        ("t.l pmatch (reg.io)", ["reg.io/a", "reg.io.evil/b"], False),
        ("t.l[1] in (b)", ["a", "b"], True),  # an index keeps the field a list
        ("t.l[5] exists", ["a", "b"], False),
        ("not t.l in (trusted)", ["trusted", "evil"], True),
        ("len(t.l) > 2", ["a", "b", "c"], True),  # len turns a list into a count
        ("len(t.l) = 2", ["a", "b", "c"], False),
        ("toupper(t.l) in (A, B)", ["a", "b"], True),
    ],
)
def test_list_fields(condition, values, expected):
    assert run(condition, l=values) is expected


@pytest.mark.parametrize("op_value", ["= a", "!= a", "< 1", ">= 1", "= val(t.s)"])
def test_list_fields_reject_other_operators(op_value):
    with pytest.raises(FieldError) as info:
        compiled(f"t.s exists and t.l {op_value}")
    # libsinsp filter_compare.cpp flt_is_comparable_any_list (message text included)
    op = op_value.split()[0]
    assert info.value.message == f"filter error: '{op}' operator not supported list filters"
    assert info.value.offset == 15


@pytest.mark.parametrize(
    ("condition", "values", "expected"),
    [
        ("t.l contains vil", ["good", "evil"], True),
        ("t.l contains vil", ["good", "fine"], False),
        ("t.l startswith ev", ["good", "evil"], True),
        ("t.l endswith od", ["good", "evil"], True),
        ("t.l icontains EVI", ["good", "evil"], True),
        ("t.l glob 'e*l'", ["good", "evil"], True),
        ("t.l iglob 'E*L'", ["good", "evil"], True),
        ("t.l regex 'e.il'", ["good", "evil"], True),
        ("t.l regex 'e.il'", ["good"], False),
        ("not t.l regex 'e.il'", ["good", "evil"], False),
        ("t.l contains x", None, False),
    ],
)
def test_string_operators_on_list_fields_match_any_value(condition, values, expected):
    assert run(condition, l=values) is expected


def test_list_ness_of_val_must_match():
    # libsinsp sinsp_filtercheck.cpp check_rhs_field_type_consistency
    message = (
        "field 't.s' has type 'CHARBUF' while the right-hand side field 't.l' "
        "has incompatible type 'CHARBUF (list)'"
    )
    with pytest.raises(FieldError, match=re.escape(message)) as info:
        compiled("t.s in val(t.l)")
    assert info.value.offset == 0
    with pytest.raises(FieldError, match=re.escape("field 't.l' has type 'CHARBUF (list)' while")):
        compiled("t.l in val(t.s)")


def test_val_between_list_fields():
    assert run("t.l in val(t.l2)", l=["a", "b"], l2=["b", "a", "c"]) is True
    assert run("t.l in val(t.l2)", l=["a", "z"], l2=["b", "a", "c"]) is False
    assert run("t.l intersects val(t.l2)", l=["a", "z"], l2=["b", "a"]) is True


def test_val_and_transformers_on_the_right():
    assert run("t.s = val(t.s2)", s="a", s2="a") is True
    assert run("t.s = toupper(t.s2)", s="A", s2="a") is True
    assert run("t.n < val(t.s)", n=9, s="10") is True  # numeric: the value is a number
    assert run("t.s contains val(t.s2)", s="admin", s2="dmi") is True
    assert run("t.s in val(t.s2)", s="a", s2="a") is True


@pytest.mark.parametrize("op", ["regex", "pmatch"])
def test_regex_and_pmatch_refuse_a_field_on_the_right(op):
    # libsinsp sinsp_filtercheck.cpp add_filter_value (the enum's name in the text)
    with pytest.raises(
        RuleError, match=f"operator '{op.upper()}' doesn't support right-hand side fields"
    ) as info:
        compiled(f"t.s exists and t.s {op} val(t.s2)")
    assert info.value.offset == 15


# -- right-hand side normalisation ----------------------------------------------------------------


def test_rhs_normalizer_applies_to_equality_sets_and_pmatch():
    assert run("t.img = nginx", img="docker.io/library/nginx") is True
    assert run("t.img != nginx", img="docker.io/library/nginx") is False
    assert run("t.img in (nginx, quay.io/x)", img="docker.io/library/nginx") is True
    assert run("t.imgs intersects (nginx)", imgs=["docker.io/library/nginx"]) is True
    assert run("t.img pmatch (myreg.io/team)", img="myreg.io/team/app") is True


def test_rhs_normalizer_leaves_patterns_and_transformed_fields_alone():
    assert run("t.img startswith nginx", img="nginx-proxy") is True
    assert run("t.img contains nginx", img="docker.io/library/nginx") is True
    assert run("tolower(t.img) = nginx", img="NGINX") is True


def test_rhs_normalizer_errors_are_field_errors_at_the_check():
    with pytest.raises(
        FieldError, match=re.escape("invalid value for field 't.img': empty image name")
    ) as info:
        compiled('t.s exists or t.img in ("")')
    assert info.value.offset == 14


# -- structure: flattening, short-circuit order, folding ----------------------------------------------


def trace(text: str, **doc: Any) -> tuple[bool, list[str]]:
    predicate = compiled(text)
    CALLS.clear()
    result = predicate(Event("test", doc))
    return result, list(CALLS)


def test_and_short_circuits_left_to_right():
    assert trace("t.s = x and t.s2 = y and t.n = 1", s="no", s2="y", n=1) == (False, ["s"])
    assert trace("t.s = x and t.s2 = y", s="x", s2="y") == (True, ["s", "s2"])


def test_or_short_circuits_left_to_right():
    assert trace("t.s = x or t.s2 = y or t.n = 1", s="x") == (True, ["s"])
    assert trace("t.s = x or t.s2 = y or t.n = 1", s="?", s2="?", n=1) == (True, ["s", "s2", "n"])


@pytest.mark.parametrize("width", [2, 3, 4, 7])
def test_n_way_forms_keep_order_and_meaning(width):
    fields = ["s", "s2", "n", "m", "l", "l2", "img"][:width]
    ands = " and ".join(f"t.{f} exists" if f != "m" else "t.k[x] exists" for f in fields)
    doc = {f: "v" for f in fields} | {"l": ["v"], "l2": ["v"], "m": {"x": "v"}}
    assert run(ands, **doc) is True
    for missing in fields:
        assert run(ands, **{k: v for k, v in doc.items() if k != missing}) is False
    ors = ands.replace(" and ", " or ")
    assert run(ors) is False
    for present in fields:
        assert run(ors, **{present: doc[present]}) is True


def test_nested_groups_are_flattened_in_order():
    text = "(t.s = x and (t.s2 = y and (t.n = 1 and t.img = z)))"
    assert trace(text, s="x", s2="y", n=1, img="no") == (False, ["s", "s2", "n", "img"])
    assert trace("(t.s = x or (t.s2 = y or t.n = 1))", s="a", s2="b", n=1) == (True, ["s", "s2", "n"])


def test_double_negation():
    tree = Not(Not(Check(FieldRef("t.s"), "=", "x")))
    assert compile_condition(tree, FIELDS)(Event("test", {"s": "x"})) is True
    assert run("not not t.s = x", s="x") is True
    assert run("not (not t.s = x)", s="y") is False


def test_empty_in_is_folded_to_false():
    assert trace("t.s in ()", s="a") == (False, [])
    assert trace("t.l in ()", l=["a"]) == (False, [])
    assert trace("t.s = a and t.s2 in ()", s="a") == (False, [])
    assert trace("not t.s in ()") == (True, [])
    assert trace("t.s2 in () or t.s = a", s="a") == (True, ["s"])
    assert trace("t.s = a or not t.s2 in ()") == (True, [])


def test_folding_still_reports_errors_in_folded_branches():
    with pytest.raises(RuleError, match="Undefined macro 'later'"):
        compiled("t.s in () and later")
    with pytest.raises(FieldError, match=re.escape("nonexistent field t.nope")):
        compiled("t.s in () and t.nope = 1")


# -- errors ---------------------------------------------------------------------------------------


def test_a_remaining_macro_reference_is_an_error():
    with pytest.raises(RuleError) as info:
        compiled("t.s = a and not my_macro")
    assert info.value.message == "Undefined macro 'my_macro' used in filter."
    assert info.value.offset == 16


@pytest.mark.parametrize(
    ("text", "message", "offset"),
    [
        ("t.s = a or t.nope = b", "filter_check called with nonexistent field t.nope", 11),
        ("t.s[1] = a", "field 't.s' does not allow nor require an argument", 0),
        ("t.s = a and t.k = b", "field 't.k' requires an argument but none provided", 12),
        ("t.l[01] exists", "index argument must be digits without a leading zero", 0),
        ("t.s = val(t.nope)", "nonexistent field t.nope", 0),
        ("   t.s regex '('", "invalid regular expression '\\('", 3),
        ("t.s bcontains 6", "'bcontains' operator not supported for string filters", 0),
        ("t.s regex '(?i)admin'", "RE2, POSIX syntax", 0),  # no Perl flags in POSIX syntax
    ],
)
def test_compile_errors_carry_the_offset_of_the_check(text, message, offset):
    with pytest.raises(RuleError, match=message) as info:
        compiled(text)
    assert info.value.offset == offset


def test_compile_check_alone():
    check = parse_condition("t.s startswith ad")
    assert isinstance(check, Check)
    assert compile_check(check, FIELDS)(Event("test", {"s": "admin"})) is True


def test_malformed_trees_are_rejected():
    with pytest.raises(RuleError, match="cannot take the value"):
        compile_condition(Check(FieldRef("t.s"), "in", "a"), FIELDS)
    with pytest.raises(RuleError, match="unknown operator"):
        compile_condition(Check(FieldRef("t.s"), "~", "a"), FIELDS)


def test_deep_trees_compile_or_fail_cleanly():
    tree: Node = Check(FieldRef("t.s"), "exists")
    for _ in range(300):
        tree = Not(Not(tree))
    assert compile_condition(tree, FIELDS)(Event("test", {"s": "x"})) is True
    for _ in range(5000):
        tree = Not(tree)
    with pytest.raises(RuleError, match="nested too deeply"):
        compile_condition(tree, FIELDS)


# -- property: compiled predicate == a tiny reference interpreter ---------------------------------------

_POOL = [
    "a",
    "ab",
    "A",
    "/etc",
    "/etc/passwd",
    "/etcx",
    "1",
    "10",
    "2",
    "0x1",
    "0x10",
    "1.5",
    "2.0",
    "true",
    "",
]
_NUMS = ["1", "2", "10", "0x1", "1.5", "-1", "1e+1"]
_PATTERNS = {
    "glob": ["*", "a*", "?", "/etc/*", "[ab]", "[!a]*", "*b"],
    "iglob": ["A*", "*B", "[A]?"],
    "regex": ["a.*", "[ab]+", "1|2", ".*etc.*", "A", ""],
}
# Repeats weight the draws towards the typed field and equality, where
# numeric and textual comparison differ.
_SCALAR_FIELDS = [
    FieldRef("t.s"),
    FieldRef("t.n"),
    FieldRef("t.n"),
    FieldRef("t.k", "k1"),
    FieldRef("t.s", None, ("tolower",)),
]
_STR_OPS = ["=", "=", "!=", "contains", "icontains", "startswith", "endswith"]
_ORDER_OPS = ["<", "<=", ">", ">="]


@st.composite
def scalar_checks(draw) -> Check:
    field = draw(st.sampled_from(_SCALAR_FIELDS))
    kind = draw(st.sampled_from(["str", "str", "order", "pattern", "list", "list", "exists", "val"]))
    if kind == "exists":
        return Check(field, "exists")
    if kind == "str":
        return Check(field, draw(st.sampled_from(_STR_OPS)), draw(st.sampled_from(_POOL)))
    if kind == "order":
        return Check(field, draw(st.sampled_from(_ORDER_OPS)), draw(st.sampled_from(_NUMS + _POOL)))
    if kind == "pattern":
        op = draw(st.sampled_from(sorted(_PATTERNS)))
        return Check(field, op, draw(st.sampled_from(_PATTERNS[op])))
    if kind == "list":
        op = draw(st.sampled_from(["in", "intersects", "pmatch"]))
        return Check(field, op, tuple(draw(st.lists(st.sampled_from(_POOL), max_size=3))))
    op = draw(st.sampled_from([*_STR_OPS, *_ORDER_OPS, "in"]))
    return Check(field, op, draw(st.sampled_from([FieldRef("t.s2"), FieldRef("t.n")])))


@st.composite
def list_checks(draw) -> Check:
    field = FieldRef("t.l", draw(st.sampled_from([None, None, "0", "1"])))
    op = draw(st.sampled_from(["exists", "in", "intersects", "pmatch", "len"]))
    if op == "exists":
        return Check(field, op)
    if op == "len":
        return Check(FieldRef("t.l", None, ("len",)), draw(st.sampled_from(["=", ">", "<="])), "2")
    if op != "pmatch" and draw(st.booleans()):  # pmatch refuses a field on the right, as in libsinsp
        return Check(field, op, FieldRef("t.l2"))
    return Check(field, op, tuple(draw(st.lists(st.sampled_from(_POOL), max_size=3))))


reference_trees = st.recursive(
    st.one_of(scalar_checks(), list_checks()),
    lambda inner: st.one_of(
        st.builds(Not, inner),
        st.builds(lambda cs: And(tuple(cs)), st.lists(inner, min_size=2, max_size=5)),
        st.builds(lambda cs: Or(tuple(cs)), st.lists(inner, min_size=2, max_size=5)),
    ),
    max_leaves=10,
)

# Typed values near the numbers in the pools, so that numeric and textual
# comparison often disagree (1 = 0x1, 2.0 = 2, True != 1).
_typed = st.one_of(st.sampled_from(_POOL), st.sampled_from([1, 2, 10, 16, -1, 1.5, 2.0, 10.0]), st.booleans())
docs = st.fixed_dictionaries(
    {},
    optional={
        "s": st.sampled_from(_POOL),
        "s2": st.sampled_from([*_POOL, "a+", "/etc"]),
        "n": _typed,
        "m": st.dictionaries(st.sampled_from(["k1", "k2"]), st.sampled_from(_POOL)),
        "l": st.lists(st.sampled_from(_POOL), min_size=1, max_size=3),
        "l2": st.lists(st.sampled_from(_POOL), min_size=1, max_size=3),
    },
)


def ref_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def ref_number(s: str) -> float | None:
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", s):
        return int(s, 16)
    if re.fullmatch(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?", s):
        return float(s)
    return None


def ref_extract(f: FieldRef, doc: dict[str, Any]) -> Any:
    if f.name == "t.k":
        v = doc.get("m", {}).get(f.arg)
    elif f.name in ("t.l", "t.l2"):
        items = doc.get("l" if f.name == "t.l" else "l2")
        if items and f.arg is not None:
            items = items[int(f.arg) : int(f.arg) + 1]
        v = tuple(items) if items else None
    else:
        v = doc.get(f.name[2:])
    if v is None:
        return None
    if "tolower" in f.transformers:
        v = str(v).lower() if not isinstance(v, bool) else ref_text(v)
    if "len" in f.transformers:
        v = len(v)
    return v


_CMP = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def ref_scalar(op: str, v: Any, rhs: Any) -> bool:
    t = ref_text(v)
    is_num = isinstance(v, int | float) and not isinstance(v, bool)
    if op in ("in", "intersects"):
        return any(ref_scalar("=", v, r) for r in rhs)
    if op == "pmatch":
        # libsinsp's path_prefix_search: "/"-separated segments, empty ones
        # dropped; an entry covers values that start with its segments.
        parts = [p for p in t.split("/") if p]
        entries = ([p for p in r.split("/") if p] for r in rhs)
        return any(parts[: len(e)] == e for e in entries)
    num = ref_number(rhs)
    if op == "=":
        return v == num if is_num and num is not None else t == rhs
    if op == "!=":
        return not ref_scalar("=", v, rhs)
    if op in _CMP:
        return _CMP[op](v, num) if is_num and num is not None else _CMP[op](t, rhs)
    if op == "contains":
        return rhs in t
    if op == "icontains":
        return rhs.lower() in t.lower()
    if op == "startswith":
        return t.startswith(rhs)
    if op == "endswith":
        return t.endswith(rhs)
    if op == "bcontains":
        return bytes.fromhex(rhs) in t.encode()
    if op == "bstartswith":
        return t.encode().startswith(bytes.fromhex(rhs))
    if op == "glob":
        return fnmatch.fnmatchcase(t, rhs)
    if op == "iglob":
        return fnmatch.fnmatchcase(t.lower(), rhs.lower())
    if op == "regex":
        return re.fullmatch(rhs, t) is not None
    raise AssertionError(op)


def ref_eval(node: Node, doc: dict[str, Any]) -> bool:
    if isinstance(node, And):
        return all(ref_eval(c, doc) for c in node.children)
    if isinstance(node, Or):
        return any(ref_eval(c, doc) for c in node.children)
    if isinstance(node, Not):
        return not ref_eval(node.child, doc)
    assert isinstance(node, Check)
    v = ref_extract(node.field, doc)
    if node.op == "exists":
        return v is not None
    if v is None:
        return False
    rhs = node.value
    if isinstance(rhs, FieldRef):
        r = ref_extract(rhs, doc)
        if r is None:
            return False
        if isinstance(r, tuple):
            rhs = tuple(ref_text(x) for x in r)
        else:
            rhs = (ref_text(r),) if node.op in ("in", "intersects", "pmatch") else ref_text(r)
    if isinstance(v, tuple):
        if node.op == "intersects":
            return any(ref_scalar(node.op, x, rhs) for x in v)
        return all(ref_scalar(node.op, x, rhs) for x in v)
    return ref_scalar(node.op, v, rhs)


@given(tree=reference_trees, docs=st.lists(docs, min_size=1, max_size=6))
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_compiled_predicates_agree_with_a_reference_interpreter(tree, docs):
    predicate = compile_condition(tree, FIELDS)
    for doc in docs:
        assert predicate(Event("test", doc)) is ref_eval(tree, doc), doc


@given(check=st.one_of(scalar_checks(), list_checks()), docs=st.lists(docs, min_size=1, max_size=8))
@settings(max_examples=500, deadline=None)
def test_single_checks_agree_with_the_reference_interpreter(check, docs):
    # Single checks, so that no "and"/"or" can mask a wrong comparison.
    predicate = compile_condition(check, FIELDS)
    for doc in docs:
        assert predicate(Event("test", doc)) is ref_eval(check, doc), doc


def test_typed_comparisons_agree_with_the_reference_everywhere():
    # Exhaustive over the values where numeric and textual comparison part.
    rhs_values = ["1", "0x1", "2", "2.0", "10", "0x10", "1e+1", "1.5", "-1", "true", "false", "a", ""]
    values = [1, 2, 10, 16, -1, 1.5, 2.0, 10.0, True, False, "1", "2", "10", "a"]
    for op in ["=", "!=", "<", "<=", ">", ">=", "in", "pmatch", "contains"]:
        for rhs in rhs_values:
            if op in ("<", "<=", ">", ">=") and ref_number(rhs) is None:
                continue  # the grammar allows only numbers there
            check = Check(FieldRef("t.n"), op, (rhs,) if op in ("in", "pmatch") else rhs)
            predicate = compile_condition(check, FIELDS)
            for value in values:
                doc = {"n": value}
                assert predicate(Event("test", doc)) is ref_eval(check, doc), (op, rhs, value)


def test_macro_ref_is_not_in_reference_trees():
    # The property test above only covers macro-free trees, as the compiler
    # requires; a macro reference anywhere must fail instead.
    with pytest.raises(RuleError):
        compile_condition(Or((Check(FieldRef("t.s"), "exists"), MacroRef("m"))), FIELDS)


def test_a_field_reference_is_bound_once_and_the_memory_is_bounded(monkeypatch):
    fields = FieldSet("bind-test", [FieldDef("t.s", "a string", _scalar("s"))])
    ref = FieldRef("t.s")
    assert fields.bind(ref) is fields.bind(FieldRef("t.s"))
    assert fields.bind(FieldRef("t.s", transformers=("tolower",))) is not fields.bind(ref)
    with pytest.raises(FieldError):
        fields.bind(FieldRef("t.nope"))  # failures are not kept
    monkeypatch.setattr(FieldSet, "MAX_BOUND", 2)
    fields.bind(FieldRef("t.s", transformers=("toupper",)))
    assert len(fields._bound) <= 2
