"""``eventd rules lint``: every check on a rule with the mistake and on its fixed form.

Upstream facts the checks rest on:

* a rule without ``source:`` is a syscall rule, and a rule of a source no
  plugin provides is skipped with "Unknown source ..., skipping"
  (falcosecurity/falco ``userspace/engine/rule_loader_collector.cpp``,
  ``define(... rule_info)``; ``unit_tests/engine/test_rule_loader.cpp``);
* list fields accept only ``exists``, ``in`` and ``intersects``, and ``in``
  holds when every value is in the set (falcosecurity/libs
  ``userspace/libsinsp/sinsp_filtercheck.cpp``; /work/shared/spec
  falco-rules-language.md section 8);
* ``pmatch`` matches path prefixes at ``/`` boundaries (libs
  ``userspace/libsinsp/utils.cpp`` ``path_prefix_search``).
"""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.lint import Severity, lint_texts, worst
from eventd.lint.findings import CATALOGUE


def codes(text: str, name: str = "rules.yaml") -> set[str]:
    return {f.code for f in lint_texts([(name, textwrap.dedent(text))])}


def findings(text: str, name: str = "rules.yaml"):
    return lint_texts([(name, textwrap.dedent(text))])


AUDIT_RULE = """
- rule: R
  desc: d
  condition: {cond}
  output: "o %ka.user.name"
  priority: WARNING
  {source}
"""


def audit(cond: str, source: str = "source: k8s_audit", extra: str = "") -> str:
    return extra + AUDIT_RULE.format(cond=cond, source=source)


IMAGE_OK = "ka.verb=create and ka.target.resource in (pods, deployments) and "

# (code, broken, fixed): each check's mistake and its correction.
CASES = [
    (
        "EVD001",
        audit("ka.verb=create and ka.target.resource=pods", source=""),
        audit("ka.verb=create and ka.target.resource=pods"),
    ),
    (
        "EVD002",
        audit(IMAGE_OK + "ka.req.pod.containers.imag exists"),
        audit(IMAGE_OK + "ka.req.pod.containers.image exists"),
    ),
    (
        "EVD003",
        audit(IMAGE_OK + "ka.target.image exists"),
        audit(IMAGE_OK + "ka.req.pod.images.name exists"),
    ),
    (
        "EVD004",
        audit("k8s_audit and ka.verb=create"),
        audit("ka.verb=create"),
    ),
    (
        "EVD005",
        audit('"ka.verb=create and ("'),
        audit("ka.verb=create"),
    ),
    (
        "EVD010",
        audit(IMAGE_OK + 'not ka.req.pod.containers.image[0] startswith "myregistry.io"'),
        audit(IMAGE_OK + 'not ka.req.pod.containers.image[0] startswith "myregistry.io/"'),
    ),
    (
        "EVD010",  # the same through a list used with glob
        audit(
            IMAGE_OK + "not ka.req.pod.containers.image[0] glob trusted",
            extra="- list: trusted\n  items: ['myregistry.io*']\n",
        ),
        audit(
            IMAGE_OK + "not ka.req.pod.containers.image[0] glob trusted",
            extra="- list: trusted\n  items: ['myregistry.io/*']\n",
        ),
    ),
    (
        "EVD011",
        audit(IMAGE_OK + 'not ka.req.pod.containers.image startswith "myregistry.io/"'),
        audit(IMAGE_OK + "not ka.req.pod.images.name pmatch (myregistry.io)"),
    ),
    (
        "EVD011",  # intersects against an allow-list: fires only when no image is trusted
        audit(
            IMAGE_OK + "not ka.req.pod.images.registry intersects (trusted_registries)",
            extra="- list: trusted_registries\n  items: [myregistry.io]\n",
        ),
        audit(
            IMAGE_OK + "not ka.req.pod.images.registry in (trusted_registries)",
            extra="- list: trusted_registries\n  items: [myregistry.io]\n",
        ),
    ),
    (
        "EVD012",
        audit(
            IMAGE_OK + "not ka.req.pod.containers.image.repository in (trusted)",
            extra="- list: trusted\n  items: [myregistry.io, gcr.io/my-project]\n",
        ),
        audit(
            IMAGE_OK + "not ka.req.pod.containers.image.registry in (trusted)",
            extra="- list: trusted\n  items: [myregistry.io]\n",
        ),
    ),
    (
        "EVD012",  # a path against the registry field
        audit(IMAGE_OK + "not ka.req.pod.images.registry in (gcr.io/my-project)"),
        audit(IMAGE_OK + "not ka.req.pod.images.name pmatch (gcr.io/my-project)"),
    ),
    (
        "EVD013",
        audit("ka.verb=create and ka.target.resource=pods and ka.req.pod.images.registry exists"),
        audit(IMAGE_OK + "ka.req.pod.images.registry exists"),
    ),
    (
        "EVD014",
        audit(IMAGE_OK + "ka.req.pod.containers.image in (myregistry.io/app:1.2)"),
        audit(IMAGE_OK + "ka.req.pod.containers.image in (myregistry.io/app@sha256:" + "a" * 64 + ")"),
    ),
    (
        "EVD015",
        audit(IMAGE_OK + "ka.req.pod.containers.image in (nginx)"),
        audit(IMAGE_OK + "ka.req.pod.images.name in (docker.io/library/nginx)"),
    ),
]


@pytest.mark.parametrize(("code", "broken", "fixed"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_check_flags_the_mistake_and_not_its_fix(code: str, broken: str, fixed: str) -> None:
    assert code in codes(broken)
    assert code not in codes(fixed)


def test_every_rule_file_check_is_covered_by_a_case() -> None:
    covered = {c[0] for c in CASES}
    rule_codes = {code for code in CATALOGUE if code < "EVD020"} - {"EVD000", "EVD006"}
    assert rule_codes <= covered


def test_finding_carries_code_severity_file_line_item_message_and_fix() -> None:
    text = """\
    - list: trusted
      items:
        - myregistry.io
    - rule: Untrusted
      desc: d
      condition: container.image.repository exists and not container.image.repository in (trusted)
      output: o
      priority: WARNING
      source: falco
    """
    (found,) = [f for f in findings(text, "pack.yaml") if f.code == "EVD012"]
    assert found.severity is Severity.ERROR
    assert (found.file, found.line, found.item) == ("pack.yaml", 3, "list 'trusted'")
    assert "myregistry.io" in found.message and "rule 'Untrusted'" in found.message
    assert "container.image.registry in (myregistry.io)" in found.fix


def test_unknown_field_suggests_the_closest_real_ones() -> None:
    (found,) = [
        f for f in findings(audit(IMAGE_OK + "ka.req.pod.containers.imag exists")) if f.code == "EVD002"
    ]
    assert "`ka.req.pod.containers.image`" in found.fix
    (alias,) = [f for f in findings(audit(IMAGE_OK + "ka.target.image exists")) if f.code == "EVD003"]
    assert "ka.req.pod.containers.image" in alias.fix and "ka.req.pod.images.name" in alias.fix


def test_image_repository_in_a_syscall_rule_names_falcos_field() -> None:
    text = """\
    - rule: R
      desc: d
      condition: container and not image.repository in (x)
      output: o
      priority: WARNING
    """
    found = {f.code: f for f in findings(text)}
    assert "container.image.repository" in found["EVD003"].fix
    assert found["EVD006"].severity is Severity.NOTE  # a real syscall rule: fine for Falco
    assert found["EVD004"].severity is Severity.NOTE  # `container` is Falco's macro


def test_macros_are_expanded_for_semantic_checks_and_findings_point_at_the_macro() -> None:
    text = """\
    - macro: untrusted
      condition: not ka.req.pod.containers.image startswith "myregistry.io/"
    - rule: R
      desc: d
      condition: ka.verb=create and ka.target.resource in (pods, jobs) and untrusted
      output: o
      priority: WARNING
      source: k8s_audit
    """
    (found,) = [f for f in findings(text) if f.code == "EVD011"]
    assert found.item == "macro 'untrusted'" and found.line == 2


def test_built_in_packs_are_clean() -> None:
    from eventd.lint import lint_paths
    from eventd.rulepacks import builtin_rule_files

    assert lint_paths(builtin_rule_files()) == []


def test_yaml_error_is_a_finding_not_a_crash() -> None:
    (found,) = findings("- rule: [unclosed\n")
    assert found.code == "EVD000" and found.line >= 1
    assert worst([found]) is Severity.ERROR


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_any_condition_text_gives_findings_never_an_exception(cond: str) -> None:
    doc = audit(repr(cond).replace("\\", "\\\\") if cond else "x")
    for f in lint_texts([("h.yaml", doc)]):
        assert f.code in CATALOGUE and f.line >= 1


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=400))
def test_any_file_text_is_linted_without_an_exception(text: str) -> None:
    for f in lint_texts([("h.yaml", text)]):
        assert f.code in CATALOGUE
