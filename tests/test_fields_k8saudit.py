"""ka.* fields: upstream value conventions, eventd's corrected twins, pod templates."""

from __future__ import annotations

import copy

import pytest

from eventd.engine.ast import FieldRef
from eventd.engine.errors import FieldError
from eventd.engine.fields import default_registry
from eventd.engine.fields.base import ArgKind
from eventd.engine.fields.podspec import locate, request_pod_spec, response_pod_spec
from eventd.events.model import K8S_AUDIT, Event

DIGEST = "sha256:" + "ab" * 32


def audit(version: str = "v1", **extra) -> dict:
    """A small create-pod audit event; ``extra`` overrides top-level keys."""
    doc = {
        "kind": "Event",
        "apiVersion": f"audit.k8s.io/{version}",
        "level": "RequestResponse",
        "auditID": "4f6c7b1e-0000-4000-8000-000000000001",
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/team/pods?dryRun=All&fieldManager=kubectl%20client",
        "verb": "create",
        "user": {"username": "alice@example.com", "groups": ["devs", "system:authenticated"]},
        "sourceIPs": ["203.0.113.9", "10.0.0.7"],
        "userAgent": "kubectl/v1.30.0",
        "objectRef": {"resource": "pods", "namespace": "team", "name": "web", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 201},
        "requestObject": {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "web"}, "spec": {}},
        "responseObject": {"kind": "Pod", "metadata": {"name": "web-server"}, "spec": {}},
        "requestReceivedTimestamp": "2024-05-01T10:00:00.100000Z",
        "stageTimestamp": "2024-05-01T10:00:00.123456Z",
        "annotations": {
            "authorization.k8s.io/decision": "allow",
            "authorization.k8s.io/reason": 'RBAC: allowed by RoleBinding "devs"',
        },
    }
    if version == "v1beta1":
        doc["metadata"] = {"creationTimestamp": "2024-05-01T10:00:00Z"}
        doc["timestamp"] = "2024-05-01T10:00:00Z"
    doc.update(extra)
    return doc


def pod(spec: dict, version: str = "v1", **extra) -> dict:
    doc = audit(version, **extra)
    doc["requestObject"]["spec"] = spec
    return doc


def get(name: str, doc: dict, arg: str | None = None):
    bound = default_registry().bind(K8S_AUDIT, FieldRef(name, arg))
    return bound.get(Event(K8S_AUDIT, doc))


def ka_defs():
    return [d for n, d in default_registry().fieldset(K8S_AUDIT).defs.items() if n.startswith("ka.")]


# ---------------------------------------------------------------- top level


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_top_level_scalars(version):
    doc = audit(version)
    assert get("ka.auditid", doc) == "4f6c7b1e-0000-4000-8000-000000000001"
    assert get("ka.stage", doc) == "ResponseComplete"
    assert get("ka.verb", doc) == "create"
    assert get("ka.user.name", doc) == "alice@example.com"
    assert get("ka.user.groups", doc) == ("devs", "system:authenticated")
    assert get("ka.uri", doc).startswith("/api/v1/namespaces/team/pods?")
    assert get("ka.useragent", doc) == "kubectl/v1.30.0"
    assert get("ka.target.name", doc) == "web"
    assert get("ka.target.namespace", doc) == "team"
    assert get("ka.target.resource", doc) == "pods"
    assert get("ka.target.subresource", doc) is None
    assert get("ka.resp.name", doc) == "web-server"
    assert get("ka.response.code", doc) == "201"
    assert get("ka.response.reason", doc) is None
    assert get("ka.auth.decision", doc) == "allow"
    assert get("ka.auth.reason", doc) == 'RBAC: allowed by RoleBinding "devs"'
    assert get("ka.req.configmap.name", doc) == "web"


def test_annotation_fields():
    doc = audit(
        annotations={
            "authentication.openshift.io/decision": "allow",
            "authentication.openshift.io/username": "kube:admin",
            "validation.policy.admission.k8s.io/validation_failure": '[{"message":"no"}]',
            "pod-security.kubernetes.io/audit-violations": "privileged (container x)",
            "cluster_name": "prod-eu",
        },
        impersonatedUser={"username": "bob"},
    )
    assert get("ka.auth.openshift.decision", doc) == "allow"
    assert get("ka.auth.openshift.username", doc) == "kube:admin"
    assert get("ka.validations.admission.policy.failure", doc) == '[{"message":"no"}]'
    assert get("ka.security.pod.violations", doc) == "privileged (container x)"
    assert get("ka.cluster.name", doc) == "prod-eu"
    assert get("ka.impuser.name", doc) == "bob"
    assert get("ka.auth.decision", doc) is None


def test_every_ka_field_is_missing_without_audit_id():
    doc = pod(
        {
            "containers": [{"name": "c", "image": "nginx", "ports": [{"hostPort": 80}]}],
            "volumes": [{"name": "v", "hostPath": {"path": "/etc"}}],
            "hostNetwork": True,
        }
    )
    assert get("ka.req.binding.subject.has_name", doc, "x") == "true"
    assert get("ka.req.volume.hostpath", doc, "/etc") == "true"
    del doc["auditID"]
    for d in ka_defs():
        arg = {ArgKind.NONE: None, ArgKind.INDEX: None, ArgKind.KEY: "/etc"}[d.arg]
        assert get(d.name, doc, arg) is None, d.name


def test_non_string_values_are_compact_json():
    doc = audit(
        responseStatus={"code": 403, "reason": None},
        requestObject={"data": {"k": "v", "n": [1, True, None]}, "spec": {"hostNetwork": True}},
    )
    assert get("ka.response.code", doc) == "403"
    assert get("ka.response.reason", doc) == "null"  # JSON null is a value, as upstream
    assert get("ka.req.configmap.obj", doc) == '{"k":"v","n":[1,true,null]}'
    assert get("ka.req.pod.host_network", doc) == "true"
    assert get("ka.req.container.host_network", doc) == "true"


def test_wrong_shapes_count_as_missing():
    assert get("ka.response.code", audit(responseStatus={"code": [201]})) is None
    assert get("ka.user.groups", audit(user={"groups": "devs"})) is None
    assert get("ka.user.groups", audit(user={"groups": []})) is None
    assert get("ka.user.name", audit(user="alice")) is None
    assert get("ka.req.pod.containers.image", pod({"containers": {"image": "nginx"}})) is None
    assert get("ka.req.pod.containers.image", audit(requestObject="not an object")) is None
    assert get("ka.req.role.rules.verbs", audit(requestObject={"rules": {"verbs": ["get"]}})) is None


RAW_FIELDS = {
    "ka.verb",
    "ka.stage",
    "ka.level",
    "ka.target.resource",
    "ka.target.subresource",
    "ka.target.namespace",
    "ka.target.name",
    "ka.user.name",
}


def test_indexable_fields_are_exactly_the_promised_ones():
    from eventd.events.header import HEADER_FIELDS

    assert {d.name for d in ka_defs() if d.indexable} == RAW_FIELDS == set(HEADER_FIELDS)


def test_indexable_fields_yield_only_strings():
    doc = audit(
        verb=7, stage=True, level=3, user={"username": {"a": 1}}, objectRef={"name": 1.5, "resource": None}
    )
    for name in RAW_FIELDS:
        assert get(name, doc) is None, name
    assert get("ka.auditid", audit(auditID=12)) == "12"  # not raw: marshalled as upstream


# -------------------------------------------------------------- uri / target


def test_uri_param():
    uri = "/api/v1/pods?watch=true&labelSelector=app%3Dweb&empty=&dup=1&dup=2&plus=a+b#frag"
    doc = audit(requestURI=uri)
    assert get("ka.uri.param", doc, "watch") == "true"
    assert get("ka.uri.param", doc, "labelSelector") == "app=web"
    assert get("ka.uri.param", doc, "empty") == ""
    assert get("ka.uri.param", doc, "dup") == "1"
    assert get("ka.uri.param", doc, "plus") == "a b"
    assert get("ka.uri.param", doc, "frag") is None
    assert get("ka.uri.param", doc, "absent") is None
    assert get("ka.uri.param", audit(requestURI="/healthz"), "watch") is None
    no_uri = audit()
    del no_uri["requestURI"]
    assert get("ka.uri.param", no_uri, "watch") is None


def test_target_pod_name_only_for_pods_without_subresource():
    assert get("ka.target.pod.name", audit()) == "web-server"
    exec_doc = audit(objectRef={"resource": "pods", "subresource": "exec", "name": "web"})
    assert get("ka.target.pod.name", exec_doc) is None
    assert get("ka.target.subresource", exec_doc) == "exec"
    assert get("ka.target.pod.name", audit(objectRef={"resource": "deployments"})) is None
    assert get("ka.target.pod.name", audit(responseObject={})) is None


def test_sourceips_keeps_upstream_path_and_source_ips_is_correct():
    doc = audit()
    assert get("ka.sourceips", doc) is None  # upstream reads requestObject.rules[*].sourceIPs
    assert get("ka.source.ips", doc) == ("203.0.113.9", "10.0.0.7")
    odd = audit(
        requestObject={"rules": [{"sourceIPs": ["1.1.1.1", "2.2.2.2"]}, {}, {"sourceIPs": ["3.3.3.3"]}]}
    )
    assert get("ka.sourceips", odd) == ("1.1.1.1", "2.2.2.2", "3.3.3.3")
    assert get("ka.sourceips", odd, "2") == ("3.3.3.3",)
    assert get("ka.sourceips", odd, "1") is None


# ------------------------------------------------------------ rbac / service


def binding_doc() -> dict:
    return audit(
        objectRef={"resource": "clusterrolebindings", "name": "b"},
        requestObject={
            "kind": "ClusterRoleBinding",
            "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [
                {"kind": "User", "name": "alice"},
                {"kind": "Group", "name": "devs"},
                {"kind": "ServiceAccount", "name": "builder", "namespace": "ci"},
                {"kind": "ServiceAccount", "name": "nons"},
                {"kind": "User"},
            ],
        },
    )


def test_binding_fields():
    doc = binding_doc()
    subjects = get("ka.req.binding.subjects", doc)
    assert subjects[0] == '{"kind":"User","name":"alice"}' and len(subjects) == 5
    assert get("ka.req.binding.subjects.user_names", doc) == ("alice",)
    assert get("ka.req.binding.subjects.group_names", doc) == ("devs",)
    assert get("ka.req.binding.subjects.serviceaccount_names", doc) == ("builder", "nons")
    assert get("ka.req.binding.subjects.serviceaccount_ns_names", doc) == ("ci:builder", ":nons")
    assert get("ka.req.binding.role", doc) == "cluster-admin"
    assert get("ka.req.binding.subject.has_name", doc, "anything") == "true"
    assert get("ka.req.binding.subjects.group_names", audit()) is None


def test_role_rules():
    doc = audit(
        requestObject={
            "rules": [
                {"apiGroups": [""], "resources": ["pods", "pods/exec"], "verbs": ["get", "create"]},
                {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
                {"apiGroups": ["apps"], "resources": ["deployments"]},
            ]
        }
    )
    assert get("ka.req.role.rules", doc)[1] == '{"nonResourceURLs":["/metrics"],"verbs":["get"]}'
    assert get("ka.req.role.rules.verbs", doc) == ("get", "create", "get")
    assert get("ka.req.role.rules.verbs", doc, "0") == ("get", "create")  # all verbs of rule 0
    assert get("ka.req.role.rules.verbs", doc, "2") is None
    assert get("ka.req.role.rules.verbs", doc, "3") is None
    assert get("ka.req.role.rules.apiGroups", doc) == ("", "apps")
    assert get("ka.req.role.rules.resources", doc) == ("pods", "pods/exec", "deployments")
    assert get("ka.req.role.rules.nonResourceURLs", doc) == ("/metrics",)


def test_service_fields():
    ports = [{"port": 80, "nodePort": 30080}, {"port": 443, "protocol": "TCP"}]
    doc = audit(requestObject={"kind": "Service", "spec": {"type": "NodePort", "ports": ports}})
    assert get("ka.req.service.type", doc) == "NodePort"
    assert get("ka.req.service.ports", doc) == (
        '{"port":80,"nodePort":30080}',
        '{"port":443,"protocol":"TCP"}',
    )
    assert get("ka.req.service.ports", doc, "1") == ('{"port":443,"protocol":"TCP"}',)
    assert get("ka.req.service.ports", doc, "2") is None


# --------------------------------------------------------------- pod level


def test_pod_level_fields():
    spec = {
        "hostIPC": False,
        "hostPID": True,
        "hostNetwork": True,
        "securityContext": {
            "runAsUser": 1000,
            "runAsGroup": 3000,
            "fsGroup": 2000,
            "supplementalGroups": [4, 5],
        },
        "serviceAccountName": "web-sa",
        "serviceAccount": "legacy-sa",
        "imagePullSecrets": [{"name": "regcred"}, {}, {"name": "other"}],
        "containers": [{"name": "c", "image": "nginx"}],
    }
    doc = pod(spec)
    assert get("ka.req.pod.host_ipc", doc) == "false"
    assert get("ka.req.pod.host_pid", doc) == "true"
    assert get("ka.req.pod.host_network", doc) == "true"
    assert get("ka.req.pod.run_as_user", doc) == "1000"
    assert get("ka.req.pod.run_as_group", doc) == "3000"
    assert get("ka.req.pod.fs_group", doc) == "2000"
    assert get("ka.req.pod.supplemental_groups", doc) == ("4", "5")
    assert get("ka.req.pod.service_account", doc) == "web-sa"
    assert get("ka.req.pod.image_pull_secrets", doc) == ("regcred", "other")
    del spec["serviceAccountName"]
    assert get("ka.req.pod.service_account", pod(spec)) == "legacy-sa"
    assert get("ka.req.pod.service_account", pod({})) is None
    assert get("ka.req.pod.image_pull_secrets", pod({})) is None
    assert get("ka.req.pod.host_ipc", pod({})) is None


def test_volume_fields():
    volumes = [
        {"name": "etc", "hostPath": {"path": "/etc", "type": "Directory"}},
        {"name": "cfg", "configMap": {"name": "cfg"}},
        {"name": "sock", "hostPath": {"path": "/var/run/docker.sock"}},
        {"name": "flex", "flexVolume": {"driver": "acme/fs"}},
    ]
    doc = pod({"volumes": volumes})
    assert get("ka.req.pod.volumes.hostpath", doc) == ("/etc", "/var/run/docker.sock")
    assert get("ka.req.pod.volumes.hostpath", doc, "2") == ("/var/run/docker.sock",)
    assert get("ka.req.pod.volumes.hostpath", doc, "1") is None
    assert get("ka.req.pod.volumes.flexvolume_driver", doc) == ("acme/fs",)
    assert get("ka.req.pod.volumes.volume_type", doc) == ("hostPath", "configMap", "hostPath", "flexVolume")
    assert get("ka.req.pod.volumes.volume_type", doc, "1") == ("configMap",)
    assert get("ka.req.volume.hostpath", doc, "/etc") == "true"
    assert get("ka.req.volume.hostpath", doc, "/var/run/docker.sock") == "true"  # any volume, not just #0
    assert get("ka.req.volume.hostpath", doc, "/var/*") == "true"
    assert get("ka.req.volume.hostpath", doc, "/var") == "false"
    assert get("ka.req.volume.hostpath", doc, "/usr/*") == "false"
    no_host = pod({"volumes": [{"name": "cfg", "configMap": {}}]})
    assert get("ka.req.volume.hostpath", no_host, "/etc") == "false"
    assert get("ka.req.volume.hostpath", pod({}), "/etc") is None
    assert get("ka.req.pod.volumes.hostpath", no_host) is None


# ------------------------------------------------------------ per container


def test_skip_missing_versus_all_or_nothing():
    spec = {
        "containers": [
            {"name": "a", "image": "nginx"},
            {"name": "b", "securityContext": {"privileged": True}},
        ]
    }
    doc = pod(spec)
    # skip convention: the container without the key is dropped, so [0] is not container 0
    assert get("ka.req.pod.containers.privileged", doc) == ("true",)
    assert get("ka.req.pod.containers.privileged", doc, "0") is None
    assert get("ka.req.pod.containers.privileged", doc, "1") == ("true",)
    # all-or-nothing: one container without an image hides every image
    assert get("ka.req.pod.containers.image", doc) is None
    assert get("ka.req.pod.containers.image.repository", doc) is None
    assert get("ka.req.pod.containers.image", doc, "0") == ("nginx",)
    assert get("ka.req.pod.containers.image", doc, "1") is None
    assert get("ka.req.pod.containers.image", doc, "2") is None


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("reg:5000/app:1", "reg:5000/app"),  # eventd keeps the port; upstream would say "reg"
        ("localhost:5000/team/app", "localhost:5000/team/app"),
        ("mysql:latest", "mysql"),
        ("nginx", "nginx"),
        (f"ghcr.io/org/app:v1@{DIGEST}", "ghcr.io/org/app"),
        (f"app@{DIGEST}", "app"),
        ("NOT A REF:x", "NOT A REF"),
    ],
)
def test_image_repository(image, repository):
    doc = pod({"containers": [{"name": "c", "image": image}, {"name": "d", "image": "busybox:1.36"}]})
    assert get("ka.req.pod.containers.image.repository", doc) == (repository, "busybox")
    assert get("ka.req.pod.containers.image.repository", doc, "0") == (repository,)
    assert get("ka.req.container.image.repository", doc) == repository
    assert get("ka.req.container.image", doc) == image


def test_container_fields():
    c0 = {
        "name": "app",
        "image": "nginx",
        "command": ["/bin/sh", "-c"],
        "args": ["echo", 1],
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": True,
            "readOnlyRootFilesystem": True,
            "runAsUser": 0,
            "runAsGroup": 10,
            "procMount": "Unmasked",
            "capabilities": {"add": ["NET_ADMIN", "SYS_TIME"], "drop": ["ALL"]},
        },
        "ports": [{"containerPort": 8080}, {"containerPort": 53, "hostPort": 5353}, {"name": "x"}],
    }
    c1 = {"name": "side", "image": "busybox", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}
    doc = pod({"containers": [c0, c1, {"name": "bare", "image": "x"}]})
    p = "ka.req.pod.containers."
    assert get(p + "name", doc) == ("app", "side", "bare")
    assert get(p + "name", doc, "1") == ("side",)
    assert get(p + "command", doc) == ("/bin/sh -c",)
    assert get(p + "args", doc) == ("echo 1",)
    assert get(p + "privileged", doc) == ("false",)
    assert get(p + "allow_privilege_escalation", doc) == ("true",)
    assert get(p + "read_only_fs", doc) == ("true",)
    assert get(p + "run_as_user", doc) == ("0",)
    assert get(p + "run_as_group", doc) == ("10",)
    assert get(p + "proc_mount", doc) == ("Unmasked",)
    assert get(p + "add_capabilities", doc) == ('["NET_ADMIN","SYS_TIME"]', '["SYS_ADMIN"]')
    assert get(p + "added_capabilities", doc) == ("NET_ADMIN", "SYS_TIME", "SYS_ADMIN")
    assert get(p + "added_capabilities", doc, "1") == ("SYS_ADMIN",)
    assert get(p + "added_capabilities", doc, "2") is None
    assert get(p + "host_port", doc) == ("8080", "5353")
    assert get(p + "host_port", doc, "0") == ("8080", "5353")
    assert get(p + "host_port", doc, "1") is None
    assert get("ka.req.container.privileged", doc) == "false"
    c1["securityContext"]["privileged"] = True
    assert get("ka.req.container.privileged", doc) == "true"
    assert get("ka.req.container.privileged", pod({})) is None
    assert get("ka.req.container.image", pod({"containers": []})) is None


def test_host_port_with_ports_not_an_array_is_missing():
    doc = pod({"containers": [{"ports": [{"hostPort": 80}]}, {"ports": {"hostPort": 81}}]})
    assert get("ka.req.pod.containers.host_port", doc) is None


def test_upstream_eff_run_as_user_quirk():
    sc = {"securityContext": {"runAsUser": 1000}}
    doc = pod({"securityContext": {"runAsUser": 2000}, "containers": [dict(sc), {"runAsUser": 7}]})
    # upstream reads container.runAsUser and spec.runAsUser, missing both securityContexts
    assert get("ka.req.pod.containers.eff_run_as_user", doc) == ("0", "7")
    assert get("ka.req.pod.containers.eff_run_as_user", doc, "1") == ("7",)
    assert get("ka.req.pod.containers.eff_run_as_user", doc, "2") is None
    odd = pod({"runAsGroup": 5, "containers": [{}, {"runAsGroup": 6}]})
    assert get("ka.req.pod.containers.eff_run_as_group", odd) == ("5", "6")


def test_effective_run_as_user_and_group():
    spec = {
        "securityContext": {"runAsUser": 2000},
        "containers": [{"securityContext": {"runAsUser": 1000, "runAsGroup": 30}}, {}],
    }
    doc = pod(spec)
    assert get("ka.req.pod.containers.effective_run_as_user", doc) == ("1000", "2000")
    assert get("ka.req.pod.containers.effective_run_as_group", doc) == ("30", "")
    assert get("ka.req.pod.containers.effective_run_as_group", doc, "0") == ("30",)
    assert get("ka.req.pod.containers.effective_run_as_group", doc, "1") is None
    assert get("ka.req.pod.containers.effective_run_as_user", pod({"containers": [{}]})) == ("",)


def test_image_pull_policy_is_aligned():
    doc = pod({"containers": [{"image": "a"}, {"image": "b", "imagePullPolicy": "Always"}]})
    assert get("ka.req.pod.containers.image_pull_policy", doc) == ("", "Always")
    assert get("ka.req.pod.containers.image_pull_policy", doc, "0") == ("",)
    assert get("ka.req.pod.containers.image_pull_policy", doc, "1") == ("Always",)
    assert get("ka.req.pod.containers.image_pull_policy", doc, "2") is None


def test_init_and_ephemeral_families_are_separate():
    spec = {
        "containers": [{"name": "app", "image": "nginx"}],
        "initContainers": [{"name": "init", "image": "busybox", "securityContext": {"privileged": True}}],
        "ephemeralContainers": [
            {
                "name": "debug",
                "image": "reg:5000/debug:1",
                "command": ["sh"],
                "securityContext": {"runAsUser": 0},
            }
        ],
    }
    doc = pod(spec)
    assert get("ka.req.pod.containers.image", doc) == ("nginx",)
    assert get("ka.req.pod.containers.privileged", doc) is None
    assert get("ka.req.pod.initContainers.privileged", doc) == ("true",)
    assert get("ka.req.pod.initContainers.name", doc) == ("init",)
    assert get("ka.req.pod.ephemeralContainers.image.repository", doc) == ("reg:5000/debug",)
    assert get("ka.req.pod.ephemeralContainers.command", doc) == ("sh",)
    assert get("ka.req.pod.ephemeralContainers.effective_run_as_user", doc) == ("0",)
    assert get("ka.req.container.image", doc) == "nginx"


# --------------------------------------------------------- pod templates


TEMPLATE = {
    "containers": [{"name": "app", "image": "evil.io/miner:1", "securityContext": {"privileged": True}}]
}

WORKLOADS = [
    ("Pod", "pods", lambda s: {"spec": s}),
    ("Deployment", "deployments", lambda s: {"spec": {"replicas": 2, "template": {"spec": s}}}),
    ("DaemonSet", "daemonsets", lambda s: {"spec": {"template": {"spec": s}}}),
    ("StatefulSet", "statefulsets", lambda s: {"spec": {"template": {"spec": s}}}),
    ("ReplicaSet", "replicasets", lambda s: {"spec": {"template": {"spec": s}}}),
    ("ReplicationController", "replicationcontrollers", lambda s: {"spec": {"template": {"spec": s}}}),
    ("Job", "jobs", lambda s: {"spec": {"template": {"spec": s}}}),
    ("PodTemplate", "podtemplates", lambda s: {"template": {"spec": s}}),
    ("CronJob", "cronjobs", lambda s: {"spec": {"jobTemplate": {"spec": {"template": {"spec": s}}}}}),
]


@pytest.mark.parametrize(("kind", "resource", "wrap"), WORKLOADS, ids=[w[0] for w in WORKLOADS])
@pytest.mark.parametrize("by", ["kind", "resource"])
def test_pod_fields_see_workload_templates(kind, resource, wrap, by):
    obj = wrap(copy.deepcopy(TEMPLATE))
    if by == "kind":
        obj["kind"] = kind
        ref = {"resource": "unrelated"}
    else:
        ref = {"resource": resource, "namespace": "team"}
    doc = audit(objectRef=ref, requestObject=obj, responseObject=copy.deepcopy(obj))
    assert get("ka.req.pod.containers.image", doc) == ("evil.io/miner:1",)
    assert get("ka.req.pod.containers.privileged", doc) == ("true",)
    assert get("ka.req.container.image.repository", doc) == "evil.io/miner"
    ev = Event(K8S_AUDIT, doc)
    assert response_pod_spec(ev) == request_pod_spec(ev)
    assert request_pod_spec(ev)["containers"][0]["name"] == "app"


def test_kind_wins_over_resource_and_unknown_objects_keep_upstream_spec():
    deployment = {"kind": "Deployment", "spec": {"template": {"spec": TEMPLATE}}}
    assert (
        locate({"objectRef": {"resource": "pods"}, "requestObject": deployment}, "requestObject") is TEMPLATE
    )
    custom = {"kind": "Workflow", "spec": TEMPLATE}
    assert (
        locate({"objectRef": {"resource": "workflows"}, "requestObject": custom}, "requestObject") is TEMPLATE
    )
    scale = {"kind": "Scale", "spec": {"replicas": 3}}
    assert locate({"objectRef": {"resource": "deployments"}, "requestObject": scale}, "requestObject") is None
    assert locate({"requestObject": {"kind": "Pod", "spec": "oops"}}, "requestObject") is None
    assert locate({"requestObject": []}, "requestObject") is None
    assert locate([], "requestObject") is None


def test_pod_spec_is_located_once_per_event():
    doc = pod({"containers": [{"image": "nginx"}]})
    ev = Event(K8S_AUDIT, doc)
    first = request_pod_spec(ev)
    doc["requestObject"] = {"kind": "Pod", "spec": {"containers": [{"image": "other"}]}}
    assert request_pod_spec(ev) is first  # served from the event cache
    assert request_pod_spec(Event(K8S_AUDIT, doc)) is not first


def test_patch_without_kind_uses_object_ref():
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}}}
    doc = audit(verb="patch", objectRef={"resource": "deployments", "name": "web"}, requestObject=patch)
    assert get("ka.req.pod.containers.image", doc) == ("nginx:1.27",)


# ----------------------------------------------------------------- binding


@pytest.mark.parametrize(
    ("name", "arg", "message"),
    [
        ("ka.verb", "0", "does not allow"),
        ("ka.uri.param", None, "requires an argument"),
        ("ka.req.volume.hostpath", None, "requires an argument"),
        ("ka.req.pod.containers.image", "01", "index argument"),
        ("ka.req.pod.containers.image", "x", "index argument"),
        ("ka.no.such.field", None, "unknown field"),
    ],
)
def test_argument_checks(name, arg, message):
    with pytest.raises(FieldError, match=message):
        default_registry().bind(K8S_AUDIT, FieldRef(name, arg))


def test_every_container_family_has_every_suffix():
    defs = default_registry().fieldset(K8S_AUDIT).defs
    suffixes = {
        n.removeprefix("ka.req.pod.containers.") for n in defs if n.startswith("ka.req.pod.containers.")
    }
    assert {"image", "image.repository", "eff_run_as_user", "host_port", "added_capabilities"} <= suffixes
    for family in ("initContainers", "ephemeralContainers"):
        for suffix in suffixes:
            d = defs[f"ka.req.pod.{family}.{suffix}"]
            assert d.is_list and d.arg is ArgKind.INDEX
