"""The Falco engine and plugin versions eventd claims, and Falco's checks on them.

Rule files state what they need (``required_engine_version``,
``required_plugin_versions``); Falco refuses a file it cannot honour rather
than half-running it, and so does eventd.
"""

from __future__ import annotations

import re

from msgspec import Struct

#: Plugins eventd has built in (its own extractors stand in for them), with
#: the version each claims.  Versions are generous on purpose: any 0.x
#: requirement is honoured, since eventd's fields track the upstream plugins;
#: a rule using a field eventd lacks still fails, with a clear error, when
#: its condition is compiled.
BUILTIN_PLUGINS: dict[str, str] = {
    "k8saudit": "0.99.0",
    "k8saudit-eks": "0.99.0",
    "k8saudit-gke": "0.99.0",
    "k8saudit-aks": "0.99.0",
    "k8saudit-ovh": "0.99.0",
    "json": "0.99.0",
}

# libsinsp reads versions with sscanf("%u.%u.%u"): leading blanks are
# skipped and anything after the third number (a pre-release tag) is ignored.
_SEMVER = re.compile(r"\s*\+?(\d+)\.\s*\+?(\d+)\.\s*\+?(\d+)")
_UINT_MAX = 0xFFFF_FFFF


def _uint(digits: str) -> int | None:
    """A version number as ``%u`` holds it, or ``None`` past 32 bits.

    The length is checked before ``int()``, which refuses digit strings
    longer than a few thousand characters (CVE-2020-10735) with a
    ``ValueError`` no caller expects.
    """
    significant = digits.lstrip("0") or "0"
    if len(significant) > len(str(_UINT_MAX)):
        return None
    value = int(significant)
    return value if value <= _UINT_MAX else None


class Version(Struct, frozen=True, order=True):
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> Version | None:
        """``x.y.z`` (anything after it ignored), or ``None``; numbers must fit 32 bits."""
        m = _SEMVER.match(text)
        if m is None:
            return None
        major, minor, patch = (_uint(m.group(i)) for i in (1, 2, 3))
        if major is None or minor is None or patch is None:
            return None
        return cls(major, minor, patch)

    def compatible_with(self, required: Version) -> bool:
        """libsinsp's rule: same major version, and not older."""
        return self.major == required.major and self >= required

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


#: The Falco engine version eventd emulates: Falco 0.43's.  ``falco --version``
#: of Falco 0.43.1 prints "Engine version: 0.58.0" (public logs of that
#: release); the 0.43 engine line was set when Falco moved to libs 0.23.0
#: (falcosecurity/falco PR #3760, milestone 0.43.0).  Upstream
#: k8s_audit_rules.yaml requires engine 15 (= 0.15.0), well below this.
ENGINE = Version(0, 58, 0)
ENGINE_VERSION = str(ENGINE)


def parse_engine_requirement(text: str) -> Version | None:
    """A ``required_engine_version``: ``x.y.z``, or a legacy integer N meaning
    ``<major>.N.<patch>`` of this engine; ``None`` when it is neither."""
    if text.isascii() and text.isdigit():
        number = _uint(text)
        return None if number is None else Version(ENGINE.major, number, ENGINE.patch)
    return Version.parse(text)


def engine_problem(required: Version) -> str | None:
    """Why this engine cannot load rules requiring ``required``, or ``None``."""
    if ENGINE.compatible_with(required):
        return None
    return f"Rules require engine version {required}, but engine version is {ENGINE}"


def plugin_problem(alternatives: list[tuple[str, str]]) -> str | None:
    """Why no alternative of one ``required_plugin_versions`` entry is satisfied.

    ``alternatives`` is ``[(name, version), ...]`` with the main entry first;
    the versions are already validated.  Falco accepts the entry when any
    alternative is loaded at a compatible version.
    """
    mismatched = []
    for name, wanted in alternatives:
        have = BUILTIN_PLUGINS.get(name)
        if have is None:
            continue
        have_v, wanted_v = Version.parse(have), Version.parse(wanted)
        assert have_v is not None and wanted_v is not None
        if have_v.compatible_with(wanted_v):
            return None
        mismatched.append(f"plugin '{name}' version {have_v} is not compatible with {wanted_v}")
    if mismatched:
        return "Plugin requirement not satisfied: " + "; ".join(mismatched)
    names = ", ".join(f"'{n}'" for n, _ in alternatives)
    builtin = ", ".join(BUILTIN_PLUGINS)
    if len(alternatives) == 1:
        return f"Plugin {names} is required by the rules but is not built into eventd (built in: {builtin})"
    return f"None of the plugins {names} required by the rules is built into eventd (built in: {builtin})"
