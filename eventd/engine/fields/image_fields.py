"""Image-aware fields: container images parsed the way the runtime parses them.

Upstream's only image field besides the raw string is ``image.repository``,
a naive split that loses the registry port and never normalises, so
allow-lists must list every spelling of every image.  These fields expose
the parts of each reference as ``eventd.images.parse`` sees them, so a rule
can say ``ka.req.pod.images.name in (docker.io/library/nginx)`` or
``ka.req.pod.images.pinned intersects (false)``.

Conventions (k8saudit-fields.md §4.1, §4.4, §4.5):

* one entry per container, in container order, so ``[N]`` is container N
  and values line up with ``...image``; a container without an image is
  parsed as ``""`` (invalid), never dropped;
* invalid references give ``""`` for the parsed parts and ``valid=false``;
* ``tag`` / ``digest`` are ``""`` in the list when absent, and the ``[N]``
  form is missing when container N has none;
* booleans are ``"true"`` / ``"false"``;
* ``ka.req.pod.*`` read the request's pod spec, ``ka.resp.pod.*`` the
  response's (after admission: mutated and digest-pinned images show there);
  ``...pod.images.*`` cover containers, then init, then ephemeral ones.

Each event's images are read once per (side, family) and kept in
``Event.cache`` under private keys, as rows of their attributes
(``image_row``, cached by string).

The ``falco`` source gets scalar twins (``container.image.*``) built from
the alert's ``output_fields``.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

from eventd import images
from eventd.engine.fields.base import ArgKind, Extracted, Extractor, FieldDef
from eventd.engine.fields.jsonfields import to_text
from eventd.engine.fields.k8saudit import (
    ALL,
    CONTAINER_FAMILIES,
    SKIP,
    at,
    audited,
    per_item,
    pull_policy,
    repository,
)
from eventd.engine.fields.podspec import request_pod_spec, response_pod_spec
from eventd.events.model import Event


def _flag(value: bool) -> str:
    return "true" if value else "false"


_Getter = Callable[[images.ImageRef], Any]
#: attribute -> (its value in the list form, its value in the [N] form).
#: They differ for tag and digest only: absent is "" in a list, missing alone.
_ATTRS: dict[str, tuple[Callable[[images.ImageRef], str], _Getter]] = {}
_UNSET = object()


def _attr(name: str, get: _Getter, optional: bool = False) -> None:
    def listed(ref: images.ImageRef) -> str:
        v = get(ref)
        return _flag(v) if type(v) is bool else (v or "")

    _ATTRS[name] = (listed, get if optional else listed)


_attr("raw", lambda r: r.raw)
_attr("registry", lambda r: r.registry)
_attr("name", lambda r: r.name)
_attr("path", lambda r: r.path)
_attr("familiar", lambda r: r.familiar)
_attr("tag", lambda r: r.tag, optional=True)
_attr("digest", lambda r: r.digest, optional=True)
_attr("pinned", lambda r: r.pinned)
_attr("valid", lambda r: r.valid)
_attr("implicit_latest", lambda r: r.implicit_latest)
_attr("has_port", lambda r: r.has_port)
_attr("is_ip", lambda r: r.is_ip)

_DESCS = {
    "raw": "the reference as written in the pod spec",
    "registry": "registry (docker.io when implied)",
    "name": "normalised name registry/path",
    "path": "repository path",
    "familiar": "short familiar name",
    "tag": "explicit tag ('' when none; [N] missing when none)",
    "digest": "digest ('' when none; [N] missing when none)",
    "pinned": "true when pinned by digest",
    "valid": "true when the reference is valid",
    "implicit_latest": "true when neither tag nor digest is given",
    "has_port": "true when the registry has a port",
    "is_ip": "true when the registry is an IP address",
}


#: Attribute names, in the order of an image's row (``image_row``).
_ROW_ORDER = tuple(_DESCS)
#: Attributes whose ``[N]`` form is missing when absent (``""`` in a row).
_OPTIONAL = frozenset(name for name, (listed, single) in _ATTRS.items() if listed is not single)
Row = tuple[str, ...]
Rows = tuple[Row, ...]


def _make_row(text: str) -> Row:
    ref = images.parse(text)
    return tuple(_ATTRS[attr][0](ref) for attr in _ROW_ORDER)


_cached_row = functools.lru_cache(maxsize=images.CACHED_REFERENCES)(_make_row)


def image_row(text: str) -> Row:
    """Every attribute of the image ``text`` in its list form (``_ROW_ORDER``).

    Why rows: a pod's image fields are read by several rules and outputs,
    each wanting one attribute of every container.  With the attributes
    laid out once per distinct image (cached like ``images.parse``, under
    the same bounds), reading one is an ``itemgetter`` per container, in C.
    """
    return _cached_row(text) if len(text) <= images.CACHED_REFERENCE_LENGTH else _make_row(text)


def row_position(attr: str) -> int:
    """Where attribute ``attr`` stands in a row."""
    return _ROW_ORDER.index(attr)


def _image_text(container: Any) -> str:
    if type(container) is dict:
        image = container.get("image")
        if image is not None:
            return to_text(image)
    return ""


_PINNED = row_position("pinned")


def _unpinned_pull_policy(container: Any, _node: Any) -> tuple[str, ...] | None:
    """Picker: the container's imagePullPolicy (``""`` when unset) if its
    image is not pinned by digest; nothing for a pinned one.

    Why a field of its own: "cached pull policy" and "not pinned" are both
    properties of one container, and Falco's language cannot pair two list
    fields element by element.  ``policies intersects (IfNotPresent) and not
    pinned in (true)`` also fires for a pinned IfNotPresent container next
    to an unpinned Always one; this field keeps the pair together.
    """
    if image_row(_image_text(container))[_PINNED] == "true":
        return None
    return pull_policy(container, _node)


def _family_rows(
    spec_of: Callable[[Event], Any], family: str, cache_key: object
) -> Callable[[Event], Rows | None]:
    """Rows of one container family's images, once per event."""
    unset = _UNSET

    def rows(ev: Event) -> Rows | None:
        cache = ev.cache
        # The untyped event memo holds only what this closure stored under its
        # own key (``unset``: not yet).
        got: Rows | None = cache.get(cache_key, unset)
        if got is unset:
            got = None
            if audited(ev.doc):
                spec = spec_of(ev)
                containers = spec.get(family) if type(spec) is dict else None
                if type(containers) is list:
                    got = tuple(map(image_row, map(_image_text, containers)))
            cache[cache_key] = got
        return got

    return rows


def _all_rows(parts: list[Callable[[Event], Rows | None]]) -> Callable[[Event], Rows | None]:
    """Rows of every family together: containers, init, ephemeral (once per event)."""
    cache_key = object()
    unset = _UNSET

    def rows(ev: Event) -> Rows | None:
        cache = ev.cache
        # The untyped event memo holds only what this closure stored under its
        # own key (``unset``: not yet).
        got: Rows | None = cache.get(cache_key, unset)
        if got is unset:
            found = [r for r in (part(ev) for part in parts) if r is not None]
            got = cache[cache_key] = sum(found, ()) if found else None
        return got

    return rows


def _attr_extractor(rows: Callable[[Event], Rows | None], attr: str) -> Extractor:
    position = row_position(attr)
    pick = operator.itemgetter(position)
    optional = attr in _OPTIONAL

    def extract(ev: Event, index: int | None) -> Extracted:
        got = rows(ev)
        if not got:
            return None
        if index is None:
            return tuple(map(pick, got))
        if index >= len(got):
            return None
        v = got[index][position]
        return None if optional and not v else (v,)

    return extract


def _attr_defs(prefix: str, what: str, rows: Callable[[Event], Rows | None]) -> list[FieldDef]:
    return [
        FieldDef(
            f"{prefix}.{attr}",
            f"{what}: {desc}.",
            _attr_extractor(rows, attr),
            is_list=True,
            arg=ArgKind.INDEX,
            rhs_normalizer=images.normalize_prefix if attr == "name" else None,
        )
        for attr, desc in _DESCS.items()
    ]


def _k8s_fields() -> list[FieldDef]:
    out: list[FieldDef] = []
    sides = (("req", "request", request_pod_spec), ("resp", "response", response_pod_spec))
    for side, side_desc, spec_of in sides:
        per_family = []
        for family in CONTAINER_FAMILIES:
            rows = _family_rows(spec_of, family, object())
            per_family.append(rows)
            prefix = f"ka.{side}.pod.{family}.image"
            what = f"{side_desc} {family} images"
            out += _attr_defs(prefix, what, rows)
            out.append(
                FieldDef(
                    f"ka.{side}.pod.{family}.unpinned_pull_policy",
                    f"{side_desc} {family}: the imagePullPolicy ('' if unset) of each container"
                    " whose image is not pinned by digest.",
                    per_item(spec_of, family, _unpinned_pull_policy, SKIP),
                    is_list=True,
                    arg=ArgKind.INDEX,
                )
            )
            if side == "resp":  # the request twins of these two are k8saudit fields
                out += [
                    FieldDef(
                        prefix,
                        f"{what} as written.",
                        per_item(spec_of, family, at("image"), ALL),
                        is_list=True,
                        arg=ArgKind.INDEX,
                    ),
                    FieldDef(
                        f"{prefix}.repository",
                        f"{what} without tag and digest (port kept).",
                        per_item(spec_of, family, repository, ALL),
                        is_list=True,
                        arg=ArgKind.INDEX,
                    ),
                ]
        out += _attr_defs(
            f"ka.{side}.pod.images", f"{side_desc} images of every container kind", _all_rows(per_family)
        )
    return out


#: For the ``k8s_audit`` source.
FIELDS = _k8s_fields()


# ---------------------------------------------------------------- Falco twins

_ALERT_KEY = object()
_ABSENT = (None, "", "<NA>")


def _present(value: Any) -> str | None:
    return value if type(value) is str and value not in _ABSENT else None


def _alert_ref(ev: Event) -> images.ImageRef | None:
    """The alert's image: ``container.image`` if given, else rebuilt from
    ``container.image.repository`` + ``:tag`` + ``@digest``."""
    cache = ev.cache
    # The untyped event memo holds only what this function stored under its
    # own key (``_UNSET``: not yet).
    got: images.ImageRef | None = cache.get(_ALERT_KEY, _UNSET)
    if got is _UNSET:
        got = None
        doc = ev.doc
        fields = doc.get("output_fields") if type(doc) is dict else None
        if type(fields) is dict:
            ref = _present(fields.get("container.image"))
            if ref is None:
                ref = _present(fields.get("container.image.repository"))
                if ref is not None:
                    tag = _present(fields.get("container.image.tag"))
                    digest = _present(fields.get("container.image.digest"))
                    ref += (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
            if ref is not None:
                got = images.parse(ref)
        cache[_ALERT_KEY] = got
    return got


def _alert_extractor(attr: str) -> Extractor:
    single = _ATTRS[attr][1]

    def extract(ev: Event, _arg: None) -> str | None:
        ref = _alert_ref(ev)
        return None if ref is None else single(ref)

    return extract


#: For the ``falco`` source: scalar twins of the audit image fields.
FALCO_FIELDS = [
    FieldDef(
        f"container.image.{attr}",
        f"The alert's container image: {_DESCS[attr]}.",
        _alert_extractor(attr),
        rhs_normalizer=images.normalize_prefix if attr == "name" else None,
    )
    for attr in (
        "registry",
        "name",
        "path",
        "familiar",
        "tag",
        "digest",
        "pinned",
        "valid",
        "implicit_latest",
    )
]
