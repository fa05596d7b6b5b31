"""The reference ingest server behind `distwal serve`: protocol v1 into SQLite or PostgreSQL.

Built on the standard library's ThreadingHTTPServer speaking HTTP/1.1 (keep-alive),
which is all a loopback or LAN reference peer needs and adds no dependency. It
deduplicates on (writer, seq), rejects stale epochs per domain with 409, refuses a batch
holding a malformed envelope with 422 (senders bisect to it), and checks the bearer token
when one is configured. Every request is logged in the `requests` table (epoch, domain,
start and end times, status), so tests can prove that two leaders never overlapped.

With `db` a postgresql:// URL the records go into the PostgreSQL sink's table instead
(sinks/postgres.py), fence included: several servers on one database dedupe and fence
together, because both live in the database. No request log is kept there.

Subclass IngestServer and override handle_batch() to inject faults.
"""

from __future__ import annotations

import gzip
import hmac
import io
import logging
import sqlite3
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable

import orjson

from ._exceptions import SinkPaused, SinkRejected, SinkUnavailable, StaleEpoch
from ._signals import start_background_thread
from .sinks.sqlite import RecordStore, Row

logger = logging.getLogger("distwal")

MAX_BODY = 256 << 20  # bytes, after decompression
_REQUESTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    started REAL, ended REAL, domain TEXT, epoch INTEGER, envelopes INTEGER, new INTEGER, status INTEGER
);
"""

Reply = tuple[int, dict[str, str], bytes]


class IngestServer(ThreadingHTTPServer):
    """An HTTP server storing protocol-v1 batches in a SQLite file."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, db_path: str, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        self.store: RecordStore | PostgresRows
        self.token = token
        self._log_lock = threading.Lock()
        self._log_db: sqlite3.Connection | None = None
        if is_postgres_url(db_path):
            self.store = PostgresRows(db_path)
        else:
            self.store = RecordStore(db_path)
            self._log_db = sqlite3.connect(self.store.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._log_db.executescript(_REQUESTS_SCHEMA)
        try:
            super().__init__((host, port), _Handler)
        except OSError:
            self.store.close()
            raise

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/ingest"

    def handle_batch(self, headers: Any, body: bytes) -> Reply:
        """Validate, fence and store one request; return (status, headers, body)."""
        if self.token is not None:
            supplied = headers.get("Authorization", "")
            if not hmac.compare_digest(supplied.encode(), f"Bearer {self.token}".encode()):
                return _reply(401, "missing or wrong bearer token")
        try:
            epoch = int(headers.get("Distwal-Epoch", ""))
            domain = headers["Distwal-Domain"]
        except (KeyError, ValueError):
            return _reply(400, "Distwal-Epoch and Distwal-Domain headers are required")
        if headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                body = _gunzip(body)
            except (OSError, EOFError, zlib.error):
                return _reply(400, "body is not valid gzip")
            except ValueError:
                return _reply(413, f"body larger than {MAX_BODY} bytes")
        rows, error = _parse(body)
        if error is not None:
            return _reply(422, error)
        if not rows:  # a probe (Sink.check): address and token are fine; nothing to store or fence
            return 200, {"Content-Type": "application/json"}, orjson.dumps({"accepted": 0, "new": 0})
        started = time.time()
        try:
            new = self.store.write(domain, epoch, rows)
        except StaleEpoch as exc:
            self._log(started, domain, epoch, len(rows), 0, 409)
            return _reply(409, str(exc))
        except SinkRejected as exc:
            return _reply(422, str(exc))
        except (SinkUnavailable, SinkPaused) as exc:  # the database is down or refuses us: not the sender's fault
            return 503, {"Retry-After": "1", "Content-Type": "application/json"}, orjson.dumps({"error": str(exc)})
        self._log(started, domain, epoch, len(rows), new, 200)
        return 200, {"Content-Type": "application/json"}, orjson.dumps({"accepted": len(rows), "new": new})

    def _log(self, started: float, domain: str, epoch: int, envelopes: int, new: int, status: int) -> None:
        with self._log_lock:
            if self._log_db is None:
                return
            self._log_db.execute(
                "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?)",
                (started, time.time(), domain, epoch, envelopes, new, status),
            )

    def server_close(self) -> None:
        """Stop listening, then close the files under their locks: handler threads still
        running get 503 from then on instead of touching a closed connection."""
        super().server_close()
        self.store.close()
        with self._log_lock:
            if self._log_db is not None:
                self._log_db.close()
                self._log_db = None


def is_postgres_url(db: str) -> bool:
    return db.split("://", 1)[0].lower() in ("postgresql", "postgres") and "://" in db


class PostgresRows:
    """The PostgreSQL table behind `serve --db postgresql://...`, with the SQLite store's interface."""

    def __init__(self, url: str) -> None:
        from .sinks.postgres import PostgresStore

        self.pg = PostgresStore(url)
        self.path = self.pg.where  # for messages: no password

    def write(self, domain: str, epoch: int, rows: Iterable[Row]) -> int:
        from .sinks.postgres import rows_payload

        payload = rows_payload(epoch, rows)
        return self.pg.write(domain, epoch, lambda: (payload,))

    def count(self) -> int:
        return self.pg.count()

    def close(self) -> None:
        self.pg.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # a reply is headers then body: never wait for a delayed ACK
    server: IngestServer

    def do_POST(self) -> None:  # noqa: N802 - the http.server naming
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send(*_reply(411, "Content-Length is required"))
            return
        if length > MAX_BODY:
            self._send(*_reply(413, f"body larger than {MAX_BODY} bytes"))
            self.close_connection = True
            return
        body = self.rfile.read(length)
        self._send(*self.server.handle_batch(self.headers, body))

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") in ("", "/health", "/healthz"):
            try:
                count = self.server.store.count()
            except SinkUnavailable as exc:
                self._send(*_reply(503, str(exc)))
                return
            self._send(200, {"Content-Type": "application/json"}, orjson.dumps({"records": count}))
        else:
            self._send(*_reply(404, "POST batches to this server; GET /health for a count"))

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("serve: " + format, *args)


def _reply(status: int, message: str) -> Reply:
    return status, {"Content-Type": "application/json"}, orjson.dumps({"error": message})


def _gunzip(body: bytes) -> bytes:
    out = gzip.GzipFile(fileobj=io.BytesIO(body)).read(MAX_BODY + 1)
    if len(out) > MAX_BODY:
        raise ValueError("too large")
    return out


def _parse(body: bytes) -> tuple[list[tuple[Any, ...]], str | None]:
    rows = []
    for number, line in enumerate(body.splitlines(), 1):
        if not line.strip():
            continue
        try:
            env = orjson.loads(line)
        except orjson.JSONDecodeError:
            return [], f"line {number}: not JSON"
        if not isinstance(env, dict):
            return [], f"line {number}: an envelope must be a JSON object"
        writer, seq = env.get("writer"), env.get("seq")
        if not isinstance(writer, str) or not writer or type(seq) is not int or seq < 1 or "data" not in env:
            return [], f"line {number}: an envelope needs writer (string), seq (integer >= 1) and data"
        rows.append((
            writer, seq, env.get("ts"), env.get("host"), env.get("pid"), env.get("rank"), env.get("run"),
            env.get("local_rank"), env.get("attempt"), orjson.dumps(env["data"]).decode(),
        ))
    return rows, None


def serve(db_path: str, host: str = "127.0.0.1", port: int = 8787, token: str | None = None) -> IngestServer:
    """Start an IngestServer on a background thread and return it (call shutdown() to stop)."""
    server = IngestServer(db_path, host, port, token)
    start_background_thread(server.serve_forever, "distwal-serve")
    return server
