"""Falco fidelity (issue 12): load what Falco loads, refuse what it refuses,
say it with Falco's codes and texts.

Each test names the upstream source it follows: falcosecurity/falco
``userspace/engine/rule_loader_reader.cpp``, ``rule_loader_compiler.cpp``,
``filter_warning_resolver.cpp``, ``falco_load_result.cpp`` and
``unit_tests/engine/test_rule_loader.cpp``; falcosecurity/libs (0.23, the
version Falco 0.43 builds with) ``userspace/libsinsp/filter/parser.cpp``,
``filter/escaping.cpp``, ``filter.cpp``, ``filter_compare.cpp``,
``sinsp_filtercheck.cpp`` and their tests ``test/filter_parser.ut.cpp``,
``test/filter_escaping.ut.cpp``, ``test/filter_compiler.ut.cpp``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventd.engine.errors import ConditionSyntaxError, RuleError
from eventd.engine.load_result import ErrorCode, WarningCode
from eventd.engine.loader import load_rules_text
from eventd.engine.parser import parse_condition, unescape
from eventd.engine.ruleset import RuleSet
from eventd.events.model import K8S_AUDIT, Event
from tests.support.builders import audit_event

ROOT = Path(__file__).resolve().parent.parent


def rule(cond: str, name: str = "R", extra: str = "") -> str:
    return (
        textwrap.dedent(
            f"""\
        - rule: {name}
          desc: d
          condition: {json.dumps(cond)}
          output: o %ka.user.name
          priority: WARNING
          source: k8s_audit
        """
        )
        + extra
    )


def load(*texts: str, strict: bool = False) -> RuleSet:
    return load_rules_text([(f"f{i}.yaml", t) for i, t in enumerate(texts)], strict=strict)


def codes(rs: RuleSet) -> list[str]:
    return [f.code.name for f in rs.findings]


def refused(text: str, strict: bool = False) -> RuleError:
    with pytest.raises(RuleError) as info:
        load(text, strict=strict)
    return info.value


def audit(user: str = "alice", verb: str = "create", name: str = "web") -> Event:
    return Event(K8S_AUDIT, audit_event(user=user, verb=verb, name=name))


# -- 1. strings read as libsinsp reads them ---------------------------------------------------


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (r"a\\b", "a\\b"),
        (r"q\"q", 'q"q'),
        (r"x\ y", "x\\y"),  # escaping.cpp: backslash-space is a lone backslash
        (r"\b\f\n\r\t\/", "\b\f\n\r\t/"),
        ("no escapes", "no escapes"),
    ],
)
def test_unescape_as_libsinsp(body: str, value: str) -> None:
    # libs test/filter_escaping.ut.cpp (round trips) and filter/escaping.cpp unescape_str
    assert unescape(body, '"') == value


def test_a_quote_after_a_double_backslash_does_not_close_the_string() -> None:
    # libs filter/parser.cpp lex_quoted_str: it compares with the *previous character*,
    # so "a\\" and ... keeps the string open; Falco then fails where eventd used to load.
    with pytest.raises(ConditionSyntaxError, match="unterminated string"):
        parse_condition(r'ka.user.name = "a\\"')
    with pytest.raises(ConditionSyntaxError):  # the string runs to `= "`, then `b"` is junk
        parse_condition(r'ka.user.name = "a\\" or ka.verb = "b"')


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (r"""ka.verb = 'a\"b'""", "invalid \\\\\" escape in '-quoted string"),
        (r'''ka.verb = "a\'b"''', "invalid \\\\' escape in \"-quoted string"),
        (r'ka.verb = "a\qb"', "unsupported string escape sequence: \\\\q"),
        (r'ka.verb = "\x41"', "unsupported string escape sequence: \\\\x"),  # libs 0.23 has no \x
    ],
)
def test_bad_escapes_use_libsinsp_messages(text: str, message: str) -> None:
    with pytest.raises(ConditionSyntaxError, match=message):
        parse_condition(text)


@given(st.text(alphabet="ab\"\\ 'nq", max_size=12))
def test_unescape_never_crashes(body: str) -> None:
    with contextlib.suppress(ConditionSyntaxError):
        unescape(body, '"')


def test_end_of_condition_message_is_falcos() -> None:
    # libs filter/parser.cpp parse(): "unexpected token after '...', expecting 'or', 'and'"
    with pytest.raises(ConditionSyntaxError, match="unexpected token after 'create', expecting 'or', 'and'"):
        parse_condition("ka.verb = create ka.uri = x")


# -- 2. load what Falco loads, with its warnings -----------------------------------------------


def test_invalid_list_and_macro_names_are_warnings() -> None:
    # falco rule_loader_reader.cpp: LOAD_INVALID_LIST_NAME / LOAD_INVALID_MACRO_NAME
    rs = load(
        "- list: 'my list'\n  items: [a]\n- macro: 9lives\n  condition: ka.verb=get\n" + rule("ka.verb=x")
    )
    assert "LOAD_INVALID_LIST_NAME" in codes(rs) and "LOAD_INVALID_MACRO_NAME" in codes(rs)
    texts = [f.text for f in rs.findings]
    assert any(t.startswith("List has an invalid name. List names should match") for t in texts)
    assert any(t.startswith("Macro has an invalid name. Macro names should match") for t in texts)
    assert [r.name for r in rs.rules] == ["R"]


def test_duplicate_exception_names_are_a_warning_and_both_apply() -> None:
    # falco rule_loader_reader.cpp: LOAD_EXCEPTION_NAME_NOT_UNIQUE,
    # "Multiple definitions of exception 'e' in the same rule"
    exc = (
        "  exceptions:\n"
        "    - name: e\n      fields: [ka.user.name]\n      values: [[alice]]\n"
        "    - name: e\n      fields: [ka.verb]\n      values: [[delete]]\n"
    )
    rs = load(rule("ka.verb in (create, delete)", extra=exc))
    (finding,) = [f for f in rs.findings if f.code is WarningCode.LOAD_EXCEPTION_NAME_NOT_UNIQUE]
    assert finding.text == "Multiple definitions of exception 'e' in the same rule"
    assert (finding.file, finding.line, finding.item, finding.key) == (
        "f0.yaml",
        11,
        "rule 'R'",
        "exception 'e'",
    )
    pred = rs.rules[0].predicate
    assert pred(audit(user="bob")) is True
    assert pred(audit(user="alice")) is False
    assert pred(audit(verb="delete", user="bob")) is False


def test_transformer_with_a_space_in_an_exception_field_loads() -> None:
    # falco rule_loader_collector.cpp validate_exception_info uses is_valid_lhs_field,
    # which parses the field with libsinsp's parser (blanks allowed inside the parentheses)
    exc = "  exceptions:\n    - name: e\n      fields: [tolower( ka.user.name)]\n      values: [[alice]]\n"
    rs = load(rule("ka.verb=create", extra=exc))
    assert rs.rules[0].predicate(audit(user="ALICE")) is False
    assert rs.rules[0].predicate(audit(user="bob")) is True


def test_glob_with_a_field_on_the_right_loads_and_runs_guarded() -> None:
    # libs sinsp_filtercheck.cpp add_filter_value refuses only PMATCH and REGEX on the right
    rs = load(rule("ka.user.name glob val(ka.target.name)"))
    pred = rs.rules[0].predicate
    assert pred(audit(name="al*")) is True
    assert pred(audit(name="b*")) is False
    assert pred(audit(name="*" * 10_000)) is False  # run-time guard on the pattern


# -- 3. refuse what Falco refuses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cond", "message"),
    [
        # libs filter_compare.cpp flt_is_comparable_string / _any_list, via filter.cpp
        ("ka.user.name bcontains 61", "filter error: 'bcontains' operator not supported for string filters"),
        (
            "ka.user.name bstartswith 61",
            "filter error: 'bstartswith' operator not supported for string filters",
        ),
        ("ka.user.groups = dev", "filter error: '=' operator not supported list filters"),
        (
            "len(ka.user.name) contains 1",
            "filter error: 'contains' operator not supported for numeric filters",
        ),
        # libs sinsp_filtercheck.cpp add_filter_value / check_rhs_field_type_consistency
        (
            "ka.user.name pmatch val(ka.target.name)",
            "operator 'PMATCH' doesn't support right-hand side fields",
        ),
        ("ka.user.name regex val(ka.target.name)", "operator 'REGEX' doesn't support right-hand side fields"),
        (
            "len(ka.user.name) = val(ka.target.name)",
            "field 'ka.user.name' has type 'UINT64' while the right-hand side field 'ka.target.name' "
            "has incompatible type 'CHARBUF'",
        ),
        # libs filter.cpp create_filtercheck
        ("ka.nope = x", "filter_check called with nonexistent field ka.nope"),
    ],
)
def test_refused_as_falco_refuses(cond: str, message: str) -> None:
    err = refused(rule(cond))
    assert err.message == message
    assert err.code == "LOAD_ERR_COMPILE_CONDITION"
    assert (err.file, err.item, err.key) == ("f0.yaml", "rule 'R'", "condition")


@pytest.mark.parametrize(
    "cond", ["ka.user.groups contains de", "ka.user.groups pmatch (/x)", "ka.user.groups regex d.*"]
)
def test_extensions_warn_and_are_refused_when_strict(cond: str) -> None:
    rs = load(rule(cond))
    (finding,) = [f for f in rs.findings if f.code is WarningCode.EVENTD_NOT_PORTABLE]
    assert "not supported list filters" in finding.text and finding.key == "condition"
    op = cond.split()[1]
    err = refused(rule(cond), strict=True)
    assert err.message == f"filter error: '{op}' operator not supported list filters"


def test_builtin_packs_only_warn_about_their_extensions() -> None:
    from eventd.rulepacks import builtin_rule_files

    texts = [(str(p), p.read_text()) for p in builtin_rule_files()]
    rs = load_rules_text(texts)
    assert set(codes(rs)) == {"EVENTD_NOT_PORTABLE"}
    with pytest.raises(RuleError):
        load_rules_text(texts, strict=True)
    for path, text in texts:  # each says why it cannot pass --falco-strict
        assert "--falco-strict" in text.split("\n- ", 1)[0], path


# -- 3b. Falco's codes and the warnings eventd lacked -------------------------------------------


def test_unsafe_na_comparison_warns() -> None:
    # falco filter_warning_resolver.cpp (ka.* and jevt.* fields, = != in intersects pmatch)
    rs = load(rule('ka.user.name = "<NA>"'), rule("ka.verb in (a, <NA>)", "S"))
    assert codes(rs).count("LOAD_UNSAFE_NA_CHECK") == 2
    assert str(rs.findings[0]).endswith("Unsafe <NA> comparison in condition")
    assert "LOAD_UNSAFE_NA_CHECK" not in codes(load(rule('ka.user.name contains "<NA>"')))


@pytest.mark.parametrize(
    ("cond", "text"),
    [
        # libs filter.cpp check_warnings_field_value / _transformer_value / _regex_value
        (
            "ka.user.name = ka.target.name",
            "'ka.target.name' may be a valid field misused as a const string value",
        ),
        (
            'ka.user.name = "tolower(ka.verb)"',
            "'tolower(ka.verb)' may be a valid field transformer misused as a const string value",
        ),
        (
            "ka.user.name regex '.*admin'",
            "regex check with '.*admin' may be optimized with simpler operators such as "
            "'=', 'contains', 'startswith', 'endswith'",
        ),
    ],
)
def test_compiler_warnings(cond: str, text: str) -> None:
    rs = load(rule(cond))
    found = [f for f in rs.findings if f.code is WarningCode.LOAD_COMPILE_CONDITION]
    assert [f.text for f in found] == [text]


def test_no_regex_warning_for_a_real_regex() -> None:
    rs = load(rule("ka.user.name regex 'a[0-9]+b'"))
    assert "LOAD_COMPILE_CONDITION" not in codes(rs)


def test_error_codes_follow_falco() -> None:
    # falco falco_load_result.cpp codes; which stage gives which: rule_loader_*.cpp
    assert refused("- rule: [\n").code == ErrorCode.LOAD_ERR_YAML_PARSE.name
    assert refused("- list: a\n  items: 3\n").code == ErrorCode.LOAD_ERR_YAML_VALIDATE.name
    assert refused(rule("ka.verb = (")).code == ErrorCode.LOAD_ERR_COMPILE_CONDITION.name
    assert refused(rule("ka.verb=x and undefined_macro")).code == ErrorCode.LOAD_ERR_VALIDATE.name
    bad_output = rule("ka.verb=x").replace("o %ka.user.name", "o %ka.nope")
    assert refused(bad_output).code == ErrorCode.LOAD_ERR_COMPILE_OUTPUT.name
    appended = "- list: missing\n  items: [a]\n  override:\n    items: append\n"
    assert refused(appended).code == ErrorCode.LOAD_ERR_VALIDATE.name


# -- CLI: --format json and --falco-strict ---------------------------------------------------------


def eventd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventd", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_rules_check_json_reports_codes_and_strict_refuses(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(rule('ka.user.groups contains dev and ka.user.name = "<NA>"'))
    result = eventd("rules", "check", "--format", "json", str(path), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["successful"] is True
    assert {w["code"] for w in doc["warnings"]} == {"EVENTD_NOT_PORTABLE", "LOAD_UNSAFE_NA_CHECK"}
    for w in doc["warnings"]:
        assert w["file"] == str(path) and w["line"] == 3 and w["item"] == "rule 'R'" and w["text"] is not None
    strict = eventd("rules", "check", "--format", "json", "--falco-strict", str(path), cwd=ROOT)
    assert strict.returncode == 2
    (err,) = json.loads(strict.stdout)["errors"]
    assert err["code"] == "LOAD_ERR_COMPILE_CONDITION"
    assert err["text"] == "filter error: 'contains' operator not supported list filters"
    scan = eventd("scan", "--falco-strict", "-r", str(path), "-", cwd=ROOT)
    assert scan.returncode == 2 and "not supported list filters" in scan.stderr


# -- exceptions values and fields, after falco unit_tests/engine/test_rule_loader.cpp --------------


def exception_rule(value: str, field: str = "ka.user.name") -> str:
    exc = (
        f"  exceptions:\n    - name: e\n      fields: [{field}]\n      comps: [=]\n"
        f"      values:\n        - [{value}]\n"
    )
    return rule("ka.verb=create", extra=exc)


def compile_warnings(rs: RuleSet) -> list[str]:
    return [f.text for f in rs.findings if f.code is WarningCode.LOAD_COMPILE_CONDITION]


def test_exception_value_naming_a_field_warns() -> None:
    # test_rule_loader.cpp exceptions_values_rhs_field_ambiguous(_quoted, _space_quoted)
    for value, shown in (
        ("ka.target.name", "ka.target.name"),
        ('"ka.target.name "', "ka.target.name "),
        ('"ka.req.pod.containers.image[0]"', "ka.req.pod.containers.image[0]"),  # name[arg] too
    ):
        rs = load(exception_rule(value))
        assert compile_warnings(rs) == [f"'{shown}' may be a valid field misused as a const string value"]


def test_exception_value_with_a_transformer_compares_with_the_field() -> None:
    # test_rule_loader.cpp exceptions_values_rhs_transformer: `name = toupper(other)`, no warning
    rs = load(exception_rule("toupper(ka.target.name)"))
    assert compile_warnings(rs) == []
    assert rs.rules[0].predicate(audit(user="WEB", name="web")) is False
    assert rs.rules[0].predicate(audit(user="bob", name="web")) is True


def test_exception_value_with_a_spaced_transformer_is_a_string_and_warns() -> None:
    # test_rule_loader.cpp exceptions_values_transformer_space(_quoted)
    rs = load(exception_rule("toupper( ka.target.name)"))
    assert compile_warnings(rs) == [
        "'toupper( ka.target.name)' may be a valid field transformer misused as a const string value"
    ]


@pytest.mark.parametrize("field", ["tolower(ka.user.name)", '"tolower( ka.user.name)"'])
def test_exception_field_transformers_load_without_warnings(field: str) -> None:
    # test_rule_loader.cpp exceptions_fields_transformer(_quoted, _space_quoted)
    rs = load(exception_rule("alice", field=field))
    assert rs.findings == ()
    assert rs.rules[0].predicate(audit(user="Alice")) is False


def test_daemon_rules_strict_refuses_extensions(tmp_path: Path) -> None:
    import dataclasses

    from eventd.config import Config
    from eventd.daemon import build_matcher

    portable, extended = tmp_path / "p.yaml", tmp_path / "e.yaml"
    portable.write_text(rule("ka.user.groups intersects (dev)"))
    extended.write_text(rule("ka.user.groups contains de"))
    strict = dataclasses.replace(Config(), rules_strict=True)
    build_matcher(dataclasses.replace(strict, rules=(str(portable),)))
    with pytest.raises(RuleError, match="operator not supported list filters"):
        build_matcher(dataclasses.replace(strict, rules=(str(extended),)))
    build_matcher(dataclasses.replace(Config(), rules=(str(extended),)))  # not strict: loads


# -- libs test/filter_parser.ut.cpp TEST(parser, parse_str), transcribed ---------------------------

PARSE_STR_ACCEPT = [
    "test.str = testval",
    "test.str = 0a!@#456:/\\.;!$%^&*[]{}|",
    'test.str = ""',
    "test.str = ''",
    'test.str = "0a!@#456:/.; !$%^&*[]{}|"',
    'test.str = "test value"',
    "test.str = 'test value'",
    "test.str[0a!@#456:/\\.;!$%^&*(){}|] = testval",
    "test.str[aaaa1] = a",
    "test.str[1234] = a",
    "test.str[+0.25e+10] = a",
    'test.str[""] = empty',
    "test.str['a aa'] = a",
    'test.str["test \\"with\\"escaping"] = a',
    'test.str = "escape double quote \\" "',
    "test.str = 'escape single quote \\' '",
    "test.str = 'multiple escape single quote \\' \\\\''",
    "test.str = 'mixed \"'",
    'test.str = "mixed \'"',
    'test.str = "bad escape \\ " ',
]
PARSE_STR_REJECT = [
    "test.str = a,",
    "test.str = a=",
    "test.str = a('\")",
    "test.str = '",
    'test.str = "',
    "test.str = '\"",
    "test.str = \"'",
    "test.str = missing start quote",
    "test.str = 'missing end quote",
    'test.str = "broken escape double quote""',
    "test.str = 'broken escape single quote''",
    'test.str = "mixed \\\'"',
    "test.str = 'mixed \\\"'",
    "test.str[0a!@#456:/\\.;!$%^&*[]{}] = testval",
    "test.str[] = testval",
    "test.str[[] = testval",
    "test.str[]] = testval",
    "test.str['''] = a",
    'test.str[aaa"] = a',
    "test.str[   test   ] = testval",
    "test.str[ = testval",
]


@pytest.mark.parametrize("text", PARSE_STR_ACCEPT)
def test_libsinsp_parse_str_accepts(text: str) -> None:
    parse_condition(text)


@pytest.mark.parametrize("text", PARSE_STR_REJECT)
def test_libsinsp_parse_str_rejects(text: str) -> None:
    with pytest.raises(ConditionSyntaxError):
        parse_condition(text)


def test_escaped_values_read_as_libsinsp_reads_them() -> None:
    # the accepted strings above, with the values libsinsp's unescape_str gives them
    assert parse_condition("test.str = 'multiple escape single quote \\' \\\\''").value == (  # type: ignore[union-attr]
        "multiple escape single quote ' \\'"
    )
    assert parse_condition('test.str = "bad escape \\ " ').value == "bad escape \\"  # type: ignore[union-attr]
    assert parse_condition('test.str["test \\"with\\"escaping"] = a').field.arg == 'test "with"escaping'  # type: ignore[union-attr]
