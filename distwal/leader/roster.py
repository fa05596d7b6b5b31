"""The writers a leader tracks: found, judged alive or dead, adopted, retired.

Writers are found in writers/ (and in adopted/, where an earlier leader moved dead ones).
A dead writer is adopted: its folder moves to adopted/, it is shipped from there, then
removed. A finished writer is removed once delivered through its finish mark. Either way
a tombstone in history/ keeps what status shows of it. Each writer's cursor (its Position
in the book) lives here too, because retiring a writer must make the book durable before
the files it covers go.

The one drain rule lives here as well (drained()): `distwal drain`, `distwal run` and a
rank's finish() all end a drain on it.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from typing import Any, Callable, Mapping

from .. import _files, _layout
from .._cursor import Position, read_cursors, write_cursors
from .._ends import last_sign_of_life, writer_end
from .._exceptions import SinkError
from .._folder import load_writer
from .._layout import ADOPTED, HISTORY, Modes
from .._marks import Finish, Tombstone
from .._segment import last_seq_on_disk
from ..sinks import Sink
from .election import LeaseKeeper, LostLeadership
from .health import Health
from .liveness import LivenessJudge
from .reading import Tracked

logger = logging.getLogger("distwal")

DISCOVER_EVERY = 0.5  # seconds between listings of writers/
LIVENESS_EVERY = 0.5  # seconds between liveness checks (heartbeats change once a second)


class Roster:
    """The writer folders one leader ships, and the cursor book that says how far."""

    def __init__(
        self,
        root: str,
        lease: LeaseKeeper,
        judge: LivenessJudge,
        modes: Modes,
        health: Health,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.lease = lease
        self.judge = judge
        self.modes = modes
        self.health = health
        self.clock = clock
        self.writers: dict[str, Tracked] = {}
        self.order: deque[str] = deque()  # writer ids, in the round-robin order of reading
        self.book: dict[str, Position] = read_cursors(root)
        self._book_dirty = False
        self._ending: set[str] = set()  # finished or adopted: the only writers retire() looks at
        self._next_discover = 0.0
        self._next_liveness = 0.0
        # Descriptors, not paths, from here on: a symlink planted for one of these names is
        # refused once, here, and never followed later.
        self._fds = {sub: _files.ensure_subdir(root, sub, modes) for sub in (_layout.WRITERS, ADOPTED, HISTORY)}

    # -- looking ------------------------------------------------------------------------

    def refresh(self, now: float) -> None:
        """Discovery and liveness checks, each when it is due."""
        if now >= self._next_discover:
            self.discover()
            self._next_discover = now + DISCOVER_EVERY
        if now >= self._next_liveness:
            self.check_liveness()
            self._next_liveness = now + LIVENESS_EVERY

    def look_again(self) -> None:
        """Make discovery, liveness checks and a read of every writer due now (a drain
        begins: finish marks written a moment ago count)."""
        self._next_discover = self._next_liveness = 0.0
        for t in self.writers.values():
            t.next_check = 0.0

    def discover(self) -> None:
        """Track every writer folder not tracked yet."""
        if os.fstat(self._fds[_layout.WRITERS]).st_nlink == 0:
            raise LostLeadership(f"{self.root}/{_layout.WRITERS} was removed: starting over")
        for sub in (_layout.WRITERS, ADOPTED):
            for name in os.listdir(self._fds[sub]):
                if name not in self.writers and _layout.is_writer_id(name):
                    self._track(sub, name)
                    # A first look at 1024 writers took 9 s on a loaded machine, past a 5 s
                    # lease: renew while discovering (a clock read when not due).
                    self.lease.hold()

    def _track(self, sub: str, name: str) -> None:
        parent_fd = self._fds[sub]
        files = load_writer(parent_fd, name, os.path.join(self.root, sub, name))
        if files is None or files.meta is None:
            return  # no metadata yet: a writer being born, or debris we do not touch
        try:
            dir_fd = _files.open_dir(name, dir_fd=parent_fd)
        except OSError:
            return
        adopted = sub == ADOPTED
        tracked = Tracked(files, dir_fd, self.book.get(name, Position()), parent=sub,
                          adopted_at=self.clock() if adopted else None)
        if adopted:
            tracked.same_kernel_dead = self.judge.same_kernel(files.meta)
        self.writers[name] = tracked
        self.order.append(name)
        if adopted or files.finish is not None:
            self._ending.add(name)

    def check_liveness(self) -> None:
        """Notice finish marks, and adopt the writers proven dead."""
        for t in list(self.writers.values()):
            if t.adopted_at is not None or t.finished is not None:
                continue
            try:
                st = os.stat(_layout.HEARTBEAT, dir_fd=t.dir_fd, follow_symlinks=False)
                token: Any = (st.st_ino, st.st_mtime_ns, st.st_size)
            except OSError:
                token = None  # unreadable is not evidence of death
            # finish() writes its mark, then a last heartbeat: look for the mark only when the
            # heartbeat changed (or on first sight), not at every check of every writer.
            if token != t.heartbeat_token or not self.judge.seen(t.id):
                t.heartbeat_token = token
                if _files.exists(t.dir_fd, _layout.FINISH):
                    t.files.finish = Finish.parse(_files.read_json_quietly(t.dir_fd, _layout.FINISH))
                    t.exhausted = False
                    if t.files.finish is not None:
                        self._ending.add(t.id)
                        continue
            self.judge.observe(t.id, token)
            if self.judge.is_dead(t.id, t.files.meta):
                self._adopt(t)

    def _adopt(self, t: Tracked) -> None:
        """Move a dead writer's folder aside; it is shipped from there, then removed."""
        try:
            os.rename(t.id, t.id, src_dir_fd=self._fds[_layout.WRITERS], dst_dir_fd=self._fds[ADOPTED])
            os.fsync(self._fds[ADOPTED])
            os.fsync(self._fds[_layout.WRITERS])
        except OSError as exc:
            logger.warning("distwal: cannot adopt writer %s: %s", t.id, exc)
            return
        t.parent = ADOPTED
        t.files.path = os.path.join(self.root, ADOPTED, t.id)
        t.adopted_at = self.clock()
        self._ending.add(t.id)
        t.same_kernel_dead = self.judge.same_kernel(t.meta)
        t.exhausted = False
        t.next_check = 0.0
        self.judge.forget(t.id)
        self.health.adopted += 1
        logger.info("distwal: adopted dead writer %s (rank %s)", t.id, t.meta.rank)

    # -- the cursor book ------------------------------------------------------------------

    def move(self, t: Tracked, pos: Position) -> None:
        """A writer's new cursor, saved with the book at the next save_book()."""
        t.pos = pos
        self.book[t.id] = pos
        self._book_dirty = True

    def save_book(self) -> bool:
        """Make the cursor book durable; False (logged, retried next time) if it cannot be."""
        if not self._book_dirty:
            return True
        try:
            write_cursors(self.root, self.book, self.lease.epoch, self.modes)
        except OSError as exc:
            self.health.last_error = f"cannot save the cursor book: {exc.strerror or exc}"
            logger.error("distwal: %s; nothing is removed until it can be", self.health.last_error)
            return False
        self._book_dirty = False
        return True

    # -- retiring -------------------------------------------------------------------------

    def retire(self, sink: Sink) -> None:
        """Remove finished or adopted writers whose records are all delivered, telling `sink`."""
        for writer_id in list(self._ending):
            t = self.writers[writer_id]
            if not t.exhausted:
                continue
            if t.finished is not None:
                if t.pos.seq < t.finished.durable_seq:
                    continue
            elif t.adopted_at is None:
                continue
            elif not t.same_kernel_dead and self.clock() - t.adopted_at < 2 * self.judge.lease_s:
                continue  # another host's writer may be slow, not dead: keep reading its folder
            self._remove(t, sink)

    def _remove(self, t: Tracked, sink: Sink) -> None:
        end = _end_of(t)
        try:
            sink.writer_done(t.id, t.meta.who, end)
        except SinkError as exc:
            logger.warning("distwal: sink could not close writer %s, retrying later: %s", t.id, exc)
            return
        self.save_book()  # the cursor is durable before the files it covers go
        tombstone = Tombstone(
            writer=t.id,
            meta=t.meta,
            finish=t.finished,
            state="finished" if t.finished is not None else "adopted",
            end=end,
            acked_seq=t.pos.seq,
            dead_letters=t.pos.dead,
            quarantined_bytes=t.quarantined,
            removed=time.time(),
        )
        _files.write_atomic(self._fds[HISTORY], _layout.format_tombstone_name(t.id), tombstone.to_bytes(), self.modes)
        _files.remove_folder(self._fds[t.parent], t.id, t.dir_fd)
        t.close()
        del self.writers[t.id]
        self._ending.discard(t.id)
        self.order.remove(t.id)
        self.judge.forget(t.id)
        if t.id in self.book:
            del self.book[t.id]
            self._book_dirty = True
        self.health.retired += 1

    # -- what a drain waits for -----------------------------------------------------------

    def pending_marks(self) -> dict[str, int]:
        """Each known writer's last durable seq now: its finish mark, heartbeat, or what is on disk."""
        marks = {}
        for t in self.writers.values():
            mark = t.finished or t.heartbeat()
            noted = 0 if mark is None else mark.durable_seq
            marks[t.id] = max(noted, last_seq_on_disk(t.dir_fd, t.pos.segment, t.pos.offset, writer=t.files.tag))
        return marks

    def drained(self, marks: Mapping[str, int]) -> bool:
        """The drain rule: everything up to the marks is acknowledged and nothing is left to settle.

        `marks` are the seqs noted when the drain began (pending_marks(), or none). A writer
        no longer tracked was retired; a finished one counts once read to its end and
        acknowledged through its finish mark; a live one once acknowledged up to its mark
        (live writers are never waited for beyond it); the rest must settle first (see
        settling()).
        """
        if self.settling():
            return False
        for t in self.writers.values():
            if t.finished is not None and (not t.exhausted or t.pos.seq < t.finished.durable_seq):
                return False
            if t.pos.seq < marks.get(t.id, 0):
                return False
        return True

    def settling(self) -> list[str]:
        """Writers a drain still has to make up its mind about: adopted and not yet removed,
        or on another host and neither seen beating nor silent for a lease yet. Finished
        writers are delivered through their marks; live ones are never waited for."""
        waiting = []
        for t in self.writers.values():
            if t.finished is not None:
                continue
            if t.adopted_at is not None:
                waiting.append(t.id)
            elif not self.judge.same_kernel(t.meta) and not self.judge.seen_beating(t.id):
                waiting.append(t.id)
        return waiting

    def records_left(self, marks: Mapping[str, int]) -> int:
        """Records up to `marks` not acknowledged yet, over the writers still tracked."""
        return sum(max(0, mark - t.pos.seq) for w, mark in marks.items() if (t := self.writers.get(w)) is not None)

    def finished_pending(self) -> int:
        """Records finished writers still have to deliver."""
        return sum(max(0, t.finished.durable_seq - t.pos.seq) for t in self.writers.values() if t.finished is not None)

    def close(self) -> None:
        try:
            self.save_book()
        finally:
            for t in self.writers.values():
                t.close()
            for fd in self._fds.values():
                os.close(fd)


def _end_of(t: Tracked) -> dict[str, Any] | None:
    """How a retired writer ended, as status shows it: its finish mark's end, else lost."""
    return writer_end(t.finished, t.adopted_at is not None,
                      lambda: last_sign_of_life(t.dir_fd, t.files.tag, t.heartbeat()))
