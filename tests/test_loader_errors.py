"""Every way a rules file is refused: message, file, line, item and key.

Each case marks the line the error must point at with ``#<``.  A refused
file must never yield a partial rule set, so every case goes through the
public loader and must raise.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import pytest

from eventd.engine.errors import ConditionSyntaxError, FieldError, RuleError
from eventd.engine.load_result import (
    ERROR_NO_PREVIOUS_LIST,
    ERROR_NO_PREVIOUS_MACRO,
    ERROR_NO_PREVIOUS_RULE_APPEND,
    ERROR_NO_PREVIOUS_RULE_REPLACE,
    ERROR_OVERRIDE_APPEND,
)
from eventd.engine.loader import load_rules_text

RULE = """
- rule: R
  desc: d
  condition: ka.verb=create
  output: o %ka.user.name
  priority: WARNING
  source: k8s_audit
"""


@dataclass
class Case:
    id: str
    text: str
    message: str
    item: str | None
    key: str | None = None
    kind: type[RuleError] = RuleError


CASES = [
    # ---- YAML and document shape
    Case("yaml-syntax", "- list: a\n  items: [x, y\n- list: b  #<\n", "YAML syntax error", None),
    Case("doc-is-map", "list: a  #<\nitems: [x]\n", "Rules content is not yaml array of objects", None),
    Case("doc-is-scalar", "just text  #<\n", "Rules content is not yaml", None),
    Case(
        "item-not-map", "- list: a\n  items: [x]\n- [1, 2]  #<\n", "Each element should be a yaml", "item #2"
    ),
    Case("recursive-alias", "- &a [*a]  #<\n", "recursive YAML alias", None),
    # ---- scalar decoding
    Case(
        "missing-key",
        RULE.replace("  desc: d\n", "").replace("- rule: R", "- rule: R  #<"),
        "Item has no mapping for key 'desc'",
        "rule 'R'",
    ),
    Case(
        "empty-value",
        RULE.replace("  output: o %ka.user.name", "  output:  #<"),
        "Mapping for key 'output' is empty",
        "rule 'R'",
    ),
    Case(
        "not-scalar",
        RULE.replace("  desc: d", "  desc: [a, b]  #<"),
        "Value is not a scalar value",
        "rule 'R'",
        "desc",
    ),
    Case(
        "empty-string",
        RULE.replace("  desc: d", '  desc: ""  #<'),
        "Value must be non-empty",
        "rule 'R'",
        "desc",
    ),
    Case(
        "bad-bool", RULE + "  enabled: maybe  #<\n", "Can't decode YAML scalar value", "rule 'R'", "enabled"
    ),
    Case("tags-not-seq", RULE + "  tags: k8s  #<\n", "Value is not a sequence", "rule 'R'", "tags"),
    Case(
        "items-not-scalar",
        "- list: a\n  items:\n    - x\n    - [y]  #<\n",
        "sequence value is not scalar",
        "list 'a'",
        "items",
    ),
    Case("list-no-items", "- list: a  #<\n", "Item has no mapping for key 'items'", "list 'a'"),
    Case(
        "bad-priority",
        RULE.replace("priority: WARNING", "priority: crit  #<"),
        "Invalid priority",
        "rule 'R'",
        "priority",
    ),
    Case(
        "unnamed-rule",
        "- list: a\n  items: []\n- rule:  #<\n  desc: x\n",
        "Mapping for key 'rule' is empty",
        "item #2",
    ),
    # Invalid list and macro names are warnings in Falco: tests/test_falco_loading.py.
    # ---- versions
    Case(
        "engine-too-new",
        "- required_engine_version: 99  #<\n",
        "Rules require engine version 0.99.0, but engine version is 0.58.0",
        "item #1",
        "required_engine_version",
    ),
    Case(
        "engine-other-major",
        "- required_engine_version: 1.2.0  #<\n",
        "Rules require engine version 1.2.0",
        "item #1",
        "required_engine_version",
    ),
    Case(
        "engine-not-semver",
        "- required_engine_version: latest  #<\n",
        "Unable to parse engine version 'latest' as a semver string",
        "item #1",
        "required_engine_version",
    ),
    Case(
        "plugins-not-seq",
        "- required_plugin_versions: k8saudit  #<\n",
        "Value of required_plugin_versions must be a sequence",
        "item #1",
        "required_plugin_versions",
    ),
    Case(
        "plugin-not-map",
        "- required_plugin_versions:\n  - k8saudit  #<\n",
        "Plugin version must be a mapping",
        "item #1",
        "required_plugin_versions",
    ),
    Case(
        "plugin-no-version",
        "- required_plugin_versions:\n  - name: json  #<\n",
        "Item has no mapping for key 'version'",
        "item #1: plugin 'json'",
    ),
    Case(
        "plugin-alternatives-not-seq",
        "- required_plugin_versions:\n  - name: json  #<\n    version: 0.1.0\n    alternatives: x\n",
        "Value of plugin version alternatives must be a sequence",
        "item #1",
        "required_plugin_versions",
    ),
    Case(
        "plugin-alternative-not-map",
        "- required_plugin_versions:\n  - name: json\n    version: 0.1.0\n    alternatives:\n      - x  #<\n",
        "Plugin version alternative must be a mapping",
        "item #1",
        "required_plugin_versions",
    ),
    Case(
        "plugin-bad-version",
        "- required_plugin_versions:\n  - name: json  #<\n    version: one\n",
        "Invalid required version 'one' for plugin 'json'",
        "item #1",
        "required_plugin_versions",
    ),
    Case(
        "plugin-duplicate-alternative",
        "- required_plugin_versions:\n  - name: json  #<\n    version: 0.1.0\n    alternatives:\n"
        "      - name: json\n        version: 0.2.0\n",
        "Defined multiple alternative version requirements for plugin 'json'",
        "item #1",
        "required_plugin_versions",
    ),
    Case(
        "plugin-unknown",
        "- required_plugin_versions:\n  - name: cloudtrail  #<\n    version: 0.1.0\n",
        "Plugin 'cloudtrail' is required by the rules but is not built into eventd",
        "item #1",
        "required_plugin_versions",
    ),
    Case(
        "plugin-unknown-alternatives",
        "- required_plugin_versions:\n  - name: okta  #<\n    version: 0.1.0\n    alternatives:\n"
        "      - name: github\n        version: 0.1.0\n",
        "None of the plugins 'okta', 'github' required by the rules is built into eventd",
        "item #1",
        "required_plugin_versions",
    ),
    Case(
        "plugin-incompatible",
        "- required_plugin_versions:\n  - name: k8saudit  #<\n    version: 1.0.0\n",
        "plugin 'k8saudit' version 0.99.0 is not compatible with 1.0.0",
        "item #1",
        "required_plugin_versions",
    ),
    # ---- append / override
    Case(
        "list-append-and-override",
        "- list: a\n  items: [x]\n- list: a  #<\n  items: [y]\n  append: true\n"
        "  override:\n    items: append\n",
        ERROR_OVERRIDE_APPEND,
        "list 'a'",
    ),
    Case(
        "macro-append-and-override",
        "- macro: m\n  condition: ka.verb=get\n- macro: m  #<\n  condition: or ka.verb=list\n  append: true\n"
        "  override:\n    condition: append\n",
        ERROR_OVERRIDE_APPEND,
        "macro 'm'",
    ),
    Case(
        "rule-append-and-override",
        RULE
        + "- rule: R  #<\n  condition: and ka.verb=get\n  append: true\n  override:\n    condition: append\n",
        ERROR_OVERRIDE_APPEND,
        "rule 'R'",
    ),
    Case(
        "list-append-undefined",
        "- list: a  #<\n  items: [x]\n  append: true\n",
        ERROR_NO_PREVIOUS_LIST,
        "list 'a'",
    ),
    Case(
        "list-override-append-undefined",
        "- list: a  #<\n  items: [x]\n  override:\n    items: append\n",
        ERROR_NO_PREVIOUS_LIST,
        "list 'a'",
    ),
    Case(
        "macro-append-undefined",
        "- macro: m  #<\n  condition: ka.verb=get\n  append: true\n",
        ERROR_NO_PREVIOUS_MACRO,
        "macro 'm'",
    ),
    Case(
        "rule-append-undefined",
        "- rule: R  #<\n  condition: and ka.verb=get\n  append: true\n",
        ERROR_NO_PREVIOUS_RULE_APPEND,
        "rule 'R'",
    ),
    Case(
        "rule-override-append-undefined",
        "- rule: R  #<\n  condition: and ka.verb=get\n  override:\n    condition: append\n",
        ERROR_NO_PREVIOUS_RULE_APPEND,
        "rule 'R'",
    ),
    Case(
        "rule-replace-undefined",
        "- rule: R  #<\n  priority: INFO\n  override:\n    priority: replace\n",
        ERROR_NO_PREVIOUS_RULE_REPLACE,
        "rule 'R'",
    ),
    Case(
        "override-append-not-allowed",
        RULE + "- rule: R\n  priority: INFO\n  override:\n    priority: append  #<\n",
        "Key 'priority' cannot be appended to, use 'replace' instead",
        "rule 'R'",
        "override",
    ),
    Case(
        "override-replace-not-allowed",
        RULE + "- rule: R\n  source: falco\n  override:\n    source: replace  #<\n",
        "Key 'source' cannot be replaced",
        "rule 'R'",
        "override",
    ),
    Case(
        "override-bad-operation",
        RULE + "- rule: R\n  desc: x\n  override:\n    desc: merge  #<\n",
        "Invalid override operation for key 'desc': 'merge'. Allowed values are: append replace",
        "rule 'R'",
        "override",
    ),
    Case(
        "override-not-map",
        RULE + "- rule: R\n  desc: x\n  override: desc  #<\n",
        "Value of 'override' must be a mapping",
        "rule 'R'",
        "override",
    ),
    Case(
        "override-key-missing",
        RULE + "- rule: R  #<\n  desc: x\n  override:\n    output: append\n",
        "An append override for 'output' was specified but 'output' is not defined",
        "rule 'R'",
    ),
    Case(
        "override-replace-key-missing",
        RULE + "- rule: R  #<\n  desc: x\n  override:\n    tags: replace\n",
        "A replace override for 'tags' was specified but 'tags' is not defined",
        "rule 'R'",
    ),
    Case(
        "override-unexpected-key",
        RULE + "- rule: R\n  desc: x  #<\n  output: more\n  override:\n    output: append\n",
        "Unexpected key 'desc': no corresponding entry under 'override' is defined.",
        "rule 'R'",
        "desc",
    ),
    Case(
        "legacy-append-empty",
        RULE + "- rule: R  #<\n  append: true\n",
        "Appended rule must have exceptions or condition property",
        "rule 'R'",
    ),
    Case(
        "replace-nothing",
        RULE + "- rule: R  #<\n  capture: true\n  override:\n    capture: replace\n",
        "The rule must have at least one field that can be replaced",
        "rule 'R'",
    ),
    Case(
        "enabled-only-undefined",
        "- rule: R  #<\n  enabled: false\n",
        "Rule has 'enabled' key but no rule by that name already exists",
        "rule 'R'",
    ),
    Case(
        "enabled-only-missing",
        RULE + "- rule: R  #<\n  tags: [x]\n",
        "Item has no mapping for key 'enabled'",
        "rule 'R'",
    ),
    Case(
        "redefined-other-source",
        RULE + RULE.replace("k8s_audit", "falco").replace("- rule: R", "- rule: R  #<"),
        "Rule has been re-defined with a different source",
        "rule 'R'",
    ),
    # ---- exceptions: shape and validation
    Case(
        "exceptions-not-seq",
        RULE + "  exceptions: none  #<\n",
        "Rule exceptions must be a sequence",
        "rule 'R'",
        "exceptions",
    ),
    Case(
        "exception-not-map",
        RULE + "  exceptions:\n    - none  #<\n",
        "Rule exception must be a mapping",
        "rule 'R'",
        "exceptions",
    ),
    Case(
        "exception-no-name",
        RULE + "  exceptions:\n    - fields: ka.verb  #<\n",
        "Item has no mapping for key 'name'",
        "rule 'R': exceptions",
    ),
    # A repeated exception name is a warning in Falco: tests/test_falco_loading.py.
    Case(
        "exception-no-fields",
        RULE + "  exceptions:\n    - name: e  #<\n      values: [a]\n",
        "Item has no mapping for key 'fields'",
        "rule 'R'",
        "exception 'e'",
    ),
    Case(
        "exception-empty-fields",
        RULE + "  exceptions:\n    - name: e  #<\n      fields: []\n",
        "Rule exception item must have fields property with a list of fields",
        "rule 'R'",
        "exception 'e'",
    ),
    Case(
        "exception-values-not-seq",
        RULE + "  exceptions:\n    - name: e\n      fields: ka.verb\n      values: get  #<\n",
        "Rule exception values must be a sequence",
        "rule 'R'",
        "exception 'e'",
    ),
    Case(
        "exception-comps-length",
        RULE + "  exceptions:\n    - name: e  #<\n      fields: [ka.verb, ka.uri]\n      comps: [=]\n",
        "Fields and comps lists must have equal length",
        "rule 'R'",
        "exception 'e'",
    ),
    Case(
        "exception-bad-comp",
        RULE + "  exceptions:\n    - name: e  #<\n      fields: [ka.verb]\n      comps: [like]\n",
        "'like' is not a supported comparison operator",
        "rule 'R'",
        "exception 'e'",
    ),
    Case(
        "exception-unknown-field",
        RULE + "  exceptions:\n    - name: e  #<\n      fields: [ka.nope]\n",
        "'ka.nope' is not a supported filter field",
        "rule 'R'",
        "exception 'e'",
    ),
    Case(
        "exception-unknown-scalar-field",
        RULE + "  exceptions:\n    - name: e  #<\n      fields: proc.name\n",
        "'proc.name' is not a supported filter field",
        "rule 'R'",
        "exception 'e'",
    ),
    Case(
        "exception-scalar-fields-list-comps",
        RULE + "  exceptions:\n    - name: e  #<\n      fields: ka.verb\n      comps: [in]\n",
        "Fields and comps must both be strings",
        "rule 'R'",
        "exception 'e'",
    ),
    Case(
        "exception-scalar-fields-bad-comp",
        RULE + "  exceptions:\n    - name: e  #<\n      fields: ka.verb\n      comps: =\n",
        "When fields is a single value, comps must be one of (in, pmatch, intersects)",
        "rule 'R'",
        "exception 'e'",
    ),
    Case(
        "exception-append-new-without-fields",
        RULE + "- rule: R\n  exceptions:\n    - name: e  #<\n      values: [a]\n  override:\n"
        "    exceptions: append\n",
        "Rule exception must have fields property with a list of fields",
        "rule 'R'",
        "exception 'e'",
    ),
    Case(
        "exception-append-new-without-values",
        RULE + "- rule: R\n  exceptions:\n    - name: e  #<\n      fields: ka.verb\n      values: []\n"
        "  override:\n    exceptions: append\n",
        "Rule exception must have values property with a list of values",
        "rule 'R'",
        "exception 'e'",
    ),
    Case(
        "exception-append-fields",
        RULE + "  exceptions:\n    - name: e\n      fields: ka.verb\n"
        "- rule: R\n  exceptions:\n    - name: e  #<\n      fields: ka.uri\n      values: [x]\n"
        "  override:\n    exceptions: append\n",
        "Can not append exception fields to existing exception, only values",
        "rule 'R'",
        "exception 'e'",
    ),
    Case(
        "exception-append-comps",
        RULE + "  exceptions:\n    - name: e\n      fields: ka.verb\n"
        "- rule: R\n  exceptions:\n    - name: e  #<\n      comps: pmatch\n      values: [x]\n"
        "  override:\n    exceptions: append\n",
        "Can not append exception comps to existing exception, only values",
        "rule 'R'",
        "exception 'e'",
    ),
    Case(
        "exception-scalar-fields-list-value",
        RULE + "  exceptions:\n    - name: e  #<\n      fields: ka.verb\n      values: [[get, list]]\n",
        "Expected values array to contain a list of strings",
        "rule 'R'",
        "exception 'e'",
    ),
    Case(
        "exception-values-length",
        RULE + "  exceptions:\n    - name: e  #<\n      fields: [ka.verb, ka.uri]\n      values: [[get]]\n",
        "Fields and values lists must have equal length",
        "rule 'R'",
        "exception 'e'",
    ),
    Case(
        "exception-scalar-row",
        RULE + "  exceptions:\n    - name: e  #<\n      fields: [ka.verb]\n      values: [get]\n",
        "Fields and values lists must have equal length",
        "rule 'R'",
        "exception 'e'",
    ),
    # ---- compiling conditions and outputs
    Case(
        "condition-syntax",
        RULE.replace("condition: ka.verb=create", "condition: (ka.verb=create))  #<"),
        "(at offset",
        "rule 'R'",
        "condition",
        ConditionSyntaxError,
    ),
    Case(
        "macro-syntax",
        "- macro: m\n  condition: ka.verb in (a  #<\n",
        "(at offset",
        "macro 'm'",
        "condition",
        ConditionSyntaxError,
    ),
    Case(
        "rule-undefined-macro",
        RULE.replace("condition: ka.verb=create", "condition: ka.verb=create and nope  #<"),
        "Undefined macro 'nope' used in filter.",
        "rule 'R'",
        "condition",
    ),
    Case(
        "macro-invisible-macro",
        "- macro: a\n  condition: b  #<\n- macro: b\n  condition: ka.verb=get\n",
        "Undefined macro 'b' used in filter.",
        "macro 'a'",
        "condition",
    ),
    Case(
        "macro-self-reference",
        "- macro: a\n  condition: ka.verb=get or a  #<\n",
        "Undefined macro 'a' used in filter.",
        "macro 'a'",
        "condition",
    ),
    Case(
        "macro-loop",
        "- macro: a\n  condition: ka.verb=get\n- macro: b\n  condition: a\n- macro: a\n  condition: b  #<\n",
        "reference loop in macro",
        "macro 'a'",
        "condition",
    ),
    Case(
        "unknown-field",
        RULE.replace("condition: ka.verb=create", "condition: ka.nope=create  #<"),
        "ka.nope",
        "rule 'R'",
        "condition",
        FieldError,
    ),
    Case(
        "list-field-operator",
        RULE.replace("condition: ka.verb=create", "condition: ka.user.groups=x  #<"),
        "filter error: '=' operator not supported list filters",
        "rule 'R'",
        "condition",
        FieldError,
    ),
    Case(
        "unknown-output-field",
        RULE.replace("output: o %ka.user.name", "output: o %ka.nope  #<"),
        "ka.nope",
        "rule 'R'",
        "output",
        FieldError,
    ),
    Case(
        "output-ends-with-percent",
        RULE.replace("output: o %ka.user.name", "output: o %ka.user.name %  #<"),
        "formatting cannot end with a %",
        "rule 'R'",
        "output",
    ),
    Case(
        "disabled-rule-still-compiled",
        RULE.replace("condition: ka.verb=create", "condition: ka.nope=create  #<") + "  enabled: false\n",
        "ka.nope",
        "rule 'R'",
        "condition",
        FieldError,
    ),
    Case(
        "appended-condition-broken",
        RULE + "- rule: R\n  condition: and (  #<\n  override:\n    condition: append\n",
        "(at offset",
        "rule 'R'",
        "condition",
        ConditionSyntaxError,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused(case: Case) -> None:
    text = textwrap.dedent(case.text)
    marked = [i + 1 for i, line in enumerate(text.splitlines()) if line.endswith("#<")]
    assert len(marked) == 1, "each case marks exactly one line"
    with pytest.raises(case.kind) as info:
        load_rules_text([("rules.yaml", text)])
    err = info.value
    assert case.message in str(err)
    assert (err.file, err.line, err.item) == ("rules.yaml", marked[0], case.item)
    if case.key is not None:
        assert err.key == case.key
    prefix = f"rules.yaml:{marked[0]}: " + (f"{case.item}: " if case.item else "")
    assert str(err).startswith(prefix)


def test_condition_error_names_rule_line_key_and_offset() -> None:
    text = textwrap.dedent(
        """\
        - rule: Write below etc
          desc: d
          output: o
          priority: ERROR
          source: k8s_audit
          condition: ka.verb=create and ka.uri=x)
        """
    )
    with pytest.raises(ConditionSyntaxError) as info:
        load_rules_text([("rules.yaml", text)])
    msg = str(info.value)
    assert msg.startswith("rules.yaml:6: rule 'Write below etc': condition: ")
    assert info.value.offset is not None
    assert msg.endswith(f"(at offset {info.value.offset})")


def test_error_in_second_file_names_that_file() -> None:
    good = RULE
    bad = "- list: a\n  items: [x]\n  append: true\n"
    with pytest.raises(RuleError) as info:
        load_rules_text([("one.yaml", good), ("two.yaml", bad)])
    assert info.value.file == "two.yaml"


def test_file_must_compile_without_later_files() -> None:
    """Falco compiles after every file: a macro defined only later is undefined."""
    first = RULE.replace("condition: ka.verb=create", "condition: later_macro")
    second = "- macro: later_macro\n  condition: ka.verb=create\n"
    with pytest.raises(RuleError, match="Undefined macro 'later_macro'") as info:
        load_rules_text([("one.yaml", first), ("two.yaml", second)])
    assert info.value.file == "one.yaml"
    load_rules_text([("both.yaml", second + first)])  # fine in one file, in order


def test_yaml_error_reports_file_and_line() -> None:
    with pytest.raises(RuleError) as info:
        load_rules_text([("broken.yaml", "- rule: x\n  desc: 'unterminated\n")])
    assert info.value.file == "broken.yaml"
    assert info.value.line is not None
    assert str(info.value).startswith(f"broken.yaml:{info.value.line}: YAML syntax error")
