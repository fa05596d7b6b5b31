"""LivenessJudge with an injected clock and process probe: a writer is dead only with proof.

Same kernel: the probe decides (a signal 0 at most checks, psutil at first sight and after a
silence). Another host: only a heartbeat that has not moved for a lease, on our own clock.
"""

from __future__ import annotations

import os
from dataclasses import replace

import psutil

from distwal._layout import Identity
from distwal._marks import Meta
from distwal.leader.liveness import LivenessJudge, probe_process

LEASE_S = 10.0
ME = Identity(host="a", boot_id="boot-a", pid_ns=1, pid=1, create_time=5.0)
HERE = Meta(boot_id="boot-a", pid_ns=1, pid=4242, create_time=7.0)
ELSEWHERE = replace(HERE, boot_id="boot-b")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Probe:
    """Answers as told, and remembers how it was asked."""

    def __init__(self, answer: bool | None = True) -> None:
        self.answer = answer
        self.calls: list[tuple[int, float, bool]] = []

    def __call__(self, pid: int, create_time: float, thorough: bool) -> bool | None:
        self.calls.append((pid, create_time, thorough))
        return self.answer


def judge(clock: Clock, probe: Probe | None = None) -> LivenessJudge:
    return LivenessJudge(ME, LEASE_S, clock, probe or Probe())


def scan_for(j: LivenessJudge, clock: Clock, seconds: float, step: float = 0.5) -> None:
    """The leader's scans over `seconds`, one tick each `step` (its liveness checks)."""
    end = clock.now + seconds
    while clock.now < end:
        clock.now = min(end, clock.now + step)
        j.tick()


def test_another_hosts_writer_is_dead_once_its_heartbeat_stood_still_for_a_lease():
    clock = Clock()
    j = judge(clock)
    j.observe("w", "beat-1")
    scan_for(j, clock, LEASE_S - 0.5)
    j.observe("w", "beat-1")  # unchanged
    assert not j.is_dead("w", ELSEWHERE)
    scan_for(j, clock, 0.5)
    assert j.is_dead("w", ELSEWHERE)


def test_a_heartbeat_seen_moving_keeps_another_hosts_writer_alive():
    clock = Clock()
    j = judge(clock)
    j.observe("w", "beat-1")
    assert not j.seen_beating("w")
    for n in range(2, 30):
        scan_for(j, clock, 1.0)
        j.observe("w", f"beat-{n}")
        assert not j.is_dead("w", ELSEWHERE)
    assert j.seen_beating("w") and j.silent_for("w") == 0.0


def test_an_unseen_writer_on_another_host_is_never_judged_dead():
    clock = Clock()
    j = judge(clock)
    clock.now += 10 * LEASE_S
    assert not j.seen("w") and not j.is_dead("w", ELSEWHERE)


def test_a_stall_of_the_observer_is_not_evidence_against_anyone():
    clock = Clock()
    j = judge(clock)
    j.observe("w", "beat-1")
    clock.now += 2 * LEASE_S  # the leader itself was stopped (SIGSTOP, an NFS hang)
    j.tick()
    assert not j.is_dead("w", ELSEWHERE)
    assert j.silent_for("w") == 0.0


def test_same_kernel_death_is_proven_by_the_probe_not_by_silence():
    clock = Clock()
    probe = Probe(True)
    j = judge(clock, probe)
    j.observe("w", "beat-1")
    clock.now += 10 * LEASE_S
    assert not j.is_dead("w", HERE)  # silent, but its process runs
    probe.answer = None
    assert not j.is_dead("w", HERE)  # cannot tell: alive ("fail closed")
    probe.answer = False
    assert j.is_dead("w", HERE)
    assert {(pid, started) for pid, started, _ in probe.calls} == {(4242, 7.0)}


def test_same_kernel_probe_is_thorough_at_first_sight_and_after_a_silence_quick_in_between():
    clock = Clock()
    probe = Probe(True)
    j = judge(clock, probe)
    j.observe("w", "beat-1")
    j.is_dead("w", HERE)
    clock.now += 1.0
    j.tick()
    j.observe("w", "beat-2")
    j.is_dead("w", HERE)
    clock.now += 5.0  # silent for longer than a few heartbeats: look closer (pid reuse, zombie)
    j.is_dead("w", HERE)
    assert [thorough for _, _, thorough in probe.calls] == [True, False, True]


def test_a_damaged_meta_on_this_kernel_is_not_evidence():
    probe = Probe(False)
    j = judge(Clock(), probe)
    damaged = Meta.parse({"boot_id": "boot-a", "pid_ns": 1, "pid": "not a pid", "create_time": 7.0})
    assert damaged is not None and j.same_kernel(damaged) and not j.is_dead("w", damaged)
    assert not j.is_dead("w", replace(HERE, create_time=None))
    assert not j.is_dead("w", None)
    assert probe.calls == []


def test_forget_starts_a_writer_over():
    clock = Clock()
    probe = Probe(True)
    j = judge(clock, probe)
    j.observe("w", "beat-1")
    clock.now += 1.0
    j.observe("w", "beat-2")
    j.is_dead("w", HERE)
    j.is_dead("w", HERE)
    j.forget("w")
    assert not j.seen("w") and not j.seen_beating("w") and j.silent_for("w") is None
    j.is_dead("w", HERE)
    assert [thorough for _, _, thorough in probe.calls] == [True, False, True]  # first sight again


def test_same_kernel_is_boot_id_and_pid_namespace():
    j = judge(Clock())
    assert j.same_kernel(HERE)
    assert not j.same_kernel(ELSEWHERE)
    assert not j.same_kernel(replace(HERE, pid_ns=2))
    assert not j.same_kernel(Meta())


def test_probe_process_tells_a_reused_pid_by_its_start_time():
    me = psutil.Process(os.getpid())
    started = me.create_time()
    assert probe_process(os.getpid(), started, thorough=True) is True
    assert probe_process(os.getpid(), started + 60, thorough=True) is False  # same pid, another process
    assert probe_process(os.getpid(), started + 60, thorough=False) is True  # the quick probe cannot tell


def test_probe_process_proves_a_missing_pid_dead_and_cannot_tell_a_foreign_one():
    assert probe_process(2**22 + 1, 0.0, thorough=False) is False  # above the kernel's pid_max
    assert probe_process(2**70, 0.0, thorough=True) is None  # not a pid this kernel has: a foreign meta
