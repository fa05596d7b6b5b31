"""The hosts benchmark: 1024 writers on 64 simulated hosts in one directory, and one leader.

Each simulated host (tests/helpers/hosts.py: own pid and UTS namespace, own hostname, the
same directory) runs one process holding 16 live Writer objects (_ship_child.py `many`:
heartbeat every second, commit interval 0.5 s). The leader (_ship_child.py `scan`, the
library's Sender led as `distwal drain` leads, sink = a discarding HTTP server) runs on
the main host, so it can judge none of them by pid: every writer's liveness is its
heartbeat, timed on the leader's clock. Measured:

  discovery  the leader's first cycle (finding every folder), against the raw cost of the
             same discovery: listdir of writers/ plus a stat of every heartbeat file
  liveness   the sender's own loop for a while: no live writer may be adopted
  cycle/CPU  idle cycle times, a forced full scan, the leader's CPU share
  host loss  SIGKILL of one whole host (its 16 writers) while the leader runs: the time
             until each folder leaves writers/ (adopted), against DISTWAL_LEASE_S + 1 s

A second table, "mounts", is what the README's NFS section quotes: two simulated hosts with
two ranks each (sender enabled, DISTWAL_LEASE_S=3), the directory shared as it is (one
kernel: locks shared) or through one bindfs FUSE mount per host (locks node-local,
attributes cached for attr_timeout = entry_timeout = T, kernel_cache): epochs claimed while
the leader lives for STEADY_S, then the leader's whole host is SIGKILLed and the time until
a new leader holds the lease.

`--short` (CI): 8 hosts x 16 writers; mounts: one FUSE case. Run it through run.py:
`python benchmarks/run.py [--short] hosts`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from _report import Report
from helpers.cluster import FaultServer, cluster_env
from helpers.hosts import FuseMount, SimHost, fuse_problem, unshare_problem
from helpers.procs import Child, read_json
from ship import CHILD, PY, child, clean_env, end, reap_all

from distwal.leader.election import highest_epoch

LEASE_S = 10.0  # DISTWAL_LEASE_S of the leader: a host's writers are dead after this much heartbeat silence


@dataclass
class Scale:
    hosts: int
    per_host: int
    phase_s: float  # seconds of the sender's loop timed, idle
    cpu_s: float  # seconds of the sender's loop for the CPU share


FULL = Scale(hosts=64, per_host=16, phase_s=10.0, cpu_s=20.0)
SHORT = Scale(hosts=8, per_host=16, phase_s=3.0, cpu_s=5.0)


def raw_discovery(root: str, reps: int = 5) -> float:
    """The least a leader must do to discover and check every writer: listdir + stat each heartbeat (ms)."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        writers = os.path.join(root, "writers")
        for name in os.listdir(writers):
            try:
                os.stat(os.path.join(writers, name, "heartbeat.json"))
            except OSError:
                pass
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def folders_of(root: str, host: str) -> list[str]:
    return [n for n in os.listdir(os.path.join(root, "writers")) if n.startswith(f"{host}-")]


def run(scale: Scale, base: str, discard_url: str) -> dict[str, Any]:
    problem = unshare_problem()
    if problem is not None:
        return {"unavailable": problem}
    root = os.path.join(base, "wal")
    os.makedirs(root, mode=0o700)
    env = clean_env(DISTWAL_LEASE_S=str(LEASE_S))
    hosts: list[SimHost] = []
    helpers: list[Child] = []
    out: dict[str, Any] = {"writers": scale.hosts * scale.per_host, "hosts": scale.hosts}
    leader: Child | None = None
    try:
        t0 = time.perf_counter()
        for i in range(scale.hosts):
            host = SimHost(f"host{i:02d}").boot()
            hosts.append(host)
            helpers.append(child(env=env, argv=host.argv([PY, CHILD, "many", root, str(scale.per_host), "0.5"], base)))
        for h in helpers:
            h.next_json(timeout=600)
        out["made_s"] = time.perf_counter() - t0
        out["raw_ms"] = raw_discovery(root)
        leader = child("scan", root, discard_url, env=env)
        out["first"] = leader.next_json(timeout=300)
        leader.send("drain 120")
        out["drained"] = leader.next_json(timeout=200)
        leader.send(f"cycles {scale.phase_s}")
        out["idle"] = leader.next_json(timeout=scale.phase_s + 120)
        leader.send("full 5")
        out["full"] = leader.next_json(timeout=300)
        leader.send(f"cpu {scale.cpu_s}")
        out["helpers_cpu_pct"] = _tree_cpu_share(helpers, min(5.0, scale.cpu_s - 1))  # during the leader's loop
        out["cpu"] = leader.next_json(timeout=scale.cpu_s + 120)

        # Kill one whole host while the leader runs its loop; time each folder's departure.
        victim = hosts[-1]
        ids = folders_of(root, victim.name)
        loop_s = LEASE_S + 10.0
        leader.send(f"cpu {loop_s}")
        time.sleep(1.0)  # the leader's loop is running: the kill lands mid-loop, as in production
        killed_at = time.monotonic()
        victim.kill()
        gone: dict[str, float] = {}
        deadline = killed_at + loop_s - 1.5
        while len(gone) < len(ids) and time.monotonic() < deadline:
            for w in ids:
                if w not in gone and not os.path.isdir(os.path.join(root, "writers", w)):
                    gone[w] = time.monotonic() - killed_at
            time.sleep(0.02)
        after_kill = leader.next_json(timeout=loop_s + 120)
        out["kill"] = {"writers": len(ids), "adopted": len(gone), "times": sorted(gone.values()),
                       "leader_adopted": after_kill.get("adopted")}
    finally:
        for proc in [*helpers, leader]:
            if proc is not None:
                end(proc)
        for host in hosts:
            host.shutdown()
    return out


def _tree_cpu_share(helpers: list[Child], seconds: float) -> float:
    """CPU share (% of one core) of every writer process on the hosts, over `seconds`."""
    import psutil

    def total() -> float:
        s = 0.0
        for h in helpers:
            try:
                for p in [psutil.Process(h.pid), *psutil.Process(h.pid).children(recursive=True)]:
                    t = p.cpu_times()
                    s += t.user + t.system
            except psutil.Error:
                pass
        return s

    c0, t0 = total(), time.monotonic()
    time.sleep(seconds)  # the measurement window itself
    return 100 * (total() - c0) / (time.monotonic() - t0)


def rows(r: dict[str, Any]) -> list[list[str]]:
    if r.get("unavailable"):
        return [["simulated hosts", "not run", "-", r["unavailable"]]]
    if r.get("error") and "first" not in r:
        return [["hosts", "failed", "-", r["error"]]]
    n, h = r["writers"], r["hosts"]
    first, idle, full, cpu = r["first"], r["idle"]["idle"], r["full"]["full"], r.get("cpu", {})
    out = [
        [f"discovery, {n} writers on {h} hosts", f"{first['first_cycle_ms']:.0f} ms ({first['writers']} found)",
         "-", f"first cycle of the leader; raw listdir + stat of every heartbeat: {r['raw_ms']:.1f} ms "
              f"({first['first_cycle_ms'] / max(r['raw_ms'], 1e-3):.0f}x); folders made in {r['made_s']:.0f} s"],
        [f"idle cycle, {n} writers", f"median {idle.get('median', 0):.2f} ms, p99 {idle.get('p99', 0):.1f}, "
                                     f"max {idle.get('max', 0):.1f}", "-",
         f"Sender.run() for the phase; full scan (every timer due) median {full.get('median', 0):.1f} ms, "
         f"max {full.get('max', 0):.1f}"],
    ]
    if cpu:
        share = 100 * cpu["cpu_s"] / cpu["wall_s"]
        out.append([f"leader CPU, {n} idle writers on {h} hosts", f"{share:.1f} % of one core", "< 5 %",
                    f"liveness by heartbeat only (other pid namespaces); live writers adopted meanwhile: "
                    f"{cpu.get('adopted', '?')}; the writer processes used {r.get('helpers_cpu_pct', 0):.0f} %"])
    kill = r.get("kill")
    if kill:
        times = kill["times"]
        worst = f"{times[-1]:.1f} s" if times else "none"
        done = f"{kill['adopted']}/{kill['writers']} adopted, last after {worst}"
        ok = "met" if times and len(times) == kill["writers"] and times[-1] <= LEASE_S + 1 else "missed"
        out.append([f"one host of {kill['writers']} writers SIGKILLed", done, f"<= lease + 1 s = {LEASE_S + 1:.0f} s ({ok})",
                    f"DISTWAL_LEASE_S={LEASE_S:g}; first after {times[0]:.1f} s" if times else "-"])
    return out


MOUNT_LEASE_S = 3.0  # DISTWAL_LEASE_S of the mounts runs; the leader renews every lease / 5 = 0.6 s
STEADY_S = 15.0  # seconds the leader is watched before its host is killed
MOUNTS_FULL: tuple[float | None, ...] = (None, 0.0, 0.5, 1.0, 2.0, 4.0)  # None: no FUSE (locks shared)
MOUNTS_SHORT: tuple[float | None, ...] = (0.5,)


def run_mount(base: str, timeout: float | None) -> dict[str, Any]:
    """One mounts case (see the module docstring); raises when the leader never settles."""
    problem = unshare_problem() if timeout is None else fuse_problem()
    if problem is not None:
        return {"unavailable": problem}
    work = tempfile.mkdtemp(prefix="mount-", dir=base)
    wal = os.path.join(work, "wal")
    os.makedirs(wal, mode=0o700)
    stop = os.path.join(work, "stop")
    fuse = None if timeout is None else FuseMount(wal, timeout)
    out: dict[str, Any] = {}
    with FaultServer(os.path.join(work, "sink.db")) as server, ExitStack() as stack:
        env = cluster_env(wal, server.url, DISTWAL_LEASE_S=str(MOUNT_LEASE_S))
        hosts = []
        for i in range(2):
            host = SimHost(f"m{i}", fuse).boot()
            stack.callback(host.shutdown)
            hosts.append(host)
        owners: dict[str, SimHost] = {}
        for i, host in enumerate(hosts):
            for j in range(2):
                rank = stack.enter_context(host.start_writer(work, env, f"m{i}r{j}", stop=stop, pace=0.005))
                owners[rank.wait_for("ready", timeout=120).parts[1]] = host

        def lease() -> dict[str, Any]:
            found = read_json(os.path.join(wal, "leader.json"))
            return found if isinstance(found, dict) else {}

        deadline = time.monotonic() + 60
        while not lease().get("epoch") and time.monotonic() < deadline:
            time.sleep(0.05)
        first = highest_epoch(wal)
        owners_seen = set()
        t0 = time.monotonic()
        while time.monotonic() - t0 < STEADY_S:  # the watch is the measurement
            owners_seen.add(lease().get("owner"))
            time.sleep(0.05)
        out["steady_epochs"] = highest_epoch(wal) - first + 1
        out["steady_owners"] = len(owners_seen - {None})
        current = lease()
        victim = owners.get(str(current.get("owner")))
        if victim is None:  # the leader is not a rank (cannot happen here): report, do not guess
            out["failover_s"] = None
            return out
        before = highest_epoch(wal)
        killed = time.monotonic()
        victim.kill()
        while lease().get("epoch", 0) <= current.get("epoch", 0) and time.monotonic() - killed < 60:
            time.sleep(0.02)
        out["failover_s"] = time.monotonic() - killed
        out["failover_epochs"] = highest_epoch(wal) - before
        with open(stop, "w") as f:
            f.write("stop")
    shutil.rmtree(work, ignore_errors=True)
    return out


def mount_rows(results: list[tuple[float | None, dict[str, Any]]]) -> list[list[str]]:
    rows_ = []
    for timeout, r in results:
        what = "one kernel, no FUSE (locks shared)" if timeout is None else (
            f"FUSE per host, actimeo {timeout:g} s (locks node-local)")
        if r.get("unavailable") or r.get("error"):
            rows_.append([what, "not measured", "-", r.get("unavailable") or r.get("error", "")])
            continue
        fo = r.get("failover_s")
        rows_.append([
            what,
            f"{r['steady_epochs']} epoch(s), {r['steady_owners']} leader(s) in {STEADY_S:g} s",
            f"failover {fo:.1f} s, {r.get('failover_epochs', '?')} epoch(s)" if fo is not None else "-",
            f"DISTWAL_LEASE_S={MOUNT_LEASE_S:g}; 2 hosts x 2 ranks; the leader's host SIGKILLed",
        ])
    return rows_


def main(short: bool = False) -> str:
    scale = SHORT if short else FULL
    base = tempfile.mkdtemp(prefix="distwal-bench-hosts-")
    result: dict[str, Any] = {}
    try:
        discard = child("discard")
        result = run(scale, base, discard.next_json(timeout=60)["url"])
    except Exception as exc:  # noqa: BLE001 - reported in the table, then raised for run.py
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        reap_all(failed="error" in result)
        shutil.rmtree(base, ignore_errors=True)
    report = Report()
    report.table(["case", "result", "target", "notes"], rows(result), align="llll")
    mounts: list[tuple[float | None, dict[str, Any]]] = []
    base = tempfile.mkdtemp(prefix="distwal-bench-mounts-")
    try:
        for timeout in (MOUNTS_SHORT if short else MOUNTS_FULL):
            try:
                mounts.append((timeout, run_mount(base, timeout)))
            except Exception as exc:  # noqa: BLE001 - reported in the table, then raised
                traceback.print_exc()
                mounts.append((timeout, {"error": f"{type(exc).__name__}: {exc}"}))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report.text("Mount options (see the README's NFS section):")
    report.table(["shared directory as", "while the leader lives", "leader's host killed", "notes"],
                 mount_rows(mounts), align="llll")
    errors = [r["error"] for _, r in [(None, result), *mounts] if r.get("error")]
    if errors:
        raise RuntimeError("; ".join(errors))
    return report.markdown()
