"""The ``audit_log`` source: tail kube-apiserver's audit log file.

The log backend writes one JSON ``Event`` per line and rotates with
lumberjack: the live file is renamed to ``<stem>-<UTC time><ext>`` (later
gzip-compressed and pruned) and a new file is created under the configured
name.  Some clusters truncate it in place instead (logrotate
``copytruncate``).  This source follows the name across both by polling
(every ``poll_interval_seconds``, and at once while there is data): a
renamed file is read to its end through the descriptor we hold (the writer
closes it before renaming), then the backups rotated after it, then the new
live file from its start.

Delivery is ordered per file and at-least-once.  The read position is
committed only when the pipeline resolves a batch's ``done``, in hand-over
order, and persisted atomically by a writer task, so a restart resumes
right after the last event whose alerts reached the sinks.  What can still
be read twice (a crash between a batch completing and its position reaching
the disk, or the source being re-run in the same process) is dropped by
``(auditID, stage)`` within ``dedup_window_seconds``.

Where reading starts:

* a checkpoint exists: exactly there; if that file was rotated while eventd
  was down it is found among the backups (device and inode, else content
  fingerprint), finished, then every newer backup, then the live file;
* a checkpoint that is unusable (garbage, empty, bad CRC, a directory,
  unreadable): the live file from its start (every backup first with
  ``backfill``), logged with the checkpoint's name and counted in
  ``eventd_checkpoint_unusable_total``; the damaged file is moved aside;
* no checkpoint and ``backfill``: every backup, oldest first, then the live
  file from its start;
* otherwise: the end of the live file, so only new events (the first save
  of a configured checkpoint records that point); a live file that does
  not exist yet is read from its start once it appears.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from eventd.checks import input_file
from eventd.config import AuditLogConfig
from eventd.events.decode import decode_document
from eventd.events.dedup import RecentKeys, drop_duplicates
from eventd.events.errors import DecodeError
from eventd.events.model import Event
from eventd.metrics import Metrics
from eventd.sources.base import Batch, Inlet, RecordFilterLike, Source, record_filter
from eventd.sources.checkpoint import Checkpoint, CheckpointStore, Unusable
from eventd.sources.linereader import Backup, GzipLog, distinctive, read_head, rotated_files
from eventd.sources.tail import LogFile, PlainLog, follow

log = structlog.get_logger(__name__)

#: Bytes read from a file at a time.
READ_BYTES = 256 * 1024
#: A batch is handed over after this many lines or this many bytes of lines.
BATCH_LINES = 500
BATCH_BYTES = 256 * 1024
#: How long ``stop`` waits for the pipeline to finish batches already handed over.
DRAIN_TIMEOUT_SECONDS = 10.0
#: Longest wait before retrying after a file system error.
RETRY_MAX_SECONDS = 5.0


class AuditLogSource(Source):
    """Tail ``config.path``; see the module docstring for the guarantees."""

    config_key = "sources.audit_log"

    def __init__(
        self, config: AuditLogConfig, metrics: Metrics, *, drain_timeout: float = DRAIN_TIMEOUT_SECONDS
    ) -> None:
        input_file(config.path, f"{self.config_key}.path", must_exist=False)  # followed: may come later
        self.config = config
        self._metrics = metrics
        self._drain_timeout = drain_timeout
        self._store = CheckpointStore(config.checkpoint) if config.checkpoint is not None else None
        self._recent = RecentKeys(config.dedup_window_seconds, config.dedup_max_entries)
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._finished.set()
        self._started = False
        #: Places where data may have been lost, by reason: ``truncated``
        #: (copied and truncated under us) or ``file_missing`` (the
        #: checkpointed file was pruned while eventd was down).
        self.possible_losses: collections.Counter[str] = collections.Counter()
        self._up = metrics.source_up.labels(source=self.name)
        self._duplicates = metrics.events_dropped.labels(source=self.name, reason="duplicate")
        self._log = log.bind(source=self.name, path=str(config.path))
        # Replaced by each run of ``run``:
        self._commits = _Commits(self._log, self._forget_recent)
        self._inlet: Inlet
        self._stop_waiter: asyncio.Future[object]

    def ready(self) -> bool:
        return self._started

    @property
    def committed(self) -> Checkpoint | None:
        """The position after the last data the pipeline finished with."""
        return self._commits.committed

    async def run(self, inlet: Inlet) -> None:
        self._finished.clear()
        self._inlet = inlet
        self._commits = commits = _Commits(self._log, self._forget_recent)
        self._stop_waiter = asyncio.ensure_future(self._stopping.wait())
        writer = asyncio.ensure_future(self._persist(commits)) if self._store is not None else None
        self._started = True
        try:
            await self._follow()
            await commits.settle(self._drain_timeout)
            if writer is not None:
                writer.cancel()
                await asyncio.wait((writer,))
                writer = None
                self._save(commits.committed, commits.seq)
        finally:
            self._stop_waiter.cancel()
            if writer is not None:
                writer.cancel()
            self._up.set(0)
            self._finished.set()

    async def stop(self) -> None:
        """Stop reading, wait (bounded) for handed-over batches, save the position."""
        self._stopping.set()
        if self._finished.is_set():
            return
        try:
            await asyncio.wait_for(self._finished.wait(), self._drain_timeout + 5.0)
        except TimeoutError:
            self._log.warning("audit_log_stop_timeout")

    # ------------------------------------------------------------ following

    async def _follow(self) -> None:
        retry = self.config.poll_interval_seconds
        while not self._stopping.is_set():
            file: LogFile | None = None
            try:
                file = await self._open_first()
                while file is not None:
                    retry = self.config.poll_interval_seconds
                    if not await self._read_file(file):
                        return
                    last = file.checkpoint(file.offset)
                    file.close()
                    file = None
                    self._up.set(0)
                    file = await self._open_next(last)
                return
            except OSError as err:
                self._log.warning("audit_log_read_error", error=str(err), retry_seconds=retry)
                self._metrics.source_reconnects.labels(source=self.name).inc()
            finally:
                if file is not None:
                    file.close()
                self._up.set(0)
            await self.sleep(retry)
            retry = min(retry * 2, RETRY_MAX_SECONDS)

    async def _open_first(self) -> LogFile | None:
        """Where to start: the committed position, the checkpoint, or the rules
        for a first start (module docstring)."""
        resume = self._commits.committed
        if resume is None and self._store is not None:
            loaded = self._store.load()
            if isinstance(loaded, Unusable):
                return await self._reread(loaded)
            resume = loaded
        if resume is not None:
            file = self._locate(resume)
            if file is not None:
                return self._opened(file)
            self._lost("file_missing", checkpoint_file=resume.path, offset=resume.offset)
            return await self._open_next(resume)
        if self.config.backfill:
            return await self._open_next(None)
        try:
            file = PlainLog(self.config.path, self.config.max_line_bytes, None, follow=True)
        except FileNotFoundError:
            return await self._open_next(None, backups=False)
        return self._opened(file)

    async def _reread(self, unusable: Unusable) -> LogFile | None:
        """Start over after an unusable checkpoint: the live file from its
        start (every backup first with ``backfill``).  Starting at the end, as
        a first start does, would skip what was written while eventd was
        down; re-reading costs duplicates with the same alert uuid, and the
        dedup table drops those the source already saw in this process."""
        assert self._store is not None
        self._metrics.checkpoint_unusable.labels(self.name, unusable.reason).inc()
        self._log.warning(
            "audit_log_checkpoint_reread",
            checkpoint=str(self._store.path),
            reason=unusable.reason,
            error=unusable.error,
            moved_to=str(unusable.moved_to) if unusable.moved_to else None,
        )
        return await self._open_next(None, backups=self.config.backfill)

    def _locate(self, cp: Checkpoint) -> LogFile | None:
        """Open the file ``cp`` points into, at its offset; None if it is gone."""
        live = self._open_live()
        if live is not None:
            if (live.device, live.inode) == (cp.device, cp.inode) and cp.same_content(live.head):
                return self._resume(live, cp)
            live.close()
        backups = rotated_files(self.config.path)
        i = _find(cp, backups)
        if i is None:
            return None
        return self._resume(self._open_backup(backups[i]), cp)

    def _resume(self, file: LogFile, cp: Checkpoint) -> LogFile:
        offset = cp.offset
        if isinstance(file, PlainLog) and file.size() < offset:
            self._lost("truncated", file=str(file.path), offset=offset)
            offset = 0
        file.start_at(offset)
        self._log.info("audit_log_resumed", file=str(file.path), offset=offset)
        return file

    async def _open_next(self, last: Checkpoint | None, *, backups: bool = True) -> LogFile | None:
        """The file after ``last`` (None: the oldest backup), waiting for one."""
        while not self._stopping.is_set():
            live = self._open_live()
            try:
                backup = self._next_backup(last, live) if backups else None
            except BaseException:
                if live is not None:
                    live.close()
                raise
            if backup is not None:
                if live is not None:
                    live.close()
                try:
                    return self._opened(self._open_backup(backup))
                except FileNotFoundError:
                    pass  # compressed or pruned since the listing: look again
            elif live is not None:
                return self._opened(live)
            await self.sleep(self.config.poll_interval_seconds)
        return None

    def _next_backup(self, last: Checkpoint | None, live: PlainLog | None) -> Backup | None:
        backups = rotated_files(self.config.path)
        if last is not None:
            i = _find(last, backups)
            if i is not None:
                backups = backups[i + 1 :]
            else:
                # ``last`` is gone: keep what may have been rotated after it.
                floor = last.mtime_ns // 1_000_000
                backups = [b for b in backups if b.stamp_ms >= floor]
        if not backups:
            return None
        if live is not None and _find(live.checkpoint(0), backups[:1]) is not None:
            return None  # the live file was rotated after we opened it: read it through our descriptor
        return backups[0]

    def _open_live(self) -> PlainLog | None:
        try:
            return PlainLog(self.config.path, self.config.max_line_bytes, 0, follow=True)
        except FileNotFoundError:
            return None

    def _open_backup(self, backup: Backup) -> LogFile:
        if backup.gz:
            return GzipLog(backup.path, self.config.max_line_bytes, 0, backup.stamp_ms)
        return PlainLog(backup.path, self.config.max_line_bytes, 0)

    def _opened(self, file: LogFile) -> LogFile:
        self._commits.add(file.checkpoint(file.offset), None)
        self._up.set(1)
        self._log.debug("audit_log_opened", file=str(file.path), offset=file.offset)
        return file

    async def _read_file(self, file: LogFile) -> bool:
        """Read ``file`` until it is finished (True) or the source stops (False)."""
        if not (isinstance(file, PlainLog) and file.follow):
            return await self.read_available(file) and await self.finish(file)
        return await follow(file, self, self.config.poll_interval_seconds)

    # ``TailReader``: how ``tail.follow`` consumes the live file.

    def stopping(self) -> bool:
        return self._stopping.is_set()

    def truncated(self, file: PlainLog, was_at: int, lost_partial: bool) -> None:
        self._lost("truncated", file=str(file.path), offset=was_at)
        self._commits.add(file.checkpoint(0), None)

    async def read_available(self, file: LogFile) -> bool:
        """Read ``file`` up to its current end, handing over batches of
        complete lines; False if the source is stopping."""
        inlet, name = self._inlet, self.name
        events: list[Event] = []
        lines = size = end = skipped = 0
        # One rule set per batch (``pipeline.RecordFilter``): lines no rule can
        # match are counted, not decoded; their position still moves on.
        prefilter = record_filter(inlet)
        skippable = None if prefilter is None else prefilter.skippable
        while not self._stopping.is_set():
            chunk = file.read(READ_BYTES)
            if not chunk:
                if lines:
                    return await self._emit(file, events, end, prefilter, skipped)
                return True
            for line, end in file.splitter.feed(chunk):
                lines += 1
                if line is None:
                    inlet.rejected(name, "line_too_long")
                elif skippable is not None and skippable(line):
                    skipped += 1
                elif line and not line.isspace():
                    size += len(line)
                    self._decode(line, events)
                if lines >= BATCH_LINES or size >= BATCH_BYTES:
                    if not await self._emit(file, events, end, prefilter, skipped):
                        return False
                    events = []
                    lines = size = skipped = 0
                    prefilter = record_filter(inlet)
                    skippable = None if prefilter is None else prefilter.skippable
            await asyncio.sleep(0)  # a long catch-up must not starve the loop
        return False

    async def finish(self, file: LogFile) -> bool:
        """Hand over an unterminated last line of a file that will not grow."""
        rest = file.splitter.flush()
        if rest is None:
            return True
        line, end = rest
        events: list[Event] = []
        if line is None:
            self._inlet.rejected(self.name, "line_too_long")
        elif not line.isspace():
            self._decode(line, events)
        return await self._emit(file, events, end)

    def _decode(self, line: bytes, events: list[Event]) -> None:
        try:
            decoded, errors = decode_document(line, origin="file")
        except DecodeError as err:
            self._inlet.rejected(self.name, err)
            return
        events.extend(decoded)
        for error in errors:
            self._inlet.rejected(self.name, error)

    async def _emit(
        self,
        file: LogFile,
        events: list[Event],
        end: int,
        prefilter: RecordFilterLike | None = None,
        skipped: int = 0,
    ) -> bool:
        """Hand over the events of the lines before ``end`` (``skipped`` lines
        among them dropped by ``prefilter``); False if stopping."""
        position = file.checkpoint(end)
        if prefilter is not None:
            prefilter.skipped(self.name, skipped)
        if events:
            events, dropped = drop_duplicates(events, self._recent)
            if dropped:
                self._duplicates.inc(dropped)
        if not events:
            self._commits.add(position, None)
            return True
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch = Batch(events, self.name, done)
        batch.prefiltered_with = None if prefilter is None else prefilter.matcher
        if not await self._put(batch):
            return False
        self._commits.add(position, done)
        return True

    async def _put(self, batch: Batch) -> bool:
        """``inlet.put`` that gives up when the source stops."""
        put = asyncio.ensure_future(self._inlet.put(batch))
        try:
            await asyncio.wait((put, self._stop_waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not put.done():
                put.cancel()
                self._forget_recent()
        if put.cancelled():
            return False
        put.result()
        return True

    def _forget_recent(self) -> None:
        """Events were marked as seen but not handed over, or handed over but
        failed: forget every key rather than drop them when read again."""
        self._recent = RecentKeys(self.config.dedup_window_seconds, self.config.dedup_max_entries)

    async def sleep(self, seconds: float) -> None:
        await asyncio.wait((self._stop_waiter,), timeout=seconds)

    def _lost(self, reason: str, **fields: object) -> None:
        self.possible_losses[reason] += 1
        self._metrics.source_possible_loss.labels(self.name, reason).inc()
        self._log.warning("audit_log_possible_loss", reason=reason, **fields)

    # ---------------------------------------------------------- persisting

    async def _persist(self, commits: _Commits) -> None:
        """Save each newly committed position, coalescing while a save runs."""
        while True:
            await commits.changed.wait()
            commits.changed.clear()
            await asyncio.to_thread(self._save, commits.committed, commits.seq)

    def _save(self, cp: Checkpoint | None, seq: int) -> None:
        if cp is None or self._store is None:
            return
        try:
            self._store.save(cp, seq)
        except OSError as err:
            self._log.error(
                "audit_log_checkpoint_write_failed", checkpoint=str(self._store.path), error=str(err)
            )


def _find(ident: Checkpoint, backups: list[Backup]) -> int | None:
    """Index of the backup that is the file ``ident`` describes, if any:
    the same device and inode with the same start (a renamed file), else the
    same distinctive start (a compressed copy)."""
    for i, backup in enumerate(backups):
        try:
            st = backup.path.stat()
        except FileNotFoundError:
            continue
        if (st.st_dev, st.st_ino) == (ident.device, ident.inode) and ident.same_content(read_head(backup)):
            return i
    n = ident.fingerprint_bytes
    if n == 0:
        return None
    # Backups rotated after the file was last seen come first; the others are
    # still searched, in case the names are not in UTC.
    floor = ident.mtime_ns // 1_000_000
    for i in sorted(range(len(backups)), key=lambda i: backups[i].stamp_ms < floor):
        head = read_head(backups[i])
        if ident.same_content(head) and distinctive(head[:n]):
            return i
    return None


class _Commits:
    """Positions in hand-over order; committed once their batch and all
    before it are done.

    A batch the pipeline failed (its ``done`` cancelled or raising) stops
    committing for the rest of the run: its data must be read again, and
    ``on_failure`` makes sure it is not then dropped as a duplicate (nor is
    any later batch that fails).
    """

    def __init__(self, logger: Any, on_failure: Callable[[], None]) -> None:
        self._log = logger
        self._on_failure = on_failure
        self._pending: deque[tuple[asyncio.Future[None] | None, Checkpoint]] = deque()
        self._failed = False
        #: The position after the last finished data, and when it was reached.
        self.committed: Checkpoint | None = None
        self.seq = 0
        #: Set when ``committed`` moves.
        self.changed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, position: Checkpoint, done: asyncio.Future[None] | None) -> None:
        if done is not None:
            done.add_done_callback(self._done)
        if self._failed:
            return
        self._pending.append((done, position))
        self._advance()

    async def settle(self, timeout: float) -> None:
        """Wait up to ``timeout`` for every handed-over batch to be done."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            self._log.warning("audit_log_batches_unfinished", batches=len(self._pending))

    def _done(self, done: asyncio.Future[None]) -> None:
        if done.cancelled() or done.exception() is not None:
            if not self._failed:
                self._log.warning("audit_log_batch_failed", batches_uncommitted=len(self._pending))
            self._failed = True
            self._pending.clear()
            self._on_failure()
        self._advance()

    def _advance(self) -> None:
        pending = self._pending
        moved: Checkpoint | None = None
        while pending:
            done, position = pending[0]
            if done is not None and (not done.done() or done.cancelled() or done.exception() is not None):
                break  # not finished, or failed (``_done`` handles that)
            pending.popleft()
            moved = position
        if moved is not None:
            self.committed = moved
            self.seq = time.monotonic_ns()
            self.changed.set()
        if pending:
            self._idle.clear()
        else:
            self._idle.set()
