"""Find the pod spec inside an audit event's request or response object.

Upstream k8saudit reads ``requestObject.spec`` whatever the object is, so an
image rule sees a bare Pod but is blind to the same pod template inside a
Deployment or a CronJob.  eventd reads every ``ka.req.pod.*`` field through
the pod spec located here, so one rule covers pods and the workloads that
create them.

The object's ``kind`` decides where the spec lives; a patch body usually has
no ``kind``, so ``objectRef.resource`` is the fallback.  Objects of any other
kind keep upstream's ``spec``, so unknown objects that embed a pod spec at
the top (as a Pod does) still work as before.

Locating is cheap, but dozens of fields read it per event, so the result is
memoised in ``Event.cache`` under private keys that cannot clash with the
field tokens (strings) the engine uses there.
"""

from __future__ import annotations

from typing import Any

from eventd.events.model import Event

_SPEC = ("spec",)
_TEMPLATE = ("spec", "template", "spec")
_POD_TEMPLATE = ("template", "spec")
_CRONJOB = ("spec", "jobTemplate", "spec", "template", "spec")

#: Where the pod spec lives, by the object's ``kind``.
BY_KIND: dict[str, tuple[str, ...]] = {
    "Pod": _SPEC,
    "Deployment": _TEMPLATE,
    "DaemonSet": _TEMPLATE,
    "StatefulSet": _TEMPLATE,
    "ReplicaSet": _TEMPLATE,
    "ReplicationController": _TEMPLATE,
    "Job": _TEMPLATE,
    "PodTemplate": _POD_TEMPLATE,
    "CronJob": _CRONJOB,
}

#: The same, by ``objectRef.resource`` (used when the object has no kind).
BY_RESOURCE: dict[str, tuple[str, ...]] = {
    "pods": _SPEC,
    "deployments": _TEMPLATE,
    "daemonsets": _TEMPLATE,
    "statefulsets": _TEMPLATE,
    "replicasets": _TEMPLATE,
    "replicationcontrollers": _TEMPLATE,
    "jobs": _TEMPLATE,
    "podtemplates": _POD_TEMPLATE,
    "cronjobs": _CRONJOB,
}


def spec_path(doc: dict[str, Any], obj: dict[str, Any]) -> tuple[str, ...]:
    """The key path of the pod spec inside ``obj`` (an object of ``doc``)."""
    kind = obj.get("kind")
    path = BY_KIND.get(kind) if isinstance(kind, str) else None
    if path is None:
        ref = doc.get("objectRef")
        resource = ref.get("resource") if isinstance(ref, dict) else None
        if isinstance(resource, str):
            path = BY_RESOURCE.get(resource)
    return path or _SPEC


def locate(doc: Any, object_key: str) -> dict[str, Any] | None:
    """The pod spec in ``doc[object_key]``, or None when there is none."""
    if not isinstance(doc, dict):
        return None
    node = doc.get(object_key)
    if not isinstance(node, dict):
        return None
    for key in spec_path(doc, node):
        node = node.get(key)
        if not isinstance(node, dict):
            return None
    return node


_REQ_KEY = object()
_RESP_KEY = object()
_UNSET = object()


def _cached(event: Event, cache_key: object, object_key: str) -> dict[str, Any] | None:
    cache = event.cache
    # ``Event.cache`` is an untyped memo shared by all extractors; under this
    # private key it holds only what ``locate`` returned (``_UNSET``: not yet).
    spec: dict[str, Any] | None = cache.get(cache_key, _UNSET)
    if spec is _UNSET:
        spec = cache[cache_key] = locate(event.doc, object_key)
    return spec


def request_pod_spec(event: Event) -> dict[str, Any] | None:
    """The pod spec in ``requestObject`` (what the client asked for)."""
    return _cached(event, _REQ_KEY, "requestObject")


def response_pod_spec(event: Event) -> dict[str, Any] | None:
    """The pod spec in ``responseObject`` (after defaulting and admission)."""
    return _cached(event, _RESP_KEY, "responseObject")
