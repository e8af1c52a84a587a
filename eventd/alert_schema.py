"""The published JSON Schema of eventd's alert document, and a validator for it.

The schema (``alert.schema.json``, shipped inside the package) is the
contract with whoever consumes alerts; sinks' tests validate what they emit
against it so that a change to the alert shape cannot go unnoticed.

The daemon never validates its own alerts at run time, so ``jsonschema`` is
a dependency of the ``test`` extra only: this module is for the tests and
for consumers who want to check alerts (``pip install 'eventd[test]'``).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

try:
    from jsonschema import Draft202012Validator, FormatChecker, validators
    from jsonschema.exceptions import ValidationError
except ImportError as err:  # the runtime install does not have it
    raise ImportError(
        "eventd.alert_schema needs jsonschema, which only the test extra installs: pip install 'eventd[test]'"
    ) from err

SCHEMA_FILE = "alert.schema.json"
#: How many violations an error message spells out; the rest are counted.
_SHOWN = 5


class AlertSchemaError(ValueError):
    """The document is not a valid eventd alert; ``errors`` holds every violation."""

    def __init__(self, errors: list[ValidationError]) -> None:
        self.errors = errors
        lines = [f"{_where(e)}: {e.message}" for e in errors[:_SHOWN]]
        if len(errors) > _SHOWN:
            lines.append(f"... and {len(errors) - _SHOWN} more")
        super().__init__("not a valid eventd alert: " + "; ".join(lines))


def _where(error: ValidationError) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return path.lstrip(".") or "(document)"


@functools.cache
def schema() -> dict[str, Any]:
    """The alert schema as a JSON object (loaded once from package data)."""
    text = resources.files("eventd").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


@functools.cache
def _validator() -> Any:
    # ``Alert.to_dict()`` holds list fields as tuples, which the JSON
    # encoders write as arrays: accept them as arrays so that both the
    # dict and the decoded wire form can be checked.
    types = Draft202012Validator.TYPE_CHECKER.redefine(
        "array", lambda _checker, value: isinstance(value, list | tuple)
    )
    cls = validators.extend(Draft202012Validator, type_checker=types)
    # Formats are annotations only in 2020-12 unless a checker is given; the
    # schema also states its formats as patterns, so both agree.
    return cls(schema(), format_checker=FormatChecker())


def validate(doc: Any) -> None:
    """Raise ``AlertSchemaError`` unless ``doc`` fits the schema.

    ``doc`` is ``Alert.to_dict()`` or a decoded JSON alert.
    """
    errors = sorted(_validator().iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise AlertSchemaError(errors)
