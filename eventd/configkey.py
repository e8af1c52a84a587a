"""A component's config key (``sinks.webhook``) and the name derived from it.

Each source and sink declares where it is configured once, as its class
attribute ``config_key``.  Everything else follows from it: its name in logs
and metrics (the key's last part, set here when the class is defined), the
keys its config errors name (``f"{self.config_key}.url"``), and its entry in
``eventd.components`` (checked against it when the class is loaded, and by
``tests/test_components.py`` against the sections of ``eventd.config``).
"""

from __future__ import annotations


def declared_name(cls: type, section: str) -> str:
    """The name ``cls`` gets from its ``config_key``, which must read
    ``<section>.<name>``; a class that also spells ``name`` out is refused,
    so the two cannot disagree."""
    key = vars(cls)["config_key"]
    prefix, _, name = key.partition(".") if isinstance(key, str) else ("", "", "")
    if prefix != section or not name.isidentifier():
        raise TypeError(f"{cls.__qualname__}.config_key must read '{section}.<name>', got {key!r}")
    if "name" in vars(cls):
        raise TypeError(f"{cls.__qualname__} declares name as well as config_key: the name is derived")
    return name
