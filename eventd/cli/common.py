"""What several sub-commands share: loading rules, printing errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from eventd.engine import yamlcache
from eventd.engine.errors import RuleError
from eventd.engine.loader import load_rules
from eventd.engine.ruleset import RuleSet
from eventd.ruleload import load_with_options
from eventd.rulepacks import builtin_rule_files

EXIT_OK = 0
EXIT_INPUT = 1  # an input could not be read or is not audit data
EXIT_USAGE = 2  # bad arguments or a rules file that was refused


def error(message: str) -> None:
    print(f"eventd: {message}", file=sys.stderr)


def load_ruleset(
    paths: Sequence[str] | None,
    *,
    infer_source: bool = False,
    gatekeeper: Sequence[str] = (),
    strict: bool = False,
) -> RuleSet:
    """The rules named on the command line, in order, or the built-in packs.

    ``strict`` (``--falco-strict``) refuses eventd's extensions as Falco would.
    """
    files = list(paths) if paths else builtin_rule_files()
    with yamlcache.enabled():  # parsed rules files kept between runs: see yamlcache
        if infer_source or gatekeeper:
            return load_with_options(
                files, infer_source=infer_source, gatekeeper_constraints=gatekeeper, strict=strict
            )
        return load_rules(files, strict=strict)


def add_falco_strict(parser: argparse.ArgumentParser) -> None:
    """``--falco-strict`` (issue 12): refuse what Falco refuses, eventd's extensions included."""
    parser.add_argument(
        "--falco-strict",
        action="store_true",
        help="refuse eventd's extensions to the rule language (pmatch and string operators on "
        "list fields) exactly as Falco would",
    )


def add_rule_options(parser: argparse.ArgumentParser) -> None:
    """``--infer-source`` and ``--gatekeeper-constraints`` (issue 13)."""
    parser.add_argument(
        "--infer-source",
        action="store_true",
        help="give a rule without `source:` the one source all its fields belong to (Falco: syscall)",
    )
    parser.add_argument(
        "--gatekeeper-constraints",
        action="append",
        default=[],
        metavar="FILE",
        help="Gatekeeper AllowedRegistries/K8sAllowedRepos Constraint file: the trusted registries "
        "and admission-bypass rules (repeatable)",
    )


def load_ruleset_or_report(
    paths: Sequence[str] | None,
    *,
    infer_source: bool = False,
    gatekeeper: Sequence[str] = (),
    strict: bool = False,
    each_extension: bool = False,
) -> RuleSet | None:
    """Load, or print why not.  Warnings go to stderr, one a line; uses of
    eventd's extensions (``EVENTD_NOT_PORTABLE``) are summed up in one line
    unless ``each_extension`` (``eventd rules check`` lists each), and not
    mentioned for the built-in packs, whose headers document them."""
    try:
        ruleset = load_ruleset(paths, infer_source=infer_source, gatekeeper=gatekeeper, strict=strict)
    except RuleError as err:
        error(f"rules refused: {err}")
        return None
    except OSError as err:
        error(f"cannot read rules: {err}")
        return None
    extensions = 0
    for finding in ruleset.findings:
        if finding.portable or each_extension:
            error(f"warning: {finding}")
        else:
            extensions += 1
    if extensions and paths:  # the built-in packs say so in their headers, every run need not
        error(
            f"warning: {extensions} uses of eventd extensions not portable to Falco "
            "(EVENTD_NOT_PORTABLE; `eventd rules check` lists them, --falco-strict refuses them)"
        )
    return ruleset
