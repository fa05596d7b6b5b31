"""Real ranks shipping to OTLP/HTTP: the leader SIGKILLed at random points, a receiver that
answers 503/429/400/partial_success, and rotel, a real OpenTelemetry collector, in the path.

An OTLP collector does not deduplicate: what is asserted is at-least-once, every acknowledged
record arrived with the right distwal.writer and distwal.seq (the receiver keys records by
those attributes, and each body must be the record logged under that seq), and the copies
are counted and printed. Replay a run with DISTWAL_TEST_SEED=<seed>.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass

import orjson
import pytest
from helpers.cluster import (  # noqa: F401 - `seed` is a fixture
    acks_of,
    assert_acked_delivered_once,
    cluster_env,
    kill_and_wait_gone,
    read_json,
    run_cli,
    sender_pids,
    start_writer,
    wait_until,
    writer_id_of,
)
from helpers.otlp import OTLPReceiver, Reply, Rotel
from helpers.procs import Child

pytestmark = [pytest.mark.process, pytest.mark.timeout(180)]

KILL_MODES = ("rank", "sender", "commit_rank", "commit_sender")


@dataclass
class Rank:
    tag: str
    child: Child
    id: str = ""
    killed: bool = False


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
    rounds = 4
    modes = [rng.choice(KILL_MODES) for _ in range(rounds)]
    if not any(mode.startswith("commit") for mode in modes):  # always cover the ack-before-cursor window
        modes[rng.randrange(rounds)] = rng.choice(("commit_rank", "commit_sender"))
    context = f"(seed={seed}, modes={modes})"
    print(f"kill modes {modes}")
    wal, stop = tmp_path / "wal", tmp_path / "stop"

    with OTLPReceiver() as receiver, ExitStack() as stack:
        env = cluster_env(wal, receiver.sink_url)
        ranks: list[Rank] = []

        def add_rank() -> Rank:
            tag = f"r{len(ranks)}"
            child = stack.enter_context(
                start_writer(tmp_path, env, tag, stop=str(stop), pace=rng.uniform(0.002, 0.008), finish_timeout=30))
            rank = Rank(tag, child)
            ranks.append(rank)
            rank.id = writer_id_of(child)
            return rank

        for _ in range(3):
            add_rank()
        committed_then_killed = []
        last_epoch = 0
        for round_, mode in enumerate(modes):
            where = f"round {round_} ({mode}) {context}"

            def new_leader_shipping(last_epoch=last_epoch):
                lease = read_json(wal / "leader.json")
                if lease is None or lease["epoch"] <= last_epoch or lease.get("released"):
                    return None
                shipped = any(r.status == 200 and lease["epoch"] in r.epochs for r in receiver.requests())
                return lease if shipped else None

            lease = wait_until(new_leader_shipping, 30, f"a new leader after epoch {last_epoch} shipping {where}")
            epoch, pid = int(lease["epoch"]), int(lease["pid"])
            leader = next((r for r in ranks if r.child.pid == pid and not r.killed), None)
            assert leader is not None, f"leader.json names pid {pid}, not one of our live ranks {where}"

            base = receiver.count()
            want = rng.randint(1, 150)  # the random point: let the new leader ship a random amount first
            wait_until(lambda base=base, want=want: receiver.count() >= base + want, 30, f"{want} more records received {where}")
            if mode.startswith("commit"):
                fired = threading.Event()
                victims = sender_pids(pid)
                assert victims, f"the leader rank {pid} has no sender subprocess {where}"

                def on_store(req, epoch=epoch, pid=pid, victims=victims, mode=mode, fired=fired):
                    # In the receiver, after keeping the records, before the reply: the ack never arrives.
                    if epoch not in req.epochs or fired.is_set():
                        return
                    for victim in victims:
                        kill_and_wait_gone(victim)
                    if mode == "commit_rank":
                        os.kill(pid, signal.SIGKILL)
                    committed_then_killed.append(req)
                    fired.set()

                receiver.on_store = on_store
                assert fired.wait(30), f"the leader of epoch {epoch} sent nothing more {where}"
                receiver.on_store = None
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
                add_rank()  # as torchrun would restart it: a new writer
            print(f"round {round_}: {mode} killed the leader of epoch {epoch} (pid {pid}) "
                  f"after {receiver.count()} records received")
            last_epoch = epoch

        stop.touch()
        for rank in ranks:
            if not rank.killed:
                assert rank.child.wait(60) == 0, rank.child.describe()
        drained = run_cli(["drain", str(wal), "--sink", receiver.sink_url, "--timeout", "60"], env)
        assert drained.returncode == 0, f"drain failed {context}"

        stored = receiver.records()
        total_acks = 0
        for rank in ranks:
            acks = acks_of(rank.child)
            total_acks += len(acks)
            assert_acked_delivered_once(stored, rank.id, rank.tag, acks, context, finished=not rank.killed)
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
