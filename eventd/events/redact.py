"""Strip credentials from events before anything else sees them.

eventd reads the most sensitive stream of a cluster: every Secret write goes
through the audit log, and Falco alerts quote command lines and environments.
Audit policies should log Secrets at ``Metadata`` level only, but a policy
mistake must not turn eventd into a leak: a rule output using ``%jevt.obj``,
a log line or a Kafka message would otherwise carry credentials.  So events
are redacted where they are decoded, once, and rules, alerts and sinks only
ever see the redacted document.

What is redacted:

* ``secrets`` (always, not configurable): every value of the request and the
  response, whatever their shape: objects and ``SecretList`` items (``data``,
  ``stringData`` and any field but ``apiVersion``, ``kind``, ``metadata``,
  ``type`` and ``immutable``), JSON patches (the ``value`` of every
  operation), merge patches, apply patches sent as YAML or JSON text (the
  whole body when it cannot be parsed), and ``last-applied-configuration``
  or ``.dockerconfigjson``/``.dockercfg`` wherever they appear.  Keys are
  kept, so rules can still see *which* entries changed.
* ``configmaps``: ``data``/``binaryData`` values whose key looks like a
  credential (``credential_key_pattern``).
* pods, pod templates and workloads: ``env[].value`` of variables whose name
  looks like a credential, in containers, init and ephemeral containers.
* Falco alerts: ``output_fields`` values that carry credentials (an
  ``Authorization`` header, ``NAME=value`` with a credential-looking name,
  URL passwords, ``proc.env[NAME]``), and the same text in ``output``.
* ``extra_paths``: any JSON pointer of a resource's objects or of Falco alerts.

Non-secret resources keep their exact bytes unless something was redacted,
and only the request/response bodies of the resources above are walked: the
fast path of every other event is two dict lookups.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import orjson
from msgspec import Struct, field

if TYPE_CHECKING:
    from eventd.config import RedactionConfig

REDACTED = "<redacted>"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
#: Keys whose value is a serialised copy of a Secret (or registry credentials).
_SECRET_COPIES = frozenset({LAST_APPLIED, ".dockerconfigjson", ".dockercfg"})
#: Fields of a Secret that hold no secret value; everything else is redacted.
_SECRET_KEPT = frozenset({"apiVersion", "kind", "metadata", "type", "immutable"})
#: Fields of a JSON patch operation that are not values.
_PATCH_KEPT = frozenset({"op", "path", "from"})

#: Names that look like credentials, searched case-insensitively in ConfigMap
#: keys, env variable names and Falco ``NAME=value`` text.  ``key`` alone
#: only as a word or at the end (``api_key``, ``tls.key``, ``STRIPE_KEY``),
#: ``auth`` but not ``author(ity)``; ``PWD`` (the working directory) is not one.
DEFAULT_CREDENTIAL_KEY_PATTERN = (
    r"passw(or)?d|passphrase|(^|[^a-z])pass($|[^a-z])|secret|token|credential|api[_.-]?key"
    r"|(^|[^a-z])key($|[^a-z])|key$|auth(?!or(?!iz))|bearer|cookie|session[_.-]?id|dockerc(fg|onfig)"
    r"|signature|conn(ection)?[_.-]?str|dsn$"
)

#: Resources whose objects embed a pod spec (pods and workload templates).
POD_RESOURCES = frozenset(
    {
        "pods",
        "podtemplates",
        "replicationcontrollers",
        "deployments",
        "replicasets",
        "statefulsets",
        "daemonsets",
        "jobs",
        "cronjobs",
    }
)
#: Keys leading from a workload (or a patch of one) to its containers.
_POD_WALK_KEYS = ("spec", "template", "jobTemplate")
_CONTAINER_KEYS = ("containers", "initContainers", "ephemeralContainers")
#: Text bodies longer than this are not parsed (a Secret's is then redacted whole).
MAX_TEXT_BYTES = 1 << 20
#: ``extra_paths`` resource name that addresses Falco alerts.
FALCO_RESOURCE = "falco"


# ------------------------------------------------------------------ helpers


def redact_leaves(value: Any) -> Any:
    """``value`` with every scalar but ``null`` replaced, keys and list lengths kept.

    Iterative, because a hostile body may nest deeper than Python recurses.
    """
    if not isinstance(value, dict | list):
        return value if value is None else REDACTED
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        for key, child in node.items() if isinstance(node, dict) else enumerate(node):
            if isinstance(child, dict | list):
                stack.append(child)
            elif child is not None:
                node[key] = REDACTED
    return value


def _children(node: Any) -> Iterator[Any]:
    """Values of a dict or items of a list (patch paths turn lists into dicts)."""
    if isinstance(node, dict):
        return iter(node.values())
    if isinstance(node, list):
        return iter(node)
    return iter(())


def parse_pointer(text: str) -> tuple[str, ...]:
    """RFC 6901 pointer -> segments; ``""`` is the whole document."""
    if not text:
        return ()
    if text.startswith("/"):
        text = text[1:]
    return tuple(s.replace("~1", "/").replace("~0", "~") for s in text.split("/"))


def check_pointer(text: str) -> None:
    """Config check of an ``extra_paths`` pointer; raises ``ValueError``."""
    if not text.startswith("/") or text == "/":
        raise ValueError(f"expected a JSON pointer such as /data/password, got {text!r}")


def check_pattern(text: str) -> None:
    """Config check of ``credential_key_pattern``; raises ``ValueError``."""
    try:
        re.compile(text, re.IGNORECASE)
    except re.error as err:
        raise ValueError(f"invalid regular expression: {err}") from None


@functools.cache
def _yaml_loader() -> tuple[Any, type[Exception]]:
    """``(load, YAMLError)``: YAML without anchors and aliases, built on first
    use (PyYAML's import costs every command ~12 ms; only an apply patch
    sent as YAML needs it).  Aliases are refused because a few of them can
    stand for billions of nodes, which a walk (or a re-serialisation) would
    then visit."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise yaml.YAMLError("aliases are not accepted")
            return super().compose_node(parent, index)

    return functools.partial(yaml.load, Loader=NoAliasLoader), yaml.YAMLError


def parse_text(text: str) -> Any:
    """A JSON or YAML text body -> its value; ``None`` when it is neither
    (or too large to try).  Apply patches arrive as either."""
    if len(text) > MAX_TEXT_BYTES:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    load, yaml_error = _yaml_loader()
    try:
        return load(text)  # a SafeLoader without aliases
    except (yaml_error, RecursionError, ValueError, TypeError):
        return None


def _dump(value: Any) -> str | None:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except (orjson.JSONEncodeError, TypeError):
        return None


class CredentialNames(dict[str, bool]):
    """Whether a name looks like a credential: ``names[name]``.

    Memoised, because the same few names (``HOME``, ``PATH``, ``LOG_LEVEL``)
    come back in every pod and a search of the pattern costs far more than
    the dict lookup a known name costs.  Bounded: past ``MAX_NAMES`` the
    memory is dropped at once; long names are not kept.
    """

    MAX_NAMES = 4096
    MAX_NAME_CHARS = 128

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.source = pattern
        self._search: Callable[[str], re.Match[str] | None] | None = None

    def __missing__(self, name: str) -> bool:
        search = self._search
        if search is None:  # compiled on first use: a scan that meets no name skips it
            search = self._search = re.compile(self.source, re.IGNORECASE).search
        found = search(name) is not None
        if len(name) <= self.MAX_NAME_CHARS:
            if len(self) >= self.MAX_NAMES:
                self.clear()
            self[name] = found
        return found

    def __eq__(self, other: object) -> bool:  # a policy, not a mapping: compare patterns
        return isinstance(other, CredentialNames) and other.source == self.source

    def __ne__(self, other: object) -> bool:  # dict's own __ne__ would compare the memo
        return not self == other

    def __hash__(self) -> int:  # type: ignore[override]  # dict is unhashable; a policy is
        return hash(self.source)


# ------------------------------------------------------------------ secrets


def _secret_body(body: Any) -> Any:
    """A Secret request or response body with every value redacted."""
    if isinstance(body, dict):
        _secret_object(body)
        return body
    if isinstance(body, list):  # a JSON patch
        for index, op in enumerate(body):
            if isinstance(op, dict):
                for key, value in op.items():
                    if key not in _PATCH_KEPT or not isinstance(value, str):
                        op[key] = redact_leaves(value)
            else:
                body[index] = redact_leaves(op)
        return body
    if isinstance(body, str):
        return _secret_text(body)
    return redact_leaves(body)


def _secret_text(text: str) -> str:
    """An apply patch as text: parsed, redacted and written back as JSON;
    the whole text is redacted when it is not a JSON or YAML object or list."""
    parsed = parse_text(text)
    if not isinstance(parsed, dict | list):
        return REDACTED
    dumped = _dump(_secret_body(parsed))
    return REDACTED if dumped is None else dumped


def _secret_object(obj: dict[str, Any]) -> None:
    for key, value in obj.items():
        if key in _SECRET_KEPT:
            if key == "metadata":
                _strip_secret_copies(value)
            elif isinstance(value, dict | list):
                obj[key] = redact_leaves(value)
        elif key == "items" and isinstance(value, list):  # SecretList
            for index, item in enumerate(value):
                value[index] = _secret_body(item)
        else:
            obj[key] = redact_leaves(value)


def _strip_secret_copies(node: Any) -> None:
    """Redact last-applied and docker config values anywhere under ``node``."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            for key, child in current.items():
                if key in _SECRET_COPIES and child is not None:
                    current[key] = redact_leaves(child)
                elif isinstance(child, dict | list):
                    stack.append(child)
        elif isinstance(current, list):
            stack.extend(c for c in current if isinstance(c, dict | list))


class SecretRedactor:
    """Redacts Secret bodies; keeps nothing but names and metadata."""

    def body(self, value: Any) -> Any:
        return _secret_body(value)


# ------------------------------------------------------------ other objects


class ResourceRedactor(Struct, frozen=True):
    """Redacts the credential-like parts of one resource's bodies.

    Every method returns whether it changed anything, so that a text body
    nothing was redacted from keeps its exact bytes.
    """

    credential: CredentialNames
    configmap: bool = False
    pod_env: bool = False
    paths: tuple[tuple[str, ...], ...] = ()

    def body(self, value: Any) -> Any:
        return self._body(value)[0]

    def _body(self, value: Any) -> tuple[Any, bool]:
        if isinstance(value, dict):
            return value, self._object(value)
        if isinstance(value, list):
            return value, self._patch(value)
        if isinstance(value, str):
            text = self._text(value)
            return text, text is not value
        return value, False

    def _object(self, obj: dict[str, Any]) -> bool:
        changed = self._one_object(obj)
        items = obj.get("items")
        if isinstance(items, list):  # a list response
            for item in items:
                if isinstance(item, dict):
                    changed |= self._one_object(item)
        return changed

    def _one_object(self, obj: dict[str, Any]) -> bool:
        changed = False
        if self.configmap:
            changed |= self._configmap(obj)
        if self.pod_env:
            changed |= self._pod_env(obj)
        for path in self.paths:
            changed |= redact_pointer(obj, path)
        return self._last_applied(obj) or changed

    def _last_applied(self, obj: dict[str, Any]) -> bool:
        """kubectl's annotation is a copy of the object as JSON text: redact
        the same parts inside it."""
        meta = obj.get("metadata")
        annotations = meta.get("annotations") if isinstance(meta, dict) else None
        text = annotations.get(LAST_APPLIED) if isinstance(annotations, dict) else None
        if not isinstance(text, str):
            return False
        new = self._text(text)
        annotations[LAST_APPLIED] = new  # type: ignore[index]  # a dict: ``text`` is a str only then
        return new is not text

    def _text(self, text: str) -> str:
        parsed = parse_text(text)
        if not isinstance(parsed, dict | list):
            return text
        value, changed = self._body(parsed)
        if not changed:
            return text
        dumped = _dump(value)
        return REDACTED if dumped is None else dumped

    def _patch(self, ops: list[Any]) -> bool:
        """A JSON patch: each operation's value is redacted as if it stood at
        its ``path`` in an object (``/data/password``, ``/spec/containers/0/env/-``)."""
        changed = False
        for op in ops:
            if not isinstance(op, dict) or "value" not in op:
                continue
            path = op.get("path")
            segments = parse_pointer(path) if isinstance(path, str) else ()
            if not segments:
                op["value"], op_changed = self._body(op["value"])
                changed |= op_changed
                continue
            root: dict[str, Any] = {}
            parent = root
            for segment in segments[:-1]:
                parent = parent.setdefault(segment, {})
            parent[segments[-1]] = op["value"]
            if self._object(root):
                op["value"] = parent[segments[-1]]
                changed = True
        return changed

    def _configmap(self, obj: dict[str, Any]) -> bool:
        changed = False
        credential = self.credential
        for key in ("data", "binaryData"):
            values = obj.get(key)
            if isinstance(values, dict):
                for name, value in values.items():
                    if value is not None and value != REDACTED and credential[str(name)]:
                        values[name] = REDACTED
                        changed = True
        return changed

    def _pod_env(self, obj: dict[str, Any]) -> bool:
        """Walks only the keys that lead to containers, not the whole object.

        Runs on every pod and workload write, so the usual shapes (lists of
        objects) are walked inline; anything else goes through ``_env``.
        """
        changed = False
        credential = self.credential
        stack = [obj]
        while stack:
            node = stack.pop()
            for key in _CONTAINER_KEYS:
                containers = node.get(key)
                if containers is None:
                    continue
                for container in containers if type(containers) is list else _children(containers):
                    if type(container) is not dict:
                        continue
                    env = container.get("env")
                    if env is None:
                        continue
                    if type(env) is not list:
                        changed |= self._env(env)
                        continue
                    for var in env:
                        if type(var) is not dict:
                            continue
                        name = var.get("name")
                        if type(name) is str and not credential[name]:
                            continue  # most variables: a name that is no credential
                        value = var.get("value")
                        if value is not None and value != REDACTED:
                            var["value"] = REDACTED
                            changed = True
            for key in _POD_WALK_KEYS:
                child = node.get(key)
                if type(child) is dict:
                    stack.append(child)
        return changed

    def _env(self, env: Any) -> bool:
        """``value`` of variables named like credentials; a value without a
        name (a patch of ``env/0/value``) is redacted, its name is unknown."""
        changed = False
        credential = self.credential
        for var in _children(env):
            if not isinstance(var, dict):
                continue
            value = var.get("value")
            if value is None or value == REDACTED:
                continue
            name = var.get("name")
            if not isinstance(name, str) or credential[name]:
                var["value"] = REDACTED
                changed = True
        return changed


def redact_pointer(doc: Any, segments: tuple[str, ...], removed: list[str] | None = None) -> bool:
    """Redact what ``segments`` designates in ``doc`` (``*`` matches any key or
    index); string values redacted are appended to ``removed``."""
    nodes = [doc]
    for segment in segments[:-1]:
        nodes = [child for node in nodes for child in _step(node, segment) if isinstance(child, dict | list)]
    changed = False
    last = segments[-1]
    for node in nodes:
        for key in _keys(node, last):
            value = node[key]
            if value is None or value == REDACTED:
                continue
            if removed is not None and isinstance(value, str):
                removed.append(value)
            node[key] = REDACTED
            changed = True
    return changed


def _keys(node: Any, segment: str) -> list[Any]:
    if isinstance(node, dict):
        if segment == "*":
            return list(node)
        return [segment] if segment in node else []
    if isinstance(node, list):
        if segment == "*":
            return list(range(len(node)))
        if segment.isdecimal() and int(segment) < len(node):
            return [int(segment)]
    return []


def _step(node: Any, segment: str) -> list[Any]:
    return [node[key] for key in _keys(node, segment)]


# ------------------------------------------------------------------- Falco


#: Where a credential sits in free text.  Values are captured by lookaheads,
#: not consumed, so a match that is not a credential does not hide one in
#: its value (``env=PASSWORD=x``).  Alternatives, in order of precedence:
#: ``Bearer <token>``; a URL's password; ``NAME=value``/``NAME: value`` (an
#: HTTP scheme word after the separator is kept); ``--flag value``.
_TEXT_PATTERN = (
    r"\bbearer[ \t]+(?=(?P<bearer>[^\s\"',;]+))"
    r"|\b[a-z][a-z0-9+.-]*://[^\s/:@]*:(?=(?P<url>[^\s/@]+)@)"
    r"|(?<![\w.-])(?P<name>-{0,2}[a-z_][\w.\[\]-]*)[\"']?(?:=|:[ \t]*)[\"']?"
    r"(?:(?i:bearer|basic|digest|token|negotiate)[ \t]+)?(?=(?P<value>[^\s\"',;&]+))"
    r"|(?<!\S)(?P<flag>--?[a-z][\w-]*)[ \t]+(?=(?P<flagvalue>[^\s\"'-][^\s\"']*))"
)


@functools.cache
def _text_finder() -> Callable[[str], Iterator[re.Match[str]]]:
    """``_TEXT_PATTERN``'s ``finditer``, compiled on first use: only Falco
    alerts need it, and the compile costs every other command ~1 ms."""
    return re.compile(_TEXT_PATTERN, re.IGNORECASE).finditer


#: An output field's argument: ``proc.env[AWS_SECRET_ACCESS_KEY]``.
_FIELD_ARG = re.compile(r"\[([^\]]*)\]$")


class FalcoRedactor(Struct, frozen=True):
    credential: CredentialNames
    output_fields: bool = True
    paths: tuple[tuple[str, ...], ...] = ()

    def alert(self, doc: dict[str, Any]) -> None:
        """Redact ``output_fields`` (a dict, checked by the caller) and ``output``."""
        removed: list[str] = []
        if self.output_fields:
            self._fields(doc["output_fields"], removed)
        for path in self.paths:
            redact_pointer(doc, path, removed)
        output = doc.get("output")
        if not isinstance(output, str) or not output:
            return
        if self.output_fields:
            output = self.text(output)
        for value in removed:  # a redacted field value also stands in the output text
            if len(value) >= 4:
                output = output.replace(value, REDACTED)
        doc["output"] = output

    def _fields(self, fields: dict[str, Any], removed: list[str]) -> None:
        for key, value in fields.items():
            arg = _FIELD_ARG.search(key)
            if arg is not None and self.credential[arg.group(1)]:
                if value is not None and value != REDACTED:
                    if isinstance(value, str):
                        removed.append(value)
                    fields[key] = redact_leaves(value)
            elif isinstance(value, str):
                fields[key] = self.text(value)
            elif isinstance(value, list):
                fields[key] = [self.text(v) if isinstance(v, str) else v for v in value]

    def text(self, text: str) -> str:
        """``text`` with the credentials it quotes replaced."""
        if "=" not in text and ":" not in text and " " not in text:
            return text  # nothing that separates a name from a value
        parts: list[str] = []
        done = 0
        credential = self.credential
        for match in _text_finder()(text):
            if match.start() < done:
                continue  # inside a value already redacted
            group = match.lastgroup
            assert group is not None  # every alternative of _TEXT_PATTERN is a named group
            if group in ("value", "flagvalue"):
                name = match.group("name" if group == "value" else "flag").lstrip("-")
                if not credential[name]:
                    continue
            start, end = match.span(group)
            parts.append(text[done:start])
            parts.append(REDACTED)
            done = end
        if not parts:
            return text
        parts.append(text[done:])
        return "".join(parts)


# ------------------------------------------------------------------ policy


class RedactionPolicy(Struct, frozen=True):
    """What to redact, by ``objectRef.resource``; built once from the config."""

    resources: dict[str, SecretRedactor | ResourceRedactor] = field(default_factory=dict)
    falco: FalcoRedactor | None = None


def build_policy(
    credential_key_pattern: str = DEFAULT_CREDENTIAL_KEY_PATTERN,
    *,
    configmaps: bool = True,
    pod_env: bool = True,
    falco_output_fields: bool = True,
    extra_paths: Iterable[tuple[str, str]] = (),
) -> RedactionPolicy:
    """A policy; ``extra_paths`` are ``(resource, pointer)`` pairs, where the
    resource ``falco`` addresses Falco alerts.  Secrets are always redacted."""
    credential = CredentialNames(credential_key_pattern)
    paths: dict[str, list[tuple[str, ...]]] = {}
    for resource, pointer in extra_paths:
        check_pointer(pointer)
        paths.setdefault(resource, []).append(parse_pointer(pointer))
    resources: dict[str, SecretRedactor | ResourceRedactor] = {}
    wanted = set(paths) - {FALCO_RESOURCE, "secrets"}
    if configmaps:
        wanted.add("configmaps")
    if pod_env:
        wanted |= POD_RESOURCES
    for resource in wanted:
        resources[resource] = ResourceRedactor(
            credential,
            configmap=configmaps and resource == "configmaps",
            pod_env=pod_env and resource in POD_RESOURCES,
            paths=tuple(paths.get(resource, ())),
        )
    resources["secrets"] = SecretRedactor()
    falco_paths = tuple(paths.get(FALCO_RESOURCE, ()))
    falco = FalcoRedactor(credential, falco_output_fields, falco_paths)
    return RedactionPolicy(resources, falco if falco_output_fields or falco_paths else None)


def policy_from_config(config: RedactionConfig) -> RedactionPolicy:
    return build_policy(
        config.credential_key_pattern,
        configmaps=config.configmaps,
        pod_env=config.pod_env,
        falco_output_fields=config.falco_output_fields,
        extra_paths=[(p.resource, p.pointer) for p in config.extra_paths],
    )


DEFAULT_POLICY = build_policy()
_active = DEFAULT_POLICY


def install(policy: RedactionPolicy) -> None:
    """Make ``policy`` the one every decoder of this process applies.

    A process-wide setting, because events are decoded in every source and
    in ``eventd scan``, and the daemon and scan read one config each.
    """
    global _active
    _active = policy


def active_policy() -> RedactionPolicy:
    return _active


def redact_audit_event(doc: dict[str, Any], policy: RedactionPolicy | None = None) -> None:
    """Redact an audit event in place; two dict lookups for uninteresting resources."""
    ref = doc.get("objectRef")
    if not isinstance(ref, dict):
        return
    resource = ref.get("resource")
    if not isinstance(resource, str):
        return
    redactor = (policy or _active).resources.get(resource)
    if redactor is None:
        return
    for key in ("requestObject", "responseObject"):
        body = doc.get(key)
        if body is None:
            continue
        try:
            doc[key] = redactor.body(body)
        except RecursionError:  # nested deeper than any real object: keep nothing
            doc[key] = REDACTED


def redact_falco_alert(doc: dict[str, Any], policy: RedactionPolicy | None = None) -> None:
    """Redact a validated Falco alert (``output_fields`` is a dict) in place."""
    falco = (policy or _active).falco
    if falco is not None:
        falco.alert(doc)


#: The name this module's single entry point had before other resources
#: were redacted too.
redact_secret_event = redact_audit_event
