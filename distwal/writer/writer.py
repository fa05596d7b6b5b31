"""Writer: one process's durable log. log() buffers; a flusher thread group-commits.

The caller's cost is orjson plus a few appends under a lock: the payload is copied into
a bytearray (keeping each orjson bytes object alive costs more than the serialization)
and its timestamp into an array. The flusher (flusher.py) takes the buffer, writes it in
blocks into the writer's folder (folder.py), and fdatasyncs once per group commit, and
only when something is new.
"""

from __future__ import annotations

import threading
import time
from array import array
from collections.abc import Mapping
from typing import Any, Callable, Protocol

import orjson

from .._config import Config
from .._cursor import Position, read_cursors
from .._ends import end_in_flight, make_end
from .._exceptions import ClosedError, FullError
from .._hooks import hooks
from .._layout import Identity, Modes
from .._marks import Meta
from .._record import BLOCK_BYTES
from .._segment import SegmentWriter
from ..leader.election import LeaseWatch
from .flusher import Block, Flusher
from .folder import Folder
from .values import OPTS, default, keep_non_finite

_LOCK_PROBE = 0.05  # seconds: a buffer lock held longer than this is held by the interrupted thread


class Elector(Protocol):
    """The election a rank's writer takes part in; built by init() (distwal.leader.rank)."""

    def stop(self, drain_timeout: float = 0.0) -> None: ...

    def forget_after_fork(self) -> None: ...


# Starts a writer's elector: (config, identity, writer id, rank, domain) -> the running elector.
StartElector = Callable[[Config, Identity, str, "int | None", str], Elector]


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

    def __init__(self, config: Config, domain: str, start_elector: StartElector | None = None) -> None:
        self.config = config
        self._start_elector = start_elector  # None: this writer never leads
        self._max_record = config.max_record_bytes
        self._folder = Folder(config, domain, Modes.for_config(config.shared_group))
        self._reset()
        self._open()

    # -- state ------------------------------------------------------------------------

    def _reset(self) -> None:
        """Fresh in-memory state: used at creation and in a forked child."""
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)  # the buffer has room again
        self._buf = bytearray()  # the block being filled: payload lines ...
        self._ts = array("d")  # ... and their timestamps
        self._stamp = self._ts.append  # bound once per block: one lookup less per log()
        self._seq = 0  # last seq handed out
        self._sealed: list[Block] = []  # full blocks for the flusher
        self._held_bytes = 0  # sealed, or taken by the flusher and not yet on disk
        self._room = min(BLOCK_BYTES, self.config.max_buffer_bytes)  # how large _buf may grow before the slow path
        self._dropped = 0
        self._closed = False
        self._bind_log()
        self._flusher = Flusher(self.config, self._folder, self._take_blocks, self._release, self._counts)
        self._elector: Elector | None = None

    def _open(self) -> None:
        """Claim a new identity and folder, write the metadata, start the flusher."""
        self.identity = Identity.of_this_process()
        folder = self._folder
        folder.claim(self.identity)
        self._flusher.start()
        if self._start_elector is not None:
            self._elector = self._start_elector(
                self.config, self.identity, folder.id, folder.meta.rank, folder.domain
            )
        hooks.attach(self)

    @property
    def id(self) -> str:
        """The writer id: its folder's name, new after a wrongful adoption."""
        return self._folder.id

    @property
    def meta(self) -> Meta:
        return self._folder.meta

    @property
    def domain(self) -> str:
        return self._folder.domain

    @property
    def _segments(self) -> SegmentWriter | None:
        return self._folder.segments  # benchmarks/append.py reads the synced position here

    # -- the caller's side --------------------------------------------------------------

    def log(self, record: Mapping[str, Any], _dumps: Any = orjson.dumps, _now: Any = time.time) -> int:
        """Append `record`; return its seq (0 if dropped under on_full="drop")."""
        try:
            data = _dumps(record, default, OPTS)
        except TypeError as exc:  # orjson wraps what default() raised: show the hint, not the wrapper
            raise (exc.__cause__ if isinstance(exc.__cause__, TypeError) else exc) from None
        # orjson writes NaN and infinities as null. A byte test first (memchr, about 20 ns):
        # most metric records hold no "u" at all, so they never pay for the substring search.
        if 0x75 in data and b"null" in data:  # 0x75: "u"
            kept = keep_non_finite(record)
            if kept is not record:
                data = _dumps(kept, default, OPTS)
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
            self._flusher.wait_durable(seq, None)
        return seq

    def _bind_log(self) -> None:
        # Never through self.__dict__: reading it turns the attributes' inline values into a dict
        # that CPython 3.11 does not specialize attribute access for, and log() pays for it.
        try:
            del self.log
        except AttributeError:
            pass  # log() is the class's
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
                self._flusher.poke()
                continue
            if self.config.on_full == "drop":
                self._dropped += 1
                return False
            if self.config.on_full == "raise":
                raise FullError(
                    f"distwal buffer full ({limit} bytes not yet written): the disk is slow or full; "
                    "raise max_buffer_bytes or use on_full='block'"
                )
            self._flusher.poke()
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
        if not self._flusher.wait_durable(target, timeout):
            return False
        if delivered:
            return _wait_delivered(self.config, self.id, target, deadline)
        return True

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
        folder = self._folder
        if not folder.claimed:  # a forked child that never logged: it owns no files
            hooks.detach(self)
            return True
        target = self._seq
        flusher = self._flusher
        durable = flusher.wait_durable(target, timeout)
        flusher.stop(timeout)
        ok = durable and flusher.durable_seq >= target
        ok = flusher.mark_finished(target, end) and ok
        folder.close()
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
        return self._flusher.durable_seq

    @property
    def dropped(self) -> int:
        return self._dropped

    # -- the flusher's side of the buffer --------------------------------------------------

    def _take_blocks(self) -> list[Block]:
        """The sealed blocks, the one being filled sealed too; the flusher owns them now."""
        with self._lock:
            if self._buf:
                self._seal()
            sealed, self._sealed = self._sealed, []
        return sealed

    def _release(self, written: int) -> None:
        """`written` bytes of taken blocks are on disk: room for as many in the buffer."""
        with self._lock:
            self._held_bytes -= written
            self._set_room()
            self._space.notify_all()

    def _counts(self) -> tuple[int, int]:
        return self._seq, self._dropped

    # -- process events (the hooks in _hooks call these) -----------------------------------

    def finish_at_exit(self, end: dict[str, Any]) -> bool:
        """finish() within exit_timeout, writing `end` (how the process ends) in the finish mark."""
        return self._finish(self.config.exit_timeout, end)

    def durable_soon(self, grace: float, signum: int) -> bool:
        """From a signal handler: wake the flusher and wait briefly for durability.

        False when the interrupted thread is inside log() holding the buffer lock: the
        flusher cannot take the buffer before log() returns, so waiting here would only
        lose it; the flusher delivers `signum` again once it has written the buffer.
        """
        if not self._lock.acquire(timeout=_LOCK_PROBE):
            self._flusher.resignal = signum
            self._flusher.poke()
            return False
        self._lock.release()
        self._flusher.wait_briefly(self._seq, grace)
        return True

    def end_now(self, end: dict[str, Any] | None, grace: float) -> None:
        """From the SIGTERM handler, just before the default action ends the process (no
        atexit will run): accept no more records, wait briefly for durability, write the
        finish mark with `end`. Takes the buffer lock only if it is free within _LOCK_PROBE.
        """
        folder = self._folder
        if end is None or not folder.claimed or folder.finished or not self._lock.acquire(timeout=_LOCK_PROBE):
            return
        try:
            # Closed already: the signal interrupted finish() (a pool worker at its exit)
            # before it wrote the mark; the process ends here, so the mark is written here.
            self._closed = True
            self._room = -1
            target = self._seq
        finally:
            self._lock.release()
        self._flusher.wait_briefly(target, grace)
        self._flusher.mark_finished(target, end)

    def after_fork_in_child(self) -> None:
        """The child must never touch the parent's files: forget them, start anew on first log."""
        self._folder.forget()
        if self._elector is not None:
            self._elector.forget_after_fork()
        closed = self._closed
        self._flusher.close_wake_pipe()  # the parent's pipe: the child gets its own in _reset()
        self._reset()
        if closed:
            self._closed, self._room = True, -1
        else:
            self.log = self._log_after_fork  # type: ignore[method-assign,assignment]

    def _log_after_fork(self, record: Mapping[str, Any]) -> int:
        with self._lock:
            if self.log == self._log_after_fork:
                self._bind_log()
                self._open()
        return self.log(record)


def _wait_delivered(config: Config, writer_id: str, target: int, deadline: float) -> bool:
    """Poll the cursor book until the sink acknowledged `target`; False on a dead letter,
    at the deadline, or once no leader lease has moved for lease_s."""
    if target == 0:
        return True
    watch = LeaseWatch(config.dir, config.lease_s)
    pause = 0.01
    while True:
        pos = read_cursors(config.dir).get(writer_id, Position())
        if pos.dead and pos.dead_min <= target:
            return False  # one of the records logged before the call is a dead letter
        if pos.seq >= target:
            return True
        if watch.stale() or time.monotonic() >= deadline:
            return False
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.2)
