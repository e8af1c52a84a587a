"""The field registry: every field family, by rule source.

A family module exports ``FieldDef`` lists; ``_FAMILIES`` says which list
serves which source, so adding a family is one import and one line.
"""

from __future__ import annotations

from functools import cache

from eventd.engine.fields import falco_alert, image_fields, jsonfields, k8saudit, pullsecrets
from eventd.engine.fields.aliases import ALIASES
from eventd.engine.fields.base import FieldDef, FieldSet, Registry
from eventd.events.model import FALCO, K8S_AUDIT

_FAMILIES: tuple[tuple[str, list[FieldDef]], ...] = (
    (K8S_AUDIT, k8saudit.FIELDS),
    (K8S_AUDIT, image_fields.FIELDS),
    (K8S_AUDIT, jsonfields.FIELDS),
    (K8S_AUDIT, pullsecrets.FIELDS),
    (FALCO, falco_alert.FIELDS),
    (FALCO, image_fields.FALCO_FIELDS),
    (FALCO, jsonfields.FALCO_FIELDS),
)

#: Resolvers for fields that exist by naming convention, by source.
_DYNAMIC = {FALCO: falco_alert.dynamic}


@cache
def default_registry() -> Registry:
    """All built-in fields; built once, shared (field sets are read-only)."""
    by_source: dict[str, list[FieldDef]] = {}
    for source, defs in _FAMILIES:
        by_source.setdefault(source, []).extend(defs)
    return Registry(
        FieldSet(source, defs, _DYNAMIC.get(source), ALIASES.get(source))
        for source, defs in by_source.items()
    )
