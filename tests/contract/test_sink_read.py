"""Sink.read(): what a sink stored, read back, for the sinks distwal can read (SQLite, JSONL).

Each record exactly once, ordered by ts, then writer and seq, with the run/rank/since
filters; across SQLite's read pages too (a small page, many records sharing one ts); a
sink that cannot be read back says so.
"""

from __future__ import annotations

import orjson
import pytest

from distwal._envelope import envelope_prefix
from distwal.sinks import Batch, Chunk, MockSink
from distwal.sinks import sqlite as sqlite_sink
from distwal.sinks.http import HTTPSink
from distwal.sinks.jsonl import JSONLSink
from distwal.sinks.sqlite import SQLiteSink

pytestmark = pytest.mark.timeout(60)

WRITERS = {"w-a": ("job-1", 0), "w-b": ("job-1", 1), "w-c": ("job-2", 0)}


def batch(epoch: int = 1) -> Batch:
    """Three writers, 40 records each; every 4 records share one ts across all writers."""
    chunks = []
    for writer, (run, rank) in WRITERS.items():
        meta = {"host": "node1", "pid": 7, "rank": rank, "run": run, "local_rank": rank, "attempt": 0}
        prefix = envelope_prefix(writer, meta)
        seqs = range(1, 41)
        lines = [orjson.dumps({"w": writer, "seq": s, "loss": "NaN" if s == 5 else s / 3}) for s in seqs]
        chunks.append(Chunk(writer, meta, prefix, 1, [1000.0 + (s // 4) for s in seqs], lines))
    return Batch(epoch, "dom", tuple(chunks))


@pytest.fixture(params=["sqlite", "jsonl"])
def sink(request, tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_sink, "READ_PAGE", 7)  # many pages, page edges inside runs of equal ts
    made = SQLiteSink(str(tmp_path / "r.db")) if request.param == "sqlite" else JSONLSink(str(tmp_path / "r.jsonl"))
    made.write(batch())
    made.write(batch())  # a resent batch: stored once (SQLite), or a copy read back once (JSONL)
    yield made
    made.close()


def keys(records):
    return [(r["ts"], r["writer"], r["seq"]) for r in records]


def test_read_returns_every_record_once_in_ts_writer_seq_order(sink):
    records = list(sink.read())
    assert len(records) == 120
    assert keys(records) == sorted(keys(records)) and len(set(keys(records))) == 120
    first = records[0]
    assert first == {"writer": "w-a", "seq": 1, "ts": 1000.0, "host": "node1", "pid": 7, "rank": 0, "run": "job-1",
                     "local_rank": 0, "attempt": 0, "data": {"w": "w-a", "seq": 1, "loss": 1 / 3}}
    assert [r["data"]["loss"] for r in records if r["seq"] == 5] == ["NaN"] * 3


def test_read_filters_by_run_rank_and_since(sink):
    assert {r["writer"] for r in sink.read(run="job-1")} == {"w-a", "w-b"}
    assert {r["writer"] for r in sink.read(rank=0)} == {"w-a", "w-c"}
    assert {r["writer"] for r in sink.read(run="job-2", rank=0)} == {"w-c"}
    late = list(sink.read(since=1008.0))
    assert late and all(r["ts"] >= 1008.0 for r in late) and len(late) == 3 * (40 - 31)
    assert list(sink.read(run="nope")) == []


def test_a_sink_that_cannot_be_read_back_says_which():
    with pytest.raises(NotImplementedError, match="mock sinks cannot be read back"):
        MockSink(lambda b: None).read()
    http = HTTPSink("http://127.0.0.1:9/ingest")
    try:
        with pytest.raises(NotImplementedError, match="http sinks cannot be read back"):
            http.read()
    finally:
        http.close()
