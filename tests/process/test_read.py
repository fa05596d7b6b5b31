"""`distwal read` and distwal.read(): exactly the delivered records, read back from the sink.

Real jobs under `distwal run` (ranks as separate processes, one SIGKILLed mid-stream) ship
into the default SQLite sink or a JSONL sink; what `read` returns is compared with the
sink's own rows and with what every rank saw acknowledged. An HTTP sink cannot be read back:
an error naming it, and `--sink` reads the `distwal serve` store instead. `distwal cat` on a
drained directory says where the records went. Seeds are printed; DISTWAL_TEST_SEED replays.
"""

from __future__ import annotations

import csv
import io
import json
import random
import sqlite3
import sys
import time

import orjson
import pytest
from helpers.cluster import FaultServer, run_cli
from helpers.jobs import job_env, sink_rows

import distwal

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

JOB = r"""
import json, os, signal, subprocess, sys
opts = json.loads(sys.argv[1])
if "RANK" in os.environ:
    import distwal
    rank = int(os.environ["RANK"])
    w = distwal.init(durability="sync")
    for i in range(opts["counts"][rank]):
        value = float("nan") if i == 3 else i / 7
        seq = w.log({"rank": rank, "i": i, "value": value, "nested": {"k": [i, "x"]}})
        os.write(1, f"ack {w.id} {seq}\n".encode())  # one write: atomic on a pipe
        if rank == opts["killed"] and i == opts["counts"][rank] // 2:
            os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(0)
procs = [subprocess.Popen([sys.executable, __file__, sys.argv[1]], env={**os.environ, "RANK": str(r)})
         for r in range(len(opts["counts"]))]
for p in procs:
    p.wait()
"""


def run_job(tmp_path, wal, rng, sink=None):
    counts = [rng.randint(5, 80) for _ in range(3)]
    killed = rng.randrange(3)
    script = tmp_path / "job.py"
    script.write_text(JOB)
    args = ["run", "--dir", str(wal), *(["--sink", sink] if sink else []), "--",
            sys.executable, str(script), json.dumps({"counts": counts, "killed": killed})]
    result = run_cli(args, job_env(), timeout=90)
    assert result.returncode == 0, result
    acks = {}
    for line in result.stdout.splitlines():
        assert len(line.split()) == 3, repr(line)
        _, writer, seq = line.split()
        acks.setdefault(writer, set()).add(int(seq))
    return counts, killed, acks


def as_keys(records):
    return sorted((r["writer"], r["seq"], json.dumps(r["data"], sort_keys=True)) for r in records)


def test_read_returns_exactly_the_records_the_sqlite_sink_stored(tmp_path, seed):
    rng = random.Random(seed)
    wal = tmp_path / "wal"
    counts, killed, acks = run_job(tmp_path, wal, rng)
    context = f"(seed={seed}, counts={counts}, killed rank {killed})"
    stored = sink_rows(wal)
    result = run_cli(["read", str(wal), "--json"], job_env())
    assert result.returncode == 0, result
    records = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert as_keys(records) == sorted((r.writer, r.seq, json.dumps(r.data, sort_keys=True))
                                      for r in stored), context
    assert {(r["writer"], r["seq"]) for r in records} >= {(w, s) for w, seqs in acks.items() for s in seqs}, context
    assert [(r["ts"], r["writer"], r["seq"]) for r in records] == sorted((r["ts"], r["writer"], r["seq"])
                                                                      for r in records)
    assert all(r["data"]["value"] == "NaN" for r in records if r["data"]["i"] == 3), context  # kept, not null
    assert set(records[0]) == {"writer", "seq", "ts", "host", "pid", "rank", "run", "local_rank", "attempt", "data"}

    # Filters, through the library: a rank, a run, a time.
    rank = rng.randrange(3)
    by_rank = list(distwal.read(wal, rank=rank))
    assert as_keys(by_rank) == as_keys(r for r in records if r["rank"] == rank) and by_rank, context
    assert list(distwal.read(wal, run="no-such-run")) == []
    assert as_keys(distwal.read(wal, run=records[0]["run"])) == as_keys(records)
    middle = records[len(records) // 2]["ts"]
    assert as_keys(distwal.read(wal, since=middle)) == as_keys(r for r in records if r["ts"] >= middle)
    later = run_cli(["read", str(wal), "--since", str(time.time() + 60)], job_env())
    assert later.returncode == 0 and later.stdout == "" and "no delivered record matches" in later.stderr, later

    # CSV: one row per record, data fields as columns (a data "rank" gets a prefix).
    table = list(csv.DictReader(io.StringIO(run_cli(["read", str(wal), "--csv"], job_env()).stdout)))
    assert len(table) == len(records) and {"data.rank", "i", "value", "nested"} <= set(table[0]), table[:1]
    # The default text: one line per record.
    assert len(run_cli(["read", str(wal)], job_env()).stdout.splitlines()) == len(records)

    # Nothing is left on disk: cat says where the records went.
    cat = run_cli(["cat", str(wal)], job_env())
    assert cat.returncode == 0 and cat.stdout == "", cat
    assert f"distwal read {wal}" in cat.stderr and "collected.db" in cat.stderr, cat.stderr


def test_read_from_a_jsonl_sink_returns_each_record_once(tmp_path, seed):
    rng = random.Random(seed)
    wal, target = tmp_path / "wal", tmp_path / "out.jsonl"
    counts, killed, acks = run_job(tmp_path, wal, rng, sink=f"jsonl://{target}")
    lines = [orjson.loads(line) for line in target.read_bytes().splitlines()]
    with target.open("ab") as f:  # a copy after a leader change, and a torn last line
        f.write(orjson.dumps(lines[0]) + b"\n" + b'{"writer": "torn')
    records = list(distwal.read(wal))
    assert as_keys(records) == as_keys({(e["writer"], e["seq"]): e for e in lines}.values()), f"(seed={seed})"
    assert {(w, s) for w, seqs in acks.items() for s in seqs} <= {(r["writer"], r["seq"]) for r in records}


def test_read_names_an_http_sink_it_cannot_read_and_reads_the_serve_store_with_sink(tmp_path, seed):
    rng = random.Random(seed)
    wal = tmp_path / "wal"
    with FaultServer(tmp_path / "serve.db") as server:
        run_job(tmp_path, wal, rng, sink=server.url)
        stored = server.records()
    result = run_cli(["read", str(wal)], job_env())
    assert result.returncode == 2 and result.stdout == "", result
    assert f"ships to {server.url}" in result.stderr and "--sink sqlite:///" in result.stderr, result.stderr
    with pytest.raises(distwal.ConfigError, match="cannot be read back"):
        list(distwal.read(wal))
    from_serve = run_cli(["read", str(wal), "--sink", f"sqlite://{tmp_path / 'serve.db'}", "--json"], job_env())
    got = {(r["writer"], r["seq"]) for r in map(orjson.loads, from_serve.stdout.splitlines())}
    assert got == {(w, s) for w, seqs in stored.items() for s in seqs}


def test_read_of_a_directory_with_nothing_delivered_creates_nothing(tmp_path):
    wal = tmp_path / "wal"
    wal.mkdir()
    assert list(distwal.read(wal)) == []
    result = run_cli(["read", str(wal)], job_env())
    assert result.returncode == 0 and "no records delivered yet" in result.stderr, result
    assert not (wal / "collected.db").exists()
    with pytest.raises(sqlite3.OperationalError):
        sqlite3.connect(f"file:{wal / 'collected.db'}?mode=ro", uri=True).execute("SELECT 1")
