"""The Kubernetes manifests under ``deploy/kubernetes``, checked with real tools.

Every overlay is rendered by ``kubectl kustomize`` and validated against the
newest Kubernetes schemas ``kubernetes_validate`` ships, in strict mode.  The
eventd config embedded in each overlay is then run through eventd itself:
the pod's volumes are laid out in a temporary directory (ConfigMaps with
their real content, Secrets as throw-away PEM files and placeholders), the
config's paths are pointed there, and the file must load with
``load_config`` (with the environment the manifest sets), pass
``eventd run --check`` and build every source and sink through
``eventd.daemon.validate``, the entry point ``run`` and ``--check`` share
(which is where the "no unauthenticated non-loopback listener" rule is
enforced).

The other checks cross-check what the files say about each other: probes
against what the ops server serves, Service and NetworkPolicy ports against
the config, the API server's webhook kubeconfig against the Service and the
TLS settings, and the audit policy's first-match-wins order for Secrets.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import kubernetes_validate
import pytest
import trustme
import yaml
from hypothesis import given
from hypothesis import strategies as st

from eventd.config import Config, ConfigError, Listen, build, load_config
from eventd.daemon import validate
from eventd.metrics import Metrics
from eventd.server import OpsServer

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "kubernetes"
OVERLAYS = ("falco-sidecar", "audit-webhook", "kafka-consumer")
#: Where the image installs eventd's built-in rule packs (deploy/docker/Dockerfile:
#: ``--target /opt/eventd/lib`` + the wheel's ``eventd/_rules``).
IMAGE_RULES_DIR = "/opt/eventd/lib/eventd/_rules"
#: The newest Kubernetes version the installed kubernetes_validate knows.
K8S_VERSION = kubernetes_validate.utils.latest_version()
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"}
RBAC_KINDS = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
#: Volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
OPS_PORT = 9376


# ------------------------------------------------------------------ rendering


@functools.cache
def render(path: str) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize <path>`` (relative to deploy/kubernetes) as objects."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        # In CI a missing kubectl is a defect of the set-up (.ci/run installs
        # it), not a reason to pass 47 tests without running them.
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is not on PATH: .ci/run installs it (Debian package kubernetes-client)")
        pytest.skip("kubectl is not on PATH (install kubectl, or Debian's kubernetes-client)")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def overlay(name: str) -> tuple[dict[str, Any], ...]:
    return render(f"overlays/{name}")


def find(objs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def only(objs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def workloads(objs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod.get("initContainers", []) + pod["containers"]


def eventd_container(pod: dict[str, Any]) -> dict[str, Any]:
    (found,) = [c for c in containers(pod) if c["name"] == "eventd"]
    return found


def the_workload(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The overlay's one eventd workload and its pod spec."""
    (workload,) = workloads(overlay(name))
    return workload, pod_spec(workload)


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (number or name) as the container's port number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    return number


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ------------------------------------------------ the pod's files, laid out


@dataclasses.dataclass(frozen=True)
class Materialised:
    """An overlay's eventd container with its mounts laid out under ``root``."""

    config_file: Path  #: the config, its paths pointed into ``root``
    original: dict[str, Any]  #: the config as the ConfigMap has it
    mounts: dict[str, Path]  #: mountPath -> local directory
    env: dict[str, str]  #: EVENTD_* as the manifest sets them (Secrets as placeholders)


class Pki:
    """Throw-away PEM files standing in for the Secrets' keys."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("eventd.eventd.svc")

    def secret_value(self, key: str) -> bytes:
        if key == "tls.crt":
            return self.server.cert_chain_pems[0].bytes()
        if key == "tls.key":
            return self.server.private_key_pem.bytes()
        if key.endswith(".crt"):
            return self.ca.cert_pem.bytes()
        if key.endswith("-url"):  # a URL secret (Slack's webhook URL) must look like one
            return f"https://hooks.example.invalid/placeholder-{key}\n".encode()
        return f"placeholder-{key}\n".encode()


def write_volume(objs: tuple[dict[str, Any], ...], volume: dict[str, Any], target: Path, pki: Pki) -> None:
    """Write what a configMap, secret, projected or emptyDir volume holds."""
    target.mkdir(parents=True, exist_ok=True)
    if "projected" in volume:
        for source in volume["projected"]["sources"]:
            write_volume(objs, source, target, pki)
    elif "configMap" in volume:
        data = only(objs, "ConfigMap", volume["configMap"]["name"])["data"]
        items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            (target / item["path"]).parent.mkdir(parents=True, exist_ok=True)
            (target / item["path"]).write_text(data[item["key"]], encoding="utf-8")
    elif "secret" in volume:
        for item in volume["secret"]["items"]:
            (target / item["path"]).parent.mkdir(parents=True, exist_ok=True)
            (target / item["path"]).write_bytes(pki.secret_value(item["key"]))
    else:
        assert "emptyDir" in volume, f"unexpected volume type in {volume}"


def manifest_env(container: dict[str, Any]) -> dict[str, str]:
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var["valueFrom"]:
            env[var["name"]] = f"placeholder-{var['valueFrom']['secretKeyRef']['key']}"
        else:
            env[var["name"]] = "node-1"
    return {k: v for k, v in env.items() if k.startswith("EVENTD_")}


def materialise(name: str, root: Path, config_mount_path: str = "/etc/eventd/eventd.yaml") -> Materialised:
    """Lay out the eventd container's volumes under ``root`` and write its
    config with every mount path (and the image's rule directory) pointed
    at the local copy."""
    objs = overlay(name)
    _, pod = the_workload(name)
    container = eventd_container(pod)
    volumes = {v["name"]: v for v in pod["volumes"]}
    pki = Pki()
    mounts = {}
    for mount in container["volumeMounts"]:
        local = root / mount["name"]
        write_volume(objs, volumes[mount["name"]], local, pki)
        mounts[mount["mountPath"]] = local
    config_path = resolve(mounts, config_mount_path)
    assert config_path is not None and config_path.is_file(), f"{config_mount_path} is not mounted"
    text = config_path.read_text(encoding="utf-8")
    original = yaml.safe_load(text)
    for mount_path in sorted(mounts, key=len, reverse=True):
        text = text.replace(mount_path, str(mounts[mount_path]))
    text = text.replace(IMAGE_RULES_DIR, str(REPO / "rules"))
    config_file = root / "eventd.yaml"
    config_file.write_text(text, encoding="utf-8")
    return Materialised(config_file, original, mounts, manifest_env(container))


def resolve(mounts: dict[str, Path], path: str) -> Path | None:
    """The local copy of ``path`` inside the container, or None if unmounted."""
    for mount_path in sorted(mounts, key=len, reverse=True):
        if path == mount_path or path.startswith(mount_path.rstrip("/") + "/"):
            return mounts[mount_path] / path[len(mount_path) :].lstrip("/")
    return None


def check_config(file: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    """``python -m eventd run --config FILE --check`` with exactly ``env`` as EVENTD_*."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("EVENTD_")}
    return subprocess.run(
        [sys.executable, "-m", "eventd", "run", "--config", str(file), "--check", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **env},
        cwd=REPO,
        check=False,
    )


def listens(config: Config) -> dict[str, Listen]:
    """Every listen address of a config: the ops server and the HTTP inputs."""
    found = {"server": config.server.listen}
    for key in ("k8s_audit_webhook", "falco_http"):
        section = getattr(config.sources, key)
        if section is not None:
            found[key] = section.listen
    return found


def config_paths(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(key, path) for every file or directory the config names."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            yield from config_paths(getattr(node, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(node, Path):
        yield key, str(node)


def build_http_inputs(config: Config) -> list[str]:
    """Build every source and sink through ``validate``, what ``eventd run``
    and ``--check`` use (the HTTP inputs' constructors load the TLS files and
    refuse unauthenticated non-loopback listeners); the HTTP inputs built."""
    return [s.name for s in validate(config).sources if s.name in ("k8s_audit_webhook", "falco_http")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------- schemas


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_rendered_object_validates_strictly(name: str) -> None:
    objs = overlay(name)
    assert {o["kind"] for o in objs} >= {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "NetworkPolicy",
    }
    problems = []
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {str(err).splitlines()[0]}")
    assert not problems, "\n".join(problems)


def test_strict_validation_refuses_unknown_fields() -> None:
    """The control: the validator used above does catch a misspelt field."""
    workload = dict(workloads(overlay("audit-webhook"))[0])
    workload["spec"] = {**workload["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(workload, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", OVERLAYS)
def test_everything_lives_in_the_overlays_namespace(name: str) -> None:
    objs = overlay(name)
    namespace = only(objs, "Namespace")["metadata"]["name"]
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {namespace}


# ---------------------------------------------------------- least privilege


@pytest.mark.parametrize("name", OVERLAYS)
def test_eventd_has_no_kubernetes_api_access(name: str) -> None:
    objs = overlay(name)
    assert not [o for o in objs if o["kind"] in RBAC_KINDS]
    (account,) = find(objs, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    for workload in workloads(objs):
        pod = pod_spec(workload)
        assert pod["serviceAccountName"] == account["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False


def restricted_violations(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """What keeps ``container`` from the restricted Pod Security Standard (and
    from eventd's own rules: uid 65534, read-only root)."""
    pod_ctx = pod.get("securityContext", {})
    ctx = container.get("securityContext", {})

    def effective(key: str) -> Any:
        return ctx.get(key, pod_ctx.get(key))

    problems = []
    if effective("runAsNonRoot") is not True:
        problems.append("runAsNonRoot is not true")
    if effective("runAsUser") != 65534:
        problems.append(f"runAsUser is {effective('runAsUser')!r}, not 65534")
    if ctx.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    if ctx.get("privileged"):
        problems.append("privileged")
    capabilities = ctx.get("capabilities", {})
    if "ALL" not in capabilities.get("drop", []):
        problems.append("capabilities do not drop ALL")
    if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
        problems.append(f"adds capabilities {capabilities['add']}")
    if ctx.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem is not true")
    if (effective("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        problems.append("no RuntimeDefault seccomp profile")
    return problems


@pytest.mark.parametrize("name", OVERLAYS)
def test_eventd_container_meets_the_restricted_standard(name: str) -> None:
    _, pod = the_workload(name)
    assert restricted_violations(pod, eventd_container(pod)) == []


@pytest.mark.parametrize("name", OVERLAYS)
def test_pods_meet_the_standard_their_namespace_enforces(name: str) -> None:
    """Where the namespace enforces "restricted", the whole pod meets it; the
    falco-sidecar namespace relaxes it for Falco's container and no other."""
    objs = overlay(name)
    enforce = only(objs, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
    _, pod = the_workload(name)
    failing = {c["name"] for c in containers(pod) if restricted_violations(pod, c)}
    host_volumes = [v["name"] for v in pod["volumes"] if not set(v) - {"name"} <= RESTRICTED_VOLUME_TYPES]
    eventd_mounts = {m["name"] for m in eventd_container(pod)["volumeMounts"]}
    assert not eventd_mounts & set(host_volumes), "eventd must not see host paths"
    if name == "falco-sidecar":
        assert enforce == "privileged"
        assert failing == {"falco"}
    else:
        assert enforce == "restricted"
        assert failing == set()
        assert host_volumes == []
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_container_has_requests_and_limits(name: str) -> None:
    _, pod = the_workload(name)
    for container in containers(pod):
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) >= {"cpu", "memory"}, (container["name"], kind)


# -------------------------------------------------------------------- probes


@pytest.mark.parametrize("name", OVERLAYS)
def test_probes_use_the_ops_endpoint(name: str) -> None:
    _, pod = the_workload(name)
    container = eventd_container(pod)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in container:
            assert container_port(container, container[probe]["httpGet"]["port"]) == OPS_PORT


def probe_paths() -> set[str]:
    paths = set()
    for name in OVERLAYS:
        _, pod = the_workload(name)
        container = eventd_container(pod)
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in container:
                paths.add(container[probe]["httpGet"]["path"])
    return paths


@pytest.mark.asyncio
async def test_probe_paths_are_served_by_the_real_ops_server() -> None:
    paths = probe_paths()
    port = free_port()
    server = OpsServer(Listen("127.0.0.1", port), Metrics(), lambda: {"rules": True})
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            for path in [*sorted(paths), "/not-served"]:
                async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                    assert (response.status == 200) == (path in paths), path
    finally:
        await server.stop()
    assert paths == {"/healthz", "/readyz"}


# --------------------------------------------------------- the eventd config


@pytest.mark.parametrize("name", OVERLAYS)
def test_embedded_config_loads_checks_and_builds_its_inputs(name: str, tmp_path: Path) -> None:
    laid = materialise(name, tmp_path)
    config = load_config(laid.config_file, laid.env)
    result = check_config(laid.config_file, laid.env)
    assert result.returncode == 0, result.stderr
    assert "config ok" in result.stdout
    # Loopback for Falco inside the pod; mTLS for the API server.
    built = build_http_inputs(config)
    assert built == {"falco-sidecar": ["falco_http"], "audit-webhook": ["k8s_audit_webhook"]}.get(name, [])
    assert config.watch_rules
    # Every EVENTD_* variable the manifest sets lands on a key of the config.
    for var in laid.env:
        node: Any = config
        for part in var.removeprefix("EVENTD_").lower().split("__"):
            node = getattr(node, part)
        assert node == laid.env[var]


def test_base_config_loads_and_checks(tmp_path: Path) -> None:
    objs = render("base")
    config_text = only(
        objs,
        "ConfigMap",
        next(o["metadata"]["name"] for o in objs if o["metadata"]["name"].startswith("eventd-config")),
    )["data"]["eventd.yaml"]
    rules = tmp_path / "rules"
    rules.mkdir()
    for o in objs:
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("eventd-rules"):
            for key, text in o["data"].items():
                (rules / key).write_text(text, encoding="utf-8")
    text = config_text.replace("/etc/eventd/rules", str(rules)).replace(IMAGE_RULES_DIR, str(REPO / "rules"))
    (tmp_path / "eventd.yaml").write_text(text, encoding="utf-8")
    load_config(tmp_path / "eventd.yaml", {})
    result = check_config(tmp_path / "eventd.yaml", {})
    assert result.returncode == 0, result.stderr


def is_subset(small: Any, big: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and is_subset(v, big[k]) for k, v in small.items())
    return small == big


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_config_keeps_the_shared_settings(name: str) -> None:
    base = yaml.safe_load((K8S / "base" / "eventd.yaml").read_text(encoding="utf-8"))
    own = yaml.safe_load((K8S / "overlays" / name / "eventd.yaml").read_text(encoding="utf-8"))
    assert is_subset(base, own)
    assert own["server"]["listen"] == f"0.0.0.0:{OPS_PORT}"


def test_trusted_registries_match_the_allowed_registries_rule_list() -> None:
    base = yaml.safe_load((K8S / "base" / "eventd.yaml").read_text(encoding="utf-8"))
    local = yaml.safe_load((K8S / "base" / "rules" / "local.yaml").read_text(encoding="utf-8"))
    (allowed,) = [item for item in local if item.get("list") == "eventd_allowed_registries"]
    assert allowed["items"] == base["metrics"]["trusted_registries"]
    # The order: the packs first (untrusted registry first, as eventd's own
    # default), then the local files that override them.
    assert base["rules"] == [
        f"{IMAGE_RULES_DIR}/untrusted_registry.yaml",
        f"{IMAGE_RULES_DIR}/suspicious_pull.yaml",
        "/etc/eventd/rules",
    ]


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_file_the_config_names_is_provided(name: str, tmp_path: Path) -> None:
    """Files under read-only mounts exist in the pod's volumes; state paths
    (spool, checkpoints) lie on a writable volume; the image's rule packs
    exist in the repository's rules/."""
    laid = materialise(name, tmp_path)
    _, pod = the_workload(name)
    container = eventd_container(pod)
    read_only = {m["mountPath"] for m in container["volumeMounts"] if m.get("readOnly")}
    config = load_config(laid.config_file, laid.env)
    original = load_config_from(laid.original)
    state_keys = {"spool_dir", "checkpoint"}
    for (key, path), (_, local) in zip(config_paths(original), config_paths(config), strict=True):
        mount = next((m for m in sorted(laid.mounts, key=len, reverse=True) if path.startswith(m)), None)
        assert mount is not None, f"{key}: {path} is on no volume"
        if key.rsplit(".", 1)[-1] in state_keys:
            assert mount not in read_only, f"{key}: {path} must be writable"
        else:
            assert Path(local).exists(), f"{key}: {path} is not provided by the pod's volumes"
    for rule_path in original.rules:
        if rule_path.startswith(IMAGE_RULES_DIR):
            assert (REPO / "rules" / Path(rule_path).name).is_file(), rule_path
        else:
            assert resolve(laid.mounts, rule_path) is not None, rule_path


def load_config_from(data: dict[str, Any]) -> Config:
    """A config from already-parsed YAML, validated like a file."""
    return build(Config, data, "")


@pytest.mark.parametrize("name", ["falco-sidecar", "kafka-consumer"])
def test_spool_fits_on_its_volume(name: str) -> None:
    _, pod = the_workload(name)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "eventd-state"]
    size = volume["emptyDir"]["sizeLimit"]
    assert size.endswith("Mi")
    own = yaml.safe_load((K8S / "overlays" / name / "eventd.yaml").read_text(encoding="utf-8"))
    assert own["sinks"]["kafka"]["spool_max_bytes"] < int(size[:-2]) * 2**20


@pytest.mark.parametrize("name", OVERLAYS)
def test_termination_grace_covers_the_drain(name: str) -> None:
    _, pod = the_workload(name)
    container = eventd_container(pod)
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    own = load_config_from(yaml.safe_load((K8S / "overlays" / name / "eventd.yaml").read_text()))
    assert pod["terminationGracePeriodSeconds"] > own.shutdown_grace_seconds + pre_stop


@pytest.mark.parametrize("name", OVERLAYS)
def test_container_ports_are_the_configs_reachable_listeners(name: str) -> None:
    _, pod = the_workload(name)
    own = load_config_from(yaml.safe_load((K8S / "overlays" / name / "eventd.yaml").read_text()))
    reachable = {listen.port for listen in listens(own).values() if not listen.is_loopback()}
    declared = {p["containerPort"] for p in eventd_container(pod)["ports"]}
    assert declared == reachable
    assert all(listen.host == "0.0.0.0" or listen.is_loopback() for listen in listens(own).values())


# ------------------------------------------------------------ NetworkPolicy


def policies_for(objs: tuple[dict[str, Any], ...], labels: dict[str, str]) -> list[dict[str, Any]]:
    return [
        p
        for p in find(objs, "NetworkPolicy")
        if selects(p["spec"]["podSelector"].get("matchLabels", {}), labels)
    ]


@pytest.mark.parametrize("name", OVERLAYS)
def test_network_policy_allows_only_what_eventd_needs(name: str) -> None:
    objs = overlay(name)
    labels = the_workload(name)[0]["spec"]["template"]["metadata"]["labels"]
    policies = policies_for(objs, labels)
    (deny,) = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    ingress = [rule for p in policies for rule in p["spec"].get("ingress", [])]
    egress = [rule for p in policies for rule in p["spec"].get("egress", [])]
    # Ingress: every rule names its sources and ports; together they open
    # exactly the config's reachable listeners.
    opened = set()
    for rule in ingress:
        assert rule.get("from"), "ingress from anywhere"
        opened |= {p["port"] for p in rule["ports"]}
        for peer in rule["from"]:
            if "ipBlock" in peer:
                assert ipaddress.ip_network(peer["ipBlock"]["cidr"]).num_addresses < 2**16
            else:
                assert peer["namespaceSelector"]["matchLabels"], "from every namespace"
    own = load_config_from(yaml.safe_load((K8S / "overlays" / name / "eventd.yaml").read_text()))
    assert opened == {listen.port for listen in listens(own).values() if not listen.is_loopback()}
    metrics_rules = [r for r in ingress if {p["port"] for p in r["ports"]} == {OPS_PORT}]
    assert metrics_rules[0]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    # Egress: DNS, Kafka (9092/9093), Alertmanager (9093), HTTPS; nothing else.
    assert {p["port"] for rule in egress for p in rule["ports"]} == {53, 9092, 9093, 443}


# ------------------------------------------------------ per-overlay details


def test_falco_posts_its_alerts_to_the_eventd_sidecar(tmp_path: Path) -> None:
    objs = overlay("falco-sidecar")
    _, pod = the_workload("falco-sidecar")
    (sidecar,) = [c for c in pod["initContainers"] if c["name"] == "eventd"]
    assert sidecar["restartPolicy"] == "Always"
    (falco,) = [c for c in pod["containers"] if c["name"] == "falco"]
    assert falco["image"].startswith("falcosecurity/falco:")
    (snippet_mount,) = [m for m in falco["volumeMounts"] if m["mountPath"].startswith("/etc/falco/config.d/")]
    (volume,) = [v for v in pod["volumes"] if v["name"] == snippet_mount["name"]]
    snippet = yaml.safe_load(
        only(objs, "ConfigMap", volume["configMap"]["name"])["data"][snippet_mount["subPath"]]
    )
    assert snippet["json_output"] is True
    assert snippet["http_output"]["enabled"] is True
    url = urlsplit(snippet["http_output"]["url"])
    config = load_config(materialise("falco-sidecar", tmp_path).config_file, {})
    falco_http = config.sources.falco_http
    assert url.scheme == "http" and falco_http.tls is None
    assert (url.hostname, url.port, url.path) == (
        falco_http.listen.host,
        falco_http.listen.port,
        falco_http.path,
    )
    assert falco_http.listen.is_loopback()
    # The legacy gRPC output stays off: nobody drains its queue.
    assert snippet["grpc_output"]["enabled"] is False
    # /run/falco is shared as an emptyDir, for the legacy gRPC socket.
    (run,) = [v for v in pod["volumes"] if v["name"] == "falco-run"]
    assert run["emptyDir"] == {}
    for container in (sidecar, falco):
        assert "/run/falco" in {m["mountPath"] for m in container["volumeMounts"]}


@pytest.mark.parametrize("name", OVERLAYS)
def test_falco_exporter_metrics_only_where_falco_alerts_arrive(name: str, tmp_path: Path) -> None:
    """The sidecar replaces falco-exporter next to Falco: its falco_events
    family is on there (dashboards built on it keep working), off elsewhere."""
    config = load_config(materialise(name, tmp_path).config_file, {})
    assert config.metrics.falco_events is (name == "falco-sidecar")


def test_falco_input_would_refuse_a_non_loopback_address(tmp_path: Path) -> None:
    """The control for building the inputs: the same section on 0.0.0.0 is refused."""
    laid = materialise("falco-sidecar", tmp_path)
    config = load_config(laid.config_file, {**laid.env, "EVENTD_SOURCES__FALCO_HTTP__LISTEN": "0.0.0.0:2801"})
    with pytest.raises(ConfigError, match="without authentication"):
        build_http_inputs(config)


def test_webhook_would_refuse_to_start_without_client_certificates(tmp_path: Path) -> None:
    laid = materialise("audit-webhook", tmp_path)
    config = load_config(laid.config_file, laid.env)
    tls = dataclasses.replace(config.sources.k8s_audit_webhook.tls, client_ca=None)
    webhook = dataclasses.replace(config.sources.k8s_audit_webhook, tls=tls)
    with pytest.raises(ConfigError, match="without authentication"):
        build_http_inputs(
            dataclasses.replace(
                config, sources=dataclasses.replace(config.sources, k8s_audit_webhook=webhook)
            )
        )


def test_audit_webhook_is_highly_available() -> None:
    objs = overlay("audit-webhook")
    workload, _ = the_workload("audit-webhook")
    assert workload["kind"] == "Deployment" and workload["spec"]["replicas"] == 2
    pdb = only(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert selects(pdb["spec"]["selector"]["matchLabels"], workload["spec"]["template"]["metadata"]["labels"])


def test_webhook_kubeconfig_reaches_the_webhook(tmp_path: Path) -> None:
    """The API server's kubeconfig names the Service, port, path and TLS mode
    the audit-webhook overlay actually serves."""
    kubeconfig = yaml.safe_load((K8S / "audit" / "webhook-kubeconfig.yaml").read_text(encoding="utf-8"))
    (context,) = [c["context"] for c in kubeconfig["contexts"] if c["name"] == kubeconfig["current-context"]]
    (cluster,) = [c["cluster"] for c in kubeconfig["clusters"] if c["name"] == context["cluster"]]
    (user,) = [u["user"] for u in kubeconfig["users"] if u["name"] == context["user"]]
    url = urlsplit(cluster["server"])
    service_name, namespace, suffix = url.hostname.split(".")
    assert suffix == "svc"

    objs = overlay("audit-webhook")
    service = only(objs, "Service", service_name)
    assert service["metadata"]["namespace"] == namespace
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == url.port]
    workload, pod = the_workload("audit-webhook")
    assert selects(service["spec"]["selector"], workload["spec"]["template"]["metadata"]["labels"])
    target = container_port(eventd_container(pod), port["targetPort"])

    webhook = load_config(materialise("audit-webhook", tmp_path).config_file, {}).sources.k8s_audit_webhook
    assert (target, url.path) == (webhook.listen.port, webhook.path)
    assert url.scheme == "https" and webhook.tls is not None
    assert "certificate-authority" in cluster or "certificate-authority-data" in cluster
    # mTLS on both sides: the API server presents a certificate, eventd requires one.
    assert {"client-certificate", "client-key"} <= set(user)
    assert webhook.tls.client_ca is not None
    assert webhook.tls.client_ca.as_posix().startswith(str(tmp_path))


def test_kafka_consumer_reads_the_audit_topic_in_one_group() -> None:
    objs = overlay("kafka-consumer")
    workload, _ = the_workload("kafka-consumer")
    own = load_config_from(yaml.safe_load((K8S / "overlays" / "kafka-consumer" / "eventd.yaml").read_text()))
    assert own.sources.kafka.topics == ("k8s-audit",)
    assert own.sources.kafka.group_id == "eventd"
    hpa = only(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]
    assert 1 < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # The autoscaler owns the replica count.
    assert "replicas" not in workload["spec"]
    # Scale-in drains the spool to the broker before committing, within the grace.
    assert own.sources.kafka.drain_timeout_seconds < own.shutdown_grace_seconds


# -------------------------------------------------------------- audit policy


@dataclasses.dataclass(frozen=True)
class Request:
    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = "default"
    user: str = "alice"
    groups: tuple[str, ...] = ("system:authenticated",)
    path: str | None = None  #: set for non-resource requests (/healthz...)


POLICY_RULE_KEYS = {
    "level",
    "users",
    "userGroups",
    "verbs",
    "resources",
    "namespaces",
    "nonResourceURLs",
    "omitStages",
}
LEVELS = ("None", "Metadata", "Request", "RequestResponse")


def _resource_matches(rule: dict[str, Any], req: Request) -> bool:
    if rule.get("nonResourceURLs"):
        return False
    if rule.get("namespaces") and req.namespace not in rule["namespaces"]:
        return False
    if not rule.get("resources"):
        return True
    combined = f"{req.resource}/{req.subresource}" if req.subresource else req.resource
    for group in rule["resources"]:
        if group.get("group", "") != req.group:
            continue
        names = group.get("resources") or []
        if not names:
            return True
        for name in names:
            if name in (combined, "*"):
                return True
            if req.subresource and name in (f"*/{req.subresource}", f"{req.resource}/*"):
                return True
    return False


def _non_resource_matches(rule: dict[str, Any], req: Request) -> bool:
    assert req.path is not None
    if rule.get("resources") or rule.get("namespaces"):
        return False
    urls = rule.get("nonResourceURLs") or []
    if not urls:
        return True
    return any(req.path == u or (u.endswith("*") and req.path.startswith(u[:-1])) for u in urls)


def audit_level(policy: dict[str, Any], req: Request) -> str:
    """The level the API server logs ``req`` at: the first rule that matches."""
    for rule in policy["rules"]:
        if rule.get("users") and req.user not in rule["users"]:
            continue
        if rule.get("userGroups") and not set(req.groups) & set(rule["userGroups"]):
            continue
        if rule.get("verbs") and req.verb not in rule["verbs"]:
            continue
        matches = _non_resource_matches if req.path is not None else _resource_matches
        if matches(rule, req):
            return rule["level"]
    return "None"


@functools.cache
def audit_policy() -> dict[str, Any]:
    return yaml.safe_load((K8S / "audit" / "audit-policy.yaml").read_text(encoding="utf-8"))


def test_audit_policy_is_well_formed() -> None:
    policy = audit_policy()
    assert (policy["apiVersion"], policy["kind"]) == ("audit.k8s.io/v1", "Policy")
    assert "RequestReceived" in policy["omitStages"]
    for rule in policy["rules"]:
        assert set(rule) <= POLICY_RULE_KEYS, rule
        assert rule["level"] in LEVELS


VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")


@given(
    verb=st.sampled_from(VERBS),
    namespace=st.sampled_from(["default", "kube-system", "team-a", ""]),
    user=st.sampled_from(["alice", "system:serviceaccount:kube-system:default", "system:admin"]),
    groups=st.sampled_from([("system:authenticated",), ("system:masters",), ("system:nodes",)]),
)
def test_secrets_and_tokens_are_never_logged_with_bodies(
    verb: str, namespace: str, user: str, groups: tuple[str, ...]
) -> None:
    policy = audit_policy()
    for req in (
        Request(verb, "", "secrets", namespace=namespace, user=user, groups=groups),
        Request(verb, "", "serviceaccounts", "token", namespace=namespace, user=user, groups=groups),
        Request(verb, "authentication.k8s.io", "tokenreviews", namespace="", user=user, groups=groups),
    ):
        assert audit_level(policy, req) == "Metadata", req


@pytest.mark.parametrize(
    ("req", "level"),
    [
        (Request("create", "", "pods"), "RequestResponse"),
        (Request("patch", "", "pods"), "RequestResponse"),
        (Request("patch", "", "pods", "ephemeralcontainers"), "RequestResponse"),
        (Request("create", "apps", "deployments"), "RequestResponse"),
        (Request("patch", "apps", "deployments"), "RequestResponse"),
        (Request("update", "apps", "daemonsets"), "RequestResponse"),
        (Request("create", "batch", "cronjobs"), "RequestResponse"),
        (Request("get", "", "pods"), "Metadata"),
        (Request("update", "", "pods", "status"), "Metadata"),
        (Request("patch", "apps", "deployments", "scale"), "Metadata"),
        (Request("get", "", "configmaps"), "Metadata"),
        (Request("watch", "coordination.k8s.io", "leases"), "None"),
        (Request("get", path="/healthz"), "None"),
        (Request("get", path="/version"), "Metadata"),
    ],
)
def test_audit_policy_levels(req: Request, level: str) -> None:
    assert audit_level(audit_policy(), req) == level


def test_audit_policy_simulation_is_first_match_wins() -> None:
    """The control: a broad rule placed before the credentials rule would log
    Secret writes with bodies, and the simulation sees it."""
    policy = audit_policy()
    broad = {"level": "Request", "verbs": ["create", "update", "patch"]}
    earlier = {**policy, "rules": [broad, *policy["rules"]]}
    later = {**policy, "rules": [*policy["rules"], broad]}
    assert audit_level(earlier, Request("create", "", "secrets")) == "Request"
    assert audit_level(later, Request("create", "", "secrets")) == "Metadata"
