"""Decoding audit data and Falco alerts: shapes, versions, errors, redaction."""

from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventd.events.decode import decode_document, decode_object
from eventd.events.errors import DecodeError
from eventd.events.model import FALCO, K8S_AUDIT, event_time_ns
from eventd.events.redact import REDACTED
from tests.support.builders import audit_event, falco_alert, lease_renewal, pod_create


def test_single_event_v1_and_v1beta1() -> None:
    for version in ("audit.k8s.io/v1", "audit.k8s.io/v1beta1"):
        events, errors = decode_document(orjson.dumps(pod_create("nginx", api_version=version)))
        assert [e.source for e in events] == [K8S_AUDIT] and errors == []


def test_event_list_and_array_and_list_inside_array() -> None:
    a, b = lease_renewal(), pod_create("nginx")
    as_list = {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [a, b]}
    assert len(decode_object(as_list)[0]) == 2
    assert len(decode_object([a, b])[0]) == 2
    assert len(decode_object([as_list, a])[0]) == 3


def test_one_bad_event_in_a_batch_costs_only_that_event() -> None:
    bad = lease_renewal()
    del bad["stageTimestamp"]
    events, errors = decode_object({"kind": "EventList", "items": [lease_renewal(), bad, {"kind": 0}]})
    assert len(events) == 1
    assert sorted(e.reason for e in errors) == ["not_audit", "timestamp"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "json"),
        (b'{"kind": 0}', "not_audit"),
        (b'"a string"', "not_audit"),
        (b'{"kind": "EventList", "items": 5}', "shape"),
        (b'{"kind": "Event", "apiVersion": "audit.k8s.io/v1alpha1"}', "api_version"),
    ],
)
def test_rejections_name_a_reason(payload: bytes, reason: str) -> None:
    try:
        events, errors = decode_document(payload)
    except DecodeError as err:
        assert err.reason == reason
    else:
        assert not events and [e.reason for e in errors] == [reason]


def test_kind_zero_uses_falcos_wording() -> None:
    with pytest.raises(DecodeError, match="data not recognized as a k8s audit event"):
        decode_document(b'{"kind": 0}')


def test_falco_alert_detected_and_validated() -> None:
    (event,), _ = decode_object(falco_alert())
    assert event.source == FALCO
    assert event_time_ns(event) == 1795959845_478445995
    for broken, reason in (
        ({"priority": "Loud"}, "priority"),
        ({"rule": " "}, "rule"),
        ({"time": "yesterday"}, "time"),
        ({"output_fields": []}, "shape"),
    ):
        doc = falco_alert()
        doc.update(broken)
        with pytest.raises(DecodeError) as info:
            decode_object(doc)
        assert info.value.reason == reason


def test_falco_priority_normalised_and_defaults_filled() -> None:
    doc = falco_alert()
    doc["priority"] = "info"
    del doc["source"], doc["tags"]
    (event,), _ = decode_object(doc)
    assert event.doc["priority"] == "Informational"
    assert event.doc["source"] == "syscall" and event.doc["tags"] == []


def test_secret_contents_never_survive_decoding() -> None:
    secret = {
        "kind": "Secret",
        "metadata": {
            "name": "regcred",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": '{"data":"c2VjcmV0"}'},
        },
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": "c2VjcmV0"},
        "stringData": {"password": "hunter2"},
    }
    listing = {"kind": "SecretList", "items": [dict(secret)]}
    doc = audit_event(resource="secrets", name="regcred", request=secret, response=listing)
    (event,), _ = decode_document(orjson.dumps(doc))
    text = orjson.dumps(event.doc)
    assert b"c2VjcmV0" not in text and b"hunter2" not in text
    assert event.doc["requestObject"]["data"] == {".dockerconfigjson": REDACTED}
    assert event.doc["requestObject"]["type"] == "kubernetes.io/dockerconfigjson"


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(["kind", "items", "rule", "priority", "output", "time"])
                | st.text(max_size=5),
                children,
                max_size=5,
            )
        ),
        max_leaves=20,
    )
)
def test_arbitrary_json_never_escapes_as_anything_but_decode_error(obj: object) -> None:
    with contextlib.suppress(DecodeError):
        decode_object(obj)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_anything_but_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_document(data)
