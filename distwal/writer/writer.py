"""Writer: one process's durable log. log() buffers; a flusher thread group-commits.

The caller's cost is orjson plus a few appends under a lock: the payload is copied into
a bytearray (keeping each orjson bytes object alive costs more than the serialization)
and its timestamp into an array. The flusher swaps the buffer out, cuts it into blocks,
writes them, and fdatasyncs once per group commit, and only when something is new.
"""

from __future__ import annotations

import collections
import errno
import logging
import math
import os
import select
import signal
import threading
import time
from array import array
from collections.abc import Mapping
from typing import Any

import orjson

from .. import _files, _layout
from .._config import Config
from .._ends import end_in_flight, make_end
from .._env import rank_from_env
from .._exceptions import ClosedError, FullError
from .._hooks import hooks
from .._layout import Identity, Modes
from .._marks import Finish, Heartbeat, Meta
from .._record import BLOCK_BYTES, Sealed, timestamps_bytes, writer_tag
from .._segment import SegmentWriter
from .._signals import start_background_thread

logger = logging.getLogger("distwal")

# The newline is our delimiter; dataclasses go to _default, which refuses non-mappings.
_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_DATACLASS
_ERROR_BACKOFF = 0.5  # seconds between retries after a failed write (disk full, EIO)
_HEADROOM = 16 * 1024  # bytes of a full disk left for the marks (heartbeat, finish) liveness reads
_LOCK_PROBE = 0.05  # seconds: a buffer lock held longer than this is held by the interrupted thread


def _default(obj: Any) -> Any:
    # Called by orjson only for types it does not know, so it costs nothing on the hot path.
    if isinstance(obj, Mapping):
        return dict(obj)
    # Tensors (torch, or anything array-like with .item()/.tolist()) without importing them:
    # a 0-d one is a number; anything larger needs the caller's decision (issue 9).
    shape = getattr(obj, "shape", None)
    if shape is not None and hasattr(obj, "item"):
        if len(shape) == 0:
            return obj.item()
        raise TypeError(
            f"cannot log a {type(obj).__name__} of shape {tuple(shape)}: log a number with .item() "
            "or a list with .tolist()"
        )
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


# NaN and infinities: JSON has no spelling for them and orjson writes null. distwal keeps them
# as the strings of the proto3 JSON mapping for doubles, which MLflow and OTLP/JSON read back
# as floats (README, "Values"). Only a record whose JSON holds "null" is walked.
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _keep_non_finite(value: Any) -> Any:
    """`value` with every NaN/Infinity float replaced by its string; the same object if none."""
    if isinstance(value, float):
        return value if math.isfinite(value) else _NON_FINITE[repr(float(value))]
    if isinstance(value, Mapping):
        items = {k: _keep_non_finite(v) for k, v in value.items()}
        return value if all(items[k] is v for k, v in value.items()) else items
    if isinstance(value, (list, tuple)):
        kept = [_keep_non_finite(v) for v in value]
        return value if all(a is b for a, b in zip(kept, value)) else kept
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy scalars and arrays, 0-d tensors
        if getattr(value.dtype, "kind", "f") == "f":  # numpy's float kind; torch dtypes have no kind
            plain = value.tolist()
            kept = _keep_non_finite(plain)
            return value if kept is plain else kept
    return value


class Writer:
    """A process's log in the shared directory. Create it with distwal.init().

        w = distwal.init(dir="/shared/run1")
        seq = w.log({"step": 1, "loss": 0.25})   # 1, 2, 3, ... contiguous per writer
        w.flush()                                # everything logged so far is on disk
        w.finish()                               # durable, finish mark, no more records

    Thread-safe. log() raises TypeError for a record orjson cannot serialize, ValueError for
    one larger than max_record_bytes, ClosedError after finish(), FullError when the buffer
    is full and on_full is "raise"; none of these writes anything or uses a seq.
    """

    def __init__(self, config: Config, domain: str) -> None:
        self.config = config
        self.domain = domain
        self._modes = Modes.for_config(config.shared_group)
        self._fdatasync = config.durability != "none"
        self._max_record = config.max_record_bytes
        self._reset()
        self._open()

    # -- state ------------------------------------------------------------------------

    def _reset(self) -> None:
        """Fresh in-memory state: used at creation and in a forked child."""
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)  # the buffer has room again
        self._progress = threading.Condition()  # durable_seq moved
        # The flusher sleeps on a pipe, not an Event: writing a byte takes no lock, so the
        # SIGTERM handler can wake it whatever the interrupted thread was holding.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._resignal = 0  # a signal to deliver again once the buffer is written
        self._buf = bytearray()  # the block being filled: payload lines ...
        self._ts = array("d")  # ... and their timestamps
        self._stamp = self._ts.append  # bound once per block: one lookup less per log()
        self._seq = 0  # last seq handed out
        self._sealed: list[tuple[int, "array[float]", bytearray]] = []  # full blocks for the flusher
        self._unwritten: collections.deque[Sealed] = collections.deque()  # sealed, not yet on disk
        self._held_bytes = 0  # sealed or unwritten: in memory, not yet on disk
        self._disk_full = False  # ENOSPC lately: write only what leaves _HEADROOM free
        self._room = min(BLOCK_BYTES, self.config.max_buffer_bytes)  # how large _buf may grow before the slow path
        self._written_seq = 0
        self._durable_seq = 0
        self._durable_at = (0, 0)  # (segment, offset) just past the last durable block
        self._dropped = 0
        self._closed = False
        self._marked = False  # the finish mark is written
        self._bind_log()
        self._stopping = False
        self._last_error: str | None = None
        self._heartbeats = 0
        self._thread: threading.Thread | None = None
        self._dir_fd = -1
        self._segments: SegmentWriter | None = None
        self._elector: Any = None

    def _open(self) -> None:
        """Claim a new identity and folder, write the metadata, start the flusher."""
        self.identity = Identity.of_this_process()
        self._pid = self.identity.pid
        self._claim_folder(first_seq=1)
        self._thread = start_background_thread(self._run, "distwal-flusher")
        if not self.config.disable_sender:
            self._elector = self._make_elector()
        hooks.attach(self)

    def _claim_folder(self, first_seq: int, continues: str | None = None) -> None:
        """Create writers/<new id>/ with its metadata, first segment and heartbeat."""
        self.id = _layout.format_writer_id(self.identity)
        self._tag = writer_tag(self.id)
        self._path = os.path.join(self.config.dir, _layout.WRITERS, self.id)
        writers_fd = _files.open_dir(os.path.dirname(self._path))
        try:
            self._dir_fd = _files.make_subdir(writers_fd, self.id, self._modes)
        finally:
            os.close(writers_fd)
        st = os.fstat(self._dir_fd)
        self._dir_key = (st.st_dev, st.st_ino)
        rank = rank_from_env()
        self.meta = Meta(
            writer=self.id,
            host=self.identity.host,
            boot_id=self.identity.boot_id,
            pid_ns=self.identity.pid_ns,
            pid=self.identity.pid,
            create_time=self.identity.create_time,
            rank=rank.rank,
            local_rank=rank.local_rank,
            world_size=rank.world_size,
            group_rank=rank.group_rank,
            attempt=rank.attempt,
            run=self.config.run_id,
            domain=self.domain,
            durability=self.config.durability,
            segment_bytes=self.config.segment_bytes,
            first_seq=first_seq,
            continues=continues,
            started=time.time(),
        )
        _files.write_atomic(self._dir_fd, _layout.META, self.meta.to_bytes(), self._modes)
        self._segments = SegmentWriter(
            self._dir_fd, self._modes, self.config.segment_bytes, sync_on_seal=self._fdatasync
        )
        self._durable_at = (0, 0)
        self._acked_at = (0, 0)  # (segment, offset) the sink has acknowledged, per the cursor book
        self._segment_sizes: dict[int, int] = {}
        self._pending_bytes = 0
        self._write_heartbeat("live")

    def _adopted(self) -> bool:
        """True when a leader moved our folder away, taking us for dead (another host's view)."""
        try:
            st = os.stat(self._path, follow_symlinks=False)
        except FileNotFoundError:
            return True
        except OSError:
            return False  # cannot tell: carry on
        return (st.st_dev, st.st_ino) != self._dir_key

    def _reincarnate(self) -> None:
        """Continue under a new identity after a wrongful adoption (flusher thread only).

        What is durable in the old folder is the leader's to ship (it reads the folder
        for twice the lease); what is not yet written goes to the new folder, keeping its
        seqs, so the new writer's first seq is not 1 (meta.first_seq says where it starts).
        """
        old = self.id
        if self._segments is not None:
            self._segments.close()
        os.close(self._dir_fd)
        if not os.path.isdir(os.path.join(self.config.dir, _layout.WRITERS)):
            logger.error(
                "distwal: %s was removed while writer %s ran; what it held on disk is gone; recreating it "
                "for what comes next", self.config.dir, old,
            )
            _files.prepare_dir(self.config.dir, self._modes)
            self.domain = _files.ensure_domain(self.config.dir, self._modes)
        self._claim_folder(first_seq=self._durable_seq + 1, continues=old)
        logger.warning("distwal: writer %s lost its folder (adopted, or removed); continuing as %s", old, self.id)

    def _make_elector(self) -> Any:
        from ..launch.run import ENV_PREFERRED, preferred_alive
        from ..leader.elector import Elector, ProcessLeadership, owner_of

        owner = owner_of(self.identity, "rank", self.id, rank=self.meta.rank)
        config, domain, identity = self.config, self.domain, self.identity
        preferred = os.environ.get(ENV_PREFERRED, "")

        def may_lead() -> bool:  # defer to a live `distwal run` sidecar
            return not preferred or not preferred_alive(preferred, identity)

        def start(epoch: int) -> ProcessLeadership:
            return ProcessLeadership(config, epoch, owner, domain)

        return Elector(config, identity, owner, domain, start, may_lead).start()

    # -- the caller's side --------------------------------------------------------------

    def log(self, record: Mapping[str, Any], _dumps: Any = orjson.dumps, _now: Any = time.time) -> int:
        """Append `record`; return its seq (0 if dropped under on_full="drop")."""
        try:
            data = _dumps(record, _default, _OPTS)
        except TypeError as exc:  # orjson wraps what _default raised: show the hint, not the wrapper
            raise (exc.__cause__ if isinstance(exc.__cause__, TypeError) else exc) from None
        # orjson writes NaN and infinities as null. A byte test first (memchr, about 20 ns):
        # most metric records hold no "u" at all, so they never pay for the substring search.
        if 0x75 in data and b"null" in data:  # 0x75: "u"
            kept = _keep_non_finite(record)
            if kept is not record:
                data = _dumps(kept, _default, _OPTS)
        if len(data) > self._max_record or data[0] != 0x7B:  # 0x7B: "{"
            self._refuse(data)
        lock = self._lock
        lock.acquire()
        try:
            buf = self._buf
            # One test covers a full block, a full buffer and a closed writer (_room is -1).
            if len(buf) + len(data) > self._room:
                if not self._make_room(len(data)):
                    return 0
                buf = self._buf
            buf += data
            self._stamp(_now())
            self._seq = seq = self._seq + 1
        finally:
            lock.release()
        return seq

    def _log_sync(self, record: Mapping[str, Any]) -> int:
        """log() in sync mode: return once the record is on stable storage."""
        seq = Writer.log(self, record)
        if seq:
            self._wait_durable(seq, None)
        return seq

    def _bind_log(self) -> None:
        self.__dict__.pop("log", None)
        if self.config.durability == "sync":
            self.log = self._log_sync  # type: ignore[method-assign,assignment]

    def _refuse(self, data: bytes) -> None:
        if data[:1] != b"{":
            raise TypeError(f"a record must be a mapping (a JSON object), got {data[:40]!r}")
        raise ValueError(
            f"record of {len(data)} bytes exceeds max_record_bytes={self._max_record}: "
            "log smaller records or raise the limit in distwal.init()"
        )

    def _make_room(self, size: int) -> bool:
        """With the lock held: seal the full block, or apply on_full. False: drop the record."""
        limit = self.config.max_buffer_bytes
        while len(self._buf) + size > self._room:
            if self._closed:
                raise ClosedError("log() after finish(): call distwal.init() to start a new writer")
            if self._held_bytes + len(self._buf) + size <= limit:
                if not self._buf:
                    return True  # a record larger than a block is a block of its own
                self._seal()
                self._poke()
                continue
            if self.config.on_full == "drop":
                self._dropped += 1
                return False
            if self.config.on_full == "raise":
                raise FullError(
                    f"distwal buffer full ({limit} bytes not yet written): the disk is slow or full; "
                    "raise max_buffer_bytes or use on_full='block'"
                )
            self._poke()
            self._space.wait(0.1)
        return True

    def _seal(self) -> None:
        """With the lock held: hand the current block to the flusher and start a new one."""
        self._sealed.append((self._seq - len(self._ts) + 1, self._ts, self._buf))
        self._held_bytes += len(self._buf)
        self._buf = bytearray()
        self._ts = array("d")
        self._stamp = self._ts.append
        self._set_room()

    def _set_room(self) -> None:
        if not self._closed:
            self._room = min(BLOCK_BYTES, self.config.max_buffer_bytes - self._held_bytes)

    def flush(self, timeout: float = 60.0, delivered: bool = False) -> bool:
        """True once every record logged before the call is durable (in "none" mode: written).

        Never stops the writer; never waits for records logged after the call.
        """
        deadline = time.monotonic() + timeout
        target = self._seq
        if not self._wait_durable(target, timeout):
            return False
        if delivered:
            return self._wait_delivered(target, deadline)
        return True

    def _wait_delivered(self, target: int, deadline: float) -> bool:
        """Poll the cursor book until the sink acknowledged `target`; False on a dead letter,
        at the deadline, or once no leader lease has moved for lease_s."""
        from ..leader.cursor import Position, read_cursors
        from ..leader.election import LeaseWatch

        if target == 0:
            return True
        watch = LeaseWatch(self.config.dir, self.config.lease_s)
        pause = 0.01
        while True:
            pos = read_cursors(self.config.dir).get(self.id, Position())
            if pos.dead and pos.dead_min <= target:
                return False  # one of the records logged before the call is a dead letter
            if pos.seq >= target:
                return True
            if watch.stale() or time.monotonic() >= deadline:
                return False
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.2)

    def finish(self, timeout: float = 60.0) -> bool:
        """Stop accepting records, make everything durable, write the finish mark.

        Returns True when every logged record is durable and the mark is written.
        Idempotent; never hangs past `timeout`. The mark says the writer finished, or,
        called while an exception is being raised (a `finally:` block), that exception.
        """
        return self._finish(timeout, end_in_flight() or make_end("finished", "finish()"))

    def _finish(self, timeout: float, end: dict[str, Any]) -> bool:
        """finish(), writing `end` (how the process ends, at exit) in the finish mark."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed:
                return True
            self._closed = True
            self._room = -1
            self._space.notify_all()
        if self._dir_fd < 0:  # a forked child that never logged: it owns no files
            hooks.detach(self)
            return True
        target = self._seq
        durable = self._wait_durable(target, timeout)
        self._stopping = True
        self._poke()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(max(0.1, timeout))
            if not self._thread.is_alive():
                self._close_wake_pipe()
        ok = durable and self._durable_seq >= target
        try:
            self._write_finish_mark(lost=target - self._durable_seq, end=end)
            self._write_heartbeat("finished")
        except OSError as exc:
            logger.error("distwal: cannot write the finish mark of %s: %s", self.id, exc)
            ok = False
        if self._segments is not None:
            self._segments.close()
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1
        if self._elector is not None:
            # A leader ships what finished and dead writers left, its own records included.
            self._elector.stop(drain_timeout=max(0.0, deadline - time.monotonic()))
            self._elector = None
        hooks.detach(self)
        return ok

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def seq(self) -> int:
        """The last seq handed out."""
        return self._seq

    @property
    def durable_seq(self) -> int:
        return self._durable_seq

    @property
    def dropped(self) -> int:
        return self._dropped

    def _wait_durable(self, seq: int, timeout: float | None) -> bool:
        if self._durable_seq >= seq:
            return True
        self._poke()
        with self._progress:
            return self._progress.wait_for(lambda: self._durable_seq >= seq or self._stopped(), timeout) and (
                self._durable_seq >= seq
            )

    def _poke(self) -> None:
        """Wake the flusher now (safe in a signal handler: no lock)."""
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the flusher is awake anyway

    def _stopped(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    # -- the flusher thread -------------------------------------------------------------

    def _run(self) -> None:
        interval = self.config.interval
        next_heartbeat = time.monotonic() + self.config.heartbeat_interval
        while True:
            if select.select([self._wake_r], [], [], interval)[0]:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            stopping = self._stopping
            try:
                self._commit()
            except OSError as exc:
                self._note_error(exc)
                if stopping:
                    break
                # Keep beating (with the error): a writer that cannot write is not dead, and
                # another host's leader must not take it for dead.
                next_heartbeat = self._beat_if_due(next_heartbeat)
                time.sleep(_ERROR_BACKOFF)
                continue
            if self._resignal:
                signum, self._resignal = self._resignal, 0
                # To the main thread, where the handler runs again now that log() let go.
                signal.pthread_kill(threading.main_thread().ident or 0, signum)
            if stopping and not self._unwritten and not self._buf and not self._sealed:
                break
            next_heartbeat = self._beat_if_due(next_heartbeat)
        with self._progress:
            self._progress.notify_all()

    def _beat_if_due(self, due: float) -> float:
        """Renew the heartbeat when `due` (monotonic) has passed; return the next due time."""
        if time.monotonic() < due:
            return due
        try:
            if self._adopted():
                self._reincarnate()
            if self.config.max_pending_bytes is not None:
                self._refresh_acked()
            self._write_heartbeat("live")
        except OSError as exc:
            self._note_error(exc)
        return time.monotonic() + self.config.heartbeat_interval

    def _commit(self) -> None:
        """Write the sealed blocks; fdatasync once; publish the new watermark.

        A block that cannot be written (disk full, EIO) stays in memory and is retried in
        order on the next cycle; nothing behind it is written before it. Once the disk is
        full, what leaves _HEADROOM free is written, the first block cut at a record boundary.
        """
        with self._lock:
            if self._buf:
                self._seal()
            sealed, self._sealed = self._sealed, []
        for first_seq, ts, payload in sealed:
            # Memory stays within max_buffer_bytes (no copy of the payload), and the only
            # GIL hand-offs per commit are the writev and the fdatasync.
            self._unwritten.append(Sealed.of(first_seq, timestamps_bytes(ts), payload))
        if not self._unwritten or self._over_pending_budget():
            return
        segments = self._segments
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
                with self._lock:
                    self._held_bytes -= written
                    self._set_room()
                    self._space.notify_all()
            self._durable_at = (segments.index, segments.offset)
            with self._progress:
                self._durable_seq = self._written_seq
                self._progress.notify_all()
        if error is not None:
            raise error
        self._last_error = None

    def _batch(self) -> list[list[bytes | bytearray]]:
        """The unwritten blocks to write now: all of them, unless the disk was full lately;
        then those that leave _HEADROOM free, the first one cut at a record boundary if need be."""
        unwritten, tag = self._unwritten, self._tag
        if not self._disk_full:
            return [block.parts(tag) for block in unwritten]
        st = os.fstatvfs(self._dir_fd)
        room = st.f_bavail * st.f_frsize - _HEADROOM
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
        if budget is None or self._segments is None:
            return False
        sizes = self._segment_sizes
        sizes[self._segments.index] = self._segments.offset
        acked = self._acked_at
        pending = sum(size for index, size in sizes.items() if index > acked[0])
        pending += max(0, sizes.get(acked[0], 0) - acked[1])
        self._pending_bytes = pending
        return pending >= budget

    def _refresh_acked(self) -> None:
        from ..leader.cursor import read_cursors

        pos = read_cursors(self.config.dir).get(self.id)
        if pos is not None:
            self._acked_at = (pos.segment, pos.offset)
            for index in [i for i in self._segment_sizes if i < pos.segment]:
                del self._segment_sizes[index]

    def _note_error(self, exc: OSError) -> None:
        message = f"{exc.strerror or exc} ({exc.filename or 'segment'})"
        if message != self._last_error:
            logger.error("distwal: writer %s cannot write: %s; keeping records in memory", self.id, message)
        self._last_error = message

    # -- marks --------------------------------------------------------------------------

    def _write_heartbeat(self, state: str) -> None:
        self._heartbeats += 1
        segment, offset = self._durable_at
        beat = Heartbeat(
            n=self._heartbeats,
            ts=time.time(),
            state=state,
            logged_seq=self._seq,
            durable_seq=self._durable_seq,
            durable_segment=segment,
            durable_offset=offset,
            dropped=self._dropped,
            error=self._last_error,
        )
        _files.write_atomic(self._dir_fd, _layout.HEARTBEAT, beat.to_bytes(), self._modes, durable=False)

    def _write_finish_mark(self, lost: int, end: dict[str, Any]) -> None:
        segment, offset = self._durable_at
        mark = Finish(durable_seq=self._durable_seq, segment=segment, offset=offset, ts=time.time(),
                      dropped=self._dropped, lost=lost, end=end)
        _files.write_atomic(self._dir_fd, _layout.FINISH, mark.to_bytes(), self._modes)
        self._marked = True

    # -- process events -----------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """The child must never touch the parent's files: forget them, start anew on first log."""
        for fd in (self._dir_fd, self._segments._fd if self._segments else -1):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if self._elector is not None:
            self._elector.forget_after_fork()
        closed = self._closed
        self._close_wake_pipe()  # the parent's pipe: the child gets its own in _reset()
        self._reset()
        if closed:
            self._closed, self._room = True, -1
        else:
            self.log = self._log_after_fork  # type: ignore[method-assign,assignment]

    def _log_after_fork(self, record: Mapping[str, Any]) -> int:
        with self._lock:
            if self.__dict__.get("log") == self._log_after_fork:
                self._bind_log()
                self._open()
        return self.log(record)

    def _durable_soon(self, grace: float) -> bool:
        """From a signal handler: wake the flusher and wait briefly for durability.

        False when the interrupted thread is inside log() holding the buffer lock: the
        flusher cannot take the buffer before log() returns, so waiting here would only
        lose it (the handler then asks the flusher to deliver the signal again).
        """
        if not self._lock.acquire(timeout=_LOCK_PROBE):
            return False
        self._lock.release()
        target = self._seq
        self._poke()
        deadline = time.monotonic() + grace
        while self._durable_seq < target and not self._stopped() and time.monotonic() < deadline:
            time.sleep(0.002)
        return True

    def _end_now(self, end: dict[str, Any] | None, grace: float) -> None:
        """From the SIGTERM handler, just before the default action ends the process (no
        atexit will run): accept no more records, wait briefly for durability, write the
        finish mark with `end`. Takes the buffer lock only if it is free within _LOCK_PROBE.
        """
        if end is None or self._dir_fd < 0 or self._marked or not self._lock.acquire(timeout=_LOCK_PROBE):
            return
        try:
            # Closed already: the signal interrupted finish() (a pool worker at its exit)
            # before it wrote the mark; the process ends here, so the mark is written here.
            self._closed = True
            self._room = -1
            target = self._seq
        finally:
            self._lock.release()
        self._poke()
        deadline = time.monotonic() + grace
        while self._durable_seq < target and not self._stopped() and time.monotonic() < deadline:
            time.sleep(0.002)
        try:
            self._write_finish_mark(lost=target - self._durable_seq, end=end)
            self._write_heartbeat("finished")
        except OSError as exc:
            logger.error("distwal: cannot write the finish mark of %s: %s", self.id, exc)

    def _close_wake_pipe(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
