"""The sender's loop over many writers (distwal.leader.sender): who is read when, and what is retired.

Real writer folders made by Writer objects in this process (flushers on, no leader of their
own); a Sender that leads the directory through a real election, shipping into a MockSink.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator

import pytest

import distwal
from distwal.leader import sender as _sender
from distwal._config import Config
from distwal._files import ensure_domain, prepare_dir
from distwal._layout import Identity, Modes
from distwal.leader.elector import Elector, build_sender, owner_of
from distwal.leader.sender import Sender
from distwal.sinks._base import Batch, MockSink
from distwal.writer.writer import Writer

MODES = Modes.for_config(False)


@pytest.fixture
def root(tmp_path) -> Iterator[str]:
    path = str(tmp_path / "wal")
    prepare_dir(path, MODES)
    yield path


def writers(root: str, n: int, records: int, **options: Any) -> list[Writer]:
    config = Config.load(dir=root, disable_sender=True, **options)
    domain = ensure_domain(root, MODES)
    made = []
    for i in range(n):
        w = Writer(config, domain)
        for k in range(records):
            w.log({"w": i, "k": k})
        assert w.flush(10)
        made.append(w)
    return made


def leading_sender(root: str, batches: list[Batch], batch_records: int = 1000) -> Sender:
    """A Sender that leads `root` as `distwal drain` does, shipping into `batches`."""
    config = Config.load(dir=root)
    domain = ensure_domain(root, MODES)
    identity = Identity.of_this_process()
    owner = owner_of(identity, "test")
    elector = Elector(config, identity, owner, domain, start=lambda epoch: None)  # type: ignore[arg-type,return-value]
    deadline = time.monotonic() + 10
    while not elector.acquire():
        assert time.monotonic() < deadline, "could not lead"
        time.sleep(0.05)
    sender = build_sender(config, elector.epoch, owner, domain, identity)
    sender.sink.close()
    sender.sink, sender.batch_records = MockSink(batches.append), batch_records
    return sender


def test_full_batches_take_the_writers_in_turn(root):
    made = writers(root, 3, 25)
    batches: list[Batch] = []
    sender = leading_sender(root, batches, batch_records=10)
    try:
        for _ in range(9):
            sender.cycle()
    finally:
        sender.close()
        for w in made:
            w.finish(5)
    firsts = [batch.chunks[0].writer for batch in batches]
    # Each batch is full (10 of a writer's 25 records); the next one starts with the next writer.
    assert len(batches) >= 6 and all(sum(len(c) for c in b.chunks) == 10 for b in batches[:6])
    assert len(set(firsts[:3])) == 3 and firsts[3:6] == firsts[:3], firsts
    delivered = {w.id: sum(len(c) for b in batches for c in b.chunks if c.writer == w.id) for w in made}
    assert delivered == {w.id: 25 for w in made}


def test_idle_live_writers_are_read_without_listing_their_folders(root, monkeypatch):
    made = writers(root, 4, 3)
    batches: list[Batch] = []
    sender = leading_sender(root, batches)
    listed: list[int] = []
    real_listdir = os.listdir

    def counting_listdir(path: Any = ".") -> list[str]:
        listed.append(path if isinstance(path, int) else -1)
        return real_listdir(path)

    try:
        sender.cycle()
        assert sum(len(c) for b in batches for c in b.chunks) == 12
        folders = {t.dir_fd for t in sender.writers.values()}
        monkeypatch.setattr(_sender.os, "listdir", counting_listdir)
        for _ in range(5):
            for t in sender.writers.values():
                t.next_check = 0.0  # due now: read every writer in each cycle
            assert sender.cycle() == 0
        assert not folders & set(listed), "an idle live writer's folder was listed on a read"
        made[0].finish(5)  # finished: now its folder is listed, for segments it may have left
        sender._next_liveness = 0.0
        for t in sender.writers.values():
            t.next_check = 0.0
        sender.cycle()
        assert sender.writers.get(made[0].id) is None or sender.writers[made[0].id].dir_fd in listed
    finally:
        sender.close()
        for w in made:
            w.finish(5)


def test_retired_writers_leave_the_rotation(root):
    made = writers(root, 3, 2)
    batches: list[Batch] = []
    sender = leading_sender(root, batches)
    try:
        sender.cycle()
        made[1].finish(5)
        deadline = time.monotonic() + 10
        while made[1].id in sender.writers:
            assert time.monotonic() < deadline, "the finished writer was never retired"
            sender._next_liveness = 0.0
            sender.cycle()
            time.sleep(0.02)
        assert made[1].id not in sender._order and made[1].id not in sender._ending
        assert sorted(sender._order) == sorted(w.id for w in (made[0], made[2]))
    finally:
        sender.close()
        for w in made:
            w.finish(5)


def test_a_retired_writer_is_reported_done_with_its_end_and_the_tombstone_keeps_it(root):
    [w] = writers(root, 1, 2)
    done: list[tuple[str, Any]] = []

    class RecordingSink(MockSink):
        def writer_done(self, writer: str, meta: Any, end: Any) -> None:
            done.append((writer, end))

    batches: list[Batch] = []
    sender = leading_sender(root, batches)
    sender.sink = RecordingSink(batches.append)
    try:
        w.finish(5)
        deadline = time.monotonic() + 10
        while w.id in sender.writers or not done:
            assert time.monotonic() < deadline, "the finished writer was never retired"
            sender._next_liveness = 0.0
            sender.cycle()
            sender.retire()
            time.sleep(0.02)
    finally:
        sender.close()
    [(writer, end)] = done
    assert writer == w.id and (end["reason"], end["detail"], end["code"], end["signal"]) == (
        "finished", "finish()", None, None)
    [row] = distwal.status(root)["history"]
    assert row["end"] == end


def test_a_first_cycle_slower_than_the_lease_keeps_leadership_while_it_discovers(root):
    # 1024 writers on a loaded machine took 9 s to discover, over a 5 s lease: the leader
    # lost leadership in its first cycle. Discovery renews the lease as it goes.
    made = writers(root, 40, 1)
    sender = leading_sender(root, [])
    now = [sender.lease.clock()]
    sender.lease.clock = lambda: now[0]
    track = sender._track

    def slow_track(sub: str, name: str) -> None:
        now[0] += sender.lease.lease_s / 10  # each writer's folder costs a tenth of a lease
        track(sub, name)

    sender._track = slow_track  # type: ignore[method-assign]
    try:
        sender.cycle()  # 40 folders: four leases of discovery
        assert not sender.lease.lost, sender.lease.lost
        assert len(sender.writers) == 40
    finally:
        sender.close()
        for w in made:
            w.finish(5)
