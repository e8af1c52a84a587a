"""``--infer-source`` / ``rules_infer_source`` and field-alias warnings.

Default behaviour follows Falco: a rule without ``source:`` is a syscall
rule (falcosecurity/falco ``userspace/engine/rule_loader_reader.cpp``
defaults ``source`` to "syscall"), skipped with "Unknown source syscall,
skipping" when no syscall source is loaded.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.engine.errors import RuleError
from eventd.engine.loader import load_rules_text
from eventd.engine.source_inference import infer_from_fields, infer_sources, with_inferred_sources
from eventd.engine.yamlsrc import load_documents
from eventd.events.model import FALCO, K8S_AUDIT, Event
from tests.support.builders import audit_event, falco_alert, pod


@pytest.mark.parametrize(
    ("fields", "source"),
    [
        (["ka.verb", "ka.target.resource"], K8S_AUDIT),
        (["ka.verb", "jevt.value"], K8S_AUDIT),
        (["ka.verb", "json.value"], K8S_AUDIT),
        (["falco.rule", "json.value"], FALCO),
        (["json.value"], None),  # both eventd sources have json.*
        (["ka.verb", "proc.name"], None),  # may be a syscall field
        (["container.image.repository"], None),  # a syscall field in Falco
        (["ka.verb", "falco.rule"], None),  # two sources
        ([], None),
    ],
)
def test_infer_from_fields(fields: list[str], source: str | None) -> None:
    assert infer_from_fields(fields) == source


RULES = """\
- macro: creating
  condition: ka.verb = create
- rule: Audit Without Source
  desc: d
  condition: creating and ka.target.resource = pods
  output: "user=%ka.user.name"
  priority: WARNING
- rule: Syscall Rule
  desc: d
  condition: proc.name = sh
  output: o
  priority: WARNING
- rule: Explicit
  desc: d
  condition: ka.verb = delete
  output: o
  priority: WARNING
  source: k8s_audit
- rule: Audit Without Source
  desc: appended
  condition: and ka.target.namespace = shop
  append: true
"""


def test_only_full_rules_without_source_whose_fields_agree_are_inferred() -> None:
    found = infer_sources(load_documents(RULES, "r.yaml"))
    assert [(i.rule, i.source, i.line) for i in found] == [("Audit Without Source", K8S_AUDIT, 3)]


def test_inference_is_pure() -> None:
    docs = load_documents(RULES, "r.yaml")
    before = repr(docs)
    out, notices = with_inferred_sources(docs, "r.yaml", infer_source=True)
    assert repr(docs) == before and out != docs
    assert [str(n) for n in notices] == [
        "r.yaml:3: rule 'Audit Without Source': source: none given; inferred 'k8s_audit' from its fields "
        "(--infer-source; Falco would skip it as a syscall rule)"
    ]


def test_default_keeps_falcos_behaviour_and_the_option_loads_the_rule() -> None:
    plain = load_rules_text([("r.yaml", RULES)])
    assert [r.name for r in plain.rules] == ["Explicit"]
    assert any("Audit Without Source': Unknown source syscall, skipping" in w for w in plain.warnings)
    inferred = load_rules_text([("r.yaml", RULES)], infer_source=True)
    assert [(r.name, r.source) for r in inferred.rules] == [
        ("Audit Without Source", K8S_AUDIT),
        ("Explicit", K8S_AUDIT),
    ]
    rule = inferred.rules[0]
    shop = Event(K8S_AUDIT, audit_event(namespace="shop", request=pod("nginx")))
    other = Event(K8S_AUDIT, audit_event(namespace="dev", request=pod("nginx")))
    assert rule.predicate(shop) and not rule.predicate(other)  # the append applied too


def test_source_name_used_as_macro_is_read_as_the_source_only_when_inferring() -> None:
    text = textwrap.dedent(
        """\
        - rule: Guide
          desc: d
          condition: k8s_audit and ka.verb=create
          output: o
          priority: WARNING
        """
    )
    explicit = text.replace("priority: WARNING", "priority: WARNING\n  source: k8s_audit")
    with pytest.raises(RuleError, match="Undefined macro 'k8s_audit'"):
        load_rules_text([("g.yaml", explicit)])
    loaded = load_rules_text([("g.yaml", text)], infer_source=True)
    assert [r.name for r in loaded.rules] == ["Guide"]
    assert any("'k8s_audit' is a source, not a macro" in w for w in loaded.warnings)
    # a file that defines the macro keeps its own definition
    own = "- macro: k8s_audit\n  condition: ka.verb = create\n" + text
    loaded = load_rules_text([("g.yaml", own)], infer_source=True)
    assert not any("is a source, not a macro" in w for w in loaded.warnings)


def test_falco_source_is_inferred_from_falco_fields() -> None:
    text = (
        '- rule: F\n  desc: d\n  condition: falco.rule = "Terminal shell in container"\n'
        "  output: o\n  priority: NOTICE\n"
    )
    loaded = load_rules_text([("f.yaml", text)], infer_source=True)
    assert [(r.name, r.source) for r in loaded.rules] == [("F", FALCO)]
    assert loaded.rules[0].predicate(Event(FALCO, falco_alert()))


def test_alias_use_always_warns() -> None:
    text = (
        "- rule: A\n  desc: d\n  condition: ka.target.image startswith quay.io/\n"
        "  output: img=%ka.target.image\n  priority: WARNING\n  source: k8s_audit\n"
    )
    loaded = load_rules_text([("a.yaml", text)])
    notes = [w for w in loaded.warnings if "alias of 'ka.req.pod.images.raw'" in w]
    assert len(notes) == 2 and notes[0].startswith("a.yaml:3: rule 'A': condition:")
    assert loaded.rules[0].predicate(Event(K8S_AUDIT, audit_event(request=pod("quay.io/x/y:1"))))


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=200), st.booleans())
def test_any_condition_text_never_raises_in_inference(cond: str, has_source: bool) -> None:
    item = {"rule": "R", "desc": "d", "condition": cond, "output": "o", "priority": "WARNING"}
    if has_source:
        item["source"] = "k8s_audit"
    docs = load_documents(json.dumps([item], ensure_ascii=False), "h.yaml")
    out, notices = with_inferred_sources(docs, "h.yaml", infer_source=True)
    assert len(out) == len(docs)
    assert all(n.file == "h.yaml" for n in notices)
