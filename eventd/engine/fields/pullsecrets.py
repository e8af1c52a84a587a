"""Image-pull secrets, learned from the audit stream: ``ka.target.pull_secret``.

Audit policies log Secrets at Metadata level, so a read of a Secret says
only its name.  Which names are registry credentials is written elsewhere
in the same stream: Pods and workload templates name them in
``imagePullSecrets`` (the ServiceAccount admission plugin copies the
account's into the stored Pod), ServiceAccounts list them, and Secrets are
created with type ``kubernetes.io/dockerconfigjson`` (or the legacy
``dockercfg``).  ``PullSecretStore`` remembers those (namespace, name)
pairs; ``ka.target.pull_secret`` is ``"true"`` when a Secret event targets
one of them (the packs add the names listed in ``eventd_pull_secret_names``,
for every namespace).

Memory is bounded twice: in entries and in bytes of names; the least
recently learned or matched pair is forgotten first (a forgotten pair is
learned again the next time a pod uses it).  One store serves the process,
like the field registry itself: ``observe`` is called for every decoded
audit event by the pipeline and ``eventd scan`` (``learn_from``), whatever
rules are loaded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from eventd.engine.ast import field_refs
from eventd.engine.fields.base import FieldDef
from eventd.engine.fields.podspec import BY_RESOURCE, request_pod_spec, response_pod_spec
from eventd.events.model import K8S_AUDIT, Event

if TYPE_CHECKING:
    from eventd.engine.ruleset import Rule

#: Types of Secrets that hold registry credentials.
PULL_SECRET_TYPES = frozenset({"kubernetes.io/dockerconfigjson", "kubernetes.io/dockercfg"})
DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_BYTES = 1024 * 1024
#: Kubernetes object names are at most 253 characters; longer is not a name.
MAX_NAME = 253
#: Names taken from one object at most (a hostile body may list thousands).
MAX_PER_OBJECT = 64
#: Bookkeeping counted per entry on top of the names' length.
ENTRY_OVERHEAD = 64

_WRITES = frozenset({"create", "update", "patch"})
_POD_RESOURCES = frozenset(BY_RESOURCE)
#: The resources whose writes name image-pull Secrets (see ``_names``).
LEARNED_RESOURCES = _POD_RESOURCES | {"serviceaccounts", "secrets"}


def may_learn(resource: object, subresource: object, verb: object, stage: object) -> bool:
    """Whether ``PullSecretStore.observe`` may learn from an event with these
    routing values: a completed write of the object itself.  The daemon's
    prefilter decodes every event for which this is true, and ``observe``
    learns from none for which it is false."""
    if resource not in LEARNED_RESOURCES or verb not in _WRITES or stage != "ResponseComplete":
        return False
    return not subresource


class PullSecretStore:
    """(namespace, secret name) pairs known to be image-pull secrets."""

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._lock = threading.Lock()  # scan and the daemon are single-threaded; tests are not
        self._pairs: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._bytes = 0
        self.evicted = 0
        self.configure(max_entries, max_bytes)

    def configure(self, max_entries: int, max_bytes: int) -> None:
        """New bounds, applied at once (the daemon's ``pull_secrets_max_*``)."""
        if max_entries < 1 or max_bytes < 1:
            raise ValueError(f"pull-secret memory bounds too small: {max_entries} entries, {max_bytes} bytes")
        with self._lock:
            self.max_entries = max_entries
            self.max_bytes = max_bytes
            self._shrink()

    def clear(self) -> None:
        with self._lock:
            self._pairs.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._pairs)

    @property
    def bytes(self) -> int:
        return self._bytes

    def learn(self, namespace: str, name: str) -> None:
        if not name or len(name) > MAX_NAME or len(namespace) > MAX_NAME:
            return
        key = (namespace, name)
        with self._lock:
            if key in self._pairs:
                self._pairs.move_to_end(key)
                return
            size = len(namespace) + len(name) + ENTRY_OVERHEAD
            self._pairs[key] = size
            self._bytes += size
            self._shrink()

    def knows(self, namespace: str | None, name: str | None) -> bool:
        if not name:
            return False
        key = (namespace or "", name)
        with self._lock:
            if key not in self._pairs:
                return False
            self._pairs.move_to_end(key)
            return True

    def _shrink(self) -> None:
        while self._pairs and (len(self._pairs) > self.max_entries or self._bytes > self.max_bytes):
            _, size = self._pairs.popitem(last=False)
            self._bytes -= size
            self.evicted += 1

    def observe(self, event: Event) -> None:
        """Learn from one decoded audit event (anything else is ignored)."""
        if event.source != K8S_AUDIT:
            return
        doc = event.doc
        ref = doc.get("objectRef") if isinstance(doc, dict) else None
        if not isinstance(ref, dict):
            return
        resource, namespace = ref.get("resource"), ref.get("namespace")
        if not may_learn(resource, ref.get("subresource"), doc.get("verb"), doc.get("stage")):
            return
        status = doc.get("responseStatus")
        code = status.get("code") if isinstance(status, dict) else None
        if isinstance(code, int) and not 200 <= code < 300:
            return
        if not isinstance(namespace, str):
            return
        for name in _names(event, doc, ref, resource):
            self.learn(namespace, name)


def _refs(items: Any) -> list[str]:
    """``[{name: x}, ...]`` -> names (strings only, at most ``MAX_PER_OBJECT``)."""
    if not isinstance(items, list):
        return []
    out = []
    for item in items[:MAX_PER_OBJECT]:
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str):
            out.append(name)
    return out


def _names(event: Event, doc: dict[str, Any], ref: dict[str, Any], resource: Any) -> list[str]:
    if resource in _POD_RESOURCES:
        out: list[str] = []
        for spec in (request_pod_spec(event), response_pod_spec(event)):
            if isinstance(spec, dict):
                out += _refs(spec.get("imagePullSecrets"))
        return out
    if resource == "serviceaccounts":
        out = []
        for key in ("requestObject", "responseObject"):
            obj = doc.get(key)
            if isinstance(obj, dict):
                out += _refs(obj.get("imagePullSecrets"))
        return out
    if resource == "secrets":
        for key in ("requestObject", "responseObject"):
            obj = doc.get(key)
            if isinstance(obj, dict) and obj.get("type") in PULL_SECRET_TYPES:
                meta = obj.get("metadata")
                name = ref.get("name") or (meta.get("name") if isinstance(meta, dict) else None)
                return [name] if isinstance(name, str) else []
    return []


#: The process's store (see the module docstring).
STORE = PullSecretStore()


def learn_from(event: Event) -> None:
    """``STORE.observe``: the hook the pipeline and the scanner call."""
    STORE.observe(event)


def _pull_secret(event: Event, _arg: object) -> str | None:
    doc = event.doc
    ref = doc.get("objectRef") if isinstance(doc, dict) else None
    if not isinstance(ref, dict) or ref.get("resource") != "secrets":
        return None
    name, namespace = ref.get("name"), ref.get("namespace")
    if not isinstance(name, str):
        return None
    return "true" if STORE.knows(namespace if isinstance(namespace, str) else None, name) else "false"


#: The field that reads what the store learned.
FIELD = "ka.target.pull_secret"


def read_by(rules: Iterable[Rule]) -> bool:
    """Whether any of ``rules`` reads ``FIELD``, in its condition (exceptions
    included) or its output: only then can learning change an alert."""
    return any(
        FIELD in rule.output.fields_read() or any(ref.name == FIELD for ref in field_refs(rule.condition))
        for rule in rules
    )


FIELDS = [
    FieldDef(
        FIELD,
        'For Secret events: "true" when the target Secret is an image-pull secret eventd learned '
        "(named in a Pod's, workload's or ServiceAccount's imagePullSecrets, or created with a "
        "registry-credential type); absent for other resources.",
        _pull_secret,
    ),
]
