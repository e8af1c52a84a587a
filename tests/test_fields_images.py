"""Image-aware fields: parsed parts per container, request/response twins, Falco twins."""

from __future__ import annotations

import pytest

from eventd import images
from eventd.engine.ast import FieldRef
from eventd.engine.fields import default_registry
from eventd.events.model import FALCO, K8S_AUDIT, Event

DIGEST = "sha256:" + "0123456789abcdef" * 4
ATTRS = (
    "registry",
    "name",
    "path",
    "familiar",
    "tag",
    "digest",
    "pinned",
    "valid",
    "implicit_latest",
    "has_port",
    "is_ip",
)
T, F = "true", "false"

# image -> expected values of ATTRS (None: absent tag/digest)
CASES = {
    "nginx": ("docker.io", "docker.io/library/nginx", "library/nginx", "nginx", None, None, F, T, T, F, F),
    "reg:5000/team/app:1.2": (
        "reg:5000",
        "reg:5000/team/app",
        "team/app",
        "reg:5000/team/app",
        "1.2",
        None,
        F,
        T,
        F,
        T,
        F,
    ),
    "[::1]:5000/app": ("[::1]:5000", "[::1]:5000/app", "app", "[::1]:5000/app", None, None, F, T, T, T, T),
    f"app@{DIGEST}": (
        "docker.io",
        "docker.io/library/app",
        "library/app",
        "app",
        None,
        DIGEST,
        T,
        T,
        F,
        F,
        F,
    ),
    f"ghcr.io/org/app:v1@{DIGEST}": (
        "ghcr.io",
        "ghcr.io/org/app",
        "org/app",
        "ghcr.io/org/app",
        "v1",
        DIGEST,
        T,
        T,
        F,
        F,
        F,
    ),
    "myregistry/app": (
        "docker.io",
        "docker.io/myregistry/app",
        "myregistry/app",
        "myregistry/app",
        None,
        None,
        F,
        T,
        T,
        F,
        F,
    ),
    "10.0.0.1:5000/team/app:2.0": (
        "10.0.0.1:5000",
        "10.0.0.1:5000/team/app",
        "team/app",
        "10.0.0.1:5000/team/app",
        "2.0",
        None,
        F,
        T,
        F,
        T,
        T,
    ),
    "index.docker.io/bitnami/redis": (
        "docker.io",
        "docker.io/bitnami/redis",
        "bitnami/redis",
        "bitnami/redis",
        None,
        None,
        F,
        T,
        T,
        F,
        F,
    ),
    "NGINX": ("", "", "", "", None, None, F, F, F, F, F),
    "": ("", "", "", "", None, None, F, F, F, F, F),
}


def audit(request_spec: dict | None = None, response_spec: dict | None = None, **extra) -> dict:
    doc = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "auditID": "0b9a1c2d-0000-4000-8000-00000000abcd",
        "stage": "ResponseComplete",
        "verb": "create",
        "objectRef": {"resource": "pods", "namespace": "team", "name": "web"},
        "stageTimestamp": "2024-05-01T10:00:00.123456Z",
    }
    if request_spec is not None:
        doc["requestObject"] = {"kind": "Pod", "spec": request_spec}
    if response_spec is not None:
        doc["responseObject"] = {"kind": "Pod", "spec": response_spec}
    doc.update(extra)
    return doc


def get(name: str, doc: dict, arg: str | None = None, source: str = K8S_AUDIT):
    return default_registry().bind(source, FieldRef(name, arg)).get(Event(source, doc))


@pytest.mark.parametrize("image", list(CASES))
def test_parsed_parts_of_tricky_references(image):
    expected = CASES[image]
    doc = audit({"containers": [{"name": "c", "image": image}]})
    for attr, want in zip(ATTRS, expected, strict=True):
        listed = get(f"ka.req.pod.containers.image.{attr}", doc)
        assert listed == ("" if want is None else want,), attr
        assert get(f"ka.req.pod.containers.image.{attr}", doc, "0") == (None if want is None else (want,)), (
            attr
        )


def test_one_entry_per_container_aligned_with_image():
    spec = {
        "containers": [
            {"name": "a", "image": "nginx:1.27"},
            {"name": "b", "image": f"redis@{DIGEST}"},
            {"name": "c"},
        ]
    }
    doc = audit(spec)
    assert get("ka.req.pod.containers.image", doc) is None  # upstream all-or-nothing
    assert get("ka.req.pod.containers.image.valid", doc) == ("true", "true", "false")
    assert get("ka.req.pod.containers.image.tag", doc) == ("1.27", "", "")
    assert get("ka.req.pod.containers.image.tag", doc, "0") == ("1.27",)
    assert get("ka.req.pod.containers.image.tag", doc, "1") is None
    assert get("ka.req.pod.containers.image.digest", doc) == ("", DIGEST, "")
    assert get("ka.req.pod.containers.image.digest", doc, "1") == (DIGEST,)
    assert get("ka.req.pod.containers.image.name", doc, "2") == ("",)
    assert get("ka.req.pod.containers.image.name", doc, "3") is None
    assert get("ka.req.pod.containers.image.pinned", doc) == ("false", "true", "false")


def test_images_cover_every_container_kind_in_order():
    spec = {
        "ephemeralContainers": [{"name": "dbg", "image": "busybox"}],
        "containers": [{"name": "app", "image": "nginx"}],
        "initContainers": [{"name": "init", "image": "reg:5000/init:1"}],
    }
    doc = audit(spec)
    assert get("ka.req.pod.images.name", doc) == (
        "docker.io/library/nginx",
        "reg:5000/init",
        "docker.io/library/busybox",
    )
    assert get("ka.req.pod.images.has_port", doc) == ("false", "true", "false")
    assert get("ka.req.pod.images.tag", doc, "1") == ("1",)
    assert get("ka.req.pod.initContainers.image.registry", doc) == ("reg:5000",)
    assert get("ka.req.pod.ephemeralContainers.image.familiar", doc) == ("busybox",)
    only_init = audit({"initContainers": [{"image": "alpine"}]})
    assert get("ka.req.pod.images.familiar", only_init) == ("alpine",)
    assert get("ka.req.pod.containers.image.familiar", only_init) is None
    assert get("ka.req.pod.images.name", audit({})) is None
    assert get("ka.req.pod.images.name", audit({"containers": []})) is None


def test_unpinned_pull_policy_pairs_each_policy_with_its_own_image():
    spec = {
        "containers": [
            {"name": "pinned", "image": f"nginx@{DIGEST}", "imagePullPolicy": "IfNotPresent"},
            {"name": "tagged", "image": "nginx:1.27", "imagePullPolicy": "Always"},
            {"name": "default", "image": "redis"},
            {"name": "broken", "image": "NGINX", "imagePullPolicy": "Never"},
        ],
        "initContainers": [{"name": "init", "image": f"alpine@{DIGEST}", "imagePullPolicy": "Never"}],
    }
    doc = audit(spec, {"containers": [{"image": f"nginx@{DIGEST}", "imagePullPolicy": "Never"}]})
    # The pinned container is left out; an unset policy is "" (invalid images count as unpinned).
    assert get("ka.req.pod.containers.unpinned_pull_policy", doc) == ("Always", "", "Never")
    assert get("ka.req.pod.containers.unpinned_pull_policy", doc, "0") is None
    assert get("ka.req.pod.containers.unpinned_pull_policy", doc, "1") == ("Always",)
    assert get("ka.req.pod.containers.unpinned_pull_policy", doc, "2") == ("",)
    assert get("ka.req.pod.containers.unpinned_pull_policy", doc, "9") is None
    assert get("ka.req.pod.initContainers.unpinned_pull_policy", doc) is None  # every one pinned
    assert get("ka.req.pod.ephemeralContainers.unpinned_pull_policy", doc) is None
    assert get("ka.resp.pod.containers.unpinned_pull_policy", doc) is None
    one = audit({"containers": [{"image": "a"}]})
    assert get("ka.req.pod.containers.unpinned_pull_policy", one, "0") == ("",)


def test_response_twins_read_the_admitted_object():
    request = {"containers": [{"name": "app", "image": "nginx:1.27"}]}
    response = {"containers": [{"name": "app", "image": f"docker.io/library/nginx:1.27@{DIGEST}"}]}
    doc = audit(request, response)
    assert get("ka.req.pod.containers.image.pinned", doc) == ("false",)
    assert get("ka.resp.pod.containers.image.pinned", doc) == ("true",)
    assert get("ka.resp.pod.images.digest", doc) == (DIGEST,)
    assert get("ka.resp.pod.containers.image", doc) == (f"docker.io/library/nginx:1.27@{DIGEST}",)
    assert get("ka.resp.pod.containers.image.repository", doc) == ("docker.io/library/nginx",)
    assert get("ka.resp.pod.containers.image.repository", doc, "0") == ("docker.io/library/nginx",)
    assert get("ka.resp.pod.initContainers.image", doc) is None
    assert get("ka.resp.pod.images.name", audit(request)) is None


def test_response_twins_see_workload_templates():
    template = {"spec": {"containers": [{"image": "ghcr.io/org/job:2"}]}}
    cronjob = {"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": template}}}}
    doc = audit(objectRef={"resource": "cronjobs"}, requestObject=cronjob, responseObject=cronjob)
    assert get("ka.req.pod.images.registry", doc) == ("ghcr.io",)
    assert get("ka.resp.pod.containers.image.tag", doc) == ("2",)


def test_image_fields_need_audit_id():
    doc = audit({"containers": [{"image": "nginx"}]})
    assert get("ka.req.pod.images.valid", doc) == ("true",)
    del doc["auditID"]
    assert get("ka.req.pod.images.valid", doc) is None
    assert get("ka.req.pod.containers.image.name", doc) is None


def test_non_string_image_is_rendered_then_parsed():
    doc = audit({"containers": [{"image": 5}, {"image": None}]})
    assert get("ka.req.pod.containers.image.name", doc) == ("docker.io/library/5", "")
    assert get("ka.req.pod.containers.image.valid", doc) == ("true", "false")


def test_name_fields_normalise_the_right_hand_side():
    registry = default_registry()
    for source in (K8S_AUDIT, FALCO):
        defs = registry.fieldset(source).defs
        image_names = [n for n in defs if n.endswith("image.name") or n.endswith("images.name")]
        assert image_names
        for name, d in defs.items():
            if name in image_names:
                assert d.rhs_normalizer is images.normalize_prefix, name
            else:
                assert d.rhs_normalizer is None, name
    assert images.normalize_prefix("nginx") == "docker.io/library/nginx"


# --------------------------------------------------------------- Falco twins


def alert(**output_fields) -> dict:
    return {
        "time": "2024-05-01T10:00:00.123456789Z",
        "rule": "Terminal shell in container",
        "priority": "Notice",
        "source": "syscall",
        "hostname": "node-1",
        "output": "...",
        "output_fields": output_fields,
    }


def test_falco_twins_from_full_image():
    doc = alert(**{"container.image": f"reg:5000/app:1@{DIGEST}", "container.image.repository": "ignored"})
    assert get("container.image.registry", doc, source=FALCO) == "reg:5000"
    assert get("container.image.name", doc, source=FALCO) == "reg:5000/app"
    assert get("container.image.path", doc, source=FALCO) == "app"
    assert get("container.image.familiar", doc, source=FALCO) == "reg:5000/app"
    assert get("container.image.tag", doc, source=FALCO) == "1"
    assert get("container.image.digest", doc, source=FALCO) == DIGEST
    assert get("container.image.pinned", doc, source=FALCO) == "true"
    assert get("container.image.valid", doc, source=FALCO) == "true"
    assert get("container.image.implicit_latest", doc, source=FALCO) == "false"


def test_falco_twins_rebuilt_from_repository_tag_digest():
    doc = alert(**{"container.image.repository": "docker.io/library/alpine", "container.image.tag": "3.20"})
    assert get("container.image.familiar", doc, source=FALCO) == "alpine"
    assert get("container.image.tag", doc, source=FALCO) == "3.20"
    assert get("container.image.digest", doc, source=FALCO) is None
    assert get("container.image.pinned", doc, source=FALCO) == "false"
    pinned = alert(**{"container.image.repository": "alpine", "container.image.digest": DIGEST})
    assert get("container.image.digest", pinned, source=FALCO) == DIGEST
    assert get("container.image.implicit_latest", pinned, source=FALCO) == "false"
    bare = alert(**{"container.image.repository": "alpine", "container.image.tag": None})
    assert get("container.image.implicit_latest", bare, source=FALCO) == "true"


def test_falco_twins_missing_or_invalid():
    assert get("container.image.name", alert(**{"proc.name": "sh"}), source=FALCO) is None
    assert get("container.image.name", alert(**{"container.image.repository": None}), source=FALCO) is None
    assert get("container.image.valid", {"rule": "x"}, source=FALCO) is None
    bad = alert(**{"container.image": "Not/Valid"})
    assert get("container.image.valid", bad, source=FALCO) == "false"
    assert get("container.image.name", bad, source=FALCO) == ""
    assert get("container.image.tag", bad, source=FALCO) is None
