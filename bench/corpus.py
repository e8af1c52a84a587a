"""Deterministic generator of a realistic Kubernetes audit log (JSON lines).

Why this shape: a busy cluster's audit log is dominated by traffic that image
rules never match (lease renewals every few seconds per node and controller,
informer get/list/watch), with a small minority of pod and workload creates
that are large (``RequestResponse`` level, several KB) and are the only events
image rules care about.  A benchmark on a corpus of pod creates alone would
measure the wrong thing, so the mix here follows that distribution.

Everything derives from one ``random.Random(seed)``: no clock, no uuid4, no
hash-order dependence, so the same seed always gives the same bytes.

CLI::

    python bench/corpus.py --events 200000 --seed 1 --out /tmp/audit.jsonl [--pod-ratio 0.01]
"""

from __future__ import annotations

import argparse
import random
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

#: Namespaces where application teams deploy; ``bench/rulesets.py`` names its
#: first teams after these so that generated rules actually match the corpus.
APP_NAMESPACES = (
    "payments",
    "checkout",
    "search",
    "web",
    "data",
    "ml",
    "identity",
    "billing",
    "monitoring",
    "default",
)
#: Registries the generated rule sets trust; images outside them exist in the
#: corpus on purpose (docker.io library images, ``registry:5000``, ghcr.io).
TRUSTED_REGISTRIES = ("gcr.io", "myregistry.io", "quay.io", "registry.k8s.io")

_K8S_VERSION = "v1.29.4"
_GIT_COMMIT = "bcb4f5d"
_BASE_TIME_US = 1_714_557_600_000_000  # 2024-05-01T10:00:00Z

_NODES = tuple(f"ip-10-0-{i // 16}-{17 + 7 * i % 200}.ec2.internal" for i in range(40))

_CONTROLLERS = (
    # (username, user agent prefix, groups)
    ("system:kube-controller-manager", "kube-controller-manager", ("system:authenticated",)),
    ("system:kube-scheduler", "kube-scheduler", ("system:authenticated",)),
    (
        "system:serviceaccount:kube-system:endpointslice-controller",
        "kube-controller-manager",
        ("system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"),
    ),
    (
        "system:serviceaccount:kube-system:replicaset-controller",
        "kube-controller-manager",
        ("system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"),
    ),
    (
        "system:serviceaccount:kube-system:coredns",
        "coredns",
        ("system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"),
    ),
    (
        "system:serviceaccount:cert-manager:cert-manager",
        "cert-manager-controller",
        ("system:serviceaccounts", "system:serviceaccounts:cert-manager", "system:authenticated"),
    ),
    (
        "system:serviceaccount:argocd:argocd-application-controller",
        "argocd-application-controller",
        ("system:serviceaccounts", "system:serviceaccounts:argocd", "system:authenticated"),
    ),
    (
        "system:serviceaccount:monitoring:prometheus-operator",
        "PrometheusOperator",
        ("system:serviceaccounts", "system:serviceaccounts:monitoring", "system:authenticated"),
    ),
    (
        "system:serviceaccount:ingress-nginx:ingress-nginx",
        "nginx-ingress-controller",
        ("system:serviceaccounts", "system:serviceaccounts:ingress-nginx", "system:authenticated"),
    ),
)

_DEPLOYERS = (
    ("system:serviceaccount:argocd:argocd-application-controller", ("system:serviceaccounts",)),
    ("system:serviceaccount:ci:gitlab-runner", ("system:serviceaccounts",)),
    ("alice@example.com", ("dev-payments", "system:authenticated")),
    ("bob@example.com", ("dev-web", "system:authenticated")),
    ("kubernetes-admin", ("system:masters", "system:authenticated")),
)

# Image references as they appear in real pod specs, deliberately mixing the
# spellings an image parser has to get right (implicit docker.io, ports,
# digests, ``:latest``, no tag at all).
_DIGEST_HEX = "9b2f1a6c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8"
#: Images from the registries the built-in packs trust by default (most
#: workloads: a cluster whose allow-list fits it alerts on exceptions)...
_TRUSTED_IMAGES = (
    "gcr.io/my-project/payments-api:2.14.0",
    "gcr.io/my-project/checkout-web:1.8.3",
    "gcr.io/my-project/search-indexer@sha256:" + _DIGEST_HEX,
    "gcr.io/my-project/distroless/static:nonroot",
    "myregistry.io/team/app:1.2",
    "myregistry.io/payments/ledger:3.0.1",
    "myregistry.io/data/spark-runner:3.5.1",
    "myregistry.io/mirror/prometheus/node-exporter:v1.7.0",
    "myregistry.io/mirror/jetstack/cert-manager-controller:v1.14.4",
    "docker.io/library/nginx:1.25.4",
    "redis:7.2-alpine",
    "myregistry.io/mirror/ingress-nginx/controller:v1.10.0@sha256:" + _DIGEST_HEX[::-1],
)
#: ... and from elsewhere: Docker Hub in its many spellings, a registry with a
#: port (which naive ``:`` splitting gets wrong), ghcr.io, localhost.
_OTHER_IMAGES = (
    "nginx:1.25.4",
    "nginx",
    "redis:7.2-alpine",
    "postgres:16.2",
    "busybox:latest",
    "docker.io/library/python:3.11-slim",
    "index.docker.io/bitnami/kafka:3.6",
    "registry:5000/team/app:1.2",
    "registry:5000/tools/debug",
    "ghcr.io/acme/sidecar:0.4.2",
    "localhost:5000/scratch/test:dev",
)
#: Probability that a main container's image comes from ``_TRUSTED_IMAGES``.
_TRUSTED_SHARE = 0.9
#: Pod and Deployment creates as a fraction of all events: busy clusters log
#: far more lease renewals and controller reads than workload changes.
DEFAULT_POD_RATIO = 0.01
_SIDECAR_IMAGES = (
    "gcr.io/my-project/envoy-proxy:1.29.1",
    "myregistry.io/mirror/prometheus/statsd-exporter:v0.26.0",
    "myregistry.io/platform/log-shipper:2.3",
    "myregistry.io/platform/log-shipper:2.4",
    "myregistry.io/mirror/prometheus/statsd-exporter:v0.27.1",
    "gcr.io/my-project/envoy-proxy:1.30.0",
    "docker.io/fluent/fluent-bit:2.2",
)
_INIT_IMAGES = (
    "busybox:1.36",
    "alpine:3.19",
    "myregistry.io/platform/migrate:5.1",
    "gcr.io/my-project/init-db:1",
)

_READ_RESOURCES = (
    # (resource, apiGroup, namespaced)
    ("pods", "", True),
    ("endpoints", "", True),
    ("configmaps", "", True),
    ("nodes", "", False),
    ("services", "", True),
    ("endpointslices", "discovery.k8s.io", True),
    ("deployments", "apps", True),
    ("replicasets", "apps", True),
)


def _rbac_reason(kind: str, binding: str, role: str, subject_kind: str, subject: str) -> str:
    """The RBAC authorizer's reason text; its embedded quotes become ``\\"`` in JSON."""
    return f'RBAC: allowed by {kind} "{binding}" of ClusterRole "{role}" to {subject_kind} "{subject}"'


class _Gen:
    """State of one generation run: the RNG, the clock and the object counters."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now_us = _BASE_TIME_US
        self.resource_version = 4_000_000

    # -- small helpers -----------------------------------------------------

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def rv(self) -> str:
        self.resource_version += self.rng.randint(1, 9)
        return str(self.resource_version)

    def suffix(self, n: int = 5) -> str:
        return "".join(self.rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(n))

    def tick(self) -> tuple[str, str]:
        """Advance the clock; return (requestReceived, stage) timestamps."""
        self.now_us += int(self.rng.expovariate(1 / 1500)) + 1
        received = self.now_us - self.rng.randint(300, 40_000)
        return _ts(received), _ts(self.now_us)

    def envelope(
        self,
        *,
        level: str,
        verb: str,
        uri: str,
        user: dict[str, Any],
        agent: str,
        object_ref: dict[str, Any] | None,
        code: int,
        reason: str,
        stage: str = "ResponseComplete",
        audit_id: str | None = None,
    ) -> dict[str, Any]:
        received, stage_ts = self.tick()
        ev: dict[str, Any] = {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": level,
            "auditID": audit_id or self.uid(),
            "stage": stage,
            "requestURI": uri,
            "verb": verb,
            "user": user,
            "sourceIPs": [f"10.0.{self.rng.randint(0, 3)}.{self.rng.randint(2, 250)}"],
            "userAgent": agent,
        }
        if object_ref is not None:
            ev["objectRef"] = object_ref
        ev["responseStatus"] = {"metadata": {}, "code": code}
        ev["requestReceivedTimestamp"] = received
        ev["stageTimestamp"] = stage_ts
        ev["annotations"] = {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": reason}
        return ev

    # -- high-volume background traffic -----------------------------------

    def lease_renewal(self) -> dict[str, Any]:
        r = self.rng.random()
        if r < 0.7:
            node = self.rng.choice(_NODES)
            user = {"username": f"system:node:{node}", "groups": ["system:nodes", "system:authenticated"]}
            ns, name, agent, reason = "kube-node-lease", node, f"kubelet/{_K8S_VERSION}", ""
        else:
            component = "kube-controller-manager" if r < 0.85 else "kube-scheduler"
            user = {"username": f"system:{component}", "groups": ["system:authenticated"]}
            ns, name = "kube-system", component
            agent = f"{component}/{_K8S_VERSION}"
            reason = _rbac_reason(
                "ClusterRoleBinding",
                f"system:{component}",
                f"system:{component}",
                "User",
                f"system:{component}",
            )
            if component == "kube-controller-manager":
                agent += "/leader-election"
        agent += f" (linux/amd64) kubernetes/{_GIT_COMMIT}"
        ref = {
            "resource": "leases",
            "namespace": ns,
            "name": name,
            "uid": self.uid(),
            "apiGroup": "coordination.k8s.io",
            "apiVersion": "v1",
            "resourceVersion": self.rv(),
        }
        uri = f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}?timeout=10s"
        return self.envelope(
            level="Metadata",
            verb="update",
            uri=uri,
            user=user,
            agent=agent,
            object_ref=ref,
            code=200,
            reason=reason,
        )

    def controller_read(self) -> list[dict[str, Any]]:
        """A get/list/watch by a controller; a watch yields ResponseStarted too."""
        username, agent, groups = self.rng.choice(_CONTROLLERS)
        resource, group, namespaced = self.rng.choice(_READ_RESOURCES)
        verb = self.rng.choices(("get", "list", "watch"), weights=(5, 3, 2))[0]
        ns = self.rng.choice((*APP_NAMESPACES, "kube-system")) if namespaced else None
        prefix = f"/apis/{group}/v1" if group else "/api/v1"
        path = f"{prefix}/namespaces/{ns}/{resource}" if ns else f"{prefix}/{resource}"
        ref: dict[str, Any] = {"resource": resource}
        if ns:
            ref["namespace"] = ns
        if verb == "get":
            name = f"{ns or 'node'}-{self.suffix()}" if resource != "nodes" else self.rng.choice(_NODES)
            ref["name"] = name
            path += f"/{name}"
        elif verb == "watch":
            rv = self.resource_version
            path += f"?allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds=412&watch=true"
        else:
            path += "?limit=500&resourceVersion=0"
        ref["apiGroup"] = group
        ref["apiVersion"] = "v1"
        user = {"username": username, "groups": list(groups)}
        full_agent = f"{agent}/{_K8S_VERSION} (linux/amd64) kubernetes/{_GIT_COMMIT}"
        reason = _rbac_reason("ClusterRoleBinding", username.rsplit(":", 1)[-1], username, "User", username)
        code = 404 if verb == "get" and self.rng.random() < 0.05 else 200
        common = {"level": "Metadata", "verb": verb, "uri": path, "user": user, "agent": full_agent}
        if verb != "watch":
            ev = self.envelope(**common, object_ref=ref, code=code, reason=reason)
            if code == 404:
                ev["responseStatus"] = {
                    "metadata": {},
                    "status": "Failure",
                    "message": f'{resource} "{ref.get("name")}" not found',
                    "reason": "NotFound",
                    "code": 404,
                }
            return [ev]
        audit_id = self.uid()
        started = self.envelope(
            **common, object_ref=ref, code=200, reason=reason, stage="ResponseStarted", audit_id=audit_id
        )
        done = self.envelope(**common, object_ref=ref, code=200, reason=reason, audit_id=audit_id)
        return [started, done]

    def secret_get(self) -> dict[str, Any]:
        ns = self.rng.choice(APP_NAMESPACES)
        name = self.rng.choice(
            ("db-credentials", "tls-cert", "api-token", "registry-pull", "sh.helm.release.v1")
        )
        if self.rng.random() < 0.8:
            username = f"system:serviceaccount:{ns}:{ns}-app"
            groups = ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"]
            agent = f"{ns}-app/2.0 (linux/amd64)"
        else:
            username, dep_groups = self.rng.choice(_DEPLOYERS)
            groups = list(dep_groups)
            agent = f"kubectl/{_K8S_VERSION} (linux/amd64) kubernetes/{_GIT_COMMIT}"
        ref = {"resource": "secrets", "namespace": ns, "name": name, "apiVersion": "v1"}
        reason = _rbac_reason("RoleBinding", f"{ns}-secrets-reader/{ns}", "secret-reader", "User", username)
        return self.envelope(
            level="Metadata",
            verb="get",
            uri=f"/api/v1/namespaces/{ns}/secrets/{name}",
            user={"username": username, "groups": groups},
            agent=agent,
            object_ref=ref,
            code=200,
            reason=reason,
        )

    def pod_status_patch(self) -> dict[str, Any]:
        """Kubelet status patches: pod events that pod rules must *not* match."""
        node = self.rng.choice(_NODES)
        ns = self.rng.choice(APP_NAMESPACES)
        name = f"{ns}-api-{self.suffix(10)}-{self.suffix()}"
        ref = {"resource": "pods", "namespace": ns, "name": name, "apiVersion": "v1", "subresource": "status"}
        ev = self.envelope(
            level="Request",
            verb="patch",
            uri=f"/api/v1/namespaces/{ns}/pods/{name}/status",
            user={"username": f"system:node:{node}", "groups": ["system:nodes", "system:authenticated"]},
            agent=f"kubelet/{_K8S_VERSION} (linux/amd64) kubernetes/{_GIT_COMMIT}",
            object_ref=ref,
            code=200,
            reason="",
        )
        ev["requestObject"] = {
            "metadata": {"uid": self.uid()},
            "status": {
                "$setElementOrder/conditions": [
                    {"type": t} for t in ("Initialized", "Ready", "PodScheduled")
                ],
                "conditions": [
                    {"lastTransitionTime": ev["stageTimestamp"][:19] + "Z", "status": "True", "type": "Ready"}
                ],
            },
        }
        return ev

    # -- the interesting minority: workload creates -------------------------

    def container(self, name: str, image: str, *, sidecar: bool = False) -> dict[str, Any]:
        rng = self.rng
        env = [
            {"name": f"APP_SETTING_{i}", "value": f"value-{self.suffix(8)}"} for i in range(rng.randint(2, 8))
        ]
        env.append(
            {
                "name": "DB_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "db-credentials", "key": "password"}},
            }
        )
        c: dict[str, Any] = {
            "name": name,
            "image": image,
            "imagePullPolicy": rng.choice(("IfNotPresent", "Always")),
            "env": env,
            "resources": {
                "limits": {
                    "cpu": f"{rng.choice((250, 500, 1000))}m",
                    "memory": f"{rng.choice((256, 512, 1024))}Mi",
                },
                "requests": {
                    "cpu": f"{rng.choice((50, 100, 200))}m",
                    "memory": f"{rng.choice((64, 128, 256))}Mi",
                },
            },
            "volumeMounts": [
                {"name": "config", "mountPath": "/etc/app", "readOnly": True},
                {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
            ],
        }
        if not sidecar:
            port = rng.choice((8080, 8443, 9090, 3000))
            c["ports"] = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
            c["readinessProbe"] = {
                "httpGet": {"path": "/healthz", "port": port, "scheme": "HTTP"},
                "initialDelaySeconds": 5,
                "periodSeconds": 10,
            }
            c["livenessProbe"] = {"tcpSocket": {"port": port}, "periodSeconds": 20, "failureThreshold": 3}
        if rng.random() < 0.08:
            c["securityContext"] = {"privileged": True}
        else:
            c["securityContext"] = {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
                "capabilities": {"drop": ["ALL"]},
            }
        return c

    def pod_spec(self, ns: str, app: str) -> dict[str, Any]:
        rng = self.rng
        main = rng.choice(_TRUSTED_IMAGES if rng.random() < _TRUSTED_SHARE else _OTHER_IMAGES)
        containers = [self.container(app, main)]
        for i in range(rng.choices((0, 1, 2, 3), weights=(3, 4, 2, 1))[0]):
            containers.append(self.container(f"sidecar-{i}", rng.choice(_SIDECAR_IMAGES), sidecar=True))
        spec: dict[str, Any] = {"containers": containers}
        if rng.random() < 0.2:
            spec["initContainers"] = [
                self.container(f"init-{i}", rng.choice(_INIT_IMAGES), sidecar=True)
                for i in range(rng.randint(1, 2))
            ]
        spec["volumes"] = [
            {"name": "config", "configMap": {"name": f"{app}-config", "defaultMode": 420}},
            {
                "name": "kube-api-access",
                "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]},
            },
        ]
        if rng.random() < 0.05:
            spec["volumes"].append({"name": "docker-sock", "hostPath": {"path": "/var/run/docker.sock"}})
        if rng.random() < 0.05:
            spec["hostNetwork"] = True
        spec["serviceAccountName"] = f"{ns}-app"
        spec["nodeSelector"] = {"kubernetes.io/os": "linux"}
        spec["tolerations"] = [
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            }
        ]
        return spec

    def metadata(self, ns: str, app: str) -> dict[str, Any]:
        return {
            "namespace": ns,
            "labels": {
                "app.kubernetes.io/name": app,
                "app.kubernetes.io/part-of": ns,
                "app.kubernetes.io/version": f"{self.rng.randint(1, 4)}.{self.rng.randint(0, 20)}.0",
                "team": ns,
                "pod-template-hash": self.suffix(10),
            },
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
                "kubectl.kubernetes.io/restartedAt": _ts(self.now_us - 86_400_000_000),
            },
        }

    def response_pod(self, req: dict[str, Any], name: str, ns: str) -> dict[str, Any]:
        """The stored object: request plus defaults, uid, status, managedFields."""
        spec = dict(req["spec"])
        containers = []
        for c in spec["containers"]:
            c = dict(c)
            c["terminationMessagePath"] = "/dev/termination-log"
            c["terminationMessagePolicy"] = "File"
            if self.rng.random() < 0.15 and "@" not in c["image"]:
                # A pinning admission webhook rewrote the tag to a digest.
                c["image"] = c["image"] + "@sha256:" + _DIGEST_HEX
            containers.append(c)
        spec["containers"] = containers
        spec.update(
            restartPolicy="Always",
            terminationGracePeriodSeconds=30,
            dnsPolicy="ClusterFirst",
            schedulerName="default-scheduler",
            enableServiceLinks=True,
            preemptionPolicy="PreemptLowerPriority",
            priority=0,
            securityContext={},
        )
        meta = dict(req["metadata"])
        meta.update(
            name=name,
            uid=self.uid(),
            resourceVersion=self.rv(),
            creationTimestamp=_ts(self.now_us)[:19] + "Z",
            managedFields=[
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": _ts(self.now_us)[:19] + "Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:metadata": {"f:labels": {f"f:{k}": {} for k in meta["labels"]}},
                        "f:spec": {
                            "f:containers": {f'k:{{"name":"{c["name"]}"}}': {".": {}} for c in containers}
                        },
                    },
                }
            ],
        )
        return {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": meta,
            "spec": spec,
            "status": {"phase": "Pending", "qosClass": "Burstable"},
        }

    def pod_create(self) -> dict[str, Any]:
        rng = self.rng
        ns = rng.choice(APP_NAMESPACES)
        app = f"{ns}-{rng.choice(('api', 'worker', 'web', 'cron', 'consumer'))}"
        rs = f"{app}-{self.suffix(10)}"
        name = f"{rs}-{self.suffix()}"
        if rng.random() < 0.85:
            username, groups = _CONTROLLERS[3][0], list(_CONTROLLERS[3][2])
            agent = (
                f"kube-controller-manager/{_K8S_VERSION} (linux/amd64) "
                f"kubernetes/{_GIT_COMMIT}/system:serviceaccount:kube-system:replicaset-controller"
            )
        else:
            username, dep_groups = rng.choice(_DEPLOYERS)
            groups = list(dep_groups)
            agent = f"kubectl/{_K8S_VERSION} (linux/amd64) kubernetes/{_GIT_COMMIT}"
        meta = self.metadata(ns, app)
        meta["generateName"] = f"{rs}-"
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": rs,
                "uid": self.uid(),
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        req = {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": self.pod_spec(ns, app)}
        ev = self.envelope(
            level="RequestResponse",
            verb="create",
            uri=f"/api/v1/namespaces/{ns}/pods",
            user={"username": username, "groups": groups},
            agent=agent,
            object_ref={"resource": "pods", "namespace": ns, "apiVersion": "v1"},
            code=201,
            reason=_rbac_reason(
                "ClusterRoleBinding",
                "system:controller:replicaset-controller",
                "system:controller:replicaset-controller",
                "User",
                username,
            ),
        )
        ev["requestObject"] = req
        ev["responseObject"] = self.response_pod(req, name, ns)
        ev["annotations"]["pod-security.kubernetes.io/enforce-policy"] = "baseline:latest"
        return ev

    def deployment_create(self) -> dict[str, Any]:
        rng = self.rng
        ns = rng.choice(APP_NAMESPACES)
        app = f"{ns}-{rng.choice(('api', 'worker', 'web', 'gateway'))}"
        username, dep_groups = rng.choice(_DEPLOYERS)
        meta = self.metadata(ns, app)
        del meta["labels"]["pod-template-hash"]
        meta["name"] = app
        template = {"metadata": {"labels": {"app.kubernetes.io/name": app}}, "spec": self.pod_spec(ns, app)}
        req = {
            "kind": "Deployment",
            "apiVersion": "apps/v1",
            "metadata": meta,
            "spec": {
                "replicas": rng.choice((1, 2, 3, 5)),
                "selector": {"matchLabels": {"app.kubernetes.io/name": app}},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
                },
                "template": template,
            },
        }
        ev = self.envelope(
            level="RequestResponse",
            verb="create",
            uri=f"/apis/apps/v1/namespaces/{ns}/deployments?fieldManager=kubectl-client-side-apply",
            user={"username": username, "groups": list(dep_groups)},
            agent=f"kubectl/{_K8S_VERSION} (linux/amd64) kubernetes/{_GIT_COMMIT}",
            object_ref={
                "resource": "deployments",
                "namespace": ns,
                "name": app,
                "apiGroup": "apps",
                "apiVersion": "v1",
            },
            code=201,
            reason=_rbac_reason("ClusterRoleBinding", "deployers", "edit", "User", username),
        )
        resp = orjson.loads(orjson.dumps(req))  # deep copy, then the server's additions
        resp["metadata"].update(uid=self.uid(), resourceVersion=self.rv(), generation=1)
        resp["status"] = {}
        ev["requestObject"] = req
        ev["responseObject"] = resp
        return ev


def _ts(us: int) -> str:
    """RFC 3339 with microseconds, as kube-apiserver writes MicroTime."""
    return (
        datetime.fromtimestamp(us // 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{us % 1_000_000:06d}Z"
    )


#: Expected extra events per background draw: controller reads are 30 % of
#: draws and a fifth of them are watches, which log two stages.
_WATCH_EXTRA = 0.30 * 0.2


def generate(n: int, seed: int = 1, pod_ratio: float = DEFAULT_POD_RATIO) -> Iterator[dict[str, Any]]:
    """Yield exactly ``n`` audit Events.

    ``pod_ratio`` is the fraction of events that are pod or Deployment
    creates (three pods for every Deployment); the rest is background traffic:
    about 60 % lease renewals, 30 % controller reads, 5 % secret gets and
    5 % kubelet status patches.
    """
    if not 0.0 <= pod_ratio <= 1.0:
        raise ValueError(f"pod_ratio must be within [0, 1], got {pod_ratio}")
    g = _Gen(seed)
    rng = g.rng
    # A background draw yields 1 + _WATCH_EXTRA events on average (a watch
    # also logs ResponseStarted), so draw creates slightly more often for
    # ``pod_ratio`` to be the fraction of *events*.
    p_create = pod_ratio * (1 + _WATCH_EXTRA) / (1 + pod_ratio * _WATCH_EXTRA)
    background: tuple[tuple[float, Callable[[], dict[str, Any] | list[dict[str, Any]]]], ...] = (
        (0.60, g.lease_renewal),
        (0.90, g.controller_read),
        (0.95, g.secret_get),
        (1.00, g.pod_status_patch),
    )
    emitted = 0
    while emitted < n:
        if rng.random() < p_create:
            out: dict[str, Any] | list[dict[str, Any]] = (
                g.pod_create() if rng.random() < 0.75 else g.deployment_create()
            )
        else:
            r = rng.random()
            out = next(make for bound, make in background if r < bound)()
        for ev in out if isinstance(out, list) else (out,):
            if emitted == n:
                return
            emitted += 1
            yield ev


def lines(events: Iterable[dict[str, Any]], seed: int = 1, eventlist_ratio: float = 0.0) -> Iterator[bytes]:
    """Serialise events as JSON lines; a fraction of lines batch 2-5 events in an EventList.

    Real log files are one Event per line, but webhook-fed pipelines and the
    spec's "mixed content" rule mean a reader must accept EventList lines too.
    """
    rng = random.Random(seed ^ 0x5EED)
    batch: list[dict[str, Any]] = []
    want = 0
    for ev in events:
        if not batch and rng.random() < eventlist_ratio:
            want = rng.randint(2, 5)
        if want:
            batch.append(ev)
            if len(batch) == want:
                yield orjson.dumps(_event_list(batch)) + b"\n"
                batch, want = [], 0
            continue
        yield orjson.dumps(ev) + b"\n"
    if batch:
        yield orjson.dumps(_event_list(batch)) + b"\n"


def _event_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items}


def write_corpus(
    path: str | Path,
    n: int,
    seed: int = 1,
    pod_ratio: float = DEFAULT_POD_RATIO,
    *,
    eventlist_ratio: float = 0.0,
) -> int:
    """Write ``n`` events to ``path`` as JSON lines; return the number of bytes written."""
    size = 0
    chunk: list[bytes] = []
    with open(path, "wb") as fh:
        for line in lines(generate(n, seed, pod_ratio), seed, eventlist_ratio):
            chunk.append(line)
            if len(chunk) == 4096:
                size += fh.write(b"".join(chunk))
                chunk.clear()
        size += fh.write(b"".join(chunk))
    return size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000, help="number of audit events (default 200000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True, help="output file (JSON lines)")
    ap.add_argument(
        "--pod-ratio", type=float, default=DEFAULT_POD_RATIO, help="fraction of pod/Deployment creates"
    )
    ap.add_argument(
        "--eventlist-ratio", type=float, default=0.0, help="fraction of lines that are EventLists"
    )
    args = ap.parse_args(argv)
    size = write_corpus(
        args.out, args.events, args.seed, args.pod_ratio, eventlist_ratio=args.eventlist_ratio
    )
    print(f"wrote {args.events} events, {size / 1e6:.1f} MB to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
