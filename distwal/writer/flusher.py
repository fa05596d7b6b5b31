"""The writer's flusher thread: group commit, cutting blocks on a full disk, the pending budget.

It takes the sealed blocks from the writer's buffer, writes them in order with one writev,
and fdatasyncs once per group commit, and only when something is new. A block that cannot
be written (disk full, EIO) stays in memory and is retried in order; the thread keeps
beating meanwhile, so another host's leader never takes a writer that cannot write for dead.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import select
import signal
import threading
import time
from array import array
from typing import Any, Callable

from .._config import Config
from .._cursor import read_cursors
from .._record import Sealed, timestamps_bytes
from .._signals import start_background_thread
from .folder import Folder

logger = logging.getLogger("distwal")

ERROR_BACKOFF = 0.5  # seconds between retries after a failed write (disk full, EIO)
HEADROOM = 16 * 1024  # bytes of a full disk left for the marks (heartbeat, finish) liveness reads

# A block the writer sealed: (its first seq, the records' timestamps, their payload lines).
Block = tuple[int, "array[float]", bytearray]


class Flusher:
    """Writes what the writer's buffer holds into its folder, on a thread of its own.

    The writer hands it three callables: `take()` returns the sealed blocks (sealing the one
    being filled), `release(n)` gives n written bytes back to the buffer's budget, and
    `counts()` returns (last seq logged, records dropped) for the heartbeat.
    """

    def __init__(
        self,
        config: Config,
        folder: Folder,
        take: Callable[[], list[Block]],
        release: Callable[[int], None],
        counts: Callable[[], tuple[int, int]],
    ) -> None:
        self.config = config
        self.folder = folder
        self._take = take
        self._release = release
        self._counts = counts
        self._fdatasync = config.durability != "none"
        self._progress = threading.Condition()  # durable_seq moved
        # The thread sleeps on a pipe, not an Event: writing a byte takes no lock, so the
        # SIGTERM handler can wake it whatever the interrupted thread was holding.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.resignal = 0  # a signal to deliver again once the buffer is written
        self._unwritten: collections.deque[Sealed] = collections.deque()  # taken, not yet on disk
        self._disk_full = False  # ENOSPC lately: write only what leaves HEADROOM free
        self._written_seq = 0
        self.durable_seq = 0
        self._stopping = False
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None
        self._begin_folder()

    def _begin_folder(self) -> None:
        self.durable_at = (0, 0)  # (segment, offset) just past the last durable block
        self._acked_at = (0, 0)  # (segment, offset) the sink has acknowledged, per the cursor book
        self._segment_sizes: dict[int, int] = {}
        self.pending_bytes = 0

    def start(self) -> None:
        """Write the first heartbeat of the claimed folder and start the thread."""
        self.heartbeat("live")
        self._thread = start_background_thread(self._run, "distwal-flusher")

    # -- what the writer calls ------------------------------------------------------------

    def poke(self) -> None:
        """Wake the thread now (safe in a signal handler: no lock)."""
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the thread is awake anyway

    def stopped(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def wait_durable(self, seq: int, timeout: float | None) -> bool:
        """True once `seq` is durable; False at the timeout or if the thread ended first."""
        if self.durable_seq >= seq:
            return True
        self.poke()
        with self._progress:
            return self._progress.wait_for(lambda: self.durable_seq >= seq or self.stopped(), timeout) and (
                self.durable_seq >= seq
            )

    def wait_briefly(self, seq: int, grace: float) -> None:
        """wait_durable() for a signal handler: polls, takes no lock."""
        self.poke()
        deadline = time.monotonic() + grace
        while self.durable_seq < seq and not self.stopped() and time.monotonic() < deadline:
            time.sleep(0.002)

    def stop(self, timeout: float) -> None:
        """Write what is left, then end the thread (the writer accepts no more records)."""
        self._stopping = True
        self.poke()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(max(0.1, timeout))
            if not self._thread.is_alive():
                self.close_wake_pipe()

    def heartbeat(self, state: str) -> None:
        seq, dropped = self._counts()
        self.folder.write_heartbeat(state, seq, self.durable_seq, self.durable_at, dropped, self.last_error)

    def mark_finished(self, logged_seq: int, end: dict[str, Any]) -> bool:
        """The finish mark, then the last heartbeat; False (and logged) when they cannot be written."""
        try:
            lost = logged_seq - self.durable_seq  # logged but not durable at the finish
            self.folder.write_finish(self.durable_seq, self.durable_at, self._counts()[1], lost, end)
            self.heartbeat("finished")
        except OSError as exc:
            logger.error("distwal: cannot write the finish mark of %s: %s", self.folder.id, exc)
            return False
        return True

    def close_wake_pipe(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        interval = self.config.interval
        next_heartbeat = time.monotonic() + self.config.heartbeat_interval
        while True:
            if select.select([self._wake_r], [], [], interval)[0]:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            stopping = self._stopping  # read before commit() takes the blocks: none come after
            try:
                self.commit()
            except OSError as exc:
                self._note_error(exc)
                if stopping:
                    break
                # Keep beating (with the error): a writer that cannot write is not dead, and
                # another host's leader must not take it for dead.
                next_heartbeat = self._beat_if_due(next_heartbeat)
                time.sleep(ERROR_BACKOFF)
                continue
            if self.resignal:
                signum, self.resignal = self.resignal, 0
                # To the main thread, where the handler runs again now that log() let go.
                signal.pthread_kill(threading.main_thread().ident or 0, signum)
            if stopping and not self._unwritten:
                break
            next_heartbeat = self._beat_if_due(next_heartbeat)
        with self._progress:
            self._progress.notify_all()

    def _beat_if_due(self, due: float) -> float:
        """Renew the heartbeat when `due` (monotonic) has passed; return the next due time."""
        if time.monotonic() < due:
            return due
        try:
            if self.folder.adopted():
                self._reincarnate()
            if self.config.max_pending_bytes is not None:
                self.refresh_acked()
            self.heartbeat("live")
        except OSError as exc:
            self._note_error(exc)
        return time.monotonic() + self.config.heartbeat_interval

    def _reincarnate(self) -> None:
        """Continue under a new identity after a wrongful adoption.

        What is durable in the old folder is the leader's to ship (it reads the folder
        for twice the lease); what is not yet written goes to the new folder, keeping its
        seqs, so the new writer's first seq is not 1 (meta.first_seq says where it starts).
        """
        self.folder.reclaim(first_seq=self.durable_seq + 1)
        self._begin_folder()
        self.heartbeat("live")

    def commit(self) -> None:
        """Write the sealed blocks; fdatasync once; publish the new watermark.

        A block that cannot be written (disk full, EIO) stays in memory and is retried in
        order on the next cycle; nothing behind it is written before it. Once the disk is
        full, what leaves HEADROOM free is written, the first block cut at a record boundary.
        """
        for first_seq, ts, payload in self._take():
            # Memory stays within max_buffer_bytes (no copy of the payload), and the only
            # GIL hand-offs per commit are the writev and the fdatasync.
            self._unwritten.append(Sealed.of(first_seq, timestamps_bytes(ts), payload))
        if not self._unwritten or self._over_pending_budget():
            return
        segments = self.folder.segments
        assert segments is not None
        unwritten = self._unwritten
        written = 0
        error: OSError | None = None
        try:
            while unwritten:
                self._segment_sizes[segments.index] = segments.offset
                try:
                    count = segments.append_many(self._batch())
                except OSError as exc:
                    if exc.errno != errno.ENOSPC or self._disk_full:
                        raise
                    self._disk_full = True
                    continue
                for _ in range(count):
                    block = unwritten.popleft()
                    written += len(block.payload)
                    self._written_seq = block.last_seq
            self._disk_full = False
        except OSError as exc:
            error = exc  # what was written before it is made durable all the same
        if written:
            try:
                if self._fdatasync:
                    segments.sync()
            finally:
                self._release(written)
            self.durable_at = (segments.index, segments.offset)
            with self._progress:
                self.durable_seq = self._written_seq
                self._progress.notify_all()
        if error is not None:
            raise error
        self.last_error = None

    def _batch(self) -> list[list[bytes | bytearray]]:
        """The unwritten blocks to write now: all of them, unless the disk was full lately;
        then those that leave HEADROOM free, the first one cut at a record boundary if need be."""
        unwritten, tag = self._unwritten, self.folder.tag
        if not self._disk_full:
            return [block.parts(tag) for block in unwritten]
        room = self.folder.free_bytes() - HEADROOM
        batch = []
        for block in unwritten:
            if block.size > room:
                break
            batch.append(block.parts(tag))
            room -= block.size
        if batch:
            return batch
        halves = unwritten[0].split(room)
        if halves is None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        unwritten.popleft()
        unwritten.extendleft(reversed(halves))
        return [halves[0].parts(tag)]

    def _over_pending_budget(self) -> bool:
        """True while the bytes on disk not yet acknowledged exceed max_pending_bytes.

        Nothing more is written then; the buffer fills and on_full applies. The acknowledged
        position comes from the cursor book, refreshed with each heartbeat.
        """
        budget = self.config.max_pending_bytes
        segments = self.folder.segments
        if budget is None or segments is None:
            return False
        sizes = self._segment_sizes
        sizes[segments.index] = segments.offset
        acked = self._acked_at
        pending = sum(size for index, size in sizes.items() if index > acked[0])
        pending += max(0, sizes.get(acked[0], 0) - acked[1])
        self.pending_bytes = pending
        return pending >= budget

    def refresh_acked(self) -> None:
        """Read what the sink acknowledged of this writer from the cursor book (the pending budget)."""
        pos = read_cursors(self.config.dir).get(self.folder.id)
        if pos is not None:
            self._acked_at = (pos.segment, pos.offset)
            for index in [i for i in self._segment_sizes if i < pos.segment]:
                del self._segment_sizes[index]

    def _note_error(self, exc: OSError) -> None:
        message = f"{exc.strerror or exc} ({exc.filename or 'segment'})"
        if message != self.last_error:
            logger.error("distwal: writer %s cannot write: %s; keeping records in memory", self.folder.id, message)
        self.last_error = message
