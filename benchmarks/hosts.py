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

`--short` (CI): 8 hosts x 16 writers. Run through run.py or alone: `python benchmarks/hosts.py [--short]`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))  # helpers.hosts

from ship import CHILD, PY, Child, clean_env, kill_all, markdown_table, text_table  # noqa: E402

LEASE_S = 5.0  # DISTWAL_LEASE_S of the leader: a host's writers are dead after this much heartbeat silence


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


def run(scale: Scale, base: str, log: Any, discard_url: str) -> dict[str, Any]:
    from helpers.hosts import SimHost, unshare_problem

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
            helpers.append(Child(["many", root, str(scale.per_host), "0.5"], env, log,
                                 argv=host.argv([PY, CHILD, "many", root, str(scale.per_host), "0.5"], base)))
        for h in helpers:
            h.read(timeout=600)
        out["made_s"] = time.perf_counter() - t0
        out["raw_ms"] = raw_discovery(root)
        leader = Child(["scan", root, discard_url], env, log)
        out["first"] = leader.read(timeout=300)
        leader.send("drain 120")
        out["drained"] = leader.read(timeout=200)
        leader.send(f"cycles {scale.phase_s}")
        out["idle"] = leader.read(timeout=scale.phase_s + 120)
        leader.send("full 5")
        out["full"] = leader.read(timeout=300)
        leader.send(f"cpu {scale.cpu_s}")
        out["helpers_cpu_pct"] = _tree_cpu_share(helpers, min(5.0, scale.cpu_s - 1))  # during the leader's loop
        out["cpu"] = leader.read(timeout=scale.cpu_s + 120)

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
        after_kill = leader.read(timeout=loop_s + 120)
        out["kill"] = {"writers": len(ids), "adopted": len(gone), "times": sorted(gone.values()),
                       "leader_adopted": after_kill.get("adopted")}
    finally:
        if leader is not None:
            leader.close()
        for h in helpers:
            h.kill()
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


HEADERS = ["case", "result", "target", "notes"]


def main(short: bool = False) -> str:
    scale = SHORT if short else FULL
    base = tempfile.mkdtemp(prefix="distwal-bench-hosts-")
    log = open(os.path.join(base, "children.log"), "w")
    discard = Child(["discard"], clean_env(), log)
    result: dict[str, Any] = {}
    try:
        url = discard.read(timeout=60)["url"]
        try:
            result = run(scale, base, log, url)
        except Exception as exc:  # noqa: BLE001 - reported in the table, then raised for run.py
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        kill_all()
        log.close()
        if result.get("error"):
            with open(os.path.join(base, "children.log"), errors="replace") as f:
                print(f.read()[-3000:], file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)
    table = rows(result)
    print(text_table(HEADERS, table, 1))
    if result.get("error"):
        raise RuntimeError(result["error"])
    return markdown_table(HEADERS, ["---", "---", "---", "---"], table)


if __name__ == "__main__":
    main(short="--short" in sys.argv)
