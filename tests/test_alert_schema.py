"""The published alert schema describes what eventd really emits, and rejects what it must not."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from bench.corpus import generate
from eventd import alert_schema
from eventd import alerts as alerts_module
from eventd.alert_schema import AlertSchemaError, validate
from eventd.alerts import alert_uuid, build_alert, falco_passthrough_alert
from eventd.engine.loader import load_rules
from eventd.engine.matcher import Matcher
from eventd.events.falco_json import falco_alert_event
from eventd.events.model import K8S_AUDIT, Event
from eventd.rulepacks import builtin_rule_files
from tests.support.builders import falco_alert
from tests.test_rule_packs import CASES, build

ROOT = Path(__file__).resolve().parents[1]
SCAN = (sys.executable, "-m", "eventd", "scan", "--format", "json", "--rule-matching", "all", "--no-stats")


def _wire(doc: dict[str, Any]) -> dict[str, Any]:
    """The alert as a consumer decodes it."""
    return orjson.loads(orjson.dumps(doc))


@pytest.fixture(scope="module")
def scanned() -> list[dict[str, Any]]:
    proc = subprocess.run(
        [*SCAN, str(ROOT / "examples" / "audit-sample.jsonl")],
        capture_output=True,
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    return [orjson.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def audit_alert(scanned: list[dict[str, Any]]) -> dict[str, Any]:
    """A real alert with images, to break in the negative tests."""
    return next(a for a in scanned if a["eventd"]["images"])


@pytest.fixture(scope="module")
def passthrough() -> dict[str, Any]:
    event = falco_alert_event(json.loads((ROOT / "examples" / "falco-alert-sample.json").read_text()))
    return _wire(falco_passthrough_alert(event).to_dict())


# ------------------------------------------------------------------ the schema


def test_schema_is_valid_draft_2020_12() -> None:
    schema = alert_schema.schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"] and schema["description"]


def test_schema_ships_inside_the_package() -> None:
    import eventd

    assert (Path(eventd.__file__).parent / alert_schema.SCHEMA_FILE).is_file()


# ------------------------------------------------------------ what eventd emits


def test_scan_output_validates(scanned: list[dict[str, Any]]) -> None:
    assert len(scanned) >= 5
    for doc in scanned:
        validate(doc)


def test_every_builtin_rule_emits_valid_alerts() -> None:
    ruleset = load_rules(builtin_rule_files())
    matcher = Matcher(ruleset, rule_matching="all")
    events = [Event(K8S_AUDIT, doc) for doc in generate(2000, seed=5, pod_ratio=0.3)]
    events += [build(case) for case in CASES]
    raised: Counter[str] = Counter()
    for event in events:
        for rule in matcher.match(event):
            alert = build_alert(rule, event, "eventd-0")
            validate(alert.to_dict())
            validate(_wire(alert.to_dict()))
            raised[rule.name] += 1
    assert set(raised) == {r.name for r in ruleset.rules}


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="image-repository-and-tag"),
        pytest.param({"container.image.repository": None, "container.image.tag": None}, id="no-image"),
        pytest.param({"container.image.digest": "sha256:" + "b" * 64}, id="digest"),
        pytest.param({"container.image.repository": "<NA>", "proc.args": ["-c", "id"]}, id="na-and-list"),
        pytest.param({"container.image": "quay.io/x/y:2", "fd.num": 3, "evt.is_open": True}, id="image"),
        pytest.param({"container.image.repository": "Bad/Ref"}, id="invalid-image"),
    ],
)
def test_falco_passthrough_alerts_validate(fields: dict[str, Any]) -> None:
    alert = falco_passthrough_alert(falco_alert_event(falco_alert(**fields), origin="http"))
    alert.context["cluster"] = "prod-eu"  # as the pipeline adds it
    validate(alert.to_dict())
    validate(_wire(alert.to_dict()))


def test_passthrough_of_a_minimal_falco_alert_validates() -> None:
    doc = {"rule": "r", "priority": "info", "time": "2026-11-29T13:44:05Z", "output_fields": {"a": 1}}
    validate(_wire(falco_passthrough_alert(falco_alert_event(doc)).to_dict()))


def test_dedup_summary_keys_validate_together(audit_alert: dict[str, Any]) -> None:
    doc = copy.deepcopy(audit_alert)
    doc["eventd"] |= {"repeat_count": 7, "first_seen": doc["time"], "last_seen": doc["time"]}
    validate(doc)
    del doc["eventd"]["last_seen"]
    with pytest.raises(AlertSchemaError, match="last_seen"):
        validate(doc)


# ------------------------------------------------------------------- negatives


def _broken(doc: dict[str, Any], path: str, value: Any = None, *, delete: bool = False) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = path.split("/")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if delete:
        del node[key]
    else:
        node[key] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "delete", "where"),
    [
        ("uuid", None, True, "'uuid' is a required property"),
        ("uuid", "not-a-uuid", False, "uuid"),
        ("uuid", "77A8D79C-5AF7-5ADB-B12D-2538DBAD697E", False, "uuid"),
        ("priority", "Info", False, "priority"),
        ("priority", "warning", False, "priority"),
        ("priority", 4, False, "priority"),
        ("time", "2026-11-29T10:00:00.123456Z", False, "time"),
        ("time", "2026-11-29 10:00:00.123456000Z", False, "time"),
        ("rule", "", False, "rule"),
        ("rule", None, True, "'rule' is a required property"),
        ("hostname", None, True, "'hostname' is a required property"),
        ("output_fields", None, True, "'output_fields' is a required property"),
        ("output_fields/ka.verb", {"nested": 1}, False, "output_fields.ka.verb"),
        ("tags/0", 3, False, "tags[0]"),
        ("message", "extra", False, "message"),
        ("eventd/images/0/tag", None, False, "eventd.images[0].tag"),
        ("eventd/images/0/size", 1, False, "eventd.images[0]"),
        ("eventd/pod_ip", "10.0.0.9", False, "pod_ip"),
        ("eventd/event_source", "syscall", False, "eventd"),
        ("eventd/audit_id", None, True, "audit_id"),
        ("eventd/repeat_count", 0, False, "repeat_count"),
    ],
)
def test_broken_audit_alerts_fail(
    audit_alert: dict[str, Any], path: str, value: Any, delete: bool, where: str
) -> None:
    validate(audit_alert)  # the unbroken document is fine
    with pytest.raises(AlertSchemaError, match="not a valid eventd alert") as info:
        validate(_broken(audit_alert, path, value, delete=delete))
    assert where in str(info.value)


@pytest.mark.parametrize(
    ("path", "value", "delete"),
    [
        ("eventd/falco_rule", None, True),
        ("eventd/audit_id", "x", False),  # an audit key in a Falco context
        ("eventd/images/0/size", 1, False),
        ("eventd/node", 5, False),
    ],
)
def test_broken_falco_alerts_fail(passthrough: dict[str, Any], path: str, value: Any, delete: bool) -> None:
    validate(passthrough)
    with pytest.raises(AlertSchemaError):
        validate(_broken(passthrough, path, value, delete=delete))


def test_error_lists_every_violation_briefly(audit_alert: dict[str, Any]) -> None:
    doc = {k: v for k, v in audit_alert.items() if k in ("output", "tags")}
    with pytest.raises(AlertSchemaError) as info:
        validate(doc)
    assert len(info.value.errors) == 7  # seven required keys missing
    assert "and 2 more" in str(info.value)


def test_non_object_is_refused() -> None:
    with pytest.raises(AlertSchemaError, match="is not of type 'object'"):
        validate([])


@given(
    rule=st.text(max_size=40), audit_id=st.text(max_size=40), stage=st.sampled_from(["ResponseComplete", ""])
)
def test_alert_uuid_is_uuid5_of_rule_and_event(rule: str, audit_id: str, stage: str) -> None:
    """The hand-built uuid5 is the standard one: consumers may recompute it."""
    event = Event(K8S_AUDIT, {"auditID": audit_id, "stage": stage})
    name = f"{rule}\x00audit:{audit_id}:{stage}"
    assert alert_uuid(rule, event) == str(uuid.uuid5(alerts_module._UUID_NAMESPACE, name))


def test_a_copy_with_a_field_changed_serialises_its_own_values() -> None:
    """``Alert`` keeps its JSON once made; a copy made with
    ``msgspec.structs.replace`` must not inherit the original's."""
    import msgspec
    import orjson

    from tests.support.http_receiver import sample_alert

    original = sample_alert()
    assert orjson.loads(original.to_json())["uuid"] == original.uuid
    copy = msgspec.structs.replace(original, uuid="00000000-0000-5000-8000-000000000000")
    assert orjson.loads(copy.to_json())["uuid"] == "00000000-0000-5000-8000-000000000000"
    assert orjson.loads(original.to_json())["uuid"] == original.uuid
