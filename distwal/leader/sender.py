"""The leader loop: read every writer from its cursor, send batches, save cursors on ack.

Order of effects, always: the sink acknowledges, the cursor book is durable, and only
then are acknowledged segments unlinked. Which writers there are, and which are adopted
or retired, is the roster's business (roster.py). A batch the sink refuses is split and
bisected down to the envelopes it refuses for good, which become dead letters. A damaged
span below a writer's durable watermark is copied to quarantine/ and skipped; above it,
it is simply not written yet (reading.py).
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Callable, Mapping

import orjson

from .. import _files, _layout
from .._cursor import Position
from .._exceptions import SinkPaused, SinkRejected, SinkTooLarge, SinkUnavailable, StaleEpoch
from .._layout import DEADLETTERS, QUARANTINE, SENDER, Modes
from ..sinks import Batch, Chunk, Sink
from .election import LeaseKeeper, LostLeadership
from .health import Health
from .liveness import LivenessJudge
from .reading import FolderReader, Tracked
from .roster import Roster

logger = logging.getLogger("distwal")


DEFAULT_BATCH_RECORDS = 20_000
DEFAULT_BATCH_BYTES = 4 << 20
BUSY_PAUSE = 0.0  # seconds between cycles while there is a backlog
IDLE_PAUSE = 0.05  # seconds between cycles when nothing was pending
SMALL_BATCH = 1000  # records: a batch this small means the writers are trickling ...
LINGER = 0.2  # seconds: ... so let more gather before the next request
HEALTH_EVERY = 1.0  # seconds between writes of sender.json
MAX_IDLE_BACKOFF = 1.0  # seconds: an idle writer is checked at most this rarely
BACKOFF_MIN, BACKOFF_MAX = 0.2, 30.0  # seconds, retries of an unavailable sink
PAUSED_RETRY = 30.0  # seconds before retrying a sink that refused our credentials


@dataclass
class _Span:
    """Where a block of a batch lies, to turn an acknowledged seq into a cursor."""

    first: int
    last: int
    segment: int
    offset: int
    end: int


class Sender:
    """Ships every writer of a directory to one sink while its lease holds.

    The roster says which writers there are and how far each is acknowledged; the sender
    reads them in turn, sends batches, and moves their cursors once the sink acknowledges.
    """

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
        self.lost: str | None = None  # why leadership ended, once it has
        self.roster = Roster(root, lease, judge, modes, self.health, clock)
        self._next_health = 0.0
        self._retry_at = 0.0
        self._backoff = BACKOFF_MIN
        self._fds = {sub: _files.ensure_subdir(root, sub, modes) for sub in (DEADLETTERS, QUARANTINE)}
        self.reader = FolderReader(self._fds[QUARANTINE], modes, judge.lease_s, clock)

    # -- the loop ------------------------------------------------------------------------

    def run(
        self,
        stop: Callable[[], bool],
        drain_deadline: Callable[[], float | None] = lambda: None,
        marks: Mapping[str, int] | None = None,
    ) -> str:
        """Cycle until stop() or leadership is lost; with a drain deadline, until drained.

        A drain ends on the roster's one rule (Roster.drained): everything up to `marks`
        (noted when the drain began; none: finished and dead writers only) is acknowledged
        and nothing is left to settle. Returns why it ended: "stopped", "drained",
        "deadline" or the reason leadership was lost (also kept in .lost).
        """
        draining = False
        try:
            while not stop():
                deadline = drain_deadline()
                if deadline is not None and not draining:
                    draining = True  # look again now: finish marks written a moment ago count
                    self.roster.look_again()
                    continue
                sent = self.cycle()
                if deadline is not None:
                    if self.roster.drained(marks or {}):
                        return "drained"
                    if self.clock() >= deadline:
                        return "deadline"
                if not sent:
                    self._pause(IDLE_PAUSE, stop)
                elif sent < SMALL_BATCH and deadline is None:
                    self._pause(LINGER, stop)  # a trickle: fewer, larger batches cost the sink less
            return "stopped"
        except LostLeadership as exc:
            self.lost = str(exc) or "lost leadership"
            return self.lost
        finally:
            self._write_health(force=True)

    def cycle(self) -> int:
        """One pass: lease, discovery, liveness, one batch. Returns records acknowledged."""
        self.lease.hold()
        self.judge.tick()
        now = self.clock()
        self.roster.refresh(now)
        acked = 0
        if now >= self._retry_at:
            collected = self._collect()
            if collected is not None:
                acked = self._deliver(*collected)
        self.roster.retire(self.sink)
        self._write_health()
        return acked

    def progress(self) -> dict[str, int]:
        """Acknowledged so far, and what finished writers still have to deliver."""
        return {"acked_records": self.health.acked_records, "pending_records": self.roster.finished_pending(),
                "writers": len(self.roster.writers)}

    def _pause(self, seconds: float, stop: Callable[[], bool]) -> None:
        deadline = self.clock() + seconds
        while not stop():
            left = deadline - self.clock()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    # -- reading ------------------------------------------------------------------------

    def _collect(self) -> tuple[Batch, dict[str, list[_Span]]] | None:
        chunks: list[Chunk] = []
        spans: dict[str, list[_Span]] = {}
        count = size = 0
        now = self.clock()
        # One comprehension picks the writers due: with 1024 idle ones this runs about 20
        # times a second (with retire() looking only at ending writers: 4.6 to 3.8 % of a core).
        order = self.roster.order
        due = [(i, t) for i, t in enumerate(map(self.roster.writers.get, order)) if t is not None and t.next_check <= now]
        for i, t in due:
            got = 0
            for item in self.reader.items(t):
                if isinstance(item, Position):  # past a damaged span, or onto the next segment
                    self.roster.move(t, item)
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
        writers = self.roster.writers
        for writer_id, seq in acked.items():
            t = writers.get(writer_id)
            if t is None:
                continue
            segment, offset = t.pos.segment, t.pos.offset
            for span in spans.get(writer_id, ()):
                if span.first <= seq <= span.last:
                    segment, offset = span.segment, span.end if seq == span.last else span.offset
            refused = dead.get(writer_id, [])
            lowest = min([t.pos.dead_min, *refused]) if t.pos.dead_min else min(refused, default=0)
            self.roster.move(t, Position(seq, segment, offset, t.pos.dead + len(refused),
                                         max([t.pos.dead_max, *refused]), lowest))
        if not self.roster.save_book():
            return  # the acknowledged segments stay until the cursor that covers them is durable
        for writer_id in acked:
            t = writers.get(writer_id)
            if t is not None:
                self._unlink_acknowledged_segments(t)

    def _unlink_acknowledged_segments(self, t: Tracked) -> None:
        for name in os.listdir(t.dir_fd):
            index = _layout.parse_segment_name(name)
            if index is not None and index < t.pos.segment:
                try:
                    os.unlink(name, dir_fd=t.dir_fd)
                except OSError:
                    pass  # gone already, or a directory planted under a segment's name

    # -- status ------------------------------------------------------------------------

    def _write_health(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now < self._next_health:
            return
        self._next_health = now + HEALTH_EVERY
        body = {
            "epoch": self.lease.epoch,
            "owner": self.lease.owner,
            "sink": _redact(self.sink_url),
            **asdict(self.health),
            # accepted, then reported dropped by the sink (OTLP partial_success): never silent
            "sink_rejected": self.sink.rejected_records,
            "quarantined_bytes": self.reader.quarantined_bytes,
            "torn_bytes": self.reader.torn_bytes,
            "writers": len(self.roster.writers),
            "ts": time.time(),
        }
        try:
            _files.write_root_json(self.root, SENDER, body, self.modes, durable=False)
        except OSError as exc:
            logger.debug("distwal: cannot write %s: %s", SENDER, exc)

    def close(self) -> None:
        try:
            self.roster.close()
        finally:
            for fd in self._fds.values():
                os.close(fd)
            self.sink.close()


def _redact(url: str) -> str:
    from .._config import _redact as redact

    return redact(url)


__all__ = ["LostLeadership", "Sender"]
