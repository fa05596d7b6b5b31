"""The leader against a misbehaving sink: a fault-injecting IngestServer, real ranks.

Transient faults (503 + Retry-After, 500, a connection dropped before or after the commit,
slow replies) are retried until everything is delivered once; 413 makes the sender split;
a poison record answered 422 is bisected out and kept as a dead letter; 401 pauses sending
with the records kept on disk; 409 (a newer epoch) makes the sender stop leading.
Replay with DISTWAL_TEST_SEED=<seed>.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import orjson
import pytest
from helpers.cluster import (
    Fault,
    FaultServer,
    KnownBug,
    acks_of,
    assert_acked_delivered_once,
    assert_fenced,
    check_known_bug,
    cluster_env,
    domain_of,
    has_poison,
    pick_seed,
    read_json,
    run_cli,
    start_writer,
    wait_until,
    writer_id_of,
)
from helpers.procs import read_dir

import distwal

pytestmark = [pytest.mark.process, pytest.mark.timeout(90)]

# A slow reply must stay well inside the lease, or the leader rightly gives up its epoch.
LEASE = "3"


def test_transient_faults_are_retried_until_everything_is_delivered_once(tmp_path, seed):
    rng = random.Random(seed)
    kinds = ["503", "500", "drop", "commit_drop", "slow"]
    # Every kind happens, in a seeded order; each failure forces a retry, so the next one
    # always gets its request; "slow" (which succeeds) comes last.
    first = rng.sample(kinds[:4], 4) + ["slow"]
    lock = threading.Lock()
    counter = {"n": 0}

    def plan(req):
        with lock:
            n = counter["n"]
            counter["n"] += 1
        kind = first[n] if n < len(first) else (rng.choice(kinds) if n < 40 and rng.random() < 0.3 else None)
        if kind == "503":
            return Fault.reply(503, Retry_After="1")
        if kind == "500":
            return Fault.reply(500)
        if kind == "drop":
            return Fault("drop")  # connection closed, nothing stored, no reply
        if kind == "commit_drop":
            return Fault("commit_drop")  # stored, then the connection closes: the ack is lost
        if kind == "slow":
            return Fault("slow", seconds=rng.uniform(0.3, 0.8))
        return None

    wal = tmp_path / "wal"
    context = f"(seed={seed}, first faults {first})"
    with FaultServer(tmp_path / "sink.db", plan=plan) as server:
        env = cluster_env(wal, server.url, DISTWAL_LEASE_S=LEASE)
        with start_writer(tmp_path, env, "a", count=400, pace=0.002, flush_delivered=[60]) as rank:
            writer_id = writer_id_of(rank)
            assert rank.wait(90) == 0, rank.describe()
        assert rank.lines_with("flushed")[0].parts[1] == "True", f"flush(delivered=True) failed {context}"
        assert rank.lines_with("finished")[0].parts[1] == "True", rank.describe()

        requests = server.requests()
        faults = {r.fault for r in requests}
        assert set(kinds) <= faults, f"not every fault was injected: {faults} {context}"
        assert_acked_delivered_once(server.records(), writer_id, "a", acks_of(rank), context, finished=True)
        assert len(acks_of(rank)) == 400

        # Retry-After is honoured; other failures back off instead of hammering the sink.
        for before, after in zip(requests, requests[1:]):
            gap = after.arrived - (before.finished or before.arrived)
            if before.fault == "503":
                assert gap >= 0.95, f"retried {gap:.3f}s after a 503 with Retry-After: 1 {context}"
            elif before.fault in ("500", "drop"):
                assert gap >= 0.05, f"retried {gap:.3f}s after a {before.fault}: no backoff {context}"
        lost_acks = [r for r in requests if r.fault == "commit_drop"]
        duplicates = server.wire_duplicates()
        print(f"{len(requests)} requests, faults {sorted(r.fault for r in requests if r.fault)}, "
              f"{duplicates} duplicate envelopes at the wire {context}")
        assert duplicates >= sum(len(r.envelopes) for r in lost_acks), context
        failed = sum(1 for r in requests if r.fault in ("503", "500", "drop", "commit_drop"))
        health = read_json(wal / "sender.json")
        assert health["errors"] >= failed and health["state"] == "ok", health
        assert_fenced(server.requests_table(), context)


def test_413_makes_the_sender_split_batches_above_the_limit(tmp_path, seed):
    # A limit that keeps the whole split within one lease (see the livelock test below).
    limit = random.Random(seed).randint(50, 150)
    held = {"on": True}

    def plan(req):
        if held["on"]:
            return Fault.reply(503, Retry_After="0.1")  # let a big backlog build up first
        if len(req.envelopes) > limit:
            return Fault.reply(413)
        return None

    wal = tmp_path / "wal"
    context = f"(seed={seed}, limit={limit})"
    with FaultServer(tmp_path / "sink.db", plan=plan) as server:
        env = cluster_env(wal, server.url, DISTWAL_LEASE_S=LEASE)
        with start_writer(tmp_path, env, "a", count=500, flush_delivered=[60]) as rank:
            writer_id = writer_id_of(rank)
            rank.wait_for("logged", timeout=30)
            held["on"] = False
            assert rank.wait(60) == 0, rank.describe()
        assert rank.lines_with("flushed")[0].parts[1] == "True", rank.describe()

        requests = [r for r in server.requests() if r.fault != "503"]
        assert requests[0].status == 413 and len(requests[0].envelopes) > limit, requests[:3]
        too_big = [r for r in requests if r.status == 200 and len(r.envelopes) > limit]
        assert not too_big, f"the sink stored batches above its limit {too_big} {context}"
        assert_acked_delivered_once(server.records(), writer_id, "a", acks_of(rank), context, finished=True)
        assert server.wire_duplicates() == 0, f"splitting re-sent acknowledged envelopes {context}"
        print(f"{sum(r.status == 413 for r in requests)} x 413, {sum(r.status == 200 for r in requests)} x 200 {context}")


def test_413_split_longer_than_the_lease_still_delivers_everything(tmp_path):
    limit, count = 8, 400  # about 100 small requests: several seconds, more than the 2 s lease
    held = {"on": True}

    def plan(req):
        if held["on"]:
            return Fault.reply(503, Retry_After="0.1")
        return Fault.reply(413) if len(req.envelopes) > limit else None

    wal, stop = tmp_path / "wal", tmp_path / "stop"
    with FaultServer(tmp_path / "sink.db", plan=plan) as server:
        env = cluster_env(wal, server.url)  # lease 2 s
        with start_writer(tmp_path, env, "a", count=count, stop=str(stop), wait_stop=True, finish_timeout=2) as rank:
            writer_id = writer_id_of(rank)
            rank.wait_for("logged", timeout=30)
            held["on"] = False
            try:
                wait_until(lambda: server.count() >= count, 20, f"all {count} records through a 413 limit of {limit}")
            except AssertionError:
                epochs = sorted({r.epoch for r in server.requests()})
                raise KnownBug(f"stuck at {server.count()}/{count} stored after 20 s; epochs {epochs}; "
                               f"{server.wire_duplicates()} duplicate envelopes") from None
            stop.touch()
            assert rank.wait(30) == 0, rank.describe()
        assert_acked_delivered_once(server.records(), writer_id, "a", acks_of(rank), finished=True)


# -- a poison record ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """One rank logs 300 records, one of them poison; the sink answers 422 to any batch holding it.

    The rank calls flush(delivered=True) twice: while the sink still holds back (the poison is
    refused during the call), then again once everything is settled."""
    seed = pick_seed()
    rng = random.Random(seed)
    tmp_path = tmp_path_factory.mktemp("poison")
    poison_i = rng.randrange(300)
    held = {"on": True}

    def plan(req):
        if held["on"]:
            return Fault.reply(503, Retry_After="0.1")
        return Fault.reply(rng.choice([400, 422])) if has_poison(req) else None

    wal = tmp_path / "wal"
    with FaultServer(tmp_path / "sink.db", plan=plan) as server:
        env = cluster_env(wal, server.url, DISTWAL_LEASE_S=LEASE)
        with start_writer(tmp_path, env, "a", count=300, poison=[poison_i], flush_delivered=[60, 10],
                          stop=str(tmp_path / "stop"), wait_stop=True) as rank:
            writer_id = writer_id_of(rank)
            rank.wait_for("logged", timeout=30)
            held["on"] = False
            wait_until(lambda: len(rank.lines_with("flushed")) == 2, 60, "both flushes", rank.describe)
            try:  # sender.json is rewritten about once a second: give it the time (the test asserts)
                wait_until(lambda: (read_json(wal / "sender.json") or {}).get("dead_letters"), 5, "sender.json")
            except AssertionError:
                pass
            status = distwal.status(wal)
            (tmp_path / "stop").touch()
            assert rank.wait(60) == 0, rank.describe()
        yield {
            "seed": seed, "wal": wal, "server": server, "rank": rank, "writer": writer_id, "poison_seq": poison_i + 1,
            "status": status, "flushed": [line.parts[1] for line in rank.lines_with("flushed")],
        }


def test_poison_record_is_bisected_out_and_kept_as_a_dead_letter(poisoned):
    p = poisoned
    context = f"(seed={p['seed']}, poison seq {p['poison_seq']})"
    server, wal, writer_id = p["server"], p["wal"], p["writer"]
    assert_acked_delivered_once(server.records(), writer_id, "a", acks_of(p["rank"]), context, finished=True,
                                skip=frozenset({p["poison_seq"]}))
    refused = [r for r in server.requests() if r.status in (400, 422)]
    assert refused and all(has_poison(r) for r in refused), context
    assert any(len(r.envelopes) == 1 for r in refused), f"never bisected down to the poison alone {context}"

    letters = list((wal / "deadletters").iterdir())
    assert [f.name for f in letters] == [f"{writer_id}.ndjson"], letters
    lines = [orjson.loads(line) for line in letters[0].read_bytes().splitlines()]
    assert len(lines) == 1, lines
    envelope = lines[0]["envelope"]
    assert (envelope["writer"], envelope["seq"]) == (writer_id, p["poison_seq"]), envelope
    assert envelope["data"] == {"w": "a", "i": p["poison_seq"] - 1, "poison": True}, envelope
    assert lines[0]["reason"], lines[0]

    assert p["status"]["dead_letters"] == 1, p["status"]
    assert p["status"]["sender"]["dead_letters"] == 1, p["status"]["sender"]
    row = next(w for w in p["status"]["writers"] if w["writer"] == writer_id)
    assert row["dead_letters"] == 1 and row["acked_seq"] == 300, row
    assert p["flushed"][0] == "False", "flush(delivered=True) returned True though a record became a dead letter"


def test_flush_delivered_is_false_for_a_dead_letter_refused_before_the_call(poisoned):
    # CONTRACT: "it returns False ... when one of them [the records logged before the call]
    # became a dead letter". The second flush covers the poison, refused before it started.
    check_known_bug(poisoned["flushed"][1] == "False", f"second flush(delivered=True) -> {poisoned['flushed'][1]}")


# -- 401 and 409 -------------------------------------------------------------------------------


def test_401_pauses_sending_and_keeps_records_on_disk_without_leaking_the_token(tmp_path, seed):
    wrong, right = f"wrong-token-{seed}", f"right-token-{seed}"
    wal, stop = tmp_path / "wal", tmp_path / "stop"
    with FaultServer(tmp_path / "sink.db", token=right) as server:
        env = cluster_env(wal, server.url, DISTWAL_LEASE_S=LEASE, DISTWAL_TOKEN=wrong)
        with start_writer(tmp_path, env, "a", count=200, flush_delivered=[3], stop=str(stop), wait_stop=True,
                          finish_timeout=2) as rank:
            writer_id = writer_id_of(rank)
            wait_until(lambda: (read_json(wal / "sender.json") or {}).get("state") == "paused", 20,
                       "sender.json state 'paused'", lambda: str(read_json(wal / "sender.json")))
            rank.wait_for("flushed", timeout=20)
            status = distwal.status(wal)
            stop.touch()
            assert rank.wait(30) == 0, rank.describe()
        assert rank.lines_with("flushed")[0].parts[1] == "False", "flush(delivered=True) said delivered"

        assert server.count() == 0
        assert {r.status for r in server.requests()} == {401}
        assert all(h.get("Authorization") == f"Bearer {wrong}" for h in server.seen_headers), "token not sent"
        assert status["sender"]["state"] == "paused", status["sender"]
        row = next(w for w in status["writers"] if w["writer"] == writer_id)
        assert row["acked_seq"] == 0 and row["pending_records"] == 200, row
        on_disk = read_dir(wal)[writer_id]
        assert on_disk.seqs == list(range(1, 201)), "the records did not stay on disk"
        assert_token_nowhere(wal, wrong)

        # Not condemned: with the right token, a drain delivers all of it.
        fixed = dict(env, DISTWAL_TOKEN=right)
        assert run_cli(["drain", str(wal), "--sink", server.url, "--timeout", "30"], fixed).returncode == 0
        assert_acked_delivered_once(server.records(), writer_id, "a", acks_of(rank), finished=True)
        assert_token_nowhere(wal, wrong)
        assert_token_nowhere(wal, right)


def assert_token_nowhere(root: Path, token: str) -> None:
    for parent, _, files in os.walk(root):
        for name in files:
            data = (Path(parent) / name).read_bytes()
            assert token.encode() not in data, f"the token is written in {Path(parent) / name}"


def test_409_stale_epoch_makes_the_sender_stop_leading(tmp_path, seed):
    """The sink has already seen epoch 2 of this directory (another leader): our first
    leader (epoch 1) is refused, stops leading, and the rank comes back with a newer epoch."""
    wal, stop = tmp_path / "wal", tmp_path / "stop"
    domain = domain_of(wal)
    with FaultServer(tmp_path / "sink.db") as server:
        server.store.write(domain, 2, [])  # the fence: epoch 2 was seen for this domain
        env = cluster_env(wal, server.url, DISTWAL_LEASE_S=LEASE)
        with start_writer(tmp_path, env, "a", count=150, pace=0.002, stop=str(stop), wait_stop=True) as rank:
            writer_id = writer_id_of(rank)
            rank.wait_for("logged", timeout=30)
            acks = acks_of(rank)
            wait_until(lambda: len(server.records().get(writer_id, {})) >= 150, 30, "all 150 records stored",
                       lambda: str(server.requests()))
            stop.touch()
            assert rank.wait(30) == 0, rank.describe()

        requests = server.requests()
        first = [r for r in requests if r.epoch == 1]
        assert [r.status for r in first] == [409], f"epoch 1 went on after its 409: {first}"
        assert all(r.index < min(q.index for q in requests if q.epoch >= 2) for r in first), requests
        assert all(r.status == 200 for r in requests if r.epoch >= 2), requests
        assert {1, 2} <= {int(name) for name in os.listdir(wal / "epochs")}
        assert read_json(wal / "leader.json")["epoch"] >= 2
        assert_acked_delivered_once(server.records(), writer_id, "a", acks, finished=True)
