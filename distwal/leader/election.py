"""Electing the one process that sends: the lock is the fast path, lease and epoch the truth.

    <dir>/leader.lock            POSIX lock; never unlinked
    <dir>/leader.json            the lease: epoch, owner, renewal counter; rewritten to renew
    <dir>/epochs/NNNNNNNNNNNNNNNN  one file per epoch ever claimed, created exclusively
    <dir>/sink.json              the sink the first leader shipped to; others must match

Why lockf and not flock: portalocker's POSIX default is flock, which a forked child
inherits (a DataLoader worker would keep a dead leader's lock) and which NFS emulates
poorly; lockf/fcntl locks belong to the process, are not inherited across fork, and are
the locks NFS servers honour. Closing *any* descriptor of the file drops such a lock, so
the lock lives on a dedicated close-on-exec descriptor nothing else in the process opens.

Locks can leak (an NFSv3 client that died, a hung leader), so a contender that cannot
get the lock but sees the lease unchanged for lease_s on its own monotonic clock claims
the next epoch and leads anyway. A leader that sees a higher epoch, or fails to renew
within its lease, stops at once; every batch carries its epoch so sinks fence the rest.

The lease decides, the lock only hurries (issue 11): locks may not reach other nodes
(NFS `local_lock`/`nolock`, FUSE mounts), so holding the lock never overrides a lease
another owner still renews. The lock lets a contender skip the wait only when the lease
is released or its owner is proven dead on this kernel. Claiming is a compare-and-swap:
epoch E+1 is created only by whoever saw E as the current epoch, so contenders that race
on one stale lease claim one epoch between them, not one each.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson
import portalocker
from portalocker.portalocker import LockfLocker

from .. import _files
from .._config import public_url
from .._exceptions import LayoutError
from .._layout import Modes

logger = logging.getLogger("distwal")

LOCK = "leader.lock"
LEASE = "leader.json"
EPOCHS = "epochs"
SINK = "sink.json"
LOCKS_NOTE = "locks.json"  # written once a contender proves the locks node-local
RENEW_FRACTION = 5  # the leader renews every lease_s / 5
KEEP_EPOCH_FILES = 16  # older epoch files are pruned

_LOCKER = LockfLocker()


class LostLeadership(Exception):
    """Raised inside the leader's loop when this process must stop sending at once."""


def format_epoch_name(epoch: int) -> str:
    return f"{epoch:016d}"


def parse_epoch_name(name: str) -> int | None:
    return int(name) if len(name) == 16 and name.isdigit() else None


class LeaderLock:
    """An exclusive lockf lock on <dir>/leader.lock, tried without blocking."""

    def __init__(self, root: str, modes: Modes) -> None:
        self.root = root
        self.modes = modes
        self._fd = -1
        self.held = False

    def try_acquire(self) -> bool:
        if self.held:
            return True
        if self._fd < 0:
            dir_fd = _files.open_dir(self.root)
            try:
                fd = os.open(
                    LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, self.modes.file,
                    dir_fd=dir_fd,
                )
            except OSError as exc:
                raise LayoutError(
                    f"{os.path.join(self.root, LOCK)} cannot be the leader lock ({exc.strerror}): "
                    "remove whatever was planted there"
                ) from None
            finally:
                os.close(dir_fd)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise LayoutError(f"{os.path.join(self.root, LOCK)} is not a regular file: remove it")
            self._fd = fd
        try:
            _LOCKER.lock(self._fd, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.AlreadyLocked:
            return False
        except portalocker.LockException as exc:
            logger.warning("distwal: cannot lock %s: %s", os.path.join(self.root, LOCK), exc)
            return False
        self.held = True
        return True

    def release(self) -> None:
        """Drop the lock (closing the descriptor drops it, also if unlock fails)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.held = False

    def forget_after_fork(self) -> None:
        """In a forked child: the lock is the parent's; close our copy of the descriptor."""
        self.release()


def _epochs_fd(root: str, modes: Modes) -> int:
    return _files.ensure_subdir(root, EPOCHS, modes)


def highest_epoch(root: str) -> int:
    try:
        fd = _files.open_dir(os.path.join(root, EPOCHS))
    except OSError:
        return 0
    try:
        names = os.listdir(fd)
    finally:
        os.close(fd)
    return max((e for e in map(parse_epoch_name, names) if e is not None), default=0)


def claim_epoch(root: str, owner: dict[str, Any], modes: Modes, expected: int | None = None) -> int | None:
    """Claim the next epoch by creating its file exclusively; durable before it is used.

    With `expected`, claim expected + 1 only if `expected` is still the highest epoch and
    nobody creates expected + 1 first; None when the claim lost (someone else leads now).
    """
    fd = _epochs_fd(root, modes)
    try:
        while True:
            names = os.listdir(fd)
            current = max((e for e in map(parse_epoch_name, names) if e is not None), default=0)
            if expected is not None and current != expected:
                return None
            epoch = current + 1
            try:
                file_fd = _files.create_file(fd, format_epoch_name(epoch), modes)
            except FileExistsError:
                if expected is not None:
                    return None  # another contender won this very epoch
                continue  # someone claimed it first: try the one after
            try:
                _files.write_all(file_fd, orjson.dumps({**owner, "epoch": epoch, "ts": time.time()}))
                os.fsync(file_fd)
            finally:
                os.close(file_fd)
            os.fsync(fd)
            for name in names:
                old = parse_epoch_name(name)
                if old is not None and old <= epoch - KEEP_EPOCH_FILES:
                    try:
                        os.unlink(name, dir_fd=fd)
                    except OSError:
                        pass
            return epoch
    finally:
        os.close(fd)


def _epoch_of(lease: dict[str, Any]) -> int:
    epoch = lease.get("epoch")
    return epoch if type(epoch) is int else 0


def read_lease(root: str) -> dict[str, Any] | None:
    return _files.read_root_json(root, LEASE)


def release_lease(root: str, epoch: int, modes: Modes) -> None:
    """Mark our lease released, for status; only if no newer leader has replaced it."""
    lease = read_lease(root)
    if lease is None or _epoch_of(lease) != epoch:
        return
    lease.update(released=True, ts=time.time())
    try:
        _files.write_root_json(root, LEASE, lease, modes, durable=False)
    except OSError:
        pass


def lease_epoch(lease: dict[str, Any] | None) -> int:
    return 0 if lease is None else _epoch_of(lease)


def note_node_local_locks(root: str, host: str, modes: Modes) -> None:
    """Record, for status, that a lock held here did not exclude a live leader elsewhere."""
    if _files.read_root_json(root, LOCKS_NOTE) is not None:
        return
    try:
        _files.write_root_json(root, LOCKS_NOTE, {"node_local": True, "seen_from": host, "ts": time.time()},
                                modes, durable=False)
    except OSError as exc:
        logger.debug("distwal: cannot record node-local locks: %s", exc)
    logger.warning("distwal: locks on %s are node-local: failover waits a lease", root)


def node_local_locks(root: str) -> dict[str, Any] | None:
    """The note written by note_node_local_locks, or None."""
    return _files.read_root_json(root, LOCKS_NOTE)


def recorded_sink(root: str) -> str | None:
    found = _files.read_root_json(root, SINK)
    return None if found is None else found.get("sink")


def record_sink(root: str, sink: str, modes: Modes) -> str:
    """Record `sink` as the directory's sink unless one is recorded; return the recorded one.

    What is written and compared is the URL without its secrets (a password, token=...): the
    directory is shared, maybe group-readable, and the same sink reached with another
    password is the same sink. When they match, `sink` itself is returned (with its secrets,
    which the caller needs to connect).
    """
    public = public_url(sink)
    fd = _files.open_dir(root)
    try:
        _files.create_once(fd, SINK, orjson.dumps({"sink": public, "ts": time.time()}), modes)
        found = _files.read_json(fd, SINK)
    finally:
        os.close(fd)
    recorded = str(found["sink"]) if isinstance(found, dict) and "sink" in found else public
    return sink if public_url(recorded) == public else recorded


@dataclass
class LeaseKeeper:
    """The leader's side of the lease: renew it, and notice at once when leadership is lost."""

    root: str
    epoch: int
    owner: dict[str, Any]
    lease_s: float
    modes: Modes
    clock: Callable[[], float] = time.monotonic
    renewals: int = 0
    _renewed_at: float = field(default=0.0)
    lost: str | None = None

    def __post_init__(self) -> None:
        self._renewed_at = self.clock()

    def renew_if_due(self) -> bool:
        """Renew when due; False once leadership is lost (the reason is in .lost)."""
        if self.lost:
            return False
        now = self.clock()
        if now - self._renewed_at >= self.lease_s:
            return self._lose(f"could not renew the lease for {now - self._renewed_at:.1f}s (stalled)")
        if self.renewals and now - self._renewed_at < self.lease_s / RENEW_FRACTION:
            return True
        newest = highest_epoch(self.root)
        if newest > self.epoch:
            return self._lose(f"epoch {newest} was claimed by another leader")
        lease = read_lease(self.root)
        if lease is not None and _epoch_of(lease) > self.epoch:
            return self._lose(f"the lease belongs to epoch {lease.get('epoch')}")
        self.renewals += 1
        body = {**self.owner, "epoch": self.epoch, "n": self.renewals, "ts": time.time(), "lease_s": self.lease_s}
        try:
            _files.write_root_json(self.root, LEASE, body, self.modes, durable=False)
        except OSError as exc:
            logger.warning("distwal: cannot renew the lease: %s", exc)
            return self.clock() - self._renewed_at < self.lease_s
        self._renewed_at = now
        return True

    def hold(self) -> None:
        """Renew when due; raise LostLeadership once leadership is lost."""
        if not self.renew_if_due():
            raise LostLeadership(self.lost or "lease lost")

    def valid(self) -> bool:
        """Still the leader right now (call before anything that must be fenced)."""
        return not self.lost and self.clock() - self._renewed_at < self.lease_s

    def _lose(self, reason: str) -> bool:
        self.lost = reason
        logger.warning("distwal: leader epoch %d stops: %s", self.epoch, reason)
        return False


_UNREAD = object()


def _stamp(path: str) -> tuple[int, int, int] | None:
    """The lease file's inode, mtime and size: every renewal is a new file (renamed over),
    so these change even where a client cache still serves the old content (a FUSE
    kernel_cache mount keeps pages of a same-sized file across opens)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class LeaseWatch:
    """A contender's side: has the lease stayed unchanged for lease_s on our own clock?

    The token also holds the highest epoch seen at a claim attempt, so an epoch claimed by
    a contender that died before writing its lease is waited out like a silent lease.
    """

    def __init__(self, root: str, lease_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.lease_s = lease_s
        self.clock = clock
        self._token: Any = _UNREAD
        self._since = clock()
        self.lease: dict[str, Any] | None = None  # as last read by stale()
        self.highest: int | None = None  # the highest epoch listed at the last claim attempt
        self.changes = 0  # times the lease was seen to change (renewals seen)

    def stale(self) -> bool:
        self.lease = lease = read_lease(self.root)
        token = None if lease is None else (lease.get("epoch"), lease.get("n"), lease.get("owner"), lease.get("released"),
                                            _stamp(os.path.join(self.root, LEASE)))
        now = self.clock()
        if token != self._token:
            if self._token is not _UNREAD:
                self.changes += 1
            self._token, self._since = token, now
            return False
        return now - self._since >= self.lease_s

    def note_highest(self, highest: int) -> None:
        """A claim attempt listed `highest`: a new value restarts the wait like a lease change."""
        if highest != self.highest:
            self.highest = highest
            self._since = self.clock()

    def expected_epoch(self, stale: bool) -> int:
        """The epoch a claim must see as current: the lease's, or an orphan epoch waited out."""
        current = lease_epoch(self.lease)
        if stale and self.highest is not None:
            return max(current, self.highest)
        return current

    def silent_for(self) -> float:
        return self.clock() - self._since
