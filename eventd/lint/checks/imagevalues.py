"""What an image field and an image value look like, for the checks.

The checks reason about granularity: a *registry* (``myregistry.io``), a
*name* (registry and path, no tag: ``myregistry.io/team/app``) and a *raw*
reference as written (``nginx:1.25``).  Field names decide the first; the
value's spelling decides the second.
"""

from __future__ import annotations

REGISTRY = "registry"
NAME = "name"
RAW = "raw"


def field_kind(name: str) -> str | None:
    """The granularity of an image field, or ``None`` for other fields."""
    if name.endswith(".registry"):
        return REGISTRY
    if name.endswith((".repository", ".image.name", ".images.name", ".image.familiar", ".images.familiar")):
        return NAME
    if name.endswith((".image", ".image.raw", ".images.raw")) or name == "ka.target.image":
        return RAW
    return None


def is_bare_registry(value: str) -> bool:
    """``myregistry.io``, ``reg:5000``, ``localhost``: a host with no path."""
    v = value.strip().rstrip("/") if value.endswith("/") and value.count("/") == 1 else value.strip()
    if "/" in v or not v:
        return False
    return "." in v or ":" in v or v == "localhost"


def looks_like_location(value: str) -> bool:
    """A registry, or a registry-qualified path prefix (``gcr.io/my-project``)."""
    head = value.split("/", 1)[0]
    return bool(head) and ("." in head or ":" in head or head == "localhost")
