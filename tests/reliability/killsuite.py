"""The randomized kill suite: one round, and a runner for many (the long mode).

A round, all choices drawn from one seed:
- 2 to 5 writer ranks (sync mode: every seq `log` returned is acknowledged and reported)
  spread over 1 to 3 hosts: the main host and simulated hosts (own pid namespace and
  hostname, same directory), when unshare is available;
- a fault-injecting reference server as the sink: 503 with Retry-After, 500, dropped
  connections, slow answers, commits whose reply is lost;
- 1 to 3 kill events at random moments: SIGKILL a writer, the leading rank, the leader's
  sender process, or a whole simulated host;
- in about half the multi-host rounds, each simulated host sees the directory through its
  own bindfs FUSE mount (attr/entry timeout 0.2 or 0.5 s, kernel_cache): node-local
  locks and late metadata, as NFS clients with `local_lock` see it (helpers.hosts.FuseMount);
- then the survivors stop and finish, and `distwal drain` delivers what is left.
At the end: every acknowledged record is in the server exactly once (seqs 1..n per
writer, the right data), no older epoch wrote after a newer one, nothing is left on
disk but tombstones, and epochs claimed <= leader changes + 1: a LeaseMonitor reads the
lease every 20 ms, and a new epoch counts as a leader change only when the previous
leadership had ended (its lease released, its owner killed by the round, or its lease
silent for about a lease), never while its owner was still renewing.

    python tests/reliability/killsuite.py --rounds 1000 [--seed S] [--out stats.json]
    DISTWAL_TEST_SEED=S python -m pytest tests/reliability/test_kill_suite.py   # replay one round
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for `helpers` when run as a script (pytest has it)

from helpers.cluster import (  # noqa: E402
    Fault,
    FaultServer,
    Request,
    acks_of,
    assert_acked_delivered_once,
    assert_fenced,
    cluster_env,
    read_json,
    run_cli,
    sender_pids,
    start_writer,
    wait_until,
)
from helpers.hosts import FuseMount, fuse_problem, unshare_problem, where_is  # noqa: E402

LEASE_S = "1.5"
FUSE_TIMEOUTS = (0.2, 0.5)  # seconds of attr/entry caching: well under the lease, as documented


@dataclass
class RoundStats:
    seed: int
    hosts: int = 1
    writers: int = 0
    kills: list[str] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)
    acked: int = 0
    stored: int = 0
    lost: int = 0
    wire_duplicates: int = 0
    epochs: int = 0
    fuse: float = 0.0  # the FUSE hosts' attr/entry timeout; 0: plain simulated hosts
    epochs_claimed: int = 0
    leader_changes: int = 0
    seconds: float = 0.0


class LeaseMonitor:
    """Reads <wal>/leader.json every 20 ms (from the main host) to judge each change of epoch.

    A change from epoch a to b counts as a leader change when a's leadership had ended
    before b appeared: a's lease was seen released, a's owner was killed by the round
    (kill() below), or a's lease had stopped moving for `quiet` seconds in the last two
    leases before b appeared (a stalled or dead leader on a host whose death we cannot
    see; a stalled leader may still land one late renewal, decided before its stall).
    Anything else is a contender that claimed while the leader kept renewing: the bug
    the lease must prevent.
    """

    def __init__(self, wal: Path, quiet: float, lease_s: float) -> None:
        self.path = wal / "leader.json"
        self.quiet = quiet
        self.lease_s = lease_s
        self.seen: dict[int, dict[str, Any]] = {}  # epoch -> first, moved, owner, released
        self.kills: list[tuple[float, set[str]]] = []
        self._last: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LeaseMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        self.read()  # the lease as the round left it

    def kill(self, owners: set[str]) -> None:
        """The round is about to kill the processes whose lease owner names are `owners`."""
        self.kills.append((time.monotonic(), owners))

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.read()

    def read(self) -> None:
        lease = read_json(self.path)
        if not isinstance(lease, dict) or type(lease.get("epoch")) is not int:
            return
        now = time.monotonic()
        token = (lease["epoch"], lease.get("n"), lease.get("released"))
        entry = self.seen.setdefault(lease["epoch"], {"first": now, "moves": [], "owner": lease.get("owner"),
                                                      "released": False})
        if token != self._last:
            entry["moves"].append(now)
            self._last = token
        entry["released"] = entry["released"] or bool(lease.get("released"))

    def judge(self, claimed: int) -> tuple[int, list[str]]:
        """(leader changes, descriptions of the epoch changes that were not leader changes).

        An epoch that never held the lease counts as a leader change only if the round
        killed its claimant (named in its epoch file) before it could write the lease.
        """
        epochs = sorted(self.seen)
        changes, bad = 0, []
        for old, new in zip(epochs, epochs[1:]):
            a, b = self.seen[old], self.seen[new]
            killed = any(t <= b["first"] and a["owner"] in owners for t, owners in self.kills)
            window = b["first"] - 2 * self.lease_s
            recent = [t for t in a["moves"] if t >= window]
            moves = a["moves"][-len(recent) - 1:] + [b["first"]]  # and the last move before the window
            gaps = [later - earlier for earlier, later in zip(moves, moves[1:])]
            if a["released"] or killed or max(gaps) >= self.quiet:
                changes += 1
            else:
                bad.append(f"epoch {new} ({b['owner']}) claimed while epoch {old} ({a['owner']}) renewed: its "
                           f"lease moved {len(recent)} times in the {2 * self.lease_s:g}s before, longest pause "
                           f"{max(gaps):.2f}s, last {b['first'] - a['moves'][-1]:.2f}s before")
        killed = set().union(*(owners for _, owners in self.kills)) if self.kills else set()
        for epoch in sorted(set(range(1, claimed + 1)) - set(epochs)):
            claimant = (read_json(self.path.parent / "epochs" / f"{epoch:016d}") or {}).get("owner")
            if claimant in killed:
                changes += 1
            else:
                bad.append(f"epoch {epoch} claimed by {claimant} never held the lease, and its claimant was not killed")
        return changes, bad


def _plan(rng: random.Random, stats: RoundStats, fault_rate: float) -> Any:
    kinds = ["503", "500", "drop", "slow", "commit_drop"]

    def plan(req: Request) -> Fault | None:
        if rng.random() >= fault_rate:
            return None
        kind = rng.choice(kinds)
        stats.faults[kind] = stats.faults.get(kind, 0) + 1
        if kind == "503":
            return Fault.reply(503, Retry_After="0.2")
        if kind == "500":
            return Fault.reply(500)
        if kind == "slow":
            return Fault("slow", seconds=rng.uniform(0.1, 0.4))
        return Fault(kind)

    return plan


def run_round(seed: int, workdir: Path, fault_rate: float = 0.2) -> RoundStats:
    """One round in `workdir`; raises AssertionError (with the seed) when a guarantee fails."""
    rng = random.Random(seed)
    started = time.monotonic()
    stats = RoundStats(seed)
    wal = workdir / "wal"
    stop = workdir / "stop"
    sim_ok = unshare_problem() is None
    stats.hosts = rng.randint(1, 3) if sim_ok else 1
    fuse = None
    if stats.hosts > 1 and fuse_problem() is None and rng.random() < 0.5:
        stats.fuse = rng.choice(FUSE_TIMEOUTS)
        fuse = FuseMount(str(wal), stats.fuse)
    wal.mkdir(mode=0o700, exist_ok=True)
    n_writers = rng.randint(2, 5)
    stats.writers = n_writers
    context = f"(seed={seed}; replay with DISTWAL_TEST_SEED={seed})"
    server = FaultServer(workdir / "sink.db", plan=_plan(rng, stats, fault_rate))
    with server, ExitStack() as stack:
        from helpers.hosts import SimHost

        hosts: list[SimHost | None] = [None]
        for index in range(1, stats.hosts):
            host = SimHost(f"sim{index}", fuse).boot()
            stack.callback(host.shutdown)
            hosts.append(host)
        env = cluster_env(wal, server.url, DISTWAL_LEASE_S=LEASE_S)
        # Watching from before the first rank starts. A lease seen late through a FUSE mount
        # goes stale that much later for its host, and so earlier as seen from here.
        monitor = stack.enter_context(LeaseMonitor(wal, float(LEASE_S) - stats.fuse - 0.3, float(LEASE_S)))
        ranks = []
        for index in range(n_writers):
            where = rng.randrange(stats.hosts)
            tag = f"w{index}"
            opts = {"stop": str(stop), "pace": rng.choice([0.0, 0.001, 0.005])}
            host = hosts[where]
            if host is None:
                child = stack.enter_context(start_writer(workdir, env, tag, **opts))
            else:
                child = stack.enter_context(host.start_writer(workdir, env, tag, **opts))
            ranks.append((tag, where, child))
        writer_ids = {tag: child.wait_for("ready", timeout=30).parts[1] for tag, _, child in ranks}
        killed: set[str] = set()
        for _ in range(rng.randint(1, 3)):
            time.sleep(rng.uniform(0.2, 1.0))  # the scenario: let the job run, then strike
            target = rng.choice(["writer", "writer", "leader", "sender", "host"])
            if target == "host" and stats.hosts > 1:
                index = rng.randrange(1, stats.hosts)
                host = hosts[index]
                if host is not None and host.alive():
                    monitor.kill({writer_ids[tag] for tag, where, _ in ranks if where == index})
                    host.kill()
                    killed |= {tag for tag, where, _ in ranks if where == index}
                    stats.kills.append(f"host sim{index}")
                continue
            alive = [(tag, child) for tag, _, child in ranks if tag not in killed and child.popen.poll() is None]
            if not alive:
                break
            if target in ("leader", "sender"):
                lease = read_json(wal / "leader.json") or {}
                owner = lease.get("owner")
                hit = [(tag, child) for tag, child in alive if writer_ids[tag] == owner]
                if hit and target == "sender":
                    monitor.kill({writer_ids[hit[0][0]]})
                    pids = sender_pids(_inner_pid(hit[0][1]))
                    for pid in pids:
                        _kill(pid)
                    stats.kills.append(f"sender of {hit[0][0]}" if pids else "sender (none found)")
                    continue
                if hit:
                    tag, child = hit[0]
                    monitor.kill({writer_ids[tag]})
                    child.kill(signal.SIGKILL)
                    killed.add(tag)
                    stats.kills.append(f"leader {tag}")
                    continue
            tag, child = rng.choice(alive)
            monitor.kill({writer_ids[tag]})
            child.kill(signal.SIGKILL)
            killed.add(tag)
            stats.kills.append(f"writer {tag}")
        stop.write_text("stop")
        for tag, _, child in ranks:
            if tag not in killed:
                child.wait(timeout=90)
        server.plan = None  # faults end with the job: the drain below must be able to finish
        drain = run_cli(["drain", str(wal), "--sink", server.url, "--timeout", "60"],
                        {**env, "DISTWAL_LEASE_S": LEASE_S}, timeout=120)
        assert drain.returncode == 0, f"drain failed {context}: {drain.stderr}"
        monitor.__exit__()
        stats.epochs_claimed = max((int(p.name) for p in (wal / "epochs").iterdir() if p.name.isdigit()), default=0)
        stats.leader_changes, unjustified = monitor.judge(stats.epochs_claimed)
        assert not unjustified and stats.epochs_claimed <= stats.leader_changes + 1, (
            f"{stats.epochs_claimed} epochs claimed for {stats.leader_changes} leader changes: "
            f"{'; '.join(unjustified)} {context}"
        )
        stored = server.records()
        for tag, _, child in ranks:
            acks = acks_of(child)
            stats.acked += len(acks)
            got = stored.get(writer_ids[tag], {})
            stats.lost += len([seq for seq in acks if seq not in got])
            assert_acked_delivered_once(stored, writer_ids[tag], tag, acks, context,
                                        finished=tag not in killed and child.popen.returncode == 0)
        stats.stored = sum(len(v) for v in stored.values())
        table = server.requests_table()
        assert_fenced(table, context)
        stats.epochs = len({r["epoch"] for r in table})
        stats.wire_duplicates = server.wire_duplicates()
        wait_until(lambda: all(where_is(wal, w) in ("history", None) for w in writer_ids.values()), 30,
                   f"every writer folder delivered and removed {context}")
        leftovers = [p.name for sub in ("writers", "adopted") for p in (wal / sub).iterdir()]
        assert not leftovers, f"left on disk after drain: {leftovers} {context}"
    stats.seconds = round(time.monotonic() - started, 2)
    return stats


def _inner_pid(child: Any) -> int:
    """The rank's own pid (a HostChild's popen is nsenter outside the host)."""
    line = child.wait_for("ready", timeout=5)
    host = getattr(child, "host", None)
    if host is None:
        return int(line.parts[2])
    import psutil

    procs = [p for p in psutil.Process(child.popen.pid).children(recursive=True)
             if any("rank_" in part for part in _cmdline(p))]
    return procs[-1].pid if procs else child.popen.pid


def _cmdline(proc: Any) -> list[str]:
    try:
        return list(proc.cmdline())
    except Exception:  # noqa: BLE001 - the process may be gone
        return []


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the randomized kill suite for many rounds.")
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--seed", type=int, help="first seed (rounds use seed, seed+1, ...)")
    parser.add_argument("--minutes", type=float, default=0.0, help="stop starting rounds after this long")
    parser.add_argument("--out", help="write the per-round stats and the totals as JSON here")
    opts = parser.parse_args(argv)
    first = opts.seed if opts.seed is not None else random.SystemRandom().randrange(2**31)
    started = time.monotonic()
    rounds: list[dict[str, Any]] = []
    failures: list[str] = []
    for number in range(opts.rounds):
        if opts.minutes and time.monotonic() - started > opts.minutes * 60:
            break
        seed = first + number
        with tempfile.TemporaryDirectory(prefix=f"killsuite-{seed}-") as tmp:
            try:
                stats = run_round(seed, Path(tmp))
                rounds.append(asdict(stats))
                flavour = f" (FUSE {stats.fuse}s)" if stats.fuse else ""
                print(f"round {number + 1}: seed {seed} ok: {stats.writers} writers on {stats.hosts} hosts{flavour}, "
                      f"kills {stats.kills}, acked {stats.acked}, wire dups {stats.wire_duplicates}, "
                      f"epochs {stats.epochs_claimed} for {stats.leader_changes} leader changes, "
                      f"{stats.seconds}s", flush=True)
            except Exception as exc:  # noqa: BLE001 - report every failing seed, keep going
                failures.append(f"seed {seed}: {exc}")
                print(f"round {number + 1}: seed {seed} FAILED: {exc}", flush=True)
    totals = {
        "rounds": len(rounds) + len(failures),
        "failed": len(failures),
        "acked": sum(r["acked"] for r in rounds),
        "lost": sum(r["lost"] for r in rounds),
        "stored": sum(r["stored"] for r in rounds),
        "wire_duplicates": sum(r["wire_duplicates"] for r in rounds),
        "kills": sum(len(r["kills"]) for r in rounds),
        "host_kills": sum(1 for r in rounds for k in r["kills"] if k.startswith("host")),
        "leader_kills": sum(1 for r in rounds for k in r["kills"] if k.startswith(("leader", "sender"))),
        "faults": sum(sum(r["faults"].values()) for r in rounds),
        "multi_host_rounds": sum(1 for r in rounds if r["hosts"] > 1),
        "fuse_rounds": sum(1 for r in rounds if r["fuse"]),
        "epochs_claimed": sum(r["epochs_claimed"] for r in rounds),
        "leader_changes": sum(r["leader_changes"] for r in rounds),
        "minutes": round((time.monotonic() - started) / 60, 1),
        "first_seed": first,
    }
    print(json.dumps(totals, indent=2))
    for failure in failures:
        print(failure)
    if opts.out:
        Path(opts.out).write_text(json.dumps({"totals": totals, "failures": failures, "rounds": rounds}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
