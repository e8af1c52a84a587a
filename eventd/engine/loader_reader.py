"""Reading: YAML items to collected definitions (Falco's ``rule_loader_reader.cpp``).

One ``Reader`` reads one file: each item of the YAML sequence is decoded
with Falco's checks and messages (``yamlsrc``) and handed to the
``Collector``.  Structural problems are ``LOAD_ERR_YAML_VALIDATE`` (Falco's
reader ``THROW``), YAML syntax ``LOAD_ERR_YAML_PARSE``, what the collector
refuses ``LOAD_ERR_VALIDATE``.  Names that do not match Falco's patterns
and the deprecated ``append``/``enabled`` forms load with Falco's warnings.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from pathlib import Path

from eventd.boundedfile import FileTooLarge, read_bounded
from eventd.engine.errors import RuleError
from eventd.engine.lists import LIST_NAME
from eventd.engine.load_result import (
    ERROR_OVERRIDE_APPEND,
    WARNING_APPEND,
    WARNING_ENABLED,
    WARNING_INVALID_LIST_NAME,
    WARNING_INVALID_MACRO_NAME,
    ErrorCode,
    WarningCode,
)
from eventd.engine.loader_collector import Collector, ListInfo, MacroInfo, RuleInfo, RuleUpdate, validated
from eventd.engine.rule_exceptions import read_exceptions
from eventd.engine.source_inference import prepare_documents
from eventd.engine.versions import Version, engine_problem, parse_engine_requirement, plugin_problem
from eventd.engine.yamlsrc import (
    Map,
    Scalar,
    Seq,
    Where,
    decode_bool,
    decode_scalars,
    decode_str,
    load_documents,
    scalar_text,
)
from eventd.priority import Priority

DEFAULT_SOURCE = "syscall"
#: Falco's macro name pattern (``RGX_IDENTIFIER``); other names load with a warning.
MACRO_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9_]*")  # the same language, without backtracking
_YAML = ErrorCode.LOAD_ERR_YAML_VALIDATE.name

_LIST_KEYS = frozenset({"list", "items", "append", "override"})
_MACRO_KEYS = frozenset({"macro", "condition", "append", "override"})
_RULE_APPENDABLE = ("condition", "output", "desc", "tags", "exceptions")
# ``capture``/``capture_duration`` are replace-only in newer Falco; accepted, ignored.
_RULE_REPLACEABLE = (
    *_RULE_APPENDABLE,
    "priority",
    "enabled",
    "warn_evttypes",
    "skip-if-unknown-filter",
    "capture",
    "capture_duration",
)
_RULE_KEYS = frozenset({"rule", "source", "append", "override", *_RULE_REPLACEABLE})


def shorten(text: str, limit: int = 40) -> str:
    """``text`` cut for a message: hostile values can be megabytes long."""
    return text if len(text) <= limit else text[:limit] + "..."


class Reader:
    """Reads the items of one file into the collector (Falco's ``rule_loader::reader``)."""

    def __init__(self, collector: Collector, file: str, *, infer_source: bool = False) -> None:
        self.col = collector
        self.file = file
        self.infer_source = infer_source  # --infer-source (source_inference.py)

    def read(self, text: str) -> None:
        count = 0
        parsed = load_documents(text, self.file)
        docs, notices = prepare_documents(parsed, self.file, infer_source=self.infer_source)
        self.col.warnings.extend(notices)
        for doc in docs:
            if isinstance(doc, Map):
                raise RuleError(
                    "Rules content is not yaml array of objects", file=self.file, line=doc.line, code=_YAML
                )
            if not isinstance(doc, Seq):
                raise RuleError("Rules content is not yaml", file=self.file, line=doc.line, code=_YAML)
            for item in doc.items:
                count += 1
                if isinstance(item, Scalar) and item.null:
                    continue
                where = Where(self.file, item.line, f"item #{count}")
                if not isinstance(item, Map):
                    raise where.error(
                        "Unexpected element type. Each element should be a yaml associative array."
                    )
                try:
                    self._read_item(item, where)
                except RuleError as err:
                    if err.code is None:
                        err.code = _YAML
                    raise

    def _read_item(self, item: Map, where: Where) -> None:
        if "required_engine_version" in item:
            self._engine_version(item, where)
        elif "required_plugin_versions" in item:
            self._plugin_versions(item, where)
        elif "list" in item:
            self._list(item, where)
        elif "macro" in item:
            self._macro(item, where)
        elif "rule" in item:
            self._rule(item, where)
        else:
            self.col.warnings.append(where.finding(WarningCode.LOAD_UNKNOWN_ITEM, "Unknown top level item"))

    def _unknown_keys(self, item: Map, where: Where, allowed: frozenset[str]) -> None:
        for key in item:
            if key not in allowed:
                self.col.warnings.append(
                    where.finding(
                        WarningCode.LOAD_UNKNOWN_KEY, f"Unknown key '{key}' ignored", line=item.key_line(key)
                    )
                )

    # versions

    def _engine_version(self, item: Map, where: Where) -> None:
        key = "required_engine_version"
        text = decode_str(item, key, where)
        assert text is not None
        line = item.key_line(key)
        required = parse_engine_requirement(text)
        if required is None:
            raise where.error(
                f"Unable to parse engine version '{shorten(text)}' as a semver string. "
                'Expected "x.y.z" semver format.',
                key=key,
                line=line,
            )
        problem = engine_problem(required)
        if problem is not None:
            raise validated(where.error(problem, key=key, line=line))

    def _plugin_versions(self, item: Map, where: Where) -> None:
        key = "required_plugin_versions"
        node = item.get(key)
        if not isinstance(node, Seq):
            raise where.error("Value of required_plugin_versions must be a sequence", key=key)
        for plugin in node.items:
            pwhere = Where(self.file, plugin.line, where.item)
            if not isinstance(plugin, Map):
                raise pwhere.error("Plugin version must be a mapping", key=key)
            alternatives = [self._plugin_requirement(plugin, pwhere)]
            alts = plugin.get("alternatives")
            if alts is not None:
                if not isinstance(alts, Seq):
                    raise pwhere.error("Value of plugin version alternatives must be a sequence", key=key)
                for alt in alts.items:
                    awhere = Where(self.file, alt.line, where.item)
                    if not isinstance(alt, Map):
                        raise awhere.error("Plugin version alternative must be a mapping", key=key)
                    alternatives.append(self._plugin_requirement(alt, awhere))
            seen: set[str] = set()
            for name, version in alternatives:
                if Version.parse(version) is None:
                    raise pwhere.error(
                        f"Invalid required version '{shorten(version)}' for plugin '{name}'", key=key
                    )
                if name in seen:
                    raise pwhere.error(
                        f"Defined multiple alternative version requirements for plugin '{name}'", key=key
                    )
                seen.add(name)
            problem = plugin_problem(alternatives)
            if problem is not None:
                raise validated(pwhere.error(problem, key=key))

    @staticmethod
    def _plugin_requirement(node: Map, where: Where) -> tuple[str, str]:
        name = decode_str(node, "name", where)
        assert name is not None
        version = decode_str(node, "version", where.named(f"{where.item}: plugin '{name}'"))
        assert version is not None
        return name, version

    # overrides

    def _overrides(
        self, item: Map, where: Where, appendable: Sequence[str], replaceable: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        node = item.get("override")
        if node is None or (isinstance(node, Scalar) and node.null):
            return [], []
        if not isinstance(node, Map):
            raise where.error("Value of 'override' must be a mapping", key="override", line=node.line)
        appends: list[str] = []
        replaces: list[str] = []
        for key in node:
            line = node.key_line(key)
            op = scalar_text(node.get(key))
            if op == "append":
                if key not in appendable:
                    raise where.error(
                        f"Key '{key}' cannot be appended to, use 'replace' instead", key="override", line=line
                    )
                appends.append(key)
            elif op == "replace":
                if key not in replaceable:
                    raise where.error(f"Key '{key}' cannot be replaced", key="override", line=line)
                replaces.append(key)
            else:
                allowed = " ".join(
                    w for w, ok in (("append", key in appendable), ("replace", key in replaceable)) if ok
                )
                raise where.error(
                    f"Invalid override operation for key '{key}': '{op or ''}'. "
                    f"Allowed values are: {allowed}",
                    key="override",
                    line=line,
                )
        return appends, replaces

    def _append_flag(self, item: Map, where: Where) -> bool:
        append = decode_bool(item, "append", where, False)
        if append:
            self.col.warnings.append(
                where.finding(WarningCode.LOAD_DEPRECATED_ITEM, WARNING_APPEND, line=item.key_line("append"))
            )
        return append

    # lists and macros

    def _list(self, item: Map, where: Where) -> None:
        name = decode_str(item, "list", where)
        assert name is not None
        where = where.named(f"list '{name}'")
        if not LIST_NAME.fullmatch(name):
            self.col.warnings.append(
                where.finding(WarningCode.LOAD_INVALID_LIST_NAME, WARNING_INVALID_LIST_NAME)
            )
        self._unknown_keys(item, where, _LIST_KEYS)
        if "items" not in item:
            raise where.error("Item has no mapping for key 'items'")
        items = decode_scalars(item, "items", where)
        append = self._append_flag(item, where)
        appends, replaces = self._overrides(item, where, ("items",), ("items",))
        if append and (appends or replaces):
            raise where.error(ERROR_OVERRIDE_APPEND)
        info = ListInfo(name, items, where)
        if append or "items" in appends:
            self.col.append_list(info)
        else:
            self.col.define_list(info)

    def _macro(self, item: Map, where: Where) -> None:
        name = decode_str(item, "macro", where)
        assert name is not None
        where = where.named(f"macro '{name}'")
        if not MACRO_NAME.fullmatch(name):
            self.col.warnings.append(
                where.finding(WarningCode.LOAD_INVALID_MACRO_NAME, WARNING_INVALID_MACRO_NAME)
            )
        self._unknown_keys(item, where, _MACRO_KEYS)
        cond = decode_str(item, "condition", where)
        assert cond is not None
        cond_where = Where(where.file, item.key_line("condition"), where.item)
        append = self._append_flag(item, where)
        appends, replaces = self._overrides(item, where, ("condition",), ("condition",))
        if append and (appends or replaces):
            raise where.error(ERROR_OVERRIDE_APPEND)
        info = MacroInfo(name, cond, where, cond_where)
        if append or "condition" in appends:
            self.col.append_macro(info)
        else:
            self.col.define_macro(info)

    # rules

    def _rule(self, item: Map, where: Where) -> None:
        name = decode_str(item, "rule", where)
        assert name is not None
        where = where.named(f"rule '{name}'")
        self._unknown_keys(item, where, _RULE_KEYS)
        append = self._append_flag(item, where)
        appends, replaces = self._overrides(item, where, _RULE_APPENDABLE, _RULE_REPLACEABLE)
        if append and (appends or replaces):
            raise where.error(ERROR_OVERRIDE_APPEND)
        if appends or replaces:
            self._rule_overrides(name, item, where, appends, replaces)
        elif append:
            upd = RuleUpdate()
            if "condition" in item:
                upd.cond = decode_str(item, "condition", where)
                upd.cond_where = Where(where.file, item.key_line("condition"), where.item)
            if "exceptions" in item:
                upd.exceptions = read_exceptions(item, where, append=True, warnings=self.col.warnings)
            self.col.append_rule(name, upd, where)
        elif not any(k in item for k in ("condition", "output", "desc", "priority")):
            if "enabled" not in item:
                raise where.error("Item has no mapping for key 'enabled'")
            enabled = decode_bool(item, "enabled", where, True)
            self.col.warnings.append(where.finding(WarningCode.LOAD_DEPRECATED_ITEM, WARNING_ENABLED))
            self.col.enable_rule(name, enabled, where)
        else:
            self.col.define_rule(self._rule_definition(name, item, where))

    def _rule_definition(self, name: str, item: Map, where: Where) -> RuleInfo:
        cond = decode_str(item, "condition", where)
        output = decode_str(item, "output", where)
        desc = decode_str(item, "desc", where)
        priority = self._priority(item, where)
        assert cond is not None and output is not None and desc is not None
        return RuleInfo(
            name=name,
            source=decode_str(item, "source", where, required=False) or DEFAULT_SOURCE,
            cond=cond,
            output=output.strip(),
            desc=desc,
            priority=priority,
            enabled=decode_bool(item, "enabled", where, True),
            skip_unknown=self._rule_flags(item, where),
            tags=set(decode_scalars(item, "tags", where)) if "tags" in item else set(),
            exceptions=read_exceptions(item, where, append=False, warnings=self.col.warnings),
            where=where,
            cond_where=Where(where.file, item.key_line("condition"), where.item),
            output_where=Where(where.file, item.key_line("output"), where.item),
        )

    @staticmethod
    def _rule_flags(item: Map, where: Where) -> bool:
        """Decode ``warn_evttypes`` (syscall-only, so unused) and return ``skip-if-unknown-filter``."""
        decode_bool(item, "warn_evttypes", where, True)
        return decode_bool(item, "skip-if-unknown-filter", where, False)

    @staticmethod
    def _priority(item: Map, where: Where) -> Priority:
        text = decode_str(item, "priority", where)
        try:
            return Priority.parse(text)
        except ValueError:
            raise where.error("Invalid priority", key="priority", line=item.key_line("priority")) from None

    def _rule_overrides(
        self, name: str, item: Map, where: Where, appends: list[str], replaces: list[str]
    ) -> None:
        expected = {k for k in _RULE_REPLACEABLE if k in item}
        if appends:
            upd = self._rule_update(item, where, appends, expected, "append")
            self.col.append_rule(name, upd, where)
        if replaces:
            upd = self._rule_update(item, where, replaces, expected, "replace")
            self.col.replace_rule(name, upd, where)
        for key in sorted(expected):
            raise where.error(
                f"Unexpected key '{key}': no corresponding entry under 'override' is defined.",
                key=key,
                line=item.key_line(key),
            )

    def _rule_update(
        self, item: Map, where: Where, keys: list[str], expected: set[str], kind: str
    ) -> RuleUpdate:
        upd = RuleUpdate()
        for key in _RULE_REPLACEABLE:  # Falco's fixed order, whatever the override order
            if key not in keys:
                continue
            if key not in expected:
                article = "An" if kind == "append" else "A"
                raise where.error(
                    f"{article} {kind} override for '{key}' was specified but '{key}' is not defined"
                )
            expected.discard(key)
            line = item.key_line(key)
            if key == "condition":
                upd.cond = decode_str(item, key, where)
                upd.cond_where = Where(where.file, line, where.item)
            elif key == "output":
                upd.output = decode_str(item, key, where)
                upd.output_where = Where(where.file, line, where.item)
            elif key == "desc":
                upd.desc = decode_str(item, key, where)
            elif key == "tags":
                upd.tags = set(decode_scalars(item, key, where))
            elif key == "exceptions":
                upd.exceptions = read_exceptions(item, where, append=True, warnings=self.col.warnings)
            elif key == "priority":
                upd.priority = self._priority(item, where)
            elif key == "enabled":
                upd.enabled = decode_bool(item, key, where, True)
            elif key == "skip-if-unknown-filter":
                upd.skip_unknown = decode_bool(item, key, where, False)
            elif key == "warn_evttypes":
                decode_bool(item, key, where, True)
        return upd


def read_text(path: Path) -> str:
    """The file as text (a UTF-8 BOM is dropped); invalid UTF-8 is a ``RuleError``,
    and so is a file past ``boundedfile.MAX_FILE_BYTES`` (``/dev/zero`` is not read whole)."""
    code = ErrorCode.LOAD_ERR_FILE_READ.name
    try:
        raw = read_bounded(path)
    except FileTooLarge as err:
        message = f"larger than {err.limit} bytes, the limit for a rules file"
        raise RuleError(message, file=str(path), code=code) from None
    data = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RuleError(
            f"invalid UTF-8 at byte offset {err.start + len(raw) - len(data)} ({err.reason})",
            file=str(path),
            line=data.count(b"\n", 0, err.start) + 1,
            code=code,
        ) from None


def rule_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files in order; a directory contributes its ``*.yaml``/``*.yml`` sorted by name."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml") and f.is_file()))
        else:
            out.append(p)
    return out
