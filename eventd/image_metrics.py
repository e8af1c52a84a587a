"""``eventd_image_pulls_total`` (which registries the cluster's workloads pull
from) and ``container_image_pulls_total`` (per image, for guides' alerts).

Counted from audit events, not from the rules, so the picture is complete
whatever rules are loaded: every container image of a Pod, or of a workload's
pod template, that the API server accepted.  What is counted is the image
references admitted (a Deployment's image is counted again in its ReplicaSet
and its pods), which is what the trust ratio needs.
``container_image_pulls_total{image}`` counts creates only (a pod or a
workload created with that image), the event the hardening guides' alert
``increase(container_image_pulls_total{image!~"myregistry.io/.*"}[5m]) > 0``
is written for.

An event counts once: only the ``ResponseComplete`` stage of a successful
(2xx), non-dry-run ``create``/``update``/``patch`` of the object itself, so
``RequestReceived`` stages, rejected requests and client retries that failed
add nothing.  Subresources are skipped (a ``pods/status`` update carries the
whole pod again), except ``pods/ephemeralcontainers``, where only the
ephemeral containers are new (``kubectl debug``).

The fields are the engine's memoised k8saudit and image fields, so most of
the work is shared with the rules that already read them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from eventd.engine.ast import FieldRef
from eventd.engine.fields import default_registry
from eventd.engine.fields.podspec import BY_RESOURCE
from eventd.engine.pathprefix import PathPrefixSet
from eventd.events.model import K8S_AUDIT, Event
from eventd.images import normalize_prefix
from eventd.metrics import Metrics

TRUSTED = "trusted"
UNTRUSTED = "untrusted"
#: Registry label of references the runtime would refuse.  Never a real
#: registry: a name without ``.``, ``:`` or ``localhost`` is not a host.
INVALID = "invalid"

#: Pods and every workload resource that embeds a pod template.  Only
#: events about these are counted (the daemon's prefilter keeps them all).
POD_RESOURCES = frozenset(BY_RESOURCE)
_WRITES = frozenset(("create", "update", "patch"))
_EPHEMERAL = "ephemeralcontainers"


def may_count(resource: object, subresource: object, verb: object, stage: object) -> bool:
    """Whether ``ImagePullCounter.observe`` may count an event with these
    routing values (``ka.target.resource``, ``.subresource``, ``ka.verb``,
    ``ka.stage``).  The daemon's prefilter decodes every event for which this
    is true, and ``observe`` counts none for which it is false."""
    if resource not in POD_RESOURCES or verb not in _WRITES or stage != "ResponseComplete":
        return False
    return subresource is None or (subresource == _EPHEMERAL and resource == "pods")


class ImagePullCounter:
    """Feeds ``metrics.image_pulls{registry, trust}`` from audit events.

    ``trusted_registries`` are allow-list entries (registries or
    registry/path prefixes, as in ``eventd_allowed_registries``); an image is
    trusted when its normalised name equals an entry or lies under it at a
    ``/`` boundary.  A bad entry raises ``ImageReferenceError`` here, at
    configuration time.
    """

    def __init__(self, metrics: Metrics, trusted_registries: Iterable[str]) -> None:
        self._metrics = metrics
        self._trusted = PathPrefixSet(normalize_prefix(entry) for entry in trusted_registries)
        fieldset = default_registry().fieldset(K8S_AUDIT)

        def getter(name: str) -> Callable[[Event], Any]:
            return fieldset.bind(FieldRef(name)).get

        self._resource = getter("ka.target.resource")
        self._verb = getter("ka.verb")
        self._stage = getter("ka.stage")
        self._subresource = getter("ka.target.subresource")
        self._code = getter("ka.response.code")
        self._uri = getter("ka.uri")
        self._images = (getter("ka.req.pod.images.registry"), getter("ka.req.pod.images.name"))
        self._ephemeral = (
            getter("ka.req.pod.ephemeralContainers.image.registry"),
            getter("ka.req.pod.ephemeralContainers.image.name"),
        )
        # (registry label, trust) -> counter child; bounded because the
        # registry label is capped.
        self._children: dict[tuple[str, str], Any] = {}
        # image label -> child of container_image_pulls_total (capped too).
        self._image_children: dict[str, Any] = {}

    def observe(self, event: Event) -> None:
        """Count the images of ``event`` if it is an accepted pod or workload write."""
        if event.source != K8S_AUDIT:
            return
        resource, subresource = self._resource(event), self._subresource(event)
        if not may_count(resource, subresource, self._verb(event), self._stage(event)):
            return
        registries, names = self._images if subresource is None else self._ephemeral
        code = self._code(event)
        if code is None or len(code) != 3 or code[0] != "2":
            return
        uri = self._uri(event)
        if uri is not None and "dryRun=" in uri:
            return
        found = names(event)
        if not found:
            return
        created = self._verb(event) == "create" and subresource is None
        for registry, name in zip(registries(event), found, strict=True):
            self._count(registry, name)
            if created:
                self._count_image(name)

    def _count(self, registry: str, name: str) -> None:
        if name:
            key = (
                self._metrics.capped("registry", registry),
                TRUSTED if self._trusted.contains_prefix_of(name) else UNTRUSTED,
            )
        else:  # invalid reference: parsed parts are ""
            key = (INVALID, UNTRUSTED)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._metrics.image_pulls.labels(*key)
        child.inc()

    def _count_image(self, name: str) -> None:
        """``container_image_pulls_total{image}``: the label is the normalised
        repository (``docker.io/library/nginx``: registry and path, no tag or
        digest), so a guide's ``image!~"myregistry.io/.*"`` sees the registry
        first; invalid references count as ``invalid``."""
        label = self._metrics.capped("image", name) if name else INVALID
        child = self._image_children.get(label)
        if child is None:
            child = self._image_children[label] = self._metrics.container_image_pulls.labels(label)
        child.inc()
