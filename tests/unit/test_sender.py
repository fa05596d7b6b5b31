"""The sender's loop over many writers (distwal.leader.sender and roster): who is read when,
what is retired, and when a drain is over.

Real writer folders made by Writer objects in this process (no leader of their own); the
sender leads the directory through lead(), as `distwal drain` does, ships into a MockSink
and is driven one cycle() at a time on a clock the test moves.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

import pytest

import distwal
from distwal import _layout
from distwal._config import Config
from distwal._files import ensure_domain, prepare_dir
from distwal._layout import Modes
from distwal.leader import roster
from distwal.leader.election import read_lease
from distwal.leader.lead import lead
from distwal.leader.roster import DISCOVER_EVERY, LIVENESS_EVERY
from distwal.leader.sender import MAX_IDLE_BACKOFF, Sender
from distwal.sinks._base import Batch, MockSink
from distwal.writer.writer import Writer

MODES = Modes.for_config(False)
LATER = max(DISCOVER_EVERY, LIVENESS_EVERY, MAX_IDLE_BACKOFF)  # seconds: every timer of a cycle is due again


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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


def cycles(sender: Sender, clock: Clock, n: int) -> int:
    """n cycles, each one when every timer is due again; the records acknowledged."""
    acked = 0
    for _ in range(n):
        clock.now += LATER
        acked += sender.cycle()
    return acked


def delivered(batches: list[Batch]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for batch in batches:
        for chunk in batch.chunks:
            counts[chunk.writer] = counts.get(chunk.writer, 0) + len(chunk)
    return counts


def test_full_batches_take_the_writers_in_turn(root):
    made = writers(root, 3, 25)
    batches: list[Batch] = []
    clock = Clock()
    with lead(root, using=MockSink(batches.append), kind="test", clock=clock) as sender:
        sender.batch_records = 10
        for _ in range(9):
            sender.cycle()  # the clock stands still: only the rotation decides who is read
    firsts = [batch.chunks[0].writer for batch in batches]
    # Each batch is full (10 of a writer's 25 records); the next one starts with the next writer.
    assert len(batches) >= 6 and all(sum(len(c) for c in b.chunks) == 10 for b in batches[:6])
    assert len(set(firsts[:3])) == 3 and firsts[3:6] == firsts[:3], firsts
    assert delivered(batches) == {w.id: 25 for w in made}


def test_idle_live_writers_are_read_without_listing_their_folders(root, monkeypatch):
    made = writers(root, 4, 3)
    batches: list[Batch] = []
    clock = Clock()
    listed: list[int] = []
    real_listdir = os.listdir

    def counting_listdir(path: Any = ".") -> list[str]:
        listed.append(path if isinstance(path, int) else -1)
        return real_listdir(path)

    with lead(root, using=MockSink(batches.append), kind="test", clock=clock) as sender:
        assert sender.cycle() == 12
        folders = {t.dir_fd for t in sender.roster.writers.values()}
        monkeypatch.setattr(os, "listdir", counting_listdir)
        assert cycles(sender, clock, 5) == 0  # every writer read in each cycle, nothing new
        assert listed, "the roster's discovery lists writers/ (the counter works)"
        assert not folders & set(listed), "an idle live writer's folder was listed on a read"
        made[0].finish(5)  # finished: now its folder is listed, for segments it may have left
        cycles(sender, clock, 1)
        assert made[0].id not in sender.roster.writers or sender.roster.writers[made[0].id].dir_fd in listed


def test_a_finished_writer_is_retired_and_leaves_the_rotation(root):
    made = writers(root, 3, 2)
    done: list[tuple[str, Any]] = []

    class RecordingSink(MockSink):
        def writer_done(self, writer: str, meta: Any, end: Any) -> None:
            done.append((writer, end))

    batches: list[Batch] = []
    clock = Clock()
    with lead(root, using=RecordingSink(batches.append), kind="test", clock=clock) as sender:
        sender.cycle()
        made[1].finish(5)
        cycles(sender, clock, 3)
        assert made[1].id not in sender.roster.writers and made[1].id not in sender.roster.order
        assert sorted(sender.roster.order) == sorted(w.id for w in (made[0], made[2]))
        assert sender.health.retired == 1
    [(writer, end)] = done
    assert writer == made[1].id and (end["reason"], end["detail"], end["code"], end["signal"]) == (
        "finished", "finish()", None, None)
    [row] = distwal.status(root)["history"]
    assert row["writer"] == made[1].id and row["end"] == end


def test_a_first_cycle_slower_than_the_lease_keeps_leadership_while_it_discovers(root, monkeypatch):
    # 1024 writers on a loaded machine took 9 s to discover, over a 5 s lease: the leader
    # lost leadership in its first cycle. Discovery renews the lease as it goes.
    made = writers(root, 40, 1)
    clock = Clock()
    real_load_writer = roster.load_writer

    def slow_load_writer(*args: Any, **kwargs: Any) -> Any:
        clock.now += sender.lease.lease_s / 10  # each writer's folder costs a tenth of a lease
        return real_load_writer(*args, **kwargs)

    monkeypatch.setattr(roster, "load_writer", slow_load_writer)
    with lead(root, using=MockSink(lambda batch: None), kind="test", clock=clock) as sender:
        sender.cycle()  # 40 folders: four leases of discovery
        assert not sender.lease.lost, sender.lease.lost
        assert len(sender.roster.writers) == len(made)


def test_drained_waits_for_the_marks_and_for_finished_writers(root):
    live, ending = writers(root, 2, 3)
    batches: list[Batch] = []
    clock = Clock()
    with lead(root, using=MockSink(batches.append), kind="test", clock=clock) as sender:
        sender.batch_records = 3
        sender.roster.discover()
        marks = sender.roster.pending_marks()
        assert marks == {live.id: 3, ending.id: 3}
        assert not sender.roster.drained(marks)
        live.log({"after": "the marks"})
        assert live.flush(5)
        ending.finish(5)
        acked = cycles(sender, clock, 1)
        assert acked == 3 and not sender.roster.drained(marks)  # one writer's batch; the other waits
        cycles(sender, clock, 3)
        # The live writer is delivered up to its mark (and past it); the finished one is
        # delivered through its finish mark and retired.
        assert sender.roster.drained(marks)
        assert ending.id not in sender.roster.writers
        assert delivered(batches) == {live.id: 4, ending.id: 3}


def test_drained_without_marks_waits_only_for_finished_writers(root):
    live, ending = writers(root, 2, 2)
    clock = Clock()
    with lead(root, using=MockSink(lambda batch: None), kind="test", clock=clock) as sender:
        sender.batch_records = 1
        sender.roster.discover()
        assert sender.roster.drained({})  # live writers are never waited for without a mark
        ending.finish(5)
        cycles(sender, clock, 1)
        assert not sender.roster.drained({})
        assert sender.run(lambda: False, lambda: clock.now + 60) == "drained"
        assert ending.id not in sender.roster.writers and live.id in sender.roster.writers


def test_lead_releases_the_lease_and_the_lock_on_exit(root):
    with lead(root, using=MockSink(lambda batch: None), kind="test") as sender:
        epoch = sender.lease.epoch
        sender.cycle()
        assert read_lease(root)["epoch"] == epoch and not read_lease(root).get("released")
    assert read_lease(root)["released"] is True
    with lead(root, using=MockSink(lambda batch: None), kind="other", timeout=0) as sender:
        assert sender.lease.epoch == epoch + 1  # at once: a released lease is free


def test_lead_raises_leader_timeout_while_another_owner_holds_the_lease(root):
    with lead(root, using=MockSink(lambda batch: None), kind="first") as first:
        first.cycle()
        attempts: list[int] = []
        with pytest.raises(distwal.LeaderTimeout):
            with lead(root, using=MockSink(lambda batch: None), kind="second", timeout=0,
                      waiting=lambda: attempts.append(1)):
                pass
        assert attempts == [1]
        assert not first.lease.lost and read_lease(root)["owner"] == first.lease.owner["owner"]


def test_a_drain_waits_for_another_hosts_writer_until_it_is_seen_beating(root):
    [w] = writers(root, 1, 2, heartbeat_interval=3600.0)  # beats only when the test says so
    folder = os.path.join(root, _layout.WRITERS, w.id)
    with open(os.path.join(folder, _layout.META), "rb") as f:
        meta = json.load(f)
    with open(os.path.join(folder, _layout.META), "w") as f:
        json.dump({**meta, "boot_id": "another-host"}, f)  # its process cannot be probed from here
    clock = Clock()
    with lead(root, using=MockSink(lambda batch: None), kind="test", clock=clock) as sender:
        cycles(sender, clock, 2)
        assert sender.roster.settling() == [w.id] and not sender.roster.drained({})
        beat = os.path.join(folder, _layout.HEARTBEAT)
        stamp = os.stat(beat).st_mtime_ns + 10**9
        os.utime(beat, ns=(stamp, stamp))  # a heartbeat, as its host writes it
        cycles(sender, clock, 1)
        assert sender.roster.settling() == [] and sender.roster.drained({})
        assert w.id in sender.roster.writers  # seen alive: never adopted, never waited for
