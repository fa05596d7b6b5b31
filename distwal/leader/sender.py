"""The leader loop: read every writer from its cursor, send batches, save cursors on ack.

Order of effects, always: the sink acknowledges, the cursor book is durable, and only
then are acknowledged segments unlinked. Dead writers are adopted (their folder moved to
adopted/), shipped, and removed; finished writers are removed once delivered, leaving a
tombstone in history/. A damaged span below a writer's durable watermark is copied to
quarantine/ and skipped; above it, it is simply not written yet.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from .. import _files, _layout
from .._ends import last_sign_of_life, writer_end
from .._exceptions import SinkError, SinkPaused, SinkRejected, SinkTooLarge, SinkUnavailable, StaleEpoch
from .._folder import load_writer
from .._layout import ADOPTED, DEADLETTERS, HISTORY, QUARANTINE, SENDER, Modes
from .._marks import Finish, Tombstone
from .._segment import last_seq_on_disk
from ..sinks import Batch, Chunk, Sink
from .cursor import Position, read_cursors, write_cursors
from .election import LeaseKeeper
from .liveness import LivenessJudge
from .reading import FolderReader, Tracked

logger = logging.getLogger("distwal")


DEFAULT_BATCH_RECORDS = 20_000
DEFAULT_BATCH_BYTES = 4 << 20
BUSY_PAUSE = 0.0  # seconds between cycles while there is a backlog
IDLE_PAUSE = 0.05  # seconds between cycles when nothing was pending
SMALL_BATCH = 1000  # records: a batch this small means the writers are trickling ...
LINGER = 0.2  # seconds: ... so let more gather before the next request
DISCOVER_EVERY = 0.5  # seconds between listings of writers/
LIVENESS_EVERY = 0.5  # seconds between liveness checks (heartbeats change once a second)
HEALTH_EVERY = 1.0  # seconds between writes of sender.json
MAX_IDLE_BACKOFF = 1.0  # seconds: an idle writer is checked at most this rarely
BACKOFF_MIN, BACKOFF_MAX = 0.2, 30.0  # seconds, retries of an unavailable sink
PAUSED_RETRY = 30.0  # seconds before retrying a sink that refused our credentials


class LostLeadership(Exception):
    """Raised inside the loop when this process must stop sending at once."""


@dataclass
class _Span:
    """Where a block of a batch lies, to turn an acknowledged seq into a cursor."""

    first: int
    last: int
    segment: int
    offset: int
    end: int


@dataclass
class Health:
    state: str = "starting"
    errors: int = 0
    retries: int = 0
    last_error: str | None = None
    last_success: float | None = None
    acked_records: int = 0
    acked_batches: int = 0
    dead_letters: int = 0
    adopted: int = 0
    retired: int = 0
    started: float = field(default_factory=time.time)


class Sender:
    """Ships every writer of a directory to one sink while its lease holds."""

    def __init__(
        self,
        root: str,
        sink: Sink,
        sink_url: str,
        lease: LeaseKeeper,
        judge: LivenessJudge,
        domain: str,
        modes: Modes,
        batch_records: int = DEFAULT_BATCH_RECORDS,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.sink = sink
        self.sink_url = sink_url
        self.lease = lease
        self.judge = judge
        self.domain = domain
        self.modes = modes
        self.batch_records = batch_records
        self.batch_bytes = batch_bytes
        self.clock = clock
        self.health = Health()
        self.writers: dict[str, Tracked] = {}
        self.book: dict[str, Position] = read_cursors(root)
        self._book_dirty = False
        self._order: deque[str] = deque()  # writer ids, in the round-robin order of reading
        self._ending: set[str] = set()  # finished or adopted: the only writers retire() looks at
        self._next_discover = 0.0
        self._next_liveness = 0.0
        self._next_health = 0.0
        self._retry_at = 0.0
        self._backoff = BACKOFF_MIN
        # Descriptors, not paths, from here on: a symlink planted for one of these names is
        # refused once, here, and never followed later.
        self._fds = {sub: _files.ensure_subdir(root, sub, modes)
                     for sub in (_layout.WRITERS, ADOPTED, HISTORY, DEADLETTERS, QUARANTINE)}
        self.reader = FolderReader(self._fds[QUARANTINE], modes, judge.lease_s, clock)

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: Callable[[], bool], drain_deadline: Callable[[], float | None] = lambda: None) -> str:
        """Cycle until stop() or leadership is lost; with a drain deadline, until drained.

        Returns why it ended: "stopped", "drained", "deadline" or the lost-lease reason.
        """
        draining = False
        try:
            while not stop():
                deadline = drain_deadline()
                if deadline is not None and not draining:
                    draining = True  # look again now: finish marks written a moment ago count
                    self._next_discover = self._next_liveness = 0.0
                    for t in self.writers.values():
                        t.next_check = 0.0
                    continue
                sent = self.cycle()
                if deadline is not None:
                    if self.drained():
                        return "drained"
                    if self.clock() >= deadline:
                        return "deadline"
                if not sent:
                    self._pause(IDLE_PAUSE, stop)
                elif sent < SMALL_BATCH and deadline is None:
                    self._pause(LINGER, stop)  # a trickle: fewer, larger batches cost the sink less
            return "stopped"
        except LostLeadership as exc:
            return str(exc) or "lost leadership"
        finally:
            self._write_health(force=True)

    def cycle(self) -> int:
        """One pass: lease, discovery, liveness, one batch. Returns records acknowledged."""
        if not self.lease.renew_if_due():
            raise LostLeadership(self.lease.lost or "lease lost")
        self.judge.tick()
        now = self.clock()
        if now >= self._next_discover:
            self._discover()
            self._next_discover = now + DISCOVER_EVERY
        if now >= self._next_liveness:
            self._check_liveness()
            self._next_liveness = now + LIVENESS_EVERY
        acked = 0
        if now >= self._retry_at:
            collected = self._collect()
            if collected is not None:
                acked = self._deliver(*collected)
        self.retire()
        self._write_health()
        return acked

    def drained(self) -> bool:
        """Nothing readable is left from finished, dead or adopted writers."""
        for t in self.writers.values():
            if t.finished is not None or t.adopted_at is not None:
                if not t.exhausted:
                    return False
                if t.finished is not None and t.pos.seq < t.finished.durable_seq:
                    return False
        return True

    def progress(self) -> dict[str, int]:
        """Acknowledged so far, and what finished writers still have to deliver."""
        pending = sum(
            max(0, t.finished.durable_seq - t.pos.seq) for t in self.writers.values() if t.finished is not None
        )
        return {"acked_records": self.health.acked_records, "pending_records": pending, "writers": len(self.writers)}

    def delivered_through(self, marks: dict[str, int]) -> bool:
        """Every writer is acknowledged up to its mark, retired, or (if dead) read to its end."""
        for writer_id, mark in marks.items():
            t = self.writers.get(writer_id)
            if t is None or t.pos.seq >= mark or (t.adopted_at is not None and t.exhausted):
                continue
            return False
        return True

    def pending_marks(self) -> dict[str, int]:
        """Each known writer's last durable seq now: its finish mark, heartbeat, or what is on disk."""
        marks = {}
        for t in self.writers.values():
            mark = t.finished or t.heartbeat()
            noted = 0 if mark is None else mark.durable_seq
            marks[t.id] = max(noted, last_seq_on_disk(t.dir_fd, t.pos.segment, t.pos.offset, writer=t.files.tag))
        return marks

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

    def _pause(self, seconds: float, stop: Callable[[], bool]) -> None:
        deadline = self.clock() + seconds
        while not stop():
            left = deadline - self.clock()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    # -- discovery and liveness ------------------------------------------------------------

    def _discover(self) -> None:
        if os.fstat(self._fds[_layout.WRITERS]).st_nlink == 0:
            raise LostLeadership(f"{self.root}/{_layout.WRITERS} was removed: starting over")
        for sub in (_layout.WRITERS, ADOPTED):
            for name in os.listdir(self._fds[sub]):
                if name not in self.writers and _layout.is_writer_id(name):
                    self._track(sub, name)
                    # A first look at 1024 writers took 9 s on a loaded machine, past a 5 s
                    # lease: renew while discovering (a clock read when not due).
                    if not self.lease.renew_if_due():
                        raise LostLeadership(self.lease.lost or "lease lost")

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
        self._order.append(name)
        if adopted or files.finish is not None:
            self._ending.add(name)

    def _check_liveness(self) -> None:
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

    # -- reading ------------------------------------------------------------------------

    def _collect(self) -> tuple[Batch, dict[str, list[_Span]]] | None:
        chunks: list[Chunk] = []
        spans: dict[str, list[_Span]] = {}
        count = size = 0
        now = self.clock()
        # One comprehension picks the writers due: with 1024 idle ones this runs about 20
        # times a second (with retire() looking only at ending writers: 4.6 to 3.8 % of a core).
        order = self._order
        due = [(i, t) for i, t in enumerate(map(self.writers.get, order)) if t is not None and t.next_check <= now]
        for i, t in due:
            got = 0
            for item in self.reader.items(t):
                if isinstance(item, Position):  # past a damaged span, or onto the next segment
                    self._move(t, item)
                    continue
                start = max(0, t.pos.seq + 1 - item.first_seq)
                if start >= len(item.lines):
                    continue
                take = min(len(item.lines) - start, self.batch_records - count)
                lines = item.lines[start : start + take]
                chunks.append(
                    Chunk(t.id, t.meta.who, t.files.envelope_prefix, item.first_seq + start,
                          item.ts[start : start + take], lines)
                )
                spans.setdefault(t.id, []).append(
                    _Span(item.first_seq, item.last_seq, item.segment, item.offset, item.end)
                )
                count += take
                got += take
                size += sum(map(len, lines))
                if count >= self.batch_records or size >= self.batch_bytes:
                    break
            self._note_activity(t, got, now)
            if count >= self.batch_records or size >= self.batch_bytes:
                order.rotate(-(i + 1))  # the next cycle starts after this writer
                break
        if not chunks:
            return None
        return Batch(self.lease.epoch, self.domain, tuple(chunks)), spans

    def _note_activity(self, t: Tracked, got: int, now: float) -> None:
        if got:
            t.idle_since, t.next_check, t.exhausted = None, 0.0, False
            return
        t.exhausted = True
        if t.idle_since is None:
            t.idle_since = now
        # An idle live writer is looked at less and less often, up to once a second.
        t.next_check = now + min(MAX_IDLE_BACKOFF, (now - t.idle_since) / 4)
        if t.finished is not None or t.adopted_at is not None:
            t.next_check = now

    def _move(self, t: Tracked, pos: Position) -> None:
        t.pos = pos
        self.book[t.id] = pos
        self._book_dirty = True

    # -- sending ------------------------------------------------------------------------

    def _deliver(self, batch: Batch, spans: dict[str, list[_Span]]) -> int:
        """Send `batch` (splitting and bisecting as the sink asks); save cursors for what was acked.

        What the sink acknowledged is recorded even when a later part fails or leadership
        ends half-way: a split batch must never be resent from its start forever.
        """
        acked: dict[str, int] = {}
        dead: dict[str, list[int]] = {}
        try:
            self._send(batch, acked, dead)
            self._backoff = BACKOFF_MIN
            self.health.state = "ok"
        except SinkPaused as exc:
            self._fail("paused", exc, PAUSED_RETRY)
        except SinkUnavailable as exc:
            self._fail("retrying", exc, exc.retry_after)
        finally:
            if acked:
                self._advance(acked, dead, spans)
        count = sum(
            max(0, min(chunk.last_seq, acked.get(chunk.writer, 0)) - chunk.first_seq + 1) for chunk in batch.chunks
        )
        self.health.acked_records += count
        return count

    def _send(self, batch: Batch, acked: dict[str, int], dead: dict[str, list[int]]) -> None:
        # Renew here, not only once a cycle: splitting a refused batch can take many requests.
        if not self.lease.renew_if_due() or not self.lease.valid():
            raise LostLeadership(self.lease.lost or "lease expired")
        try:
            self.sink.write(batch)
        except StaleEpoch as exc:
            raise LostLeadership(f"the sink refused epoch {batch.epoch}: {exc}") from None
        except (SinkTooLarge, SinkRejected) as exc:
            if len(batch) > 1:
                for half in batch.halves():
                    self._send(half, acked, dead)
                return
            self._dead_letter(batch, exc)
            for chunk in batch.chunks:
                dead.setdefault(chunk.writer, []).append(chunk.first_seq)
        for chunk in batch.chunks:
            if len(chunk):
                acked[chunk.writer] = max(acked.get(chunk.writer, 0), chunk.last_seq)
        self.health.acked_batches += 1
        self.health.last_success = time.time()

    def _fail(self, state: str, exc: Exception, retry_after: float | None) -> None:
        self.health.state = state
        self.health.errors += 1
        self.health.retries += 1
        self.health.last_error = str(exc)
        delay = retry_after if retry_after is not None else self._backoff * random.uniform(0.5, 1.5)
        self._backoff = min(BACKOFF_MAX, self._backoff * 2)
        self._retry_at = self.clock() + delay
        logger.warning("distwal: sink %s: %s; retrying in %.1fs", state, exc, delay)

    def _dead_letter(self, batch: Batch, exc: Exception) -> None:
        """Keep an envelope the sink refuses for good, durably, where status shows it."""
        fd = self._fds[DEADLETTERS]
        for chunk in batch.chunks:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            file_fd = os.open(_layout.format_deadletter_name(chunk.writer), flags, self.modes.file, dir_fd=fd)
            try:
                for envelope in chunk.envelopes():
                    line = orjson.dumps({"reason": str(exc)[:500], "envelope": orjson.Fragment(envelope)})
                    _files.write_all(file_fd, line + b"\n")
                os.fsync(file_fd)
            finally:
                os.close(file_fd)
            os.fsync(fd)
            self.health.dead_letters += len(chunk)
            logger.error("distwal: sink refused %s seq %d for good: kept as a dead letter", chunk.writer, chunk.first_seq)

    def _advance(self, acked: dict[str, int], dead: dict[str, list[int]], spans: dict[str, list[_Span]]) -> None:
        """Cursor book first (durable), then unlink the segments it no longer needs."""
        for writer_id, seq in acked.items():
            t = self.writers.get(writer_id)
            if t is None:
                continue
            segment, offset = t.pos.segment, t.pos.offset
            for span in spans.get(writer_id, ()):
                if span.first <= seq <= span.last:
                    segment, offset = span.segment, span.end if seq == span.last else span.offset
            refused = dead.get(writer_id, [])
            lowest = min([t.pos.dead_min, *refused]) if t.pos.dead_min else min(refused, default=0)
            self._move(t, Position(seq, segment, offset, t.pos.dead + len(refused), max([t.pos.dead_max, *refused]),
                                   lowest))
        if not self._save_book():
            return  # the acknowledged segments stay until the cursor that covers them is durable
        for writer_id in acked:
            t = self.writers.get(writer_id)
            if t is not None:
                self._unlink_acknowledged_segments(t)

    def _save_book(self) -> bool:
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

    def _unlink_acknowledged_segments(self, t: Tracked) -> None:
        for name in os.listdir(t.dir_fd):
            index = _layout.parse_segment_name(name)
            if index is not None and index < t.pos.segment:
                try:
                    os.unlink(name, dir_fd=t.dir_fd)
                except OSError:
                    pass  # gone already, or a directory planted under a segment's name

    # -- retiring ------------------------------------------------------------------------

    def retire(self) -> None:
        """Remove finished or adopted writers whose records are all delivered."""
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
            self._remove(t)

    def _remove(self, t: Tracked) -> None:
        end = _end_of(t)
        try:
            self.sink.writer_done(t.id, t.meta.who, end)
        except SinkError as exc:
            logger.warning("distwal: sink could not close writer %s, retrying later: %s", t.id, exc)
            return
        self._save_book()  # the cursor is durable before the files it covers go
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
        self._order.remove(t.id)
        self.judge.forget(t.id)
        if t.id in self.book:
            del self.book[t.id]
            self._book_dirty = True
        self.health.retired += 1

    # -- status ------------------------------------------------------------------------

    def _write_health(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now < self._next_health:
            return
        self._next_health = now + HEALTH_EVERY
        h = self.health
        body = {
            "epoch": self.lease.epoch,
            "owner": self.lease.owner,
            "sink": _redact(self.sink_url),
            "state": h.state,
            "errors": h.errors,
            "retries": h.retries,
            "last_error": h.last_error,
            "last_success": h.last_success,
            "acked_records": h.acked_records,
            "acked_batches": h.acked_batches,
            "dead_letters": h.dead_letters,
            # accepted, then reported dropped by the sink (OTLP partial_success): never silent
            "sink_rejected": self.sink.rejected_records,
            "quarantined_bytes": self.reader.quarantined_bytes,
            "torn_bytes": self.reader.torn_bytes,
            "adopted": h.adopted,
            "retired": h.retired,
            "writers": len(self.writers),
            "started": h.started,
            "ts": time.time(),
        }
        try:
            _files.write_root_json(self.root, SENDER, body, self.modes, durable=False)
        except OSError as exc:
            logger.debug("distwal: cannot write %s: %s", SENDER, exc)

    def close(self) -> None:
        try:
            self._save_book()
        finally:
            for t in self.writers.values():
                t.close()
            for fd in self._fds.values():
                os.close(fd)
            self.sink.close()


def _end_of(t: Tracked) -> dict[str, Any] | None:
    """How a retired writer ended, as status shows it: its finish mark's end, else lost."""
    return writer_end(t.finished, t.adopted_at is not None,
                      lambda: last_sign_of_life(t.dir_fd, t.files.tag, t.heartbeat()))


def _redact(url: str) -> str:
    from .._config import _redact as redact

    return redact(url)


__all__ = ["LostLeadership", "Sender"]
