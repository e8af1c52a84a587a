"""The audit webhook over real HTTP(S) on loopback, plus its deploy manifests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import gzip
import os
import socket
import ssl
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from eventd.config import AuditWebhookConfig, ConfigError, Listen
from eventd.metrics import Metrics
from eventd.sources.audit_webhook import AuditWebhookSource
from eventd.sources.http_input import Rejected, _Inflater
from tests.support.builders import audit_event
from tests.support.http_inlet import RecordingInlet as SharedInlet
from tests.support.tls_certs import TlsFiles, make_tls_files

ROOT = Path(__file__).resolve().parent.parent
PATH = "/k8s-audit"
JSON = {"Content-Type": "application/json"}


class RecordingInlet(SharedInlet):
    def __init__(self) -> None:
        super().__init__("k8s_audit_webhook")

    def ids(self) -> list[tuple[str, str]]:
        return [(d["auditID"], d["stage"]) for d in self.docs()]


def config(**kw: Any) -> AuditWebhookConfig:
    return dataclasses.replace(AuditWebhookConfig(listen=Listen("127.0.0.1", 0)), **kw)


async def wait_for(predicate: Any, task: asyncio.Task[Any] | None = None) -> None:
    for _ in range(1000):
        if predicate():
            return
        if task is not None and task.done():
            task.result()
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


@contextlib.asynccontextmanager
async def running(source: AuditWebhookSource, inlet: RecordingInlet) -> AsyncIterator[str]:
    task = asyncio.create_task(source.run(inlet))
    await wait_for(source.ready, task)
    assert source.address is not None
    scheme = "https" if source.config.tls else "http"
    try:
        yield f"{scheme}://127.0.0.1:{source.address[1]}{PATH}"
    finally:
        await source.stop()
        await asyncio.wait_for(task, 5)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def inlet() -> RecordingInlet:
    return RecordingInlet()


def event_list(*events: dict[str, Any], version: str = "audit.k8s.io/v1") -> bytes:
    return orjson.dumps({"kind": "EventList", "apiVersion": version, "metadata": {}, "items": list(events)})


def duplicates(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "eventd_events_dropped_total", {"source": "k8s_audit_webhook", "reason": "duplicate"}
    )
    return value or 0.0


async def post(
    url: str, body: Any, headers: dict[str, str] | None = None, **kw: Any
) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as session:
        resp = await session.post(url, data=body, headers=JSON if headers is None else headers, **kw)
        await resp.read()
        return resp


# ------------------------------------------------------------------- bodies


@pytest.mark.asyncio
async def test_event_list_is_accepted_and_decoded(metrics: Metrics, inlet: RecordingInlet) -> None:
    events = [audit_event(), audit_event(verb="delete", code=200)]
    source = AuditWebhookSource(config(), metrics)
    async with running(source, inlet) as url:
        resp = await post(url, event_list(*events))
        assert resp.status == 200
        assert orjson.loads(await resp.read()) == {"accepted": 2, "duplicates": 0, "rejected": 0}
        assert metrics.registry.get_sample_value("eventd_source_up", {"source": "k8s_audit_webhook"}) == 1
    [batch] = inlet.batches
    assert batch.source == "k8s_audit_webhook"
    assert [e.doc["auditID"] for e in batch.events] == [e["auditID"] for e in events]
    assert {e.origin for e in batch.events} == {"webhook"}
    assert metrics.registry.get_sample_value("eventd_source_up", {"source": "k8s_audit_webhook"}) == 0


@pytest.mark.asyncio
async def test_single_event_array_and_v1beta1(metrics: Metrics, inlet: RecordingInlet) -> None:
    single, a, b = audit_event(), audit_event(), audit_event(api_version="audit.k8s.io/v1beta1")
    beta = audit_event(api_version="audit.k8s.io/v1beta1", timestamp="2026-11-29T10:00:00Z")
    source = AuditWebhookSource(config(), metrics)
    async with running(source, inlet) as url:
        assert (await post(url, orjson.dumps(single))).status == 200
        assert (await post(url, orjson.dumps([a, b]))).status == 200
        assert (await post(url, event_list(beta, version="audit.k8s.io/v1beta1"))).status == 200
    assert [i for i, _ in inlet.ids()] == [e["auditID"] for e in (single, a, b, beta)]


@pytest.mark.asyncio
async def test_gzip_body_and_missing_content_type(metrics: Metrics, inlet: RecordingInlet) -> None:
    events = [audit_event() for _ in range(3)]
    source = AuditWebhookSource(config(), metrics)
    async with running(source, inlet) as url:
        zipped = gzip.compress(event_list(*events))
        resp = await post(url, zipped, {"Content-Type": "application/json", "Content-Encoding": "gzip"})
        assert resp.status == 200
        # No Content-Type at all is read as JSON (curl-like clients omit it).
        plain = await post(url, event_list(audit_event()), {}, skip_auto_headers=["Content-Type"])
        assert plain.status == 200
    assert len(inlet.ids()) == 4


@pytest.mark.asyncio
async def test_refusals_with_status_and_reason(metrics: Metrics, inlet: RecordingInlet) -> None:
    source = AuditWebhookSource(config(), metrics)
    async with running(source, inlet) as url, aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert (resp.status, resp.headers["Allow"]) == (405, "POST")
        resp = await post(url, b"{not json", JSON)
        assert resp.status == 400 and "invalid JSON" in await resp.text()
        resp = await post(url, event_list(audit_event()), {"Content-Type": "text/plain"})
        assert resp.status == 415
        resp = await post(url, event_list(audit_event()), {"Content-Type": "application/json; charset=utf-8"})
        assert resp.status == 200
        resp = await post(url, orjson.dumps({"kind": "Pod", "apiVersion": "v1"}))
        assert resp.status == 400 and "not recognized as a k8s audit event" in await resp.text()
        assert (await post(url, orjson.dumps([{"foo": 1}]))).status == 400
        resp = await post(url, b"\x1f\x8b garbage", {"Content-Encoding": "gzip", **JSON})
        assert resp.status == 400
        assert (await post(url, b"{}", {"Content-Encoding": "br", **JSON})).status == 415
    assert inlet.rejects == Counter(method=1, json=1, content_type=1, not_audit=2, gzip=1, encoding=1)
    assert len(inlet.batches) == 1


@pytest.mark.asyncio
async def test_bad_events_are_counted_and_the_rest_goes_through(
    metrics: Metrics, inlet: RecordingInlet
) -> None:
    good = audit_event()
    no_time = audit_event()
    del no_time["stageTimestamp"]
    source = AuditWebhookSource(config(), metrics)
    async with running(source, inlet) as url:
        resp = await post(url, event_list(good, no_time, {"kind": "Pod"}))
        assert resp.status == 200
        assert orjson.loads(await resp.read())["rejected"] == 2
    assert [i for i, _ in inlet.ids()] == [good["auditID"]]
    assert inlet.rejects == Counter(timestamp=1, not_audit=1)


@pytest.mark.asyncio
async def test_oversized_bodies_get_413(metrics: Metrics, inlet: RecordingInlet) -> None:
    source = AuditWebhookSource(config(max_body_bytes=4096), metrics)
    big = event_list(*(audit_event() for _ in range(10)))
    assert len(big) > 4096

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the cap applies while reading
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    bomb = gzip.compress(b" " * (3 * 1024 * 1024), 9)
    assert len(bomb) < 4096
    async with running(source, inlet) as url:
        assert (await post(url, big)).status == 413
        assert (await post(url, chunked())).status == 413
        assert (await post(url, bomb, {"Content-Encoding": "gzip", **JSON})).status == 413
        # Just under the cap is fine.
        assert (await post(url, event_list(audit_event()))).status == 200
    assert inlet.rejects == Counter(too_large=3)
    assert len(inlet.batches) == 1


def test_gzip_bomb_is_stopped_without_inflating_it() -> None:
    limit = 100_000
    bomb = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    payload = bomb.compress(b"\0" * (64 * 1024 * 1024)) + bomb.flush()
    assert len(payload) < limit  # small on the wire, 64 MiB inflated
    inflater = _Inflater(limit)
    with pytest.raises(Rejected) as err:
        inflater.feed(payload)
    assert err.value.status == 413
    assert inflater.size <= limit + 1


def test_concatenated_gzip_members_and_truncation() -> None:
    inflater = _Inflater(1000)
    whole = gzip.compress(b'{"a":') + gzip.compress(b"1}")
    for i in range(0, len(whole), 7):  # members split across chunks
        inflater.feed(whole[i : i + 7])
    assert inflater.result() == b'{"a":1}'
    truncated = _Inflater(1000)
    truncated.feed(gzip.compress(b"{}")[:-4])
    with pytest.raises(Rejected, match="truncated"):
        truncated.result()


# ------------------------------------------------------------------- dedup


@pytest.mark.asyncio
async def test_redelivered_batch_is_dropped_as_duplicates(metrics: Metrics, inlet: RecordingInlet) -> None:
    body = event_list(audit_event(), audit_event(), audit_event())
    source = AuditWebhookSource(config(), metrics)
    async with running(source, inlet) as url:
        assert (await post(url, body)).status == 200
        again = await post(url, body)
        assert again.status == 200
        assert orjson.loads(await again.read()) == {"accepted": 0, "duplicates": 3, "rejected": 0}
    assert len(inlet.ids()) == 3
    assert duplicates(metrics) == 3


@pytest.mark.asyncio
async def test_concurrent_overlapping_batches_deliver_each_event_once(
    metrics: Metrics, inlet: RecordingInlet
) -> None:
    events = [audit_event() for _ in range(105)]
    batches = [event_list(*events[i * 5 : i * 5 + 10]) for i in range(20)]  # each overlaps the next
    source = AuditWebhookSource(config(), metrics)
    async with running(source, inlet) as url, aiohttp.ClientSession() as session:

        async def send(body: bytes) -> int:
            async with session.post(url, data=body, headers=JSON) as resp:
                return resp.status

        statuses = await asyncio.gather(*(send(b) for b in batches))
    assert statuses == [200] * 20
    ids = inlet.ids()
    assert sorted(ids) == sorted((e["auditID"], e["stage"]) for e in events)
    assert duplicates(metrics) == 95


@pytest.mark.asyncio
async def test_out_of_order_stages_are_all_kept(metrics: Metrics, inlet: RecordingInlet) -> None:
    started = audit_event(verb="create", subresource="exec", stage="ResponseStarted", code=101)
    completed = dict(started, stage="ResponseComplete", stageTimestamp="2026-11-29T10:00:05.000000Z")
    source = AuditWebhookSource(config(), metrics)
    async with running(source, inlet) as url:
        assert (await post(url, event_list(completed))).status == 200
        assert (await post(url, event_list(started))).status == 200  # older, arrives later
        assert (await post(url, event_list(started, completed))).status == 200  # a retry
    assert inlet.ids() == [(started["auditID"], "ResponseComplete"), (started["auditID"], "ResponseStarted")]
    assert duplicates(metrics) == 2


@pytest.mark.asyncio
async def test_full_pipeline_answers_503_and_the_retry_is_not_a_duplicate(
    metrics: Metrics, inlet: RecordingInlet
) -> None:
    events = [audit_event() for _ in range(4)]
    source = AuditWebhookSource(config(), metrics)
    async with running(source, inlet) as url:
        inlet.accepting = False
        resp = await post(url, event_list(*events))
        assert (resp.status, resp.headers["Retry-After"]) == (503, "1")
        assert inlet.batches == []
        inlet.accepting = True
        retry = await post(url, event_list(*events))
        assert retry.status == 200
        assert orjson.loads(await retry.read())["accepted"] == 4
    assert [i for i, _ in inlet.ids()] == [e["auditID"] for e in events]
    assert duplicates(metrics) == 0


# ------------------------------------------------------------------ auth


@pytest.mark.asyncio
async def test_bearer_token_is_checked_and_reread_on_change(
    tmp_path: Path, metrics: Metrics, inlet: RecordingInlet
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    source = AuditWebhookSource(config(token_file=token), metrics)
    body = event_list(audit_event())
    async with running(source, inlet) as url:
        missing = await post(url, body)
        assert missing.status == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await post(url, body, {"Authorization": "Bearer wrong", **JSON})).status == 401
        assert (await post(url, body, {"Authorization": "Basic s3cret", **JSON})).status == 401
        assert (await post(url, body, {"Authorization": "Bearer s3cret", **JSON})).status == 200
        token.write_text("rotated-token\n")
        stat = token.stat()
        os.utime(token, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        assert (await post(url, body, {"Authorization": "Bearer s3cret", **JSON})).status == 401
        ok = await post(url, event_list(audit_event()), {"Authorization": "bearer rotated-token", **JSON})
        assert ok.status == 200
        token.unlink()  # mid-rotation: the last good token stays in force
        ok = await post(url, event_list(audit_event()), {"Authorization": "Bearer rotated-token", **JSON})
        assert ok.status == 200
    assert inlet.rejects == Counter(unauthorized=4)
    assert len(inlet.batches) == 3


@pytest.mark.asyncio
async def test_client_certificates_are_required(
    tmp_path: Path, metrics: Metrics, inlet: RecordingInlet
) -> None:
    pki = make_tls_files(tmp_path / "pki")
    stranger = make_tls_files(tmp_path / "other")
    source = AuditWebhookSource(config(tls=pki.server_tls()), metrics)
    body = event_list(audit_event())
    async with running(source, inlet) as url:
        assert url.startswith("https://")
        assert (await post(url, body, ssl=pki.client_context())).status == 200
        for ctx in (pki.client_context(certificate=False), _trusting(pki.ca, stranger)):
            with pytest.raises(aiohttp.ClientError):
                await post(url, body, ssl=ctx)
    assert len(inlet.batches) == 1


def _trusting(ca: Path, other: TlsFiles) -> ssl.SSLContext:
    """Trusts our server but presents a client certificate of another CA."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(other.client_cert, other.client_key)
    return ctx


@pytest.mark.asyncio
async def test_token_and_client_certificates_combined(
    tmp_path: Path, metrics: Metrics, inlet: RecordingInlet
) -> None:
    pki = make_tls_files(tmp_path / "pki")
    token = tmp_path / "token"
    token.write_text("tok")
    source = AuditWebhookSource(config(tls=pki.server_tls(), token_file=token), metrics)
    async with running(source, inlet) as url:
        body = event_list(audit_event())
        assert (await post(url, body, ssl=pki.client_context())).status == 401
        ok = await post(url, body, {"Authorization": "Bearer tok", **JSON}, ssl=pki.client_context())
        assert ok.status == 200


def test_refuses_to_start_on_a_public_address_without_auth(tmp_path: Path, metrics: Metrics) -> None:
    with pytest.raises(ConfigError) as err:
        AuditWebhookSource(config(listen=Listen("0.0.0.0", 9765)), metrics)
    assert err.value.key == "sources.k8s_audit_webhook.listen"
    assert "allow_unauthenticated" in str(err.value)
    with pytest.raises(ConfigError, match=r"sources\.k8s_audit_webhook\.token_file"):
        AuditWebhookSource(config(listen=Listen("0.0.0.0", 9765), token_file=tmp_path / "nope"), metrics)
    token = tmp_path / "token"
    token.write_text("t")
    AuditWebhookSource(config(listen=Listen("0.0.0.0", 9765), token_file=token), metrics)
    pki = make_tls_files(tmp_path / "pki")
    with pytest.raises(ConfigError, match="refusing"):  # TLS without client certificates is not auth
        AuditWebhookSource(config(listen=Listen("10.1.2.3", 9765), tls=pki.server_tls(False)), metrics)
    AuditWebhookSource(config(listen=Listen("10.1.2.3", 9765), tls=pki.server_tls()), metrics)


@pytest.mark.asyncio
async def test_allow_unauthenticated_listens_on_all_addresses(
    metrics: Metrics, inlet: RecordingInlet
) -> None:
    source = AuditWebhookSource(config(listen=Listen("0.0.0.0", 0), allow_unauthenticated=True), metrics)
    async with running(source, inlet) as url:
        assert source.address is not None and source.address[0] == "0.0.0.0"
        assert (await post(url, event_list(audit_event()))).status == 200


@pytest.mark.asyncio
async def test_port_in_use_is_a_config_error(metrics: Metrics, inlet: RecordingInlet) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        source = AuditWebhookSource(config(listen=Listen("127.0.0.1", taken.getsockname()[1])), metrics)
        with pytest.raises(ConfigError, match="cannot listen"):
            await source.run(inlet)
    await asyncio.wait_for(source.stop(), 1)


# --------------------------------------------------------------- lifecycle


@pytest.mark.asyncio
async def test_stop_closes_the_listener_and_drains_in_flight(metrics: Metrics, inlet: RecordingInlet) -> None:
    source = AuditWebhookSource(config(), metrics)
    task = asyncio.create_task(source.run(inlet))
    await wait_for(source.ready, task)
    assert source.address is not None
    port = source.address[1]
    url = f"http://127.0.0.1:{port}{PATH}"
    body = event_list(audit_event(), audit_event())
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield body[:20]
        await release.wait()
        yield body[20:]

    async with aiohttp.ClientSession() as session, aiohttp.ClientSession() as kept_alive:
        async with kept_alive.post(url, data=event_list(audit_event()), headers=JSON) as first:
            assert first.status == 200  # leaves an idle kept-alive connection
        request = asyncio.create_task(session.post(url, data=slow_body(), headers=JSON))
        await wait_for(lambda: source.in_flight == 1)
        stopping = asyncio.create_task(source.stop())
        await wait_for(lambda: not source.ready())

        def refused() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) != 0

        await wait_for(refused)
        # A new request on the old connection is sent elsewhere, not taken.
        async with kept_alive.post(url, data=event_list(audit_event()), headers=JSON) as late:
            assert (late.status, late.headers["Retry-After"]) == (503, "1")
        assert not stopping.done()
        release.set()
        resp = await request
        assert resp.status == 200
        await asyncio.wait_for(stopping, 5)
    await asyncio.wait_for(task, 1)
    assert len(inlet.ids()) == 3
    assert inlet.rejects == Counter(stopping=1)


@pytest.mark.asyncio
async def test_stop_before_run_returns(metrics: Metrics, inlet: RecordingInlet) -> None:
    source = AuditWebhookSource(config(), metrics)
    await asyncio.wait_for(source.stop(), 1)
    await asyncio.wait_for(source.run(inlet), 1)
    assert not source.ready()


# ----------------------------------------------------------------- deploy


def test_webhook_kubeconfig_points_at_eventd_with_mtls() -> None:
    doc = yaml.safe_load((ROOT / "deploy/kubernetes/audit/webhook-kubeconfig.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("v1", "Config")
    [cluster] = doc["clusters"]
    assert cluster["cluster"]["server"] == "https://eventd.eventd.svc:9765/k8s-audit"
    assert cluster["cluster"]["certificate-authority"].endswith(".crt")
    [user] = doc["users"]
    assert {"client-certificate", "client-key"} <= set(user["user"])
    [context] = doc["contexts"]
    assert context["name"] == doc["current-context"]
    assert context["context"] == {"cluster": cluster["name"], "user": user["name"]}


def _rule_matches(rule: dict[str, Any], verb: str, group: str | None, resource: str) -> bool:
    if "verbs" in rule and verb not in rule["verbs"]:
        return False
    if group is None:  # a non-resource URL
        if "nonResourceURLs" in rule:
            return any(fnmatch.fnmatchcase(resource, pat) for pat in rule["nonResourceURLs"])
        return "resources" not in rule
    if "nonResourceURLs" in rule:
        return False
    if "resources" not in rule:
        return True
    return any(
        g.get("group", "") == group and any(_resource_matches(n, resource) for n in g.get("resources", ["*"]))
        for g in rule["resources"]
    )


def _resource_matches(name: str, resource: str) -> bool:
    """``pods`` is the resource only; ``pods/*`` its subresources; ``*`` everything."""
    return name in (resource, "*") or (name.endswith("/*") and resource.startswith(name[:-1]))


def _policy_level(rules: list[dict[str, Any]], verb: str, group: str | None, resource: str) -> str:
    """First-match evaluation of an audit Policy (the API server's rule)."""
    return next((r["level"] for r in rules if _rule_matches(r, verb, group, resource)), "None")


def test_audit_policy_levels_and_order() -> None:
    doc = yaml.safe_load((ROOT / "deploy/kubernetes/audit/audit-policy.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("audit.k8s.io/v1", "Policy")
    assert doc["omitStages"] == ["RequestReceived"]
    rules = doc["rules"]
    assert {r["level"] for r in rules} <= {"None", "Metadata", "Request", "RequestResponse"}
    assert rules[-1] == {"level": "Metadata"}
    all_verbs = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]
    for verb in all_verbs:  # credentials: metadata only, whatever the verb
        assert _policy_level(rules, verb, "", "secrets") == "Metadata"
        assert _policy_level(rules, verb, "", "serviceaccounts/token") == "Metadata"
        assert _policy_level(rules, verb, "authentication.k8s.io", "tokenreviews") == "Metadata"
    workloads = [
        ("", "pods"),
        ("", "pods/ephemeralcontainers"),
        ("", "replicationcontrollers"),
        ("apps", "deployments"),
        ("apps", "daemonsets"),
        ("apps", "statefulsets"),
        ("apps", "replicasets"),
        ("batch", "jobs"),
        ("batch", "cronjobs"),
    ]
    for group, resource in workloads:
        for verb in ("create", "update", "patch"):
            assert _policy_level(rules, verb, group, resource) == "RequestResponse", (verb, resource)
        assert _policy_level(rules, "get", group, resource) == "Metadata"
    for resource in ("serviceaccounts", "namespaces"):
        for verb in ("create", "update", "patch", "delete"):
            assert _policy_level(rules, verb, "", resource) == "RequestResponse"
    assert _policy_level(rules, "create", "", "pods/exec") == "Metadata"
    assert _policy_level(rules, "get", "", "configmaps") == "Metadata"
    assert _policy_level(rules, "watch", "coordination.k8s.io", "leases") == "None"
    assert _policy_level(rules, "list", "", "endpoints") == "None"
    assert _policy_level(rules, "list", "", "events") == "None"
    assert _policy_level(rules, "get", None, "/healthz") == "None"
    assert _policy_level(rules, "get", None, "/apis") == "Metadata"


@pytest.mark.asyncio
async def test_answer_waits_until_the_batch_reached_the_sinks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 200 promises the alerts are with the sinks: a crash after it loses nothing."""
    from eventd.sources import http_input

    monkeypatch.setattr(http_input, "DELIVERY_TIMEOUT_SECONDS", 0.5)
    inlet = RecordingInlet()
    inlet.deliver = False
    source = AuditWebhookSource(config(), Metrics())
    task = asyncio.create_task(source.run(inlet))
    try:
        await wait_for(source.ready, task)
        host, port = source.address
        url = f"http://{host}:{port}/k8s-audit"
        event = audit_event(auditID="slow-1")
        async with aiohttp.ClientSession() as session:
            post = asyncio.create_task(session.post(url, data=orjson.dumps(event), headers=JSON))
            await wait_for(lambda: inlet.batches)
            await asyncio.sleep(0.1)
            assert not post.done()  # not acknowledged while the pipeline holds it
            inlet.batches[0].done.set_result(None)
            response = await post
            assert response.status == 200
            # Not processed in time: 503 (see tests/faults/test_acknowledged_is_safe.py for the retry).
            post = await session.post(url, data=orjson.dumps(audit_event(auditID="slow-2")), headers=JSON)
            assert post.status == 503 and inlet.rejects["slow"] == 1
            # Processing failed: 503, and the retry is NOT dropped as a duplicate.
            retry_event = audit_event(auditID="failing")
            post = asyncio.create_task(session.post(url, data=orjson.dumps(retry_event), headers=JSON))
            await wait_for(lambda: len(inlet.batches) == 3)
            inlet.batches[2].done.set_exception(RuntimeError("sink bug"))
            assert (await post).status == 503
            inlet.deliver = True
            again = await session.post(url, data=orjson.dumps(retry_event), headers=JSON)
            assert again.status == 200 and len(inlet.batches) == 4
    finally:
        await source.stop()
        await task
