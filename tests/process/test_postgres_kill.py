"""Kill tests on the PostgreSQL sink: ranks log in sync mode and ship through their elected
leader into a real server while, at seeded random points, the leader rank or its sender
process is SIGKILLed, the database crashes (`pg_ctl stop -m immediate`) in the middle of a
batch and restarts, or every connection is cut (`pg_terminate_backend`) mid-batch.

Afterwards: every record whose log() returned is in the table exactly once (the primary key
makes "once" structural; the test checks each is there, with its data, and nothing else), and
no row of an older epoch committed after a row of a newer one (commit timestamps). Replay a
run with DISTWAL_TEST_SEED=<seed>. POSTGRES_KILL_ROUNDS=<n> runs a longer variant.
"""

from __future__ import annotations

import os
import random
import time
from contextlib import ExitStack

import orjson
import pytest
from helpers.cluster import (
    Ranks,
    assert_ranks_acked_delivered_once,
    cluster_env,
    drain_ok,
    kill_senders,
    read_json,
    wait_until,
)
from helpers.postgres import PostgresServer, unavailable

pytestmark = [pytest.mark.process, pytest.mark.timeout(300)]

FAULTS = ("leader_rank", "leader_sender", "db_crash", "connection_cut", "commit_then_kill")
ROUNDS = int(os.environ.get("POSTGRES_KILL_ROUNDS", "8"))


@pytest.fixture
def pg():
    problem = unavailable()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    with PostgresServer.start_new() as server:  # its own server: this test crashes it
        yield server


def stored_count(pg: PostgresServer) -> int:
    try:
        return int(pg.sql("SELECT count(*) FROM distwal_records")[0][0])
    except Exception:  # noqa: BLE001 - the server is down or the table not there yet: nothing counted
        return -1


def commits_waiting(pg: PostgresServer) -> list[str]:
    """Transaction ids whose COMMIT is written but waits for a synchronous standby (no reply sent yet)."""
    with pg.connect(superuser=True) as conn:
        rows = conn.execute("SELECT backend_xid::text FROM pg_stat_activity WHERE wait_event = 'SyncRep'").fetchall()
    return [xid for (xid,) in rows]


def xact_status(pg: PostgresServer, xid: str) -> str:
    # A fresh cluster: the xid's epoch is 0, so the 32-bit xid is also its xid8.
    return str(pg.sql("SELECT pg_xact_status(%s::xid8)", xid)[0][0])


def wait_mid_batch(pg: PostgresServer, timeout: float = 3.0) -> bool:
    """Wait until a COPY is running in the server (a batch in flight); False if none came in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            busy = pg.sql("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'COPY %%'")
        except Exception:  # noqa: BLE001
            return False
        if busy[0][0]:
            return True
    return False


def test_leader_kills_database_crashes_and_cut_connections_lose_nothing(tmp_path, seed, pg):
    rng = random.Random(seed)
    faults = [rng.choice(FAULTS) for _ in range(ROUNDS)]
    for required in ("db_crash", "connection_cut", "leader_rank", "commit_then_kill"):
        if required not in faults:
            faults[rng.randrange(ROUNDS)] = required
    context = f"(seed={seed}, faults={faults})"
    print(f"faults {faults}")
    wal, stop = tmp_path / "wal", tmp_path / "stop"
    url = pg.url()
    mid_batch = 0
    committed_unacked: list[int] = []  # records committed after their leader was killed waiting for the reply

    with ExitStack() as stack:
        env = cluster_env(wal, url)
        ranks = Ranks.of_writers(stack, tmp_path, env, stop, pace=lambda: rng.uniform(0.001, 0.004))
        ranks.add(3)
        for round_, fault in enumerate(faults):
            where = f"round {round_} ({fault}) {context}"
            base = max(stored_count(pg), 0)
            want = rng.randint(20, 400)
            wait_until(lambda target=base + want: stored_count(pg) >= target, 60, f"{want} more records stored {where}",
                       lambda: f"leader.json {read_json(wal / 'leader.json')}; sender {read_json(wal / 'sender.json')}")
            lease = read_json(wal / "leader.json")
            if fault in ("db_crash", "connection_cut"):
                mid_batch += wait_mid_batch(pg)
                if fault == "db_crash":
                    pg.crash()
                    time.sleep(rng.uniform(0, 1.0))  # the random length of the outage itself
                    pg.start()
                else:
                    pg.terminate_backends()
            elif fault == "commit_then_kill":
                leader = ranks.leader(int(lease["pid"]), where)
                pg.admin("ALTER SYSTEM SET synchronous_standby_names = 'nobody'", "SELECT pg_reload_conf()")
                try:
                    held = wait_until(lambda: commits_waiting(pg), 30, f"a commit waiting for the standby {where}")
                    ranks.kill(leader, replace=False)  # the rank and, with it, its sender
                    held_back = stored_count(pg)  # the held batch is not visible yet
                finally:
                    pg.admin("ALTER SYSTEM RESET synchronous_standby_names", "SELECT pg_reload_conf()")
                wait_until(lambda: not commits_waiting(pg), 30, f"the held commit to complete {where}")
                statuses = [xact_status(pg, xid) for xid in held]
                assert statuses and set(statuses) == {"committed"}, f"held commits {held}: {statuses} {where}"
                # Rows it added (0 when the batch was all resent duplicates of a killed predecessor's).
                committed_unacked.append(stored_count(pg) - held_back)
                ranks.add()  # its replacement, once the held commit is through
            else:
                pid = int(lease["pid"])
                leader = ranks.leader(pid, where)
                time.sleep(rng.uniform(0, 0.05))  # the random moment itself, not a wait for a condition
                if fault == "leader_rank":
                    ranks.kill(leader)
                else:
                    kill_senders(pid, where)
            print(f"round {round_}: {fault} at {stored_count(pg)} stored, epoch {lease and lease.get('epoch')}")

        ranks.finish(stop, 90)
        drain_ok(wal, url, env, context, timeout=90, cli_timeout=120)

    rows = pg.sql("SELECT writer, seq, data::text, epoch, pg_xact_commit_timestamp(xmin) FROM distwal_records")
    stored: dict[str, dict[int, object]] = {}
    for writer, seq, data, _, _ in rows:
        stored.setdefault(writer, {})[seq] = orjson.loads(data)
    total = assert_ranks_acked_delivered_once(stored, ranks, context)
    assert set(stored) <= {rank.id for rank in ranks}, f"records from unknown writers {context}"

    # No row of an older epoch committed after a row of a newer one.
    span: dict[int, tuple[object, object]] = {}
    for _, _, _, epoch, committed in rows:
        low, high = span.get(epoch, (committed, committed))
        span[epoch] = (min(low, committed), max(high, committed))  # type: ignore[type-var]
    epochs = sorted(span)
    for older, newer in zip(epochs, epochs[1:]):
        assert span[older][1] <= span[newer][0], (
            f"epoch {older} committed rows until {span[older][1]}, after epoch {newer} began at {span[newer][0]} "
            f"{context}")
    print(f"{total} acked records from {len(ranks)} writers, all stored once; {len(rows)} rows; epochs {epochs}; "
          f"{mid_batch} faults landed with a COPY in flight; records committed after their leader died: "
          f"{committed_unacked} {context}")
    assert len(rows) == sum(len(v) for v in stored.values())
    assert len(epochs) >= 1 + sum(f.startswith("leader") for f in faults) // 2, f"too few leaders {epochs} {context}"
