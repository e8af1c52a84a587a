"""Messages and codes of rule loading: the Python twin of Falco's ``falco_load_result.cpp``.

Falco classifies every problem it finds while loading rules with a code
(``LOAD_ERR_*`` for errors, ``LOAD_*`` for warnings) and a short title, and
prints ``CODE (title): message``.  The codes are an interface: people grep
Falco's ``-V`` output and CI logs for them, so eventd reports the same codes
for the same conditions.  eventd's own extensions to the language get one
more warning code, ``EVENTD_NOT_PORTABLE``, so that a rules file written for
eventd can be checked for portability to Falco (``--falco-strict`` refuses
them).

A ``Finding`` is one error or warning with where it is; ``RuleSet.findings``
holds the warnings of a successful load, ``RuleError.code`` the code of a
refusal.
"""

from __future__ import annotations

import enum

from msgspec import Struct


class ErrorCode(enum.Enum):
    """Falco's ``load_result::error_code``, value = (code, title)."""

    LOAD_ERR_FILE_READ = "File read error"
    LOAD_ERR_YAML_PARSE = "YAML parse error"
    LOAD_ERR_YAML_VALIDATE = "Error validating internal structure of YAML file"
    LOAD_ERR_COMPILE_CONDITION = "Error compiling condition"
    LOAD_ERR_COMPILE_OUTPUT = "Error compiling output"
    LOAD_ERR_VALIDATE = "Error validating rule/macro/list/exception objects"
    LOAD_ERR_EXTENSION = "Error in extension item"

    @property
    def title(self) -> str:
        return self.value


class WarningCode(enum.Enum):
    """Falco's ``load_result::warning_code`` plus eventd's portability warning."""

    LOAD_UNKNOWN_SOURCE = "Unknown event source"
    LOAD_UNSAFE_NA_CHECK = "Unsafe <NA> comparison in condition"
    LOAD_NO_EVTTYPE = "Condition has no event-type restriction"
    LOAD_UNKNOWN_FILTER = "Unknown field or event-type in condition or output"
    LOAD_UNUSED_MACRO = "Unused macro"
    LOAD_UNUSED_LIST = "Unused list"
    LOAD_UNKNOWN_ITEM = "Unknown rules file item"
    LOAD_DEPRECATED_ITEM = "Used deprecated item"
    LOAD_WARNING_EXTENSION = "Warning in extension item"
    LOAD_APPEND_NO_VALUES = "Overriding/appending with no values"
    LOAD_EXCEPTION_NAME_NOT_UNIQUE = "Multiple exceptions defined with the same name"
    LOAD_INVALID_MACRO_NAME = "Invalid macro name"
    LOAD_INVALID_LIST_NAME = "Invalid list name"
    LOAD_COMPILE_CONDITION = "Warning in rule condition"
    LOAD_UNKNOWN_KEY = "Unknown key in item definition"
    #: eventd only: a construct Falco refuses (string operators or ``pmatch``
    #: on a list field); ``--falco-strict`` / ``rules_strict`` refuse it too.
    EVENTD_NOT_PORTABLE = "eventd extension, not portable to Falco"

    @property
    def title(self) -> str:
        return self.value


# -- message texts Falco uses (rule_loading_messages.h and the loader's THROWs) --

WARNING_APPEND = (
    "'append' key is deprecated. Add an 'append' entry (e.g. 'condition: append') under 'override' instead."
)
WARNING_ENABLED = (
    "The standalone 'enabled' key usage is deprecated. The correct approach requires also "
    "a 'replace' entry under the 'override' key (i.e. 'enabled: replace')."
)
ERROR_OVERRIDE_APPEND = (
    "Keys 'override' and 'append: true' cannot be used together. Add an 'append' entry "
    "(e.g. 'condition: append') under 'override' instead."
)
ERROR_NO_PREVIOUS_MACRO = (
    "Macro uses 'append' or 'override.condition: append' but no macro by that name already exists"
)
ERROR_NO_PREVIOUS_LIST = (
    "List uses 'append' or 'override.items: append' but no list by that name already exists"
)
ERROR_NO_PREVIOUS_RULE_APPEND = (
    "Rule uses 'append' or 'override.<key>: append' but no rule by that name already exists"
)
ERROR_NO_PREVIOUS_RULE_REPLACE = (
    "An 'override.<key>: replace' to a rule was requested but no rule by that name already exists"
)
#: The patterns Falco's reader checks names against (warnings, not errors).
RGX_BARESTR = "([^()\"'[:space:]=,]+)"
RGX_IDENTIFIER = "([a-zA-Z]+[a-zA-Z0-9_]*)"
WARNING_INVALID_LIST_NAME = (
    f"List has an invalid name. List names should match a regular expression: {RGX_BARESTR}"
)
WARNING_INVALID_MACRO_NAME = (
    f"Macro has an invalid name. Macro names should match a regular expression: {RGX_IDENTIFIER}"
)
WARNING_UNUSED_MACRO = "Macro not referred to by any other rule/macro"
WARNING_UNUSED_LIST = "List not referred to by any other rule/macro"
WARNING_REDEFINED_SOURCE = "Rule has been re-defined with a different source"


def exception_name_not_unique(name: str) -> str:
    return f"Multiple definitions of exception '{name}' in the same rule"


def nonexistent_field(token: str) -> str:
    """libsinsp's compiler message for a field no source declares."""
    return f"filter_check called with nonexistent field {token}"


def field_misused(value: str) -> str:
    return f"'{value}' may be a valid field misused as a const string value"


def transformer_misused(value: str) -> str:
    return f"'{value}' may be a valid field transformer misused as a const string value"


def regex_simpler(value: str) -> str:
    return (
        f"regex check with '{value}' may be optimized with simpler operators such as "
        "'=', 'contains', 'startswith', 'endswith'"
    )


class Finding(Struct, frozen=True):
    """One warning (or error) of a load, with Falco's code and where it is.

    ``str()`` is eventd's one-line form, ``file:line: item: key: text``,
    the form ``RuleSet.warnings`` has always had; ``falco_line()`` is Falco's
    ``CODE (title): text``.
    """

    code: WarningCode | ErrorCode
    text: str
    file: str | None = None
    line: int | None = None
    item: str | None = None
    key: str | None = None

    @property
    def severity(self) -> str:
        return "error" if isinstance(self.code, ErrorCode) else "warning"

    @property
    def portable(self) -> bool:
        return self.code is not WarningCode.EVENTD_NOT_PORTABLE

    def falco_line(self) -> str:
        return f"{self.code.name} ({self.code.title}): {self.text}"

    def __str__(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(self.file if self.line is None else f"{self.file}:{self.line}")
        if self.item is not None:
            parts.append(self.item)
        if self.key is not None:
            parts.append(self.key)
        return ": ".join([*parts, self.text or self.code.title])

    def as_json(self) -> dict[str, object]:
        """The fields ``eventd rules check --format json`` prints per finding."""
        return {
            "severity": self.severity,
            "code": self.code.name,
            "codedesc": self.code.title,
            "file": self.file,
            "line": self.line,
            "item": self.item,
            "key": self.key,
            "text": self.text,
        }
