"""os.fork: the child gets its own writer and folder, and never appends to its parent's files."""

from __future__ import annotations

import random

import pytest
from helpers.procs import assert_contiguous_from_1, child_env, read_dir, spawn

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]

FORKER = """
import distwal

interval, n_before, n_between, n_child, n_after = sys.argv[1], *map(int, sys.argv[2:6])
w = distwal.init(**({} if interval == "default" else {"interval": float(interval)}))
emit("parent", os.getpid(), w.id)

def child(name):
    ok = False
    try:
        for i in range(n_child):
            distwal.log({"who": name, "i": i})
        ok = distwal.flush(timeout=20)
        me = distwal.current()
        emit("child", name, os.getpid(), me.id, me.seq, ok)
    finally:
        os._exit(0 if ok else 1)   # like a DataLoader worker: no atexit, no finish

parent_i = 0
def parent_logs(n):
    global parent_i
    for _ in range(n):
        distwal.log({"who": "parent", "i": parent_i})
        parent_i += 1

parent_logs(n_before)            # not flushed: with a long interval still in the buffer at fork
pids = []
for name in ("a", "b"):
    pid = os.fork()
    if pid == 0:
        child(name)
    pids.append(pid)
    parent_logs(n_between)       # the parent keeps logging while its children do
parent_logs(n_after)
for pid in pids:
    _, status = os.waitpid(pid, 0)
    emit("child-exit", pid, os.waitstatus_to_exitcode(status))
emit("parent-seq", w.seq)
emit("finished", distwal.finish(timeout=20))
"""


@pytest.mark.parametrize("interval", ["default", "30"], ids=["default-interval", "long-interval"])
def test_forked_children_get_their_own_writers_and_never_touch_the_parents_files(tmp_path, wal_dir, seed, interval):
    rng = random.Random(seed)
    n_before, n_between, n_child, n_after = (rng.randrange(1, 3000) for _ in range(4))
    context = (
        f"(seed={seed}, interval={interval}, before={n_before}, between={n_between}, "
        f"child={n_child}, after={n_after})"
    )
    print(context)
    args = [interval, str(n_before), str(n_between), str(n_child), str(n_after)]
    with spawn(tmp_path, FORKER, *args, env=child_env(wal_dir)) as proc:
        assert proc.wait(timeout=40) == 0, proc.describe()
        _, parent_pid, parent_id = proc.lines_with("parent")[0].parts
        children = {line.parts[1]: line.parts[2:] for line in proc.lines_with("child")}
        exits = [line.parts[2] for line in proc.lines_with("child-exit")]
        assert proc.lines_with("finished")[0].parts[1] == "True", proc.describe()
    assert exits == ["0", "0"], f"forked children failed: {exits} {context}"
    assert sorted(children) == ["a", "b"], context

    writers = read_dir(wal_dir)
    n_parent = n_before + 2 * n_between + n_after
    child_ids = {name: info[1] for name, info in children.items()}
    assert sorted(writers) == sorted([parent_id, *child_ids.values()]), (
        f"expected the parent's and two children's folders, found {sorted(writers)} {context}"
    )
    assert len({parent_id, *child_ids.values()}) == 3, f"a child reused its parent's writer id {context}"

    parent = writers[parent_id]
    assert parent.meta.pid == int(parent_pid), context
    assert_contiguous_from_1(parent, context)
    assert [data for _, _, data in parent.records] == [{"who": "parent", "i": i} for i in range(n_parent)], (
        f"the parent's files hold {len(parent.records)} records, "
        f"{sum(1 for _, _, d in parent.records if d.get('who') != 'parent')} of them not the parent's {context}"
    )
    assert parent.finish is not None and parent.finish.durable_seq == n_parent, f"finish mark {parent.finish} {context}"

    for name, (pid, writer_id, last_seq, ok) in children.items():
        child = writers[writer_id]
        assert ok == "True" and int(last_seq) == n_child, (name, ok, last_seq, context)
        assert child.meta.pid == int(pid) != int(parent_pid), f"child {name}: meta {child.meta} {context}"
        assert_contiguous_from_1(child, context)
        assert [data for _, _, data in child.records] == [{"who": name, "i": i} for i in range(n_child)], (
            f"child {name}'s folder holds {[d for _, _, d in child.records][:3]}... {context}"
        )
