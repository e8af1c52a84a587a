"""Falco priorities: ordinals 0 (Emergency) to 7 (Debug); lower is more severe."""

from __future__ import annotations

import enum


class Priority(enum.IntEnum):
    EMERGENCY = 0
    ALERT = 1
    CRITICAL = 2
    ERROR = 3
    WARNING = 4
    NOTICE = 5
    INFORMATIONAL = 6
    DEBUG = 7

    @property
    def label(self) -> str:
        """Falco's canonical spelling, as used in JSON alerts: ``Critical``."""
        return self.name.capitalize()

    @classmethod
    def parse(cls, text: object) -> Priority:
        """Case-insensitive full name, or ``info``; raise ``ValueError``.

        Falco's old prefix spellings (``crit``, ``warn``) are refused on purpose:
        they are ambiguous to readers and newer Falco refuses them too.
        """
        if isinstance(text, str):
            key = text.strip().upper()
            if key == "INFO":
                return cls.INFORMATIONAL
            try:
                return cls[key]
            except KeyError:
                pass
        names = ", ".join(p.label for p in cls)
        raise ValueError(f"unknown priority {text!r} (expected one of {names}, or Info)")
