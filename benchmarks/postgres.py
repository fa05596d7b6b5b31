"""The PostgreSQL benchmark: records/s from a backlog into PostgreSQL, against the raw limit.

One run starts its own server (Debian's postgresql, tests/helpers/postgres.py, fsync on) and
measures, interleaved over repetitions, each from the same backlog (writers x N records of
append.py's 109-byte record, written with DISTWAL_DISABLE_SENDER=1 by ship.py's backlog role):

  sink    the library's Sender, led as `distwal drain` leads (lead(), through _ship_child.leading), draining the
          backlog through the PostgreSQL sink (one transaction per 20,000-record batch:
          fence, COPY, commit) into a fresh table
  raw     the raw limit: the very rows the sink stored, read back with COPY ... TO STDOUT
          ahead of time, then COPYed with psycopg into a table without a key, in batches of
          the same size, one commit each: no dedupe, no fence, no reading of segment files;
          and the same into a table with the sink's primary key (what dedupe costs the server)
  serve   `distwal serve --db postgresql://...` against `distwal serve --db FILE.db` (SQLite),
          each fed by the Sender through HTTPSink (gzip, the default), from a smaller backlog

Run it through run.py: `python benchmarks/run.py [--short] postgres`.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from _report import Report, verdict
from _ship_child import drain, leading
from helpers.cluster import serve_cli
from ship import clean_env, hard_copy, make_backlog, reap_all

BATCH_RECORDS = 20_000  # the Sender's default batch; the raw limit uses the same
TARGET_RATE = 300_000  # records/s through the sink
TARGET_RATIO = 1.5  # raw limit / sink, at most


@dataclass
class Scale:
    reps: int
    writers: int
    per_writer: int
    serve_per_writer: int


FULL = Scale(reps=3, writers=8, per_writer=100_000, serve_per_writer=10_000)
SHORT = Scale(reps=1, writers=4, per_writer=20_000, serve_per_writer=2_500)


def drain_seconds(root: str, url: str, expected: int) -> float:
    """Lead `root` as `distwal drain` does and send everything to `url`; seconds until all acked."""
    from distwal.sinks import sink_from_url

    with leading(root, url, sink=sink_from_url(url)) as sender:
        result = drain(sender, expected, max_errors=20)
    if result["n"] != expected:
        raise RuntimeError(f"acked {result['n']} of {expected}: {result['last_error']}")
    return float(result["s"])


def raw_copy(pg: Any, chunks: list[bytes], table: str, keyed: bool = False) -> float:
    """COPY prebuilt rows into a table without a key (or, keyed, with the sink's primary key),
    one commit per chunk: the raw limit."""
    import psycopg

    with psycopg.connect(pg.url().split("?")[0]) as conn:
        like = "INCLUDING ALL" if keyed else "INCLUDING DEFAULTS"
        conn.execute(f"CREATE TABLE {table} (LIKE distwal_bench_0 {like})")
        conn.commit()
        t0 = time.perf_counter()
        for chunk in chunks:
            with conn.cursor() as cur:
                with cur.copy(f"COPY {table} FROM STDIN") as copy:
                    copy.write(chunk)
            conn.commit()
        return time.perf_counter() - t0


def stored_rows(pg: Any, table: str) -> list[bytes]:
    """The rows of `table` as COPY text, in chunks of BATCH_RECORDS rows."""
    import psycopg

    with psycopg.connect(pg.url().split("?")[0]) as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY {table} TO STDOUT") as copy:
                data = b"".join(bytes(block) for block in copy)
    lines = data.splitlines(keepends=True)
    return [b"".join(lines[i:i + BATCH_RECORDS]) for i in range(0, len(lines), BATCH_RECORDS)]


def serve_rate(db: str, backlog_dir: str, base: str, expected: int, env: dict[str, str]) -> float:
    with serve_cli(db, env) as url:
        copy = tempfile.mkdtemp(dir=base, prefix="serve-")
        os.rmdir(copy)
        hard_copy(backlog_dir, copy)
        seconds = drain_seconds(copy, url, expected)
        shutil.rmtree(copy, ignore_errors=True)
        return expected / seconds


def main(short: bool = False) -> str:
    from helpers.postgres import PostgresServer, unavailable

    problem = unavailable()
    if problem is not None:
        raise RuntimeError(f"cannot run: {problem}")
    scale = SHORT if short else FULL
    base = tempfile.mkdtemp(prefix="distwal-bench-pg-")
    try:
        with PostgresServer.start_new(fsync=True) as pg:
            return _run(scale, base, pg)
    finally:
        reap_all(failed=False)
        shutil.rmtree(base, ignore_errors=True)


def _run(scale: Scale, base: str, pg: Any) -> str:
    backlog = make_backlog(os.path.join(base, "tpl"), scale.writers, scale.per_writer)
    small = make_backlog(os.path.join(base, "tpl-serve"), scale.writers, scale.serve_per_writer)
    print(f"postgres: backlogs written ({backlog.records:,} and {small.records:,} records)", file=sys.stderr)
    sink_rates: list[float] = []
    raw_rates: list[float] = []
    keyed_rates: list[float] = []
    for rep in range(scale.reps):
        table = f"distwal_bench_{rep}"
        copy = os.path.join(base, f"run-{rep}")
        hard_copy(backlog.dir, copy)
        os.sync()
        seconds = drain_seconds(copy, pg.url(table=table), backlog.records)
        shutil.rmtree(copy, ignore_errors=True)
        (count,) = pg.sql(f"SELECT count(*) FROM {table}")[0]
        if count != backlog.records:
            raise RuntimeError(f"the sink stored {count} of {backlog.records} records")
        sink_rates.append(backlog.records / seconds)
        chunks = stored_rows(pg, table)
        raw_rates.append(backlog.records / raw_copy(pg, chunks, f"distwal_raw_{rep}"))
        keyed_rates.append(backlog.records / raw_copy(pg, chunks, f"distwal_keyed_{rep}", keyed=True))
        pg.sql(f"DROP TABLE distwal_raw_{rep}, distwal_keyed_{rep}")
        print(f"postgres: rep {rep + 1}/{scale.reps}: sink {sink_rates[-1]:,.0f}/s, raw {raw_rates[-1]:,.0f}/s",
              file=sys.stderr, flush=True)

    env = clean_env(PGPASSWORD=pg.password)
    serve_pg = serve_rate(pg.url(table="distwal_serve", password=False), small.dir, base, small.records, env)
    serve_sqlite = serve_rate(os.path.join(base, "serve.db"), small.dir, base, small.records, env)

    sink, raw, keyed = statistics.median(sink_rates), statistics.median(raw_rates), statistics.median(keyed_rates)
    ratio = raw / sink
    rows = [
        ("raw limit: prebuilt rows COPYed with psycopg, no key, no fence", f"{raw:,.0f}", "1.00", ""),
        ("the same, into a table with the sink's (writer, seq) primary key", f"{keyed:,.0f}", f"{raw / keyed:.2f}",
         "what the key alone costs"),
        ("Sender -> PostgreSQL sink (fence + COPY, one commit per batch)", f"{sink:,.0f}", f"{ratio:.2f}",
         f"within {TARGET_RATIO}x of the raw limit: {verdict(ratio <= TARGET_RATIO)}; "
         f">= {TARGET_RATE:,}/s: {verdict(sink >= TARGET_RATE)}"),
        ("Sender -> `distwal serve --db FILE.db` (SQLite)", f"{serve_sqlite:,.0f}", "", ""),
        ("Sender -> `distwal serve --db postgresql://...`", f"{serve_pg:,.0f}", "",
         f"{serve_pg / serve_sqlite:.2f}x SQLite serve"),
    ]
    report = Report()
    report.text(f"{backlog.records:,} records ({scale.writers} writers, 109-byte records) drained by the Sender in "
                f"batches of {BATCH_RECORDS:,}, median of {scale.reps} interleaved repetition(s); PostgreSQL "
                f"{pg.sql('SHOW server_version')[0][0]} on 127.0.0.1, fsync on; `serve` cases: {small.records:,} "
                "records.")
    report.table(["case", "records/s", "raw limit / case", "note"], rows, align="lrrl")
    report.text("Per repetition (sink / raw / keyed): " + ", ".join(
        f"{s:,.0f} / {r:,.0f} / {k:,.0f}" for s, r, k in zip(sink_rates, raw_rates, keyed_rates)))
    print(json.dumps({"sink": sink_rates, "raw": raw_rates, "keyed": keyed_rates, "serve_pg": serve_pg, "serve_sqlite": serve_sqlite}),
          file=sys.stderr)
    return report.markdown()

