"""``eventd scan``'s second process: it reads the input and runs the prefilter.

A scan of a file does two kinds of work.  Reading it and judging every
line by its routing header (``scanner.judge_blocks``) is most of the time
on a log where few lines can alert; parsing, matching and rendering the
kept lines is most of it where many do.  The first kind needs nothing from
the second: the prefilter's verdict on a line depends only on the rules,
never on what earlier lines held.  So on a machine with a spare CPU the
scan forks once, after loading its rules: the child reads and judges, and
sends each block's kept lines (with their routes and the input position)
down a pipe; the parent parses and matches them, in the order of the input.

Everything the user sees comes from the parent, exactly as from a scan in
one process: alerts and rejected lines in input order with their line
numbers, the same statistics, the same errors (a read error in the child
is raised again in the parent, after the blocks before it).  If the child
dies, the parent says so (``PrefilterProcessError``) instead of reporting a
partial scan as whole.  If the parent stops early (an error, ``| head``,
Ctrl-C), the child is killed and reaped.

What the child holds is bounded: one block and the pipe's buffer.  When the
parent falls behind, the child blocks on the pipe.
"""

from __future__ import annotations

import marshal
import os
import signal
from collections.abc import Iterator
from typing import BinaryIO

from eventd.engine.index import Prefilter
from eventd.scanner import PREFILTER_PROCESS_MIN_BYTES as MIN_BYTES
from eventd.scanner import Judged, judge_blocks

_HEADER = 8  # bytes of a frame's length
_BLOCK, _END, _ERROR = 0, 1, 2


class PrefilterProcessError(OSError):
    """The prefilter process ended before the input did."""


def worthwhile(raw: BinaryIO) -> bool:
    """Whether a second process would speed up scanning ``raw``: a regular
    file of at least ``MIN_BYTES``, a second CPU this process may use, and
    no other thread (forking a process that has threads can deadlock the
    child on a lock one of them held)."""
    try:
        size = os.fstat(raw.fileno()).st_size
    except (OSError, ValueError):
        return False
    affinity = getattr(os, "sched_getaffinity", None)  # Linux
    cpus = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    if size < MIN_BYTES or cpus < 2 or not hasattr(os, "fork"):
        return False
    import threading

    return threading.active_count() == 1


class PrefilterProcess:
    """The child judging ``stream``'s blocks, as an iterator of
    ``(judged block, input position)`` in input order (``Scanner.scan_judged``).

    Use it as a context manager: leaving it kills and reaps the child
    whether the input was read to its end or not.
    """

    def __init__(
        self, stream: BinaryIO, raw: BinaryIO, prefilter: Prefilter | None, block_size: int, max_line: int
    ) -> None:
        read_end, write_end = os.pipe()
        try:
            self.pid = os.fork()
        except OSError:
            os.close(read_end)
            os.close(write_end)
            raise
        if self.pid == 0:  # the child: never returns
            os.close(read_end)
            _child(stream, raw, prefilter, block_size, max_line, write_end)
        os.close(write_end)
        self._pipe = open(read_end, "rb", buffering=1 << 20)  # noqa: SIM115  # closed by close()
        self._status: int | None = None

    def __enter__(self) -> PrefilterProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[tuple[Judged, int]]:
        read = self._pipe.read
        while True:
            header = read(_HEADER)
            size = int.from_bytes(header, "little") if len(header) == _HEADER else 0
            frame = read(size) if size else b""
            if not frame or len(frame) != size:  # the child died before or while writing it
                raise PrefilterProcessError(f"the prefilter process ended early ({self._end()})")
            kind, payload = frame[0], memoryview(frame)[1:]
            if kind == _BLOCK:
                block, position = marshal.loads(payload)
                yield block, position
            elif kind == _END:
                return
            else:
                import pickle  # only for this error: it costs start-up a few ms

                raise pickle.loads(payload)  # the child's read error, as a scan in one process raises it

    def close(self) -> None:
        """Kill the child if it still runs, and reap it."""
        if self._status is None:  # not reaped, so the pid is still its own (a zombie at worst)
            os.kill(self.pid, signal.SIGKILL)
            self._end()
        self._pipe.close()

    def _end(self) -> str:
        """Reap the child (once) and say how it ended."""
        if self._status is None:
            _, self._status = os.waitpid(self.pid, 0)
        if os.WIFSIGNALED(self._status):
            return f"killed by signal {os.WTERMSIG(self._status)}"
        return f"exit status {os.waitstatus_to_exitcode(self._status)}"


def _child(
    stream: BinaryIO, raw: BinaryIO, prefilter: Prefilter | None, block_size: int, max_line: int, pipe: int
) -> None:
    """Judge every block and send it; exit without running the parent's
    clean-up (``os._exit``: the parent's buffered alerts are not flushed twice)."""
    code = 0
    try:
        # SIGINT as the parent has it: Ctrl-C ends both (the parent reports
        # it), and a scan started with SIGINT ignored ignores it in both.
        with open(pipe, "wb", buffering=1 << 16) as out:
            try:
                for block in judge_blocks(stream, prefilter, block_size, max_line):
                    _send(out, _BLOCK, marshal.dumps((block, raw.tell())))
            except Exception as err:  # a read error: the parent raises it where a scan in one process would
                _send(out, _ERROR, _pickled(err))
            else:
                _send(out, _END, b"")
    except BaseException:  # the parent went away (a broken pipe) or Ctrl-C: nothing to tell anyone
        code = 1
    finally:
        os._exit(code)


def _send(out: BinaryIO, kind: int, payload: bytes) -> None:
    out.write((len(payload) + 1).to_bytes(_HEADER, "little"))
    out.write(bytes((kind,)))
    out.write(payload)


def _pickled(err: Exception) -> bytes:
    """``err`` for the parent; as an ``OSError`` naming it if it cannot be pickled."""
    import pickle

    try:
        data = pickle.dumps(err)
        pickle.loads(data)
    except Exception:
        return pickle.dumps(OSError(f"{type(err).__name__}: {err}"))
    return data
