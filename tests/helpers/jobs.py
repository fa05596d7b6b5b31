"""Whole jobs under `distwal run`: start the sidecar, read what ranks acknowledged, read the sink.

    with run_job(tmp_path, wal_dir, ["python", "job.py"]) as job:
        job.wait_for("ready")
        code = job.wait(60)                 # the exit code of `distwal run`
    rows = sink_rows(wal_dir)               # D/collected.db, every column
    assert_acked_in_sink_once(rows, job.acks(), finished={...})

Job scripts start with procs.PRELUDE plus ACK_PRELUDE: `logged(w, record)` logs through
writer `w` (sync mode: log returns once the record is durable) and then reports
`ack <writer> <seq> <record as compact JSON>` on stdout in one write, so the parent knows
exactly which records were acknowledged, by which writer, under which seq.

`distwal run` starts CMD in a session of its own, and torchrun or a killed sidecar can
leave orphans: run_job marks every process of the job with a unique environment variable
(inherited by CMD, its ranks and their sender processes) and, on leaving, SIGKILLs every
process that carries the mark, whoever its parent is now, and reaps the sidecar.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import PRELUDE, Child, child_env

MARK = "DWTEST_JOB"  # not DISTWAL_*: nothing in distwal may strip it from a child's environment

ACK_PRELUDE = '''\
def logged(w, record):
    """Log `record` through writer `w`; report it as acknowledged once log() returned."""
    seq = w.log(record)
    emit("ack", w.id, seq, json.dumps(record, separators=(",", ":"), sort_keys=True))
    return seq
'''

COLUMNS = ("writer", "seq", "ts", "host", "pid", "rank", "run", "local_rank", "attempt", "data")


def write_script(workdir: str | os.PathLike[str], name: str, body: str) -> Path:
    """PRELUDE + ACK_PRELUDE + `body` as workdir/name (importable by spawn as __main__)."""
    path = Path(workdir) / name
    path.write_text(PRELUDE + ACK_PRELUDE + textwrap.dedent(body))
    return path


def job_env(wal_dir: str | os.PathLike[str] | None = None, **extra: str) -> dict[str, str]:
    """A clean environment (no DISTWAL_*/launcher variables) with the sender enabled."""
    return child_env(wal_dir, sender=True, **extra)


class Job(Child):
    """`distwal run ... -- CMD` (or any distwal command) as a child; stdout holds CMD's lines too."""

    mark: str = ""

    def acks(self) -> dict[str, dict[int, Any]]:
        """{writer: {seq: record}} of every `ack` line: the records whose log() returned."""
        return parse_acks(self.lines_with("ack"))

    def reap(self) -> None:
        kill_marked(self.mark)
        super().reap()


def parse_acks(lines: list[Any]) -> dict[str, dict[int, Any]]:
    out: dict[str, dict[int, Any]] = defaultdict(dict)
    for line in lines:  # procs.Line objects or plain strings
        _, writer, seq, record = getattr(line, "text", line).split(" ", 3)
        assert int(seq) not in out[writer], f"log() returned seq {seq} twice for writer {writer}"
        out[writer][int(seq)] = json.loads(record)
    return dict(out)


@contextmanager
def run_cli_child(
    workdir: str | os.PathLike[str], args: list[str], env: dict[str, str], name: str = "distwal"
) -> Iterator[Job]:
    """`python -m distwal ARGS...` in its own session, marked; every marked process killed on exit."""
    with _marked_child(workdir, [sys.executable, "-m", "distwal", *args], env, name) as job:
        yield job


@contextmanager
def run_python(
    workdir: str | os.PathLike[str], script: str | os.PathLike[str], args: list[str], env: dict[str, str]
) -> Iterator[Job]:
    """`python SCRIPT ARGS...` (a write_script file) in its own session, marked, reaped on exit."""
    with _marked_child(workdir, [sys.executable, os.fspath(script), *args], env, "python") as job:
        yield job


@contextmanager
def _marked_child(workdir: str | os.PathLike[str], argv: list[str], env: dict[str, str], name: str) -> Iterator[Job]:
    mark = uuid.uuid4().hex
    popen = subprocess.Popen(
        argv,
        cwd=os.fspath(workdir),
        env={**env, MARK: mark},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    job = Job(popen, Path(f"<{' '.join(argv[1:])}>"))
    job.mark = mark
    print(f"started {name} pid {popen.pid}: {' '.join(argv[1:])}")
    try:
        yield job
    finally:
        job.reap()


@contextmanager
def run_job(
    workdir: str | os.PathLike[str],
    wal_dir: str | os.PathLike[str],
    command: list[str],
    env: dict[str, str] | None = None,
    drain_timeout: float = 60.0,
) -> Iterator[Job]:
    """`distwal run --dir wal_dir --drain-timeout S -- command`; reaped (with every descendant) on exit."""
    args = ["run", "--dir", os.fspath(wal_dir), "--drain-timeout", str(drain_timeout), "--", *command]
    with run_cli_child(workdir, args, job_env() if env is None else env, name="distwal run") as job:
        yield job


def marked_pids(mark: str) -> list[int]:
    """Every process (of ours) whose environment carries MARK=mark."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid != os.getpid() and proc.environ().get(MARK) == mark:
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


def kill_marked(mark: str) -> None:
    if not mark:
        return
    for pid in marked_pids(mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# -- the SQLite sink -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    writer: str
    seq: int
    ts: float
    host: str
    pid: int
    rank: int | None
    run: str | None
    local_rank: int | None
    attempt: int | None
    data: Any


def sink_rows(wal_dir: str | os.PathLike[str], db: str | os.PathLike[str] | None = None) -> list[Row]:
    """Every row of the records table of D/collected.db (read-only; [] if there is no file yet)."""
    path = os.fspath(db) if db is not None else os.path.join(os.fspath(wal_dir), "collected.db")
    if not os.path.exists(path):
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        try:
            rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM records").fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
    finally:
        conn.close()
    return [Row(*row[:-1], json.loads(row[-1])) for row in rows]


def by_writer(rows: list[Row]) -> dict[str, dict[int, Row]]:
    """{writer: {seq: row}}; fails if a (writer, seq) is stored twice."""
    out: dict[str, dict[int, Row]] = defaultdict(dict)
    for row in rows:
        assert row.seq not in out[row.writer], f"({row.writer}, {row.seq}) stored more than once"
        out[row.writer][row.seq] = row
    return dict(out)


def assert_acked_in_sink_once(
    rows: list[Row],
    acks: dict[str, dict[int, Any]],
    finished: set[str] | frozenset[str] = frozenset(),
    context: str = "",
) -> None:
    """Every acknowledged record is stored exactly once under its (writer, seq), with its data;
    each writer's stored seqs are 1..n with nothing else: n == its last ack for a writer in
    `finished`, last ack <= n <= last ack + 1 otherwise (one log() call may have been in flight
    when it died: durable, but never reported). No rows of writers that acknowledged nothing."""
    stored = by_writer(rows)
    unknown = sorted(set(stored) - set(acks))
    assert not unknown, f"the sink holds writers that acknowledged nothing: {unknown} {context}"
    for writer, acked in acks.items():
        got = stored.get(writer, {})
        missing = sorted(set(acked) - set(got))
        assert not missing, (
            f"{writer}: {len(missing)} of {len(acked)} acknowledged records missing from the sink, "
            f"first seqs {missing[:10]}; stored {len(got)} {context}"
        )
        wrong = [(seq, got[seq].data, data) for seq, data in acked.items() if got[seq].data != data]
        assert not wrong, f"{writer}: stored data differs from what was logged (seq, stored, logged) {wrong[:3]} {context}"
        n = max(got)
        assert sorted(got) == list(range(1, n + 1)), f"{writer}: stored seqs are not 1..{n} {context}"
        last = max(acked)
        if writer in finished:
            assert n == last, f"{writer} finished after seq {last}, but the sink holds 1..{n} {context}"
        else:
            assert last <= n <= last + 1, f"{writer}: last ack {last}, the sink holds 1..{n} {context}"


__all__ = [
    "ACK_PRELUDE",
    "COLUMNS",
    "MARK",
    "Job",
    "Row",
    "assert_acked_in_sink_once",
    "by_writer",
    "job_env",
    "kill_marked",
    "marked_pids",
    "parse_acks",
    "run_cli_child",
    "run_job",
    "run_python",
    "sink_rows",
    "write_script",
]
