"""json.* / jevt.* fields, and the robustness of every declared field."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.engine.ast import FieldRef
from eventd.engine.fields import default_registry
from eventd.engine.fields.base import ArgKind
from eventd.engine.fields.jsonfields import parse_pointer, to_text
from eventd.events.model import FALCO, K8S_AUDIT, SOURCES, Event

DOC = {
    "auditID": "a1",
    "stage": "ResponseComplete",
    "stageTimestamp": "2024-05-01T10:00:00.123456Z",
    "requestObject": {
        "spec": {"tls": [{"hosts": ["a.example"]}], "replicas": 3, "paused": False, "nothing": None},
        "metadata": {"annotations": {"app.kubernetes.io/name": "web", "a~b": "tilde", "": "empty key"}},
    },
}


def get(name: str, doc, arg: str | None = None, source: str = K8S_AUDIT):
    return default_registry().bind(source, FieldRef(name, arg)).get(Event(source, doc))


@pytest.mark.parametrize("prefix", ["json", "jevt"])
def test_value_pointer(prefix):
    f = f"{prefix}.value"
    assert get(f, DOC, "/stage") == "ResponseComplete"
    assert get(f, DOC, "stage") == "ResponseComplete"  # leading "/" optional
    assert get(f, DOC, "/requestObject/spec/tls") == '[{"hosts":["a.example"]}]'
    assert get(f, DOC, "/requestObject/spec/tls/0/hosts/0") == "a.example"
    assert get(f, DOC, "/requestObject/spec/replicas") == "3"
    assert get(f, DOC, "/requestObject/spec/paused") == "false"
    assert get(f, DOC, "/requestObject/spec/nothing") == "null"
    assert get(f, DOC, "/requestObject/metadata/annotations/app.kubernetes.io~1name") == "web"
    assert get(f, DOC, "/requestObject/metadata/annotations/a~0b") == "tilde"
    assert get(f, DOC, "/requestObject/metadata/annotations/") == "empty key"
    assert get(f, DOC, "/requestObject/spec/tls/1") is None
    assert get(f, DOC, "/requestObject/spec/tls/00") is None  # no leading zeros in indices
    assert get(f, DOC, "/requestObject/spec/tls/-") is None
    assert get(f, DOC, "/requestObject/spec/replicas/x") is None
    assert get(f, DOC, "/missing") is None


def test_pointer_escapes_are_decoded_in_rfc_order():
    assert parse_pointer("/a~01") == (("a~1", None),)
    assert parse_pointer("a/0") == parse_pointer("/a/0") == (("a", None), ("0", 0))


def test_json_fields_do_not_need_audit_id():
    doc = {"stage": "ResponseStarted", "stageTimestamp": "1970-01-01T00:00:01Z"}
    assert get("jevt.value", doc, "/stage") == "ResponseStarted"
    assert get("jevt.rawtime", doc) == "1000000000"
    assert get("ka.stage", doc) is None


@pytest.mark.parametrize("prefix", ["json", "jevt"])
def test_obj_is_pretty_printed_whole_event(prefix):
    text = get(f"{prefix}.obj", DOC)
    assert orjson.loads(text) == DOC
    assert "\n  " in text


def test_rawtime():
    assert get("json.rawtime", DOC) == "1714557600123456000"
    assert get("jevt.rawtime", {"stageTimestamp": "2024-05-01T12:00:00.5+02:00"}) == "1714557600500000000"
    assert get("json.rawtime", {"stageTimestamp": "yesterday"}) is None
    assert get("json.rawtime", {"stageTimestamp": 5}) is None
    assert get("json.rawtime", {}) is None
    alert = {"time": "2024-05-01T10:00:00.123456789Z", "stageTimestamp": "1970-01-01T00:00:00Z"}
    assert get("json.rawtime", alert, source=FALCO) == "1714557600123456789"
    assert get("jevt.value", alert, "/time", source=FALCO) == "2024-05-01T10:00:00.123456789Z"


def test_to_text():
    assert to_text("x") == "x"
    assert to_text(True) == "true"
    assert to_text(201) == "201"
    assert to_text(1.5) == "1.5"
    assert to_text(None) == "null"
    assert to_text({"a": [1, "b"]}) == '{"a":[1,"b"]}'
    assert to_text([2**70]) == f"[{2**70}]"  # beyond orjson's 64-bit integers


# ------------------------------------------------ every field, any document

KEYS = sorted(
    {
        "auditID", "stage", "verb", "requestURI", "user", "username", "groups", "objectRef", "resource",
        "subresource", "name", "namespace", "requestObject", "responseObject", "responseStatus", "code",
        "annotations", "kind", "spec", "template", "jobTemplate", "containers", "initContainers",
        "ephemeralContainers", "image", "securityContext", "privileged", "runAsUser", "runAsGroup",
        "capabilities", "add", "ports", "hostPort", "containerPort", "volumes", "hostPath", "path", "rules",
        "verbs", "sourceIPs", "subjects", "metadata", "command", "args", "stageTimestamp", "time", "tags",
        "output_fields", "container.image", "container.image.repository", "container.image.tag", "rule",
        "imagePullPolicy", "imagePullSecrets", "serviceAccountName", "flexVolume", "driver", "data",
    }
)  # fmt: skip
KINDS = ["Pod", "Deployment", "CronJob", "PodTemplate", "User", "ServiceAccount", "pods", "cronjobs"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.sampled_from([*KINDS, "nginx", "reg:5000/a:1", "a?b=c", "2024-05-01T10:00:00Z", "/etc/*"])
    | st.text(max_size=8)
)
json_docs = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=6)
    ),
    max_leaves=40,
)


def bound_fields(source: str):
    """Every declared field of ``source`` bound with each argument form it takes."""
    registry = default_registry()
    out = []
    names = [*registry.fieldset(source).defs, *(["k8s.ns.name", "proc.aname"] if source == FALCO else [])]
    for name in names:
        defn = registry.fieldset(source).lookup(name)
        args = {
            ArgKind.NONE: [None],
            ArgKind.INDEX: [None, "0", "2"],
            ArgKind.KEY: ["/spec/containers/0", "x*"],
        }
        for arg in args[defn.arg]:
            out.append(registry.bind(source, FieldRef(name, arg)))
    return out


BOUND = {source: bound_fields(source) for source in SOURCES}


def check_conventions(doc) -> None:
    for source, fields in BOUND.items():
        ev = Event(source, doc)
        for bound in fields:
            value = bound.get(ev)
            if value is None:
                continue
            if bound.is_list:
                assert isinstance(value, tuple) and value, bound.token
            values = value if isinstance(value, tuple) else (value,)
            for v in values:
                assert isinstance(v, str | int | float | bool), bound.token
                if bound.token.startswith(("ka.", "json.", "jevt.")):
                    assert isinstance(v, str), bound.token


def test_every_field_extracts_on_an_empty_event():
    check_conventions({})
    for source in SOURCES:
        ev = Event(source, {})
        ka_or_falco = [b for b in BOUND[source] if not b.token.startswith(("json.obj", "jevt.obj"))]
        assert all(b.get(ev) is None for b in ka_or_falco)


@settings(max_examples=150, deadline=None)
@given(json_docs)
def test_no_exception_escapes_any_extractor(doc):
    check_conventions(doc)


@settings(max_examples=150, deadline=None)
@given(
    st.fixed_dictionaries(
        {"auditID": st.text(max_size=3), "objectRef": json_docs, "requestObject": json_docs},
        optional={
            k: json_docs for k in ("responseObject", "user", "annotations", "requestURI", "output_fields")
        },
    )
)
def test_no_exception_escapes_on_audit_shaped_events(doc):
    check_conventions(doc)


containers = st.lists(st.dictionaries(st.sampled_from(KEYS), json_docs, max_size=5) | json_docs, max_size=3)
pod_specs = st.fixed_dictionaries(
    {},
    optional={
        "containers": containers,
        "initContainers": containers,
        "ephemeralContainers": containers,
        "volumes": containers,
        "securityContext": json_docs,
        "imagePullSecrets": json_docs,
    },
)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(KINDS), pod_specs, st.booleans())
def test_no_exception_escapes_on_pod_shaped_events(kind, spec, in_template):
    obj = {"kind": kind, "spec": {"template": {"spec": spec}} if in_template else spec}
    check_conventions({"auditID": "x", "requestObject": obj, "responseObject": obj})
