"""Rule outputs: tokens, widths, transformers, <NA>, list rendering, output_fields."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.engine.errors import FieldError, RuleError
from eventd.engine.fields import default_registry
from eventd.engine.fields.base import ArgKind, FieldDef, FieldSet
from eventd.engine.output import OutputFormat, UnknownOutputField, value_text
from eventd.events.model import K8S_AUDIT, Event
from tests.support.builders import audit_event, pod_create


def _get(key: str):
    def extract(ev: Event, arg: Any):
        value = ev.doc.get(key)
        if isinstance(value, list):
            return tuple(value) or None
        return value

    return extract


FIELDS = FieldSet(
    "test",
    [
        FieldDef("t.str", "a string", _get("s")),
        FieldDef("t.strlong", "a longer name sharing a prefix", _get("long")),
        FieldDef("t.int", "an integer", _get("i")),
        FieldDef("t.bool", "a boolean", _get("b")),
        FieldDef("t.list", "a list", _get("l"), is_list=True),
        FieldDef("t.key", "keyed", lambda ev, arg: ev.doc.get("m", {}).get(arg), arg=ArgKind.KEY),
    ],
)


def render(fmt: str, **doc: Any) -> tuple[str, dict[str, Any]]:
    return OutputFormat.compile(fmt, FIELDS).render(Event("test", doc))


def test_plain_tokens_and_output_fields_keep_types() -> None:
    text, fields = render("s=%t.str i=%t.int b=%t.bool", s="x", i=42, b=True)
    assert text == "s=x i=42 b=true"
    assert fields == {"t.str": "x", "t.int": 42, "t.bool": True}


def test_missing_values_print_na_and_are_none() -> None:
    text, fields = render("user=%t.str list=%t.list")
    assert text == "user=<NA> list=<NA>"
    assert fields == {"t.str": None, "t.list": None}


def test_list_values_render_in_parentheses_and_stay_lists() -> None:
    text, fields = render("images=%t.list one=%t.list", l=["a", "b"])
    assert text == "images=(a,b) one=(a,b)"
    assert fields == {"t.list": ["a", "b"]}
    assert render("%t.list", l=["only"])[0] == "(only)"


def test_width_pads_and_truncates() -> None:
    assert render("[%6t.str]", s="ab")[0] == "[ab    ]"
    assert render("[%3t.str]", s="abcdef")[0] == "[abc]"
    assert render("[%5t.str]")[0] == "[<NA> ]"
    fmt = OutputFormat.compile("%12t.str", FIELDS)
    assert fmt.tokens == ("t.str",)  # the width is not part of the key


def test_transformers_and_arguments() -> None:
    text, fields = render(
        "%toupper(t.str) %tolower(t.key[Mode]) %len(t.list)", s="ab", m={"Mode": "RO"}, l=[1, 2]
    )
    assert text == "AB ro 2"
    assert fields == {"toupper(t.str)": "AB", "tolower(t.key[Mode])": "ro", "len(t.list)": 2}


@pytest.mark.parametrize("arg", ['"Mode"', "'Mode'", "Mode"])
def test_a_quoted_argument_is_the_key_without_its_quotes(arg: str) -> None:
    """Falco accepts ``%field["key"]`` and ``%field['key']`` for ``%field[key]``."""
    text, fields = render(f"%t.key[{arg}]!", m={arg: "quoted", "Mode": "RO"})
    assert text == "RO!"
    assert fields == {f"t.key[{arg}]": "RO"}


@pytest.mark.parametrize("arg", ['"', "\"Mode'", "'Mode"])
def test_unbalanced_quotes_are_part_of_the_key(arg: str) -> None:
    assert render(f"%t.key[{arg}]", m={"Mode": "RO", arg: "as written"})[0] == "as written"


def test_field_name_is_longest_known_prefix() -> None:
    assert render("%t.strlong|%t.str/%t.strX", s="a", long="b")[0] == "b|a/aX"
    assert render("%t.str.", s="a")[0] == "a."


def test_text_is_trimmed_and_a_leading_star_is_literal() -> None:
    fmt = OutputFormat.compile("  \n*%t.str done\n", FIELDS)
    assert fmt.text == "*%t.str done"
    assert fmt.render(Event("test", {}))[0] == "*<NA> done"


def test_tokens_in_order() -> None:
    fmt = OutputFormat.compile("%t.int %t.key[/a/b] %toupper(t.str) %t.int", FIELDS)
    assert fmt.tokens == ("t.int", "t.key[/a/b]", "toupper(t.str)", "t.int")


def test_render_returns_a_fresh_dict() -> None:
    fmt = OutputFormat.compile("%t.str", FIELDS)
    ev = Event("test", {"s": "x"})
    first = fmt.render(ev)[1]
    first["evt.time"] = 1
    assert fmt.render(ev)[1] == {"t.str": "x"}


def test_k8s_fields_and_json_pointer_tokens() -> None:
    fields = default_registry().fieldset(K8S_AUDIT)
    fmt = OutputFormat.compile(
        "Pod started (user=%ka.user.name target=%ka.target.name/%ka.target.resource "
        "images=%ka.req.pod.containers.image vol=%jevt.value[/requestObject/spec/volumes] "
        "cmd=%ka.uri.param[command])",
        fields,
    )
    ev = Event(K8S_AUDIT, pod_create("nginx:1", "redis", user="bob", name="web"))
    ev.doc["requestObject"]["spec"]["containers"].append({"name": "x", "image": "busybox"})
    text, out = fmt.render(ev)
    assert text == ("Pod started (user=bob target=web/pods images=(nginx:1,redis,busybox) vol=<NA> cmd=<NA>)")
    assert out["ka.req.pod.containers.image"] == ["nginx:1", "redis", "busybox"]
    assert out["jevt.value[/requestObject/spec/volumes]"] is None
    assert list(out) == [
        "ka.user.name",
        "ka.target.name",
        "ka.target.resource",
        "ka.req.pod.containers.image",
        "jevt.value[/requestObject/spec/volumes]",
        "ka.uri.param[command]",
    ]
    plain = Event(K8S_AUDIT, audit_event(user="carol"))
    assert fmt.render(plain)[0].startswith("Pod started (user=carol target=web/pods images=<NA>")


@pytest.mark.parametrize(
    ("fmt", "kind", "message"),
    [
        ("ends with %", RuleError, "formatting cannot end with a %"),
        ("ends with %12", RuleError, "formatting cannot end with a number"),
        ("%t.nope here", UnknownOutputField, "invalid formatting token '%t.nope'"),
        ("100%% sure", UnknownOutputField, "invalid formatting token"),
        ("% spaced", UnknownOutputField, "invalid formatting token"),
        ("%toupper(t.str", FieldError, "missing ')'"),
        ("%t.key[open", FieldError, "missing ']'"),
        ("%t.key", FieldError, "requires an argument"),
        ("%t.str[x]", FieldError, "does not allow nor require an argument"),
    ],
)
def test_format_errors(fmt: str, kind: type[RuleError], message: str) -> None:
    with pytest.raises(kind, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        OutputFormat.compile(fmt, FIELDS)
    assert info.value.offset == fmt.index("%")


def test_value_text() -> None:
    assert value_text(None) == "<NA>"
    assert value_text(("a", 1, False)) == "(a,1,false)"
    assert value_text(1.5) == "1.5"


# ------------------------------------------------------- edges (issue 17)


def test_value_text_of_strings_and_string_lists() -> None:
    assert value_text("") == ""
    assert value_text("(x)") == "(x)"
    assert value_text(("a", "b")) == "(a,b)"
    assert value_text(()) == "()"
    assert value_text(True) == "true"


def test_percent_signs_in_literal_text_stay_single() -> None:
    """The literal text becomes a printf template: its ``%`` is escaped, not doubled in the output."""
    fmt = OutputFormat.compile("a %t.str b", FIELDS)
    assert fmt.render(Event("test", {"s": "100%"}))[0] == "a 100% b"
    assert render("x%t.str%t.str y", s="%s")[0] == "x%s%s y"


@pytest.mark.parametrize(("width", "shown"), [("10000", "ab".ljust(10_000)), ("0", "ab"), ("007", "ab     ")])
def test_width_bounds(width: str, shown: str) -> None:
    assert render(f"%{width}t.str!", s="ab")[0] == shown + "!"


@pytest.mark.parametrize("width", ["10001", "99999", "100000", "000000000010001"])
def test_width_above_the_maximum_is_refused(width: str) -> None:
    with pytest.raises(RuleError, match=r"width too large \(at most 10000\)") as info:
        OutputFormat.compile(f"x %{width}t.str", FIELDS)
    assert info.value.offset == 2


def test_literal_text_after_the_last_token_is_kept() -> None:
    assert render("%t.str", s="v")[0] == "v"
    assert render("%t.str.", s="v")[0] == "v."
    assert render("%t.str tail", s="v")[0] == "v tail"


@pytest.mark.parametrize(("arg", "key"), [('"a"b"', 'a"b'), ("'", "'"), ("'x'", "x"), ("a[b", "a[b")])
def test_argument_quotes_and_brackets_at_the_edges(arg: str, key: str) -> None:
    assert render(f"%t.key[{arg}]c", m={key: "found"})[0] == "foundc"


@pytest.mark.parametrize("arg", ["", '""', "''"])
def test_an_empty_argument_quoted_or_not_is_no_argument(arg: str) -> None:
    with pytest.raises(FieldError, match="requires an argument"):
        OutputFormat.compile(f"%t.key[{arg}]", FIELDS)


def test_an_unknown_field_is_shown_in_the_error() -> None:
    with pytest.raises(UnknownOutputField, match=r"'%t\.nope'"):
        OutputFormat.compile("%t.nope", FIELDS)
    with pytest.raises(UnknownOutputField, match="'%" + "-" * 20 + "': no such field"):
        OutputFormat.compile("%" + "-" * 30, FIELDS)


def test_the_longest_of_several_matching_prefixes_wins() -> None:
    fields = FieldSet(
        "test",
        [
            FieldDef("a.b", "short", lambda ev, arg: "short"),
            FieldDef("a.b.c", "long", lambda ev, arg: "long"),
            FieldDef("a.bb", "other", lambda ev, arg: "other"),
        ],
    )
    assert OutputFormat.compile("%a.b.cd", fields).render(Event("test", {}))[0] == "longd"
    assert OutputFormat.compile("%a.b.c.d", fields).render(Event("test", {}))[0] == "long.d"
    assert OutputFormat.compile("%a.bbx", fields).render(Event("test", {}))[0] == "otherx"


def test_leading_zeros_of_a_width_do_not_count_toward_its_length() -> None:
    assert render("%0000000000007t.str|", s="ab")[0] == "ab     |"


def test_only_quotes_are_stripped_from_an_argument() -> None:
    assert render("%t.key[XmodeX]", m={"XmodeX": "as written", "mode": "stripped"})[0] == "as written"


def test_too_many_nested_transformers_are_refused_with_the_limit() -> None:
    depth = 65
    fmt = "%" + "tolower(" * depth + "t.str" + ")" * depth
    with pytest.raises(RuleError, match="more than 64 nested transformers"):
        OutputFormat.compile(fmt, FIELDS)
    ok = "%" + "tolower(" * 64 + "t.str" + ")" * 64
    assert OutputFormat.compile(ok, FIELDS).render(Event("test", {"s": "AB"}))[0] == "ab"


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        # libsinsp 0.23.1 userspace/libsinsp/eventformatter.cpp, the whole texts.
        ("ends with %", "invalid formatting syntax: formatting cannot end with a %"),
        ("ends with %12", "invalid formatting syntax: formatting cannot end with a number"),
        # The unclosed transformer is named from its own start, not the line's.
        ("text before %toupper(t.str", "invalid formatting token 'toupper(t.str': missing ')'"),
    ],
)
def test_format_errors_are_whole_messages(fmt: str, message: str) -> None:
    with pytest.raises(RuleError) as info:
        OutputFormat.compile(fmt, FIELDS)
    assert info.value.message == message


def test_values_come_from_the_event_cache_first_and_fill_it() -> None:
    # Rendering reads through one generated function (``codegen.generate_render``):
    # a value already in the event's cache is used as it is, a missing one
    # is extracted once and stays there for the next reader.
    fmt = OutputFormat.compile("s=%t.str l=%t.list k=%t.key[a]", FIELDS)
    event = Event("test", {"s": "doc", "l": ["x"], "m": {"a": "v"}})
    event.cache["t.str"] = "cached"
    text, fields = fmt.render(event)
    assert text == "s=cached l=(x) k=v"
    assert fields == {"t.str": "cached", "t.list": ["x"], "t.key[a]": "v"}
    assert event.cache["t.list"] == ("x",) and event.cache["t.key[a]"] == "v"
    assert fmt.render(Event("test", {"s": "other"}))[0] == "s=other l=<NA> k=<NA>"


def test_outputs_with_more_tokens_than_a_generated_function_takes(monkeypatch) -> None:
    import eventd.engine.output as output

    monkeypatch.setattr(output, "MAX_CHECKS", 2)
    text, fields = render("%t.str %t.int %t.bool %3t.str", s="x", i=1, b=False)
    assert text == "x 1 false x  "
    assert fields == {"t.str": "x", "t.int": 1, "t.bool": False}


_TOKENS = (
    "%t.str",
    "%t.int",
    "%t.bool",
    "%t.list",
    "%t.key[a]",
    "%toupper(t.str)",
    "%len(t.list)",
    "%t.strlong",
)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(
        st.one_of(
            st.sampled_from(_TOKENS).flatmap(
                lambda token: st.sampled_from(["", "0", "1", "3", "12"]).map(lambda w: "%" + w + token[1:])
            ),
            st.text(alphabet="ab =()[]<>,.:\n\"'", min_size=1, max_size=6),
        ),
        max_size=8,
    ),
    doc=st.fixed_dictionaries(
        {},
        optional={
            "s": st.one_of(st.none(), st.text(max_size=5)),
            "long": st.text(max_size=5),
            "i": st.one_of(st.integers(-5, 5), st.booleans()),
            "b": st.booleans(),
            "l": st.lists(st.text(max_size=3), max_size=3),
            "m": st.fixed_dictionaries({}, optional={"a": st.text(max_size=3)}),
        },
    ),
)
def test_generated_render_equals_the_value_by_value_render(parts: list[str], doc: dict) -> None:
    """The generated renderer against the plain one it replaces (kept for
    outputs with more tokens than a generated function takes), on random
    formats with widths, repeated tokens and transformers, cold and cached."""
    import eventd.engine.output as output

    text = " ".join(parts) or "x"
    generated = OutputFormat.compile(text, FIELDS)
    with mock.patch.object(output, "MAX_CHECKS", -1):
        plain = OutputFormat.compile(text, FIELDS)
        expected = plain.render(Event("test", doc))
    event = Event("test", doc)
    assert generated.render(event) == expected
    assert generated.render(event) == expected  # every value now from the cache
