"""Container image references, parsed and normalised the way the kubelet and runtimes do.

This is the only place in eventd that takes an image string apart.  A rule that trusts
``registry:5000/team/app`` must see the registry the runtime will contact, so we follow
``ParseNormalizedNamed`` of distribution/reference v0.6.0 (what the kubelet validates
with and what Docker/containerd pull with) instead of splitting on ``:`` or ``@``.  The
naive split is a whole bug class: it cuts ``registry:5000/app`` at the port, calls it
"tagged", and treats ``nginx`` and ``docker.io/library/nginx`` as different images.

Every regex is compiled with ``re.ASCII`` (Go's ``\\w`` is ASCII-only, so ``nginx:vé``
must fail) and applied with ``fullmatch`` (Go anchors with ``^...$``; Python's ``$``
would accept a trailing newline).  Results are cached: audit streams repeat a few
hundred images, so per-event parsing is a dictionary lookup.
"""

import re
from dataclasses import dataclass, field
from functools import lru_cache

DEFAULT_DOMAIN = "docker.io"
_LEGACY_DOMAIN = "index.docker.io"
_LIBRARY = "library/"
MAX_PATH_LENGTH = 255  # v0.6.0 counts the path only, not the domain
# Not an upstream limit: caps work for hostile input (no DNS name is this long).
MAX_REFERENCE_LENGTH = 4096
#: Parses kept, and the longest reference kept among them.  Together they bound
#: the cache in bytes: an entry holds its string a few times over (raw, name,
#: path, familiar, repository), so at most ~6 x 512 B each, ~12 MB in all, even
#: when a hostile log names a new 4 KB image on every line.  Real references
#: are far shorter and a cluster runs far fewer distinct ones.
CACHED_REFERENCES = 4096
CACHED_REFERENCE_LENGTH = 512

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REMOTE = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_TAG = r"\w[\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE_RE = re.compile(rf"((?:{_DOMAIN}/)?{_REMOTE})(?::({_TAG}))?(?:@({_DIGEST}))?", re.ASCII)
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}", re.ASCII)
# go-digest's own test for algorithms it does not implement: well-formed means "unsupported".
_GO_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+", re.ASCII)
_LOWER_HEX_RE = re.compile(r"[0-9a-f]+", re.ASCII)
_NUMERIC_LABEL_RE = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*", re.ASCII)
_DIGEST_SIZES = {"sha256": 64, "sha384": 96, "sha512": 128}

ERROR_MESSAGES = {
    "empty": "image reference is empty",
    "uppercase": "repository name must be lower case",
    "format": "invalid reference format",
    "too_long": f"repository path is longer than {MAX_PATH_LENGTH} characters",
    "digest_length": "digest has the wrong length for its algorithm",
    "digest_unsupported": "unsupported digest algorithm (eventd accepts sha256, sha384, sha512)",
    "identifier": "a 64-character hex string is an image ID, not a reference",
}


class ImageReferenceError(ValueError):
    """An image string (or allow-list entry) the runtime would refuse; ``kind`` is the error class."""

    def __init__(self, kind: str, raw: str, detail: str | None = None) -> None:
        self.kind = kind
        self.raw = raw
        super().__init__(f"invalid image reference {raw!r}: {detail or ERROR_MESSAGES[kind]}")


# A dataclass, not a msgspec Struct like the rule engine's records: ``eventd
# image`` needs nothing else of msgspec, whose import costs it ~10 ms, while
# dataclasses is imported anyway (by orjson).
@dataclass(frozen=True, slots=True)
class ImageRef:
    """One parsed image string.  Invalid references are kept (``valid=False``) as evidence.

    ``tag`` is only an explicit tag: the kubelet appends ``:latest`` textually, so an
    implicit latest is reported by ``implicit_latest`` rather than invented here.  When
    both tag and digest are present both are kept; the digest is what gets pulled.
    """

    raw: str
    valid: bool
    error: str | None
    domain: str | None
    path: str | None
    tag: str | None
    digest: str | None
    repository: str
    _name: str | None = field(init=False, repr=False, compare=False)
    _familiar: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Precomputed once per distinct image (parse is cached), read per event.
        domain, path = self.domain, self.path
        valid = domain is not None and path is not None
        object.__setattr__(self, "_name", f"{domain}/{path}" if valid else None)
        familiar = _familiarize(domain, path) if domain is not None and path is not None else None
        object.__setattr__(self, "_familiar", familiar)

    @property
    def registry(self) -> str | None:
        return self.domain

    @property
    def name(self) -> str | None:
        """``domain/path``: what allow-lists must match on."""
        return self._name

    @property
    def familiar(self) -> str | None:
        """Short display name (``nginx``, ``bitnami/redis``), guaranteed to re-parse to ``name``."""
        return self._familiar

    @property
    def normalized(self) -> str | None:
        """``name[:tag][@digest]``, the canonical string (Go's ``String()``)."""
        return None if self._name is None else self._name + self._suffix()

    @property
    def familiar_string(self) -> str | None:
        return None if self._familiar is None else self._familiar + self._suffix()

    @property
    def pinned(self) -> bool:
        return self.digest is not None

    @property
    def implicit_latest(self) -> bool:
        return self.valid and self.tag is None and self.digest is None

    @property
    def has_port(self) -> bool:
        d = self.domain
        return d is not None and ":" in d and not d.endswith("]")

    @property
    def host(self) -> str | None:
        """The registry without its port."""
        d = self.domain
        return d.rpartition(":")[0] if d is not None and self.has_port else d

    @property
    def is_ip(self) -> bool:
        """Bracketed IPv6, or a host whose last label is numeric.

        The second test is the WHATWG "ends in a number" rule: resolvers also accept
        ``127.1``, ``2130706433`` or ``0x7f.1`` as IPv4, so a dotted-quad check is too narrow.
        """
        host = self.host
        if host is None:
            return False
        return host.startswith("[") or _NUMERIC_LABEL_RE.fullmatch(host.rpartition(".")[2]) is not None

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def _names_domain(first: str) -> bool:
    """spec §3.3: is the text before the first ``/`` a registry rather than a path component?"""
    return first in ("localhost", _LEGACY_DOMAIN) or "." in first or ":" in first or first.lower() != first


def _split_docker_domain(ref: str) -> tuple[str, str]:
    first, slash, rest = ref.partition("/")
    if not slash:  # no "/" at all is always a Docker Hub library image, even "localhost:5000"
        return DEFAULT_DOMAIN, _LIBRARY + ref
    if not _names_domain(first):
        return DEFAULT_DOMAIN, ref  # "myregistry/app" is a Docker Hub namespace, not a registry
    domain = DEFAULT_DOMAIN if first == _LEGACY_DOMAIN else first
    if domain == DEFAULT_DOMAIN and "/" not in rest:
        rest = _LIBRARY + rest
    return domain, rest


def _familiarize(domain: str, path: str) -> str:
    """Drop ``docker.io/`` and a non-nested ``library/``.

    Deliberate deviation from upstream: if the shortened form would name a different
    registry on re-parse (``docker.io/a.b/c`` -> ``a.b/c``), keep ``docker.io/``, and keep
    ``library/`` before a 64-hex name (alone it is an image ID); familiar names get copied
    into allow-lists, so they must mean the same image.
    """
    if domain != DEFAULT_DOMAIN:
        return f"{domain}/{path}"
    short = path.removeprefix(_LIBRARY)
    if short != path and "/" not in short and not _IDENTIFIER_RE.fullmatch(short):
        return short
    return f"{domain}/{path}" if _names_domain(path.partition("/")[0]) else path


def _repository(raw: str) -> str:
    """The reference as written minus tag and digest (spec §5, correct manual split).

    Cut at the first ``@``; the tag separator is a ``:`` after the last ``/``, so a
    registry port survives.  Works on invalid input too.
    """
    name = raw.partition("@")[0]
    colon = name.rfind(":")
    return name[:colon] if colon > name.rfind("/") else name


def _digest_error(digest: str) -> str | None:
    """go-digest validation: exact lower-case hex for the registered algorithms."""
    algorithm, _, encoded = digest.partition(":")
    size = _DIGEST_SIZES.get(algorithm)
    if size is None:
        return "digest_unsupported" if _GO_DIGEST_RE.fullmatch(digest) else "format"
    if len(encoded) != size:
        return "digest_length"
    return None if _LOWER_HEX_RE.fullmatch(encoded) else "format"


def _invalid(raw: str, kind: str) -> ImageRef:
    return ImageRef(raw, False, kind, None, None, None, None, _repository(raw))


def _parse(raw: str) -> ImageRef:
    if not raw:
        return _invalid(raw, "empty")
    if _IDENTIFIER_RE.fullmatch(raw):
        return _invalid(raw, "identifier")
    domain, remainder = _split_docker_domain(raw)
    remote = remainder.partition(":")[0]
    if remote.lower() != remote:  # checked on the remote part only: domains and tags may be upper case
        return _invalid(raw, "uppercase")
    full = f"{domain}/{remainder}"
    match = _REFERENCE_RE.fullmatch(full)
    if match is None:
        return _invalid(raw, "uppercase" if _REFERENCE_RE.fullmatch(full.lower()) else "format")
    name, tag, digest = match.groups()
    # `name` starts with domain + "/" even when the domain is not grammatical but the whole
    # name is a valid path ("my_registry.io/app"): upstream accepts that with an empty
    # domain, and runtimes then contact the first component, which is what we report.
    path = name[len(domain) + 1 :]
    if len(path) > MAX_PATH_LENGTH:
        return _invalid(raw, "too_long")
    if digest is not None and (error := _digest_error(digest)) is not None:
        return _invalid(raw, error)
    return ImageRef(raw, True, None, domain, path, tag, digest, _repository(raw))


_parse_cached = lru_cache(maxsize=CACHED_REFERENCES)(_parse)


def parse(ref: str) -> ImageRef:
    """Parse with ``ParseNormalizedNamed`` semantics; never raises.  Cached per
    string, up to ``CACHED_REFERENCE_LENGTH`` characters."""
    if len(ref) > MAX_REFERENCE_LENGTH:
        return _invalid(ref, "too_long")
    if len(ref) > CACHED_REFERENCE_LENGTH:  # not cached: would pin long strings in memory
        return _parse(ref)
    return _parse_cached(ref)


def parse_strict(ref: str) -> ImageRef:
    """Like :func:`parse`, but raise :class:`ImageReferenceError` for an invalid reference."""
    result = parse(ref)
    if result.error is not None:
        raise ImageReferenceError(result.error, ref)
    return result


def normalize_prefix(entry: str) -> str:
    """Normalise an allow-list entry, which names a registry, a path prefix or an image.

    Trailing ``/`` are stripped, then:

    * no ``/``, and the entry is ``localhost`` or contains ``.`` or ``:`` -> a registry
      (``myregistry.io``, ``localhost:5000``; ``index.docker.io`` becomes ``docker.io``).
      Unlike image parsing, where ``example.com`` is a library image, an entry naming a
      registry is by far the likely intent.
    * first component names a registry (spec §3.3) -> that registry plus the path taken
      literally, because it may be a namespace: ``docker.io/library`` and
      ``index.docker.io/bitnami`` stay namespaces (write ``nginx`` or
      ``docker.io/library/nginx`` for the official image, not ``docker.io/nginx``).
    * otherwise an image name, normalised in full: ``nginx`` -> ``docker.io/library/nginx``,
      ``bitnami/redis`` -> ``docker.io/bitnami/redis``.

    Tags and digests are rejected: allow-lists match on ``name`` only.  Invalid entries
    raise :class:`ImageReferenceError`, so bad configuration fails at load time.
    """
    stripped = entry.rstrip("/")
    first, slash, rest = stripped.partition("/")
    registry_only = not slash and (first == "localhost" or "." in first or ":" in first)
    ref = parse(f"{stripped}/x" if registry_only else stripped)
    if ref.error is not None:
        raise ImageReferenceError(ref.error, entry)
    if ref.tag is not None or ref.digest is not None:
        raise ImageReferenceError("format", entry, "allow-list entries must not carry a tag or digest")
    if registry_only:
        return str(ref.domain)
    if slash and _names_domain(first):
        return f"{ref.domain}/{rest}"
    return str(ref.name)


def to_json(ref: ImageRef) -> dict:
    """Every field and derived property, for ``eventd image REF`` and debugging."""
    return {
        "raw": ref.raw,
        "valid": ref.valid,
        "error": ref.error,
        "error_message": None if ref.error is None else ERROR_MESSAGES[ref.error],
        "domain": ref.domain,
        "path": ref.path,
        "tag": ref.tag,
        "digest": ref.digest,
        "repository": ref.repository,
        "registry": ref.registry,
        "name": ref.name,
        "familiar": ref.familiar,
        "normalized": ref.normalized,
        "familiar_string": ref.familiar_string,
        "pinned": ref.pinned,
        "implicit_latest": ref.implicit_latest,
        "has_port": ref.has_port,
        "is_ip": ref.is_ip,
        "host": ref.host,
    }
