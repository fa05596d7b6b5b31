"""The scripts users copy: launchers/ and examples/.

The shell launchers parse (bash -n); launchers/mp_launch.py runs module:function in N
processes with RANK set and delivers every record they acknowledged (and returns the first
non-zero worker exit code); examples/mp_workers.py runs and reports delivered: True, and the
sink holds every item once. Replay with DISTWAL_TEST_SEED=<seed>.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.jobs import assert_acked_in_sink_once, by_writer, job_env, parse_acks, sink_rows

pytestmark = [pytest.mark.process, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parents[2]
SHELL_LAUNCHERS = sorted(REPO.glob("launchers/*.sh")) + [REPO / "launchers" / "slurm.sbatch"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("script", SHELL_LAUNCHERS, ids=lambda p: p.name)
def test_shell_launcher_parses(script, tmp_path):
    assert script.exists(), script
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, f"bash -n {script}: {result.stderr}"


def test_bash_n_would_catch_a_broken_launcher(tmp_path):
    """The check above can fail: the same launcher with an unclosed `if` does not parse."""
    broken = tmp_path / "broken.sh"
    broken.write_text((REPO / "launchers" / "torchrun.sh").read_text() + "\nif true; then\n")
    assert subprocess.run(["bash", "-n", str(broken)], capture_output=True, timeout=30, check=False).returncode != 0


WORKER_MODULE = '''
import json
import os

import distwal


def work(rank, world_size):
    opts = json.loads(os.environ["MP_TEST_OPTS"])
    w = distwal.init()  # mp_launch started it with the parent's settings (sync: DISTWAL_DURABILITY)
    assert w.config.durability == "sync"
    assert int(os.environ["RANK"]) == rank and int(os.environ["WORLD_SIZE"]) == world_size
    for i in range(opts["counts"][rank]):
        record = {"rank": rank, "env_rank": os.environ["RANK"], "i": i}
        seq = w.log(record)
        line = " ".join(["ack", w.id, str(seq), json.dumps(record, separators=(",", ":"), sort_keys=True)])
        os.write(1, (line + "\\n").encode())
    if rank == opts.get("fail_rank"):
        raise SystemExit(4)
'''


@pytest.mark.parametrize("fail", [False, True], ids=["ok", "rank1_exits_4"])
def test_mp_launch_runs_function_in_three_ranked_processes_and_delivers_every_record(tmp_path, wal_dir, seed, fail):
    rng = random.Random(seed)
    counts = [rng.randrange(1, 80) for _ in range(3)]
    opts = {"counts": counts, **({"fail_rank": 1} if fail else {})}
    context = f"(seed={seed}, counts={counts}, fail={fail})"
    print(context)
    (tmp_path / "mp_test_worker.py").write_text(WORKER_MODULE)
    env = job_env(MP_TEST_OPTS=json.dumps(opts), DISTWAL_DURABILITY="sync")
    result = subprocess.run(
        [sys.executable, str(REPO / "launchers" / "mp_launch.py"), "--procs", "3", "--dir", str(wal_dir),
         "mp_test_worker:work"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=75, stdin=subprocess.DEVNULL, check=False,
    )
    print(result.stdout[-2000:], result.stderr[-4000:])
    assert result.returncode == (4 if fail else 0), f"mp_launch exited {result.returncode} {context}\n{result.stderr}"

    acks = parse_acks([line for line in result.stdout.splitlines() if line.startswith("ack ")])
    assert len(acks) == 3, f"expected three writers, got {sorted(acks)} {context}"
    rows = sink_rows(wal_dir)
    assert_acked_in_sink_once(rows, acks, finished=set(acks), context=context)
    ranks = {}
    for writer, stored in by_writer(rows).items():
        seen = {(row.rank, row.data["rank"], int(row.data["env_rank"])) for row in stored.values()}
        assert len(seen) == 1, f"{writer}: (rank column, rank argument, RANK) vary: {seen} {context}"
        [(column, argument, env_rank)] = seen
        assert column == argument == env_rank, f"{writer}: rank column {column}, argument {argument}, RANK {env_rank}"
        ranks[writer] = column
    assert sorted(ranks.values()) == [0, 1, 2], f"one writer per rank: {ranks} {context}"
    assert sum(len(a) for a in acks.values()) == sum(counts), context


def test_mp_workers_example_runs_and_delivers(tmp_path, seed):
    rng = random.Random(seed)
    items = rng.randrange(20, 300)
    workers = rng.randrange(2, 4)
    context = f"(seed={seed}, {items} items, {workers} workers)"
    print(context)
    wal = tmp_path / "mp"
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "mp_workers.py"), "--dir", str(wal), "--workers", str(workers),
         "--items", str(items)],
        cwd=tmp_path, env=job_env(), capture_output=True, text=True, timeout=75, stdin=subprocess.DEVNULL, check=False,
    )
    print(result.stdout, result.stderr[-4000:])
    assert result.returncode == 0, f"{context}\n{result.stderr}"
    assert f"mp_workers: {items} items" in result.stdout and result.stdout.rstrip().endswith("delivered: True"), (
        f"{result.stdout!r} {context}"
    )
    rows = sink_rows(wal)
    results = sorted(row.data["item"] for row in rows if row.data.get("type") == "result")
    assert results == list(range(items)), f"items in the sink: {len(results)} of {items} {context}"
    summaries = [row.data for row in rows if row.data.get("type") == "summary"]
    assert len(summaries) == 1 and summaries[0]["items"] == items, f"{summaries} {context}"
    assert len({row.run for row in rows}) == 1, context
