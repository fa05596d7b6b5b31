"""A real PostgreSQL server for tests: Debian's initdb/pg_ctl, a cluster in a temp dir.

    with PostgresServer.start_new() as pg:       # 127.0.0.1, a free port, stopped after
        url = pg.url(table="t1")                 # postgresql://distwal:PASSWORD@127.0.0.1:PORT/distwal?table=t1
        pg.sql("SELECT count(*) FROM t1")
        pg.crash(); pg.start()                   # pg_ctl stop -m immediate, then start again
        pg.terminate_backends()                  # pg_terminate_backend on every client connection

When the tests run as root the cluster belongs to the `postgres` user (PostgreSQL refuses
to run as root). The server answers only on 127.0.0.1 with scram-sha-256 passwords; the
role `distwal` owns the database `distwal`. No mocks: a real server and real crashes.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any, Iterator

PASSWORD_ENV = "PGPASSWORD"


def pg_bin() -> str | None:
    """The newest /usr/lib/postgresql/<ver>/bin holding initdb and pg_ctl, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(found[-1]) if found else None


def unavailable() -> str | None:
    """Why no server can be started here (None when one can)."""
    if pg_bin() is None:
        return "PostgreSQL is not installed: apt-get install postgresql (.ci/run does)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install 'distwal[postgres]'"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a `postgres` user to own the cluster"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One throwaway cluster: initdb, start, crash, restart, stop, and an admin connection."""

    def __init__(self, fsync: bool = False) -> None:
        bin_dir = pg_bin()
        assert bin_dir is not None, unavailable()
        self.bin = bin_dir
        self.fsync = fsync
        self.root = tempfile.mkdtemp(prefix="distwal-pg-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.port = _free_port()
        self.user, self.database = "distwal", "distwal"
        self.password = "pw-" + secrets.token_hex(12)
        self._owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self._owner is not None:
            os.chown(self.root, self._owner.pw_uid, self._owner.pw_gid)
        os.chmod(self.root, 0o700)

    # -- lifecycle -----------------------------------------------------------------------

    @classmethod
    def start_new(cls, fsync: bool = False) -> PostgresServer:
        server = cls(fsync=fsync)
        try:
            server.initdb()
            server.start()
            server.admin(f"CREATE ROLE {server.user} LOGIN PASSWORD '{server.password}'",
                         f"CREATE DATABASE {server.database} OWNER {server.user} ENCODING 'UTF8' TEMPLATE template0")
        except BaseException:
            server.destroy()
            raise
        return server

    def initdb(self) -> None:
        # The superuser authenticates over the cluster's own socket (peer/trust, local only);
        # every TCP client needs a scram-sha-256 password.
        self._run([f"{self.bin}/initdb", "-D", self.data, "-U", "postgres", "-E", "UTF8", "--no-locale",
                   "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"])

    def start(self, timeout: float = 60.0) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                   f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=60 -c shared_buffers=64MB "
                   "-c track_commit_timestamp=on")  # commit times: tests check the order epochs committed in
        self._run([f"{self.bin}/pg_ctl", "start", "-w", "-t", str(int(timeout)), "-D", self.data,
                   "-l", self.log, "-o", options])

    def crash(self) -> None:
        """pg_ctl stop -m immediate: every server process quits without a checkpoint, like a crash."""
        self._run([f"{self.bin}/pg_ctl", "stop", "-m", "immediate", "-w", "-D", self.data])

    def stop(self) -> None:
        self._run([f"{self.bin}/pg_ctl", "stop", "-m", "fast", "-w", "-D", self.data], check=False)

    def destroy(self) -> None:
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.destroy()

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        user = self._owner.pw_name if self._owner is not None else None
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        done = subprocess.run(argv, user=user, env=env, cwd=self.root, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({done.returncode}): {done.stderr.strip()}\n"
                               f"{self.server_log()[-2000:]}")
        return done

    def server_log(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    # -- clients -------------------------------------------------------------------------

    def url(self, table: str | None = None, password: bool = True, user: str | None = None,
            database: str | None = None, **params: str) -> str:
        """A sink URL for this server (the password in it unless password=False)."""
        who = user or self.user
        auth = f"{who}:{self.password}@" if password else f"{who}@"
        query = dict(params)
        if table:
            query["table"] = table
        tail = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
        return f"postgresql://{auth}127.0.0.1:{self.port}/{database or self.database}{tail}"

    def connect(self, superuser: bool = False) -> Any:
        import psycopg

        if superuser:  # over the unix socket, where the superuser needs no password
            return psycopg.connect(host=self.root, port=self.port, user="postgres", dbname=self.database,
                                   autocommit=True)
        return psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                               dbname=self.database, autocommit=True)

    def admin(self, *statements: str) -> None:
        import psycopg

        with psycopg.connect(host=self.root, port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cur = conn.execute(query, args or None)
            return list(cur.fetchall()) if cur.description else []

    def terminate_backends(self) -> int:
        """pg_terminate_backend on every client session but this one: the connection cut."""
        with self.connect(superuser=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            ).fetchall()
        return sum(1 for (done,) in rows if done)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sql("SELECT 1")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def running_server() -> Iterator[PostgresServer]:
    """The body of the session fixture `postgres_server`: one server for every test that asks.

    Skips (with the reason) where no server can run; under CI=true that is a failure instead,
    since .ci/run installs the package.
    """
    import pytest

    problem = unavailable()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"no PostgreSQL for the tests: {problem}")
        pytest.skip(problem)
    with PostgresServer.start_new() as server:
        yield server


def fresh_table() -> str:
    """A table name no other test uses (tests share one server and database)."""
    return f"t_{secrets.token_hex(6)}"
