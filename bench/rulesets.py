"""Generators of realistic Falco-language rule files for the k8s_audit source.

Why: the matcher must stay cheap as an organisation's rules grow, so the
benchmark needs rule sets of 10, 50 and 1,000 rules that look like the real
thing: many teams, each guarding its own namespaces with rules on different
resources and verbs, sharing macros, and trusting lists of registries (one
variant trusts 10,000 registries, as large allow-lists do).  Rules mix the
upstream ``ka.*`` fields with eventd's image fields
``ka.req.pod.images.{name,registry,tag}`` (list fields).

The first teams are named after the corpus's application namespaces (see
``bench/corpus.py``), so generated rules match some of the corpus; the rest
are synthetic teams whose namespaces never occur, like most rules in a large
shared rule base most of the time.

CLI::

    python bench/rulesets.py --rules 1000 --out /tmp/rules-1000.yaml [--allowed-registries 10000]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

if __package__ in (None, ""):  # run as a script: make ``bench.*`` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus import APP_NAMESPACES, TRUSTED_REGISTRIES

SOURCE = "k8s_audit"

_EXTRA_TEAMS = (
    "ads", "mobile", "growth", "risk", "fraud", "catalog", "shipping", "inventory", "support",
    "analytics", "platform", "infra", "edge", "media", "notifications", "messaging", "maps",
)  # fmt: skip

#: Lists and macros every generated file starts with (names chosen so that
#: Falco's textual list substitution cannot hit a field value or a keyword).
_SHARED_LISTS: dict[str, list[str]] = {
    "bench_audit_stages": ["ResponseComplete"],
    "bench_trusted_registries": list(TRUSTED_REGISTRIES),
    "bench_system_users": [
        "system:kube-controller-manager",
        "system:kube-scheduler",
        "system:serviceaccount:kube-system:replicaset-controller",
        "system:serviceaccount:kube-system:deployment-controller",
        "system:serviceaccount:argocd:argocd-application-controller",
    ],
    "bench_admin_groups": ["system:masters", "cluster-admins"],
    "bench_sensitive_mounts": ["/var/run/docker.sock", "/proc", "/etc", "/root", "/var/lib/kubelet"],
    "bench_exposed_service_types": ["NodePort", "LoadBalancer"],
    "bench_workload_resources": [
        "deployments",
        "statefulsets",
        "daemonsets",
        "replicasets",
        "jobs",
        "cronjobs",
    ],
    "bench_rbac_resources": ["roles", "clusterroles"],
    "bench_binding_resources": ["rolebindings", "clusterrolebindings"],
}

_SHARED_MACROS: dict[str, str] = {
    "kevt": "jevt.value[/stage] in (bench_audit_stages)",
    "kcreate": "ka.verb=create",
    "kmodify": "ka.verb in (create, update, patch)",
    "kread": "ka.verb in (get, list, watch)",
    "kdelete": "ka.verb in (delete, deletecollection)",
    "pod": "ka.target.resource=pods and not ka.target.subresource exists",
    "workload": "ka.target.resource in (bench_workload_resources)",
    "pod_or_workload": "(pod or workload)",
    "secret": "ka.target.resource=secrets",
    "configmap": "ka.target.resource=configmaps",
    "service": "ka.target.resource=services",
    "rbac_role": "ka.target.resource in (bench_rbac_resources)",
    "rbac_binding": "ka.target.resource in (bench_binding_resources)",
    "response_successful": "ka.response.code startswith 2",
    "system_user": "(ka.user.name in (bench_system_users) or ka.user.name startswith system:node:)",
    "admin_user": "ka.user.groups intersects (bench_admin_groups)",
    "trusted_registry": "ka.req.pod.images.registry in (bench_trusted_registries)",
}

_PRIORITIES = ("WARNING", "NOTICE", "ERROR", "CRITICAL", "INFO")


def team_names(count: int) -> list[str]:
    """``count`` distinct team names: corpus namespaces first, then synthetic ones."""
    base = [ns for ns in APP_NAMESPACES if ns != "default"] + list(_EXTRA_TEAMS)
    names = base[:count]
    round_ = 2
    while len(names) < count:
        names += [f"{b}{round_}" for b in base[: count - len(names)]]
        round_ += 1
    return names


def _ident(team: str) -> str:
    """A team name usable inside macro and list names."""
    return "team_" + team.replace("-", "_")


def _team_items(team: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The lists and macros one team owns."""
    t = _ident(team)
    lists = [
        {"list": f"{t}_namespaces", "items": [team, f"{team}-prod", f"{team}-staging"]},
        {
            "list": f"{t}_image_prefixes",
            "items": [f"gcr.io/my-project/{team}", f"myregistry.io/{team}", "myregistry.io/platform"],
        },
        {
            "list": f"{t}_deployers",
            "items": [
                "system:serviceaccount:argocd:argocd-application-controller",
                f"system:serviceaccount:{team}:{team}-deployer",
                f"{team}-oncall@example.com",
            ],
        },
    ]
    macros = [
        {"macro": f"{t}_ns", "condition": f"ka.target.namespace in ({t}_namespaces)"},
        {"macro": f"{t}_trusted_image", "condition": f"ka.req.pod.images.name pmatch ({t}_image_prefixes)"},
        {"macro": f"{t}_deployer", "condition": f"(ka.user.name in ({t}_deployers) or system_user)"},
    ]
    return lists, macros


# Each template returns (title, condition, output, extra keys) for one team.
_Template = Callable[[str, str], tuple[str, str, str, dict[str, Any]]]


def _untrusted_registry(team: str, t: str) -> tuple[str, str, str, dict[str, Any]]:
    return (
        "Image From Untrusted Registry",
        f"kevt and pod_or_workload and kmodify and {t}_ns and not trusted_registry",
        "Workload with image from an untrusted registry (user=%ka.user.name ns=%ka.target.namespace "
        "resource=%ka.target.resource images=%ka.req.pod.images.name registries=%ka.req.pod.images.registry)",
        {},
    )


def _latest_tag(team: str, t: str) -> tuple[str, str, str, dict[str, Any]]:
    return (
        "Mutable Image Tag",
        f"kevt and pod_or_workload and kcreate and {t}_ns "
        "and ka.req.pod.images.tag intersects (latest, dev, main)",
        "Workload uses a mutable tag (user=%ka.user.name ns=%ka.target.namespace tags=%ka.req.pod.images.tag "
        "images=%ka.req.pod.images.name)",
        {},
    )


def _foreign_image(team: str, t: str) -> tuple[str, str, str, dict[str, Any]]:
    return (
        "Image Outside Team Repositories",
        f"kevt and pod and kcreate and {t}_ns and ka.req.pod.images.name exists and not {t}_trusted_image",
        "Pod runs an image outside the team's repositories (user=%ka.user.name pod=%ka.resp.name "
        "images=%ka.req.pod.images.name)",
        {
            "exceptions": [
                {
                    "name": "known_tooling",
                    "fields": ["ka.user.name", "ka.target.namespace"],
                    "values": [
                        ["kubernetes-admin", team],
                        ["system:serviceaccount:ci:gitlab-runner", f"{team}-staging"],
                    ],
                }
            ]
        },
    )


def _privileged(team: str, t: str) -> tuple[str, str, str, dict[str, Any]]:
    return (
        "Privileged Container",
        f"kevt and pod and kcreate and {t}_ns and ka.req.pod.containers.privileged intersects (true)",
        "Privileged container created (user=%ka.user.name ns=%ka.target.namespace "
        "images=%ka.req.pod.containers.image)",
        {},
    )


def _host_mount(team: str, t: str) -> tuple[str, str, str, dict[str, Any]]:
    return (
        "Sensitive Host Mount",
        f"kevt and pod and kcreate and {t}_ns "
        "and ka.req.pod.volumes.hostpath intersects (bench_sensitive_mounts)",
        "Pod mounts a sensitive host path (user=%ka.user.name ns=%ka.target.namespace "
        "paths=%ka.req.pod.volumes.hostpath)",
        {},
    )


def _host_network(team: str, t: str) -> tuple[str, str, str, dict[str, Any]]:
    return (
        "Host Network Pod",
        f"kevt and pod and kcreate and {t}_ns and ka.req.pod.host_network=true",
        "Pod uses the host network (user=%ka.user.name ns=%ka.target.namespace pod=%ka.resp.name)",
        {},
    )


def _secret_read(team: str, t: str) -> tuple[str, str, str, dict[str, Any]]:
    return (
        "Secret Read By Outsider",
        f"kevt and secret and kread and {t}_ns and response_successful "
        f"and not ka.user.name startswith system:serviceaccount:{team}: and not admin_user",
        "Secret read from outside the team (user=%ka.user.name secret=%ka.target.name "
        "ns=%ka.target.namespace)",
        {},
    )


def _configmap_credentials(team: str, t: str) -> tuple[str, str, str, dict[str, Any]]:
    return (
        "Credentials In ConfigMap",
        f"kevt and configmap and kmodify and {t}_ns and (ka.req.configmap.obj icontains aws_access_key_id "
        "or ka.req.configmap.obj icontains password)",
        "ConfigMap may hold credentials (user=%ka.user.name configmap=%ka.target.name "
        "ns=%ka.target.namespace)",
        {},
    )


def _rbac_wildcard(team: str, t: str) -> tuple[str, str, str, dict[str, Any]]:
    return (
        "Wildcard RBAC Role",
        f'kevt and rbac_role and kmodify and {t}_ns and ka.req.role.rules.verbs intersects ("*")',
        "Role grants all verbs (user=%ka.user.name role=%ka.target.name ns=%ka.target.namespace)",
        {},
    )


def _exposed_service(team: str, t: str) -> tuple[str, str, str, dict[str, Any]]:
    return (
        "Service Exposed Outside Cluster",
        f"kevt and service and kcreate and {t}_ns and ka.req.service.type in (bench_exposed_service_types)",
        "Service exposed (user=%ka.user.name service=%ka.target.name type=%ka.req.service.type)",
        {},
    )


def _exec(team: str, t: str) -> tuple[str, str, str, dict[str, Any]]:
    return (
        "Exec Into Pod",
        "jevt.value[/stage]=ResponseStarted and ka.target.resource=pods "
        f"and ka.target.subresource in (exec, attach) and {t}_ns and not admin_user",
        "Exec into pod (user=%ka.user.name pod=%ka.target.name ns=%ka.target.namespace "
        "command=%ka.uri.param[command])",
        {},
    )


def _workload_deleted(team: str, t: str) -> tuple[str, str, str, dict[str, Any]]:
    return (
        "Workload Deleted By Unexpected User",
        f"kevt and workload and kdelete and {t}_ns and not {t}_deployer",
        "Workload deleted (user=%ka.user.name resource=%ka.target.resource name=%ka.target.name "
        "ns=%ka.target.namespace)",
        {},
    )


def _unexpected_deployer(team: str, t: str) -> tuple[str, str, str, dict[str, Any]]:
    return (
        "Workload Changed Outside GitOps",
        f"kevt and workload and kmodify and {t}_ns and not {t}_deployer and not admin_user",
        "Workload changed outside GitOps (user=%ka.user.name resource=%ka.target.resource "
        "name=%ka.target.name images=%ka.req.pod.images.name)",
        {},
    )


def _admin_binding(team: str, t: str) -> tuple[str, str, str, dict[str, Any]]:
    return (
        "Binding To Admin Role",
        f"kevt and rbac_binding and kcreate and {t}_ns and ka.req.binding.role in (cluster-admin, admin) "
        "and not admin_user",
        "Admin role bound (user=%ka.user.name binding=%ka.target.name role=%ka.req.binding.role "
        "subjects=%ka.req.binding.subjects)",
        {},
    )


_TEMPLATES: tuple[_Template, ...] = (
    _untrusted_registry,
    _latest_tag,
    _foreign_image,
    _privileged,
    _secret_read,
    _host_mount,
    _unexpected_deployer,
    _configmap_credentials,
    _rbac_wildcard,
    _exposed_service,
    _exec,
    _workload_deleted,
    _host_network,
    _admin_binding,
)


def big_registry_list(size: int) -> list[str]:
    """``size`` registry domains: the trusted ones plus synthetic internal mirrors."""
    extra = [f"registry-{i:05d}.mirrors.example.com" for i in range(max(0, size - len(TRUSTED_REGISTRIES)))]
    return list(TRUSTED_REGISTRIES) + extra


def generate_rules(n: int, allowed_registries: int = 0) -> list[dict[str, Any]]:
    """Items of a rule file with exactly ``n`` rules, in load order.

    With ``allowed_registries`` > 0 the shared trusted-registries list (used by
    every team's "untrusted registry" rule) has that many entries.
    """
    if n < 1:
        raise ValueError("a rule file needs at least one rule")
    lists = dict(_SHARED_LISTS)
    if allowed_registries:
        lists["bench_trusted_registries"] = big_registry_list(allowed_registries)
    items: list[dict[str, Any]] = [{"required_engine_version": 15}]
    items += [{"list": name, "items": values} for name, values in lists.items()]
    items += [{"macro": name, "condition": cond} for name, cond in _SHARED_MACROS.items()]
    teams = team_names(-(-n // len(_TEMPLATES)))
    rules: list[dict[str, Any]] = []
    for team in teams:
        team_lists, team_macros = _team_items(team)
        items += team_lists + team_macros
        for template in _TEMPLATES:
            if len(rules) == n:
                break
            title, condition, output, extra = template(team, _ident(team))
            rules.append(
                {
                    "rule": f"{team.capitalize()} - {title}",
                    "desc": f"{title} in the {team} namespaces (owned by team {team}).",
                    "condition": condition,
                    "output": output,
                    "priority": _PRIORITIES[len(rules) % len(_PRIORITIES)],
                    "source": SOURCE,
                    "tags": ["k8s", f"team:{team}", title.lower().replace(" ", "-")],
                    **extra,
                }
            )
    return _prune(items, rules) + rules


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _prune(items: list[dict[str, Any]], rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop the lists and macros no rule uses, directly or through a macro.

    A partial last team (or a small file) does not use every shared macro,
    and the loader warns about unreferenced lists and macros, as Falco does.
    """
    macros = {it["macro"]: it["condition"] for it in items if "macro" in it}
    used: set[str] = set()
    pending = [w for r in rules for w in _WORD.findall(r["condition"])]
    while pending:
        word = pending.pop()
        if word not in used:
            used.add(word)
            pending += _WORD.findall(macros.get(word, ""))
    return [
        it for it in items if it.get("macro", it.get("list")) in used or not ({"macro", "list"} & it.keys())
    ]


def registry_filter_rules(allowed: list[str] | None = None) -> list[dict[str, Any]]:
    """One rule: any container image (of a pod or workload create) from a registry outside ``allowed``.

    The bench runs the same filter through ``jq`` to compare whole commands.
    """
    allowed = list(TRUSTED_REGISTRIES) if allowed is None else allowed
    return [
        {"list": "bench_filter_registries", "items": allowed},
        {
            "rule": "Image From Untrusted Registry",
            "desc": "A pod or workload is created with an image from a registry outside the allow-list.",
            "condition": "ka.verb=create and jevt.value[/stage]=ResponseComplete "
            "and ka.target.resource in (pods, deployments) and not ka.target.subresource exists "
            "and ka.req.pod.images.registry exists "
            "and not ka.req.pod.images.registry in (bench_filter_registries)",
            "output": "Untrusted registry (user=%ka.user.name ns=%ka.target.namespace "
            "images=%ka.req.pod.images.name)",
            "priority": "WARNING",
            "source": SOURCE,
        },
    ]


def dump(items: list[dict[str, Any]]) -> str:
    """YAML text of a rule file."""
    return yaml.safe_dump(items, sort_keys=False, width=10_000, default_flow_style=False)


def write_rules(path: str | Path, n: int, allowed_registries: int = 0) -> Path:
    path = Path(path)
    path.write_text(dump(generate_rules(n, allowed_registries)), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", type=int, default=50, help="number of rules (e.g. 10, 50, 1000)")
    ap.add_argument("--out", required=True, help="output YAML file")
    ap.add_argument(
        "--allowed-registries",
        type=int,
        default=0,
        help="size of the shared trusted-registries list (0: the 4 real ones; e.g. 10000)",
    )
    args = ap.parse_args(argv)
    write_rules(args.out, args.rules, args.allowed_registries)
    print(f"wrote {args.rules} rules to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
