"""Checks on Gatekeeper files: EVD020 prefix semantics (template rego and
Constraint values), EVD021 container families, EVD022 enforcement, EVD023
excluded namespaces.

Gatekeeper's ``starts_with(image, "myregistry.io")`` is a string prefix:
``myregistry.io.evil.com/x`` and ``myregistry.io-cdn.net/x`` pass.  The
Gatekeeper library's ``K8sAllowedRepos`` compares the same way
(``startswith`` on the whole image), so its documentation asks for repos
ending in ``/``; that is the fact the Constraint check relies on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from eventd.engine.yamlsrc import Map, Scalar, Seq
from eventd.engine.yamlsrc import Node as YamlNode
from eventd.gatekeeper import ConstraintError, constraint_from, is_constraint
from eventd.lint.checks.imagevalues import looks_like_location
from eventd.lint.findings import Finding, finding

_STARTS_WITH = re.compile(r"\bstart(?:s_with|swith)\s*\(\s*([^,]+?)\s*,\s*([^)]+?)\s*\)")
#: A prefix built with the separator (``concat("", [r, "/"])``, ``sprintf("%s/", [r])``).
_SLASH_BUILT = re.compile(r'"[^"]*/"')
_STRING = re.compile(r'^"(.*)"$')


def _text(node: YamlNode | None) -> str | None:
    return node.text if isinstance(node, Scalar) and not node.null else None


def _targets(doc: Map) -> Iterator[Scalar]:
    spec = doc.get("spec")
    targets = spec.get("targets") if isinstance(spec, Map) else None
    for target in targets.items if isinstance(targets, Seq) else ():
        rego = target.get("rego") if isinstance(target, Map) else None
        if isinstance(rego, Scalar) and not rego.null:
            yield rego


def template(doc: Map, file: str) -> Iterator[Finding]:
    """A ConstraintTemplate: read its rego line by line."""
    metadata = doc.get("metadata")
    name = _text(metadata.get("name")) if isinstance(metadata, Map) else None
    label = f"ConstraintTemplate '{name or 'unnamed'}'"
    for rego in _targets(doc):
        first = rego.line + 1  # a block scalar's text starts on the next line
        lines = rego.text.splitlines()
        for offset, text in enumerate(lines):
            for match in _STARTS_WITH.finditer(text):
                prefix = match.group(2)
                if _SLASH_BUILT.search(text[match.start(2) :]):
                    continue  # the "/" is appended to the entry
                literal = _STRING.match(prefix)
                if literal and literal.group(1).endswith("/"):
                    continue
                if literal and not looks_like_location(literal.group(1)):
                    continue
                yield finding(
                    "EVD020",
                    file,
                    first + offset,
                    label,
                    f"`{match.group(0)}` is a plain string prefix: with the entry `myregistry.io`, "
                    "`myregistry.io.evil.com/x` and `myregistry.io-mirror.net/x` pass admission"
                    + (
                        " (and Rego's built-in is `startswith`: `starts_with` is undefined, so "
                        "Gatekeeper refuses the template as written)"
                        if "starts_with" in match.group(0)
                        else ""
                    ),
                    f'compare up to the `/`: `startswith({match.group(1)}, concat("", [{prefix}, "/"]))` '
                    "(and require entries without a trailing `/`), or parse the registry out of the image",
                )
        body = rego.text
        if "spec.containers" in body and "initContainers" not in body:
            yield finding(
                "EVD021",
                file,
                first + next((i for i, t in enumerate(lines) if "spec.containers" in t), 0),
                label,
                "the policy reads `spec.containers` only: images in `initContainers` and "
                "`ephemeralContainers` (kubectl debug) are never checked",
                "iterate over `spec.containers`, `spec.initContainers` and `spec.ephemeralContainers` "
                "(eventd's `ka.req.pod.images.*` fields cover all three)",
            )


def constraint(doc: Map, file: str) -> Iterator[Finding]:
    """An AllowedRegistries / K8sAllowedRepos Constraint."""
    try:
        c = constraint_from(doc, file)
    except ConstraintError as err:
        yield finding("EVD000", file, doc.line, "Constraint", str(err), "fix the Constraint")
        return
    label = f"Constraint '{c.label}'"
    for entry in c.entries:
        if entry.value.endswith("/") or not looks_like_location(entry.value):
            continue
        host = entry.value.split("/", 1)[0]
        yield finding(
            "EVD020",
            file,
            entry.line,
            label,
            f"'{entry.value}' is matched as a string prefix by the template: "
            f"`{host}.evil.com/x`"
            + (f" and `{entry.value}-evil/x`" if "/" in entry.value else "")
            + " pass admission",
            f"write `{entry.value}/` (eventd's rules from this Constraint already compare at `/`)",
        )
    if c.enforcement != "deny":
        yield finding(
            "EVD022",
            file,
            c.line,
            label,
            f"enforcementAction is {c.enforcement}: Gatekeeper admits what violates the Constraint",
            "set `enforcementAction: deny`, or load the Constraint into eventd "
            "(--gatekeeper-constraints) so admitted violations raise alerts",
        )
    if c.excluded_namespaces:
        yield finding(
            "EVD023",
            file,
            c.line,
            label,
            "excludedNamespaces " + ", ".join(c.excluded_namespaces) + " are not checked at admission",
            "load the Constraint into eventd (--gatekeeper-constraints): images there raise "
            "'Admission Bypass: Image In Namespace Excluded From Gatekeeper' alerts",
        )


def kubernetes_object(doc: YamlNode, file: str) -> Iterator[Finding]:
    """Dispatch a Kubernetes object document to the check for its kind."""
    if not isinstance(doc, Map):
        return
    if _text(doc.get("kind")) == "ConstraintTemplate":
        yield from template(doc, file)
    elif is_constraint(doc):
        yield from constraint(doc, file)
