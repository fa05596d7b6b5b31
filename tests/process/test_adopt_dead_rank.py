"""SIGKILLed ranks are adopted by the live leader: moved to adopted/, shipped, then removed.

A long-lived rank leads. Victim ranks log in sync mode (reporting every seq `log` returned)
and are SIGKILLed at seeded random points, one possibly before its first record. While
they die the sink answers 503 (Retry-After), so what they left cannot be delivered yet and
their folders must be seen in adopted/; then the sink recovers and every acknowledged
record must arrive once, the folders must go, and a tombstone must stay in history/.
Replay with DISTWAL_TEST_SEED=<seed>.
"""

from __future__ import annotations

import os
import random
import signal
import time
from contextlib import ExitStack

import pytest
from helpers.cluster import (
    Fault,
    FaultServer,
    acks_of,
    assert_acked_delivered_once,
    assert_fenced,
    cluster_env,
    files_named,
    read_json,
    start_writer,
    wait_until,
    writer_id_of,
)
from helpers.hosts import wait_moved_from_writers

import distwal

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]


def test_sigkilled_ranks_are_adopted_delivered_and_removed(tmp_path, seed, timings):
    rng = random.Random(seed)
    wal, stop = tmp_path / "wal", tmp_path / "stop"
    held = {"on": False}

    def plan(req):
        return Fault.reply(503, Retry_After="0.2") if held["on"] else None

    hold_from_start = rng.random() < 0.5
    targets = [0, rng.randint(1, 20), rng.randint(50, 600)]  # acks before the kill; 0: before any record
    rng.shuffle(targets)
    context = f"(seed={seed}, hold_from_start={hold_from_start}, kill after acks {targets})"
    print(context)

    with FaultServer(tmp_path / "sink.db", plan=plan) as server, ExitStack() as stack:
        env = cluster_env(wal, server.url)
        lead = stack.enter_context(start_writer(tmp_path, env, "lead", stop=str(stop), pace=0.01))
        lead_id = writer_id_of(lead)
        wait_until(lambda: (read_json(wal / "leader.json") or {}).get("pid") == lead.pid
                   and any(r.status == 200 for r in server.requests()), 30, f"rank 'lead' to lead and ship {context}")

        if hold_from_start:
            held["on"] = True
        victims = []
        for k, target in enumerate(targets):
            child = stack.enter_context(start_writer(tmp_path, env, f"v{k}", pace=rng.uniform(0.0005, 0.003)))
            victims.append((f"v{k}", child, target))
        ids = {tag: writer_id_of(child) for tag, child, _ in victims}

        # Kill each victim once it has logged its target (in parallel: target 0 dies at once).
        alive = list(victims)
        deadline = time.monotonic() + 30
        while alive:
            for entry in list(alive):
                tag, child, target = entry
                if len(child.lines_with("ack")) >= target:
                    time.sleep(rng.uniform(0, 0.005))  # the random moment itself
                    held["on"] = True  # from the first kill on, nothing more reaches the sink
                    child.kill(signal.SIGKILL)
                    assert child.wait() == -signal.SIGKILL, child.describe()
                    alive.remove(entry)
            assert time.monotonic() < deadline, f"victims never reached their targets {context}"
            time.sleep(0.002)
        stored = server.records()
        acks = {tag: acks_of(child) for tag, child, _ in victims}
        pending = {tag for tag in acks if max(acks[tag], default=0) > max(stored.get(ids[tag], {}), default=0)}
        print(f"acks per victim { {t: len(a) for t, a in acks.items()} }; undelivered at the kill: {sorted(pending)}")

        # Adopted: out of writers/, into adopted/ (those with undelivered records cannot leave it yet).
        def adopted_all():
            return all(not (wal / "writers" / ids[tag]).exists()
                       and ((wal / "adopted" / ids[tag]).is_dir() or (wal / "history" / f"{ids[tag]}.json").exists())
                       for tag in ids)

        # Adoption time (kill -> out of writers/) of the victims still there now: for those, the
        # poll below sees the move when it happens.
        killed = {ids[tag]: child.killed_at for tag, child, _ in victims}
        watched = {writer_id for writer_id in killed if (wal / "writers" / writer_id).is_dir()}
        moved = wait_moved_from_writers(wal, killed, 30, f"every victim to be adopted {context}")
        for writer_id in watched:
            timings.record("adoption", moved[writer_id][0], host="same")
        wait_until(adopted_all, 30, f"every victim to be adopted {context}",
                   lambda: f"writers/ {os.listdir(wal / 'writers')} adopted/ {os.listdir(wal / 'adopted')}")
        for tag in pending:
            assert (wal / "adopted" / ids[tag]).is_dir(), f"{tag} holds undelivered records but left adopted/ {context}"
        rows = {row["writer"]: row for row in distwal.status(wal)["writers"]}
        for tag in pending:
            assert rows[ids[tag]]["state"] == "adopted", f"{tag}: status says {rows.get(ids[tag])} {context}"
        wait_until(lambda: (read_json(wal / "sender.json") or {}).get("state") == "retrying", 10,
                   "sender.json to show the sink retrying", lambda: str(read_json(wal / "sender.json")))

        held["on"] = False
        wait_until(lambda: all((wal / "history" / f"{ids[tag]}.json").exists()
                               and not (wal / "adopted" / ids[tag]).exists() for tag in ids),
                   30, f"every victim delivered and removed {context}",
                   lambda: f"adopted/ {os.listdir(wal / 'adopted')} history/ {os.listdir(wal / 'history')}")

        stored = server.records()
        history = {row["writer"]: row for row in distwal.status(wal)["history"]}
        for tag, writer_id in ids.items():
            assert_acked_delivered_once(stored, writer_id, tag, acks[tag], context)
            tomb = read_json(wal / "history" / f"{writer_id}.json")
            assert tomb["state"] == "adopted", tomb
            assert tomb["acked_seq"] >= max(acks[tag], default=0), tomb
            assert history[writer_id]["state"] == "adopted", history[writer_id]
            leftovers = files_named(wal, writer_id)
            assert leftovers == [f"history/{writer_id}.json"], f"{tag} left files behind: {leftovers} {context}"
        # The book and sender.json are rewritten lazily (next ack, once a second): poll for them.
        wait_until(lambda: not set(ids.values()) & set((read_json(wal / "cursors.json") or {}).get("writers", {})),
                   10, f"the removed victims' cursors to leave cursors.json {context}")
        wait_until(lambda: (read_json(wal / "sender.json") or {}).get("adopted", 0) >= len(ids), 10,
                   "sender.json to count the adoptions", lambda: str(read_json(wal / "sender.json")))

        stop.touch()
        assert lead.wait(60) == 0, lead.describe()
        assert_acked_delivered_once(server.records(), lead_id, "lead", acks_of(lead), context, finished=True)
        assert_fenced(server.requests_table(), context)
