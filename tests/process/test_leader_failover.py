"""The leader dies (or is deposed) and a new one takes over without losing an acknowledged record.

Ranks log in sync mode and report every seq `log` returned. The leader is SIGKILLed at
seeded random points, in four ways: the rank (its sender subprocess dies with it), the
sender subprocess alone (the rank survives and steps down), and both of these right after
the sink committed a batch and before its reply left (the server does the killing), which
is the window between the sink's acknowledgement and the cursor write. Replay a run with
DISTWAL_TEST_SEED=<seed>.
"""

from __future__ import annotations

import random
import threading
import time
from contextlib import ExitStack

import pytest
from helpers.cluster import (
    Fault,
    FaultServer,
    KillSink,
    Rank,
    Ranks,
    acks_of,
    assert_acked_delivered_once,
    assert_fenced,
    assert_ranks_acked_delivered_once,
    cluster_env,
    drain_ok,
    kill_leaders_at_random_points,
    random_kill_modes,
    read_json,
    run_cli,
    sender_pids,
    start_writer,
    wait_until,
    writer_id_of,
)
from helpers.timings import first_stored

pytestmark = [pytest.mark.process, pytest.mark.timeout(150)]


def test_leader_sigkilled_at_random_points_every_acked_record_delivered_once(tmp_path, seed, timings):
    rng = random.Random(seed)
    modes = random_kill_modes(rng, rounds=6)
    context = f"(seed={seed}, modes={modes})"
    print(f"kill modes {modes}")
    wal, stop = tmp_path / "wal", tmp_path / "stop"

    with FaultServer(tmp_path / "sink.db") as server, ExitStack() as stack:
        env = cluster_env(wal, server.url)
        ranks = Ranks.of_writers(stack, tmp_path, env, stop, pace=lambda: rng.uniform(0.002, 0.008))
        ranks.add(3)

        def set_hook(hook):
            server.on_commit = hook

        sink = KillSink(
            shipped=lambda epoch: any(r.status == 200 and r.epoch == epoch for r in server.requests()),
            count=server.count, set_hook=set_hook, in_epoch=lambda req, epoch: req.epoch == epoch,
            describe=lambda: f"leader.json {read_json(wal / 'leader.json')}; requests {server.requests()[-5:]}")
        lease_epochs: list[int] = []  # leader.json epochs as sampled over time
        kills: list[tuple[str, int, float]] = []
        committed_then_killed = kill_leaders_at_random_points(ranks, modes, wal, sink, rng, context, lease_epochs,
                                                              kills)
        # Failover: from the kill to the first batch a later epoch had stored. Not after the last
        # kill: the next round's wait for a new leader shipping is what makes the time meaningful.
        for mode, epoch, killed_at in kills[:-1]:
            stored_at = first_stored(server.requests(), lambda r, old=epoch: r.epoch > old)
            if stored_at is not None:
                timings.record("failover", stored_at - killed_at, mode=mode)

        # Let the survivors finish, then deliver whatever is left (e.g. a just-killed rank).
        ranks.finish(stop, 60)
        for rank in ranks.live():
            assert rank.child.lines_with("finished"), rank.child.describe()
        drain_ok(wal, server.url, env, context)

        stored = server.records()
        total_acks = assert_ranks_acked_delivered_once(stored, ranks, context)
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
