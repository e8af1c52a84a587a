"""Where the built-in rule packs live: ``eventd/_rules`` in a wheel, the
repository's top-level ``rules/`` in a source checkout or editable install."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def builtin_rules_dir() -> Path:
    for candidate in (_PACKAGE / "_rules", _PACKAGE.parent / "rules"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("eventd's built-in rule packs are missing from this installation")


#: Load order of the packs.  With Falco's default ``rule_matching: first`` the
#: earlier rule wins, so the untrusted-registry verdict comes before the
#: finer-grained suspicious-pull findings.
PACK_ORDER = ("untrusted_registry.yaml", "suspicious_pull.yaml")


def builtin_rule_files() -> list[Path]:
    """The built-in packs in load order: ``PACK_ORDER``, then any others by name."""
    directory = builtin_rules_dir()
    found = {p.name: p for p in directory.iterdir() if p.suffix in (".yaml", ".yml")}
    ordered = [found.pop(name) for name in PACK_ORDER if name in found]
    return ordered + [found[name] for name in sorted(found)]
