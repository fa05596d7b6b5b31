"""The PostgreSQL sink with real processes: ranks shipping through their elected leader,
`distwal serve --db postgresql://...` processes sharing one database, and the secrets a sink
needs (a URL's password, DISTWAL_TOKEN, PGPASSWORD) kept out of every file and log line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from helpers.cluster import FaultServer, run_cli, serve_cli
from helpers.jobs import write_script
from helpers.postgres import fresh_table
from helpers.procs import child_env, read_json

from distwal._envelope import envelope_prefix
from distwal._exceptions import StaleEpoch
from distwal.sinks import Batch, Chunk
from distwal.sinks.http import HTTPSink
from distwal.sinks.postgres import RAW_KEY

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

JOB = """
import logging, math
import distwal

logging.basicConfig(level=logging.DEBUG, format="%(name)s %(message)s")  # every log line, on stderr
w = distwal.init(durability="sync")
for i in range(40):
    w.log({"i": i})
w.log({"i": 40, "text": "nul:\\x00:end"})
w.log({"i": 41, "loss": math.nan})
for i in range(42, 50):
    w.log({"i": i})
emit("delivered", w.flush(timeout=float(sys.argv[1]), delivered=True))
print(json.dumps(distwal.status(os.environ["DISTWAL_DIR"])), flush=True)
w.finish(timeout=5)
emit("finished")
"""


def run_job(tmp_path: Path, env: dict[str, str], flush_timeout: float) -> subprocess.CompletedProcess[str]:
    script = write_script(tmp_path, "job.py", JOB)
    return subprocess.run([sys.executable, str(script), str(flush_timeout)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)


def files_holding(root: Path, secrets: list[str]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path.relative_to(root)} holds {s!r}" for s in secrets if s.encode() in data]
    return found


# -- odd records through the real sender ------------------------------------------------------


def test_a_nul_record_and_a_nan_record_among_good_ones_arrive_as_documented(tmp_path, postgres_server):
    pg, table, wal = postgres_server, fresh_table(), tmp_path / "wal"
    env = child_env(wal, sender=True, DISTWAL_SINK=pg.url(table=table), DISTWAL_LEASE_S="2")
    done = run_job(tmp_path, env, flush_timeout=60)
    assert "delivered True" in done.stdout, done.stdout + done.stderr[-3000:]
    rows = {seq: orjson.loads(data) for seq, data in pg.sql(f'SELECT seq, data::text FROM "{table}"')}
    assert sorted(rows) == list(range(1, 51)), "every record, good or odd, is stored once"
    assert all(rows[i + 1] == {"i": i} for i in [*range(40), *range(42, 50)])
    assert orjson.loads(rows[41][RAW_KEY]) == {"i": 40, "text": "nul:\x00:end"}  # the lossless form
    assert rows[42]["i"] == 41 and rows[42]["loss"] in (None, "NaN")  # as log() wrote it (null today)
    dead = wal / "deadletters"
    assert not dead.exists() or not any(dead.iterdir()), "nothing became a dead letter"


# -- secrets ----------------------------------------------------------------------------------

URL_PW, QUERY_TOKEN, ENV_TOKEN = "urlpw-5b8e1d", "qtok-91ac4f", "envtok-2f7d3a"


@pytest.mark.parametrize("how", ["http", "postgres-url", "postgres-pgpassword", "postgres-wrong-password"])
def test_no_secret_reaches_any_file_of_the_directory_status_or_logs(tmp_path, postgres_server, how):
    pg, wal = postgres_server, tmp_path / "wal"
    table = fresh_table()
    extra: dict[str, str] = {"DISTWAL_TOKEN": ENV_TOKEN, "DISTWAL_LEASE_S": "2"}
    secrets = [URL_PW, QUERY_TOKEN, ENV_TOKEN, pg.password]
    with contextmanager(_http_server)(tmp_path, how) as http_url:
        if how == "http":
            sink = http_url.replace("http://", f"http://alice:{URL_PW}@") + f"?token={QUERY_TOKEN}"
            public = http_url
        elif how == "postgres-url":
            sink, public = pg.url(table=table), f"postgresql://{pg.user}@127.0.0.1:{pg.port}/distwal?table={table}"
        elif how == "postgres-pgpassword":
            sink, public = pg.url(table=table, password=False), None
            extra["PGPASSWORD"] = pg.password
        else:
            sink, public = pg.url(table=table).replace(pg.password, URL_PW), None
        done = run_job(tmp_path, child_env(wal, sender=True, DISTWAL_SINK=sink, **extra),
                       flush_timeout=5 if how.endswith("wrong-password") else 60)
        assert "finished" in done.stdout, done.stdout + done.stderr[-3000:]
        status_cli = run_cli(["status", str(wal), "--json"], child_env(wal))
    delivered = "delivered True" in done.stdout
    assert delivered == (not how.endswith("wrong-password")), done.stdout + done.stderr[-3000:]
    recorded = read_json(wal / "sink.json")["sink"]
    if public is not None:
        assert recorded == public
    leaks = files_holding(wal, secrets)
    leaks += [f"{name} holds {s!r}" for name, text in (("job stdout", done.stdout), ("job stderr", done.stderr),
                                                       ("status", status_cli.stdout + status_cli.stderr))
              for s in secrets if s in text]
    assert not leaks, leaks
    status = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    if how.endswith("wrong-password"):  # paused, and status says why, with the URL masked
        sender = status.get("sender") or {}
        assert sender.get("state") == "paused", sender
        assert "password authentication failed" in sender.get("last_error", ""), sender
        assert sender.get("sink", "").startswith(f"postgresql://{pg.user}:***@"), sender


def _http_server(tmp_path: Path, how: str) -> Iterator[str]:
    if how != "http":
        yield ""
        return
    with FaultServer(tmp_path / "ingest.db") as server:
        yield server.url


# -- serve on one database ------------------------------------------------------------------


def batch(epoch: int, writer: str, first: int, count: int) -> Batch:
    meta: dict[str, Any] = {"host": "node1", "pid": 7, "rank": 0, "run": "r", "local_rank": 0, "attempt": 0}
    prefix = envelope_prefix(writer, meta)
    seqs = range(first, first + count)
    return Batch(epoch, "shared-domain", (Chunk(writer, meta, prefix, first, [1.7e9 + s for s in seqs],
                                                [orjson.dumps({"s": s, "nul": "\x00"}) for s in seqs]),))


def test_two_serve_processes_on_one_database_dedupe_and_fence_together(postgres_server):
    pg, table = postgres_server, fresh_table()
    env = child_env(None, sender=False, PGPASSWORD=pg.password)
    db = pg.url(table=table, password=False)
    with serve_cli(db, env) as url_a, serve_cli(db, env) as url_b:
        old, new = HTTPSink(url_a), HTTPSink(url_b)
        try:
            old.write(batch(1, "w1", 1, 10))  # the old leader, through server A
            new.write(batch(2, "w1", 6, 10))  # a new leader of the same domain through B: 6..10 resent
            with pytest.raises(StaleEpoch, match="409"):
                old.write(batch(1, "w1", 16, 5))  # A refuses the old leader: the fence is in the database
            new.write(batch(2, "w1", 1, 20))  # duplicates across servers are ignored
        finally:
            old.close()
            new.close()
    rows = pg.sql(f'SELECT seq, epoch, data::text FROM "{table}" ORDER BY seq')
    assert [seq for seq, _, _ in rows] == list(range(1, 21))
    assert [epoch for _, epoch, _ in rows] == [1] * 10 + [2] * 10
    assert orjson.loads(orjson.loads(rows[0][2])[RAW_KEY]) == {"s": 1, "nul": "\x00"}
    assert pg.sql(f'SELECT domain, epoch FROM "{table}_fence"') == [("shared-domain", 2)]


def test_serve_with_an_unreachable_database_answers_503_and_recovers(postgres_server):
    pg, table = postgres_server, fresh_table()
    env = child_env(None, sender=False)
    wrong = pg.url(table=table).replace(pg.password, "not-the-password")
    with serve_cli(wrong, env) as url:
        sink = HTTPSink(url)
        try:
            from distwal._exceptions import SinkUnavailable

            with pytest.raises(SinkUnavailable, match="503") as info:
                sink.write(batch(1, "w1", 1, 1))
            assert "not-the-password" not in str(info.value)
        finally:
            sink.close()


def test_serve_with_a_bad_database_url_is_one_line_exit_2():
    env = child_env(None, sender=False)
    done = subprocess.run([sys.executable, "-m", "distwal", "serve", "--db", "postgresql://h/db?table=a;b",
                           "--port", "0"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "plain table name" in done.stderr and len(done.stderr.splitlines()) == 1


@pytest.fixture(autouse=True)
def _no_pg_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith("PG"):
            monkeypatch.delenv(name)
