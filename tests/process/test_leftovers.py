"""Records an earlier run left on disk (no leader ever ran: DISTWAL_DISABLE_SENDER=1) are
shipped by the next writer that starts in the directory, or by `distwal drain`.

The earlier run has ranks that finished cleanly and one SIGKILLed at a seeded random point.
Replay with DISTWAL_TEST_SEED=<seed>.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import pytest
from helpers.cluster import (
    FaultServer,
    acks_of,
    assert_acked_delivered_once,
    check_known_bug,
    cluster_env,
    files_named,
    pick_seed,
    read_json,
    run_cli,
    seqs_on_disk,
    start_writer,
    wait_until,
    writer_id_of,
)
from helpers.procs import read_dir

pytestmark = [pytest.mark.process, pytest.mark.timeout(90)]


@dataclass
class EarlierRun:
    wal: object
    sink: str
    writers: dict[str, tuple[str, dict[int, int], bool]] = field(default_factory=dict)  # tag -> (id, acks, killed)


def leave_an_earlier_run(tmp_path, wal, sink: str, rng: random.Random) -> EarlierRun:
    """Two ranks that finish and one SIGKILLed mid-stream, none of them ever leading."""
    run = EarlierRun(wal, sink)
    env = cluster_env(wal, sink, sender=False)
    with ExitStack() as stack:
        finishers = [(f"f{k}", stack.enter_context(start_writer(tmp_path, env, f"f{k}", count=rng.randint(1, 300))))
                     for k in range(2)]
        victim = stack.enter_context(start_writer(tmp_path, env, "k0", pace=0.001))
        victim_id = writer_id_of(victim)
        target = rng.randint(0, 400)
        victim.wait_for(lambda: len(victim.lines_with("ack")) >= target, timeout=30)
        time.sleep(rng.uniform(0, 0.01))  # the random moment itself
        victim.kill(signal.SIGKILL)
        assert victim.wait() == -signal.SIGKILL, victim.describe()
        run.writers["k0"] = (victim_id, acks_of(victim), True)
        for tag, child in finishers:
            writer_id = writer_id_of(child)
            assert child.wait(30) == 0, child.describe()
            assert child.lines_with("finished")[0].parts[1] == "True", child.describe()
            run.writers[tag] = (writer_id, acks_of(child), False)
    on_disk = read_dir(wal)
    assert set(on_disk) == {writer_id for writer_id, _, _ in run.writers.values()}
    assert not (wal / "leader.json").exists() and not (wal / "sink.json").exists(), "someone led the earlier run"
    return run


def assert_earlier_run_delivered(server: FaultServer, run: EarlierRun, context: str) -> None:
    stored = server.records()
    for tag, (writer_id, acks, killed) in run.writers.items():
        assert_acked_delivered_once(stored, writer_id, tag, acks, context, finished=not killed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_next_writer_start_ships_an_earlier_runs_leftovers(tmp_path, seed):
    rng = random.Random(seed)
    wal, stop = tmp_path / "wal", tmp_path / "stop"
    context = f"(seed={seed})"
    with FaultServer(tmp_path / "sink.db") as server:
        run = leave_an_earlier_run(tmp_path, wal, server.url, rng)
        assert server.count() == 0

        env = cluster_env(wal, server.url)
        with start_writer(tmp_path, env, "n0", stop=str(stop), pace=0.01) as newcomer:
            newcomer_id = writer_id_of(newcomer)
            old_ids = {writer_id: tag for tag, (writer_id, _, _) in run.writers.items()}
            # Retired: tombstone written, then the folder removed (in that order: wait for both).
            wait_until(lambda: all(files_named(wal, writer_id) == [f"history/{writer_id}.json"] for writer_id in old_ids),
                       30,
                       f"the earlier run's writers delivered and retired {context}",
                       lambda: f"writers/ {os.listdir(wal / 'writers')}; stored {server.count()}")
            assert_earlier_run_delivered(server, run, context)
            for writer_id, tag in old_ids.items():
                tomb = read_json(wal / "history" / f"{writer_id}.json")
                assert tomb["state"] == ("adopted" if run.writers[tag][2] else "finished"), tomb
                assert files_named(wal, writer_id) == [f"history/{writer_id}.json"], files_named(wal, writer_id)
            stop.touch()
            assert newcomer.wait(30) == 0, newcomer.describe()
        assert_acked_delivered_once(server.records(), newcomer_id, "n0", acks_of(newcomer), context, finished=True)


# -- `distwal drain` ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drained(tmp_path_factory):
    """An earlier run's leftovers, then `distwal drain DIR --sink URL`."""
    seed = pick_seed()
    tmp_path = tmp_path_factory.mktemp("drain")
    wal = tmp_path / "wal"
    with FaultServer(tmp_path / "sink.db") as server:
        run = leave_an_earlier_run(tmp_path, wal, server.url, random.Random(seed))
        result = run_cli(["drain", str(wal), "--sink", server.url, "--timeout", "30"],
                         cluster_env(wal, server.url, sender=False))
        yield {"seed": seed, "wal": wal, "server": server, "run": run, "result": result}


def test_drain_ships_an_earlier_runs_leftovers_and_exits_0(drained):
    context = f"(seed={drained['seed']})"
    assert drained["result"].returncode == 0, drained["result"].stderr
    assert_earlier_run_delivered(drained["server"], drained["run"], context)
    assert read_json(drained["wal"] / "sink.json")["sink"] == drained["server"].url


def test_drain_retires_the_writers_it_delivered(drained):
    wal = drained["wal"]
    assert drained["result"].returncode == 0, drained["result"].stderr
    left = sorted(os.listdir(wal / "writers")) + sorted(os.listdir(wal / "adopted"))
    tombs = sorted(os.listdir(wal / "history"))
    check_known_bug(not left and len(tombs) == len(drained["run"].writers),
                    f"after drain: folders left {left}, tombstones {tombs}")


def test_drain_exits_nonzero_within_its_timeout_when_the_sink_is_down(tmp_path, seed):
    rng = random.Random(seed)
    wal = tmp_path / "wal"
    port = free_port()  # nothing listens there: connections are refused
    sink = f"http://127.0.0.1:{port}/ingest"
    run = leave_an_earlier_run(tmp_path, wal, sink, rng)
    env = cluster_env(wal, sink, sender=False)
    started = time.monotonic()
    result = run_cli(["drain", str(wal), "--sink", sink, "--timeout", "2"], env, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result
    assert elapsed < 10, f"drain --timeout 2 took {elapsed:.1f}s"
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("distwal drain: not everything was delivered") and "refused" in last_line, last_line
    on_disk = seqs_on_disk(wal)  # writers/ and adopted/: the failed drain may have adopted the dead one
    for tag, (writer_id, acks, _) in run.writers.items():
        assert set(acks) <= set(on_disk.get(writer_id, [])), f"{tag}: records lost by a failed drain"

    # The same sink comes up: a second drain delivers everything.
    with FaultServer(tmp_path / "sink.db", port=port) as server:
        assert run_cli(["drain", str(wal), "--sink", sink, "--timeout", "30"], env).returncode == 0
        assert_earlier_run_delivered(server, run, f"(seed={seed})")
