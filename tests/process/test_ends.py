"""How each writer ended, with real processes: status (JSON and table) names every end and
the right first failure.

- torchrun: one rank raises, torchrun stops the others with SIGTERM: the raising rank is
  the first failure (exception, type and first line), the others ended by SIGTERM.
- One process per way to end, one after the other in a seeded order: finish(), a normal
  exit, sys.exit(3), an uncaught exception, a thread's uncaught exception, SIGTERM, SIGINT,
  SIGKILL (lost, with its last sign of life). The ends survive delivery (tombstones).
- Pool workers ended by the pool: finished (close/join) or SIGTERM (terminate).
- The view: a real 80-column terminal (tmux capture-pane), --watch into a pipe (plain
  frames, one JSON document per line with --json), --run.

Replay with DISTWAL_TEST_SEED=<seed>.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers.cluster import run_cli, wait_until
from helpers.jobs import job_env, run_job, run_python, write_script

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

PY = sys.executable
TORCHRUN = Path(sys.executable).parent / "torchrun"


def status_json(wal_dir: Path, *args: str) -> dict[str, Any]:
    result = run_cli(["status", "--json", *args, str(wal_dir)], env=job_env())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def rows_by_writer(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every writer row, on disk or in history (a writer is in one of them)."""
    rows = {row["writer"]: row for row in report["writers"]}
    for row in report["history"]:
        assert row["writer"] not in rows, f"{row['writer']} both on disk and in history"
        rows[row["writer"]] = row
    return rows


def table_line(text: str, writer: str) -> str:
    suffix = writer.rsplit("-", 1)[-1]
    lines = [line for line in text.splitlines() if re.search(rf"\b{suffix}\b", line)]
    assert len(lines) == 1, f"expected one table line for {writer}, got {lines}\n{text}"
    return lines[0]


def clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


# -- torchrun: one rank raises, the others are torn down --------------------------------------------

TORCH_RANK = """
import distwal

opts = json.loads(sys.argv[1])
rank = int(os.environ["RANK"])
w = distwal.init(durability="sync")
emit("ready", w.id, rank, os.getpid())
for i in range(opts["count"]):
    logged(w, {"rank": rank, "i": i})
open(os.path.join(opts["sync"], f"logged-{rank}"), "w").close()
if rank == opts["fail_rank"]:
    deadline = time.monotonic() + 30          # fail once every rank is running
    while len(os.listdir(opts["sync"])) < opts["ranks"] and time.monotonic() < deadline:
        time.sleep(0.01)
    emit("failing", rank, time.time())
    raise RuntimeError(f"boom at {opts['count']}\\nsecond line, not shown")
i = opts["count"]
while True:                                  # until torchrun's SIGTERM
    logged(w, {"rank": rank, "i": i})
    i += 1
    time.sleep(0.002)
"""


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed in this venv")
def test_torchrun_rank_that_raises_is_the_first_failure_and_the_others_ended_by_sigterm(tmp_path, wal_dir, seed):
    rng = random.Random(seed)
    ranks = 3
    fail_rank = rng.randrange(ranks)
    count = rng.randrange(5, 60)
    context = f"(seed={seed}, rank {fail_rank} raises after {count} records)"
    print(context)
    sync = tmp_path / "sync"
    sync.mkdir()
    script = write_script(tmp_path, "torch_rank.py", TORCH_RANK)
    opts = json.dumps({"count": count, "fail_rank": fail_rank, "sync": str(sync), "ranks": ranks})
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", str(ranks), "--max-restarts", "0", str(script), opts]
    with run_job(tmp_path, wal_dir, command, env=job_env(OMP_NUM_THREADS="1")) as job:
        code = job.wait(timeout=100)
        ready = {int(line.parts[2]): line.parts[1] for line in job.lines_with("ready")}
        failing = job.lines_with("failing")
    assert code != 0, f"torchrun reports the failed rank: distwal run exited {code} {context}\n{job.describe()}"
    assert sorted(ready) == list(range(ranks)) and failing, f"{context}\n{job.describe()}"
    failed_at = float(failing[0].parts[2])

    report = status_json(wal_dir)
    rows = rows_by_writer(report)
    assert set(rows) == set(ready.values()), f"{sorted(rows)} vs {ready} {context}"
    for rank, writer in ready.items():
        end = rows[writer]["end"]
        assert end is not None, f"rank {rank} has no end {rows[writer]} {context}"
        if rank == fail_rank:
            assert (end["reason"], end["detail"], end["code"], end["signal"]) == (
                "exception", f"RuntimeError: boom at {count}", 1, None), f"rank {rank}: {end} {context}"
            assert failed_at <= end["ts"] <= failed_at + 10, f"rank {rank}: {end}, raised at {failed_at} {context}"
        else:
            assert (end["reason"], end["signal"], end["detail"]) == ("signal", "SIGTERM", "SIGTERM"), (
                f"rank {rank} was stopped by torchrun: {end} {context}")
            assert end["ts"] >= failed_at, f"rank {rank} ended before the failure: {end} {context}"
    first = report["first_failure"]
    assert first is not None and (first["writer"], first["rank"], first["reason"]) == (
        ready[fail_rank], fail_rank, "exception"), f"first_failure {first}, rank {fail_rank} raised {context}"
    assert first["detail"] == f"RuntimeError: boom at {count}" and first["host"] == rows[ready[fail_rank]]["host"]

    table = run_cli(["status", str(wal_dir)], env=job_env(COLUMNS="80")).stdout
    headline = f"rank {fail_rank} failed first: RuntimeError: boom at {count}, {clock(first['ts'])}"
    assert headline in table.splitlines(), f"{headline!r} not in\n{table} {context}"
    for rank, writer in ready.items():
        line = table_line(table, writer)
        word = "RuntimeError: boom" if rank == fail_rank else "SIGTERM"
        assert line.split()[0] == str(rank) and word in line, f"rank {rank}: {line!r} {context}"
    assert all(len(line) <= 80 for line in table.splitlines()), table


# -- every way a single process can end -------------------------------------------------------------

ENDER = """
import distwal

how = sys.argv[1]
w = distwal.init(durability="sync")
emit("ready", w.id, os.getpid())
for i in range(3):
    logged(w, {"how": how, "i": i})
if how == "finish":
    w.finish()
elif how == "exit3":
    sys.exit(3)
elif how == "raise":
    raise ValueError(f"bad value {how}\\nnot this line")
elif how == "thread":
    t = threading.Thread(target=lambda: 1 / 0, name="loader")
    t.start()
    t.join()
elif how in ("sigterm", "sigint", "sigkill"):
    emit("waiting", time.time())
    while True:
        time.sleep(0.01)
"""

# how -> (reason, detail, code, signal, the process's exit code)
ENDS = {
    "finish": ("finished", "finish()", None, None, 0),
    "normal": ("finished", "exit code 0", 0, None, 0),
    "exit3": ("exit", "exit code 3", 3, None, 3),
    "raise": ("exception", "ValueError: bad value raise", 1, None, 1),
    "thread": ("exception", "ZeroDivisionError: division by zero (in thread loader)", 0, None, 0),
    "sigterm": ("signal", "SIGTERM", None, "SIGTERM", -signal.SIGTERM),
    "sigint": ("signal", "SIGINT", None, "SIGINT", -signal.SIGINT),
    "sigkill": ("lost", None, None, None, -signal.SIGKILL),
}
WORDS = {"finish": "finished", "normal": "finished", "exit3": "exit 3", "raise": "ValueError: bad value",
         "thread": "ZeroDivisionError", "sigterm": "SIGTERM", "sigint": "SIGINT", "sigkill": "lost"}


def run_enders(tmp_path: Path, wal_dir: Path, order: list[str], **env: str) -> dict[str, dict[str, Any]]:
    """Run one ENDER per way, one after the other (so their ends are in this order)."""
    script = write_script(tmp_path, "ender.py", ENDER)
    found = {}
    for rank, how in enumerate(order):
        child_env = job_env(wal_dir, DISTWAL_DISABLE_SENDER="1", RANK=str(rank), **env)
        with run_python(tmp_path, script, [how], env=child_env) as child:
            ready = child.wait_for("ready", timeout=30)
            started = time.time()
            killed_at = None
            if how.startswith("sig"):
                child.wait_for("waiting", timeout=30)
                killed_at = child.kill(getattr(signal, how.upper()))
            code = child.wait(timeout=30)
            found[how] = {"writer": ready.parts[1], "rank": rank, "code": code, "started": started,
                          "killed_at": killed_at, "ended": time.time(), "describe": child.describe()}
    return found


def assert_end(how: str, end: dict[str, Any] | None, proc: dict[str, Any], context: str) -> None:
    reason, detail, code, sig, _ = ENDS[how]
    assert end is not None, f"{how}: no end {context}"
    assert (end["reason"], end["code"], end["signal"]) == (reason, code, sig), f"{how}: {end} {context}"
    if detail is not None:
        assert end["detail"] == detail, f"{how}: {end} {context}"
    # a lost writer's ts is its last sign of life: a record or heartbeat before the SIGKILL
    latest = proc["killed_at"] if how == "sigkill" else proc["ended"]
    assert end["ts"] is not None and proc["started"] - 5 <= end["ts"] <= latest, f"{how}: {end} {proc} {context}"


def test_each_way_a_process_ends_is_named_and_the_earliest_failure_comes_first(tmp_path, wal_dir, seed):
    order = list(ENDS)
    random.Random(seed).shuffle(order)
    context = f"(seed={seed}, order {order})"
    print(context)
    procs = run_enders(tmp_path, wal_dir, order)
    for how, proc in procs.items():
        assert proc["code"] == ENDS[how][4], f"{how}: exit code {proc['code']} {context}\n{proc['describe']}"

    before = status_json(wal_dir)
    rows = rows_by_writer(before)
    for how, proc in procs.items():
        row = rows[proc["writer"]]
        assert row["state"] == ("dead" if how == "sigkill" else "finished"), f"{how}: {row} {context}"
        assert_end(how, row["end"], proc, context)
    first_how = next(how for how in order if ENDS[how][0] != "finished")
    first = before["first_failure"]
    assert first is not None and first["writer"] == procs[first_how]["writer"], (
        f"first_failure {first}, expected {first_how} {context}")
    assert first["rank"] == order.index(first_how) and first["reason"] == ENDS[first_how][0], f"{first} {context}"

    table = run_cli(["status", str(wal_dir)], env=job_env(COLUMNS="80")).stdout
    assert f"rank {order.index(first_how)} failed first: " in table, f"{table} {context}"
    for how, proc in procs.items():
        line = table_line(table, proc["writer"])
        assert line.split()[0] == str(proc["rank"]) and WORDS[how] in line, f"{how}: {line!r} {context}\n{table}"

    # delivered and retired: the ends stay in history (the lost one adopted by the drain)
    drained = run_cli(["drain", str(wal_dir), "--timeout", "60"], env=job_env())
    assert drained.returncode == 0, f"{drained.stderr} {context}"
    after = status_json(wal_dir)
    rows_after = rows_by_writer(after)
    for how, proc in procs.items():
        assert rows_after[proc["writer"]]["end"] == rows[proc["writer"]]["end"], (
            f"{how}: the end changed with delivery: {rows[proc['writer']]['end']} -> "
            f"{rows_after[proc['writer']]['end']} {context}")
    assert after["first_failure"] == first, context


# -- pool workers ---------------------------------------------------------------------------------

POOL = """
import multiprocessing
import distwal

def work(i):
    distwal.log({"i": i})
    return os.getpid()

if __name__ == "__main__":
    how = sys.argv[1]
    w = distwal.init(durability="sync")
    ctx = multiprocessing.get_context("fork")
    if how == "close":
        pool = ctx.Pool(2)
        pids = pool.map(work, range(8), chunksize=1)
        pool.close()
        pool.join()
    else:
        with ctx.Pool(2) as pool:             # __exit__ terminates the workers: SIGTERM
            pids = pool.map(work, range(8), chunksize=1)
    emit("workers", os.getpid(), *sorted(set(pids)))
"""


@pytest.mark.parametrize("how", ["close", "terminate"])
def test_pool_workers_ended_by_the_pool_are_never_lost(tmp_path, wal_dir, how):
    """close/join: the workers finish. terminate (a `with Pool()` block): SIGTERM, unless a
    worker took the sentinel terminate() also queues and was already leaving (finished); a
    SIGTERM that interrupts that exit still writes the mark."""
    script = write_script(tmp_path, "pool.py", POOL)
    with run_python(tmp_path, script, [how], env=job_env(wal_dir, DISTWAL_DISABLE_SENDER="1")) as child:
        assert child.wait(timeout=60) == 0, child.describe()
        parent, *workers = map(int, child.lines_with("workers")[0].parts[1:])
    report = status_json(wal_dir)
    by_pid = {row["pid"]: row for row in report["writers"]}
    assert set(by_pid) == {parent, *workers}, f"{sorted(by_pid)} vs parent {parent}, workers {workers}"
    assert by_pid[parent]["end"]["reason"] == "finished", by_pid[parent]
    allowed = [("finished", None)] if how == "close" else [("finished", None), ("signal", "SIGTERM")]
    for pid in workers:
        end = by_pid[pid]["end"]
        assert end is not None and (end["reason"], end["signal"]) in allowed, f"worker {pid} ({how}): {by_pid[pid]}"
    if how == "close":
        assert report["first_failure"] is None, report["first_failure"]


# -- the view: an 80-column terminal, --watch into a pipe, --run ------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    """A directory with writers of two runs, ended in three ways."""
    tmp_path = tmp_path_factory.mktemp("two_runs")
    wal_dir = tmp_path / "wal"
    run_enders(tmp_path, wal_dir, ["raise", "normal"], DISTWAL_RUN_ID="train-a")
    run_enders(tmp_path, wal_dir, ["sigkill"], DISTWAL_RUN_ID="eval-b")
    return wal_dir


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
@pytest.mark.parametrize("pipe", ["", " | cat"], ids=["terminal", "piped-into-the-terminal"])
def test_status_in_a_real_80_column_terminal(two_runs, tmp_path, pipe):
    socket_name = f"distwal-test-{uuid.uuid4().hex[:8]}"  # a tmux server of our own
    tmux = ["tmux", "-L", socket_name, "-f", "/dev/null"]
    # Piped (`status | tail`, `make demo | less`) the table still fits the terminal the pipe ends in.
    command = f"{PY} -m distwal status {two_runs}{pipe}; sleep 60"
    env = {**job_env(), "TERM": "xterm"}
    env.pop("COLUMNS", None)
    subprocess.run([*tmux, "new-session", "-d", "-s", "look", "-x", "80", "-y", "40", command],
                   env=env, check=True, timeout=30)
    try:
        def screen() -> str | None:
            # -J joins wrapped lines: a row too wide for the pane would come back longer than 80
            shot = subprocess.run([*tmux, "capture-pane", "-p", "-J", "-t", "look"], capture_output=True,
                                  text=True, timeout=30)
            return shot.stdout if "totals:" in shot.stdout else None

        text = wait_until(screen, 30, "status to appear in the tmux pane")
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=30)
    print(text)
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    assert max(map(len, lines)) <= 80, f"lines wider than the terminal:\n{text}"
    assert any(line.startswith("rank 0 failed first: ValueError: bad value raise") for line in lines), text
    header = next(line for line in lines if line.split()[:3] == ["rank", "state", "end"])
    assert "run" in header.split(), f"two runs share the directory: a run column\n{text}"
    rows = [line for line in lines if re.match(r"^\s+\d\s", line)]
    assert sorted(row.split()[0] for row in rows) == ["0", "0", "1"], text
    for word in ("ValueError: bad value", "finished  finished", " lost"):  # state, then end
        assert sum(word in row for row in rows) == 1, f"{word!r} in one row\n{text}"
    assert sum(" dead " in row for row in rows) == 1, text


def test_status_watch_into_a_pipe_prints_plain_frames_and_json_lines(two_runs):
    for extra, complete in (([], lambda out: out.count("totals:") >= 2),
                            (["--json"], lambda out: out.count("\n") >= 2)):
        proc = subprocess.Popen([PY, "-m", "distwal", "status", "--watch", "--interval", "0.2", *extra, str(two_runs)],
                                env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        chunks: list[str] = []
        reader = threading.Thread(target=lambda: chunks.extend(iter(proc.stdout.readline, "")), daemon=True)
        reader.start()
        try:
            wait_until(lambda: complete("".join(chunks)), 30, f"two frames of status --watch {extra}")
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=30)
            reader.join(10)
        out = "".join(chunks)
        assert code == 0, (code, proc.stderr.read() if proc.stderr else "")
        assert "\x1b" not in out, f"cursor or color codes in a pipe: {out!r}"
        if extra:
            docs = [json.loads(line) for line in out.splitlines()]
            assert len(docs) >= 2 and all(len(doc["writers"]) == 3 for doc in docs), out[:2000]
            assert docs[0]["first_failure"]["detail"] == "ValueError: bad value raise", docs[0]["first_failure"]
        else:
            frames = out.split("\n\n")
            assert all("rank 0 failed first" in frame for frame in frames if "totals:" in frame), out


def test_status_run_filters_rows_totals_and_first_failure(two_runs):
    everything = status_json(two_runs)
    assert everything["runs"] == ["eval-b", "train-a"] and len(everything["writers"]) == 3
    evaluation = status_json(two_runs, "--run", "eval-b")
    assert [w["run"] for w in evaluation["writers"]] == ["eval-b"] and evaluation["totals"]["writers"] == 1
    assert evaluation["first_failure"]["reason"] == "lost", evaluation["first_failure"]
    train = status_json(two_runs, "--run", "train-a")
    assert {w["run"] for w in train["writers"]} == {"train-a"} and train["first_failure"]["reason"] == "exception"
    table = run_cli(["status", "--run", "train-a", str(two_runs)], env=job_env()).stdout
    header = next(line for line in table.splitlines() if line.split()[:3] == ["rank", "state", "end"])
    assert "run" not in header.split() and "lost" not in table, table
    nothing = run_cli(["status", "--run", "nope", str(two_runs)], env=job_env())
    assert nothing.returncode == 0 and "no writer of run 'nope' here; runs in this directory: eval-b, train-a" in (
        nothing.stdout), nothing.stdout
