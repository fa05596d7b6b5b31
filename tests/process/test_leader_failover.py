"""The leader dies (or is deposed) and a new one takes over without losing an acknowledged record.

Ranks log in sync mode and report every seq `log` returned. The leader is SIGKILLed at
seeded random points, in four ways: the rank (its sender subprocess dies with it), the
sender subprocess alone (the rank survives and steps down), and both of these right after
the sink committed a batch and before its reply left (the server does the killing), which
is the window between the sink's acknowledgement and the cursor write. Replay a run with
DISTWAL_TEST_SEED=<seed>.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
from helpers.cluster import (  # noqa: F401 - `seed` is a fixture
    Fault,
    FaultServer,
    acks_of,
    assert_acked_delivered_once,
    assert_fenced,
    cluster_env,
    kill_and_wait_gone,
    read_json,
    seed,
    run_cli,
    sender_pids,
    start_writer,
    wait_until,
    writer_id_of,
)
from helpers.procs import Child

pytestmark = [pytest.mark.process, pytest.mark.timeout(150)]

KILL_MODES = ("rank", "sender", "commit_rank", "commit_sender")


@dataclass
class Rank:
    tag: str
    child: Child
    id: str = ""
    killed: bool = False


def test_leader_sigkilled_at_random_points_every_acked_record_delivered_once(tmp_path, seed):
    rng = random.Random(seed)
    rounds = 6
    modes = [rng.choice(KILL_MODES) for _ in range(rounds)]
    if not any(mode.startswith("commit") for mode in modes):  # always cover the ack-before-cursor window
        modes[rng.randrange(rounds)] = rng.choice(("commit_rank", "commit_sender"))
    context = f"(seed={seed}, modes={modes})"
    print(f"kill modes {modes}")
    wal, stop = tmp_path / "wal", tmp_path / "stop"

    with FaultServer(tmp_path / "sink.db") as server, ExitStack() as stack:
        env = cluster_env(wal, server.url)
        ranks: list[Rank] = []

        def add_rank() -> Rank:
            tag = f"r{len(ranks)}"
            child = stack.enter_context(
                start_writer(tmp_path, env, tag, stop=str(stop), pace=rng.uniform(0.002, 0.008), finish_timeout=30)
            )
            rank = Rank(tag, child)
            ranks.append(rank)
            return rank

        for _ in range(3):
            add_rank()
        for rank in ranks:
            rank.id = writer_id_of(rank.child)

        lease_epochs: list[int] = []  # leader.json epochs as sampled over time
        committed_then_killed = []
        last_epoch = 0
        for round_, mode in enumerate(modes):
            where = f"round {round_} ({mode}) {context}"

            def new_leader_shipping():
                lease = read_json(wal / "leader.json")
                if lease is not None:
                    lease_epochs.append(int(lease["epoch"]))
                if lease is None or lease["epoch"] <= last_epoch or lease.get("released"):
                    return None
                shipped = any(r.status == 200 and r.epoch == lease["epoch"] for r in server.requests())
                return lease if shipped else None

            lease = wait_until(new_leader_shipping, 30, f"a new leader after epoch {last_epoch} shipping {where}",
                               lambda: f"leader.json {read_json(wal / 'leader.json')}; requests {server.requests()[-5:]}")
            epoch, pid = int(lease["epoch"]), int(lease["pid"])
            leader = next((r for r in ranks if r.child.pid == pid and not r.killed), None)
            assert leader is not None, f"leader.json names pid {pid}, not one of our live ranks {where}"

            # The random point: let the new leader ship a random amount first.
            base = server.count()
            want = rng.randint(1, 150)
            wait_until(lambda: server.count() >= base + want, 30, f"{want} more records stored {where}")
            if mode.startswith("commit"):
                fired = threading.Event()
                victims = sender_pids(pid)
                assert victims, f"the leader rank {pid} has no sender subprocess {where}"

                def on_commit(req, epoch=epoch, pid=pid, victims=victims, mode=mode, fired=fired):
                    # In the server, after the commit, before the reply: the ack never reaches the leader.
                    if req.epoch != epoch or fired.is_set():
                        return
                    for victim in victims:
                        kill_and_wait_gone(victim)
                    if mode == "commit_rank":
                        os.kill(pid, signal.SIGKILL)
                    committed_then_killed.append(req)
                    fired.set()

                server.on_commit = on_commit
                assert fired.wait(30), f"the leader of epoch {epoch} committed nothing more {where}"
                server.on_commit = None
            else:
                time.sleep(rng.uniform(0, 0.05))  # the random moment itself, not a wait for a condition
                if mode == "rank":
                    leader.child.kill(signal.SIGKILL)
                else:
                    victims = sender_pids(pid)
                    assert victims, f"the leader rank {pid} has no sender subprocess {where}"
                    for victim in victims:
                        kill_and_wait_gone(victim)
            if mode in ("rank", "commit_rank"):
                assert leader.child.wait() == -signal.SIGKILL, leader.child.describe()
                leader.killed = True
                replacement = add_rank()  # as torchrun would restart it: a new writer
                replacement.id = writer_id_of(replacement.child)
            print(f"round {round_}: {mode} killed leader of epoch {epoch} (pid {pid}) after {server.count()} stored")
            last_epoch = epoch

        # Let the survivors finish, then deliver whatever is left (e.g. a just-killed rank).
        stop.touch()
        for rank in ranks:
            if not rank.killed:
                assert rank.child.wait(60) == 0, rank.child.describe()
                assert rank.child.lines_with("finished"), rank.child.describe()
        drained = run_cli(["drain", str(wal), "--sink", server.url, "--timeout", "60"], env)
        assert drained.returncode == 0, f"drain failed {context}"

        stored = server.records()
        total_acks = 0
        for rank in ranks:
            acks = acks_of(rank.child)
            total_acks += len(acks)
            assert_acked_delivered_once(stored, rank.id, rank.tag, acks, context, finished=not rank.killed)
        assert set(stored) <= {rank.id for rank in ranks}, f"records from unknown writers {context}"

        # The batches committed but never acknowledged were sent again by a later epoch:
        # the cursor had not moved past them (it moves only on the sink's reply).
        for req in committed_then_killed:
            later = {key for r in server.requests() if r.status == 200 and r.epoch > req.epoch for key in r.keys}
            unsent = set(req.keys) - later
            assert not unsent, f"committed-unacked batch {req} not re-sent by a later leader: {sorted(unsent)[:5]} {context}"

        table = server.requests_table()
        assert_fenced(table, context)
        assert lease_epochs == sorted(lease_epochs), f"leader.json epochs went backwards: {lease_epochs} {context}"
        duplicates = server.wire_duplicates()
        overlapping = sum(
            1 for a in table for b in table
            if a["status"] == b["status"] == 200 and a["epoch"] < b["epoch"] and a["ended"] > b["started"]
        )
        print(f"{total_acks} acked records, {len(stored)} writers, {len(table)} requests, "
              f"{duplicates} duplicate envelopes at the wire, {overlapping} overlapping request pairs {context}")
        assert duplicates >= sum(len(req.envelopes) for req in committed_then_killed), context


def test_deposed_leaders_delayed_request_is_fenced_and_it_stops_leading(tmp_path, seed):
    """The leader's first request hangs in the network (the server holds it) past its lease;
    another rank claims the next epoch and ships; then the held request lands: the sink
    refuses it (409), the old sender stops, and nothing is lost or stored twice."""
    rng = random.Random(seed)
    wal, stop = tmp_path / "wal", tmp_path / "stop"
    gate = threading.Event()
    held: list = []
    lock = threading.Lock()

    def plan(req):
        with lock:
            if held or not req.envelopes:
                return None
            held.append(req)
        return Fault("hold", gate=gate)

    with FaultServer(tmp_path / "sink.db", plan=plan) as server, ExitStack() as stack:
        env = cluster_env(wal, server.url)
        ranks = [
            Rank(tag, stack.enter_context(start_writer(tmp_path, env, tag, stop=str(stop),
                                                       pace=rng.uniform(0.002, 0.006))))
            for tag in ("a", "b")
        ]
        for rank in ranks:
            rank.id = writer_id_of(rank.child)
        wait_until(lambda: held, 30, "the first leader's first batch")
        old = held[0]
        lease = read_json(wal / "leader.json")
        assert lease["epoch"] == old.epoch, lease
        old_sender = sender_pids(int(lease["pid"]))
        assert old_sender, "the first leader has no sender subprocess"

        # Its sender is stuck in that request and cannot renew the lease: a successor takes over.
        wait_until(lambda: any(r.status == 200 and r.epoch > old.epoch for r in server.requests()), 30,
                   "a newer epoch to ship while the old request is held", lambda: str(server.requests()))
        gate.set()
        wait_until(lambda: old.status is not None, 10, "the held request to be answered")
        assert old.status == 409, f"the deposed leader's late batch was answered {old.status}, not 409"
        answered = time.monotonic()
        wait_until(lambda: not any(pid in sender_pids(int(lease["pid"])) for pid in old_sender), 10,
                   "the deposed sender to exit")
        print(f"deposed sender gone {time.monotonic() - answered:.2f}s after its 409")

        stop.touch()
        for rank in ranks:
            assert rank.child.wait(60) == 0, rank.child.describe()
        assert run_cli(["drain", str(wal), "--sink", server.url, "--timeout", "60"], env).returncode == 0

        requests = server.requests()
        stale = [r for r in requests if r.epoch == old.epoch]
        assert stale == [old], f"the deposed leader sent again with epoch {old.epoch}: {stale}"
        table = server.requests_table()
        assert_fenced(table)
        newer_done = min(r["ended"] for r in table if r["status"] == 200 and r["epoch"] > old.epoch)
        assert any(r["status"] == 409 and r["epoch"] == old.epoch and r["started"] > newer_done for r in table), (
            f"the scenario did not happen: no late old-epoch write reached the store {table}"
        )
        stored = server.records()
        for rank in ranks:
            assert_acked_delivered_once(stored, rank.id, rank.tag, acks_of(rank.child), finished=True)
        epochs = sorted({r.epoch for r in requests})
        print(f"epochs seen by the server {epochs}; {server.wire_duplicates()} duplicate envelopes at the wire")
