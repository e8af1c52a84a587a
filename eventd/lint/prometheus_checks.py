"""EVD030: Prometheus rules (plain or inside a ConfigMap) whose label
matchers spell a registry with an unescaped ``.``.

PromQL regexes are RE2 and fully anchored; ``myregistry.io/.*`` also
matches ``myregistryXio/...``.  Harmless for ``!~`` in practice, wrong for
``=~``; flagged as a warning either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from eventd.engine.yamlsrc import Map, Scalar
from eventd.engine.yamlsrc import Node as YamlNode
from eventd.lint.findings import Finding, finding

_MATCHER = re.compile(r'(\w+)\s*(=~|!~)\s*"((?:[^"\\]|\\.)*)"')
_UNESCAPED_HOST_DOT = re.compile(r"^[a-z0-9-]+(?<!\\)\.[a-z]")


def _exprs(text: str, first_line: int) -> Iterator[tuple[int, str]]:
    for offset, line in enumerate(text.splitlines()):
        if "expr:" in line:
            yield first_line + offset, line.split("expr:", 1)[1]


def prometheus(doc: YamlNode, file: str, text: str) -> Iterator[Finding]:
    """Rule groups in ``doc`` (a ConfigMap's data values or the file itself)."""
    sources: list[tuple[int, str]] = []
    if isinstance(doc, Map) and isinstance(doc.get("data"), Map):
        data = doc.get("data")
        assert isinstance(data, Map)
        for key in data:
            value = data.get(key)
            if isinstance(value, Scalar) and "groups:" in value.text:
                sources.append((value.line + 1, value.text))
    elif isinstance(doc, Map) and "groups" in doc:
        sources.append((1, text))
    if sources:
        import yaml  # only for Prometheus files: PyYAML's import costs every command ~12 ms
    for first, body in sources:
        try:
            yaml.safe_load(body)
        except yaml.YAMLError:
            continue
        for line, expr in _exprs(body, first):
            for label, op, pattern in _MATCHER.findall(expr):
                if _UNESCAPED_HOST_DOT.match(pattern):
                    yield finding(
                        "EVD030",
                        file,
                        line,
                        f'matcher {label}{op}"{pattern}"',
                        f"the `.` in `{pattern}` matches any character "
                        f"(`{pattern.replace('.', 'X', 1)}` matches)",
                        f'escape it: `{label}{op}"{pattern.replace(".", chr(92) * 2 + ".", 1)}"`',
                    )
