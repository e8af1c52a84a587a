"""Rule exceptions refused with Falco's exact message, key and line (issue 17).

``test_loader_errors.py`` matches each message as a substring of the error
line (as users do), which lets a mangled message through; for the errors of
``engine/rule_exceptions.py`` the message is Falco's whole text, so it is compared
whole here.  Messages follow Falco's rule loader
(userspace/engine/rule_loader_reader.cpp and rule_loader_collector.cpp in
falcosecurity/falco: "Value must be non-empty", "Fields and values lists must
have equal length", ...).
"""

from __future__ import annotations

import textwrap

import pytest

from eventd.engine.errors import RuleError
from eventd.engine.loader import load_rules_text
from eventd.engine.parser import parse_condition
from tests.test_loader_errors import CASES, Case

HEAD = """\
- rule: R
  desc: d
  condition: ka.verb=create
  output: o
  priority: WARNING
  source: k8s_audit
"""

EXCEPTION_CASES = [c for c in CASES if c.id.startswith("exception")]


def refusal(text: str) -> RuleError:
    with pytest.raises(RuleError) as info:
        load_rules_text([("rules.yaml", text)])
    return info.value


def test_the_exception_cases_are_there() -> None:
    assert len(EXCEPTION_CASES) >= 15


@pytest.mark.parametrize("case", EXCEPTION_CASES, ids=lambda c: c.id)
def test_exception_errors_carry_falcos_whole_message(case: Case) -> None:
    err = refusal(textwrap.dedent(case.text))
    assert err.message == case.message
    if case.key is not None:
        assert err.key == case.key


@pytest.mark.parametrize(
    ("exception", "line", "key"),
    [
        ("    fields: [ka.user.name]\n    values: [[alice], ['']]\n", 10, "exception 'e'"),
        ("    fields: ''\n    values: [a]\n", 9, "exception 'e'"),
        ("    fields: [ka.user.name]\n    comps: ''\n    values: [[a]]\n", 10, "exception 'e'"),
    ],
)
def test_an_empty_string_in_an_exception_is_refused_where_it_stands(
    exception: str, line: int, key: str
) -> None:
    text = HEAD + "  exceptions:\n  - name: e\n" + exception
    err = refusal(text)
    assert (err.message, err.key, err.line) == ("Value must be non-empty", key, line)


def test_a_scalar_row_for_list_fields_is_refused_whatever_its_length() -> None:
    """A row must be a list; a two-letter scalar for two fields is not one."""
    text = HEAD + "  exceptions:\n  - name: e\n    fields: [ka.user.name, ka.verb]\n    values: [ab]\n"
    assert refusal(text).message == "Fields and values lists must have equal length"


def test_a_scalar_exception_without_values_adds_nothing() -> None:
    text = HEAD + "  exceptions:\n  - name: e\n    fields: ka.user.name\n    values: []\n"
    [rule] = load_rules_text([("rules.yaml", text)]).rules
    assert rule.condition == parse_condition("(ka.verb=create)")


def test_an_exception_added_by_an_append_checks_its_fields() -> None:
    text = (
        HEAD
        + "- rule: R\n  append: true\n  exceptions:\n  - name: new\n"
        + "    fields: [ka.nope]\n    values: [[x]]\n"
    )
    err = refusal(text)
    assert err.message == "'ka.nope' is not a supported filter field"


# ------------------------------------------------- yaml-cpp's reading of odd entries
#
# Falco 0.43.0, userspace/engine/rule_loader_reader.cpp,
# ``decode_exception_info_entry``: a node that is neither a scalar nor a
# sequence (a null) leaves the entry empty (item "", not a list), and a
# sequence's ``item`` is "" too.  rule_loader_collector.cpp then names a
# nested field or comparison by that empty item ("'' is not a supported
# ..."), and rule_loader_compiler.cpp's ``build_rule_exception_infos``
# writes empty items into the condition, which then does not compile.

NULL_IN_A_ROW = """\
  exceptions:
    - name: e
      fields: [ka.user.name, ka.target.namespace]
      comps: [=, in]
      values:
        - [alice, VALUE]
"""


def test_a_null_in_a_row_reads_as_empty_text_and_the_condition_does_not_compile() -> None:
    row = NULL_IN_A_ROW.replace("comps: [=, in]", "comps: [=, =]")
    err = refusal(HEAD + row.replace("VALUE", "~"))
    assert "condition" in str(err) and "found ')'" in str(err)  # "ka.user.name = alice and ... = )"
    # With text in its place, the same row loads: only the null's reading differs.
    load_rules_text([("rules.yaml", HEAD + row.replace("VALUE", "dev"))])


def test_a_null_inside_a_list_value_reads_as_empty_text() -> None:
    err = refusal(HEAD + NULL_IN_A_ROW.replace("VALUE", "[dev, ~]"))
    assert "condition" in str(err) and "found ')'" in str(err)  # "... in (dev, )"
    load_rules_text([("rules.yaml", HEAD + NULL_IN_A_ROW.replace("VALUE", "[dev, prod]"))])


@pytest.mark.parametrize(
    ("fields", "comps", "message"),
    [
        ("[ka.user.name, [ka.verb]]", "[=, =]", "'' is not a supported filter field"),
        ("[ka.user.name, ka.verb]", "[=, [in]]", "'' is not a supported comparison operator"),
    ],
)
def test_a_nested_list_where_a_name_is_expected_is_named_as_empty_text(
    fields: str, comps: str, message: str
) -> None:
    text = HEAD + (
        "  exceptions:\n"
        f"    - name: e\n      fields: {fields}\n      comps: {comps}\n"
        "      values:\n        - [alice, create]\n"
    )
    assert refusal(text).message == message


def test_a_nested_list_inside_a_list_value_is_empty_text_in_the_condition() -> None:
    err = refusal(HEAD + NULL_IN_A_ROW.replace("VALUE", "[dev, [x]]"))
    assert "condition" in str(err) and "found ')'" in str(err)  # "... in (dev, )"


def test_a_null_value_of_a_single_field_reads_as_empty_text() -> None:
    values = "  exceptions:\n    - name: e\n      fields: ka.user.name\n      values: [alice, VALUE]\n"
    err = refusal(HEAD + values.replace("VALUE", "~"))
    assert "condition" in str(err) and "found ')'" in str(err)  # "ka.user.name in (alice, )"
    load_rules_text([("rules.yaml", HEAD + values.replace("VALUE", "bob"))])
