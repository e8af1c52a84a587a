"""Reading a whole file whose size is not to be trusted.

Rule and config files are read whole before they are parsed.  A path that
names ``/dev/zero``, a FIFO or a runaway generated file must not make eventd
read until memory runs out, so these reads stop one byte past a limit and
refuse the file: the biggest real rule files (Falco's own, several thousand
rules) are well under 1 MiB, so 16 MiB leaves room and still bounds memory.
"""

from __future__ import annotations

from pathlib import Path

#: Largest rules or config file read, in bytes.
MAX_FILE_BYTES = 16 << 20


class FileTooLarge(ValueError):
    """A file holds more than the limit (or never ends, like ``/dev/zero``)."""

    def __init__(self, path: str | Path, limit: int) -> None:
        super().__init__(f"{path}: larger than {limit} bytes")
        self.path = str(path)
        self.limit = limit


def read_bounded(path: str | Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The content of ``path``; ``FileTooLarge`` past ``limit`` bytes.

    One read of ``limit + 1`` bytes: never more is held, whatever the file.
    """
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(path, limit)
    return data
