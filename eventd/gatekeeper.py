"""Gatekeeper Constraints as eventd's trusted-registry policy.

Teams that enforce allowed registries at admission with OPA Gatekeeper
already wrote the list down: in a Constraint of the hardening guide's
``AllowedRegistries`` template (``spec.parameters.registries``) or of the
Gatekeeper library's ``K8sAllowedRepos`` (``spec.parameters.repos``).
eventd reads those files (``gatekeeper_constraints:`` in the config,
``--gatekeeper-constraints`` on the command line) and

* replaces ``eventd_allowed_registries``, the list the built-in packs use,
  with the union of their entries, and
* adds one rule per Constraint that judges every audited pod or workload
  write inside the Constraint's ``match`` (kinds, namespaces,
  excludedNamespaces) by that Constraint's entries, and one per Constraint
  with excluded namespaces for the writes there.  What such a rule catches
  got past admission: the enforcement is ``dryrun``/``warn``, the webhook
  failed open or was bypassed, the object predates the Constraint, or the
  namespace is excluded.  The rules say so in their names.

Entries are compared at ``/`` boundaries (``pmatch`` on the normalised
image name), which is what the authors meant: the templates' bare
``starts_with`` also admits ``myregistry.io.evil.com/x``, which the rules
report (and ``eventd rules lint`` flags in the files themselves).

The generated rules are plain Falco-language YAML loaded after the other
rule files, so ``eventd rules check`` shows them and they obey overrides.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from eventd.boundedfile import read_bounded
from eventd.engine.errors import RuleError
from eventd.engine.yamlsrc import Map, Scalar, Seq, load_documents
from eventd.engine.yamlsrc import Node as YamlNode
from eventd.images import ImageReferenceError, normalize_prefix

#: Constraint kinds eventd understands, and where their list lives.
PARAMETER_KEYS = {"AllowedRegistries": "registries", "K8sAllowedRepos": "repos"}
CONSTRAINT_GROUP = "constraints.gatekeeper.sh/"

#: Kubernetes kinds whose objects carry a pod spec, and their audit resource.
KIND_RESOURCES = {
    "Pod": "pods",
    "Deployment": "deployments",
    "DaemonSet": "daemonsets",
    "StatefulSet": "statefulsets",
    "ReplicaSet": "replicasets",
    "ReplicationController": "replicationcontrollers",
    "Job": "jobs",
    "CronJob": "cronjobs",
}
ENFORCEMENTS = ("deny", "dryrun", "warn")
#: Longest list a Constraint may bring (Gatekeeper itself has no limit; this
#: keeps a hostile file from building a huge rule).
MAX_ENTRIES = 10_000


class ConstraintError(ValueError):
    """A Constraint file eventd cannot use; the message names file and line."""


@dataclass(frozen=True, slots=True)
class Entry:
    value: str
    line: int


@dataclass(frozen=True, slots=True)
class Constraint:
    """One allowed-registries Constraint, as far as eventd needs it."""

    kind: str
    name: str
    file: str
    line: int
    entries: tuple[Entry, ...]
    kinds: tuple[str, ...]  # Kubernetes kinds; ("*",) for all
    namespaces: tuple[str, ...]  # empty: every namespace
    excluded_namespaces: tuple[str, ...]
    enforcement: str

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.name}"

    def resources(self) -> tuple[str, ...]:
        """The audit resources in scope: pods and workloads of the matched kinds."""
        if not self.kinds or "*" in self.kinds:
            return tuple(KIND_RESOURCES.values())
        return tuple(dict.fromkeys(KIND_RESOURCES[k] for k in self.kinds if k in KIND_RESOURCES))


def _text(node: YamlNode | None) -> str | None:
    return node.text if isinstance(node, Scalar) and not node.null else None


def _path(node: YamlNode | None, *keys: str) -> YamlNode | None:
    for key in keys:
        if not isinstance(node, Map):
            return None
        node = node.get(key)
    return node


def _strings(node: YamlNode | None, file: str, what: str) -> list[Scalar]:
    if node is None or (isinstance(node, Scalar) and node.null):
        return []
    if not isinstance(node, Seq):
        raise ConstraintError(f"{file}:{node.line}: {what}: expected a list of strings")
    out = []
    for item in node.items:
        if not isinstance(item, Scalar) or item.null:
            raise ConstraintError(f"{file}:{item.line}: {what}: expected a string")
        out.append(item)
    return out


def is_constraint(doc: YamlNode) -> bool:
    """A Constraint of a kind eventd reads."""
    return (
        isinstance(doc, Map)
        and (_text(doc.get("apiVersion")) or "").startswith(CONSTRAINT_GROUP)
        and _text(doc.get("kind")) in PARAMETER_KEYS
    )


def constraint_from(doc: Map, file: str) -> Constraint:
    """Read one Constraint document (``is_constraint(doc)`` must hold)."""
    kind = _text(doc.get("kind")) or ""
    name = _text(_path(doc, "metadata", "name")) or "unnamed"
    key = PARAMETER_KEYS[kind]
    values = _strings(_path(doc, "spec", "parameters", key), file, f"spec.parameters.{key}")
    if not values:
        raise ConstraintError(f"{file}:{doc.line}: {kind}/{name}: spec.parameters.{key} is empty or missing")
    if len(values) > MAX_ENTRIES:
        raise ConstraintError(f"{file}:{doc.line}: {kind}/{name}: more than {MAX_ENTRIES} entries")
    kinds: list[str] = []
    groups = _path(doc, "spec", "match", "kinds")
    for group in groups.items if isinstance(groups, Seq) else ():
        kinds += [s.text for s in _strings(_path(group, "kinds"), file, "spec.match.kinds[].kinds")]
    enforcement = _text(_path(doc, "spec", "enforcementAction")) or "deny"
    if enforcement not in ENFORCEMENTS:
        raise ConstraintError(
            f"{file}:{doc.line}: {kind}/{name}: spec.enforcementAction must be one of "
            + ", ".join(ENFORCEMENTS)
        )
    label = f"{kind}/{name}"
    namespaces = _namespaces(_path(doc, "spec", "match", "namespaces"), file, label, "namespaces")
    excluded = _namespaces(
        _path(doc, "spec", "match", "excludedNamespaces"), file, label, "excludedNamespaces"
    )
    for value in values:
        try:
            normalize_prefix(_entry(value.text.strip()))
        except ImageReferenceError as err:
            raise ConstraintError(
                f"{file}:{value.line}: {label}: spec.parameters.{key}: {value.text[:80]!r} is not a "
                f"registry, path or image name ({err})"
            ) from None
    return Constraint(
        kind=kind,
        name=name,
        file=file,
        line=doc.line,
        entries=tuple(Entry(s.text.strip(), s.line) for s in values),
        kinds=tuple(kinds),
        namespaces=namespaces,
        excluded_namespaces=excluded,
        enforcement=enforcement,
    )


#: A namespace name (a DNS-1123 label), optionally ending in Gatekeeper's ``*``.
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?|[a-z0-9][-a-z0-9]{0,62}\*|\*")


def _namespaces(node: YamlNode | None, file: str, label: str, what: str) -> tuple[str, ...]:
    out = []
    for s in _strings(node, file, f"spec.match.{what}"):
        if not _NAMESPACE.fullmatch(s.text):
            raise ConstraintError(
                f"{file}:{s.line}: {label}: spec.match.{what}: {s.text[:80]!r} is not a namespace"
            )
        out.append(s.text)
    return tuple(out)


def read_constraints(paths: Iterable[str | Path]) -> list[Constraint]:
    """Every allowed-registries Constraint in the files (other documents,
    such as the ConstraintTemplate, are skipped); a file with none, or a
    malformed one, raises ``ConstraintError`` naming file and line."""
    out: list[Constraint] = []
    for path in paths:
        file = str(path)
        try:
            text = read_bounded(Path(path)).decode("utf-8")
            docs = load_documents(text, file)
        except (OSError, UnicodeDecodeError) as err:
            raise ConstraintError(f"{file}: cannot read: {err}") from None
        except RuleError as err:
            raise ConstraintError(str(err)) from None
        found = [constraint_from(d, file) for d in docs if isinstance(d, Map) and is_constraint(d)]
        if not found:
            kinds = " or ".join(PARAMETER_KEYS)
            raise ConstraintError(f"{file}: no {kinds} Constraint ({CONSTRAINT_GROUP}...) in the file")
        out += found
    return out


# --------------------------------------------------------------------------- rules


def _q(value: str) -> str:
    """A YAML double-quoted scalar of ``value``, every character outside
    printable ASCII escaped (``\\x``/``\\u``/``\\U``): JSON's escapes would
    split a character beyond the BMP into a surrogate pair, which YAML refuses."""
    out = ['"']
    for char in value:
        code = ord(char)
        if 0x20 <= code < 0x7F and char not in '"\\':
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _entry(value: str) -> str:
    """A Constraint entry as a ``pmatch`` path over normalised image names.

    Trailing ``*`` and ``/`` are dropped.  An entry ending in ``/`` whose first
    component is not a registry (``openpolicyagent/``) is a Docker Hub
    namespace for Gatekeeper's string prefix, so it becomes
    ``docker.io/openpolicyagent`` (``normalize_prefix`` would read a lone
    ``openpolicyagent`` as the official image ``docker.io/library/...``).
    """
    trimmed = value.rstrip("*")
    stripped = trimmed.rstrip("/")
    first = stripped.split("/", 1)[0]
    names_registry = "." in first or ":" in first or first == "localhost"
    if trimmed.endswith("/") and stripped and not names_registry:
        return f"docker.io/{stripped}"
    return stripped or value


_SAFE = re.compile(r"[^A-Za-z0-9_]")


def _namespace_check(patterns: Sequence[str], list_name: str) -> str:
    """Gatekeeper namespace patterns allow one trailing ``*`` (a prefix)."""
    exact = [p for p in patterns if not p.endswith("*")]
    prefixes = [p[:-1] for p in patterns if p.endswith("*")]
    parts = [f"ka.target.namespace in ({list_name})"] if exact else []
    parts += [f"ka.target.namespace startswith {_q(p)}" for p in prefixes]
    assert parts, "called with at least one pattern"
    return "(" + " or ".join(parts) + ")"


def _list(name: str, items: Sequence[str]) -> str:
    return f"- list: {name}\n  items: [{', '.join(_q(i) for i in items)}]\n"


_COMMON = """\
- macro: eventd_gk_kevt
  condition: ka.stage = ResponseComplete and ka.response.code startswith 2
- macro: eventd_gk_image_write
  condition: >
    ka.verb in (create, update, patch)
    and (not ka.target.subresource exists or ka.target.subresource = ephemeralcontainers)
    and (ka.verb != patch or not ka.req.pod.images.valid intersects (false))
"""

_OUTPUT = (
    "(constraint={label} enforcement={enforcement} user=%ka.user.name verb=%ka.verb "
    "ns=%ka.target.namespace resource=%ka.target.resource name=%ka.target.name "
    "images=%ka.req.pod.images.name registries=%ka.req.pod.images.registry source_ips=%ka.source.ips)"
)


def _why(c: Constraint) -> str:
    if c.enforcement != "deny":
        return f"enforcement is {c.enforcement}, so Gatekeeper only reports"
    return "the admission webhook failed open or was bypassed, or the object predates the Constraint"


def constraint_rules(constraints: Sequence[Constraint]) -> tuple[str, str]:
    """The rules text for these Constraints, as (before, after): the
    admission-bypass rules load *before* the other files, so that with
    ``rule_matching: first`` an event is named as a bypass rather than as a
    plain untrusted image; the ``eventd_allowed_registries`` replacement
    loads *after* them, since the last definition of a list wins."""
    union = list(dict.fromkeys(_entry(e.value) for c in constraints for e in c.entries))
    header = (
        "# Generated by eventd from Gatekeeper Constraints: "
        + ", ".join(f"{c.label} ({c.file})" for c in constraints)
        + "\n"
    )
    out = [header, _COMMON]
    for i, c in enumerate(constraints):
        out += _constraint_rules(i, c)
    return "".join(out), header + _list("eventd_allowed_registries", union)


def _constraint_rules(i: int, c: Constraint) -> list[str]:
    out = []
    tag = f"eventd_gk{i}_{_SAFE.sub('_', c.name)[:40]}"
    out.append(_list(f"{tag}_entries", [_entry(e.value) for e in c.entries]))
    out.append(_list(f"{tag}_resources", c.resources()))
    scope = [f"ka.target.resource in ({tag}_resources)"]
    if c.namespaces:
        if any(not n.endswith("*") for n in c.namespaces):
            out.append(_list(f"{tag}_namespaces", [n for n in c.namespaces if not n.endswith("*")]))
        scope.append(_namespace_check(c.namespaces, f"{tag}_namespaces"))
    excluded = ""
    if c.excluded_namespaces:
        if any(not n.endswith("*") for n in c.excluded_namespaces):
            out.append(_list(f"{tag}_excluded", [n for n in c.excluded_namespaces if not n.endswith("*")]))
        excluded = _namespace_check(c.excluded_namespaces, f"{tag}_excluded")
        scope.append(f"not {excluded}")
    untrusted = f"ka.req.pod.images.name exists and not ka.req.pod.images.name pmatch ({tag}_entries)"
    out.append(
        _rule(
            f"Admission Bypass: Image Outside Gatekeeper {c.label}",
            f"An image outside the entries of Gatekeeper Constraint {c.label} ({c.file}) was admitted "
            f"in its scope: {_why(c)}.",
            " and ".join(["eventd_gk_kevt", "eventd_gk_image_write", *scope, f"({untrusted})"]),
            f"Admission bypass: image outside Gatekeeper {c.label} admitted ({_why(c)}) "
            + _OUTPUT.format(label=c.label, enforcement=c.enforcement),
            "Error" if c.enforcement == "deny" else "Warning",
        )
    )
    if excluded:
        inside = [f"ka.target.resource in ({tag}_resources)", excluded]
        out.append(
            _rule(
                f"Admission Bypass: Image In Namespace Excluded From Gatekeeper {c.label}",
                f"An image outside the entries of Gatekeeper Constraint {c.label} ({c.file}) runs in a "
                "namespace the Constraint excludes, so admission never checked it.",
                " and ".join(["eventd_gk_kevt", "eventd_gk_image_write", *inside, f"({untrusted})"]),
                f"Admission bypass: image outside Gatekeeper {c.label} in an excluded namespace "
                + _OUTPUT.format(label=c.label, enforcement=c.enforcement),
                "Warning",
            )
        )
    return out


def _rule(name: str, desc: str, condition: str, output: str, priority: str) -> str:
    return (
        f"- rule: {_q(name)}\n  desc: {_q(desc)}\n  condition: {_q(condition)}\n"
        f"  output: {_q(output)}\n  priority: {priority}\n  source: k8s_audit\n"
        "  tags: [k8s, image, supply_chain, gatekeeper, admission_bypass]\n"
    )


def constraint_sources(paths: Sequence[str | Path]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(display name, rules text)`` pairs to load before and after the
    other rule files (see ``constraint_rules``); empty when no paths."""
    if not paths:
        return [], []
    before, after = constraint_rules(read_constraints(paths))
    name = "gatekeeper:" + ",".join(map(str, paths))
    return [(name + " (rules)", before)], [(name + " (allowed registries)", after)]
