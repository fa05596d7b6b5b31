"""postgresql://... (and postgres://...): records into a PostgreSQL table, with psycopg 3.

    DISTWAL_SINK='postgresql://alice@db.example.org:5432/metrics?table=distwal_records&sslmode=verify-full'

The URL is a libpq connection URI plus one parameter of ours, `table` (default
distwal_records). Everything else (sslmode, sslrootcert, connect_timeout, ...) goes to
libpq unchanged; the password comes from the URL or from libpq's own PGPASSWORD and
~/.pgpass, and never reaches a message, a log line or a file (messages show the URL with
its secrets masked). TLS is verified: for a server off this machine, sslmode=verify-full
(with the system's CA store unless ~/.postgresql/root.crt exists) unless the URL or
PGSSLMODE says otherwise.

Tables, created if missing:

    <table>        writer text (collation "C"), seq bigint, ts double precision, host text, pid integer,
                   rank integer, run text, local_rank integer, attempt integer, data jsonb,
                   epoch bigint NOT NULL, PRIMARY KEY (writer, seq)
    <table>_fence  domain text PRIMARY KEY, epoch bigint NOT NULL

One batch is one transaction: the domain's fence row is raised to the batch's epoch first
(and the row stays locked until the commit, so two leaders' batches never interleave); a
fence already above the batch's epoch refuses it (StaleEpoch: the sender stops leading).
Then the records are inserted, duplicates of (writer, seq) ignored, and the commit is the
acknowledgement. A commit whose reply is lost is retried and finds its rows there: the
primary key makes the retry a no-op.

Records PostgreSQL's jsonb refuses although they are valid JSON: a string holding \\u0000
(jsonb cannot store NUL). Such a record is stored losslessly as
`{"$distwal_raw_json": "<the record's JSON text>"}` (read() unwraps it; in SQL:
`(data->>'$distwal_raw_json')` is the original text). Anything else PostgreSQL refuses in a
record (a bare NaN that is not JSON, bytes that are not UTF-8) raises SinkRejected, so the
sender bisects the batch down to that record and keeps it as a dead letter; the others go in.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from itertools import chain, repeat
from typing import Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from .._exceptions import ConfigError, SinkPaused, SinkRejected, SinkUnavailable, StaleEpoch
from ._base import Batch, Sink

try:  # an optional dependency: pip install 'distwal[postgres]'
    import psycopg
    from psycopg import sql
except ImportError:  # pragma: no cover - checked when a sink is built
    psycopg = None  # type: ignore[assignment]

logger = logging.getLogger("distwal")

DEFAULT_TABLE = "distwal_records"
RAW_KEY = "$distwal_raw_json"  # the lossless form of a record jsonb refuses (see the module docstring)
CONNECT_TIMEOUT = 10  # seconds, unless the URL says connect_timeout=...
TCP_USER_TIMEOUT_MS = 60_000  # unless the URL says tcp_user_timeout=...
# The order rows are sent in by COPY: the writer's constant fields first, so a chunk's
# prefix is formatted once and each record adds only seq, ts and data.
COPY_COLUMNS = ("writer", "host", "pid", "rank", "run", "local_rank", "attempt", "epoch", "seq", "ts", "data")
PIECE = 2000  # rows per piece of COPY text handed to the connection
READ_COLUMNS = ("writer", "seq", "ts", "host", "pid", "rank", "run", "local_rank", "attempt")

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,56}")
_NEEDS_ESCAPE = re.compile(rb"[\\\n\r\t]")
_COPY_ESCAPES = {b"\\": b"\\\\", b"\n": b"\\n", b"\r": b"\\r", b"\t": b"\\t"}
# SQLSTATE classes and codes (PostgreSQL's errcodes): what each failure means for the sender.
_PAUSE_STATES = ("28", "3D", "42", "3F")  # authorization, missing database or schema, privilege/schema errors
_UNAVAILABLE_STATES = ("08", "40", "53", "55", "57", "58", "25")  # connection, serialization, resources,
# lock not available, server shutting down or restarted (57P01-03), read-only after a failover (25006)
_REJECT_STATES = ("22", "23", "54")  # data exceptions, a constraint on a value, a value too large


def require_psycopg() -> None:
    if psycopg is None:
        raise ConfigError(
            "the PostgreSQL sink needs psycopg 3: pip install 'distwal[postgres]' (or pip install 'psycopg[binary]')"
        )


def split_url(url: str) -> tuple[str, str]:
    """(libpq conninfo URI without our `table` parameter, table name); ConfigError if unusable."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigError(f"{url.split('://')[0]!r} is not a PostgreSQL URL: write postgresql://host/db")
    params = parse_qsl(parts.query, keep_blank_values=True)
    tables = [value for key, value in params if key == "table"]
    table = tables[-1] if tables else DEFAULT_TABLE
    if not _TABLE_NAME.fullmatch(table):
        raise ConfigError(
            f"table={table!r} in the PostgreSQL URL is not a plain table name: use letters, digits and _ "
            "(at most 57 characters, not starting with a digit)"
        )
    rest = [(key, value) for key, value in params if key != "table"]
    given = {key for key, _ in rest}
    if "connect_timeout" not in given:
        rest.append(("connect_timeout", str(CONNECT_TIMEOUT)))
    if "tcp_user_timeout" not in given:
        # A server that vanished from the network (no ACK for our data) fails the call after
        # this long instead of blocking the sender for the kernel's 15 minutes of retransmits.
        rest.append(("tcp_user_timeout", str(TCP_USER_TIMEOUT_MS)))
    if _leaves_the_machine(parts.netloc, [v for k, v in rest if k == "host"]):
        # TLS verified, as for HTTP sinks: libpq's own default (sslmode=prefer) takes any
        # certificate and falls back to plain text. The URL or PGSSLMODE can say otherwise.
        if "sslmode" not in given and not os.environ.get("PGSSLMODE"):
            rest.append(("sslmode", "verify-full"))
            if "sslrootcert" not in given and not os.environ.get("PGSSLROOTCERT") and psycopg is not None \
                    and psycopg.pq.version() >= 160000 and not os.path.exists(_USER_ROOT_CERT):
                rest.append(("sslrootcert", "system"))  # the system's CA store, as httpx uses
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment)), table


_USER_ROOT_CERT = os.path.expanduser("~/.postgresql/root.crt")  # libpq's own default CA file
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]", "")


def _leaves_the_machine(netloc: str, host_params: list[str]) -> bool:
    """True when a host of the URL is neither loopback nor a Unix socket directory."""
    hosts = [h.rsplit(":", 1)[0] if not h.startswith("[") else h.split("]")[0] + "]"
             for h in netloc.rsplit("@", 1)[-1].split(",")]
    hosts += [h for value in host_params for h in value.split(",")]
    return any(not (h in _LOOPBACK or h.startswith("/") or h.startswith("%2F")) for h in hosts)


def where(url: str) -> str:
    """The server and database a URL names, for messages: no user, password or parameters."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1] or "localhost"
    return f"postgresql://{host}{parts.path}"


class PostgresStore:
    """A PostgreSQL table of records, deduplicated on (writer, seq) and fenced by epoch per domain.

    Thread-safe (one connection, one lock): the sink and `distwal serve` both use it. A broken
    connection is dropped and the next call connects again, so a restarted or failed-over
    server is picked up without anyone restarting us.
    """

    def __init__(self, url: str) -> None:
        require_psycopg()
        self.conninfo, self.table = split_url(url)
        self.where = where(url)
        self.fence_table = f"{self.table}_fence"
        self._lock = threading.Lock()
        self._conn: Any = None
        self._closed = False
        t, f = sql.Identifier(self.table), sql.Identifier(self.fence_table)
        cols = sql.SQL(", ").join(map(sql.Identifier, COPY_COLUMNS))
        self._schema = [
            sql.SQL(
                # writer in the "C" collation: the key compares bytes instead of a locale's rules
                # (faster, and the same order on every server).
                "CREATE TABLE IF NOT EXISTS {} (writer text COLLATE \"C\" NOT NULL, seq bigint NOT NULL, "
                "ts double precision, "
                "host text, pid integer, rank integer, run text, local_rank integer, attempt integer, "
                "data jsonb, epoch bigint NOT NULL, PRIMARY KEY (writer, seq))"
            ).format(t),
            sql.SQL("CREATE TABLE IF NOT EXISTS {} (domain text PRIMARY KEY, epoch bigint NOT NULL)").format(f),
        ]
        # How rows go in, measured on this 2-core machine with 20,000-record batches (records/s,
        # fsync on; benchmarks/postgres.py has the end-to-end figures):
        #   COPY straight into the table                       162k-246k
        #   COPY into a temporary table, then INSERT ... SELECT
        #   ... ON CONFLICT DO NOTHING                           68k-156k (the rows are written twice)
        #   one INSERT ... SELECT FROM unnest(arrays) ON CONFLICT  48k
        #   executemany(INSERT ... ON CONFLICT DO NOTHING)         42k
        # COPY cannot skip a duplicate: one resent record fails it whole. Duplicates come only
        # after a leader change or a lost commit reply, so COPY straight in under a savepoint is
        # the path, and a unique violation rolls back to the savepoint and takes the slower
        # temporary-table path for that batch, which skips the duplicates.
        self._copy_direct = sql.SQL("COPY {} ({}) FROM STDIN").format(t, cols)
        self._stage = sql.SQL(
            "CREATE TEMPORARY TABLE IF NOT EXISTS distwal_incoming "
            "(LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        ).format(t)
        self._copy_staged = sql.SQL("COPY distwal_incoming ({}) FROM STDIN").format(cols)
        self._move = sql.SQL(
            "INSERT INTO {} ({}) SELECT {} FROM distwal_incoming ON CONFLICT (writer, seq) DO NOTHING"
        ).format(t, cols, cols)
        self._fence = sql.SQL(
            "INSERT INTO {} AS f (domain, epoch) VALUES (%s, %s) "
            "ON CONFLICT (domain) DO UPDATE SET epoch = GREATEST(f.epoch, EXCLUDED.epoch) RETURNING epoch"
        ).format(f)

    # -- writing ---------------------------------------------------------------------------

    def write(self, domain: str, epoch: int, rows: Callable[[], Iterable[bytes]]) -> int:
        """Store rows of COPY text (columns COPY_COLUMNS) unless `epoch` is stale for `domain`.

        `rows()` yields the text in pieces, sent as they are made so the server parses one
        piece while the next is built (it is called again if the batch must take the
        duplicate-skipping path). Returns how many rows were new; raises StaleEpoch, or the
        SinkError for a failure.
        """
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    fence = conn.execute(self._fence, (domain, epoch)).fetchone()[0]
                    if fence > epoch:
                        raise StaleEpoch(f"epoch {epoch} is stale: {self.where} has seen epoch {fence}")
                    with conn.cursor() as cur:
                        try:
                            with conn.transaction():  # a savepoint: a duplicate undoes only the COPY
                                with cur.copy(self._copy_direct) as copy:
                                    for piece in rows():
                                        copy.write(piece)
                            new = int(cur.rowcount)
                        except psycopg.errors.UniqueViolation:
                            with cur.copy(self._copy_staged) as copy:
                                for piece in rows():
                                    copy.write(piece)
                            cur.execute(self._move)
                            new = int(cur.rowcount)
                return new
            except psycopg.Error as exc:
                raise self._mapped(exc) from None

    def count(self) -> int:
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    return int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                        sql.Identifier(self.table))).fetchone()[0])
            except psycopg.Error as exc:
                raise self._mapped(exc) from None

    def _connection(self) -> Any:
        if self._closed:
            raise SinkUnavailable(f"{self.where}: closed")
        if self._conn is not None and not self._conn.closed:
            return self._conn
        self._conn = None
        try:
            conn = psycopg.connect(self.conninfo, autocommit=True, application_name="distwal")
        except psycopg.Error as exc:
            raise self._mapped(exc) from None
        try:
            # Create only what is missing: CREATE TABLE IF NOT EXISTS needs CREATE on the schema
            # even when the table is there, and a role granted just INSERT and SELECT must work.
            names = [sql.Identifier(name).as_string(conn) for name in (self.table, self.fence_table)]
            found = conn.execute("SELECT to_regclass(%s) IS NULL OR to_regclass(%s) IS NULL", names).fetchone()
            if found is None or found[0]:
                for statement in self._schema:
                    conn.execute(statement)
            conn.execute(self._stage)
            conn.autocommit = False
        except psycopg.errors.UniqueViolation:
            # Two processes created the same table at once (CREATE IF NOT EXISTS races in the
            # catalog): the other one won, so the table exists; connect again next time.
            conn.close()
            raise SinkUnavailable(f"{self.where}: table {self.table} was being created concurrently") from None
        except psycopg.Error as exc:
            conn.close()
            raise self._mapped(exc) from None
        self._conn = conn
        return conn

    def _mapped(self, exc: Exception) -> Exception:
        """The SinkError for a psycopg error. The connection is dropped unless the data was at
        fault: after a failover the old one may be open but read-only (25006), and a restarted
        server or a fixed grant is only seen by a new one."""
        state = getattr(exc, "sqlstate", None) or _connect_state(str(exc))
        message = f"{self.where}: {type(exc).__name__}: {_first_line(exc)}"
        error: Exception
        if state is None or state.startswith(_UNAVAILABLE_STATES):
            error = SinkUnavailable(message if state is None else f"{message} (SQLSTATE {state})")
        elif state.startswith(_PAUSE_STATES):
            error = SinkPaused(f"{message} (SQLSTATE {state}): fix the URL, the role or its grants")
        elif state.startswith(_REJECT_STATES):
            error = SinkRejected(f"{message} (SQLSTATE {state})")
        else:
            error = SinkUnavailable(f"{message} (SQLSTATE {state})")
        conn = self._conn
        if conn is not None and (conn.closed or conn.broken or not isinstance(error, SinkRejected)):
            self._conn = None
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close: it is gone either way
                pass
        return error

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- reading ---------------------------------------------------------------------------

    def read(self, run: str | None, rank: int | None, since: float | None) -> Iterator[dict[str, Any]]:
        """Stored records as envelopes, ordered by ts, writer, seq; streamed by a server-side cursor
        on a connection of its own (a long read never holds the writer's lock)."""
        require_psycopg()
        conditions: list[sql.Composable] = [sql.SQL("TRUE")]
        args: list[Any] = []
        for column, value in (("run", run), ("rank", rank)):
            if value is not None:
                conditions.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                args.append(value)
        if since is not None:
            conditions.append(sql.SQL("ts >= %s"))
            args.append(since)
        query = sql.SQL("SELECT {}, data::text FROM {} WHERE {} ORDER BY ts, writer, seq").format(
            sql.SQL(", ").join(map(sql.Identifier, READ_COLUMNS)), sql.Identifier(self.table),
            sql.SQL(" AND ").join(conditions),
        )
        try:
            with psycopg.connect(self.conninfo, application_name="distwal-read") as conn:
                with conn.cursor(name="distwal_read") as cur:
                    cur.itersize = 5000
                    cur.execute(query, args)
                    for row in cur:
                        envelope = dict(zip(READ_COLUMNS, row[:-1]))
                        envelope["data"] = decode_data(row[-1])
                        yield envelope
        except psycopg.errors.UndefinedTable:
            return
        except psycopg.Error as exc:
            raise self._mapped(exc) from None


class PostgresSink(Sink):
    """Ship into a PostgreSQL table (see the module docstring for the schema and guarantees)."""

    scheme = "postgresql"

    def __init__(self, url: str) -> None:
        self.store = PostgresStore(url)

    def write(self, batch: Batch) -> None:
        if not len(batch):
            return
        started = time.perf_counter()
        new = self.store.write(batch.domain, batch.epoch, lambda: batch_rows(batch))
        logger.debug("distwal: %s stored %d of %d records in %.3fs", self.store.where, new, len(batch),
                     time.perf_counter() - started)

    def read(
        self, run: str | None = None, rank: int | None = None, since: float | None = None
    ) -> Iterator[dict[str, Any]]:
        return self.store.read(run, rank, since)

    def close(self) -> None:
        self.store.close()


# -- COPY text ------------------------------------------------------------------------------


def batch_rows(batch: Batch) -> Iterator[bytes]:
    """The batch as COPY text rows (columns COPY_COLUMNS), in pieces of at most PIECE rows;
    per chunk, the writer's constant fields are formatted once."""
    epoch = b"%d" % batch.epoch
    for chunk in batch.chunks:
        if not len(chunk):
            continue
        m = chunk.meta
        head = b"\t".join([
            _field(chunk.writer), _field(_text(m.get("host"))), _field(_integer(m.get("pid"), 31)),
            _field(_integer(m.get("rank"), 31)), _field(_text(m.get("run"))),
            _field(_integer(m.get("local_rank"), 31)), _field(_integer(m.get("attempt"), 31)), epoch,
        ]) + b"\t"
        for start in range(0, len(chunk), PIECE):
            lines = chunk.lines[start:start + PIECE]
            stamps = orjson.dumps(list(chunk.ts[start:start + PIECE]))[1:-1].split(b",")
            first = chunk.first_seq + start
            seqs = orjson.dumps(list(range(first, first + len(lines))))[1:-1].split(b",")
            joined = b"\n".join(lines)
            # `in` and count() run at memchr speed; a regex over the piece cost 4 ms per 2,000 rows.
            if (b"\\u0000" in joined or joined.count(b"\n") != len(lines) - 1 or b"\t" in joined
                    or b"\r" in joined or not _is_utf8(joined)):
                # The rare slow path, record by record: NULs wrapped, odd bytes escaped or refused.
                lines = [_escape(_storable(chunk.writer, first + i, line)) for i, line in enumerate(lines)]
            elif b"\\" in joined:  # orjson's output: only backslashes need escaping for COPY text
                lines = joined.replace(b"\\", b"\\\\").split(b"\n")
            # One join over the fields, no bytes object per row: half the cost of formatting each row.
            yield b"".join(chain.from_iterable(zip(repeat(head), seqs, repeat(b"\t"), stamps, repeat(b"\t"), lines,
                                                   repeat(b"\n"))))


def rows_payload(epoch: int, rows: Iterable[Sequence[Any]]) -> bytes:
    """COPY text for `distwal serve`'s rows: (writer, seq, ts, host, pid, rank, run, local_rank,
    attempt, data as orjson's JSON text), in the order the SQLite store takes them."""
    out = []
    heads: dict[tuple[Any, ...], bytes] = {}  # one writer's envelopes share their constant fields
    epoch_field = b"%d" % epoch
    for writer, seq, ts, host, pid, rank, run, local_rank, attempt, data in rows:
        key = (writer, host, pid, rank, run, local_rank, attempt)
        head = heads.get(key)
        if head is None:
            head = heads[key] = b"\t".join([*(_field(v) for v in key), epoch_field]) + b"\t"
        if "\\u0000" in data:
            data = orjson.dumps({RAW_KEY: data}).decode()
        # orjson wrote `data`: no raw tab or newline in it, only backslashes to escape.
        out.append(b"%s%s\t%s\t%s\n" % (head, _number(seq), _number(ts), data.replace("\\", "\\\\").encode()))
    return b"".join(out)


def _number(value: Any) -> bytes:
    kind = type(value)
    if kind is int:
        return b"%d" % value
    if kind is float:
        return repr(value).encode()  # 'nan' and 'inf' are float8 input PostgreSQL takes
    return _field(value)


def _storable(writer: str, seq: int, line: bytes) -> bytes:
    """A record's JSON as jsonb will take it: NUL-bearing records in their lossless wrapper."""
    try:
        text = line.decode()
    except UnicodeDecodeError:
        # Not what a writer wrote (orjson writes UTF-8): refuse it, so the sender bisects to
        # it and keeps it as a dead letter.
        raise SinkRejected(f"{writer} seq {seq}: the record is not UTF-8 JSON") from None
    if b"\\u0000" in line:
        line = orjson.dumps({RAW_KEY: text})
    return line


def _is_utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _escape(raw: bytes) -> bytes:
    return _NEEDS_ESCAPE.sub(lambda m: _COPY_ESCAPES[m.group()], raw)


def decode_data(text: str) -> Any:
    """A stored `data` value back as the record logged (the lossless wrapper undone)."""
    data = orjson.loads(text)
    if isinstance(data, dict) and len(data) == 1 and isinstance(data.get(RAW_KEY), str):
        return orjson.loads(data[RAW_KEY])
    return data


def _field(value: Any) -> bytes:
    """One COPY text field: \\N for NULL, special characters escaped."""
    if value is None:
        return b"\\N"
    # PostgreSQL text cannot hold NUL; metadata is not the record, so a replacement is fine here.
    return _escape(str(value).replace("\x00", "\ufffd").encode())


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _integer(value: Any, bits: int = 63) -> int | None:
    # Metadata comes from a file in the shared directory: only what the column can hold, so
    # one odd writer cannot stall a whole batch forever.
    return value if type(value) is int and -(2**bits) <= value < 2**bits else None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


_CONNECT_MESSAGES = (
    ("password authentication failed", "28P01"),
    ("no password supplied", "28P01"),
    ("authentication failed", "28000"),
    ("no pg_hba.conf entry", "28000"),
    ("does not exist", "3D000"),  # database "x" does not exist / role "x" does not exist
    ("permission denied", "42501"),
    ("certificate", "08000"),
)


def _connect_state(message: str) -> str | None:
    """libpq reports a failed connection as text only: find the SQLSTATE it stands for."""
    for needle, state in _CONNECT_MESSAGES:
        if needle in message:
            return state
    return None
