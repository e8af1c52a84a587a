"""Falco rules files -> a compiled ``RuleSet``: the public entry points.

The loader is split the way Falco splits its own, so that a compatibility
fix can be read side by side with Falco's C++:

==============================  ============================================
eventd                          Falco (``userspace/engine/``)
==============================  ============================================
``loader_reader.py``            ``rule_loader_reader.cpp`` (YAML to items)
``loader_collector.py``         ``rule_loader_collector.cpp`` (append,
                                override, redefinition, visibility)
``loader_compiler.py``          ``rule_loader_compiler.cpp`` (lists, macros,
                                rules, exceptions, outputs)
``load_result.py``              ``falco_load_result.cpp`` and
                                ``rule_loading_messages.h`` (codes, texts)
``loader.py`` (this module)     ``falco_engine::load_rules``
==============================  ============================================

Falco compiles the whole collection after *each* file, so a file must be
complete given only the files before it; eventd does the same.  Any problem
raises ``RuleError`` naming file, line, item and key, with Falco's
``LOAD_ERR_*`` code in ``RuleError.code``; the ``RuleSet`` is built only
when everything compiled, so nothing is ever half-loaded.  Warnings are in
``RuleSet.findings`` (with codes) and ``RuleSet.warnings`` (one line each).

``strict`` (``--falco-strict``, ``rules_strict: true``) refuses eventd's
extensions to the language exactly where Falco would refuse them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from eventd.engine.errors import RuleError
from eventd.engine.fields import default_registry
from eventd.engine.fields.base import Registry
from eventd.engine.load_result import WARNING_APPEND, WARNING_ENABLED, Finding
from eventd.engine.loader_collector import Collector
from eventd.engine.loader_compiler import MAX_CONDITION_DEPTH, Compiled, compile_collection
from eventd.engine.loader_reader import DEFAULT_SOURCE, Reader, read_text, rule_files
from eventd.engine.ruleset import RULE_MATCHING, RuleSet, check_rule_matching

__all__ = [
    "DEFAULT_SOURCE",
    "MAX_CONDITION_DEPTH",
    "RULE_MATCHING",
    "WARNING_APPEND",
    "WARNING_ENABLED",
    "load_rules",
    "load_rules_text",
    "rule_files",
]


def load_rules_text(
    sources: Sequence[tuple[str, str]],
    *,
    registry: Registry | None = None,
    strict: bool = False,
    infer_source: bool = False,
) -> RuleSet:
    """Load rules from ``(display name, YAML text)`` pairs, in order.

    ``infer_source`` (``--infer-source``, ``rules_infer_source``) gives a rule
    without ``source:`` the one source all its fields belong to
    (``source_inference.py``); off, a missing source means syscall, as in Falco.
    """
    col = Collector(registry if registry is not None else default_registry())
    compiled = Compiled([], [], [])
    for name, text in sources:
        try:
            Reader(col, name, infer_source=infer_source).read(text)
            # As Falco: every file must compile given those before it.
            compiled = compile_collection(col, strict=strict)
        except RecursionError:
            # Every nesting has its own limit; this is the net under them, so
            # that no input can escape as anything but a ``RuleError``.
            raise RuleError("rules nested too deeply to load", file=name) from None
    findings: tuple[Finding, ...] = (*col.warnings, *compiled.warnings)
    return RuleSet(
        rules=tuple(compiled.rules),
        files=tuple(name for name, _ in sources),
        lists=len(col.lists),
        macros=len(col.macros),
        disabled=tuple(compiled.disabled),
        warnings=tuple(map(str, findings)),
        findings=findings,
    )


def load_rules(
    paths: Sequence[str | Path],
    *,
    registry: Registry | None = None,
    rule_matching: str = "first",
    strict: bool = False,
    infer_source: bool = False,
) -> RuleSet:
    """Load rule files and directories in order; raise ``RuleError`` or ``OSError``.

    ``rule_matching`` is only validated here; the matcher applies it.
    """
    check_rule_matching(rule_matching)
    sources = [(str(f), read_text(f)) for f in rule_files(paths)]
    return load_rules_text(sources, registry=registry, strict=strict, infer_source=infer_source)
