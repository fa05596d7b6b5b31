"""Pool workers of multiprocessing and multiprocess leave through os._exit: atexit never runs.

distwal registers its shutdown path with their finalizers, so a worker that leaves after
pool.close()/join() (or after maxtasksperchild tasks) writes a finish mark; pool.terminate()
sends SIGTERM, which makes what the worker logged durable before it dies.
"""

from __future__ import annotations

import json
import random
import signal
import time

import pytest
from helpers.procs import assert_contiguous_from_1, child_env, read_dir, spawn

pytestmark = [pytest.mark.process, pytest.mark.timeout(90)]

POOL = """
import distwal

lib, method, parent_init, scenario, ntasks = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
mp = __import__(lib)

def init_worker(interval):
    if interval:
        distwal.init(interval=interval)

def work(i):
    seq = distwal.log({"task": i})
    return i, os.getpid(), distwal.current().id, seq

def spin(k):
    i = 0
    while True:
        seq = distwal.log({"task": k, "i": i})
        emit("ack", os.getpid(), distwal.current().id, seq, k, i)   # acknowledged, not flushed
        i += 1
        if i % 32 == 0:
            time.sleep(0.0002)

if __name__ == "__main__":
    if parent_init == "parent-init":
        emit("parent", distwal.init().id)   # workers forked from here inherit a writer
    ctx = mp.get_context(method)
    if scenario == "close":
        pool = ctx.Pool(2, maxtasksperchild=max(1, ntasks // 4))
        results = pool.map(work, range(ntasks), chunksize=1)
        pool.close()
        pool.join()
        emit("results", json.dumps(results))
    else:
        interval = float(scenario.split("=", 1)[1])   # "terminate=<interval>", 0: the default
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
        pool = ctx.Pool(2, initializer=init_worker, initargs=(interval,))
        workers = list(pool._pool)
        pool.map_async(spin, range(2), chunksize=1)
        emit("ready")
        signal.sigwait([signal.SIGUSR1])    # the test picks the moment
        pool.terminate()                    # SIGTERM to every worker
        pool.join()
        emit("exitcodes", *[p.exitcode for p in workers])
"""

CLOSE_CASES = [
    ("multiprocessing", "fork", "env-only"),
    ("multiprocessing", "fork", "parent-init"),
    ("multiprocessing", "spawn", "env-only"),
    ("multiprocess", "fork", "env-only"),
    ("multiprocess", "fork", "parent-init"),
    ("multiprocess", "spawn", "env-only"),
]


@pytest.mark.parametrize("lib,method,parent_init", CLOSE_CASES, ids=["-".join(case) for case in CLOSE_CASES])
def test_pool_workers_leave_every_record_on_disk_and_a_finish_mark(tmp_path, wal_dir, seed, lib, method, parent_init):
    ntasks = random.Random(seed).randrange(8, 17)
    context = f"(seed={seed}, {lib} {method} {parent_init}, tasks={ntasks})"
    print(context)
    with spawn(tmp_path, POOL, lib, method, parent_init, "close", str(ntasks), env=child_env(wal_dir)) as proc:
        assert proc.wait(timeout=60) == 0, proc.describe()
        results = json.loads(proc.lines_with("results")[0].text.split(" ", 1)[1])
        parent = proc.lines_with("parent")
        parent_id = parent[0].parts[1] if parent else None
    assert sorted(i for i, _, _, _ in results) == list(range(ntasks)), context

    writers = read_dir(wal_dir)
    by_writer: dict[str, list[tuple[int, int, int]]] = {}
    for i, pid, writer_id, seq in results:
        by_writer.setdefault(writer_id, []).append((seq, i, pid))
    assert parent_id not in by_writer, f"a worker logged into its parent's writer {parent_id} {context}"
    assert len(by_writer) >= 2, f"expected several workers (maxtasksperchild), got {sorted(by_writer)} {context}"
    expected_folders = set(by_writer) | ({parent_id} if parent_id else set())
    assert set(writers) == expected_folders, f"folders {sorted(writers)}, writers {sorted(expected_folders)} {context}"

    for writer_id, logged in by_writer.items():
        writer = writers[writer_id]
        assert_contiguous_from_1(writer, context)
        assert {pid for _, _, pid in logged} == {writer.meta.pid}, f"{writer_id}: pids {logged} {context}"
        assert [(seq, {"task": i}) for seq, i, _ in sorted(logged)] == [(s, d) for s, _, d in writer.records], (
            f"worker {writer_id}: on disk {writer.records}, logged {sorted(logged)} {context}"
        )
        assert writer.finish is not None, (
            f"worker {writer_id} left without a finish mark: its finalizer did not run {context}"
        )
        assert writer.finish.durable_seq == len(logged) and writer.finish.lost == 0, (
            f"worker {writer_id}: finish mark {writer.finish}, {len(logged)} records {context}"
        )
    if parent_id:
        assert writers[parent_id].records == [], f"the pool parent logged nothing {context}"
        assert writers[parent_id].finish is not None, f"the pool parent exited without finishing {context}"


def _terminate_round(tmp_path, wal_dir, seed, lib, method, interval):
    rng = random.Random(seed)
    want_acks = rng.randrange(1, 3000)
    context = f"(seed={seed}, {lib} {method}, interval={interval or 'default'}, acks>={want_acks} per worker)"
    print(context)
    scenario = f"terminate={interval}"
    with spawn(tmp_path, POOL, lib, method, "env-only", scenario, "0", env=child_env(wal_dir)) as proc:
        proc.wait_for("ready", timeout=30)

        def both_workers_logging() -> bool:
            counts: dict[str, int] = {}
            for line in proc.lines_with("ack"):
                counts[line.parts[2]] = counts.get(line.parts[2], 0) + 1
            return len(counts) == 2 and min(counts.values()) >= want_acks

        proc.wait_for(both_workers_logging, timeout=30)
        asked_at = proc.kill(signal.SIGUSR1)  # the pool parent now calls pool.terminate()
        assert proc.wait(timeout=30) == 0, proc.describe()
        context += f" [terminate and join took {time.time() - asked_at:.3f} s; the SIGTERM grace is 1 s]"
        exitcodes = proc.lines_with("exitcodes")[0].parts[1:]
        acks = [line.parts[1:] for line in proc.lines_with("ack")]
    assert exitcodes == [str(-signal.SIGTERM)] * 2, (
        f"workers did not die by SIGTERM's default action after distwal's handler: {exitcodes} {context}"
    )
    writers = read_dir(wal_dir)
    acked: dict[str, list[tuple[int, int, int]]] = {}
    for pid, writer_id, seq, k, i in acks:
        acked.setdefault(writer_id, []).append((int(seq), int(k), int(i)))
    assert set(writers) == set(acked), f"folders {sorted(writers)}, logging writers {sorted(acked)} {context}"
    for writer_id, logged in acked.items():
        writer = writers[writer_id]
        assert_contiguous_from_1(writer, context)
        on_disk = writer.by_seq
        lost = [seq for seq, _, _ in logged if seq not in on_disk]
        assert not lost, (
            f"worker {writer_id}: {len(lost)} of {len(logged)} acknowledged records lost at pool.terminate() "
            f"(first {lost[:5]}, on disk 1..{len(on_disk)}) {context}"
        )
        for seq, k, i in logged:
            assert on_disk[seq] == {"task": k, "i": i}, f"{writer_id} seq {seq}: {on_disk[seq]} {context}"


TERMINATE_CASES = [("multiprocessing", "fork"), ("multiprocessing", "spawn"), ("multiprocess", "fork")]


@pytest.mark.parametrize("lib,method", TERMINATE_CASES, ids=["-".join(case) for case in TERMINATE_CASES])
def test_pool_terminate_keeps_every_record_workers_acknowledged(tmp_path, wal_dir, seed, lib, method):
    """Workers log without flushing until pool.terminate(): the last interval too survives."""
    _terminate_round(tmp_path, wal_dir, seed, lib, method, 0)


def test_pool_terminate_keeps_every_record_workers_acknowledged_long_interval(tmp_path, wal_dir, seed):
    """A 30 s interval: only the SIGTERM path can make the records durable."""
    _terminate_round(tmp_path, wal_dir, seed, "multiprocessing", "spawn", 30.0)
