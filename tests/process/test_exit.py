"""Exit never hangs: the at-exit path finishes the writer, writes finish.json, and returns.

The child logs, announces "exiting" with its clock, and leaves; the parent measures from
that line to the child's exit and reads the directory back.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time

import pytest
from helpers.procs import assert_contiguous_from_1, child_env, only_writer, read_dir, spawn

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]

EXIT_TIMEOUT = 0.5  # DISTWAL_EXIT_TIMEOUT for these children
EXIT_BUDGET = 3.0  # seconds from "exiting" to the process being gone, on a loaded CI machine

EXITER = """
import distwal

how, interval, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
w = distwal.init(**({} if interval == "default" else {"interval": float(interval)}))
for i in range(n):
    w.log({"i": i})

if how == "busy-thread":
    # A daemon thread still logging while the interpreter shuts down.
    started = threading.Event()
    def busy():
        i = n
        started.set()
        while True:
            try:
                w.log({"i": i})
            except distwal.ClosedError:
                return
            i += 1
    threading.Thread(target=busy, daemon=True).start()
    started.wait()

emit("exiting", repr(time.time()), w.seq)
if how == "exception":
    raise RuntimeError("the training script crashed")
if how == "sys-exit":
    sys.exit(3)
# "return": fall off the end of the script
"""

CASES = {
    "return": 0,
    "sys-exit": 3,
    "exception": 1,
    "busy-thread": 0,
}


@pytest.mark.parametrize("interval", ["default", "30"], ids=["default-interval", "long-interval"])
@pytest.mark.parametrize("how", list(CASES))
def test_exit_finishes_the_writer_promptly(tmp_path, wal_dir, seed, how, interval):
    n = random.Random(seed).randrange(1, 20000)
    context = f"(seed={seed}, exit by {how}, interval={interval}, records={n})"
    print(context)
    env = child_env(wal_dir, DISTWAL_EXIT_TIMEOUT=str(EXIT_TIMEOUT))  # a writer only: its folder stays
    with spawn(tmp_path, EXITER, how, interval, str(n), env=env) as child:
        exiting = child.wait_for("exiting")
        code = child.wait(timeout=30)
        gone = time.time()
        took = gone - float(exiting.parts[1])
        assert code == CASES[how], f"exit code {code} {context}\n{child.describe()}"
        assert took < EXIT_BUDGET, f"exit took {took:.2f} s (DISTWAL_EXIT_TIMEOUT={EXIT_TIMEOUT}) {context}"
        if how == "exception":
            assert "RuntimeError: the training script crashed" in child.stderr, context
    writer = only_writer(wal_dir, context)
    assert_contiguous_from_1(writer, context)
    logged = len(writer.records)
    if how == "busy-thread":
        assert logged >= n, f"{logged} records on disk, {n} logged before exit {context}"
    else:
        assert logged == n, f"{logged} records on disk, {n} logged {context}"
    assert [data["i"] for _, _, data in writer.records] == list(range(logged)), context
    assert writer.finish is not None, f"no finish mark after a normal exit {context}"
    assert writer.finish.durable_seq == logged and writer.finish.lost == 0, f"finish mark {writer.finish} {context}"
    assert writer.heartbeat is not None and writer.heartbeat.state == "finished", f"{writer.heartbeat} {context}"


def _delivered(wal_dir, writer_id: str) -> dict[int, object]:
    """What the default sink (sqlite:///<dir>/collected.db) holds for one writer: {seq: data}."""
    path = wal_dir / "collected.db"
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT seq, data FROM records WHERE writer = ?", (writer_id,))
        return {seq: json.loads(data) for seq, data in rows}
    finally:
        db.close()


def test_exit_as_the_leader_delivers_or_keeps_every_record_and_returns_promptly(tmp_path, wal_dir, seed):
    """With the sender on (default sqlite sink) the process leads, drains at exit, and still exits in time."""
    n = random.Random(seed).randrange(1, 20000)
    context = f"(seed={seed}, records={n}, default sink)"
    print(context)
    env = child_env(wal_dir, sender=True, DISTWAL_EXIT_TIMEOUT=str(EXIT_TIMEOUT))
    with spawn(tmp_path, EXITER + "\nemit('writer', w.id)\n", "return", "default", str(n), env=env) as child:
        exiting = child.wait_for("exiting")
        code = child.wait(timeout=30)
        took = time.time() - float(exiting.parts[1])
        assert code == 0, f"exit code {code} {context}\n{child.describe()}"
        assert took < EXIT_TIMEOUT + EXIT_BUDGET, (
            f"exit took {took:.2f} s with DISTWAL_EXIT_TIMEOUT={EXIT_TIMEOUT} {context}"
        )
        writer_id = child.lines_with("writer")[0].parts[1]
    on_disk = read_dir(wal_dir).get(writer_id)
    delivered = _delivered(wal_dir, writer_id)
    kept = on_disk.by_seq if on_disk is not None else {}
    missing = [i for i in range(n) if delivered.get(i + 1, kept.get(i + 1)) != {"i": i}]
    assert not missing, (
        f"{len(missing)} records neither delivered nor on disk (first seqs {[i + 1 for i in missing[:5]]}): "
        f"{len(delivered)} delivered, {len(kept)} on disk {context}"
    )


UNREACHABLE_SINK = "http://127.0.0.1:9/ingest"  # the discard port: nothing listens, connections are refused


def test_exit_with_an_unreachable_sink_waits_at_most_the_exit_timeout(tmp_path, wal_dir, seed):
    """The leader may spend DISTWAL_EXIT_TIMEOUT delivering at exit, never more."""
    n = random.Random(seed).randrange(1, 5000)
    context = f"(seed={seed}, records={n}, sink={UNREACHABLE_SINK})"
    print(context)
    env = child_env(wal_dir, sender=True, DISTWAL_EXIT_TIMEOUT=str(EXIT_TIMEOUT), DISTWAL_SINK=UNREACHABLE_SINK)
    with spawn(tmp_path, EXITER, "return", "default", str(n), env=env) as child:
        exiting = child.wait_for("exiting")
        code = child.wait(timeout=30)
        took = time.time() - float(exiting.parts[1])
        assert code == 0, f"exit code {code} {context}\n{child.describe()}"
        assert took < EXIT_TIMEOUT + EXIT_BUDGET, (
            f"exit took {took:.2f} s with DISTWAL_EXIT_TIMEOUT={EXIT_TIMEOUT} {context}"
        )
    writer = only_writer(wal_dir, context)
    assert_contiguous_from_1(writer, context)
    assert [data["i"] for _, _, data in writer.records] == list(range(n)), f"records not kept on disk {context}"
    assert writer.finish is not None and writer.finish.durable_seq == n, f"finish mark {writer.finish} {context}"
