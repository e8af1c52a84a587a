"""Image reference parsing: conformance table, repository split, allow-list entries, properties.

The expected values follow distribution/reference v0.6.0 ``ParseNormalizedNamed`` plus
go-digest validation, as described in /work/shared/spec/image-references.md (§3 worked
examples, §4 limits).  Cases are written for eventd, not copied from upstream tests.
"""

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from eventd import images
from eventd.engine.fields import image_fields
from eventd.images import (
    ImageRef,
    ImageReferenceError,
    normalize_prefix,
    parse,
    parse_strict,
    to_json,
)

H64 = "0123456789abcdef" * 4
H96 = "0123456789abcdef" * 6
H128 = "0123456789abcdef" * 8
D256 = f"sha256:{H64}"
HUB = "docker.io"

# (raw, domain, path, tag, digest, familiar) for valid references.
VALID = [
    # spec §3 worked examples
    ("nginx", HUB, "library/nginx", None, None, "nginx"),
    ("library/nginx:1.25", HUB, "library/nginx", "1.25", None, "nginx"),
    ("index.docker.io/bitnami/redis", HUB, "bitnami/redis", None, None, "bitnami/redis"),
    ("myregistry/app", HUB, "myregistry/app", None, None, "myregistry/app"),
    ("localhost/app", "localhost", "app", None, None, "localhost/app"),
    ("registry:5000/team/app:1.2", "registry:5000", "team/app", "1.2", None, "registry:5000/team/app"),
    ("[::1]:5000/app", "[::1]:5000", "app", None, None, "[::1]:5000/app"),
    (f"ghcr.io/org/app:v1@{D256}", "ghcr.io", "org/app", "v1", D256, "ghcr.io/org/app"),
    ("localhost:5000", HUB, "library/localhost", "5000", None, "localhost"),
    # no "/" at all: always a Docker Hub library image
    ("example.com", HUB, "library/example.com", None, None, "example.com"),
    ("192.168.0.1:80", HUB, "library/192.168.0.1", "80", None, "192.168.0.1"),
    ("registry.io:5000", HUB, "library/registry.io", "5000", None, "registry.io"),
    ("localhost", HUB, "library/localhost", None, None, "localhost"),
    ("nginx:1.25", HUB, "library/nginx", "1.25", None, "nginx"),
    ("mysql:latest", HUB, "library/mysql", "latest", None, "mysql"),
    # domain detection
    ("docker.io/ubuntu", HUB, "library/ubuntu", None, None, "ubuntu"),
    ("docker.io/library/ubuntu", HUB, "library/ubuntu", None, None, "ubuntu"),
    ("index.docker.io/nginx", HUB, "library/nginx", None, None, "nginx"),
    ("docker.io/library/foo/bar", HUB, "library/foo/bar", None, None, "library/foo/bar"),
    ("docker.io/a.b/c", HUB, "a.b/c", None, None, "docker.io/a.b/c"),  # familiar kept unambiguous
    ("docker.io/localhost/c", HUB, "localhost/c", None, None, "docker.io/localhost/c"),
    ("Foo/bar", "Foo", "bar", None, None, "Foo/bar"),
    ("Registry.Example.COM/app", "Registry.Example.COM", "app", None, None, "Registry.Example.COM/app"),
    ("a/b/c/d", HUB, "a/b/c/d", None, None, "a/b/c/d"),
    ("gcr.io/my-project/app", "gcr.io", "my-project/app", None, None, "gcr.io/my-project/app"),
    ("localhost:5000/app", "localhost:5000", "app", None, None, "localhost:5000/app"),
    ("registry:5000/app", "registry:5000", "app", None, None, "registry:5000/app"),
    ("192.168.0.1:80/app", "192.168.0.1:80", "app", None, None, "192.168.0.1:80/app"),
    ("10.0.0.1/app:1", "10.0.0.1", "app", "1", None, "10.0.0.1/app"),
    ("[::1]/app", "[::1]", "app", None, None, "[::1]/app"),
    (
        "[2001:db8::1]:443/team/app:v2",
        "[2001:db8::1]:443",
        "team/app",
        "v2",
        None,
        "[2001:db8::1]:443/team/app",
    ),
    ("xn--bcher-kva.example/app", "xn--bcher-kva.example", "app", None, None, "xn--bcher-kva.example/app"),
    # the whole name is a valid path: upstream accepts with an empty domain; we report the host
    ("my_registry.io/app", "my_registry.io", "app", None, None, "my_registry.io/app"),
    # separators
    ("a__b", HUB, "library/a__b", None, None, "a__b"),
    ("a--b", HUB, "library/a--b", None, None, "a--b"),
    ("a---b", HUB, "library/a---b", None, None, "a---b"),
    ("a.b", HUB, "library/a.b", None, None, "a.b"),
    ("a_b.c-d", HUB, "library/a_b.c-d", None, None, "a_b.c-d"),
    # tags
    ("app:" + "t" * 128, HUB, "library/app", "t" * 128, None, "app"),
    ("app:_x", HUB, "library/app", "_x", None, "app"),
    ("app:V1.0-RC_1", HUB, "library/app", "V1.0-RC_1", None, "app"),
    (f"{'b' * 63}", HUB, f"library/{'b' * 63}", None, None, "b" * 63),
    (f"{H64}:1", HUB, f"library/{H64}", "1", None, f"library/{H64}"),  # bare hex would be an ID
    # digests
    (f"nginx@{D256}", HUB, "library/nginx", None, D256, "nginx"),
    (f"nginx@sha384:{H96}", HUB, "library/nginx", None, f"sha384:{H96}", "nginx"),
    (f"nginx@sha512:{H128}", HUB, "library/nginx", None, f"sha512:{H128}", "nginx"),
    (f"nginx:latest@{D256}", HUB, "library/nginx", "latest", D256, "nginx"),
    (f"registry:5000/app:1@{D256}", "registry:5000", "app", "1", D256, "registry:5000/app"),
    # path length counts the path only (v0.6.0)
    ("example.com/" + "a" * 255, "example.com", "a" * 255, None, None, "example.com/" + "a" * 255),
    ("a" * 247, HUB, "library/" + "a" * 247, None, None, "a" * 247),
    ("x" * 60 + ".example.com/" + "a" * 255, "x" * 60 + ".example.com", "a" * 255, None, None, None),
]

# (raw, error kind)
INVALID = [
    ("", "empty"),
    ("NGINX", "uppercase"),
    ("foo/Bar", "uppercase"),
    ("registry:5000/Team/app", "uppercase"),
    ("Foo_bar/x", "uppercase"),  # domain not grammatical, would match once lower-cased
    (f"nginx@SHA256:{H64}", "uppercase"),  # upstream checks everything before the first ":"
    (H64, "identifier"),
    ("example.com/" + "a" * 256, "too_long"),
    ("a" * 248, "too_long"),
    (f"nginx@sha256:{H64[:-1]}", "digest_length"),
    (f"nginx@sha256:{H64}0", "digest_length"),
    (f"nginx@sha384:{H64}", "digest_length"),
    (f"nginx@sha512:{H96}", "digest_length"),
    (f"nginx@sha256:{H64.upper()}", "format"),
    (f"nginx@sha512:{H128.upper()}", "format"),
    (f"nginx:1@SHA256:{H64}", "format"),  # go-digest wants lower-case algorithm names
    ("nginx@md5:" + "a" * 32, "digest_unsupported"),
    ("nginx@sha1:" + "a" * 40, "digest_unsupported"),
    (f"nginx@sha256+b64:{H64}", "digest_unsupported"),
    ("nginx@sha256:abc", "format"),  # fewer than 32 hex
    ("nginx@sha256:" + "g" * 64, "format"),
    ("app:" + "t" * 129, "format"),
    ("app:.x", "format"),
    ("app:-x", "format"),
    ("nginx:vé", "format"),
    ("nginx\n", "format"),
    ("nginx ", "format"),
    (" nginx", "format"),
    ("a___b", "format"),
    ("a..b", "format"),
    ("a_", "format"),
    ("a-", "format"),
    ("-a", "format"),
    ("a/", "format"),
    ("/a", "format"),
    ("a//b", "format"),
    ("nginx:", "format"),
    ("nginx@", "format"),
    (":tag", "format"),
    (f"@{D256}", "format"),
    ("::1/app", "format"),
    ("[fe80::1%eth0]:5000/app", "format"),
    ("[::ffff:192.168.0.1]/app", "format"),
    ("registry:port/app", "format"),
    ("-registry.io/app", "format"),
    ("a:b:c", "format"),
    ("ngïnx", "format"),
    ("a.b_c.d:5000/app", "format"),
    ("a" * 5000, "too_long"),
]


@pytest.mark.parametrize(("raw", "domain", "path", "tag", "digest", "familiar"), VALID)
def test_valid_references(raw, domain, path, tag, digest, familiar):
    ref = parse(raw)
    assert ref.valid, ref.error
    assert ref.error is None
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    assert ref.name == f"{domain}/{path}"
    if familiar is not None:
        assert ref.familiar == familiar
    assert parse(ref.familiar).name == ref.name
    assert ref.pinned is (digest is not None)
    assert ref.implicit_latest is (tag is None and digest is None)
    assert parse_strict(raw) is ref


def test_table_sizes():
    assert len(VALID) + len(INVALID) >= 60


@pytest.mark.parametrize(("raw", "kind"), INVALID)
def test_invalid_references(raw, kind):
    ref = parse(raw)
    assert not ref.valid
    assert ref.error == kind
    assert (ref.domain, ref.path, ref.tag, ref.digest, ref.name, ref.familiar) == (None,) * 6
    assert not ref.implicit_latest
    with pytest.raises(ImageReferenceError) as info:
        parse_strict(raw)
    assert info.value.kind == kind
    assert repr(raw) in str(info.value)


@pytest.mark.parametrize(
    ("raw", "registry", "host", "has_port", "is_ip"),
    [
        ("nginx", HUB, HUB, False, False),
        ("localhost:5000", HUB, HUB, False, False),
        ("localhost:5000/app", "localhost:5000", "localhost", True, False),
        ("registry:5000/app", "registry:5000", "registry", True, False),
        ("192.168.0.1:80/app", "192.168.0.1:80", "192.168.0.1", True, True),
        ("10.0.0.1/app", "10.0.0.1", "10.0.0.1", False, True),
        ("127.1/app", "127.1", "127.1", False, True),  # resolvers read this as 127.0.0.1
        ("2130706433:5000/app", "2130706433:5000", "2130706433", True, True),
        ("1.0x7f/app", "1.0x7f", "1.0x7f", False, True),
        ("[::1]/app", "[::1]", "[::1]", False, True),
        ("[::1]:5000/app", "[::1]:5000", "[::1]", True, True),
        ("registry-1.example.com/app", "registry-1.example.com", "registry-1.example.com", False, False),
        ("NGINX", None, None, False, False),
    ],
)
def test_registry_properties(raw, registry, host, has_port, is_ip):
    ref = parse(raw)
    assert (ref.registry, ref.host, ref.has_port, ref.is_ip) == (registry, host, has_port, is_ip)


@pytest.mark.parametrize(
    ("raw", "repository"),
    [
        ("nginx", "nginx"),
        ("mysql:latest", "mysql"),
        ("registry:5000/team/app:1.2", "registry:5000/team/app"),  # upstream k8saudit gives "registry"
        ("registry:5000/app", "registry:5000/app"),  # a port is not a tag
        ("localhost:5000/app", "localhost:5000/app"),
        ("localhost:5000", "localhost"),  # no "/": this one *is* a tag
        ("[::1]:5000/app:1", "[::1]:5000/app"),
        (f"nginx@{D256}", "nginx"),
        (f"ghcr.io/org/app:v1@{D256}", "ghcr.io/org/app"),
        (f"registry:5000/app@{D256}", "registry:5000/app"),
        ("index.docker.io/bitnami/redis", "index.docker.io/bitnami/redis"),  # as written
        # invalid references still get a best-effort repository
        ("", ""),
        ("NGINX:1", "NGINX"),
        ("registry:5000/App:x", "registry:5000/App"),
        ("app:" + "t" * 129, "app"),
        ("a:b:c", "a:b"),
        ("a@b:c@d", "a"),
        (f"nginx@sha256:{H64.upper()}", "nginx"),
    ],
)
def test_repository(raw, repository):
    assert parse(raw).repository == repository


def test_tag_and_digest_render_in_normalized_and_familiar_strings():
    ref = parse(f"index.docker.io/library/busybox:1.36@{D256}")
    assert ref.normalized == f"docker.io/library/busybox:1.36@{D256}"
    assert ref.familiar_string == f"busybox:1.36@{D256}"
    assert parse("nginx").normalized == "docker.io/library/nginx"  # no invented "latest"
    assert parse("NGINX").normalized is None


def test_to_json_has_every_field_and_property():
    out = to_json(parse("registry:5000/team/app:1.2"))
    assert out == {
        "raw": "registry:5000/team/app:1.2",
        "valid": True,
        "error": None,
        "error_message": None,
        "domain": "registry:5000",
        "path": "team/app",
        "tag": "1.2",
        "digest": None,
        "repository": "registry:5000/team/app",
        "registry": "registry:5000",
        "name": "registry:5000/team/app",
        "familiar": "registry:5000/team/app",
        "normalized": "registry:5000/team/app:1.2",
        "familiar_string": "registry:5000/team/app:1.2",
        "pinned": False,
        "implicit_latest": False,
        "has_port": True,
        "is_ip": False,
        "host": "registry",
    }
    bad = to_json(parse("NGINX"))
    assert (bad["valid"], bad["error"], bad["name"]) == (False, "uppercase", None)
    assert "lower case" in bad["error_message"]


def test_parse_is_cached_and_refs_are_immutable():
    assert parse("nginx:1.25") is parse("nginx:1.25")
    with pytest.raises(AttributeError):
        parse("nginx").tag = "x"  # type: ignore[misc]
    assert parse("nginx") == ImageRef("nginx", True, None, HUB, "library/nginx", None, None, "nginx")


def test_parse_caches_are_bounded_in_bytes():
    """A hostile log naming a new long image on every line must not grow
    the parse caches (references and attribute rows) past their byte bound."""
    long_path = "/".join(["team"] * 200)  # > CACHED_REFERENCE_LENGTH, <= MAX_REFERENCE_LENGTH
    assert images.CACHED_REFERENCE_LENGTH < len(long_path) <= images.MAX_REFERENCE_LENGTH
    before = images._parse_cached.cache_info().currsize
    rows_before = image_fields._cached_row.cache_info().currsize
    for n in range(50):
        ref = f"registry.example/{long_path}/app{n}:v1"
        assert parse(ref).valid is False  # path longer than 255: still parsed, not cached
        assert image_fields.image_row(ref)[image_fields.row_position("raw")] == ref
    assert images._parse_cached.cache_info().currsize == before
    assert image_fields._cached_row.cache_info().currsize == rows_before
    for cache in (images._parse_cached, image_fields._cached_row):
        assert cache.cache_info().maxsize == images.CACHED_REFERENCES
    short = "registry.example/team/app:v1"
    assert parse(short) is parse(short)
    assert image_fields.image_row(short) is image_fields.image_row(short)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("myregistry.io", "myregistry.io"),
        ("myregistry.io/", "myregistry.io"),
        ("gcr.io/my-project", "gcr.io/my-project"),
        ("gcr.io/my-project/", "gcr.io/my-project"),
        ("docker.io", HUB),
        ("index.docker.io", HUB),
        ("docker.io/library", "docker.io/library"),
        ("docker.io/library/", "docker.io/library"),
        ("index.docker.io/bitnami", "docker.io/bitnami"),
        ("docker.io/library/nginx", "docker.io/library/nginx"),
        ("nginx", "docker.io/library/nginx"),
        ("bitnami/redis", "docker.io/bitnami/redis"),
        ("localhost", "localhost"),
        ("localhost:5000", "localhost:5000"),
        ("localhost/team", "localhost/team"),
        ("registry:5000/team", "registry:5000/team"),
        ("[::1]:5000", "[::1]:5000"),
        ("10.0.0.1:5000/a/b", "10.0.0.1:5000/a/b"),
        ("Registry.Example.com", "Registry.Example.com"),
    ],
)
def test_normalize_prefix(entry, expected):
    assert normalize_prefix(entry) == expected


@pytest.mark.parametrize(
    ("entry", "kind"),
    [
        ("", "empty"),
        ("/", "empty"),
        ("NGINX", "uppercase"),
        ("gcr.io/Project", "uppercase"),
        ("nginx:1.25", "format"),  # a tag: allow-lists match on names only
        ("gcr.io/proj/app:1", "format"),
        (f"nginx@{D256}", "format"),
        ("/app", "format"),
        ("bad..host", "format"),
        (H64, "identifier"),
    ],
)
def test_normalize_prefix_rejects(entry, kind):
    with pytest.raises(ImageReferenceError) as info:
        normalize_prefix(entry)
    assert info.value.kind == kind


# ---------------------------------------------------------------------------
# Property tests.  The strategies are built from the grammar in spec §1, independently
# of the module's regexes, and the expected normalisation is computed from spec §3.

_label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_upper_label = st.from_regex(r"[A-Z][a-zA-Z0-9]{0,6}", fullmatch=True)
_port = st.integers(0, 65535).map(str)
_dotted = st.lists(_label, min_size=2, max_size=4).map(".".join)
_ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
_ipv6 = st.from_regex(r"\[[0-9a-f]{1,4}(?::[0-9a-f]{0,4}){1,7}\]", fullmatch=True)
_host = st.one_of(_dotted, _ipv4, _ipv6, st.just("localhost"), _upper_label, _label)
_domain = st.one_of(
    st.tuples(_host, st.none() | _port).map(lambda t: t[0] if t[1] is None else f"{t[0]}:{t[1]}"),
    st.sampled_from(["docker.io", "index.docker.io"]),
)
_component = st.from_regex(r"[a-z0-9]{1,5}(?:(?:[._]|__|-{1,3})[a-z0-9]{1,5}){0,3}", fullmatch=True)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True)
_digest = st.sampled_from([("sha256", 64), ("sha384", 96), ("sha512", 128)]).flatmap(
    lambda a: st.text("0123456789abcdef", min_size=a[1], max_size=a[1]).map(lambda h: f"{a[0]}:{h}")
)


def _names_registry(first: str) -> bool:
    return first == "localhost" or "." in first or ":" in first or first != first.lower()


@given(
    domain=st.none() | _domain,
    components=st.lists(_component, min_size=1, max_size=4),
    tag=st.none() | _tag,
    digest=st.none() | _digest,
)
def test_generated_valid_references_round_trip(domain, components, tag, digest):
    raw = "/".join(components if domain is None else [domain, *components])
    # spec §3.2/§3.3: the first component is a registry only if followed by "/" and it looks like one
    first, _, rest = raw.partition("/")
    domain, path = (first, rest) if rest and _names_registry(first) else ("docker.io", raw)
    if domain == "index.docker.io":
        domain = "docker.io"
    if domain == "docker.io" and "/" not in path:
        path = f"library/{path}"
    assume(len(path) <= 255 and not re.fullmatch(r"[a-f0-9]{64}", raw))
    raw += (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")

    ref = parse(raw)
    assert ref.valid, (raw, ref.error)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    expected = f"{domain}/{path}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    assert ref.normalized == expected
    rebuilt = ref.name + (f":{ref.tag}" if ref.tag else "") + (f"@{ref.digest}" if ref.digest else "")
    assert rebuilt == expected
    again = parse(ref.familiar_string)
    assert (again.name, again.tag, again.digest) == (ref.name, tag, digest)
    assert parse(ref.familiar).name == ref.name
    assert parse(ref.normalized).normalized == expected
    assert ref.repository + raw[len(ref.repository) :] == raw


_ref_chars = st.text("abAB09._-:/@[]\n é", max_size=40)


@given(st.one_of(st.text(max_size=60), _ref_chars))
def test_arbitrary_text_never_raises_and_results_are_consistent(raw):
    ref = parse(raw)
    assert raw.startswith(ref.repository)
    if not ref.valid:
        assert ref.error in {
            "empty",
            "uppercase",
            "format",
            "too_long",
            "digest_length",
            "digest_unsupported",
            "identifier",
        }
        assert (ref.domain, ref.path, ref.tag, ref.digest, ref.name) == (None,) * 5
        return
    assert ref.error is None
    assert ref.name == f"{ref.domain}/{ref.path}"
    assert ref.path == ref.path.lower()
    assert len(ref.path) <= 255
    assert re.fullmatch(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", ref.path.split("/")[-1], re.ASCII)
    assert ref.tag is None or re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", ref.tag, re.ASCII)
    assert ref.digest is None or re.fullmatch(
        r"sha(256:[0-9a-f]{64}|384:[0-9a-f]{96}|512:[0-9a-f]{128})", ref.digest
    )
    assert ref.implicit_latest is (ref.tag is None and ref.digest is None)
    assert raw.isascii() and "\n" not in raw
    again = parse(ref.normalized)
    assert (again.name, again.tag, again.digest) == (ref.name, ref.tag, ref.digest)
    assert parse(ref.familiar).name == ref.name
