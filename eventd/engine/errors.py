"""Errors of the rule engine, each carrying where the problem is."""

from __future__ import annotations


class RuleError(Exception):
    """A problem in rule text: a condition, an output, an item or a file.

    Every attribute is optional because errors are raised deep inside (the
    parser knows only the offset in a condition) and enriched on the way out
    (the loader adds file, item and line).  ``str()`` gives a one-line message
    a user can act on: ``rules.yaml:12: rule 'X': condition: <problem>``.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        item: str | None = None,
        key: str | None = None,
        offset: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.item = item
        self.key = key
        self.offset = offset
        #: Falco's ``LOAD_ERR_*`` code name (``load_result.ErrorCode``), set
        #: by the loader stage that refused the text.
        self.code = code

    def located(self, **where: object) -> RuleError:
        """Fill in location attributes that are still unknown; return self."""
        for name, value in where.items():
            if getattr(self, name) is None and value is not None:
                setattr(self, name, value)
        return self

    def __str__(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(self.file if self.line is None else f"{self.file}:{self.line}")
        elif self.line is not None:
            parts.append(f"line {self.line}")
        if self.item is not None:
            parts.append(self.item)
        if self.key is not None:
            parts.append(self.key)
        msg = self.message
        if self.offset is not None:
            msg = f"{msg} (at offset {self.offset})"
        return ": ".join([*parts, msg])


class ConditionSyntaxError(RuleError):
    """The condition text does not follow the grammar."""


class FieldError(RuleError):
    """Unknown field, wrong argument, or an operator the field does not allow."""
