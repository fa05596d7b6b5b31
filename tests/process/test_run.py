"""`distwal run -- CMD`: the sidecar around a whole job.

Every record a rank saw acknowledged (sync mode: log returned, then the rank printed
`ack <writer> <seq> <record>`) is in D/collected.db exactly once when `distwal run`
returns, whatever the job did: a multiprocess Pool, a torchrun job with a failing rank and
an elastic restart, a job interrupted by SIGINT/SIGTERM sent to the sidecar, a job whose
sidecar is SIGKILLed. `distwal run` exits with CMD's code (128+N for a signal death).
Sizes and choices are seeded; replay with DISTWAL_TEST_SEED=<seed>.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import sys
from pathlib import Path

import pytest
from helpers.cluster import run_cli, wait_until
from helpers.jobs import (
    assert_acked_in_sink_once,
    by_writer,
    job_env,
    run_job,
    sink_rows,
    write_script,
)
from helpers.procs import read_json

pytestmark = [pytest.mark.process, pytest.mark.timeout(90)]

PY = sys.executable
TORCHRUN = Path(sys.executable).parent / "torchrun"


def _no_delivery_complaint(job) -> None:
    assert "not everything was delivered" not in job.stderr, job.describe()


# -- a multiprocess Pool job; exit codes ---------------------------------------------------------

POOL_JOB = """
import distwal
from distwal.launch.mp import Pool

opts = json.loads(sys.argv[1])

def work(task):
    w = distwal.current()
    for i in range(opts["per_task"][task]):
        logged(w, {"task": task, "i": i})
    return w.id

if __name__ == "__main__":
    w = distwal.init(durability="sync")      # the Pool's workers inherit sync mode
    emit("ready", w.id, os.getpid(), os.environ["DISTWAL_RUN_ID"], os.environ.get("DISTWAL_PREFERRED_LEADER") or "unset")
    logged(w, {"parent": "before"})
    pool = Pool(3)
    workers = pool.map(work, range(len(opts["per_task"])), chunksize=1)
    pool.close()
    pool.join()
    logged(w, {"parent": "after", "workers": len(set(workers))})
    emit("exiting", opts["exit"])
    if opts["exit"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)   # no finish mark: the sidecar adopts this writer
    sys.exit(int(opts["exit"]))
"""

EXITS = {"0": 0, "3": 3, "kill": 128 + signal.SIGKILL}


@pytest.mark.parametrize("exit_mode", list(EXITS))
def test_run_pool_job_delivers_every_acked_record_once_and_returns_cmd_exit_code(tmp_path, wal_dir, seed, exit_mode):
    rng = random.Random(seed)
    per_task = [rng.randrange(1, 40) for _ in range(rng.randrange(4, 10))]
    context = f"(seed={seed}, exit={exit_mode}, per_task={per_task})"
    print(context)
    script = write_script(tmp_path, "pool_job.py", POOL_JOB)
    opts = json.dumps({"per_task": per_task, "exit": exit_mode})
    with run_job(tmp_path, wal_dir, [PY, str(script), opts]) as job:
        ready = job.wait_for("ready", timeout=30)
        code = job.wait(timeout=60)
        acks = job.acks()
    assert code == EXITS[exit_mode], f"distwal run exited {code}, CMD {exit_mode} {context}\n{job.describe()}"
    _no_delivery_complaint(job)
    parent, run_id, preferred = ready.parts[1], ready.parts[3], ready.parts[4]
    assert preferred.count(":") == 3 and preferred.split(":")[2] == str(job.pid), (
        f"DISTWAL_PREFERRED_LEADER {preferred!r} does not name the sidecar pid {job.pid} {context}"
    )
    assert len(acks) >= 2, f"the Pool workers acknowledged nothing: {sorted(acks)} {context}"
    assert sum(len(a) for w, a in acks.items() if w != parent) == sum(per_task), context

    rows = sink_rows(wal_dir)
    # Pool workers leave through their finalizers (finish mark); the parent finishes at exit,
    # except when it is SIGKILLed.
    finished = set(acks) - ({parent} if exit_mode == "kill" else set())
    assert_acked_in_sink_once(rows, acks, finished=finished, context=context)
    assert {row.run for row in rows} == {run_id}, f"run ids in the sink {({r.run for r in rows})} {context}"
    lead = read_json(wal_dir / "leader.json")
    assert lead is not None and lead["kind"] == "sidecar" and lead["epoch"] == 1, (
        f"the sidecar should have led alone: {lead} {context}"
    )


# -- torchrun with a failing rank and an elastic restart -------------------------------------------

TORCH_RANK = """
import distwal

opts = json.loads(sys.argv[1])
rank = int(os.environ["RANK"])
attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
w = distwal.init(durability="sync")
emit("ready", w.id, rank, attempt, os.getpid(), os.environ["DISTWAL_RUN_ID"])
tag = f"r{rank}a{attempt}"
count = opts["counts"][attempt][rank]
for i in range(count):
    logged(w, {"t": tag, "i": i})
if attempt == 0:
    open(os.path.join(opts["sync"], f"logged-{rank}"), "w").close()
    if rank == opts["fail_rank"]:
        # fail once every rank has logged its share: the others are mid-logging when torchrun stops them
        deadline = time.monotonic() + 30
        while len(os.listdir(opts["sync"])) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        emit("failing", rank, opts["fail_how"])
        if opts["fail_how"] == "exit":
            sys.exit(3)
        if opts["fail_how"] == "os_exit":
            os._exit(3)                        # no atexit, no finish mark
        raise RuntimeError("rank failed on purpose")
    i = count
    while True:                                # until torchrun's SIGTERM
        logged(w, {"t": tag, "i": i})
        i += 1
        time.sleep(0.002)
emit("done", rank, attempt)
"""


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed in this venv")
def test_run_torchrun_restart_delivers_every_attempt_once_under_one_run_id(tmp_path, wal_dir, seed):
    rng = random.Random(seed)
    fail_rank = rng.randrange(3)
    fail_how = rng.choice(["exit", "os_exit", "raise"])
    counts = [[rng.randrange(1, 60) for _ in range(3)] for _ in range(2)]
    context = f"(seed={seed}, rank {fail_rank} fails by {fail_how} on attempt 0, counts={counts})"
    print(context)
    sync = tmp_path / "sync"
    sync.mkdir()
    script = write_script(tmp_path, "torch_rank.py", TORCH_RANK)
    opts = json.dumps({"counts": counts, "fail_rank": fail_rank, "fail_how": fail_how, "sync": str(sync)})
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "3", "--max-restarts", "1", str(script), opts]
    with run_job(tmp_path, wal_dir, command, env=job_env(OMP_NUM_THREADS="1")) as job:
        code = job.wait(timeout=75)
        acks = job.acks()
        ready = [line.parts[1:] for line in job.lines_with("ready")]
    assert code == 0, f"torchrun's exit code after a successful restart is 0, distwal run gave {code} {context}"
    _no_delivery_complaint(job)
    assert job.lines_with("failing"), f"rank {fail_rank} never failed {context}\n{job.describe()}"
    writers = {w: (int(rank), int(attempt)) for w, rank, attempt, _, _ in ready}
    assert sorted(writers.values()) == [(r, a) for r in range(3) for a in range(2)], (
        f"expected one writer per rank and attempt, got {sorted(writers.values())} {context}"
    )
    run_ids = {run for *_, run in ready}
    assert len(run_ids) == 1, f"the ranks of the two attempts saw different run ids {run_ids} {context}"

    rows = sink_rows(wal_dir)
    # Attempt 1 ends normally; in attempt 0 the failing rank finished (sys.exit, raise) or
    # not (os._exit), and the others died of torchrun's SIGTERM in the middle of logging.
    finished = {w for w, (rank, attempt) in writers.items()
                if attempt == 1 or (rank == fail_rank and fail_how != "os_exit")}
    assert_acked_in_sink_once(rows, acks, finished=finished, context=context)
    for writer, stored in by_writer(rows).items():
        rank, attempt = writers[writer]
        columns = {(row.rank, row.local_rank, row.attempt, row.run) for row in stored.values()}
        assert columns == {(rank, rank, attempt, *run_ids)}, (
            f"{writer} (rank {rank}, attempt {attempt}): sink columns (rank, local_rank, attempt, run) {columns} {context}"
        )
    stopped = [w for w, (rank, attempt) in writers.items() if attempt == 0 and rank != fail_rank]
    for writer in stopped:
        rank = writers[writer][0]
        assert max(acks[writer]) >= counts[0][rank], f"rank {rank} of attempt 0 did not log its share {context}"


# -- signals sent to the sidecar reach CMD's process group --------------------------------------

SIGNAL_JOB = """
import subprocess
import distwal

got = []
for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, lambda n, f: got.append(n))
role = sys.argv[1]
w = distwal.init(durability="sync")
if role == "cmd":   # CMD starts one rank in its own process group, as a launcher would
    rank = subprocess.Popen([sys.executable, __file__, "rank"], env={**os.environ, "RANK": "1"})
emit("ready", role, w.id, os.getpid(), os.getpgid(0))
i = 0
while not got:
    logged(w, {"role": role, "i": i})
    i += 1
    time.sleep(0.002)
name = signal.Signals(got[0]).name
logged(w, {"role": role, "got": name})
emit("got", role, name)
code = 40 + got[0]
if role == "cmd":
    rank_code = rank.wait()
    emit("rank_exit", rank_code)
    code = code if rank_code == 40 + got[0] else 99
w.finish()
sys.exit(code)
"""


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_signal_to_sidecar_reaches_cmd_process_group_and_logged_records_are_delivered(
    tmp_path, wal_dir, seed, signame
):
    rng = random.Random(seed)
    want = rng.randrange(1, 200)
    signum = signal.Signals[signame]
    context = f"(seed={seed}, {signame} after >= {want} acks per process)"
    print(context)
    script = write_script(tmp_path, "signal_job.py", SIGNAL_JOB)
    with run_job(tmp_path, wal_dir, [PY, str(script), "cmd"]) as job:
        job.wait_for(lambda: len(job.lines_with("ready")) == 2, timeout=30)
        ready = {line.parts[1]: line.parts[2:] for line in job.lines_with("ready")}
        assert ready["cmd"][2] == ready["rank"][2] == ready["cmd"][1] != str(os.getpgid(job.pid)), (
            f"CMD should lead its own process group, with the rank in it: {ready} {context}"
        )

        def enough() -> bool:
            acks = job.acks()
            return len(acks) == 2 and min(len(a) for a in acks.values()) >= want

        job.wait_for(enough, timeout=30)
        job.kill(signum)  # to the sidecar's pid only
        job.wait_for(lambda: len(job.lines_with("got")) == 2, timeout=15)  # CMD and its rank both got it
        code = job.wait(timeout=60)
        acks = job.acks()
    got = {line.parts[1]: line.parts[2] for line in job.lines_with("got")}
    assert got == {"cmd": signame, "rank": signame}, (
        f"CMD and its rank should each have received {signame}, got {got} {context}\n{job.describe()}"
    )
    assert job.lines_with("rank_exit")[0].parts[1] == str(40 + signum), context
    assert code == 40 + signum, f"distwal run exited {code}, CMD exited {40 + signum} {context}"
    _no_delivery_complaint(job)
    rows = sink_rows(wal_dir)
    assert_acked_in_sink_once(rows, acks, finished=set(acks), context=context)
    last = {row.data.get("role"): row.data for row in rows if "got" in row.data}
    assert last == {"cmd": {"role": "cmd", "got": signame}, "rank": {"role": "rank", "got": signame}}, context


# -- the sidecar SIGKILLed mid-job: a rank takes over -------------------------------------------------

KILL_JOB = """
import subprocess
import distwal

opts = json.loads(sys.argv[1])
role = sys.argv[2]
if role == "cmd":
    ranks = [subprocess.Popen([sys.executable, __file__, sys.argv[1], str(r)], env={**os.environ, "RANK": str(r)})
             for r in range(2)]
    emit("cmd", os.getpid())
    emit("cmd_done", [p.wait() for p in ranks])
    sys.exit(0)
w = distwal.init(durability="sync")
emit("ready", role, w.id, os.getpid())
i = 0
while not os.path.exists(opts["stop"]):
    logged(w, {"r": role, "i": i})
    i += 1
    time.sleep(opts["pace"])
emit("stopping", role, i)
ok = w.flush(timeout=30, delivered=True)
emit("flushed", role, ok)
emit("finished", role, w.finish(timeout=30))
"""


def test_sidecar_sigkilled_mid_job_a_rank_takes_over_and_nothing_acked_is_lost(tmp_path, wal_dir, seed):
    rng = random.Random(seed)
    before = rng.randrange(5, 150)
    after = rng.randrange(5, 150)
    pace = rng.uniform(0.002, 0.01)
    context = f"(seed={seed}, kill after {before} acks per rank, then {after} more, pace {pace:.4f}s)"
    print(context)
    stop = tmp_path / "stop"
    script = write_script(tmp_path, "kill_job.py", KILL_JOB)
    env = job_env(DISTWAL_LEASE_S="2")
    opts = json.dumps({"stop": str(stop), "pace": pace})
    with run_job(tmp_path, wal_dir, [PY, str(script), opts, "cmd"], env=env) as job:
        job.wait_for(lambda: len(job.lines_with("ready")) == 2, timeout=30)
        ranks = {line.parts[2]: line.parts[1] for line in job.lines_with("ready")}
        job.wait_for(lambda: len(job.acks()) == 2 and min(len(a) for a in job.acks().values()) >= before, timeout=30)
        lead = read_json(wal_dir / "leader.json")
        assert lead["kind"] == "sidecar" and lead["pid"] == job.pid, f"the sidecar should lead: {lead} {context}"
        job.kill(signal.SIGKILL)
        assert job.popen.wait(10) == -signal.SIGKILL  # reaped at once, as a shell or srun would
        counts_at_kill = {w: max(a) for w, a in job.acks().items()}

        def rank_leads():
            now = read_json(wal_dir / "leader.json") or {}
            return now if now.get("epoch", 0) > lead["epoch"] and not now.get("released") else None

        new = wait_until(rank_leads, 30, "a rank to take over leadership",
                         lambda: f"{read_json(wal_dir / 'leader.json')} {context}")
        assert new["kind"] == "rank" and new["owner"] in ranks, f"new leader {new}, ranks {ranks} {context}"

        def continued_and_shipped() -> bool:
            acks = job.acks()
            if any(max(acks[w]) < counts_at_kill[w] + after for w in ranks):
                return False
            try:
                stored = by_writer(sink_rows(wal_dir))
            except sqlite3.OperationalError:
                # The SIGKILLed sidecar can leave a hot journal that a read-only reader may not
                # roll back ("attempt to write a readonly database"): the next leader's first
                # write rolls it back; until then, poll again.
                return False
            return all(max(stored.get(w, {0: None})) > counts_at_kill[w] for w in ranks)

        wait_until(continued_and_shipped, 30, "the ranks to keep logging and the new leader to ship what they logged",
                   lambda: job.describe())
        stop.touch()
        job.wait_for(lambda: job.lines_with("cmd_done"), timeout=60)
        job.wait(timeout=30)  # stdout EOF: CMD and both ranks are gone
        acks = job.acks()
    assert job.lines_with("cmd_done")[0].text == "cmd_done [0, 0]", job.describe()
    flushed = {line.parts[1]: line.parts[2] for line in job.lines_with("flushed")}
    assert flushed == {"0": "True", "1": "True"}, f"flush(delivered=True) under the rank leader: {flushed} {context}"
    drained = run_cli(["drain", str(wal_dir), "--timeout", "30"], env=job_env())
    assert drained.returncode == 0, f"distwal drain failed {context}"
    assert_acked_in_sink_once(sink_rows(wal_dir), acks, finished=set(acks), context=context)


def test_run_returns_127_when_cmd_cannot_start(tmp_path, wal_dir):
    result = run_cli(["run", "--dir", str(wal_dir), "--", str(tmp_path / "no-such-program")], env=job_env(), timeout=60)
    assert result.returncode == 127, result
    assert "cannot start" in result.stderr, result.stderr
