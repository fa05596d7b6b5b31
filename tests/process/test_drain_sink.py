"""`distwal drain` picks the sink the directory recorded, and never waits on a wrong one.

A directory whose first leader shipped to an HTTP sink (a real ingest server) gets more
records from writers that never lead (one finishes, one is SIGKILLed). Then:
- `distwal drain DIR` without --sink or DISTWAL_SINK delivers them to that HTTP sink within
  seconds (the time is printed) and says so in one closing line;
- a contradicting --sink (or DISTWAL_SINK) exits 2 at once, naming the recorded sink;
- while a live rank leads, a drain that times out names it (kind, host, pid); with no
  leader, it never claims that "another process leads".
Seeds are printed; replay with DISTWAL_TEST_SEED=<seed>.
"""

from __future__ import annotations

import random
import signal
import time

import pytest
from helpers.cluster import (
    FaultServer,
    acks_of,
    assert_acked_delivered_once,
    cluster_env,
    read_json,
    run_cli,
    start_writer,
    wait_until,
    writer_id_of,
)
from helpers.procs import child_env

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]


def _recorded_then_more(tmp_path, wal, server, rng):
    """A first drain records the HTTP sink; then a finishing and a SIGKILLed writer add more."""
    env = cluster_env(wal, server.url, sender=False)
    with start_writer(tmp_path, env, "first", count=rng.randint(1, 50)) as first:
        assert first.wait(30) == 0, first.describe()
    assert run_cli(["drain", str(wal), "--sink", server.url, "--timeout", "30"], env).returncode == 0
    assert read_json(wal / "sink.json")["sink"] == server.url
    writers = {}
    with start_writer(tmp_path, env, "done", count=rng.randint(1, 300)) as done, \
            start_writer(tmp_path, env, "killed", pace=0.001) as victim:
        victim_id = writer_id_of(victim)
        target = rng.randint(1, 300)
        victim.wait_for(lambda: len(victim.lines_with("ack")) >= target, timeout=30)
        victim.kill(signal.SIGKILL)
        assert victim.wait() == -signal.SIGKILL, victim.describe()
        writers["killed"] = (victim_id, acks_of(victim), False)
        done_id = writer_id_of(done)
        assert done.wait(30) == 0, done.describe()
        writers["done"] = (done_id, acks_of(done), True)
    return writers


def test_drain_without_sink_delivers_to_the_recorded_http_sink_within_seconds(tmp_path, seed):
    rng = random.Random(seed)
    wal = tmp_path / "wal"
    context = f"(seed={seed})"
    with FaultServer(tmp_path / "sink.db") as server:
        writers = _recorded_then_more(tmp_path, wal, server, rng)
        env = child_env(wal)  # no DISTWAL_SINK: the directory's record decides
        assert "DISTWAL_SINK" not in env
        started = time.monotonic()
        result = run_cli(["drain", str(wal), "--timeout", "60"], env)
        elapsed = time.monotonic() - started
        print(f"drain into the recorded HTTP sink took {elapsed:.2f} s {context}")
        assert result.returncode == 0, f"{result.stderr} {context}"
        assert elapsed < 15, f"drain took {elapsed:.1f} s {context}"
        stored = server.records()
        for tag, (writer_id, acks, finished) in writers.items():
            assert_acked_delivered_once(stored, writer_id, tag, acks, context, finished=finished)
        assert not (wal / "collected.db").exists(), "drain shipped into the default SQLite file instead"
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("distwal: delivered ") and f"to {server.url} in " in last, last


@pytest.mark.parametrize("how", ["--sink", "DISTWAL_SINK"])
def test_drain_with_a_contradicting_sink_exits_2_at_once_naming_the_recorded_one(tmp_path, seed, how):
    rng = random.Random(seed)
    wal = tmp_path / "wal"
    with FaultServer(tmp_path / "sink.db") as server:
        _recorded_then_more(tmp_path, wal, server, rng)
        other = f"sqlite:///{tmp_path / 'other.db'}"
        if how == "--sink":
            args, env = ["drain", str(wal), "--sink", other, "--timeout", "60"], child_env(wal)
        else:
            args, env = ["drain", str(wal), "--timeout", "60"], child_env(wal, DISTWAL_SINK=other)
        started = time.monotonic()
        result = run_cli(args, env)
        elapsed = time.monotonic() - started
    assert result.returncode == 2, result
    assert elapsed < 10, f"a usage error must come at once, took {elapsed:.1f} s"
    line = result.stderr.strip().splitlines()[-1]
    assert f"ships to {server.url}" in line and other in line and "another process leads" not in line, line
    assert not (tmp_path / "other.db").exists()


def test_drain_names_the_live_leader_it_waited_for(tmp_path, seed):
    wal, stop = tmp_path / "wal", tmp_path / "stop"
    with FaultServer(tmp_path / "sink.db") as server:
        env = cluster_env(wal, server.url)  # this rank may lead
        with start_writer(tmp_path, env, "leader", stop=str(stop), pace=0.01) as rank:
            _, pid = rank.wait_for("ready", timeout=30).parts[1:3]
            wait_until(lambda: (wal / "leader.json").exists() and read_json(wal / "leader.json").get("kind") == "rank",
                       30, "the rank to lead", rank.describe)
            result = run_cli(["drain", str(wal), "--timeout", "2"], child_env(wal))
            stop.touch()
            assert rank.wait(30) == 0, rank.describe()
    assert result.returncode == 1, result
    last = result.stderr.strip().splitlines()[-1]
    assert "another process leads" in last and "rank on " in last and f"pid {pid}" in last, last


def test_drain_never_says_another_process_leads_when_none_does(tmp_path, seed):
    rng = random.Random(seed)
    wal = tmp_path / "wal"
    with FaultServer(tmp_path / "sink.db") as server:
        _recorded_then_more(tmp_path, wal, server, rng)
    # The recorded sink is now down: drain leads at once, cannot deliver, and says why.
    result = run_cli(["drain", str(wal), "--timeout", "2"], child_env(wal), timeout=60)
    assert result.returncode == 1, result
    assert "another process leads" not in result.stderr, result.stderr
    assert "not everything was delivered" in result.stderr.strip().splitlines()[-1], result.stderr
