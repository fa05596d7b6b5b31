"""`distwal read [DIR] [--run R] [--rank N] [--since T] [--json|--csv]`: the delivered records.

Reads them back from the sink the directory ships to (SQLite, JSONL; `--sink URL` reads
another, e.g. the SQLite file of a `distwal serve`), ordered by time. What is still on disk,
not yet delivered, is `distwal cat`'s.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import sys
from typing import Any, Iterator

import orjson

from .._config import _redact
from .._exceptions import SinkError
from .._readback import read, sink_of
from ._common import resolve_dir
from ._time import parse_since

ENVELOPE_COLUMNS = ("ts", "run", "rank", "local_rank", "attempt", "host", "pid", "writer", "seq")


def run(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distwal read", description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", help="the distwal directory (default: $DISTWAL_DIR or ./.distwal)")
    parser.add_argument("--run", help="only this run id")
    parser.add_argument("--rank", type=int, help="only this rank")
    parser.add_argument("--since", help="only records logged since: 2h, 7d, 2026-11-30T01:00 or a unix time")
    parser.add_argument("--sink", help="read this sink URL instead of the directory's")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="one JSON envelope per line")
    form.add_argument("--csv", action="store_true", help="CSV: the envelope's fields, then one column per data field")
    opts = parser.parse_args(args)

    root = resolve_dir(opts.dir)
    since = parse_since(opts.since) if opts.since else None
    url = opts.sink or sink_of(root)[1]
    records = read(root, run=opts.run, rank=opts.rank, since=since, sink=opts.sink)
    out = sys.stdout
    try:
        if opts.json:
            count = _write_json(records, out.buffer)
        elif opts.csv:
            count = _write_csv(records, out)
        else:
            count = _write_text(records, out)
    except SinkError as exc:
        print(f"distwal read: {exc}", file=sys.stderr)
        return 1
    out.flush()
    if count == 0:
        filters = opts.run is not None or opts.rank is not None or since is not None
        what = "no delivered record matches" if filters else "no records delivered yet"
        print(f"distwal read: {what} in {_redact(url)}; what is still on disk: distwal cat {root}", file=sys.stderr)
    return 0


def _write_json(records: Iterator[dict[str, Any]], out: Any) -> int:
    count = 0
    for record in records:
        out.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        count += 1
    return count


def _write_text(records: Iterator[dict[str, Any]], out: Any) -> int:
    count = 0
    for r in records:
        rank = "-" if r["rank"] is None else r["rank"]
        out.write(f"{_when(r['ts'])}  {r['run'] or '-'}  rank {rank}  seq {r['seq']}  "
                  f"{orjson.dumps(r['data']).decode()}\n")
        count += 1
    return count


def _write_csv(records: Iterator[dict[str, Any]], out: Any) -> int:
    """The data fields become columns, so every record is read before the header is written."""
    rows = list(records)
    fields: dict[str, None] = {}
    for r in rows:
        if isinstance(r["data"], dict):
            fields.update(dict.fromkeys(k for k in r["data"] if k not in fields))
    writer = csv.writer(out)
    # A data field named like an envelope field ("rank" logged by the job) gets a data. prefix.
    writer.writerow([*ENVELOPE_COLUMNS, *(f"data.{k}" if k in ENVELOPE_COLUMNS else k for k in fields)])
    for r in rows:
        data = r["data"] if isinstance(r["data"], dict) else {}
        writer.writerow([*(r.get(c) for c in ENVELOPE_COLUMNS), *(_cell(data.get(k)) for k in fields)])
    return len(rows)


def _cell(value: Any) -> Any:
    return orjson.dumps(value).decode() if isinstance(value, (dict, list)) else value


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "-"
    return datetime.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="milliseconds")
