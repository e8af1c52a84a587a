"""Rule exceptions: the generated condition, compared as trees with hand-written ones."""

from __future__ import annotations

import re
import textwrap

import pytest

from eventd.engine.ast import Node
from eventd.engine.errors import RuleError
from eventd.engine.fields import default_registry
from eventd.engine.load_result import WarningCode
from eventd.engine.loader import load_rules_text
from eventd.engine.parser import parse_condition
from eventd.engine.rule_exceptions import ExceptionDef, expand_condition, read_exceptions, validate
from eventd.engine.yamlsrc import Map, Where, load_documents

HEAD = """
- rule: R
  desc: d
  condition: ka.verb=create
  output: o
  priority: WARNING
  source: k8s_audit
"""


def condition_of(*extra_items: str, exceptions: str) -> Node:
    text = HEAD + textwrap.indent(textwrap.dedent(exceptions).strip("\n"), "  ") + "\n"
    text += "".join(textwrap.dedent(e) for e in extra_items)
    return load_rules_text([("r.yaml", text)]).rules[0].condition


def expected(text: str) -> Node:
    return parse_condition(text)


def test_list_fields_default_to_equality_one_group_per_row() -> None:
    got = condition_of(
        exceptions="""
        exceptions:
          - name: e
            fields: [ka.user.name, ka.target.namespace]
            values:
              - [alice, dev]
              - [bob, prod]
        """
    )
    assert got == expected(
        "(ka.verb=create) and not ((ka.user.name = alice and ka.target.namespace = dev)"
        " or (ka.user.name = bob and ka.target.namespace = prod))"
    )


def test_scalar_fields_default_to_in_and_quote_items_with_spaces() -> None:
    got = condition_of(
        exceptions="""
        exceptions:
          - name: e
            fields: ka.user.name
            values: [alice, "jane doe", '"already quoted"']
        """
    )
    assert got == expected('(ka.verb=create) and not (ka.user.name in (alice, "jane doe", "already quoted"))')


def test_scalar_fields_with_pmatch() -> None:
    got = condition_of(
        exceptions="""
        exceptions:
          - name: e
            fields: ka.uri
            comps: pmatch
            values: [/healthz, /livez]
        """
    )
    assert got == expected("(ka.verb=create) and not (ka.uri pmatch (/healthz, /livez))")


def test_list_values_and_list_operators() -> None:
    got = condition_of(
        exceptions="""
        exceptions:
          - name: e
            fields: [ka.target.namespace, ka.req.pod.containers.image.repository, ka.user.name]
            comps: [in, intersects, =]
            values:
              - [kube-system, [quay.io/calico/node, "my image"], "ops bot"]
        """
    )
    assert got == expected(
        "(ka.verb=create) and not ((ka.target.namespace in (kube-system)"
        ' and ka.req.pod.containers.image.repository intersects (quay.io/calico/node, "my image")'
        ' and ka.user.name = "ops bot"))'
    )


def test_exceptions_without_values_contribute_nothing_and_several_chain() -> None:
    got = condition_of(
        exceptions="""
        exceptions:
          - name: empty
            fields: [ka.user.name]
          - name: one
            fields: ka.user.name
            values: [root]
          - name: two
            fields: [ka.verb]
            comps: [startswith]
            values: [[get]]
        """
    )
    assert got == expected(
        "(ka.verb=create) and not (ka.user.name in (root)) and not ((ka.verb startswith get))"
    )


def test_list_names_in_values_are_substituted_afterwards() -> None:
    got = condition_of(
        """
        - list: admins
          items: [root, "jane doe"]
        """,
        exceptions="""
        exceptions:
          - name: e
            fields: ka.user.name
            values: [admins]
        """,
    )
    assert got == expected('(ka.verb=create) and not (ka.user.name in (root, "jane doe"))')


def test_appended_values_join_the_named_exception_and_new_ones_are_added() -> None:
    got = condition_of(
        """
        - rule: R
          exceptions:
            - name: e
              values: [[bob, prod]]
            - name: f
              fields: ka.uri
              comps: pmatch
              values: [/metrics]
          override:
            exceptions: append
        """,
        exceptions="""
        exceptions:
          - name: e
            fields: [ka.user.name, ka.target.namespace]
            values: [[alice, dev]]
        """,
    )
    assert got == expected(
        "(ka.verb=create) and not ((ka.user.name = alice and ka.target.namespace = dev)"
        " or (ka.user.name = bob and ka.target.namespace = prod)) and not (ka.uri pmatch (/metrics))"
    )


def test_legacy_append_adds_exception_values() -> None:
    got = condition_of(
        """
        - rule: R
          append: true
          exceptions:
            - name: e
              values: [carol]
        """,
        exceptions="""
        exceptions:
          - name: e
            fields: ka.user.name
            values: [alice]
        """,
    )
    assert got == expected("(ka.verb=create) and not (ka.user.name in (alice, carol))")


def test_fields_with_arguments_and_transformers_are_accepted() -> None:
    got = condition_of(
        exceptions="""
        exceptions:
          - name: e
            fields:
              - jevt.value[/user/username]
              - tolower(ka.target.name)
            values: [[admin, web]]
        """
    )
    assert got == expected(
        "(ka.verb=create) and not ((jevt.value[/user/username] = admin and tolower(ka.target.name) = web))"
    )


# ----------------------------------------------------------------- the text itself


def _ex(yaml_text: str) -> list[ExceptionDef]:
    doc = load_documents(textwrap.dedent(yaml_text), "t.yaml")[0]
    assert isinstance(doc, Map)
    warnings: list[str] = []
    exs = read_exceptions(doc, Where("t.yaml", 1, "rule 'R'"), append=False, warnings=warnings)
    return [validate(e, default_registry().fieldset("k8s_audit")) for e in exs]


def test_expansion_parses_to_the_hand_written_condition() -> None:
    """Compared as parsed trees: the layout of the text (Falco's extra spaces)
    is not the contract, the condition it means is."""
    exs = _ex(
        """
        exceptions:
          - name: e
            fields: [ka.user.name, ka.verb]
            comps: [=, in]
            values: [[a b, get]]
          - name: f
            fields: ka.uri
            values: [/x, "/y z"]
        """
    )
    assert parse_condition(expand_condition("ka.verb=create", exs)) == expected(
        '(ka.verb=create) and not ((ka.user.name = "a b" and ka.verb in (get)))'
        ' and not (ka.uri in (/x, "/y z"))'
    )


@pytest.mark.parametrize("value", ["(get, list)", "get, list"])
def test_a_list_value_in_parentheses_is_not_wrapped_again(value: str) -> None:
    """A row value for a list operator may be written with or without its
    parentheses; both mean the list ``(get, list)``."""
    exs = _ex(
        f"""
        exceptions:
          - name: e
            fields: [ka.verb]
            comps: [in]
            values: [["{value}"]]
        """
    )
    assert parse_condition(expand_condition("ka.verb=create", exs)) == expected(
        "(ka.verb=create) and not ((ka.verb in (get, list)))"
    )


def test_validate_fills_default_comps() -> None:
    table, scalar = _ex(
        """
        exceptions:
          - name: t
            fields: [ka.user.name, ka.verb]
          - name: s
            fields: ka.user.name
        """
    )
    assert (table.comps, scalar.comps) == (("=", "="), "in")


def test_unknown_source_skips_field_check() -> None:
    doc = load_documents("exceptions: [{name: e, fields: [proc.name]}]\n", "t.yaml")[0]
    assert isinstance(doc, Map)
    (ex,) = read_exceptions(doc, Where("t.yaml", 1, "rule 'R'"), append=False, warnings=[])
    assert validate(ex, None).comps == ("=",)


def test_append_without_values_warns() -> None:
    rs = load_rules_text(
        [
            (
                "r.yaml",
                HEAD
                + "  exceptions: [{name: e, fields: ka.user.name, values: [a]}]\n"
                + "- rule: R\n  exceptions: [{name: e}]\n  override:\n    exceptions: append\n",
            )
        ]
    )
    assert any("exception 'e': Overriding/appending exception with no values" in w for w in rs.warnings)
    # falco rule_loader_reader.cpp: the warning's code is LOAD_APPEND_NO_VALUES
    assert [f.code for f in rs.findings] == [WarningCode.LOAD_APPEND_NO_VALUES]


@pytest.mark.parametrize("value", ["true", "0x1F", "1e3", "~x"])
def test_values_keep_their_yaml_text(value: str) -> None:
    """yaml-cpp keeps scalars as written; PyYAML would turn ``true`` into ``True``."""
    exs = _ex(f"exceptions: [{{name: e, fields: ka.user.name, values: [{value}]}}]\n")
    assert exs[0].values == (value,)


def test_nested_transformers_and_unknown_fields_in_exception_fields() -> None:
    got = condition_of(
        exceptions="""
        exceptions:
          - name: e
            fields: [toupper(tolower(ka.user.name))]
            values: [[ADMIN]]
        """
    )
    assert got == expected("(ka.verb=create) and not ((toupper(tolower(ka.user.name)) = ADMIN))")
    for bad in ("tolower(ka.no.such)", "nofunc(ka.user.name)", "ka.no.such"):
        with pytest.raises(RuleError, match=f"'{re.escape(bad)}' is not a supported filter field"):
            condition_of(exceptions=f"exceptions: [{{name: e, fields: ['{bad}'], values: [[x]]}}]")
