"""sqlite:///path/to.db: the embedded default sink, and the store behind `distwal serve`.

Records are deduplicated on (writer, seq), and every write is fenced by epoch in the same
transaction: a batch from a leader older than the newest one seen for its domain is
refused (StaleEpoch). Rollback journal, not WAL mode: WAL needs shared memory, which NFS
does not give. Only the leader opens the file.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import urllib.parse
from typing import Any, Iterable, Iterator, Sequence

import orjson

from .._exceptions import ConfigError, SinkRejected, SinkUnavailable, StaleEpoch
from ._base import Batch, Sink

logger = logging.getLogger("distwal")

COLUMNS = ("writer", "seq", "ts", "host", "pid", "rank", "run", "local_rank", "attempt", "data")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    writer TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL, host TEXT, pid INTEGER,
    rank INTEGER, run TEXT, local_rank INTEGER, attempt INTEGER, data TEXT NOT NULL,
    PRIMARY KEY (writer, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fences (domain TEXT PRIMARY KEY, epoch INTEGER NOT NULL);
"""
_INSERT = f"INSERT OR IGNORE INTO records ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"

Row = Sequence[Any]


class RecordStore:
    """A SQLite file of records, deduplicated on (writer, seq) and fenced by epoch per domain."""

    def __init__(self, path: str, busy_timeout: float = 5.0) -> None:
        self.path = os.path.abspath(path)
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            raise ConfigError(f"sqlite sink {self.path}: directory {parent} does not exist; create it first")
        if not os.path.exists(self.path):
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
            except OSError as exc:
                raise ConfigError(f"cannot create sqlite sink {self.path}: {exc.strerror}") from None
        if _on_nfs(self.path):
            logger.warning("distwal: sqlite sink %s is on NFS; SQLite locking there is unreliable", self.path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = sqlite3.connect(
            self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=DELETE")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def write(self, domain: str, epoch: int, rows: Iterable[Row]) -> int:
        """Insert rows unless `epoch` is stale for `domain`; return how many were new."""
        with self._lock:
            db = self._db
            if db is None:
                raise SinkUnavailable(f"sqlite {self.path}: closed")
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    found = db.execute("SELECT epoch FROM fences WHERE domain = ?", (domain,)).fetchone()
                    if found is not None and found[0] > epoch:
                        raise StaleEpoch(f"epoch {epoch} is stale: the sink has seen epoch {found[0]}")
                    if found is None or found[0] < epoch:
                        db.execute("INSERT OR REPLACE INTO fences (domain, epoch) VALUES (?, ?)", (domain, epoch))
                    before = db.total_changes
                    db.executemany(_INSERT, rows)
                    inserted = db.total_changes - before
                    db.execute("COMMIT")
                    return inserted
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise SinkUnavailable(f"sqlite {self.path}: {exc}") from exc

    def check(self) -> None:
        """Take the write lock and let it go: proves the file (and its journal's directory)
        writable without storing anything."""
        with self._lock:
            if self._db is None:
                raise SinkUnavailable(f"sqlite {self.path}: closed")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("CREATE TABLE IF NOT EXISTS _distwal_check (x INTEGER)")
                self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise SinkUnavailable(f"sqlite {self.path}: not writable: {exc}") from None

    def count(self) -> int:
        with self._lock:
            if self._db is None:
                raise SinkUnavailable(f"sqlite {self.path}: closed")
            return int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def close(self) -> None:
        """Close the file; calls that race with it get SinkUnavailable, never a closed handle."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


READ_PAGE = 20_000  # rows per read transaction: a reader never holds the writer off for long


def read_records(
    path: str, run: str | None = None, rank: int | None = None, since: float | None = None
) -> Iterator[dict[str, Any]]:
    """The records stored in the SQLite file at `path` as envelopes, ordered by ts, writer, seq.

    Read-only, in pages of READ_PAGE rows, each its own short transaction: a reader that
    holds a lock while its caller works would keep the leader from committing (rollback
    journal). A missing file holds no records."""
    if not os.path.exists(path):
        return
    where, args = ["1"], list[Any]()
    for column, value in (("run", run), ("rank", rank)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if since is not None:
        where.append("ts >= ?")
        args.append(since)
    # coalesce: a row without a time (possible in a `distwal serve` store) sorts first, never vanishes
    query = (f"SELECT {', '.join(COLUMNS)} FROM records WHERE {' AND '.join(where)} "
             f"AND (coalesce(ts, -1e308), writer, seq) > (?, ?, ?) "
             f"ORDER BY coalesce(ts, -1e308), writer, seq LIMIT {READ_PAGE}")
    after: tuple[Any, ...] = (-float("inf"), "", 0)
    # A URI, for mode=ro: one leading slash (a path may come as //abs from sqlite:////abs), quoted.
    uri = "file:" + urllib.parse.quote("/" + os.path.abspath(path).lstrip("/")) + "?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise SinkUnavailable(f"sqlite {path}: cannot open: {exc}") from None
    try:
        while True:
            try:
                rows = db.execute(query, (*args, *after)).fetchall()
            except sqlite3.Error as exc:
                raise SinkUnavailable(f"sqlite {path}: cannot read: {exc}") from None
            for row in rows:
                record = dict(zip(COLUMNS, row))
                record["data"] = orjson.loads(record["data"])
                yield record
            if len(rows) < READ_PAGE:
                return
            last = rows[-1]
            after = (-1e308 if last[2] is None else last[2], last[0], last[1])  # ts, writer, seq
    finally:
        db.close()


class SQLiteSink(Sink):
    """Ship into a local SQLite file (the default: <DISTWAL_DIR>/collected.db)."""

    scheme = "sqlite"

    def __init__(self, path: str) -> None:
        self.store = RecordStore(path)

    def write(self, batch: Batch) -> None:
        self.store.write(batch.domain, batch.epoch, _rows(batch))

    def check(self) -> None:
        self.store.check()

    def read(
        self, run: str | None = None, rank: int | None = None, since: float | None = None
    ) -> Iterator[dict[str, Any]]:
        return read_records(self.store.path, run, rank, since)

    def close(self) -> None:
        self.store.close()


def _rows(batch: Batch) -> Iterable[Row]:
    for chunk in batch.chunks:
        m = chunk.meta
        # Metadata comes from a file in the shared directory: store it only as the types the
        # columns promise, so one odd writer cannot stall a whole batch forever.
        host, run = _text(m.get("host")), _text(m.get("run"))
        pid, rank, local_rank, attempt = (_integer(m.get(k)) for k in ("pid", "rank", "local_rank", "attempt"))
        seq = chunk.first_seq
        for ts, line in zip(chunk.ts, chunk.lines):
            try:
                data = line.decode()
            except UnicodeDecodeError:
                # Not what a writer wrote (orjson writes UTF-8): refuse it, so the sender
                # bisects to it and keeps it as a dead letter.
                raise SinkRejected(f"{chunk.writer} seq {seq}: the record is not UTF-8 JSON") from None
            yield (chunk.writer, seq, ts, host, pid, rank, run, local_rank, attempt, data)
            seq += 1


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _integer(value: Any) -> int | None:
    return value if type(value) is int and -(2**63) <= value < 2**63 else None


def _on_nfs(path: str) -> bool:
    """True when `path` lies on an NFS mount (per /proc/mounts; False when unknown)."""
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return False
    best, fstype = "", ""
    for fields in mounts:
        if len(fields) >= 3 and (path == fields[1] or path.startswith(fields[1].rstrip("/") + "/")):
            if len(fields[1]) > len(best):
                best, fstype = fields[1], fields[2]
    return fstype.startswith("nfs")
