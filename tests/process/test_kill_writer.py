"""SIGKILL at a random moment loses only what the durability mode allows.

The child reports on stdout, in one unbuffered write per line, every seq that `log`
returned; the parent SIGKILLs it at a seeded random moment, reads stdout to EOF (so it
holds every report the child made before dying), and reads the directory back with
distwal._folder.
"""

from __future__ import annotations

import random
import signal
import time

import pytest
from helpers.procs import assert_contiguous_from_1, child_env, only_writer, spawn

pytestmark = [pytest.mark.process, pytest.mark.timeout(90)]


def record_of(t: int, i: int) -> dict:
    """The record thread t logs as its i-th: the parent can rebuild it from (t, i)."""
    return {"t": t, "i": i, "pad": "x" * ((t * 7919 + i * 31) % 200)}


SYNC_LOGGER = """
import distwal

threads = int(sys.argv[1])
w = distwal.init(durability="sync")

def record_of(t, i):
    return {"t": t, "i": i, "pad": "x" * ((t * 7919 + i * 31) % 200)}

def loop(t):
    i = 0
    while True:
        seq = w.log(record_of(t, i))
        emit("ack", seq, t, i)       # only after log returned: this seq is acknowledged
        i += 1

for t in range(threads):
    threading.Thread(target=loop, args=(t,), daemon=True).start()
emit("ready", w.id)
threading.Event().wait()
"""


def test_sync_mode_sigkill_keeps_every_acknowledged_record(tmp_path, seed):
    rng = random.Random(seed)
    for round_ in range(10):
        threads = rng.choice([1, 2, 4, 8])
        want_acks = int(rng.choice([5, 50, 500, 2000]) * rng.random())
        extra_delay = rng.uniform(0, 0.005)
        context = f"(seed={seed}, round {round_}: threads={threads}, acks>={want_acks}, +{extra_delay * 1000:.1f} ms)"
        print(f"round {context}")
        wal_dir = tmp_path / f"wal{round_}"
        with spawn(tmp_path, SYNC_LOGGER, str(threads), env=child_env(wal_dir)) as child:
            child.wait_for("ready")
            child.wait_for(lambda: len(child.lines_with("ack")) >= want_acks, timeout=30)
            time.sleep(extra_delay)  # the random moment itself, not a wait for a condition
            child.kill(signal.SIGKILL)
            assert child.wait() == -signal.SIGKILL, child.describe()
            acks = [tuple(int(p) for p in line.parts[1:]) for line in child.lines_with("ack")]
            child_pid = child.pid
        assert len(acks) >= want_acks, context
        assert len({seq for seq, _, _ in acks}) == len(acks), f"log returned a seq twice {context}"

        writer = only_writer(wal_dir, context)
        assert writer.meta is not None and writer.meta.pid == child_pid, context
        assert_contiguous_from_1(writer, context)
        on_disk = writer.by_seq
        lost = [(seq, t, i) for seq, t, i in acks if seq not in on_disk]
        assert not lost, f"{len(lost)} acknowledged records lost, first {lost[:5]}; on disk 1..{len(on_disk)} {context}"
        for seq, t, i in acks:
            assert on_disk[seq] == record_of(t, i), f"seq {seq} holds {on_disk[seq]}, not ({t}, {i}) {context}"

        # Nothing invented: every record on disk is one a thread logged, each exactly once,
        # in each thread's order; beyond what it acknowledged, a thread (one log call in
        # flight at a time) can have at most one record on disk.
        per_thread: dict[int, list[int]] = {}
        for seq, data in sorted(on_disk.items()):
            assert isinstance(data, dict) and data == record_of(data.get("t"), data.get("i")), (
                f"seq {seq} holds a record no thread logged: {data} {context}"
            )
            per_thread.setdefault(data["t"], []).append(data["i"])
        acked_max: dict[int, int] = {}
        for _, t, i in acks:
            acked_max[t] = max(acked_max.get(t, -1), i)
        for t, found in per_thread.items():
            assert 0 <= t < threads, f"a record of thread {t}, which never existed {context}"
            assert found == list(range(len(found))), f"thread {t}: records {found[:10]}... not 0, 1, 2, ... {context}"
            assert len(found) - 1 <= acked_max.get(t, -1) + 1, (
                f"thread {t}: {len(found)} records on disk, acknowledged only up to i={acked_max.get(t, -1)} {context}"
            )


INTERVAL_LOGGER = """
import distwal

w = distwal.init()   # interval mode, default interval
emit("ready", w.config.durability, w.config.interval)
i = 0
while True:
    seq = w.log({"i": i})
    emit("ack", seq, i, repr(time.time()))   # logged no later than this time
    i += 1
    if i % 32 == 0:
        time.sleep(0.0002)  # a training loop does something between records
"""

SLACK = 0.2  # seconds on top of the interval: a loaded 2-core CI machine


def test_interval_mode_sigkill_loses_at_most_the_last_interval(tmp_path, seed):
    rng = random.Random(seed)
    for round_ in range(3):
        run_for = rng.uniform(0.5, 1.0)  # seconds of logging before the kill
        context = f"(seed={seed}, round {round_}: kill after {run_for:.3f} s)"
        print(f"round {context}")
        wal_dir = tmp_path / f"wal{round_}"
        with spawn(tmp_path, INTERVAL_LOGGER, env=child_env(wal_dir)) as child:
            ready = child.wait_for("ready")
            assert ready.parts[1] == "interval", ready.text
            interval = float(ready.parts[2])
            child.wait_for(lambda: child.lines[-1].at - ready.at >= run_for)
            killed_at = child.kill(signal.SIGKILL)
            assert child.wait() == -signal.SIGKILL, child.describe()
            acks = [(int(line.parts[1]), int(line.parts[2]), float(line.parts[3])) for line in child.lines_with("ack")]

        cutoff = killed_at - (interval + SLACK)
        old = [(seq, i) for seq, i, logged_by in acks if logged_by < cutoff]
        # Not vacuous: the child logged for run_for > interval + SLACK before the kill.
        assert len(old) >= 100, f"only {len(old)} records older than the cutoff; the check means nothing {context}"
        writer = only_writer(wal_dir, context)
        assert_contiguous_from_1(writer, context)
        on_disk = writer.by_seq
        lost = [seq for seq, _ in old if seq not in on_disk]
        assert not lost, (
            f"{len(lost)} records logged more than {interval + SLACK:.3f} s before SIGKILL are not on disk "
            f"(first {lost[:5]}); on disk: 1..{len(on_disk)} of {len(acks)} acknowledged {context}"
        )
        for seq, i in old:
            assert on_disk[seq] == {"i": i}, f"seq {seq} holds {on_disk[seq]} {context}"
        # nothing invented: the child logs {"i": seq - 1}, and at most one record past its last report
        assert all(data == {"i": seq - 1} for seq, data in on_disk.items()), f"a record nobody logged {context}"
        assert len(on_disk) <= len(acks) + 1, f"{len(on_disk)} on disk, {len(acks)} logged {context}"
