"""Taking part in the election, and hosting the sender once elected.

A rank never sends on its own threads: when its Elector wins, it starts the sender as a
fresh interpreter (never a fork: CUDA and NCCL may be up) that dies with it, so the
training loop only pays for a lock attempt every CONTEND_INTERVAL. `distwal run` has
nothing else to do, so it hosts the sender on a thread; `distwal drain` leads once,
through lead() (lead.py), which acquires as an Elector does.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol

import orjson

from .._config import Config
from .._hooks import hooks
from .._layout import Identity, Modes
from .._signals import start_background_thread
from .election import (
    LeaderLock,
    LeaseKeeper,
    LeaseWatch,
    claim_epoch,
    highest_epoch,
    note_node_local_locks,
    record_sink,
    release_lease,
)
from .liveness import probe_process

if TYPE_CHECKING:
    from .sender import Sender  # imported by whoever builds one: a rank's elector never does

logger = logging.getLogger("distwal")

CONTEND_INTERVAL = 0.3  # seconds between lock attempts (jittered): failover within ~1 s
RESTART_BACKOFF = 1.0  # seconds before re-contending after a sender ended by itself


def owner_of(identity: Identity, kind: str, name: str | None = None, **extra: Any) -> dict[str, Any]:
    """Who leads, as the lease and the epoch files say it: enough for status, and for a
    contender on the same kernel to prove the leader dead (boot id, pid namespace, start)."""
    return {
        "owner": name or f"{kind}-{identity.host}-{identity.pid}",
        "kind": kind,
        "host": identity.host,
        "pid": identity.pid,
        "boot_id": identity.boot_id,
        "pid_ns": identity.pid_ns,
        "create_time": identity.create_time,
        **extra,
    }


class Leadership(Protocol):
    outcome: str | None

    def alive(self) -> bool: ...

    def drain(self, timeout: float) -> None: ...

    def stop(self, timeout: float) -> None: ...


class ThreadLeadership:
    """The sender on a thread of this process (for `distwal run` and `distwal drain`)."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.outcome: str | None = None
        self._stop = threading.Event()
        self._deadline: float | None = None
        self._thread = start_background_thread(self._run, "distwal-sender")

    def _run(self) -> None:
        try:
            self.outcome = self.sender.run(self._stop.is_set, lambda: self._deadline)
        finally:
            self.sender.close()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def drain(self, timeout: float) -> None:
        self.request_drain(timeout)
        self._thread.join(timeout + 5)

    def request_drain(self, timeout: float) -> None:
        """Ship what finished and dead writers left, then end; do not wait for it."""
        self._deadline = self.sender.clock() + timeout

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._thread.join(timeout)


class ProcessLeadership:
    """The sender in a fresh interpreter that dies with this process (see leader/__main__)."""

    def __init__(self, config: Config, epoch: int, owner: dict[str, Any], domain: str) -> None:
        self.outcome: str | None = None
        env = dict(os.environ)
        config.export(env)
        env["DISTWAL_LEASE_S"] = str(config.lease_s)
        args = [sys.executable, "-m", "distwal.leader", config.dir, str(epoch), domain,
                orjson.dumps(owner).decode(), str(os.getpid())]
        with hooks.spawning:
            self._proc = subprocess.Popen(
                args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True, start_new_session=False
            )

    def alive(self) -> bool:
        if self._proc.poll() is None:
            return True
        if self.outcome is None and self._proc.stdout is not None:
            self.outcome = self._proc.stdout.read().decode(errors="replace").strip() or f"exit {self._proc.returncode}"
        return False

    def drain(self, timeout: float) -> None:
        self._command(f"drain {timeout}\n")
        try:
            self._proc.wait(timeout + 5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def stop(self, timeout: float) -> None:
        self._command("stop\n")
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def _command(self, line: str) -> None:
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(line.encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def forget(self) -> None:
        """In a forked child: the sender belongs to the parent; drop our handles only."""
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


class Elector:
    """One process's part in the election: contend, lead, supervise, step down."""

    def __init__(
        self,
        config: Config,
        identity: Identity,
        owner: dict[str, Any],
        domain: str,
        start: Callable[[int], Leadership],
        may_lead: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
        probe: Callable[[int, float, bool], bool | None] = probe_process,
    ) -> None:
        self.config = config
        self.identity = identity
        self.owner = owner
        self.domain = domain
        self.modes = Modes.for_config(config.shared_group)
        self.lock = LeaderLock(config.dir, self.modes)
        self.clock = clock
        self.probe = probe
        self.watch = LeaseWatch(config.dir, config.lease_s, clock)
        self.node_local_locks = False  # proven once: see _notice_node_local_locks
        self._renewals_at_lock: int | None = None  # lease changes counted when we got the lock
        self.leadership: Leadership | None = None
        self.epoch = 0
        self._start = start
        self._may_lead = may_lead
        self._stop = threading.Event()
        self._refused: str | None = None
        self._drain_timeout = 0.0
        self._resume_at = 0.0
        self._thread: threading.Thread | None = None

    @property
    def leading(self) -> bool:
        return self.leadership is not None

    def start(self) -> Elector:
        self._thread = start_background_thread(self._run, "distwal-elector")
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.leadership is None:
                    self.contend()
                else:
                    self.supervise()
            except OSError as exc:
                logger.warning("distwal: election: %s", exc)
            except Exception:  # a bug here must not end the election thread silently
                logger.exception("distwal: election failed; retrying")
                self._resume_at = self.clock() + RESTART_BACKOFF
            self._stop.wait(CONTEND_INTERVAL * random.uniform(0.7, 1.3))
        # Leadership ends on this thread: the sender process was started from it, and
        # PR_SET_PDEATHSIG fires when the starting *thread* ends.
        self._end_leadership(self._drain_timeout)

    def contend(self) -> bool:
        """One attempt to become the leader and start sending. True when this process leads."""
        if not self.acquire():
            return False
        logger.info("distwal: %s leads with epoch %d", self.owner.get("owner"), self.epoch)
        self.leadership = self._start(self.epoch)
        return True

    def acquire(self) -> bool:
        """Take the lock (or a stale lease), check the sink, claim the next epoch, write the lease.

        The lease decides, the lock only hurries: with the lock, claim at once only when the
        lease is released or its owner proven dead; otherwise wait, like a contender without
        the lock, until the lease has not moved for lease_s on our own clock.
        """
        if self.clock() < self._resume_at or not self._may_lead():
            return False
        locked = self.lock.try_acquire()
        stale = self.watch.stale()
        if not locked:
            self._renewals_at_lock = None
        if not stale:
            if not locked:
                return False
            if self.lease_state(self.watch.lease) == "held":
                self._notice_node_local_locks()
                return False
        recorded = record_sink(self.config.dir, self.config.sink, self.modes)
        if recorded != self.config.sink:
            if self._refused != recorded:
                logger.error(
                    "distwal: not leading: this directory ships to %s but this process is configured for %s; "
                    "set DISTWAL_SINK to match or use another directory",
                    _redact(recorded), _redact(self.config.sink),
                )
                self._refused = recorded
            self.lock.release()
            self._resume_at = self.clock() + 10 * CONTEND_INTERVAL
            return False
        self.owner["locked"] = locked  # lets the next contender tell a dead holder from a lockless leader
        # Never expect more than the epoch files show: a directory removed and recreated under a
        # running job keeps no epoch files, and a claim that waits for one would wait for ever.
        expected = min(self.watch.expected_epoch(stale), highest_epoch(self.config.dir))
        epoch = claim_epoch(self.config.dir, self.owner, self.modes, expected)
        if epoch is None:
            # Someone else claimed first (or an epoch without a lease exists): wait and look again.
            self.watch.note_highest(highest_epoch(self.config.dir))
            return False
        self.epoch = epoch
        LeaseKeeper(self.config.dir, self.epoch, self.owner, self.config.lease_s, self.modes).renew_if_due()
        return True

    def lease_state(self, lease: dict[str, Any] | None) -> str:
        """"free" (none, released, or ours), "dead" (its owner proven dead here) or "held"."""
        if lease is None or lease.get("released") or lease.get("owner") == self.owner.get("owner"):
            return "free"
        # On our kernel its process can be checked now, instead of waiting out its lease.
        if lease.get("boot_id") == self.identity.boot_id and lease.get("pid_ns") == self.identity.pid_ns:
            pid, started = lease.get("pid"), lease.get("create_time")
            if type(pid) is int and isinstance(started, (int, float)):
                if self.probe(pid, float(started), True) is False:
                    return "dead"
        return "held"

    def _notice_node_local_locks(self) -> None:
        """We hold the lock, yet another owner that took it (locked: true) renews its lease:
        the lock did not reach that owner, so locks here are node-local."""
        lease = self.watch.lease or {}
        if lease.get("locked") is not True:
            return  # a leader that took over through a stale lease never had the lock
        if lease.get("boot_id") == self.identity.boot_id and lease.get("pid_ns") == self.identity.pid_ns:
            return  # one kernel, one mount: its locks are shared; this is something else
        if self._renewals_at_lock is None:
            self._renewals_at_lock = self.watch.changes
        elif self.watch.changes >= self._renewals_at_lock + 2 and not self.node_local_locks:
            # Two renewals while we hold the lock: not the last breath of a dying leader.
            self.node_local_locks = True
            note_node_local_locks(self.config.dir, self.identity.host, self.modes)

    def supervise(self) -> None:
        """Step down when the sender ended: lost lease, newer epoch, or a crash."""
        leadership = self.leadership
        if leadership is None or leadership.alive():
            if leadership is not None:
                if highest_epoch(self.config.dir) > self.epoch:
                    leadership.stop(5.0)
                elif not self.lock.held:
                    self.lock.try_acquire()  # led through a stale lease: take the lock once it frees
            return
        logger.info("distwal: epoch %d sender ended: %s", self.epoch, leadership.outcome)
        self._step_down()
        self._resume_at = self.clock() + RESTART_BACKOFF

    def _step_down(self) -> None:
        self.leadership = None
        release_lease(self.config.dir, self.epoch, self.modes)
        self.lock.release()
        self.watch = LeaseWatch(self.config.dir, self.config.lease_s, self.clock)
        self._renewals_at_lock = None

    def stop(self, drain_timeout: float = 0.0) -> None:
        """Stop contending; a leader first drains what finished and dead writers left."""
        self._drain_timeout = drain_timeout
        self._stop.set()
        if self._thread is None:
            self._end_leadership(drain_timeout)
        elif self._thread is not threading.current_thread():
            self._thread.join(drain_timeout + 10.0)

    def _end_leadership(self, drain_timeout: float) -> None:
        leadership = self.leadership
        if leadership is not None:
            if drain_timeout > 0 and leadership.alive():
                leadership.drain(drain_timeout)
            else:
                leadership.stop(5.0)
            self._step_down()
        self.lock.release()

    def forget_after_fork(self) -> None:
        if isinstance(self.leadership, ProcessLeadership):
            self.leadership.forget()
        self.leadership = None
        self.lock.forget_after_fork()


def _redact(url: str) -> str:
    from .._config import _redact as redact

    return redact(url)
