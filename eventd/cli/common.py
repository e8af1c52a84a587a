"""What several sub-commands share: loading rules, printing errors."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from eventd.engine.errors import RuleError
from eventd.engine.loader import load_rules
from eventd.engine.ruleset import RuleSet
from eventd.rulepacks import builtin_rule_files

EXIT_OK = 0
EXIT_INPUT = 1  # an input could not be read or is not audit data
EXIT_USAGE = 2  # bad arguments or a rules file that was refused


def error(message: str) -> None:
    print(f"eventd: {message}", file=sys.stderr)


def load_ruleset(paths: Sequence[str] | None) -> RuleSet:
    """The rules named on the command line, in order, or the built-in packs."""
    return load_rules(list(paths) if paths else builtin_rule_files())


def load_ruleset_or_report(paths: Sequence[str] | None) -> RuleSet | None:
    try:
        ruleset = load_ruleset(paths)
    except RuleError as err:
        error(f"rules refused: {err}")
        return None
    except OSError as err:
        error(f"cannot read rules: {err}")
        return None
    for warning in ruleset.warnings:
        error(f"warning: {warning}")
    return ruleset
