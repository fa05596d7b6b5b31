"""Real ranks shipping to a real `mlflow server`: leader SIGKILLs, a server restart, a refused
metric key, and the MLflow tee in four processes with one SIGKILLed.

Ranks log in sync mode and report every `log` that returned ("ack"), so the parent knows
what was acknowledged; afterwards MLflow's REST API must hold each acknowledged record as a
metric point exactly once (by step and value) in the one active run of its writer.
Replay with DISTWAL_TEST_SEED=<seed>.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from helpers.cluster import (
    Ranks,
    cluster_env,
    drain_ok,
    kill_senders,
    read_json,
    run_cli,
    sender_pids,
    wait_until,
)
from helpers.mlflow_server import MlflowServer, params, tags, timeout_for
from helpers.procs import Child, spawn

pytestmark = [pytest.mark.process]

# A loaded MLflow server takes up to seconds per request: a lease well above that, so a
# leader is deposed by our SIGKILLs, not by a slow reply.
LEASE = "10"
ROUNDS = int(os.environ.get("DISTWAL_TEST_MLFLOW_ROUNDS", "2"))  # leader kills in the kill test; CI: 2

RANK = r'''
import distwal

opts = json.loads(sys.argv[1])
w = distwal.init(durability="sync")
emit("ready", w.id, os.getpid())
k, stop, bad = opts["k"], opts.get("stop"), set(opts.get("bad", []))
count, pace = opts.get("count"), opts.get("pace", 0.0)
i = 0
while (count is None or i < count) and not (stop and os.path.exists(stop)):
    record = {"step": i, "loss": i + k / 10, "lr": 0.001, "phase": "train"}
    if i in bad:
        record["bad*key"] = 1.0      # a metric name MLflow refuses
    seq = w.log(record)
    emit("ack", seq, i)              # log returned: durable
    i += 1
    if pace:
        time.sleep(pace)
emit("logged", i)
for timeout in opts.get("flush_delivered", []):
    emit("flushed", w.flush(timeout=timeout, delivered=True))
emit("finished", w.finish(timeout=opts.get("finish_timeout", 30.0)))
'''

TEE = r'''
import distwal.integrations.mlflow as mlflow   # the one changed import

opts = json.loads(sys.argv[1])
k, stop, pace = opts["k"], opts["stop"], opts["pace"]
mlflow.log_params({"k": k, "optimizer": "adamw"})
mlflow.set_tag("role", f"rank{k}")
import distwal
emit("ready", distwal._api.current().id, os.getpid())
i = 0
while not os.path.exists(stop):
    mlflow.log_metric("loss", i + k / 10, step=i, synchronous=False)
    emit("ack", i)
    i += 1
    time.sleep(pace)
emit("finished", distwal.finish(timeout=30.0))
'''


@dataclass
class Rank:
    k: int
    child: Child
    id: str = ""
    killed: bool = False

    def acked_steps(self) -> list[int]:
        return [int(line.parts[-1]) for line in self.child.lines_with("ack")]


def mlflow_env(wal: Path, url: str, **extra: str) -> dict[str, str]:
    """A rank's environment; one distwal run id for all ranks, as `distwal run` or torchrun export."""
    return cluster_env(wal, url, DISTWAL_LEASE_S=LEASE, DISTWAL_RUN_ID=f"job-{uuid.uuid4().hex[:8]}", **extra)


def sink_url(server: MlflowServer, experiment: str) -> str:
    return f"mlflow+{server.url}?experiment={experiment}"


@pytest.fixture
def experiment() -> str:
    return f"exp-{uuid.uuid4().hex[:10]}"


def spawn_rank(stack: ExitStack, tmp_path: Path, env: dict[str, str], script: str, k: int, **opts: Any) -> Rank:
    return Rank(k, stack.enter_context(spawn(tmp_path, script, json.dumps({"k": k, **opts}), env=env, name=f"rank{k}.py")))


def ready(rank: Rank) -> str:
    """Its writer id, once it announced it."""
    return rank.child.wait_for("ready", timeout=30).parts[1]


def start(stack: ExitStack, tmp_path: Path, env: dict[str, str], script: str, k: int, **opts: Any) -> Rank:
    rank = spawn_rank(stack, tmp_path, env, script, k, **opts)
    rank.id = ready(rank)
    return rank


def assert_each_acked_point_once(server: MlflowServer, experiment: str, ranks: list[Rank], context: str,
                                 skip: frozenset[int] = frozenset()) -> int:
    """Every rank's writer has one active run; its `loss` points are its acked steps, each once
    (a killed rank may have one more: the log() call in flight when it died). Returns the count."""
    runs = server.writer_runs(experiment)
    total = 0
    for rank in ranks:
        found = runs.get(rank.id, [])
        assert len(found) == 1, f"rank {rank.k} ({rank.id}): {len(found)} active runs {context}"
        history = server.history(found[0]["info"]["run_id"], "loss")
        steps = [step for step, _, _ in history]
        assert len(steps) == len(set(steps)), f"rank {rank.k}: a point stored twice {sorted(steps)[:20]} {context}"
        for step, value, _ in history:
            assert value == pytest.approx(step + rank.k / 10), f"rank {rank.k} step {step}: {value} {context}"
        acked = set(rank.acked_steps()) - skip
        missing = sorted(acked - set(steps))
        assert not missing, f"rank {rank.k}: {len(missing)} acked steps missing, first {missing[:10]} {context}"
        extra = set(steps) - acked
        allowed = {max(acked, default=-1) + 1} if rank.killed else set()
        assert extra <= allowed, f"rank {rank.k}: points never acked {sorted(extra)[:10]} {context}"
        total += len(acked)
    return total


# -- the leader SIGKILLed at random points ---------------------------------------------------------


@pytest.mark.timeout(timeout_for(240 + 60 * ROUNDS))
def test_leader_sigkilled_at_random_points_every_acked_record_is_one_point(tmp_path, seed, mlflow_server, experiment):
    rng = random.Random(seed)
    modes = [rng.choice(("rank", "sender")) for _ in range(ROUNDS)]
    context = f"(seed={seed}, modes={modes})"
    wal, stop = tmp_path / "wal", tmp_path / "stop"
    url = sink_url(mlflow_server, experiment)
    env = mlflow_env(wal, url)
    with ExitStack() as stack:
        ranks = Ranks(lambda k: spawn_rank(stack, tmp_path, env, RANK, k, stop=str(stop), pace=rng.uniform(0.003, 0.01)),
                      ready)  # a killed rank is replaced by a new writer, as torchrun restarts it
        ranks.add(3)
        last_epoch = 0
        for round_, mode in enumerate(modes):
            def new_leader(last_epoch: int = last_epoch) -> Any:
                lease = read_json(wal / "leader.json")
                ok = lease and lease["epoch"] > last_epoch and not lease.get("released")
                return lease if ok else None

            lease = wait_until(new_leader, 60, f"a leader after epoch {last_epoch} {context}")
            epoch, pid = int(lease["epoch"]), int(lease["pid"])
            leader = ranks.leader(pid, context)
            wait_until(lambda pid=pid: sender_pids(pid), 60, f"the sender of epoch {epoch} running {context}",
                       lambda: f"sender.json {read_json(wal / 'sender.json')}")
            if rng.random() < 0.5:  # a point after it acknowledged some records (else: while it finds runs)
                target = rng.randint(1, 1500)

                def acked_enough(epoch: int = epoch, target: int = target) -> bool:
                    health = read_json(wal / "sender.json") or {}
                    return health.get("epoch") == epoch and health.get("acked_records", 0) >= target

                wait_until(acked_enough, 60, f"the leader of epoch {epoch} acking {target} records {context}",
                           lambda: f"sender.json {read_json(wal / 'sender.json')}")
            time.sleep(rng.uniform(0.0, 3.0))  # the random point itself, not a wait for a condition
            health = read_json(wal / "sender.json") or {}
            acked_before = health.get("acked_records", 0) if health.get("epoch") == epoch else 0
            if mode == "rank":
                ranks.kill(leader)
            else:
                kill_senders(pid, required=False)
            print(f"round {round_}: {mode} of epoch {epoch} killed after it acked {acked_before} records")
            last_epoch = epoch
        ranks.finish(stop, 90)
        drain_ok(wal, url, env, context, timeout=150, cli_timeout=180)
    total = assert_each_acked_point_once(mlflow_server, experiment, ranks, context)
    parents = [r for r in mlflow_server.runs(experiment) if "distwal.run" in tags(r)]
    assert len(parents) == 1, f"{len(parents)} parent runs {context}"
    print(f"{total} acked records, each one point in MLflow; {len(ranks)} writers, "
          f"{sum(r.killed for r in ranks)} ranks killed {context}")


# -- the server stopped and restarted ------------------------------------------------------------


@pytest.mark.timeout(timeout_for(330))
def test_mlflow_server_stopped_and_restarted_mid_run_loses_and_doubles_nothing(tmp_path, seed, mlflow_server,
                                                                               experiment):
    """The server goes away (SIGTERM or SIGKILL) while 2 ranks log, and comes back on the same
    port and store: the sender retries (SinkUnavailable) and every acked record arrives once."""
    rng = random.Random(seed)
    wal, stop = tmp_path / "wal", tmp_path / "stop"
    url = sink_url(mlflow_server, experiment)
    env = mlflow_env(wal, url)
    with ExitStack() as stack:
        ranks = [start(stack, tmp_path, env, RANK, k, stop=str(stop), pace=0.02, flush_delivered=[200])
                 for k in range(2)]
        wait_until(lambda: (read_json(wal / "sender.json") or {}).get("acked_records", 0) > 50, 60,
                   "records flowing into MLflow")
        mlflow_server.stop(crash=rng.random() < 0.5)  # SIGKILL or SIGTERM, by the seed
        down = time.monotonic()
        wait_until(lambda: (read_json(wal / "sender.json") or {}).get("state") == "retrying", 30,
                   "the sender noticing the server is gone")
        time.sleep(rng.uniform(0.5, 2.0))  # the outage itself (the ranks keep logging)
        mlflow_server.start()
        print(f"server down for {time.monotonic() - down:.1f}s (seed={seed})")
        stop.touch()
        for rank in ranks:
            assert rank.child.wait(240) == 0, rank.child.describe()
            assert rank.child.lines_with("flushed")[0].parts[1] == "True", rank.child.describe()
    total = assert_each_acked_point_once(mlflow_server, experiment, ranks, f"(seed={seed})")
    print(f"{total} acked records delivered once across the restart")


# -- a record MLflow refuses ---------------------------------------------------------------------


@pytest.mark.timeout(timeout_for(120))
def test_a_metric_key_mlflow_refuses_is_a_dead_letter_and_blocks_nothing(tmp_path, seed, mlflow_server, experiment):
    bad = random.Random(seed).randrange(20, 180)
    wal = tmp_path / "wal"
    env = mlflow_env(wal, sink_url(mlflow_server, experiment))
    with ExitStack() as stack:
        rank = start(stack, tmp_path, env, RANK, 0, count=200, bad=[bad], flush_delivered=[60])
        assert rank.child.wait(90) == 0, rank.child.describe()
        # flush(delivered=True) says False: one of its records became a dead letter.
        assert rank.child.lines_with("flushed")[0].parts[1] == "False", rank.child.describe()
    assert_each_acked_point_once(mlflow_server, experiment, [rank], f"(seed={seed}, bad={bad})", skip=frozenset({bad}))
    letters = [json.loads(line) for p in (wal / "deadletters").iterdir() for line in p.read_text().splitlines()]
    assert [(d["envelope"]["seq"], d["envelope"]["data"]["step"]) for d in letters] == [(bad + 1, bad)], letters
    assert "bad*key" in letters[0]["reason"]


# -- the tee -----------------------------------------------------------------------------------


@pytest.mark.timeout(timeout_for(180))
def test_the_tee_in_four_processes_one_sigkilled_its_acked_metrics_arrive(tmp_path, seed, mlflow_server, experiment):
    rng = random.Random(seed)
    victim_k = rng.randrange(4)
    wal, stop = tmp_path / "wal", tmp_path / "stop"
    url = sink_url(mlflow_server, experiment)
    # sync: a tee call that returned is on disk (the default, interval, may lose the last 20 ms)
    env = mlflow_env(wal, url, DISTWAL_DURABILITY="sync")
    with ExitStack() as stack:
        ranks = [start(stack, tmp_path, env, TEE, k, stop=str(stop), pace=rng.uniform(0.002, 0.01)) for k in range(4)]
        victim = ranks[victim_k]
        want = rng.randint(20, 300)
        victim.child.wait_for(lambda: len(victim.child.lines_with("ack")) >= want, timeout=60)
        victim.child.kill(signal.SIGKILL)
        assert victim.child.wait() == -signal.SIGKILL
        victim.killed = True
        time.sleep(rng.uniform(0.1, 1.0))  # the others go on logging for a while
        stop.touch()
        for rank in ranks:
            if not rank.killed:
                assert rank.child.wait(90) == 0, rank.child.describe()
        drained = run_cli(["drain", str(wal), "--sink", url, "--timeout", "150"], env, timeout=180)
        assert drained.returncode == 0
    context = f"(seed={seed}, killed rank {victim_k} after {len(victim.acked_steps())} acked calls)"
    total = assert_each_acked_point_once(mlflow_server, experiment, ranks, context)
    for rank in ranks:
        (run,) = mlflow_server.writer_runs(experiment)[rank.id]
        assert params(run) == {"k": str(rank.k), "optimizer": "adamw"}, context
        assert tags(run)["role"] == f"rank{rank.k}", context
    print(f"{total} acked tee calls, each one point in MLflow {context}")


@pytest.fixture(autouse=True)
def _no_stray_server_state(mlflow_server: MlflowServer) -> Iterator[None]:
    """A test that stopped the shared server must leave it running for the next one."""
    yield
    if mlflow_server.proc is None:
        mlflow_server.start()
