"""``eventd.images`` of an audit alert agrees with the image fields.

Issue 15 made the alert context cheaper: instead of extracting
``ka.req.pod.images.{raw,registry,name,tag,digest}`` for every alert, it reads
the raw images once and takes each image's parts from a parse cached per
image string.  These properties check, on random and hostile pod specs
(odd images, non-string images, overlong ones, every container family),
that the entries are exactly what the five fields give, row by row.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.alerts import alert_context
from eventd.engine.ast import FieldRef
from eventd.engine.fields import default_registry
from eventd.events.model import K8S_AUDIT, Event
from eventd.images import MAX_REFERENCE_LENGTH

IMAGES = st.one_of(
    st.sampled_from(
        [
            "nginx",
            "nginx:1.25",
            "docker.io/library/nginx@sha256:" + "a" * 64,
            "localhost:5000/app:v1",
            "quay.io/org/app:1@sha256:" + "b" * 64,
            "UPPER/case",
            "",
            ":",
            "a" * (MAX_REFERENCE_LENGTH + 10),
            "registry.example.com:443/team/app",
        ]
    ),
    st.text(alphabet="abcAB:/@.-_09", max_size=40),
    st.integers(),
    st.none(),
)
CONTAINERS = st.lists(
    st.one_of(st.fixed_dictionaries({"name": st.just("c"), "image": IMAGES}), st.just({}), st.just("x")),
    max_size=4,
)


def _event(spec: dict[str, Any]) -> Event:
    return Event(
        K8S_AUDIT,
        {
            "kind": "Event",
            "auditID": "a1",
            "stage": "ResponseComplete",
            "verb": "create",
            "objectRef": {"resource": "pods", "namespace": "ns", "name": "p"},
            "user": {"username": "u"},
            "requestObject": {"kind": "Pod", "spec": spec},
            "stageTimestamp": "2024-05-01T10:00:00.000000Z",
        },
    )


def _by_fields(event: Event) -> list[dict[str, Any]]:
    """The entries as the five image fields give them (the definition)."""
    fieldset = default_registry().fieldset(K8S_AUDIT)
    names = ("raw", "registry", "name", "tag", "digest")
    columns = [
        fieldset.bind(FieldRef(f"ka.req.pod.images.{n}")).get(Event(event.source, event.doc)) for n in names
    ]
    if not columns[0]:
        return []
    keys = ("image", "registry", "name", "tag", "digest")
    return [dict(zip(keys, row, strict=True)) for row in zip(*columns, strict=True)]


@settings(max_examples=300)
@given(
    st.fixed_dictionaries(
        {},
        optional={"containers": CONTAINERS, "initContainers": CONTAINERS, "ephemeralContainers": CONTAINERS},
    )
)
def test_images_match_the_image_fields(spec: dict[str, Any]) -> None:
    event = _event(spec)
    assert alert_context(event)["images"] == _by_fields(event)


def test_the_same_image_twice_gives_independent_entries() -> None:
    """Entries come from a cache: a consumer editing one must not change the next alert's."""
    spec = {"containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "nginx"}]}
    first = alert_context(_event(spec))["images"]
    first[0]["registry"] = "edited"
    again = alert_context(_event(spec))["images"]
    assert [e["registry"] for e in again] == ["docker.io", "docker.io"]
    assert again[0] is not again[1]
