"""`distwal gc` removes old tombstones and never an undelivered record.

The directory holds everything at once: writers delivered and retired by a drain (their
tombstones, one with a dead letter the sink refused), and pending ones: a finished writer
nobody delivered yet and a SIGKILLed one. gc with a long age keeps everything, a dry run
changes nothing, gc with age 0 removes exactly the tombstones; every other file is
byte-identical afterwards, and a drain then delivers every record the pending writers saw
acknowledged. Seeds are printed; DISTWAL_TEST_SEED replays.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal

import pytest
from helpers.cluster import (
    Fault,
    FaultServer,
    acks_of,
    assert_acked_delivered_once,
    cluster_env,
    has_poison,
    run_cli,
    start_writer,
    writer_id_of,
)

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]


def snapshot(root) -> dict[str, str]:
    """{relative path: sha256} of every file under root."""
    found = {}
    for parent, _, files in os.walk(root):
        for name in files:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return found


def without_history(files: dict[str, str]) -> dict[str, str]:
    return {path: digest for path, digest in files.items() if not path.startswith("history/")}


def test_gc_removes_old_tombstones_and_never_an_undelivered_record(tmp_path, seed):
    rng = random.Random(seed)
    wal = tmp_path / "wal"
    context = f"(seed={seed})"
    with FaultServer(tmp_path / "sink.db", plan=lambda req: Fault.reply(422) if has_poison(req) else None) as server:
        env = cluster_env(wal, server.url, sender=False)
        delivered = {}
        for tag in ("a", "b"):
            count = rng.randint(5, 100)
            poison = [rng.randrange(count)] if tag == "a" else []
            with start_writer(tmp_path, env, tag, count=count, poison=poison) as child:
                assert child.wait(30) == 0, child.describe()
                delivered[writer_id_of(child)] = tag
        assert run_cli(["drain", str(wal), "--sink", server.url, "--timeout", "30"], env).returncode == 0
        tombstones = sorted(os.listdir(wal / "history"))
        assert tombstones == sorted(f"{w}.json" for w in delivered), tombstones
        assert os.listdir(wal / "deadletters"), "the poison record should be a dead letter"

        pending = {}
        with start_writer(tmp_path, env, "p", count=rng.randint(1, 200)) as finished, \
                start_writer(tmp_path, env, "k", pace=0.001) as victim:
            target = rng.randint(1, 200)
            victim.wait_for(lambda: len(victim.lines_with("ack")) >= target, timeout=30)
            victim.kill(signal.SIGKILL)
            assert victim.wait() == -signal.SIGKILL, victim.describe()
            assert finished.wait(30) == 0, finished.describe()
            pending["p"] = (writer_id_of(finished), acks_of(finished), True)
            pending["k"] = (writer_id_of(victim), acks_of(victim), False)
        before = snapshot(wal)

        young = run_cli(["gc", str(wal), "--older-than", "1h"], env)
        assert young.returncode == 0 and "removed 0 tombstones" in young.stderr and "kept 2" in young.stderr, young
        dry = run_cli(["gc", str(wal), "--older-than", "0s", "--dry-run"], env)
        assert dry.returncode == 0 and "would remove 2 tombstones" in dry.stderr, dry
        assert snapshot(wal) == before, "a young gc or a dry run changed the directory"

        done = run_cli(["gc", str(wal), "--older-than", "0s"], env)
        assert done.returncode == 0 and "removed 2 tombstones" in done.stderr, done
        after = snapshot(wal)
        assert os.listdir(wal / "history") == [], context
        assert without_history(after) == without_history(before), f"gc touched more than tombstones {context}"

        assert run_cli(["drain", str(wal), "--timeout", "30"], env).returncode == 0
        stored = server.records()
        for tag, (writer_id, acks, finished_) in pending.items():
            assert_acked_delivered_once(stored, writer_id, tag, acks, context, finished=finished_)


def test_gc_refuses_a_bad_age_and_a_directory_that_is_not_one(tmp_path):
    wal = tmp_path / "wal"
    (wal / "writers").mkdir(parents=True)
    bad = run_cli(["gc", str(wal), "--older-than", "soon"], cluster_env(wal, "http://127.0.0.1:9/"))
    assert bad.returncode == 2 and "is not a duration" in bad.stderr, bad
    nowhere = run_cli(["gc", str(tmp_path / "nothing")], cluster_env(wal, "http://127.0.0.1:9/"))
    assert nowhere.returncode == 2 and "not a distwal directory" in nowhere.stderr, nowhere
