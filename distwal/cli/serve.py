"""`distwal serve [--db PATH] [--host H] [--port P]`: the reference ingest server.

If DISTWAL_TOKEN (or the variable named by --token-env) is set, requests must carry it
as a bearer token. The token is read from the environment, never from the command line.

--db takes a SQLite file or a postgresql:// URL (the PostgreSQL sink's table: several
serve processes can share one database). Give its password through PGPASSWORD or
~/.pgpass rather than the command line, where other users of the machine can read it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from .._exceptions import ConfigError
from .._server import IngestServer
from .._signals import start_background_thread


def run(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distwal serve", description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="distwal-serve.db",
                        help="SQLite file, or postgresql://[user@]host[:port]/db[?table=NAME], to store records in")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8787, help="port (default 8787; 0 picks a free one)")
    parser.add_argument("--token-env", default="DISTWAL_TOKEN", help="environment variable holding the token")
    opts = parser.parse_args(args)
    token = os.environ.get(opts.token_env) or None
    try:
        server = IngestServer(opts.db, opts.host, opts.port, token)
    except ConfigError as exc:
        print(f"distwal serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"distwal serve: cannot listen on {opts.host}:{opts.port}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"distwal serve: listening on {server.url} (db {server.store.path})", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    start_background_thread(server.serve_forever, "distwal-serve")
    while not stop.wait(0.5):  # a timeout: a signal that lands just before the wait is not lost
        pass
    server.shutdown()
    server.server_close()
    return 0
