"""Field names from hardening guides that are not fields, accepted as aliases.

Guides print rules with names that exist neither in Falco nor in the
k8saudit plugin (``ka.target.image``, ``image.repository``).  Falco refuses
such a rule; eventd reads it through the alias below *and* says so: the
loader warns once per use (``source_inference.alias_notices``) and
``eventd rules lint`` reports ``EVD003`` with the real field to write.  Only
names that ``eventd rules lint`` suggests are here, so that an alias never
hides a typo.
"""

from __future__ import annotations

from eventd.events.model import FALCO, K8S_AUDIT

#: source -> {alias: real field}.
ALIASES: dict[str, dict[str, str]] = {
    # Every container family's image as written, in Pods and workload
    # templates: what "the target's image" can only mean.
    K8S_AUDIT: {"ka.target.image": "ka.req.pod.images.raw"},
    # The repository Falco reports for the container an alert came from.
    FALCO: {"image.repository": "container.image.repository"},
}


def alias_target(source: str, name: str) -> str | None:
    """The real field ``name`` stands for in ``source``, or ``None``."""
    return ALIASES.get(source, {}).get(name)


def all_aliases() -> dict[str, tuple[str, str]]:
    """alias -> (source, real field), over every source."""
    return {alias: (source, real) for source, table in ALIASES.items() for alias, real in table.items()}
