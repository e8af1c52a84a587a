"""Gatekeeper Constraints as eventd's trusted-registry list (``eventd/gatekeeper.py``).

Facts about Gatekeeper followed here: a Constraint's ``spec.match`` has
``kinds`` (``apiGroups`` + ``kinds``), ``namespaces`` and
``excludedNamespaces``, whose entries may end in one ``*`` (a prefix); the
default ``enforcementAction`` is ``deny`` (open-policy-agent/gatekeeper
``website/docs/howto.md``, "The match field"); the library's
``K8sAllowedRepos`` takes ``parameters.repos`` (gatekeeper-library
``library/general/allowedrepos``).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.config import load_config
from eventd.daemon import build_matcher
from eventd.engine.errors import RuleError
from eventd.engine.fields.pullsecrets import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, STORE
from eventd.engine.loader import load_rules_text
from eventd.events.model import K8S_AUDIT, Event
from eventd.gatekeeper import ConstraintError, constraint_rules, read_constraints
from eventd.ruleload import load_with_options
from eventd.rulepacks import builtin_rule_files
from tests.support.builders import audit_event, deployment, pod

BYPASS = "Admission Bypass: Image Outside Gatekeeper"
EXCLUDED = "Admission Bypass: Image In Namespace Excluded From Gatekeeper"


def constraint_file(tmp_path: Path, body: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


REPOS = """\
apiVersion: constraints.gatekeeper.sh/v1beta1
kind: K8sAllowedRepos
metadata:
  name: repo-is-openpolicyagent
spec:
  enforcementAction: dryrun
  match:
    kinds:
      - apiGroups: [""]
        kinds: ["Pod"]
      - apiGroups: ["apps"]
        kinds: ["Deployment"]
    namespaces: ["prod", "team-*"]
    excludedNamespaces: ["team-sandbox"]
  parameters:
    repos:
      - "openpolicyagent/"
      - "registry.corp.example/platform"
"""


def matched(paths: list[Path], doc: dict) -> set[str]:
    ruleset = load_with_options(builtin_rule_files(), gatekeeper_constraints=paths)
    event = Event(K8S_AUDIT, doc)
    return {
        r.name.split(" AllowedRegistries")[0].split(" K8sAllowedRepos")[0]
        for r in ruleset.rules
        if r.predicate(event)
    }


def test_reads_k8sallowedrepos_match_and_enforcement(tmp_path: Path) -> None:
    (c,) = read_constraints([constraint_file(tmp_path, REPOS)])
    assert c.label == "K8sAllowedRepos/repo-is-openpolicyagent"
    assert [e.value for e in c.entries] == ["openpolicyagent/", "registry.corp.example/platform"]
    assert [e.line for e in c.entries] == [17, 18]
    assert c.resources() == ("pods", "deployments")
    assert (c.namespaces, c.excluded_namespaces, c.enforcement) == (
        ("prod", "team-*"),
        ("team-sandbox",),
        "dryrun",
    )


@pytest.mark.parametrize(
    ("namespace", "resource", "image", "expected"),
    [
        ("prod", "pods", "quay.io/x/y:1", {BYPASS, "Image From Untrusted Registry"}),
        ("team-a", "pods", "quay.io/x/y:1", {BYPASS, "Image From Untrusted Registry"}),
        ("team-a", "deployments", "quay.io/x/y:1", {BYPASS, "Image From Untrusted Registry"}),
        # a kind the Constraint does not match: only the pack's own rule (same list)
        ("team-a", "jobs", "quay.io/x/y:1", {"Image From Untrusted Registry"}),
        # outside `namespaces`: not this Constraint's business
        ("dev", "pods", "quay.io/x/y:1", {"Image From Untrusted Registry"}),
        ("team-sandbox", "pods", "quay.io/x/y:1", {EXCLUDED, "Image From Untrusted Registry"}),
        # entries are compared at "/" boundaries, and normalised (openpolicyagent/ is Docker Hub)
        ("prod", "pods", "openpolicyagent/opa:0.60", set()),
        ("prod", "pods", "registry.corp.example/platform/api:1", set()),
        (
            "prod",
            "pods",
            "registry.corp.example/platform-evil/api:1",
            {BYPASS, "Image From Untrusted Registry"},
        ),
    ],
)
def test_match_scope_and_entries(
    tmp_path: Path, namespace: str, resource: str, image: str, expected: set
) -> None:
    body = deployment(image) if resource in ("deployments", "jobs") else pod(image)
    doc = audit_event(resource=resource, namespace=namespace, request=body)
    names = matched([constraint_file(tmp_path, REPOS)], doc)
    assert {n for n in names if n.startswith("Admission") or n == "Image From Untrusted Registry"} == expected


def test_entries_replace_the_packs_allowed_registries(tmp_path: Path) -> None:
    path = constraint_file(tmp_path, REPOS)
    # myregistry.io is in the packs' default list but not in the Constraint
    doc = audit_event(namespace="dev", request=pod("myregistry.io/app:1"))
    assert "Image From Untrusted Registry" in matched([path], doc)
    assert "Image From Untrusted Registry" not in matched([], doc)


def test_bypass_rules_come_first_so_first_match_names_the_bypass(tmp_path: Path) -> None:
    ruleset = load_with_options(
        builtin_rule_files(), gatekeeper_constraints=[constraint_file(tmp_path, REPOS)]
    )
    assert ruleset.rules[0].name.startswith(BYPASS)
    assert "dryrun" in ruleset.rules[0].desc


def test_several_constraints_union_their_entries(tmp_path: Path) -> None:
    a = constraint_file(tmp_path, REPOS, "a.yaml")
    b = constraint_file(
        tmp_path,
        REPOS.replace("K8sAllowedRepos", "AllowedRegistries")
        .replace("repos:", "registries:")
        .replace("repo-is-openpolicyagent", "other"),
        "b.yaml",
    )
    before, after = constraint_rules(read_constraints([a, b]))
    assert after.count('"docker.io/openpolicyagent"') == 1
    ruleset = load_rules_text([("before", before), ("after", after)])
    assert len([r for r in ruleset.rules if r.name.startswith(BYPASS)]) == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("kind: ConfigMap\napiVersion: v1\n", "no AllowedRegistries or K8sAllowedRepos Constraint"),
        (
            REPOS.replace('      - "openpolicyagent/"\n      - "registry.corp.example/platform"\n', ""),
            "empty",
        ),
        (REPOS.replace("enforcementAction: dryrun", "enforcementAction: audit"), "enforcementAction"),
        (REPOS.replace('["prod", "team-*"]', "prod"), "expected a list"),
        (REPOS.replace('["prod", "team-*"]', '["prod", "Team A"]'), "is not a namespace"),
        (REPOS.replace('"openpolicyagent/"', '"bad ref"'), "is not a registry, path or image name"),
        ("a: [", "YAML syntax error"),
    ],
)
def test_bad_constraint_files_name_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    path = constraint_file(tmp_path, body)
    with pytest.raises(ConstraintError, match=message) as info:
        read_constraints([path])
    assert str(path) in str(info.value)


def test_loading_a_bad_constraint_is_a_rule_error(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="gatekeeper constraints"):
        load_with_options(builtin_rule_files(), gatekeeper_constraints=[constraint_file(tmp_path, "x: 1\n")])


def test_daemon_config_keys(tmp_path: Path) -> None:
    path = constraint_file(tmp_path, REPOS)
    cfg = tmp_path / "eventd.yaml"
    cfg.write_text(
        f"gatekeeper_constraints: [{path}]\nrules_infer_source: true\n"
        "pull_secrets_max_entries: 7\npull_secrets_max_bytes: 4096\n"
    )
    config = load_config(cfg)
    assert config.gatekeeper_constraints == (str(path),) and config.rules_infer_source
    try:
        names = [r.name for r in build_matcher(config).ruleset.rules]
        assert (STORE.max_entries, STORE.max_bytes) == (7, 4096)
    finally:
        STORE.configure(DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES)
    assert names[0] == f"{BYPASS} K8sAllowedRepos/repo-is-openpolicyagent"


_NAMES = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(
    entries=st.lists(_NAMES, min_size=1, max_size=5),
    namespaces=st.lists(_NAMES, max_size=3),
    excluded=st.lists(_NAMES, max_size=3),
    name=_NAMES,
)
def test_any_constraint_values_generate_rules_that_load(
    tmp_path_factory: pytest.TempPathFactory,
    entries: list[str],
    namespaces: list[str],
    excluded: list[str],
    name: str,
) -> None:
    import json

    doc = {
        "apiVersion": "constraints.gatekeeper.sh/v1beta1",
        "kind": "AllowedRegistries",
        "metadata": {"name": name},
        "spec": {
            "match": {"namespaces": namespaces, "excludedNamespaces": excluded},
            "parameters": {"registries": entries},
        },
    }
    path = tmp_path_factory.mktemp("c") / "c.json.yaml"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    try:
        load_with_options(builtin_rule_files(), gatekeeper_constraints=[path])
    except RuleError as err:
        # Refused only by the Constraint reader, naming the file and the value's line;
        # whatever it accepts, the generated rules load.
        # (YAML-level refusals, such as a non-character, name the file alone).
        assert str(err).startswith(f"gatekeeper constraints: {path}")
