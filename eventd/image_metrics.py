"""``eventd_image_pulls_total``: which registries the cluster's workloads pull from.

Counted from audit events, not from the rules, so the picture is complete
whatever rules are loaded: every container image of a Pod, or of a workload's
pod template, that the API server accepted.  What is counted is the image
references admitted (a Deployment's image is counted again in its ReplicaSet
and its pods), which is what the trust ratio needs.

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

#: Pods and every workload resource that embeds a pod template.
_POD_RESOURCES = frozenset(BY_RESOURCE)
_WRITES = frozenset(("create", "update", "patch"))
_EPHEMERAL = "ephemeralcontainers"


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

    def observe(self, event: Event) -> None:
        """Count the images of ``event`` if it is an accepted pod or workload write."""
        if event.source != K8S_AUDIT:
            return
        resource = self._resource(event)
        if resource not in _POD_RESOURCES or self._verb(event) not in _WRITES:
            return
        if self._stage(event) != "ResponseComplete":
            return
        subresource = self._subresource(event)
        if subresource is None:
            registries, names = self._images
        elif subresource == _EPHEMERAL and resource == "pods":
            registries, names = self._ephemeral
        else:
            return
        code = self._code(event)
        if code is None or len(code) != 3 or code[0] != "2":
            return
        uri = self._uri(event)
        if uri is not None and "dryRun=" in uri:
            return
        found = names(event)
        if not found:
            return
        for registry, name in zip(registries(event), found, strict=True):
            self._count(registry, name)

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
