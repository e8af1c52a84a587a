"""Exact, in-process tests of ``eventd.events.redact`` (issue 17).

``tests/hostile/test_secret_redaction.py`` proves that no planted marker
leaks, through property tests and through ``eventd scan`` and the daemon in
child processes.  Those cannot tell a redactor that keeps too little (a
Secret's name redacted, a ``valueFrom`` turned into a value) or that
re-serialises a text body nothing was redacted from, and mutmut cannot see
the child processes.  These tests pin the exact output instead, and build
every policy inside the test: ``DEFAULT_POLICY`` is built when the module is
imported, before a planted bug is active, so a test that relied on it would
not notice a bug in ``build_policy``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest

from eventd.config import RedactionConfig, RedactPath
from eventd.events import redact
from eventd.events.redact import (
    LAST_APPLIED,
    MAX_TEXT_BYTES,
    REDACTED,
    CredentialNames,
    ResourceRedactor,
    build_policy,
    check_pattern,
    policy_from_config,
    redact_audit_event,
    redact_falco_alert,
)
from tests.support.builders import audit_event, falco_alert

R = REDACTED


def redacted(resource: str, body: Any, policy: redact.RedactionPolicy | None = None) -> Any:
    """A copy of ``body``, as a request of ``resource``, after redaction
    (default: ``build_policy()``); ``body`` itself is left as it was, so a
    test can compare the two."""
    doc = audit_event(resource=resource, request=copy.deepcopy(body))
    redact_audit_event(doc, policy or build_policy())
    return doc.get("requestObject")


def falco(policy: redact.RedactionPolicy | None = None, output: Any = "", **fields: Any) -> dict[str, Any]:
    doc = falco_alert(**fields)
    doc["output"] = output
    redact_falco_alert(doc, policy or build_policy())
    return doc


# ------------------------------------------------------------------ Secrets


def test_a_secret_keeps_its_names_and_metadata_and_loses_every_value() -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "immutable": True,
        "metadata": {
            "name": "db",
            "labels": {"app": "db"},
            "annotations": {LAST_APPLIED: '{"data":{"pw":"x"}}', "team": "a"},
            "managedFields": [{"manager": "kubectl", "x": {".dockerconfigjson": {"auth": "y"}}}],
        },
        "data": {"pw": "aHVudGVyMg==", "empty": None},
        "stringData": "not a mapping",
        "extra": [{"metadata": "m", "type": "t"}],
        "cleared": None,
    }
    assert redacted("secrets", body) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "immutable": True,
        "metadata": {
            "name": "db",
            "labels": {"app": "db"},
            "annotations": {LAST_APPLIED: R, "team": "a"},
            "managedFields": [{"manager": "kubectl", "x": {".dockerconfigjson": {"auth": R}}}],
        },
        "data": {"pw": R, "empty": None},  # null carries nothing and says "cleared"
        "stringData": R,
        "extra": [{"metadata": R, "type": R}],
        "cleared": None,
    }


def test_kept_fields_of_a_secret_holding_containers_are_redacted_inside() -> None:
    """``type`` and ``immutable`` are kept as scalars; a mapping or list
    there is not what Kubernetes writes, so its leaves go."""
    body = {"type": {"a": "b"}, "immutable": ["x"], "metadata": {"name": "s"}}
    assert redacted("secrets", body) == {"type": {"a": R}, "immutable": [R], "metadata": {"name": "s"}}


def test_a_secret_list_keeps_each_items_metadata() -> None:
    body = {
        "kind": "SecretList",
        "metadata": {"resourceVersion": "7"},
        "items": [
            {"metadata": {"name": "a"}, "data": {"k": "v"}},
            {"metadata": {"name": "b"}, "stringData": {"k": "v"}, "type": "kubernetes.io/tls"},
            "junk",
        ],
    }
    assert redacted("secrets", body) == {
        "kind": "SecretList",
        "metadata": {"resourceVersion": "7"},
        "items": [
            {"metadata": {"name": "a"}, "data": {"k": R}},
            {"metadata": {"name": "b"}, "stringData": {"k": R}, "type": "kubernetes.io/tls"},
            R,
        ],
    }


def test_a_secret_json_patch_keeps_op_path_and_from() -> None:
    body = [
        {"op": "add", "path": "/data/k", "value": "s"},
        {"op": "copy", "from": "/data/a", "path": "/data/b"},
        {"op": "replace", "path": "/data", "value": {"k": "s", "n": None}},
        {"op": ["odd"], "path": 5, "value": 1},
        "junk",
        ["deeper", {"x": "y"}],
    ]
    assert redacted("secrets", body) == [
        {"op": "add", "path": "/data/k", "value": R},
        {"op": "copy", "from": "/data/a", "path": "/data/b"},
        {"op": "replace", "path": "/data", "value": {"k": R, "n": None}},
        {"op": [R], "path": R, "value": R},
        R,
        [R, {"x": R}],
    ]


def test_a_secret_scalar_body_is_redacted() -> None:
    assert redacted("secrets", 5) == R
    assert redacted("secrets", True) == R


def test_a_secret_apply_patch_text_is_rewritten_as_json_keeping_keys() -> None:
    text = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\nstringData:\n  1: one\n  pw: two\n"
    assert orjson.loads(redacted("secrets", text)) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s"},
        "stringData": {"1": R, "pw": R},  # a YAML integer key survives as JSON text
    }
    assert redacted("secrets", '{"data":{"k":"v"}}') == '{"data":{"k":"<redacted>"}}'


def test_secret_text_that_cannot_be_written_back_is_redacted_whole() -> None:
    # A binary key parses (YAML) but cannot be written as JSON.
    assert redacted("secrets", "data:\n  ? !!binary aGVsbG8=\n  : v\n") == R
    assert redacted("secrets", "just words") == R


def test_text_of_exactly_the_size_limit_is_still_parsed() -> None:
    head, tail = '{"data":{"k":"', '"}}'
    text = head + "a" * (MAX_TEXT_BYTES - len(head) - len(tail)) + tail
    assert len(text) == MAX_TEXT_BYTES
    assert redacted("secrets", text) == '{"data":{"k":"<redacted>"}}'
    assert redacted("secrets", text[:-3] + 'a"}}') == R  # one byte more: not parsed


def test_a_body_nested_past_the_recursion_limit_is_redacted_whole() -> None:
    deep: dict[str, Any] = {"data": {"k": "v"}}
    for _ in range(5000):
        deep = {"items": [deep]}
    doc = audit_event(resource="secrets", request=deep, response={"data": {"k": "v"}})
    redact_audit_event(doc, build_policy())
    assert doc["requestObject"] == R
    assert doc["responseObject"] == {"data": {"k": R}}


# ---------------------------------------------------------------- ConfigMaps


def test_configmap_credential_values_go_and_the_rest_stays() -> None:
    body = {
        "kind": "ConfigMap",
        "metadata": {"name": "cfg"},
        "data": {"DB_PASSWORD": "x", "LOG_LEVEL": "debug", "api_key": None, "token": R},
        "binaryData": {"tls.key": "AAAA", "logo.png": "BBBB"},
    }
    assert redacted("configmaps", body) == {
        "kind": "ConfigMap",
        "metadata": {"name": "cfg"},
        "data": {"DB_PASSWORD": R, "LOG_LEVEL": "debug", "api_key": None, "token": R},
        "binaryData": {"tls.key": R, "logo.png": "BBBB"},
    }


def test_only_configmaps_get_the_configmap_rule_and_only_pods_the_env_rule() -> None:
    """A credential-looking key elsewhere is not a ConfigMap entry, and a
    container list outside a pod resource is not a pod's environment."""
    data = {"data": {"password": "x"}}
    env = {"spec": {"containers": [{"name": "c", "env": [{"name": "PASSWORD", "value": "x"}]}]}}
    policy = build_policy(extra_paths=[("widgets", "/spec/other")])
    for resource in ("deployments", "pods", "widgets", "services"):
        assert redacted(resource, data, policy) == data
    for resource in ("configmaps", "widgets", "services"):
        assert redacted(resource, env, policy) == env


def test_switches_off_keep_values_and_secrets_stay_redacted() -> None:
    off = build_policy(configmaps=False, pod_env=False, falco_output_fields=False)
    assert redacted("configmaps", {"data": {"password": "x"}}, off) == {"data": {"password": "x"}}
    pod = {"spec": {"containers": [{"env": [{"name": "PASSWORD", "value": "x"}]}]}}
    assert redacted("pods", pod, off) == pod
    assert redacted("secrets", {"data": {"k": "v"}}, off) == {"data": {"k": R}}
    assert off.falco is None
    alert = falco(off, output="token=abc", **{"proc.cmdline": "x --token abc"})
    assert alert["output"] == "token=abc"
    assert alert["output_fields"]["proc.cmdline"] == "x --token abc"


def test_an_extra_path_on_secrets_does_not_weaken_them() -> None:
    policy = build_policy(extra_paths=[("secrets", "/metadata/name")])
    assert redacted("secrets", {"metadata": {"name": "s"}, "data": {"k": "v"}}, policy) == {
        "metadata": {"name": "s"},
        "data": {"k": R},
    }


# --------------------------------------------------------------------- pods


def test_pod_env_credentials_go_but_value_from_and_odd_entries_stay() -> None:
    spec = {
        "containers": [
            {
                "name": "app",
                "image": "nginx",
                "env": [
                    "junk",
                    {"name": "DB_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "t"}}},
                    {"name": "EMPTY_PASSWORD", "value": None},
                    {"name": "done_secret", "value": R},
                    {"name": "PASSWORD", "value": "hunter2"},
                    {"name": "HOME", "value": "/root"},
                    {"value": "no name"},
                ],
            },
            "junk",
        ],
        "initContainers": "not a list",
        "ephemeralContainers": [{"name": "e", "env": 5}],
    }
    out = redacted("pods", {"kind": "Pod", "spec": spec})
    assert out["spec"]["containers"][0]["env"] == [
        "junk",
        {"name": "DB_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "t"}}},
        {"name": "EMPTY_PASSWORD", "value": None},
        {"name": "done_secret", "value": R},
        {"name": "PASSWORD", "value": R},
        {"name": "HOME", "value": "/root"},
        {"value": R},  # a patch of env/0/value: the name is unknown
    ]
    assert out["spec"]["containers"][1:] == ["junk"]
    assert out["spec"]["initContainers"] == "not a list"
    assert out["spec"]["ephemeralContainers"] == [{"name": "e", "env": 5}]


def test_a_pod_whose_containers_are_not_a_list_is_left_alone() -> None:
    for containers in (5, "x", True):
        body = {"spec": {"containers": containers}}
        assert redacted("pods", body) == body


def test_names_match_without_regard_to_case() -> None:
    pod = {"spec": {"containers": [{"env": [{"name": "Db_PassWord", "value": "x"}]}]}}
    assert redacted("pods", pod)["spec"]["containers"][0]["env"] == [{"name": "Db_PassWord", "value": R}]


# ------------------------------------------------------------- text bodies


def test_a_text_body_nothing_was_redacted_from_keeps_its_exact_bytes() -> None:
    texts = {
        "configmaps": '{"data":  {"LOG_LEVEL": "debug"},  "metadata": {"annotations": {"'
        + LAST_APPLIED
        + '": "{ }"}}}',
        "pods": '[ {"op": "add", "path": "", "value": 5}, {"op": "remove", "path": "/x"} ]',
        "widgets": '{"spec":  {"x": 1, "pw": null, "done": "<redacted>"}}',
    }
    policy = build_policy(extra_paths=[("widgets", "/spec/pw"), ("widgets", "/spec/done")])
    for resource, text in texts.items():
        assert redacted(resource, text, policy) == text


def test_a_text_body_is_rewritten_when_anything_inside_was_redacted() -> None:
    policy = build_policy(extra_paths=[("configmaps", "/spec/none"), ("widgets", "/spec/pw")])
    cases = {
        ("configmaps", '{"data": {"password": "x"}}'): {"data": {"password": R}},
        ("configmaps", '{"items": [{"data": {"password": "x"}}, {"data": {}}]}'): {
            "items": [{"data": {"password": R}}, {"data": {}}]
        },
        (
            "configmaps",
            json.dumps({"metadata": {"annotations": {LAST_APPLIED: json.dumps({"data": {"token": "x"}})}}}),
        ): {"metadata": {"annotations": {LAST_APPLIED: '{"data":{"token":"<redacted>"}}'}}},
        (
            "configmaps",
            json.dumps([{"op": "replace", "path": "", "value": json.dumps({"data": {"password": "x"}})}]),
        ): [{"op": "replace", "path": "", "value": '{"data":{"password":"<redacted>"}}'}],
        (
            "configmaps",
            json.dumps(
                [
                    {"op": "add", "path": "/data/password", "value": "x"},
                    {"op": "add", "path": "", "value": {"data": {"color": "red"}}},
                    {"op": "add", "path": "/data/color", "value": "red"},
                ]
            ),
        ): [
            {"op": "add", "path": "/data/password", "value": R},
            {"op": "add", "path": "", "value": {"data": {"color": "red"}}},
            {"op": "add", "path": "/data/color", "value": "red"},
        ],
        ("widgets", '{"spec": {"pw": "x"}}'): {"spec": {"pw": R}},
        ("configmaps", '{"data": {"password": "x"}, "n": 1e3}'): {"data": {"password": R}, "n": 1000.0},
    }
    for (resource, text), expected in cases.items():
        out = redacted(resource, text, policy)
        assert isinstance(out, str), (resource, text)
        assert orjson.loads(out) == expected, (resource, text)


def test_a_redacted_text_body_that_cannot_be_written_back_is_redacted_whole() -> None:
    assert redacted("configmaps", "data:\n  password: x\n  logo: !!binary aGVsbG8=\n") == R


def test_last_applied_is_redacted_like_the_object_it_copies() -> None:
    applied = json.dumps({"data": {"password": "x", "color": "red"}})
    body = {"data": {"color": "red"}, "metadata": {"annotations": {LAST_APPLIED: applied}}}
    out = redacted("configmaps", body)
    assert orjson.loads(out["metadata"]["annotations"][LAST_APPLIED]) == {
        "data": {"password": R, "color": "red"}
    }
    plain = {"metadata": {"annotations": {LAST_APPLIED: '{"data": {"color": "red"}}'}}}
    assert redacted("configmaps", plain) == plain


# ------------------------------------------------------------------ patches


def test_json_patch_values_are_redacted_as_if_at_their_path() -> None:
    body = [
        "junk",
        {"op": "remove", "path": "/data/password"},
        {"op": "add", "path": "/data/password", "value": "x"},
        {"op": "add", "path": "/data/color", "value": "red"},
        {"op": "replace", "path": "", "value": {"data": {"token": "x"}}},
        {"op": "add", "path": 5, "value": {"data": {"token": "x"}}},
        {"op": "add", "path": "/data", "value": {"api_key": "x", "n": 1}},
    ]
    assert redacted("configmaps", body) == [
        "junk",
        {"op": "remove", "path": "/data/password"},
        {"op": "add", "path": "/data/password", "value": R},
        {"op": "add", "path": "/data/color", "value": "red"},
        {"op": "replace", "path": "", "value": {"data": {"token": R}}},
        {"op": "add", "path": 5, "value": {"data": {"token": R}}},
        {"op": "add", "path": "/data", "value": {"api_key": R, "n": 1}},
    ]


def test_a_resource_redactor_with_both_rules_reports_either_change() -> None:
    """The change flag decides whether a text body is rewritten: each rule's
    change must survive the rules checked after it."""
    both = ResourceRedactor(CredentialNames("password"), configmap=True, pod_env=True, paths=(("x",),))
    text = '{"data": {"password": "a"}, "spec": {"containers": []}}'
    assert orjson.loads(both.body(text)) == {"data": {"password": R}, "spec": {"containers": []}}


# ------------------------------------------------------------- extra paths


def test_extra_paths_follow_rfc6901_escapes_and_wildcards() -> None:
    policy = build_policy(
        extra_paths=[
            ("widgets", "/metadata/annotations/example.com~1token"),
            ("widgets", "/metadata/annotations/a~0b"),
            ("widgets", "/spec/creds/*/pw"),
            ("widgets", "/spec/list/2"),
            ("widgets", "/spec/list/x"),
            ("widgets", "/spec/missing/pw"),
            ("widgets", "/spec/tokens/*"),
        ]
    )
    body = {
        "metadata": {"annotations": {"example.com/token": "t", "a~b": "u", "example.com~1token": "v"}},
        "spec": {
            "creds": [{"pw": None}, {"pw": "x"}, {"user": "u"}, {"pw": R}],
            "list": ["a", "b"],
            "tokens": [None, R, "t1", "t2"],
        },
    }
    assert redacted("widgets", body, policy) == {
        "metadata": {"annotations": {"example.com/token": R, "a~b": R, "example.com~1token": "v"}},
        "spec": {
            "creds": [{"pw": None}, {"pw": R}, {"user": "u"}, {"pw": R}],
            "list": ["a", "b"],
            "tokens": [None, R, R, R],
        },
    }
    short = build_policy(extra_paths=[("widgets", "/spec/list/1")])
    assert redacted("widgets", {"spec": {"list": ["a", "b"]}}, short) == {"spec": {"list": ["a", R]}}


@pytest.mark.parametrize("pointer", ["data/password", "/", "", "data"])
def test_a_pointer_that_is_not_one_is_refused_with_an_example(pointer: str) -> None:
    with pytest.raises(ValueError, match=r"expected a JSON pointer such as /data/password, got"):
        build_policy(extra_paths=[("widgets", pointer)])


def test_an_invalid_pattern_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"^invalid regular expression: "):
        check_pattern("(unclosed")
    check_pattern("pass(word)?")


# -------------------------------------------------------------------- Falco


def test_falco_fields_with_a_credential_argument_are_redacted_everywhere() -> None:
    alert = falco(
        output="env AWS_SECRET_ACCESS_KEY=wJalr and abc and abcd",
        **{
            "proc.env[AWS_SECRET_ACCESS_KEY]": "wJalr",
            "proc.env[API_KEY]": "abcd",
            "proc.env[TOKEN]": "abc",
            "proc.env[SESSION_ID]": None,
            "proc.env[PASSWORD]": R,
            "proc.env[DB_SECRET]": ["a", "b"],
            "proc.env[HOME]": "/root",
            "proc.args": ["--token", "x", 5, "--token abc"],
            "evt.num": 7,
        },
    )
    fields = alert["output_fields"]
    assert fields["proc.env[AWS_SECRET_ACCESS_KEY]"] == R
    assert fields["proc.env[API_KEY]"] == R
    assert fields["proc.env[TOKEN]"] == R
    assert fields["proc.env[SESSION_ID]"] is None
    assert fields["proc.env[PASSWORD]"] == R
    assert fields["proc.env[DB_SECRET]"] == [R, R]
    assert fields["proc.env[HOME]"] == "/root"
    assert fields["proc.args"] == ["--token", "x", 5, "--token <redacted>"]
    assert fields["evt.num"] == 7
    # A removed value of 4 characters or more is also cut from the output;
    # shorter ones would cut unrelated words.
    assert alert["output"] == "env AWS_SECRET_ACCESS_KEY=<redacted> and abc and <redacted>"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://user:hunter22@host/r", "https://user:<redacted>@host/r"),
        ("--token abc", "--token <redacted>"),
        ("--verbose yes --token abc", "--verbose yes --token <redacted>"),
        ("password=token=abc secret=hunter2", "password=<redacted> secret=<redacted>"),
        ("Authorization: Bearer abc.def", "Authorization: Bearer <redacted>"),
        ("PWD=/home LOG_LEVEL=debug", "PWD=/home LOG_LEVEL=debug"),
        ("nothing-to-see", "nothing-to-see"),
    ],
)
def test_falco_text_redaction(text: str, expected: str) -> None:
    alert = falco(output=f"x {text}", **{"proc.cmdline": text})
    assert alert["output_fields"]["proc.cmdline"] == expected
    assert alert["output"] == f"x {expected}"


def test_falco_names_are_matched_without_their_dashes() -> None:
    policy = build_policy(credential_key_pattern="^xpin$")
    alert = falco(policy, output="", **{"proc.cmdline": "app --Xpin 1234 -xpin 55 Xpin=9 --pin 1"})
    assert (
        alert["output_fields"]["proc.cmdline"]
        == "app --Xpin <redacted> -xpin <redacted> Xpin=<redacted> --pin 1"
    )


def test_falco_extra_paths_redact_and_cut_the_value_from_the_output() -> None:
    policy = build_policy(
        falco_output_fields=False, extra_paths=[("falco", "/output_fields/custom.field"), ("falco", "/rule")]
    )
    assert policy.falco is not None
    alert = falco(
        policy,
        output="custom=s3cr3t-v token=abc",
        **{"custom.field": "s3cr3t-v", "proc.cmdline": "--token abc"},
    )
    assert alert["output_fields"]["custom.field"] == R
    assert alert["output_fields"]["proc.cmdline"] == "--token abc"  # output_fields redaction is off
    assert alert["rule"] == R
    assert alert["output"] == "custom=<redacted> token=abc"


def test_falco_output_that_is_not_text_is_left_alone() -> None:
    for output in (None, 123, "", ["a"]):
        alert = falco(output=output, **{"proc.cmdline": "--token abc"})
        assert alert["output"] == output
        assert alert["output_fields"]["proc.cmdline"] == "--token <redacted>"


# ------------------------------------------------------ policy and config


def test_policy_from_config_follows_every_setting() -> None:
    config = RedactionConfig(
        credential_key_pattern="^pin$",
        configmaps=True,
        pod_env=False,
        falco_output_fields=True,
        extra_paths=(RedactPath("widgets", "/spec/pw"), RedactPath("falco", "/output_fields/x")),
    )
    policy = policy_from_config(config)
    assert redacted("configmaps", {"data": {"pin": "1", "password": "2"}}, policy) == {
        "data": {"pin": R, "password": "2"}
    }
    pod = {"spec": {"containers": [{"env": [{"name": "pin", "value": "1"}]}]}}
    assert redacted("pods", pod, policy) == pod
    assert redacted("widgets", {"spec": {"pw": "x"}}, policy) == {"spec": {"pw": R}}
    alert = falco(policy, output="", **{"x": "abc", "proc.cmdline": "pin=1 password=2"})
    assert alert["output_fields"]["x"] == R
    assert alert["output_fields"]["proc.cmdline"] == "pin=<redacted> password=2"
    off = policy_from_config(RedactionConfig(configmaps=False, pod_env=True, falco_output_fields=False))
    assert off.falco is None
    assert redacted("configmaps", {"data": {"password": "2"}}, off) == {"data": {"password": "2"}}
    assert redacted("pods", {"spec": {"containers": [{"env": [{"name": "TOKEN", "value": "1"}]}]}}, off) == {
        "spec": {"containers": [{"env": [{"name": "TOKEN", "value": R}]}]}
    }


def test_the_installed_policy_is_the_one_applied_by_default() -> None:
    previous = redact.active_policy()
    off = build_policy(configmaps=False)
    try:
        redact.install(off)
        assert redact.active_policy() is off
        doc = audit_event(resource="configmaps", request={"data": {"password": "x"}})
        redact_audit_event(doc)
        assert doc["requestObject"] == {"data": {"password": "x"}}
    finally:
        redact.install(previous)
    doc = audit_event(resource="configmaps", request={"data": {"password": "x"}})
    redact_audit_event(doc)
    assert doc["requestObject"] == {"data": {"password": R}}


def test_redactors_compare_and_hash_by_pattern() -> None:
    """Redactors are frozen dataclasses (hashable, compared by value): the
    memo of names a redactor has looked up is not part of its identity."""
    a, b = CredentialNames("pass"), CredentialNames("pass")
    assert a["password"] is True
    assert a == b and hash(a) == hash(b)
    assert a != CredentialNames("token")
    assert not a != b  # not dict's own ``__ne__``, which would compare the memo  # noqa: SIM202
    assert a != {"password": True}
    assert ResourceRedactor(a, configmap=True) == ResourceRedactor(b, configmap=True)
    assert len({ResourceRedactor(a), ResourceRedactor(b)}) == 1
