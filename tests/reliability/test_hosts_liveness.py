"""Liveness across simulated hosts: who is dead is decided with proof, never with a bare pid or a clock.

Every "host" here is its own pid and UTS namespace (tests/helpers/hosts.py) sharing the WAL
directory and the machine's boot id, as containers on one node do. The leader is a rank on
the main host (the test's own namespace); ranks on the other hosts write but never lead
(DISTWAL_DISABLE_SENDER=1), so the leader judges them from outside their pid namespace,
with the heartbeat timed on its own monotonic clock. DISTWAL_LEASE_S=2 (heartbeat every
1 s). Ranks log in sync mode and print every seq `log` returned, so "acknowledged" is
exact. Sizes, paces, kill points and skews are seeded; replay with DISTWAL_TEST_SEED=<seed>.

- a live remote writer is never adopted while its heartbeat moves, even when its pid does
  not exist on the leader's host (a bare `kill(pid, 0)` would call it dead);
- a killed host's writers are adopted lease .. lease + margin after the kill (measured and
  printed) and every acknowledged record arrives exactly once;
- two hosts whose writers have the same pid (also the pid of the live leader rank on the
  main host): killing one host adopts only its writer;
- on one host, a dead writer whose pid was reused by an unrelated process (forced through
  ns_last_pid) is judged dead by its start time (psutil), long before any lease;
- heartbeats from hosts whose clocks are minutes ahead or behind (time.time and file
  mtimes skewed in the writer process) change nothing in either direction.
"""

from __future__ import annotations

import os
import random
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers.cluster import (
    LEASE_S,
    FaultServer,
    acks_of,
    assert_acked_delivered_once,
    cluster_env,
    read_json,
    start_writer,
    wait_until,
    writer_id_of,
)
from helpers.hosts import (
    assert_stays_in_writers,
    free_pid_on_main_host,
    require_sim_hosts,
    sim_host,
    wait_moved_from_writers,
    where_is,
)
from helpers.procs import Child
from helpers.timings import first_stored

from distwal._config import DEFAULT_HEARTBEAT_INTERVAL
from distwal.leader.roster import LIVENESS_EVERY


def _start_clock() -> float:
    """Now, on the clock process start times are read on (psutil: the boot time in /proc/stat
    plus time since boot). time.time() drifts from it when the wall clock is stepped after
    boot, as on a VM whose clock is synchronised: a wait on time.time() measured 0.97 s of
    start-time difference where it meant 1.5."""
    return psutil.boot_time() + time.clock_gettime(time.CLOCK_BOOTTIME)

pytestmark = [pytest.mark.process, pytest.mark.reliability, pytest.mark.timeout(90)]

LEASE = float(LEASE_S)
HEARTBEAT = DEFAULT_HEARTBEAT_INTERVAL
# Adoption after a host dies: its last heartbeat was written at most HEARTBEAT before the
# kill; the leader notices a change at its next liveness check (every LIVENESS_EVERY) and
# declares death at the first check LEASE after that. So the delay from the kill lies in
# [LEASE - HEARTBEAT, LEASE + 2 * LIVENESS_EVERY]; EARLY_SLACK and 0.75 s of LATE_MARGIN absorb
# scheduling on a loaded 2-core machine.
EARLY_SLACK = 0.2
LATE_MARGIN = 2 * LIVENESS_EVERY + 0.75


@pytest.fixture(autouse=True)
def _needs_sim_hosts() -> None:
    require_sim_hosts()


def start_main_leader(stack: ExitStack, tmp_path: Path, wal: Path, server: FaultServer, stop: Path,
                      rng: random.Random, context: str) -> tuple[Child, str]:
    """A rank on the main host that leads (the only one allowed to); waits until it ships."""
    lead = stack.enter_context(start_writer(tmp_path, cluster_env(wal, server.url), "lead", stop=str(stop),
                                            pace=rng.uniform(0.005, 0.02)))
    lead_id = writer_id_of(lead)
    wait_until(lambda: (read_json(wal / "leader.json") or {}).get("pid") == lead.pid
               and any(r.status == 200 for r in server.requests()),
               30, f"the main host's rank to lead and ship {context}")
    return lead, lead_id


def remote_env(wal: Path, server: FaultServer, **extra: str) -> dict[str, str]:
    """A remote rank: writes into the shared directory, never leads."""
    return cluster_env(wal, server.url, sender=False, **extra)


def ready(child: Child) -> tuple[str, int]:
    """(writer id, pid as the writer's own host numbers it)."""
    line = child.wait_for("ready", timeout=30)
    return line.parts[1], int(line.parts[2])


def meta_of(wal: Path, writer_id: str) -> dict[str, Any]:
    meta = read_json(wal / "writers" / writer_id / "meta.json")
    assert isinstance(meta, dict), f"no meta.json for {writer_id}"
    return meta


def acked_so_far(writers: dict[str, Child]) -> dict[str, set[int]]:
    """{writer id: seqs acknowledged up to now} (a snapshot: live writers go on logging)."""
    return {writer_id: set(acks_of(child)) for writer_id, child in writers.items()}


def all_stored(server: FaultServer, acked: dict[str, set[int]]) -> bool:
    stored = server.records()
    return all(seqs <= set(stored.get(writer_id, {})) for writer_id, seqs in acked.items())


def check_adoption_delay(delay: float, where: str | None, writer_id: str, context: str) -> None:
    assert where in ("adopted", "history"), f"{writer_id} left writers/ but is in {where}, not adopted {context}"
    assert LEASE - HEARTBEAT - EARLY_SLACK <= delay <= LEASE + LATE_MARGIN, (
        f"{writer_id} adopted {delay:.2f}s after its host died; expected {LEASE - HEARTBEAT:.1f}.."
        f"{LEASE + LATE_MARGIN:.1f}s (lease {LEASE}s, heartbeat every {HEARTBEAT}s, liveness checked every "
        f"{LIVENESS_EVERY}s) {context}"
    )


def finish_all(children: list[tuple[Child, Path]], context: str) -> None:
    """Touch each stop file in order and wait for its ranks to finish cleanly."""
    for child, stop in children:
        stop.touch()
        assert child.wait(60) == 0, f"{child.describe()} {context}"
        assert child.lines_with("finished"), f"{child.describe()} {context}"


# -- 1. a live writer on another host -------------------------------------------------------------


def test_live_writer_on_another_host_is_never_adopted_while_its_heartbeat_moves(tmp_path, seed):
    rng = random.Random(seed)
    wal, stop_remote, stop_lead = tmp_path / "wal", tmp_path / "stop_remote", tmp_path / "stop_lead"
    ghost_pid = free_pid_on_main_host()  # no such process on the leader's host: kill(pid, 0) says ESRCH
    watch = 5 * LEASE
    context = f"(seed={seed}, remote pid {ghost_pid})"

    with FaultServer(tmp_path / "sink.db") as server, ExitStack() as stack:
        remote = stack.enter_context(sim_host("remote"))
        lead, lead_id = start_main_leader(stack, tmp_path, wal, server, stop_lead, rng, context)
        env = remote_env(wal, server)
        busy = stack.enter_context(remote.start_writer(tmp_path, env, "busy", pid=ghost_pid, stop=str(stop_remote),
                                                       pace=rng.uniform(0.005, 0.02)))
        busy_id, busy_pid = ready(busy)  # one at a time: a forced pid must not race another start
        idle = stack.enter_context(remote.start_writer(tmp_path, env, "idle", stop=str(stop_remote),
                                                       count=rng.randint(1, 5), wait_stop=True))
        idle_id, _ = ready(idle)
        idle.wait_for("logged")  # from here on it only beats

        meta, mine = meta_of(wal, busy_id), meta_of(wal, lead_id)
        assert busy_pid == ghost_pid == meta["pid"], f"busy runs as pid {busy_pid} on its host {context}"
        assert meta["host"] == "remote" and meta["boot_id"] == mine["boot_id"] and meta["pid_ns"] != mine["pid_ns"], (
            f"not a simulated host: {meta} vs the leader's {mine} {context}")
        assert not psutil.pid_exists(ghost_pid), f"pid {ghost_pid} exists on the main host now {context}"
        print(f"remote writers {busy_id} (pid {busy_pid} there, none here) and {idle_id}; watching {watch:.0f}s")

        assert_stays_in_writers(wal, [busy_id, idle_id], watch, context)
        assert not psutil.pid_exists(ghost_pid), f"pid {ghost_pid} was taken on the main host meanwhile {context}"
        health = read_json(wal / "sender.json") or {}
        assert health.get("adopted") == 0, f"the leader adopted someone: {health} {context}"
        assert len(busy.lines_with("ack")) > 0, context
        acked = acked_so_far({busy_id: busy, idle_id: idle})
        wait_until(lambda: all_stored(server, acked), 30,
                   f"the live remote writers' records delivered while they live {context}")

        finish_all([(busy, stop_remote), (idle, stop_remote), (lead, stop_lead)], context)
        for child in (busy, idle):
            assert "lost its folder" not in child.stderr, f"a live writer was adopted: {child.describe()} {context}"
        stored = server.records()
        assert set(stored) == {lead_id, busy_id, idle_id}, f"writers in the sink: {sorted(stored)} {context}"
        for writer_id, tag, child in ((lead_id, "lead", lead), (busy_id, "busy", busy), (idle_id, "idle", idle)):
            assert_acked_delivered_once(stored, writer_id, tag, acks_of(child), context, finished=True)


# -- 2. a dead host -------------------------------------------------------------------------------


def test_dead_hosts_writers_are_adopted_after_the_lease_and_delivered_exactly_once(tmp_path, seed, timings):
    rng = random.Random(seed)
    wal, stop_lead = tmp_path / "wal", tmp_path / "stop_lead"
    targets = [rng.randint(1, 300) for _ in range(2)]
    context = f"(seed={seed}, kill after acks {targets})"

    with FaultServer(tmp_path / "sink.db") as server, ExitStack() as stack:
        doomed = stack.enter_context(sim_host("doomed"))
        lead, lead_id = start_main_leader(stack, tmp_path, wal, server, stop_lead, rng, context)
        env = remote_env(wal, server)
        victims = {}
        for k in range(2):
            child = stack.enter_context(doomed.start_writer(tmp_path, env, f"d{k}", pace=rng.uniform(0.0005, 0.005)))
            victims[ready(child)[0]] = (f"d{k}", child)
        for (tag, child), target in zip(victims.values(), targets):
            child.wait_for(lambda c=child, t=target: len(c.lines_with("ack")) >= t, timeout=30)

        killed_at = doomed.kill()
        moved = wait_moved_from_writers(wal, dict.fromkeys(victims, killed_at), LEASE + 10,
                                        f"host 'doomed' died {context}")
        delays = {}
        for writer_id, (delay, where) in moved.items():
            delays[victims[writer_id][0]] = delay
            check_adoption_delay(delay, where, writer_id, context)
        print(f"adopted after the host died: {', '.join(f'{t} {d:.2f}s' for t, d in delays.items())} "
              f"(lease {LEASE}s, heartbeat {HEARTBEAT}s)")
        for _, child in victims.values():
            child.wait()  # all stdout read: every "ack" line the rank wrote before it died

        acked = acked_so_far({w: c for w, (_, c) in victims.items()})
        wait_until(lambda: all_stored(server, acked), 30,
                   f"the dead host's acknowledged records in the sink {context}")
        for writer_id, (delay, _where) in moved.items():
            key = (writer_id, max(acked[writer_id], default=0))
            stored_at = first_stored(server.requests(), lambda r, key=key: key in r.keys)
            stored = None if stored_at is None else max(stored_at - killed_at, 0.0)  # 0: shipped before the kill
            timings.record("adoption", delay, host="other", lease=LEASE, stored=stored)
        # An adopted folder is read for twice the lease (it might be a slow writer), then removed.
        wait_until(lambda: all(where_is(wal, w) == "history" for w in victims), 2 * LEASE + 10,
                   f"adopted folders removed, tombstones left {context}")
        for writer_id in victims:
            tomb = read_json(wal / "history" / f"{writer_id}.json")
            assert tomb["state"] == "adopted", f"{tomb} {context}"

        finish_all([(lead, stop_lead)], context)
        stored = server.records()
        assert set(stored) == {lead_id, *victims}, f"writers in the sink: {sorted(stored)} {context}"
        assert_acked_delivered_once(stored, lead_id, "lead", acks_of(lead), context, finished=True)
        for writer_id, (tag, child) in victims.items():
            assert_acked_delivered_once(stored, writer_id, tag, acks_of(child), context)
            print(f"{tag}: {len(acks_of(child))} acked, {len(stored[writer_id])} stored")


# -- 3. pid collisions ----------------------------------------------------------------------------


def test_same_pid_on_two_hosts_killing_one_host_adopts_only_its_writer(tmp_path, seed):
    rng = random.Random(seed)
    wal, stop_b, stop_lead = tmp_path / "wal", tmp_path / "stop_b", tmp_path / "stop_lead"
    targets = [rng.randint(1, 200) for _ in range(2)]
    context = f"(seed={seed}, acks before the kill {targets})"

    with FaultServer(tmp_path / "sink.db") as server, ExitStack() as stack:
        host_a, host_b = stack.enter_context(sim_host("hostA")), stack.enter_context(sim_host("hostB"))
        lead, lead_id = start_main_leader(stack, tmp_path, wal, server, stop_lead, rng, context)
        pid = lead.pid  # also a live process where the leader runs: a bare kill(pid, 0) says "alive"
        env = remote_env(wal, server)
        a = stack.enter_context(host_a.start_writer(tmp_path, env, "a", pid=pid, pace=rng.uniform(0.002, 0.01)))
        a_id, a_pid = ready(a)
        b = stack.enter_context(host_b.start_writer(tmp_path, env, "b", pid=pid, stop=str(stop_b),
                                                    pace=rng.uniform(0.002, 0.01)))
        b_id, b_pid = ready(b)
        meta_a, meta_b = meta_of(wal, a_id), meta_of(wal, b_id)
        assert a_pid == b_pid == pid == meta_a["pid"] == meta_b["pid"], f"pids {a_pid} {b_pid} {pid} {context}"
        assert meta_a["boot_id"] == meta_b["boot_id"] and meta_a["pid_ns"] != meta_b["pid_ns"], context
        print(f"same pid {pid} (the leader rank's pid here): {a_id} on hostA, {b_id} on hostB")
        for child, target in zip((a, b), targets):
            child.wait_for(lambda c=child, t=target: len(c.lines_with("ack")) >= t, timeout=30)

        assert_stays_in_writers(wal, [a_id, b_id], LEASE, context)  # the collision alone changes nothing
        killed_at = host_a.kill()
        delay, where = wait_moved_from_writers(wal, {a_id: killed_at}, LEASE + 10, f"hostA died {context}")[a_id]
        check_adoption_delay(delay, where, a_id, context)
        print(f"hostA's writer adopted {delay:.2f}s after hostA died")
        assert_stays_in_writers(wal, [b_id], 2 * LEASE, f"(after hostA's writer, same pid, was adopted) {context}")
        a.wait()

        acked = acked_so_far({a_id: a})
        wait_until(lambda: all_stored(server, acked), 30, f"hostA's acked records in the sink {context}")
        finish_all([(b, stop_b), (lead, stop_lead)], context)
        assert "lost its folder" not in b.stderr, f"hostB's live writer was adopted: {b.describe()} {context}"
        stored = server.records()
        assert set(stored) == {lead_id, a_id, b_id}, f"writers in the sink: {sorted(stored)} {context}"
        assert_acked_delivered_once(stored, a_id, "a", acks_of(a), context)
        assert_acked_delivered_once(stored, b_id, "b", acks_of(b), context, finished=True)
        assert_acked_delivered_once(stored, lead_id, "lead", acks_of(lead), context, finished=True)


REUSER = '''
import psutil
emit("ready", os.getpid(), psutil.Process().create_time())
stop = sys.argv[1]
while not os.path.exists(stop):
    time.sleep(0.05)
'''


def test_same_host_dead_writer_whose_pid_was_reused_is_judged_dead_by_start_time(tmp_path, seed):
    """Leader and writers share one host (same boot id and pid namespace): liveness is the
    process itself. The victim dies, an unrelated process gets its pid (ns_last_pid), and the
    leader starts only then, so signal 0 to the pid succeeds: only the start time can prove
    death. The lease is long (30 s), so a heartbeat timer cannot be what adopts it."""
    rng = random.Random(seed)
    wal, stop, stop_lead = tmp_path / "wal", tmp_path / "stop", tmp_path / "stop_lead"
    long_lease = 30.0
    victim_pid = rng.randint(1000, 20000)
    target = rng.randint(1, 200)
    context = f"(seed={seed}, victim pid {victim_pid}, {target} acks)"

    with FaultServer(tmp_path / "sink.db") as server, ExitStack() as stack:
        host = stack.enter_context(sim_host("solo"))
        env = cluster_env(wal, server.url, sender=False, DISTWAL_LEASE_S=str(long_lease))
        control = stack.enter_context(host.start_writer(tmp_path, env, "control", stop=str(stop),
                                                        pace=rng.uniform(0.005, 0.02)))
        control_id, _ = ready(control)
        victim = stack.enter_context(host.start_writer(tmp_path, env, "victim", pid=victim_pid,
                                                       pace=rng.uniform(0.001, 0.01)))
        victim_id, got_pid = ready(victim)
        assert got_pid == victim_pid, context
        born = meta_of(wal, victim_id)["create_time"]
        # It lives a while (the scenario), so a process started after its death differs in start time.
        victim.wait_for(lambda: len(victim.lines_with("ack")) >= target and _start_clock() - born >= 1.5, timeout=30)
        victim.kill()
        victim.wait()

        reuser = stack.enter_context(host.spawn(tmp_path, REUSER, str(stop), env=env, name="reuser.py",
                                                pid=victim_pid))
        line = reuser.wait_for("ready", timeout=30)
        assert int(line.parts[1]) == victim_pid, f"the reuser got pid {line.parts[1]} {context}"
        print(f"victim {victim_id} (started {born:.2f}) died; pid {victim_pid} now belongs to a process "
              f"started {float(line.parts[2]):.2f}")
        assert float(line.parts[2]) - born > 1.0, context

        lead_env = cluster_env(wal, server.url, DISTWAL_LEASE_S=str(long_lease))
        lead = stack.enter_context(host.start_writer(tmp_path, lead_env, "lead", stop=str(stop_lead),
                                                     pace=rng.uniform(0.005, 0.02)))
        lead_id, _ = ready(lead)
        lead_started = time.time()
        wait_until(lambda: (read_json(wal / "leader.json") or {}).get("owner") == lead_id, 30,
                   f"the rank on the same host to lead {context}")
        delay, where = wait_moved_from_writers(wal, {victim_id: lead_started}, long_lease / 2,
                                               f"the leader started (pid reused) {context}")[victim_id]
        assert where in ("adopted", "history"), f"{victim_id} is in {where} {context}"
        assert reuser.popen.poll() is None, f"the process holding pid {victim_pid} died meanwhile {context}"
        print(f"victim adopted {delay:.2f}s after its leader started (lease {long_lease:.0f}s): start time proof")
        assert where_is(wal, control_id) == "writers", f"the live control writer was adopted {context}"

        acked = acked_so_far({victim_id: victim})
        wait_until(lambda: all_stored(server, acked), 30, f"the victim's records {context}")
        finish_all([(control, stop), (lead, stop_lead)], context)
        assert reuser.wait(10) == 0, reuser.describe()
        stored = server.records()
        assert set(stored) == {lead_id, control_id, victim_id}, f"writers in the sink: {sorted(stored)} {context}"
        assert_acked_delivered_once(stored, victim_id, "victim", acks_of(victim), context)
        assert_acked_delivered_once(stored, control_id, "control", acks_of(control), context, finished=True)
        assert_acked_delivered_once(stored, lead_id, "lead", acks_of(lead), context, finished=True)


# -- 4. clock skew --------------------------------------------------------------------------------

# Runs in the rank before distwal is imported: its wall clock is TEST_CLOCK_SKEW_S off, and
# so are the mtimes of the files it replaces (heartbeat.json included), as with an NFS
# client that sets times from its own clock.
SKEWED_CLOCK = '''
import time as _time
import distwal._files as _files  # patched as a module attribute: every writer of marks goes through it

_SKEW = float(os.environ["TEST_CLOCK_SKEW_S"])
_real_time, _real_time_ns = _time.time, _time.time_ns
_time.time = lambda: _real_time() + _SKEW
_time.time_ns = lambda: _real_time_ns() + int(_SKEW * 1e9)
_real_write_atomic = _files.write_atomic

def _skewed_write_atomic(dir_fd, name, *args, **kwargs):
    _real_write_atomic(dir_fd, name, *args, **kwargs)
    now = _time.time_ns()
    os.utime(name, ns=(now, now), dir_fd=dir_fd, follow_symlinks=False)

_files.write_atomic = _skewed_write_atomic
'''


def test_clock_skew_of_minutes_changes_nothing_for_liveness(tmp_path, seed):
    rng = random.Random(seed)
    wal, stop_lead = tmp_path / "wal", tmp_path / "stop_lead"
    skews = {"ahead": rng.uniform(120, 600), "behind": -rng.uniform(120, 600)}
    context = f"(seed={seed}, skews {', '.join(f'{k} {v:+.0f}s' for k, v in skews.items())})"

    with FaultServer(tmp_path / "sink.db") as server, ExitStack() as stack:
        hosts = {name: stack.enter_context(sim_host(name)) for name in skews}
        lead, lead_id = start_main_leader(stack, tmp_path, wal, server, stop_lead, rng, context)
        ranks: dict[str, tuple[str, Child]] = {}
        for name, skew in skews.items():
            env = remote_env(wal, server, TEST_CLOCK_SKEW_S=repr(skew))
            child = stack.enter_context(hosts[name].start_writer(tmp_path, env, name, prelude=SKEWED_CLOCK,
                                                                 pace=rng.uniform(0.002, 0.01)))
            ranks[name] = (ready(child)[0], child)

        for name, (writer_id, _) in ranks.items():  # the skew is real: in the beat and in its mtime
            beat_path = wal / "writers" / writer_id / "heartbeat.json"
            beat, now = read_json(beat_path), time.time()
            mtime = os.stat(beat_path).st_mtime
            assert abs(beat["ts"] - now - skews[name]) < 5 and abs(mtime - now - skews[name]) < 5, (
                f"{name}: heartbeat ts {beat['ts'] - now:+.1f}s, mtime {mtime - now:+.1f}s off, "
                f"wanted {skews[name]:+.1f}s {context}")

        assert_stays_in_writers(wal, [w for w, _ in ranks.values()], 4 * LEASE, context)
        killed_at = {writer_id: hosts[name].kill() for name, (writer_id, _) in ranks.items()}
        moved = wait_moved_from_writers(wal, killed_at, LEASE + 10, f"the skewed hosts died {context}")
        delays = {}
        for name, (writer_id, child) in ranks.items():
            delay, where = moved[writer_id]
            check_adoption_delay(delay, where, writer_id, context)
            delays[name] = delay
            child.wait()
        print(f"adopted after death: {', '.join(f'{n} ({skews[n]:+.0f}s) {d:.2f}s' for n, d in delays.items())}")

        acked = acked_so_far({w: c for w, c in ranks.values()})
        wait_until(lambda: all_stored(server, acked), 30,
                   f"the skewed writers' records {context}")
        finish_all([(lead, stop_lead)], context)
        stored = server.records()
        assert set(stored) == {lead_id, *(w for w, _ in ranks.values())}, f"writers: {sorted(stored)} {context}"
        for name, (writer_id, child) in ranks.items():
            assert_acked_delivered_once(stored, writer_id, name, acks_of(child), context)
