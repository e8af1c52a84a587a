"""The rule index and the raw-bytes prefilter must never change what matches.

The decisive test is differential: scanning with the prefilter and index
gives exactly the alerts of scanning every line with every rule.
"""

from __future__ import annotations

import io
import json
import random
from unittest.mock import patch

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventd.engine.index import RuleIndex
from eventd.engine.loader import load_rules_text
from eventd.engine.matcher import Matcher
from eventd.events.decode import decode_object
from eventd.rulepacks import builtin_rule_files
from eventd.scanner import Scanner
from tests.support.builders import audit_event, falco_alert, lease_renewal, pod

RULES = """
- rule: Untrusted pod image
  desc: d
  condition: >
    ka.target.resource = pods and ka.verb = create
    and not ka.req.pod.containers.image.repository in (nginx, "gcr.io/p/app")
  output: image %ka.req.pod.containers.image
  priority: WARNING
  source: k8s_audit
- rule: Secret read
  desc: d
  condition: ka.target.resource in (secrets) and ka.verb in (get, list) and ka.user.name != admin
  output: secret %ka.target.name by %ka.user.name
  priority: NOTICE
  source: k8s_audit
- rule: Delete in prod
  desc: d
  condition: (ka.target.namespace = prod or ka.target.namespace = "kube/system") and ka.verb = delete
  output: delete %ka.target.name
  priority: ERROR
  source: k8s_audit
- rule: Configmap read by a person in a team namespace
  desc: d
  condition: >
    ka.target.resource = configmaps and not (ka.user.name startswith "system:"
    or ka.user.groups intersects (system:nodes)) and (ka.target.namespace startswith team
    or ka.target.name contains secret)
  output: read %ka.target.name by %ka.user.name
  priority: NOTICE
  source: k8s_audit
- rule: Pod or workload patched
  desc: d
  condition: >
    ((ka.target.resource = pods and not ka.target.subresource exists) or ka.target.resource = deployments)
    and ka.verb in (create, patch) and not (ka.verb = patch and ka.target.resource = deployments)
  output: changed %ka.target.resource %ka.target.name
  priority: INFO
  source: k8s_audit
- rule: Falco alert with image
  desc: d
  condition: container.image.repository exists and container.image.repository startswith docker.io/
  output: falco %container.image.repository
  priority: INFO
  source: falco
"""


def _ruleset(text: str = RULES):
    return load_rules_text([("test.yaml", text)])


def _skippable(doc_or_line, ruleset=None) -> bool:
    pre = Matcher(ruleset or _ruleset()).prefilter
    assert pre is not None
    line = doc_or_line if isinstance(doc_or_line, bytes) else orjson.dumps(doc_or_line)
    return pre.skippable(line)


def test_prefilter_rules_out_lines_no_rule_can_match() -> None:
    assert _skippable(lease_renewal())
    assert _skippable(audit_event(resource="pods", verb="list"))
    assert not _skippable(audit_event(resource="pods", verb="create"))
    assert not _skippable(audit_event(resource="secrets", verb="get"))
    assert not _skippable(falco_alert())
    no_falco_rules = _ruleset(RULES.split("- rule: Falco alert with image")[0])
    assert _skippable(falco_alert(), no_falco_rules)


def test_prefilter_reads_json_exactly() -> None:
    line = orjson.dumps(audit_event(resource="leases", verb="create"))
    # An escape spelling "pods" is still "pods".
    assert not _skippable(line.replace(b'"leases"', b'"\\u0070ods"'))
    # Whitespace layout does not matter.
    assert not _skippable(line.replace(b'"resource":"leases"', b'"resource" :  "pods"'))
    # Duplicate keys: the last one wins, as in the full decoder.
    pods = orjson.dumps(audit_event(resource="pods", verb="create"))
    assert not _skippable(pods.replace(b'"verb":"create"', b'"verb":"get","verb":"create"'))
    assert _skippable(pods.replace(b'"verb":"create"', b'"verb":"create","verb":"get"'))
    # A "pods" elsewhere in the document is not the resource.
    assert _skippable(line.replace(b'"userAgent":', b'"note":{"resource":"pods"},"userAgent":'))


def test_anything_unusual_is_left_to_the_decoder() -> None:
    for line in (
        b"{not json",
        b"[1, 2]",
        b'{"kind": "EventList", "items": []}',
        b'{"hello": 1}',
        b'{"kind":"Event","objectRef":"pods"}',
    ):
        assert not _skippable(line)


def _with_rule(condition: str) -> str:
    return (
        RULES
        + f"""
- rule: Extra
  desc: d
  condition: {condition}
  output: x
  priority: INFO
  source: k8s_audit
"""
    )


def test_unconstrained_rule_leaves_nothing_skippable() -> None:
    text = _with_rule("ka.useragent contains curl")
    assert not _skippable(lease_renewal(), _ruleset(text))


def test_tests_on_users_names_and_namespaces_rule_lines_out() -> None:
    """Beyond value sets: ``startswith``, ``contains``, their negations, and
    ``not (a or b)``, read off the header's high-cardinality values."""
    by_bob = _ruleset(_with_rule("ka.user.name startswith bob"))
    assert _skippable(lease_renewal(), by_bob)
    assert not _skippable(audit_event(resource="leases", verb="update", user="bobby"), by_bob)
    not_system = _ruleset(
        _with_rule(
            "ka.target.resource = serviceaccounts and not (ka.user.name startswith 'system:'"
            " or ka.user.groups intersects (system:nodes)) and ka.target.namespace contains team"
        )
    )
    account = {"resource": "serviceaccounts", "verb": "get", "namespace": "team-a"}
    assert _skippable(audit_event(**account, user="system:serviceaccount:a:b"), not_system)
    assert _skippable(audit_event(**account | {"namespace": "prod"}, user="alice"), not_system)
    assert not _skippable(audit_event(**account, user="alice"), not_system)
    # A missing user is not a system user: the negation holds.
    line = orjson.dumps(audit_event(**account, user="alice")).replace(b'"username":"alice",', b"")
    assert b"alice" not in line and not _skippable(line, not_system)


def test_or_across_fields_is_judged_per_routing_key() -> None:
    """``(pod or workload)``: a kubelet's ``patch pods/status`` meets neither
    branch, though each field alone has a value some branch allows."""
    rules = _ruleset(RULES.split("- rule: Falco alert")[0])
    assert _skippable(audit_event(resource="pods", subresource="status", verb="patch"), rules)
    assert _skippable(audit_event(resource="deployments", verb="patch"), rules)
    assert not _skippable(audit_event(resource="pods", verb="patch"), rules)
    assert not _skippable(audit_event(resource="deployments", subresource="scale", verb="create"), rules)


def test_residual_predicates_drop_what_the_index_guarantees() -> None:
    index = Matcher(_ruleset()).indexes["k8s_audit"]
    (event,), _ = decode_object(audit_event(resource="secrets", verb="get", user="alice"))
    ((rule, residual),) = index.candidates(event)
    assert rule.name == "Secret read" and residual is not rule.predicate
    assert residual(event) and rule.predicate(event)
    # ``ka.user.name != admin`` is a test the index runs itself.
    (event,), _ = decode_object(audit_event(resource="secrets", verb="get", user="admin"))
    assert index.candidates(event) == [] and not rule.predicate(event)


def test_index_gives_only_rules_that_can_fire() -> None:
    matcher = Matcher(_ruleset(), rule_matching="all")
    (event,), _ = decode_object(lease_renewal())
    assert matcher.indexes["k8s_audit"].candidates(event) == []
    (event,), _ = decode_object(audit_event(resource="secrets", verb="get"))
    assert [r.name for r, _ in matcher.indexes["k8s_audit"].candidates(event)] == ["Secret read"]


def _escaping_dumps(obj: object, rnd: random.Random) -> bytes:
    """JSON text where string characters are randomly written as \\u escapes."""
    if isinstance(obj, str):
        chars = [f"\\u{ord(c):04x}" if rnd.random() < 0.3 else json.dumps(c)[1:-1] for c in obj]
        return ('"' + "".join(chars) + '"').encode()
    if isinstance(obj, dict):
        parts = [_escaping_dumps(k, rnd) + b":" + _escaping_dumps(v, rnd) for k, v in obj.items()]
        return b"{" + b",".join(parts) + b"}"
    if isinstance(obj, list):
        return b"[" + b",".join(_escaping_dumps(v, rnd) for v in obj) + b"]"
    return orjson.dumps(obj)


_events = st.builds(
    audit_event,
    verb=st.sampled_from(["create", "get", "list", "delete", "update", "patch"]),
    resource=st.sampled_from(["pods", "secrets", "leases", "deployments", "configmaps"]),
    namespace=st.sampled_from(["prod", "kube/system", "default", "dev", "team-a"]),
    name=st.sampled_from(["web", "app-secret", None]),
    subresource=st.sampled_from([None, None, "status", "exec"]),
    user=st.sampled_from(["admin", "alice", "system:node:n1", "system:serviceaccount:a:b", "system"]),
    request=st.one_of(
        st.none(),
        st.lists(
            st.sampled_from(["nginx", "gcr.io/p/app", "evil.io/x:1", "reg:5000/a"]), min_size=1, max_size=3
        ).map(lambda imgs: pod(*imgs)),
    ),
)
_lines = st.lists(
    st.tuples(st.one_of(_events, st.builds(falco_alert)), st.integers(0, 2**32), st.booleans()),
    min_size=1,
    max_size=25,
)


def _scan(lines: list[bytes], ruleset, prefilter: bool) -> list[bytes]:
    """Alerts of a scan; without the prefilter, also without the index: every
    event meets every rule of its source, whole, which is the reference."""
    out: list[bytes] = []
    scanner = Scanner(
        ruleset, on_alert=lambda a: out.append(a.to_json()), prefilter=prefilter, rule_matching="all"
    )
    if prefilter:
        scanner.scan_lines(lines, "test")
        # And a block at a time (``select_block``, routes reused): the same.
        by_block: list[bytes] = []
        blocks = Scanner(
            ruleset, on_alert=lambda a: by_block.append(a.to_json()), prefilter=True, rule_matching="all"
        )
        blocks.scan_file(io.BytesIO(b"".join(lines)), "test", block_size=2048)
        assert by_block == out
        return out
    with patch.object(RuleIndex, "candidates", _every_rule):
        scanner.scan_lines(lines, "test")
    return out


def _every_rule(index: RuleIndex, _event) -> list:
    return [(rule, rule.predicate) for rule in index.rules]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_lines)
def test_prefilter_and_index_are_exactly_equivalent(items) -> None:
    # Pad past the probe window so the prefilter is really in play.
    lines = [orjson.dumps(lease_renewal()) + b"\n" for _ in range(25)]
    for doc, seed, escaped in items:
        text = _escaping_dumps(doc, random.Random(seed)) if escaped else orjson.dumps(doc)
        lines.append(text + b"\n")
    for ruleset in (_ruleset(), _builtin()):
        assert _scan(lines, ruleset, True) == _scan(lines, ruleset, False)


_BUILTIN = []


def _builtin():
    if not _BUILTIN:
        from eventd.engine.loader import load_rules

        _BUILTIN.append(load_rules(builtin_rule_files()))
    return _BUILTIN[0]


# ------------------------------------------------- the daemon's record filter


def _with_pull_secret(doc: dict, kind: str) -> dict:
    """Give a ServiceAccount or pod body an ``imagePullSecrets`` entry, or make
    a Secret one of the registry-credential type."""
    if kind == "secret-type":
        doc["requestObject"] = {"type": "kubernetes.io/dockerconfigjson", "metadata": {"name": "regcred"}}
    elif kind == "pull-secrets" and isinstance(doc.get("requestObject"), dict):
        doc["requestObject"].setdefault("spec", {})["imagePullSecrets"] = [{"name": "regcred"}]
    elif kind == "pull-secrets":
        doc["requestObject"] = {"imagePullSecrets": [{"name": "regcred"}]}
    return doc


_daemon_events = st.builds(
    _with_pull_secret,
    st.builds(
        audit_event,
        verb=st.sampled_from(["create", "get", "patch", "delete", "update"]),
        resource=st.sampled_from(
            ["pods", "secrets", "leases", "deployments", "cronjobs", "configmaps", "serviceaccounts"]
        ),
        subresource=st.sampled_from([None, None, "status", "ephemeralcontainers"]),
        namespace=st.sampled_from(["prod", "default"]),
        user=st.sampled_from(["admin", "alice"]),
        stage=st.sampled_from(["ResponseComplete", "RequestReceived"]),
        request=st.one_of(
            st.none(),
            st.lists(st.sampled_from(["nginx", "evil.io/x:1"]), min_size=1, max_size=2).map(
                lambda imgs: pod(*imgs)
            ),
        ),
    ),
    st.sampled_from(["none", "pull-secrets", "secret-type"]),
)


def _image_pulls(events, metrics) -> float:
    from eventd.image_metrics import ImagePullCounter

    counter = ImagePullCounter(metrics, ["docker.io/library"])
    for event in events:
        counter.observe(event)
    return sum(
        sample.value
        for family in metrics.image_pulls.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.one_of(_daemon_events, st.builds(falco_alert)), st.integers(0, 2**32)), max_size=12)
)
def test_daemon_record_filter_drops_only_records_that_produce_nothing(items) -> None:
    """``pipeline.RecordFilter`` (Kafka messages, audit log lines) may drop a
    record only if no rule matches its event, the image-pull counter counts
    nothing for it, the image-pull-secret store learns nothing from it, and
    it is not a Falco alert (those are all forwarded)."""
    from eventd.engine.fields.pullsecrets import PullSecretStore
    from eventd.metrics import Metrics
    from eventd.pipeline import RecordFilter

    for ruleset in (_ruleset(), _builtin(), _ruleset(RULES.split("- rule: Falco alert")[0])):
        matcher = Matcher(ruleset, rule_matching="all")
        record_filter = RecordFilter.build(matcher, Metrics())
        assert record_filter is not None
        for doc, seed in items:
            line = _escaping_dumps(doc, random.Random(seed))
            if not record_filter.skippable(line):
                continue
            events, _ = decode_object(doc)
            assert all(event.source != "falco" for event in events)
            assert all(matcher.match(event) == [] for event in events)
            assert _image_pulls(events, Metrics()) == 0
            store = PullSecretStore()
            for event in events:
                store.observe(event)
            assert len(store) == 0


def test_daemon_record_filter_keeps_pod_writes_no_rule_reads() -> None:
    """A pod create with a trusted image matches no rule here, but the image
    counter needs it; a lease renewal is dropped."""
    from eventd.metrics import Metrics
    from eventd.pipeline import RecordFilter

    only_secrets = RULES.split("- rule: Delete in prod")[0].split("- rule: Secret read")[1]
    record_filter = RecordFilter.build(Matcher(_ruleset("- rule: Secret read" + only_secrets)), Metrics())
    assert record_filter is not None
    assert not record_filter.skippable(orjson.dumps(audit_event(resource="pods", request=pod("nginx"))))
    assert not record_filter.skippable(orjson.dumps(falco_alert()))
    assert record_filter.skippable(orjson.dumps(lease_renewal()))
    # A kubelet's pods/status patch is a pod event that no observer counts.
    assert record_filter.skippable(orjson.dumps(audit_event(verb="patch", subresource="status")))
    assert not record_filter.skippable(orjson.dumps(audit_event(resource="serviceaccounts", verb="update")))
    assert not _skippable(audit_event(resource="secrets", verb="get"))
    # An ephemeral container added to a pod: the image counter counts it, the
    # pull-secret store does not learn from a subresource; kept for the counter.
    debug = audit_event(verb="patch", subresource="ephemeralcontainers", request=pod("busybox"))
    assert not record_filter.skippable(orjson.dumps(debug))
    # ...once its write is complete; a request still in flight counts nothing.
    assert record_filter.skippable(orjson.dumps({**debug, "stage": "RequestReceived"}))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_daemon_events, st.integers(0, 2**32)), min_size=1, max_size=15))
def test_a_block_gives_each_line_its_own_verdict_with_kept_resources(items) -> None:
    """``select_block`` with the daemon's kept resources (``pipeline``'s
    observers) agrees, line by line, with ``skippable``."""
    from eventd.engine.index import Prefilter
    from eventd.image_metrics import POD_RESOURCES, may_count

    lines = [_escaping_dumps(doc, random.Random(seed)) + b"\n" for doc, seed in items]
    for ruleset in (_ruleset(), _builtin()):
        indexes = Matcher(ruleset).indexes
        pre = Prefilter.build(indexes, keep_resources=POD_RESOURCES, keep_when=may_count)
        assert pre is not None
        judged = pre.select_block(b"".join(lines))
        assert judged is not None  # every line is one Event with an auditID
        count, wanted, routes = judged
        assert count == len(lines) and len(routes) == len(wanted)
        assert wanted == [i for i, line in enumerate(lines) if not pre.skippable(line)]


def test_no_record_filter_when_the_rules_read_a_field_no_header_carries(monkeypatch) -> None:
    """Every indexable field is in the routing header today; should one ever
    not be, the record filter is off (every record decoded), not wrong."""
    from eventd.engine import index
    from eventd.metrics import Metrics
    from eventd.pipeline import RecordFilter

    matcher = Matcher(_ruleset())
    assert RecordFilter.build(matcher, Metrics()) is not None
    without_verb = {k: v for k, v in index.HEADER_FIELDS.items() if k != "ka.verb"}
    monkeypatch.setattr(index, "HEADER_FIELDS", without_verb)
    assert RecordFilter.build(matcher, Metrics()) is None
