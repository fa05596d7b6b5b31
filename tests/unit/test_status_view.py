"""The status table as text (distwal.cli._status_view): it fits 80 columns by dropping
columns by priority and shortening the end last; --wide keeps everything; the first failure
is named in words above the rows. The real terminal: tests/process/test_ends.py (tmux)."""

from __future__ import annotations

import time
from typing import Any

from distwal.cli._status_view import COLUMNS, describe_failure, end_word, render

HOST = "gpu-node-with-a-rather-long-hostname.cluster.example.org"


def _end(reason: str, detail: str, ts: float, code: int | None = None, sig: str | None = None) -> dict[str, Any]:
    return {"reason": reason, "detail": detail, "code": code, "signal": sig, "ts": ts}


def _writer(rank: int, end: dict[str, Any] | None, run: str = "job-2026-11-30-a", state: str = "finished") -> dict:
    return {
        "writer": f"{HOST[:40]}-0a1b2c3d-4026531836-{4000 + rank}-1795999918910-{rank:08x}",
        "rank": rank, "local_rank": rank % 8, "host": HOST, "pid": 4000 + rank, "run": run, "attempt": 0,
        "state": state, "records": 123456 + rank, "durable_seq": 123456 + rank, "acked_seq": 120000,
        "pending_records": 3456 + rank, "pending_bytes": 345678, "dead_letters": 0, "dropped": 0,
        "heartbeat_age": 12.5, "error": None, "started": 1.0, "end": end,
    }


def _report(writers: list[dict], history: list[dict] | None = None) -> dict[str, Any]:
    from distwal._ends import first_failure

    history = history or []
    return {
        "dir": "/shared/scratch/project/experiments/very/deep/path/to/a/distwal/directory/run-0001",
        "now": time.time(), "sink": "http://ingest.example.org:8080/v1/ingest", "domain": "d",
        "leader": {"epoch": 3, "owner": "sidecar-host-1", "kind": "sidecar", "host": HOST, "pid": 17,
                   "renewals": 9, "heartbeat_age": 0.4, "alive": True},
        "sender": {"epoch": 3, "state": "retrying", "acked_records": 1000, "errors": 2,
                   "last_error": "connection refused by ingest.example.org:8080 after 3 attempts"},
        "writers": writers, "history": history, "first_failure": first_failure(writers + history),
        "runs": sorted({w["run"] for w in writers + history}), "dead_letters": 0, "quarantined_bytes": 0,
        "totals": {"writers": len(writers), "records": 1, "pending_records": 1, "pending_bytes": 1,
                   "acked_records": 1},
    }


def _job(ts: float) -> list[dict]:
    return [
        _writer(0, _end("signal", "SIGTERM", ts + 2, sig="SIGTERM")),
        _writer(1, _end("exception", "RuntimeError: boom at 40 while reading shard 17 of the training set", ts, 1)),
        _writer(2, _end("lost", "gone", ts + 1)),
        _writer(3, None, state="live"),
        _writer(4, _end("exit", "exit code 3", ts + 3, 3)),
    ]


def _rows(text: str) -> list[str]:
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["rank", "state", "end"])
    return lines[header: header + 6]


def test_at_80_columns_every_line_fits_and_every_rank_shows_its_end():
    ts = time.time()
    text = render(_report(_job(ts)), width=80)
    too_long = [line for line in text.splitlines() if len(line) > 80]
    assert not too_long, f"lines over 80 columns: {too_long}\n{text}"
    header, *rows = _rows(text)
    assert [row.split()[0] for row in rows] == ["0", "1", "2", "3", "4"], text
    for row, word in zip(rows, ["SIGTERM", "RuntimeError: boom", "lost", "-", "exit 3"]):
        assert word in row, f"{word!r} not in {row!r}\n{text}"
    # the lowest priorities went first: the attempt and the pid, never rank, state or end
    assert "try" not in header.split() and "pid" not in header.split() and "records" in header.split(), header


def test_the_first_failure_is_named_above_the_rows():
    ts = time.time()
    text = render(_report(_job(ts)), width=80)
    lines = text.splitlines()
    expected = f"rank 1 failed first: RuntimeError: boom at 40 while reading shard 17 of the training set, " \
               f"{time.strftime('%H:%M:%S', time.localtime(ts))}"
    start = next(i for i, line in enumerate(lines) if line.startswith("rank 1 failed first"))
    header = lines.index(_rows(text)[0])
    joined = " ".join(line.strip() for line in lines[start:header])  # wrapped to 80 columns
    assert start < header and joined == expected, f"{expected!r} not above the rows:\n{text}"


def test_first_failure_in_words_for_each_reason():
    ts = 1795999920.0
    clock = time.strftime("%H:%M:%S", time.localtime(ts))
    base = {"writer": "h-1-2-3-4-abcdef01", "host": "h", "ts": ts}
    assert describe_failure({**base, "rank": 1, "reason": "exception", "detail": "RuntimeError: boom at 40"}) == \
        f"rank 1 failed first: RuntimeError: boom at 40, {clock}"
    assert describe_failure({**base, "rank": None, "reason": "signal", "detail": "SIGTERM"}) == \
        f"writer abcdef01 failed first: SIGTERM, {clock}"
    assert describe_failure({**base, "rank": 2, "reason": "lost", "detail": "x"}).endswith(
        f"last sign of life {clock}")


def test_end_words():
    assert end_word(None) == "-"
    assert end_word(_end("exit", "exit code 3", 1.0, 3)) == "exit 3"
    assert end_word(_end("signal", "SIGINT", 1.0, sig="SIGINT")) == "SIGINT"
    assert end_word(_end("finished", "finish()", 1.0)) == "finished"
    assert len(end_word(_end("exception", "E: " + "x" * 100, 1.0))) == 30
    assert len(end_word(_end("exception", "E: " + "x" * 100, 1.0), wide=True)) == 103


def test_wide_keeps_every_column_and_the_full_writer_ids():
    writers = _job(time.time())
    text = render(_report(writers), width=80, wide=True)
    header = _rows(text)[0].split()
    assert {c.header.split()[0] for c in COLUMNS if c.key != "run"} <= set(header), header
    for w in writers:
        assert w["writer"] in text


def test_a_run_column_only_when_the_rows_span_several_runs():
    ts = time.time()
    one = render(_report(_job(ts)), width=120)
    assert "run" not in _rows(one)[0].split(), one
    writers = _job(ts)
    writers[0]["run"] = "job-2026-11-30-b"
    several = render(_report(writers), width=120)
    assert "run" in _rows(several)[0].split(), several
    assert "job-2026-11…" in several  # run ids are shortened to 12 columns


def test_narrow_terminal_shortens_the_end_last():
    text = render(_report(_job(time.time())), width=40)
    header = _rows(text)[0].split()
    assert header == ["rank", "state", "end"], text
    assert all(len(line) <= 40 for line in _rows(text)), text


def test_times_of_other_days_carry_their_date():
    from distwal.cli._status_view import clock

    now = time.time()
    assert clock(now) == time.strftime("%H:%M:%S", time.localtime(now))
    assert clock(now - 3 * 86400) == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now - 3 * 86400))
