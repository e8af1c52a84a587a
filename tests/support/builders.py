"""Builders of realistic audit events and Falco alerts for tests."""

from __future__ import annotations

import itertools
from typing import Any

_ids = itertools.count(1)


def audit_event(
    *,
    verb: str = "create",
    resource: str = "pods",
    namespace: str | None = "default",
    name: str | None = "web",
    user: str = "alice@example.com",
    stage: str = "ResponseComplete",
    request: dict[str, Any] | None = None,
    response: dict[str, Any] | None = None,
    code: int = 201,
    subresource: str | None = None,
    api_version: str = "audit.k8s.io/v1",
    **extra: Any,
) -> dict[str, Any]:
    n = next(_ids)
    ref: dict[str, Any] = {"resource": resource, "apiVersion": "v1"}
    if namespace is not None:
        ref["namespace"] = namespace
    if name is not None:
        ref["name"] = name
    if subresource is not None:
        ref["subresource"] = subresource
    doc: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": api_version,
        "level": "RequestResponse" if request is not None else "Metadata",
        "auditID": f"00000000-0000-4000-8000-{n:012d}",
        "stage": stage,
        "requestURI": f"/api/v1/namespaces/{namespace}/{resource}",
        "verb": verb,
        "user": {"username": user, "groups": ["system:authenticated"]},
        "sourceIPs": ["10.0.0.1"],
        "userAgent": "kubectl/v1.30.0",
        "objectRef": ref,
        "responseStatus": {"metadata": {}, "code": code},
        "requestReceivedTimestamp": "2026-11-29T10:00:00.000000Z",
        "stageTimestamp": "2026-11-29T10:00:00.123456Z",
        "annotations": {"authorization.k8s.io/decision": "allow"},
    }
    if request is not None:
        doc["requestObject"] = request
    if response is not None:
        doc["responseObject"] = response
    doc.update(extra)
    return doc


def pod(*images: str, init: tuple[str, ...] = (), name: str = "web") -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": f"c{i}", "image": img} for i, img in enumerate(images)]}
    if init:
        spec["initContainers"] = [{"name": f"i{i}", "image": img} for i, img in enumerate(init)]
    return {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": name}, "spec": spec}


def pod_create(*images: str, **kw: Any) -> dict[str, Any]:
    return audit_event(request=pod(*images), **kw)


def deployment(*images: str) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "apiVersion": "apps/v1",
        "metadata": {"name": "web"},
        "spec": {"template": {"spec": pod(*images)["spec"]}},
    }


def lease_renewal(holder: str = "kube-scheduler") -> dict[str, Any]:
    return audit_event(
        verb="update",
        resource="leases",
        namespace="kube-system",
        name=holder,
        user=f"system:{holder}",
        code=200,
    )


def falco_alert(**fields: Any) -> dict[str, Any]:
    output_fields = {
        "container.image.repository": "docker.io/library/alpine",
        "container.image.tag": "3.19",
        "k8s.ns.name": "default",
        "k8s.pod.name": "shell",
        "evt.time": 1764410645478445995,
    }
    output_fields.update(fields)
    return {
        "hostname": "node-1",
        "output": "13:44:05.478445995: Notice A shell was spawned in a container",
        "priority": "Notice",
        "rule": "Terminal shell in container",
        "source": "syscall",
        "tags": ["container", "shell"],
        "time": "2026-11-29T13:44:05.478445995Z",
        "output_fields": output_fields,
    }
