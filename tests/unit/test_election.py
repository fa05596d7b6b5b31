"""The election with an injected clock and liveness probe: the lease decides, the lock only hurries.

Two Electors in one process get "the" lockf lock each (POSIX locks belong to the process),
which is exactly a directory whose locks do not reach across nodes. SharedLock stands in
for a lock that does.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from distwal._config import Config
from distwal._files import ensure_domain
from distwal._layout import Identity, Modes
from distwal._status import status
from distwal.leader.election import (
    LeaseKeeper,
    claim_epoch,
    format_epoch_name,
    highest_epoch,
    node_local_locks,
    read_lease,
    release_lease,
)
from distwal.leader.elector import Elector, owner_of

MODES = Modes.for_config(False)
LEASE_S = 10.0
BOOT = "boot-a"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SharedLock:
    """A lock every Elector of one test shares, as a working NFS lock manager would."""

    def __init__(self, name: str, table: dict[str, str | None]) -> None:
        self.name, self.table, self.held = name, table, False

    def try_acquire(self) -> bool:
        if self.table.get("holder") in (None, self.name):
            self.table["holder"], self.held = self.name, True
        return self.held

    def release(self) -> None:
        if self.held:
            self.table["holder"] = None
        self.held = False

    def forget_after_fork(self) -> None:
        self.held = False


@pytest.fixture
def root(tmp_path: Any) -> str:
    path = str(tmp_path / "wal")
    os.makedirs(os.path.join(path, "writers"))
    return path


def contender(root: str, clock: Clock, host: str, pid: int, *, pid_ns: int = 1,
              dead: set[int] | None = None) -> Elector:
    """An Elector for a process `pid` on `host`; `dead` holds the pids the probe proves dead."""
    identity = Identity(host=host, boot_id=BOOT, pid_ns=pid_ns, pid=pid, create_time=5.0)
    config = Config.load(dir=root, lease_s=LEASE_S)
    domain = ensure_domain(root, MODES)
    gone = dead if dead is not None else set()

    def probe(p: int, started: float, thorough: bool) -> bool | None:
        return p not in gone

    return Elector(config, identity, owner_of(identity, "rank", f"{host}-{pid}"), domain,
                   start=lambda epoch: None,  # type: ignore[arg-type,return-value]
                   clock=clock, probe=probe)


def renew(root: str, leader: Elector, clock: Clock) -> None:
    """The leader's sender renews its lease (as LeaseKeeper does every lease_s / 5)."""
    keeper = LeaseKeeper(root, leader.epoch, leader.owner, LEASE_S, MODES, clock=clock)
    keeper.renewals = (read_lease(root) or {}).get("n", 0)
    keeper._renewed_at = clock() - LEASE_S / 5
    assert keeper.renew_if_due()


def test_lock_held_on_another_node_does_not_displace_a_renewing_leader(root: str) -> None:
    clock = Clock()
    a = contender(root, clock, "nodeA", 100, pid_ns=1)
    b = contender(root, clock, "nodeB", 100, pid_ns=2)
    assert a.acquire() and a.epoch == 1
    for _ in range(30):  # 30 lease-fifths: B holds "the" lock all along, A keeps renewing
        clock.now += LEASE_S / 5
        renew(root, a, clock)
        assert not b.acquire(), "B claimed an epoch while A renewed its lease"
    assert highest_epoch(root) == 1
    assert b.lock.held, "B should hold its node-local lock (that is the premise)"


def test_node_local_locks_are_reported_in_status(root: str) -> None:
    clock = Clock()
    a = contender(root, clock, "nodeA", 100, pid_ns=1)
    b = contender(root, clock, "nodeB", 200, pid_ns=2)
    assert a.acquire()
    assert status(root)["locks_note"] is None
    for _ in range(3):
        clock.now += LEASE_S / 5
        renew(root, a, clock)
        b.acquire()
    assert b.node_local_locks
    assert node_local_locks(root) is not None
    assert status(root)["locks_note"] == f"locks on {root} are node-local: failover waits a lease"


def test_no_note_when_the_lock_holder_waits_out_a_silent_lease(root: str) -> None:
    clock = Clock()
    a = contender(root, clock, "nodeA", 100, pid_ns=1)
    b = contender(root, clock, "nodeB", 200, pid_ns=2)
    assert a.acquire()
    for _ in range(4):  # A's host is gone: nothing renews; B holds its lock and waits
        clock.now += LEASE_S / 5
        assert not b.acquire()
    assert node_local_locks(root) is None


def test_silent_lease_of_another_host_is_taken_after_lease_s_with_one_epoch(root: str) -> None:
    clock = Clock()
    a = contender(root, clock, "nodeA", 100, pid_ns=1)
    b = contender(root, clock, "nodeB", 100, pid_ns=2)
    c = contender(root, clock, "nodeC", 100, pid_ns=3)
    assert a.acquire()
    b.acquire(), c.acquire()  # first sight of A's lease
    clock.now += LEASE_S - 0.1
    assert not b.acquire() and not c.acquire(), "took over before the lease ran out"
    clock.now += 0.2
    won = [e for e in (b, c) if e.acquire()]
    assert len(won) == 1, "both contenders claimed on one stale lease"
    assert highest_epoch(root) == 2
    loser = c if won[0] is b else b
    for _ in range(10):
        clock.now += LEASE_S / 5
        renew(root, won[0], clock)
        assert not loser.acquire()
    assert highest_epoch(root) == 2


def test_same_host_dead_leader_is_replaced_at_once_with_a_shared_lock(root: str) -> None:
    clock = Clock()
    dead: set[int] = set()
    table: dict[str, str | None] = {}
    a = contender(root, clock, "node", 100, dead=dead)
    b = contender(root, clock, "node", 200, dead=dead)
    a.lock, b.lock = SharedLock("a", table), SharedLock("b", table)  # type: ignore[assignment]
    assert a.acquire()
    assert not b.acquire()
    dead.add(100)
    a.lock.release()  # the kernel drops a dead process's lock
    clock.now += 0.3  # no lease wait: the probe proves the owner dead
    assert b.acquire() and b.epoch == 2


def test_same_host_live_leader_with_lost_lock_keeps_leading(root: str) -> None:
    clock = Clock()
    a = contender(root, clock, "node", 100)
    b = contender(root, clock, "node", 200)
    assert a.acquire()
    for _ in range(20):
        clock.now += LEASE_S / 5
        renew(root, a, clock)
        assert not b.acquire()
    assert highest_epoch(root) == 1


def test_released_lease_is_taken_at_once_by_the_lock_holder(root: str) -> None:
    clock = Clock()
    a = contender(root, clock, "nodeA", 100, pid_ns=1)
    b = contender(root, clock, "nodeB", 100, pid_ns=2)
    assert a.acquire()
    assert not b.acquire()
    release_lease(root, a.epoch, MODES)
    clock.now += 0.3
    assert b.acquire() and b.epoch == 2


def test_released_lease_and_node_local_locks_claim_one_epoch(root: str) -> None:
    clock = Clock()
    a = contender(root, clock, "nodeA", 100, pid_ns=1)
    b = contender(root, clock, "nodeB", 100, pid_ns=2)
    c = contender(root, clock, "nodeC", 100, pid_ns=3)
    assert a.acquire()
    release_lease(root, a.epoch, MODES)
    wins = [b.acquire(), c.acquire()]
    assert wins == [True, False], "the second lock holder claimed on a lease the first just took"
    assert highest_epoch(root) == 2


def test_epoch_claimed_without_a_lease_is_waited_out_then_skipped(root: str) -> None:
    clock = Clock()
    a = contender(root, clock, "nodeA", 100, pid_ns=1)
    b = contender(root, clock, "nodeB", 100, pid_ns=2)
    assert a.acquire()
    release_lease(root, a.epoch, MODES)
    # A contender claimed epoch 2 and died before writing its lease.
    assert claim_epoch(root, {"owner": "ghost"}, MODES, expected=1) == 2
    assert not b.acquire(), "claimed over an epoch it had not seen"
    clock.now += LEASE_S + 0.1
    assert b.acquire() and b.epoch == 3


def test_claim_epoch_is_a_compare_and_swap(root: str) -> None:
    assert claim_epoch(root, {"owner": "x"}, MODES, expected=0) == 1
    assert claim_epoch(root, {"owner": "y"}, MODES, expected=0) is None
    os.close(os.open(os.path.join(root, "epochs", format_epoch_name(2)), os.O_CREAT | os.O_WRONLY, 0o600))
    assert claim_epoch(root, {"owner": "z"}, MODES, expected=1) is None
    assert claim_epoch(root, {"owner": "z"}, MODES) == 3  # without expected: the next free one


def test_no_note_for_a_renewing_owner_on_our_own_kernel(root: str) -> None:
    clock = Clock()
    a = contender(root, clock, "node", 100)
    b = contender(root, clock, "node", 200)  # same boot id and pid namespace: one kernel, one lock table
    assert a.acquire()
    for _ in range(5):
        clock.now += LEASE_S / 5
        renew(root, a, clock)
        assert not b.acquire()
    assert not b.node_local_locks and node_local_locks(root) is None


def test_a_directory_recreated_under_its_leader_is_led_again_at_epoch_1(root: str) -> None:
    # The directory is removed under a running job and recreated: its epoch files are gone,
    # while the leader that stepped down wrote its released lease (epoch 1) into the new one.
    clock = Clock()
    a = contender(root, clock, "nodeA", 100)
    assert a.acquire() and a.epoch == 1
    for name in os.listdir(os.path.join(root, "epochs")):
        os.unlink(os.path.join(root, "epochs", name))
    release_lease(root, 1, MODES)
    a.lock.release()
    for _ in range(4):  # a few contention rounds, past a lease: the claim must not wait for epoch 1's file
        if a.acquire():
            break
        clock.now += LEASE_S / 2
    assert a.epoch == 1 and highest_epoch(root) == 1 and not (read_lease(root) or {}).get("released")
