"""Checks on how image values are compared: EVD010 registry prefix without
``/``, EVD012 granularity mismatch, EVD014 mutable tag treated as pinned,
EVD015 ``latest`` by omission."""

from __future__ import annotations

from collections.abc import Iterator

from eventd.engine.ast import Check
from eventd.images import parse
from eventd.lint.checks.imagevalues import (
    NAME,
    RAW,
    REGISTRY,
    field_kind,
    is_bare_registry,
    looks_like_location,
)
from eventd.lint.findings import Finding, finding
from eventd.lint.model import CondItem, Corpus, Value, checks_in

_PREFIX_OPS = frozenset({"startswith", "bstartswith"})
_GLOB_OPS = frozenset({"glob", "iglob"})
_EQUALITY_OPS = frozenset({"=", "==", "!=", "in", "intersects"})


def _where(value: Value, item: CondItem) -> tuple[str, int, str]:
    if value.list_name is not None:
        return value.file, value.line, f"list '{value.list_name}'"
    return item.file, item.cond_line, item.label


def _used_by(value: Value, item: CondItem, check: Check) -> str:
    via = f" (used by {item.label} with `{check.op}` on {check.field.name})" if value.list_name else ""
    return via


def _registry_field(name: str) -> str:
    for suffix in (".image.repository", ".image.name", ".images.name", ".image.raw", ".images.raw", ".image"):
        if name.endswith(suffix):
            return name[: -len(suffix)] + (".images.registry" if "images" in suffix else ".image.registry")
    if name == "ka.target.image":
        return "ka.req.pod.images.registry"
    return "container.image.registry"


def _name_field(name: str) -> str:
    if name == "ka.target.image":
        return "ka.req.pod.images.name"
    for suffix in (".image.repository", ".image.raw", ".images.raw", ".image", ".image.familiar"):
        if name.endswith(suffix):
            return name[: -len(suffix)] + (".images.name" if "images" in suffix else ".image.name")
    return name if name.endswith("name") else "container.image.name"


def _prefix(check: Check, item: CondItem, corpus: Corpus) -> Iterator[Finding]:
    for value in corpus.values(check.value, item):
        v = value.text
        if check.op in _PREFIX_OPS:
            bad = looks_like_location(v) and not v.endswith("/")
        else:  # glob: a wildcard before the first "/" spills past the host
            wild = min((i for i, c in enumerate(v) if c in "*?["), default=-1)
            slash = v.find("/")
            bad = looks_like_location(v.rstrip("*?")) and wild >= 0 and (slash < 0 or wild < slash)
        if not bad:
            continue
        host = v.rstrip("*?").split("/", 1)[0]
        file, line, label = _where(value, item)
        yield finding(
            "EVD010",
            file,
            line,
            label,
            f'`{check.field.name} {check.op} "{v}"`{_used_by(value, item, check)} also admits '
            f"look-alikes such as `{host}.evil.com/x`" + (f" or `{v}-evil/x`" if "/" in v else ""),
            f"compare whole path segments: `{_name_field(check.field.name)} pmatch ({v.rstrip('/*?')})`"
            + (f" or `{_registry_field(check.field.name)} in ({host})`" if "/" not in v.rstrip("/*?") else "")
            + f', or end the prefix with `/` (`"{v.rstrip("/*?")}/"`)',
        )


def _granularity(check: Check, kind: str, item: CondItem, corpus: Corpus) -> Iterator[Finding]:
    for value in corpus.values(check.value, item):
        v = value.text
        file, line, label = _where(value, item)
        if kind in (NAME, RAW) and is_bare_registry(v):
            never = "never holds" if check.op != "!=" else "always holds"
            yield finding(
                "EVD012",
                file,
                line,
                label,
                f"'{v}' is a bare registry but `{check.field.name}`{_used_by(value, item, check)} holds a "
                f"whole repository such as `{v}/team/app`: `{check.op}` {never}, so a negated check flags "
                "every image",
                f"match the registry with `{_registry_field(check.field.name)} in ({v})`, or registries and "
                f"path prefixes together with `{_name_field(check.field.name)} pmatch (...)`",
            )
        elif kind == REGISTRY and "/" in v.strip("/"):
            yield finding(
                "EVD012",
                file,
                line,
                label,
                f"'{v}' has a path but `{check.field.name}`{_used_by(value, item, check)} holds only the "
                f"registry (`{v.split('/', 1)[0]}`): `{check.op}` never holds",
                f"compare path prefixes with `{_name_field(check.field.name)} pmatch ({v})`",
            )
        elif kind == RAW and check.op != "intersects":
            yield from _tags(check, value, item)


def _tags(check: Check, value: Value, item: CondItem) -> Iterator[Finding]:
    ref = parse(value.text)
    if not ref.valid or ref.digest is not None:
        return
    file, line, label = _where(value, item)
    if ref.tag is not None:
        yield finding(
            "EVD014",
            file,
            line,
            label,
            f"'{value.text}'{_used_by(value, item, check)} names tag `{ref.tag}`, which its owner can move "
            "to other content: the comparison treats a mutable tag as pinned",
            f"pin it by digest (`{ref.repository}@sha256:...`), or compare `{_name_field(check.field.name)}` "
            "and require `...image.pinned`",
        )
    else:
        yield finding(
            "EVD015",
            file,
            line,
            label,
            f"'{value.text}'{_used_by(value, item, check)} has no tag or digest: it is `:latest` by "
            f"omission, and as a string it matches neither `{value.text}:latest` nor `{ref.name}`",
            f"compare the normalised name (`{_name_field(check.field.name)} in ({ref.name})`) "
            "and pin by digest",
        )


def run(corpus: Corpus) -> Iterator[Finding]:
    for item in corpus.cond_items():
        if item.tree is None:
            continue
        for check in checks_in(item.tree):
            kind = field_kind(check.field.name)
            if kind is None or check.value is None or not isinstance(check.value, str | tuple):
                continue
            if check.op in _PREFIX_OPS or check.op in _GLOB_OPS:
                yield from _prefix(check, item, corpus)
            elif check.op in _EQUALITY_OPS:
                yield from _granularity(check, kind, item, corpus)
