"""Loading rules files: item kinds, keys, append/override, visibility, files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from eventd.engine.ast import Node
from eventd.engine.loader import WARNING_APPEND, WARNING_ENABLED, load_rules, load_rules_text
from eventd.engine.parser import parse_condition
from eventd.engine.ruleset import Rule, RuleSet
from eventd.events.model import K8S_AUDIT, Event
from eventd.priority import Priority
from tests.support.builders import audit_event, pod_create

DATA = Path(__file__).parent / "data" / "rules"


def load(*texts: str) -> RuleSet:
    return load_rules_text([(f"f{i}.yaml", textwrap.dedent(t)) for i, t in enumerate(texts)])


def rule(rs: RuleSet, name: str) -> Rule:
    return next(r for r in rs.rules if r.name == name)


def tree(text: str) -> Node:
    return parse_condition(text)


def ev(**kw) -> Event:
    return Event(K8S_AUDIT, audit_event(**kw))


def k8s_rule(name: str = "R", cond: str = "ka.verb=create", **keys: str) -> str:
    lines = [
        f"- rule: {name}",
        "  desc: a rule",
        f"  condition: {cond}",
        "  output: seen %ka.user.name",
        "  priority: WARNING",
        "  source: k8s_audit",
    ]
    lines += [
        f"  {k.replace('_', '-') if k == 'skip_if_unknown_filter' else k}: {v}" for k, v in keys.items()
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- the Falco-style fixture


def test_falco_style_fixture_loads() -> None:
    rs = load_rules([DATA / "falco_style_k8s.yaml"])
    assert [r.name for r in rs.rules] == [
        "Privileged Pod Launched",
        "Exec Into Pod",
        "Credentials In ConfigMap",
    ]
    assert set(rs.disabled) == {"Unexpected Namespace", "Every Deletion"}
    assert (rs.lists, rs.macros) == (4, 14)
    assert rs.files == (str(DATA / "falco_style_k8s.yaml"),)
    assert any("Unknown source syscall, skipping" in w for w in rs.warnings)
    priv = rule(rs, "Privileged Pod Launched")
    assert priv.priority is Priority.CRITICAL  # replaced by the override
    assert priv.tags == ("k8s", "mitre_privilege_escalation")


def _privileged(namespace: str, user: str, image: str = "evil/miner:1") -> Event:
    request = pod_create(image)["requestObject"]
    request["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    return ev(namespace=namespace, user=user, request=request)


@pytest.mark.parametrize(
    ("namespace", "user", "image", "fires"),
    [
        ("default", "mallory", "evil/miner:1", True),
        ("kube-system", "ops-bot", "evil/miner:1", False),  # exception from the file itself
        ("kube-system", "kube-operator", "evil/miner:1", False),
        ("monitoring", "ops-bot", "evil/miner:1", False),  # values appended by the override
        ("monitoring", "kube-operator", "evil/miner:1", True),
        ("calico-system", "mallory", "quay.io/calico/node:v3", False),  # appended new exception
        ("default", "mallory", "quay.io/calico/node:v3", False),  # trusted_images_only macro
    ],
)
def test_fixture_exceptions_and_overrides_behave(namespace: str, user: str, image: str, fires: bool) -> None:
    priv = rule(load_rules([DATA / "falco_style_k8s.yaml"]), "Privileged Pod Launched")
    assert priv.predicate(_privileged(namespace, user, image)) is fires


def test_fixture_exec_rule_uses_list_in_exception_and_appended_macro() -> None:
    rs = load_rules([DATA / "falco_style_k8s.yaml"])
    execr = rule(rs, "Exec Into Pod")
    started = dict(stage="ResponseStarted", resource="pods", subresource="exec", name="web")
    assert execr.predicate(ev(user="mallory", **started))
    assert not execr.predicate(ev(user="cluster admin", **started))  # quoted list item with a space
    assert not execr.predicate(ev(user="ops-bot", **started))


# ----------------------------------------------------------------- items and keys


def test_rule_fields_and_defaults() -> None:
    rs = load(
        """
        - rule: Shell
          desc: >
            two
            lines
          condition: ka.verb=create
          output: "  padded %ka.user.name  "
          priority: info
          source: k8s_audit
          tags: [zeta, alpha, zeta]
        """
    )
    r = rs.rules[0]
    assert (r.name, r.source, r.priority, r.desc) == (
        "Shell",
        "k8s_audit",
        Priority.INFORMATIONAL,
        "two lines\n",
    )
    assert r.tags == ("alpha", "zeta")  # a set, sorted, as Falco's std::set
    assert r.output.text == "padded %ka.user.name"
    assert r.condition == tree("ka.verb=create")
    assert (r.file, r.line, r.order) == ("f0.yaml", 2, 0)
    assert r.predicate(ev(verb="create")) and not r.predicate(ev(verb="get"))


@pytest.mark.parametrize(
    "spelling", ["EMERGENCY", "alert", "Critical", "error", "Warning", "NOTICE", "Info", "debug"]
)
def test_priorities(spelling: str) -> None:
    rs = load(k8s_rule().replace("WARNING", spelling))
    assert rs.rules[0].priority is Priority.parse(spelling)


def test_falco_source_rules() -> None:
    rs = load(
        """
        - rule: Alert
          desc: d
          condition: falco.rule = "Terminal shell in container"
          output: "%falco.rule on %falco.hostname"
          priority: NOTICE
          source: falco
        """
    )
    assert rs.rules[0].source == "falco"


def test_unknown_source_and_default_syscall_source_are_skipped_with_warning() -> None:
    rs = load(
        """
        - rule: Sys
          desc: d
          condition: evt.type = open
          output: o
          priority: NOTICE
        - rule: Cloud
          desc: d
          condition: ct.name = x
          output: o
          priority: NOTICE
          source: aws_cloudtrail
        """
    )
    assert rs.rules == () and rs.disabled == ()
    assert "f0.yaml:2: rule 'Sys': Unknown source syscall, skipping" in rs.warnings
    assert "f0.yaml:7: rule 'Cloud': Unknown source aws_cloudtrail, skipping" in rs.warnings


def test_unknown_items_and_keys_warn() -> None:
    rs = load("- list: a\n  items: [x]\n  color: blue\n- foo: bar\n")
    assert "f0.yaml:3: list 'a': Unknown key 'color' ignored" in rs.warnings
    assert "f0.yaml:4: item #2: Unknown top level item" in rs.warnings


def test_documents_nulls_and_empty_files() -> None:
    rs = load("---\n---\n- list: a\n  items: [x]\n-\n---\n- macro: m\n  condition: ka.verb in (a)\n", "")
    assert (rs.lists, rs.macros) == (1, 1)
    assert load("").rules == ()


def test_capture_keys_and_warn_evttypes_accepted() -> None:
    rs = load(k8s_rule(capture="true", capture_duration="5000", warn_evttypes="false"))
    assert [r.name for r in rs.rules] == ["R"]


def test_required_versions_accepted() -> None:
    rs = load(
        """
        - required_engine_version: 15
        - required_engine_version: "0.26.0"
        - required_engine_version: 0.58.0
        - required_plugin_versions:
          - name: k8saudit
            version: 0.7.0
            alternatives:
              - name: k8saudit-eks
                version: 0.4.0
          - name: k8saudit-gke
            version: 0.1.0
          - name: unknown-plugin
            version: 1.0.0
            alternatives:
              - name: json
                version: 0.7.0
        """
    )
    assert rs.rules == ()


# ----------------------------------------------------------------- append and override


def test_legacy_append_of_list_macro_and_rule() -> None:
    rs = load(
        """
        - list: verbs
          items: [create]
        - macro: m
          condition: ka.verb in (verbs)
        - rule: R
          desc: d
          condition: m
          output: o
          priority: ERROR
          source: k8s_audit
        - list: verbs
          items: [update]
          append: true
        - macro: m
          condition: or ka.verb=patch
          append: true
        - rule: R
          condition: and ka.user.name=bob
          append: true
        """
    )
    r = rs.rules[0]
    assert r.condition == tree("(ka.verb in (create, update) or ka.verb=patch) and ka.user.name=bob")
    assert sum(WARNING_APPEND in w for w in rs.warnings) == 3


def test_override_append_and_replace_every_rule_key() -> None:
    rs = load(
        k8s_rule(tags="[a]", exceptions="[{name: e, fields: ka.user.name, values: [root]}]"),
        """
        - rule: R
          condition: and ka.target.resource=pods
          output: (ns=%ka.target.namespace)
          desc: more
          tags: [b]
          exceptions:
            - name: e
              values: [admin]
          override:
            condition: append
            output: append
            desc: append
            tags: append
            exceptions: append
        """,
    )
    r = rs.rules[0]
    assert r.condition == tree(
        "(ka.verb=create and ka.target.resource=pods) and not (ka.user.name in (root, admin))"
    )
    assert r.output.text == "seen %ka.user.name (ns=%ka.target.namespace)"
    assert r.desc == "a rule more"
    assert r.tags == ("a", "b")
    rs = load(
        k8s_rule(tags="[a]"),
        """
        - rule: R
          condition: ka.verb=delete
          output: gone %ka.target.name
          desc: replaced
          tags: [c]
          priority: DEBUG
          warn_evttypes: false
          skip-if-unknown-filter: true
          exceptions:
            - name: x
              fields: ka.user.name
              values: [root]
          override:
            condition: replace
            output: replace
            desc: replace
            tags: replace
            priority: replace
            warn_evttypes: replace
            skip-if-unknown-filter: replace
            exceptions: replace
        """,
    )
    r = rs.rules[0]
    assert r.condition == tree("(ka.verb=delete) and not (ka.user.name in (root))")
    assert (r.output.text, r.desc, r.tags, r.priority) == (
        "gone %ka.target.name",
        "replaced",
        ("c",),
        Priority.DEBUG,
    )


def test_override_enabled_replace_and_enabled_only_form() -> None:
    rs = load(
        k8s_rule("A"), k8s_rule("B"), "- rule: A\n  enabled: false\n  override:\n    enabled: replace\n"
    )
    assert ([r.name for r in rs.rules], rs.disabled) == (["B"], ("A",))
    rs = load(k8s_rule("A", enabled="false"), "- rule: A\n  enabled: true\n")
    assert [r.name for r in rs.rules] == ["A"]
    assert "f1.yaml:1: rule 'A': " + WARNING_ENABLED in rs.warnings


def test_append_and_replace_in_one_item() -> None:
    rs = load(
        k8s_rule(),
        """
        - rule: R
          condition: and ka.user.name=bob
          priority: ALERT
          override:
            condition: append
            priority: replace
        """,
    )
    r = rs.rules[0]
    assert (r.condition, r.priority) == (tree("ka.verb=create and ka.user.name=bob"), Priority.ALERT)


def test_list_and_macro_overrides() -> None:
    rs = load(
        """
        - list: l
          items: [a]
        - list: l
          items: [b]
          override:
            items: append
        - list: k
          items: [c]
        - list: k
          items: [d]
          override:
            items: replace
        - list: fresh
          items: [e]
          override:
            items: replace
        - macro: m
          condition: ka.verb=get
        - macro: m
          condition: ka.verb=list
          override:
            condition: replace
        - macro: n
          condition: ka.verb=get
        - macro: n
          condition: or ka.verb=watch
          override:
            condition: append
        """,
        k8s_rule(cond="ka.target.name in (l, k, fresh) and m and n"),
    )
    assert rs.rules[0].condition == tree(
        "ka.target.name in (a, b, d, e) and ka.verb=list and (ka.verb=get or ka.verb=watch)"
    )


def test_redefinition_keeps_position_but_replaces_everything() -> None:
    rs = load(
        k8s_rule("First", exceptions="[{name: e, fields: ka.user.name, values: [x]}]"),
        k8s_rule("Second"),
        k8s_rule("First", cond="ka.verb=delete"),
    )
    assert [(r.name, r.order) for r in rs.rules] == [("First", 0), ("Second", 1)]
    assert rule(rs, "First").condition == tree("ka.verb=delete")  # exceptions gone too
    assert rule(rs, "First").file == "f2.yaml"


# ----------------------------------------------------------------- compilation choices


def test_skip_if_unknown_filter() -> None:
    rs = load(k8s_rule("Cond", cond="ka.future.field=1", skip_if_unknown_filter="true"), k8s_rule("Kept"))
    assert [r.name for r in rs.rules] == ["Kept"]
    # Falco: LOAD_UNKNOWN_FILTER with the compiler's own message (rule_loader_compiler.cpp)
    assert any(
        "rule 'Cond': condition: filter_check called with nonexistent field ka.future.field" in w
        for w in rs.warnings
    )
    assert [f.code.name for f in rs.findings] == ["LOAD_UNKNOWN_FILTER"]
    out = k8s_rule("Out", skip_if_unknown_filter="true").replace("seen %ka.user.name", "x %ka.future.field")
    rs = load(out)
    assert rs.rules == ()
    assert any("rule 'Out': output: invalid formatting token" in w for w in rs.warnings)


def test_skip_if_unknown_filter_does_not_hide_other_errors() -> None:
    from eventd.engine.errors import RuleError

    with pytest.raises(RuleError):
        load(k8s_rule(cond="ka.verb=", skip_if_unknown_filter="true"))


def test_disabled_rules_are_compiled_but_not_returned() -> None:
    rs = load(k8s_rule("Off", enabled="false"), k8s_rule("On"))
    assert [r.name for r in rs.rules] == ["On"] and rs.disabled == ("Off",)


def test_unused_lists_and_macros_warn() -> None:
    rs = load("- list: lonely\n  items: [x]\n- macro: idle\n  condition: ka.verb=get\n")
    assert "f0.yaml:1: list 'lonely': List not referred to by any other rule/macro" in rs.warnings
    assert "f0.yaml:3: macro 'idle': Macro not referred to by any other rule/macro" in rs.warnings


def test_rules_in_index_order_across_files() -> None:
    rs = load(k8s_rule("A") + k8s_rule("B"), k8s_rule("C") + k8s_rule("A", cond="ka.verb=get"))
    assert [(r.name, r.order) for r in rs.rules] == [("A", 0), ("B", 1), ("C", 2)]


def test_later_file_changes_earlier_items() -> None:
    base = (
        "- list: users\n  items: [alice]\n- macro: watched\n  condition: ka.user.name in (users)\n"
        + k8s_rule(cond="watched")
    )
    local = "- list: users\n  items: [bob]\n  override:\n    items: append\n"
    r = load(base, local).rules[0]
    assert r.condition == tree("ka.user.name in (alice, bob)")
    assert r.predicate(ev(user="bob")) and not r.predicate(ev(user="carol"))


# ----------------------------------------------------------------- files and directories


def test_load_rules_reads_files_and_directories_in_order(tmp_path: Path) -> None:
    d = tmp_path / "rules.d"
    d.mkdir()
    (d / "b.yml").write_text("- list: l\n  items: [b]\n  append: true\n")
    (d / "a.yaml").write_text("- list: l\n  items: [a]\n")
    (d / "notes.txt").write_text("not rules")
    main = tmp_path / "main.yaml"
    main.write_text(k8s_rule(cond="ka.user.name in (l)"))
    rs = load_rules([d, main])
    assert rs.files == (str(d / "a.yaml"), str(d / "b.yml"), str(main))
    assert rs.rules[0].condition == tree("ka.user.name in (a, b)")


def test_load_rules_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        load_rules([tmp_path / "nope.yaml"])


def test_rule_matching_is_validated() -> None:
    with pytest.raises(ValueError, match="rule_matching"):
        load_rules([], rule_matching="best")
    assert load_rules([], rule_matching="all").rules == ()


# ----------------------------------------------------------------- versions


def test_engine_version_claims_falco_043_and_covers_upstream_k8s_rules() -> None:
    from eventd.engine.versions import ENGINE_VERSION, Version

    engine = Version.parse(ENGINE_VERSION)
    assert engine == Version(0, 58, 0)
    assert engine.compatible_with(Version(0, 15, 0))
    assert not engine.compatible_with(Version(0, 59, 0))
    assert not engine.compatible_with(Version(1, 0, 0))


def test_version_parsing_follows_libsinsp() -> None:
    from eventd.engine.versions import Version

    assert Version.parse("0.7.0-rc1") == Version(0, 7, 0)
    assert Version.parse(" 1.2.3") == Version(1, 2, 3)
    assert Version.parse("1.2") is None and Version.parse("v1.2.3") is None


def test_utf8_bom_is_ignored(tmp_path: Path) -> None:
    f = tmp_path / "bom.yaml"
    f.write_bytes("\ufeff".encode() + k8s_rule().encode())
    assert [r.name for r in load_rules([f]).rules] == ["R"]
