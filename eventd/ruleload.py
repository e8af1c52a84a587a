"""Rule files plus the options that change what is loaded, in one call.

The CLI (``scan``, ``rules check``) and the daemon share it so that
``--infer-source``/``rules_infer_source`` and
``--gatekeeper-constraints``/``gatekeeper_constraints`` mean the same
everywhere: Gatekeeper's generated rules load before the rule files and its
allowed-registries list after them (``gatekeeper.constraint_sources``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from eventd.engine.errors import RuleError
from eventd.engine.loader import load_rules, load_rules_text, rule_files
from eventd.engine.loader_reader import read_text
from eventd.engine.ruleset import RuleSet


def load_with_options(
    paths: Sequence[str | Path],
    *,
    infer_source: bool = False,
    gatekeeper_constraints: Sequence[str | Path] = (),
    strict: bool = False,
) -> RuleSet:
    """Load ``paths`` in order; raise ``RuleError`` (a bad Constraint file
    too, naming file and line) or ``OSError``."""
    if not gatekeeper_constraints:
        return load_rules(paths, infer_source=infer_source, strict=strict)
    # Imported here: most loads have no Constraint files, and every
    # ``eventd scan`` start would pay for the module (issue 15).
    from eventd.gatekeeper import ConstraintError, constraint_sources

    try:
        before, after = constraint_sources(gatekeeper_constraints)
    except ConstraintError as err:
        raise RuleError(f"gatekeeper constraints: {err}") from None
    sources = [(str(f), read_text(f)) for f in rule_files(paths)]
    return load_rules_text(before + sources + after, infer_source=infer_source, strict=strict)
