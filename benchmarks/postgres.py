"""The PostgreSQL benchmark: records/s from a backlog into PostgreSQL, against the raw limit.

One run starts its own server (Debian's postgresql, tests/helpers/postgres.py, fsync on) and
measures, interleaved over repetitions, each from the same backlog (writers x N records of
append.py's 109-byte record, written with DISTWAL_DISABLE_SENDER=1 by ship.py's backlog role):

  sink    the library's Sender, led as `distwal drain` leads (build_sender), draining the
          backlog through the PostgreSQL sink (one transaction per 20,000-record batch:
          fence, COPY, commit) into a fresh table
  raw     the raw limit: the very rows the sink stored, read back with COPY ... TO STDOUT
          ahead of time, then COPYed with psycopg into a table without a key, in batches of
          the same size, one commit each: no dedupe, no fence, no reading of segment files;
          and the same into a table with the sink's primary key (what dedupe costs the server)
  serve   `distwal serve --db postgresql://...` against `distwal serve --db FILE.db` (SQLite),
          each fed by the Sender through HTTPSink (gzip, the default), from a smaller backlog

Run it through run.py (`python benchmarks/run.py [--short] postgres`) or alone:
`python benchmarks/postgres.py [--short]`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from ship import PY, Child, clean_env, hard_copy, make_backlog  # noqa: E402

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


def drain(root: str, url: str, expected: int) -> float:
    """Lead `root` as `distwal drain` does and send everything to `url`; seconds until all acked."""
    from distwal._config import Config
    from distwal._files import ensure_domain
    from distwal._layout import Identity, Modes
    from distwal.leader.elector import Elector, build_sender, owner_of

    config = Config.load(dir=root, sink=url, env={})
    domain = ensure_domain(root, Modes.for_config(False))
    identity = Identity.of_this_process()
    owner = owner_of(identity, "bench")
    elector = Elector(config, identity, owner, domain, start=lambda epoch: None)  # type: ignore[arg-type,return-value]
    deadline = time.monotonic() + 30
    while not elector.acquire():
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not lead {root}")
        time.sleep(0.05)
    sender = build_sender(config, elector.epoch, owner, domain, identity)
    try:
        t0 = time.perf_counter()
        deadline = time.monotonic() + 900
        while sender.health.acked_records < expected:
            if not sender.cycle():
                if time.monotonic() > deadline or sender.health.errors > 20:
                    raise RuntimeError(f"acked {sender.health.acked_records} of {expected}: "
                                       f"{sender.health.last_error}")
                time.sleep(0.005)
        return time.perf_counter() - t0
    finally:
        sender.close()
        elector.lock.release()


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


def serve_rate(db: str, backlog_dir: str, base: str, expected: int, log: Any, env: dict[str, str]) -> float:
    serve = Child([], env, log, argv=[PY, "-m", "distwal", "serve", "--db", db, "--port", "0"])
    try:
        url = serve.read(timeout=60)["text"].split("listening on ", 1)[1].split()[0]
        copy = tempfile.mkdtemp(dir=base, prefix="serve-")
        os.rmdir(copy)
        hard_copy(backlog_dir, copy)
        seconds = drain(copy, url, expected)
        shutil.rmtree(copy, ignore_errors=True)
        return expected / seconds
    finally:
        serve.proc.send_signal(signal.SIGTERM)
        serve.close()


def main(short: bool = False) -> str:
    from helpers.postgres import PostgresServer, unavailable

    problem = unavailable()
    if problem is not None:
        raise RuntimeError(f"cannot run: {problem}")
    scale = SHORT if short else FULL
    base = tempfile.mkdtemp(prefix="distwal-bench-pg-")
    log = open(os.path.join(base, "children.log"), "w")
    try:
        with PostgresServer.start_new(fsync=True) as pg:
            return _run(scale, base, log, pg)
    finally:
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def _run(scale: Scale, base: str, log: Any, pg: Any) -> str:
    backlog = make_backlog(os.path.join(base, "tpl"), scale.writers, scale.per_writer, log)
    small = make_backlog(os.path.join(base, "tpl-serve"), scale.writers, scale.serve_per_writer, log)
    print(f"postgres: backlogs written ({backlog.records:,} and {small.records:,} records)", file=sys.stderr)
    sink_rates: list[float] = []
    raw_rates: list[float] = []
    keyed_rates: list[float] = []
    for rep in range(scale.reps):
        table = f"distwal_bench_{rep}"
        copy = os.path.join(base, f"run-{rep}")
        hard_copy(backlog.dir, copy)
        os.sync()
        seconds = drain(copy, pg.url(table=table), backlog.records)
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
    serve_pg = serve_rate(pg.url(table="distwal_serve", password=False), small.dir, base, small.records, log, env)
    serve_sqlite = serve_rate(os.path.join(base, "serve.db"), small.dir, base, small.records, log, env)

    sink, raw, keyed = statistics.median(sink_rates), statistics.median(raw_rates), statistics.median(keyed_rates)
    ratio = raw / sink
    rows = [
        ("raw limit: prebuilt rows COPYed with psycopg, no key, no fence", f"{raw:,.0f}", "1.00", ""),
        ("the same, into a table with the sink's (writer, seq) primary key", f"{keyed:,.0f}", f"{raw / keyed:.2f}",
         "what the key alone costs"),
        ("Sender -> PostgreSQL sink (fence + COPY, one commit per batch)", f"{sink:,.0f}", f"{ratio:.2f}",
         f"within {TARGET_RATIO}x of the raw limit: {'met' if ratio <= TARGET_RATIO else 'NOT met'}; "
         f">= {TARGET_RATE:,}/s: {'met' if sink >= TARGET_RATE else 'NOT met'}"),
        ("Sender -> `distwal serve --db FILE.db` (SQLite)", f"{serve_sqlite:,.0f}", "", ""),
        ("Sender -> `distwal serve --db postgresql://...`", f"{serve_pg:,.0f}", "",
         f"{serve_pg / serve_sqlite:.2f}x SQLite serve"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    head = ("case", "records/s", "raw/sink", "note")
    widths = [max(w, len(h)) for w, h in zip(widths, head)]
    print()
    for r in (head, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    md = [f"{backlog.records:,} records ({scale.writers} writers, 109-byte records) drained by the Sender in "
          f"batches of {BATCH_RECORDS:,}, median of {scale.reps} interleaved repetition(s); PostgreSQL "
          f"{pg.sql('SHOW server_version')[0][0]} on 127.0.0.1, fsync on; `serve` cases: {small.records:,} records.",
          "", "| case | records/s | raw limit / case | note |", "|---|---:|---:|---|"]
    md += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    md.append("")
    md.append("Per repetition (sink / raw / keyed): " + ", ".join(
        f"{s:,.0f} / {r:,.0f} / {k:,.0f}" for s, r, k in zip(sink_rates, raw_rates, keyed_rates)))
    print(json.dumps({"sink": sink_rates, "raw": raw_rates, "keyed": keyed_rates, "serve_pg": serve_pg, "serve_sqlite": serve_sqlite}),
          file=sys.stderr)
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main("--short" in sys.argv[1:])
