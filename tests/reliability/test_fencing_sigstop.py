"""A leader frozen with SIGSTOP past its lease is fenced by its epoch and stops leading.

Ranks log in sync mode and print every seq `log` returned; DISTWAL_LEASE_S=2. The leader is
frozen for two leases (the scenario itself), in two ways:

- sender_process: the leading rank's sender subprocess, at a seeded random moment; the rank
  itself runs on (its elector sees the newer epoch and tells the frozen sender to stop);
- sidecar_in_request: a `distwal run` sidecar hosting the sender on a thread, frozen whole
  (elector included) by the sink while the sink holds one of its requests; the request is
  processed only after the new leader has written, so the reply waiting for the resumed
  leader is a 409.

Either way: a contender sees the lease unchanged for the lease, claims a higher epoch and
ships; after SIGCONT the old leader sends nothing the sink accepts (its first send, if any,
is refused with 409, or it notices the lost lease before sending), it lets go of the lock
at once (checked with F_GETLK: who holds leader.lock), and nothing is lost or stored twice.
Replay with DISTWAL_TEST_SEED=<seed>.
"""

from __future__ import annotations

import fcntl
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import psutil
import pytest
from helpers.cluster import (
    LEASE_S,
    Fault,
    FaultServer,
    acks_of,
    assert_acked_delivered_once,
    assert_fenced,
    cluster_env,
    read_json,
    run_cli,
    sender_pids,
    start_writer,
    wait_until,
    writer_id_of,
)
from helpers.procs import Child

pytestmark = [pytest.mark.process, pytest.mark.reliability, pytest.mark.timeout(90)]

LEASE = float(LEASE_S)
STEP_DOWN_WITHIN = 3.0  # seconds after SIGCONT by which the old leader must have let go of the lock

WAIT_FOR_STOP = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]):\n    time.sleep(0.05)\n"


@contextmanager
def start_command(argv: list[str], env: dict[str, str], cwd: Path, label: str) -> Iterator[Child]:
    """Any command on the main host, in its own session, with stdout/stderr collected; reaped."""
    popen = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
    child = Child(popen, Path(label))
    try:
        yield child
    finally:
        # `distwal run` starts CMD in a session of its own: a group kill misses it, and it
        # holds our pipes open; kill every descendant first.
        try:
            descendants = psutil.Process(popen.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        for proc in descendants:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        child.reap()


def lock_holder(wal: Path) -> int | None:
    """The pid holding the POSIX lock on leader.lock (F_GETLK: asks, takes nothing), or None."""
    try:
        fd = os.open(wal / "leader.lock", os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        query = struct.pack("@hhqqixxxx", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        l_type, _, _, _, l_pid = struct.unpack("@hhqqixxxx", fcntl.fcntl(fd, fcntl.F_GETLK, query))
    finally:
        os.close(fd)
    return None if l_type == fcntl.F_UNLCK else l_pid


def leading(wal: Path, server: FaultServer, pid: int) -> dict | None:
    """leader.json, once `pid` holds the lease and the sink has accepted a batch of its epoch."""
    lease = read_json(wal / "leader.json")
    if lease is None or lease.get("pid") != pid or lease.get("released"):
        return None
    return lease if any(r.status == 200 and r.epoch == lease["epoch"] for r in server.requests()) else None


class LeaseSampler:
    """Samples leader.json's epoch every 20 ms on a thread: a leader.json that goes back to an
    older epoch means a deposed leader renewed its lease after a newer one was claimed."""

    def __init__(self, wal: Path) -> None:
        self.wal = wal
        self.epochs: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            lease = read_json(self.wal / "leader.json")
            if isinstance(lease, dict) and isinstance(lease.get("epoch"), int):
                if not self.epochs or self.epochs[-1] != lease["epoch"]:
                    self.epochs.append(lease["epoch"])

    def __enter__(self) -> LeaseSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("mode", ["sender_process", "sidecar_in_request"])
def test_leader_sigstopped_past_its_lease_is_fenced_by_epoch_and_stops_leading(tmp_path, seed, mode):
    rng = random.Random(seed)
    wal, stop = tmp_path / "wal", tmp_path / "stop"
    want = rng.randint(1, 200)  # records the first leader ships before it is frozen
    context = f"(seed={seed}, mode={mode}, frozen after {want} more records)"
    lock = threading.Lock()
    armed: dict[str, int] = {}  # epoch and pid to freeze in the sink (sidecar_in_request)
    held: list = []
    frozen_at: list[float] = []
    gate = threading.Event()

    def plan(req):
        with lock:
            if not armed or held or req.epoch != armed["epoch"] or not req.envelopes:
                return None
            held.append(req)
            os.kill(armed["pid"], signal.SIGSTOP)  # frozen while its request is on the wire
            frozen_at.append(time.time())
        return Fault("hold", gate=gate)

    with FaultServer(tmp_path / "sink.db", plan=plan) as server, ExitStack() as stack:
        env = cluster_env(wal, server.url)
        ranks: dict[str, Child] = {}

        def add_ranks(n: int) -> None:
            for _ in range(n):
                tag = f"r{len(ranks)}"
                ranks[tag] = stack.enter_context(
                    start_writer(tmp_path, env, tag, stop=str(stop), pace=rng.uniform(0.002, 0.01), finish_timeout=30)
                )

        sidecar = None
        if mode == "sender_process":
            add_ranks(1)
            first = ranks["r0"]
            lease = wait_until(lambda: leading(wal, server, first.pid), 30, f"r0 to lead and ship {context}")
            add_ranks(2)
            victims = sender_pids(first.pid)
            assert len(victims) == 1, f"r0 leads but has senders {victims} {context}"
            frozen_pid = victims[0]
        else:
            sidecar = stack.enter_context(start_command(
                [sys.executable, "-m", "distwal", "run", "--dir", str(wal), "--sink", server.url, "--drain-timeout",
                 "30", "--quiet", "--", sys.executable, "-c", WAIT_FOR_STOP, str(stop)],
                env, tmp_path, "distwal run (sidecar)"))
            wait_until(lambda: (read_json(wal / "leader.json") or {}).get("pid") == sidecar.pid, 30,
                       f"the sidecar to lead {context}")
            add_ranks(3)
            lease = wait_until(lambda: leading(wal, server, sidecar.pid), 30, f"the sidecar to ship {context}")
            frozen_pid = sidecar.pid
        epoch = int(lease["epoch"])
        for child in ranks.values():
            writer_id_of(child)
        base = server.count()
        wait_until(lambda: server.count() >= base + want, 30, f"{want} more records stored {context}")

        sampler = stack.enter_context(LeaseSampler(wal))
        if mode == "sender_process":
            time.sleep(rng.uniform(0, 0.05))  # the random moment itself
            os.kill(frozen_pid, signal.SIGSTOP)
            frozen_at.append(time.time())
        else:
            with lock:
                armed.update(epoch=epoch, pid=frozen_pid)
            wait_until(lambda: frozen_at, 30, f"a request of epoch {epoch} to freeze its sender in {context}")
        t_stop = frozen_at[0]
        old_holder = ranks["r0"].pid if sidecar is None else sidecar.pid  # the lock is the rank's, not its sender's
        assert lock_holder(wal) == old_holder, f"leader.lock held by {lock_holder(wal)} {context}"

        time.sleep(max(0.0, t_stop + 2 * LEASE - time.time()))  # frozen for two leases: the scenario

        def newer_epoch_written():
            return next((r for r in server.requests() if r.status == 200 and r.epoch > epoch), None)

        takeover = wait_until(newer_epoch_written, 20, f"another process to ship with an epoch above {epoch} {context}",
                              lambda: f"leader.json {read_json(wal / 'leader.json')}; last requests {server.requests()[-5:]}")
        new_epoch = takeover.epoch
        new_lease = read_json(wal / "leader.json")
        assert int(new_lease["epoch"]) >= new_epoch > epoch, f"{new_lease} {context}"
        new_pid = int(new_lease["pid"])
        assert new_pid != frozen_pid and new_pid in {c.pid for c in ranks.values()}, f"{new_lease} {context}"
        if held:
            gate.set()  # the frozen leader's request lands only now, after the new epoch wrote
            wait_until(lambda: held[0].status is not None, 10, f"the held request answered {context}")
            assert held[0].status == 409, f"the frozen leader's held request got {held[0].status} {context}"

        assert not gone(frozen_pid), f"the frozen leader was killed before it could resume {context}"
        os.kill(frozen_pid, signal.SIGCONT)
        t_cont = time.time()

        def lock_passed() -> int | None:
            holder = lock_holder(wal)
            return holder if holder is not None and holder != old_holder else None

        holder = wait_until(lock_passed, STEP_DOWN_WITHIN, f"the resumed leader to let go of leader.lock {context}",
                            lambda: f"holder {lock_holder(wal)}")
        step_down = time.time() - t_cont
        if mode == "sender_process":
            wait_until(lambda: gone(frozen_pid), STEP_DOWN_WITHIN, f"the resumed sender process to end {context}")
        print(f"{mode}: frozen epoch {epoch} at +0; epoch {new_epoch} shipped at +{takeover.arrived - t_stop:.2f}s; "
              f"resumed at +{t_cont - t_stop:.2f}s; lock passed to pid {holder} (leader.json pid {new_pid}) "
              f"{step_down:.2f}s after SIGCONT")

        # Life goes on under the new leader; then everyone finishes and whatever is left is drained.
        base = server.count()
        wait_until(lambda: server.count() >= base + rng.randint(1, 100), 30, f"the new leader shipping {context}")
        sampler.__exit__()
        assert sampler.epochs == sorted(sampler.epochs), (
            f"leader.json went back to an older epoch (a deposed leader renewed): {sampler.epochs} {context}")
        stop.touch()
        for tag, child in ranks.items():
            assert child.wait(60) == 0, f"{child.describe()} {context}"
            assert child.lines_with("finished"), f"{child.describe()} {context}"
        if sidecar is not None:
            assert sidecar.wait(60) == 0, f"{sidecar.describe()} {context}"
        assert run_cli(["drain", str(wal), "--sink", server.url, "--timeout", "60"], env).returncode == 0, context

        requests = server.requests()
        late = [r for r in requests if r.epoch == epoch and r.arrived >= t_cont]
        assert all(r.status == 409 for r in late), f"epoch {epoch} sent after SIGCONT and was not refused: {late} {context}"
        assert len(late) <= 1, f"the resumed leader kept sending after a 409: {late} {context}"
        after_held = [r for r in requests if held and r.epoch == epoch and r.index > held[0].index]
        assert not after_held, f"the sidecar kept sending at epoch {epoch} after its 409: {after_held} {context}"
        print(f"old epoch requests after SIGCONT: {[r.status for r in late]} "
              f"({'refused by epoch' if late or held else 'noticed the lost lease before sending'})")

        stored = server.records()
        for tag, child in ranks.items():
            assert_acked_delivered_once(stored, writer_id_of(child), tag, acks_of(child), context, finished=True)
        assert set(stored) == {writer_id_of(c) for c in ranks.values()}, f"writers: {sorted(stored)} {context}"
        table = server.requests_table()
        assert_fenced(table, context)
        print(f"{sum(len(acks_of(c)) for c in ranks.values())} acked records, {len(table)} requests, "
              f"{server.wire_duplicates()} duplicate envelopes at the wire (deduplicated), epochs "
              f"{sorted({r['epoch'] for r in table})}")


def test_freed_lock_does_not_let_a_contender_depose_a_leader_whose_lease_is_fresh(tmp_path, seed):
    """After a takeover through a stale lease the new leader does not hold the lock until the
    frozen one lets go of it. Whoever grabs the freed lock first should see a fresh lease and
    leave it be. Naturally the race is won by the other contender about half of the time
    (before the fix in 5194a3f the test above showed epochs 1, 2, 3 in 4 runs out of 6 where
    1, 2 is expected: an extra failover and duplicate deliveries); here the new leader's rank
    (its elector thread, not its sender process, which keeps renewing) is frozen for that
    moment, so the other contender always gets the lock first."""
    rng = random.Random(seed)
    wal, stop = tmp_path / "wal", tmp_path / "stop"
    context = f"(seed={seed})"
    with FaultServer(tmp_path / "sink.db") as server, ExitStack() as stack:
        env = cluster_env(wal, server.url)
        ranks = {tag: stack.enter_context(start_writer(tmp_path, env, tag, stop=str(stop),
                                                       pace=rng.uniform(0.002, 0.01), finish_timeout=30))
                 for tag in ("r0",)}
        r0 = ranks["r0"]
        lease = wait_until(lambda: leading(wal, server, r0.pid), 30, f"r0 to lead and ship {context}")
        epoch = int(lease["epoch"])
        for tag in ("r1", "r2"):
            ranks[tag] = stack.enter_context(start_writer(tmp_path, env, tag, stop=str(stop),
                                                          pace=rng.uniform(0.002, 0.01), finish_timeout=30))
        (frozen_sender,) = sender_pids(r0.pid)
        os.kill(frozen_sender, signal.SIGSTOP)

        def taken_over():
            lease = read_json(wal / "leader.json") or {}
            shipped = any(r.status == 200 and r.epoch == lease.get("epoch") for r in server.requests())
            return lease if int(lease.get("epoch", 0)) > epoch and shipped else None

        new_lease = wait_until(taken_over, 20, f"a takeover through the stale lease {context}")
        new_epoch, new_pid = int(new_lease["epoch"]), int(new_lease["pid"])
        other = next(c.pid for t, c in ranks.items() if t != "r0" and c.pid != new_pid)
        os.kill(new_pid, signal.SIGSTOP)  # its elector is slow for a moment; its sender renews on
        try:
            assert not gone(frozen_sender), context
            os.kill(frozen_sender, signal.SIGCONT)  # the deposed leader steps down and frees the lock
            wait_until(lambda: lock_holder(wal) == other, STEP_DOWN_WITHIN, f"the other contender to get the lock {context}",
                       lambda: f"holder {lock_holder(wal)}")
            renewed = int((read_json(wal / "leader.json") or {}).get("n", 0))
            wait_until(lambda: int((read_json(wal / "leader.json") or {}).get("n", 0)) >= renewed + 2, 5,
                       f"the new leader to renew its lease twice more {context}")  # about 0.8 s
            lease_now = read_json(wal / "leader.json") or {}
            assert int(lease_now.get("epoch", 0)) == new_epoch, (
                f"pid {other} took the freed lock and claimed epoch {lease_now.get('epoch')} although "
                f"epoch {new_epoch} (pid {new_pid}) renews its lease {context}")
        finally:
            os.kill(new_pid, signal.SIGCONT)
        stop.touch()
        for tag, child in ranks.items():
            assert child.wait(60) == 0, f"{child.describe()} {context}"
        assert run_cli(["drain", str(wal), "--sink", server.url, "--timeout", "60"], env).returncode == 0, context
        stored = server.records()
        for tag, child in ranks.items():
            assert_acked_delivered_once(stored, writer_id_of(child), tag, acks_of(child), context, finished=True)
        assert_fenced(server.requests_table(), context)


def test_drain_stalled_past_its_lease_takes_leadership_back_and_delivers(tmp_path: Path) -> None:
    """`distwal drain` whose first request hangs in the sink for two leases: it finds its lease
    lost (a stall), says so in one line, leads again with a new epoch and exits 0 once
    everything is delivered (before, it died with a LostLeadership traceback)."""
    from helpers.jobs import run_cli_child

    wal = tmp_path / "wal"
    first = threading.Event()

    def plan(req: object) -> Fault | None:
        if first.is_set():
            return None
        first.set()
        return Fault("slow", seconds=2 * LEASE + 0.5)  # the stall: the reply comes after the lease

    with FaultServer(tmp_path / "sink.db", plan=plan) as server:
        env = cluster_env(wal, server.url, sender=False)
        acks, writers = {}, {}
        with ExitStack() as stack:  # 2 x 12,000 records: more than one 20,000-record batch
            ranks = {tag: stack.enter_context(start_writer(tmp_path, env, tag, count=12_000)) for tag in "ab"}
            for tag, rank in ranks.items():
                assert rank.wait(timeout=90) == 0, rank.describe()
                acks[tag], writers[tag] = acks_of(rank), writer_id_of(rank)
        with run_cli_child(tmp_path, ["drain", str(wal), "--timeout", "60"], cluster_env(wal, server.url),
                           name="drain") as drain:
            code = drain.wait(timeout=90)
            err = drain.stderr
        assert code == 0, f"drain should finish after taking leadership back:\n{err}"
        assert "taking it back" in err and "leading again with epoch 2" in err, err
        assert "Traceback" not in err, err
        for tag in "ab":
            assert_acked_delivered_once(server.records(), writers[tag], tag, acks[tag], "(stalled drain)",
                                        finished=True)
