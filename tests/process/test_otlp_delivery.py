"""Real ranks shipping to OTLP/HTTP: the leader SIGKILLed at random points, a receiver that
answers 503/429/400/partial_success, and rotel, a real OpenTelemetry collector, in the path.

An OTLP collector does not deduplicate: what is asserted is at-least-once, every acknowledged
record arrived with the right distwal.writer and distwal.seq (the receiver keys records by
those attributes, and each body must be the record logged under that seq), and the copies
are counted and printed. Replay a run with DISTWAL_TEST_SEED=<seed>.
"""

from __future__ import annotations

import random
import threading
from contextlib import ExitStack

import orjson
import pytest
from helpers.cluster import (
    KillSink,
    Rank,
    Ranks,
    acks_of,
    assert_acked_delivered_once,
    assert_ranks_acked_delivered_once,
    cluster_env,
    drain_ok,
    kill_leaders_at_random_points,
    random_kill_modes,
    read_json,
    run_cli,
    start_writer,
    wait_until,
    writer_id_of,
)
from helpers.otlp import OTLPReceiver, Reply, Rotel

pytestmark = [pytest.mark.process, pytest.mark.timeout(180)]

def assert_attributes_right(receiver: OTLPReceiver, ranks: list[Rank], context: str, service: str = "distwal") -> None:
    """Every LogRecord carries its writer's distwal.* attributes and its resource names its process."""
    by_id = {rank.id: rank for rank in ranks}
    for r in receiver.received():
        rank = by_id.get(r.writer)
        assert rank is not None, f"a record of unknown writer {r.writer} {context}"
        assert r.data == {"w": rank.tag, "i": r.seq - 1}, f"{r.writer} seq {r.seq} carries {r.data} {context}"
        assert r.attributes["distwal.epoch"] >= 1 and isinstance(r.attributes.get("distwal.run"), str), (r.attributes, context)
        assert r.resource["process.pid"] == rank.child.pid and r.resource["service.name"] == service, r.resource


def test_leader_sigkilled_at_random_points_every_acked_record_reaches_the_receiver(tmp_path, seed):
    rng = random.Random(seed)
    modes = random_kill_modes(rng, rounds=4)
    context = f"(seed={seed}, modes={modes})"
    print(f"kill modes {modes}")
    wal, stop = tmp_path / "wal", tmp_path / "stop"

    with OTLPReceiver() as receiver, ExitStack() as stack:
        env = cluster_env(wal, receiver.sink_url)
        ranks = Ranks.of_writers(stack, tmp_path, env, stop, pace=lambda: rng.uniform(0.002, 0.008))
        ranks.add(3)

        def set_hook(hook):
            # run in the receiver after keeping the records, before the reply
            receiver.on_store = hook

        sink = KillSink(
            shipped=lambda epoch: any(r.status == 200 and epoch in r.epochs for r in receiver.requests()),
            count=receiver.count, set_hook=set_hook, in_epoch=lambda req, epoch: epoch in req.epochs,
            noun="received")
        committed_then_killed = kill_leaders_at_random_points(ranks, modes, wal, sink, rng, context)

        ranks.finish(stop, 60)
        drain_ok(wal, receiver.sink_url, env, context)

        stored = receiver.records()
        total_acks = assert_ranks_acked_delivered_once(stored, ranks, context)
        assert_attributes_right(receiver, ranks, context)
        # A batch the receiver kept but whose reply never left was sent again by a later epoch.
        for req in committed_then_killed:
            later = {key for r in receiver.requests() if r.status == 200 and r.records and min(r.epochs) > max(req.epochs)
                     for key in r.keys}
            unsent = set(req.keys) - later
            assert not unsent, f"kept-unacked batch {req} not re-sent: {sorted(unsent)[:5]} {context}"
        copies = receiver.copies()
        print(f"{total_acks} acked records from {len(ranks)} writers, {len(receiver.received())} LogRecords "
              f"received in {len(receiver.requests())} requests, {copies} copies (at-least-once) {context}")
        assert copies >= sum(len(req.records) for req in committed_then_killed), context


def test_503_429_400_and_partial_success_end_with_everything_delivered_or_kept(tmp_path, seed):
    rng = random.Random(seed)
    poison = rng.randrange(50, 250)
    context = f"(seed={seed}, poison record #{poison})"
    lock = threading.Lock()
    script = ["503", "429"]  # the first requests, in this order; then a partial success, once
    partial = {"done": False}

    def plan(req):
        if any(r.data.get("poison") for r in req.records):
            return Reply(400, {"Content-Type": "text/plain"}, b"record refused")
        with lock:
            if script:
                status = script.pop(0)
                return Reply(int(status), {"Retry-After": "1"})
            if not partial["done"] and len(req.records) >= 2:
                partial["done"] = True
                return Reply(200, rejected=2)
        return None

    wal = tmp_path / "wal"
    with OTLPReceiver() as receiver:
        receiver.plan = plan
        env = cluster_env(wal, receiver.sink_url, DISTWAL_LEASE_S="3")
        with start_writer(tmp_path, env, "a", count=300, pace=0.001, poison=[poison]) as rank:
            writer_id = writer_id_of(rank)
            assert rank.wait(90) == 0, rank.describe()
        acks = acks_of(rank)
        assert len(acks) == 300
        assert_acked_delivered_once(receiver.records(), writer_id, "a", acks, context, finished=True,
                                    skip=frozenset({poison + 1}))
        requests = receiver.requests()
        faults = [r.fault for r in requests if r.fault]
        retried = [f for f in faults if f != "400"]  # 400s come whenever a request holds the poison record
        assert retried[:3] == ["503", "429", "partial:2"] and "400" in faults, (faults, context)
        for before, after in zip(requests, requests[1:]):
            if before.fault in ("503", "429"):
                gap = after.arrived - (before.finished or before.arrived)
                assert gap >= 0.95, f"retried {gap:.3f}s after a {before.fault} with Retry-After: 1 {context}"
        # The refused record, and only it, is a dead letter on disk.
        (letters,) = list((wal / "deadletters").iterdir())
        kept = [orjson.loads(line) for line in letters.read_bytes().splitlines()]
        assert [(k["envelope"]["seq"], k["envelope"]["data"]) for k in kept] == [
            (poison + 1, {"w": "a", "i": poison, "poison": True})], context
        assert "400" in kept[0]["reason"]
        health = read_json(wal / "sender.json")
        assert health["sink_rejected"] == 2 and health["dead_letters"] == 1, health
        shown = run_cli(["status", str(wal)], env)
        assert "2 rejected by the sink" in " ".join(shown.stdout.split()), shown.stdout  # the table wraps lines


def test_records_pass_through_the_rotel_collector(tmp_path):
    wal = tmp_path / "wal"
    with OTLPReceiver() as receiver, Rotel(receiver.base_url, tmp_path) as rotel:
        env = cluster_env(wal, rotel.sink_url, DISTWAL_SERVICE_NAME="bert-pretrain")
        with ExitStack() as stack:
            ranks = [Rank(tag, stack.enter_context(start_writer(tmp_path, env, tag, count=200, pace=0.001)))
                     for tag in ("a", "b")]
            for rank in ranks:
                rank.id = writer_id_of(rank.child)
            for rank in ranks:
                assert rank.child.wait(60) == 0, rank.child.describe()
        # A rank that finished while not leading leaves its last records to the next leader: drain.
        drained = run_cli(["drain", str(wal), "--sink", rotel.sink_url, "--timeout", "60"], env)
        assert drained.returncode == 0, drained.stderr
        acks = {rank.id: set(acks_of(rank.child)) for rank in ranks}
        assert sum(map(len, acks.values())) == 400
        wait_until(lambda: receiver.has_all(acks), 60, "every acknowledged record through rotel",
                   lambda: f"receiver: {receiver.requests()} {sum(map(len, receiver.records().values()))} records; "
                           f"rotel: {[line for line in rotel.output().splitlines() if 'ERROR' in line or 'WARN' in line]}")
        stored = receiver.records()
        for rank in ranks:
            assert_acked_delivered_once(stored, rank.id, rank.tag, acks_of(rank.child), finished=True)
        assert_attributes_right(receiver, ranks, "(through rotel)", service="bert-pretrain")
        # rotel's own debug log of what it received names the records too (written as it goes).
        wait_until(lambda: "distwal.seq: Int(200)" in rotel.output() and ranks[0].id in rotel.output(), 30,
                   "rotel's debug log to show the records", lambda: rotel.output()[-2000:])


def test_nan_and_infinities_logged_arrive_as_otlp_doubles(tmp_path):
    import math

    import distwal

    wal = tmp_path / "wal"
    with OTLPReceiver() as receiver:
        writer = distwal.init(dir=str(wal), sink=receiver.sink_url, durability="sync", disable_sender=True)
        writer.log({"step": 1, "loss": float("nan"), "grad": {"max": float("inf"), "min": float("-inf")},
                    "note": "NaN"})
        writer.finish()
        env = cluster_env(wal, receiver.sink_url)
        drained = run_cli(["drain", str(wal), "--sink", receiver.sink_url, "--timeout", "60"], env)
        assert drained.returncode == 0, drained.stderr
        (record,) = receiver.received()
    # log() keeps them as "NaN"/"Infinity"/"-Infinity"; the OTLP sink turns exactly those back into doubles
    # (a string "NaN" logged as such becomes one too: the spelling is the same).
    assert record.data["step"] == 1 and math.isnan(record.data["loss"]) and math.isnan(record.data["note"])
    assert record.data["grad"] == {"max": math.inf, "min": -math.inf}
