"""`distwal drain [DIR] [--sink URL] [--timeout S]`: deliver everything logged so far.

Takes leadership (waiting for it), notes each writer's last durable seq, adopts dead
writers (never live ones), and sends. Exit 0 once everything up to those marks is
acknowledged, 1 at the timeout. Without --sink and DISTWAL_SINK it sends to the sink the
directory recorded; a sink that contradicts it is a usage error at once (exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable

from .._config import ENV_SINK, Config, _redact, public_url
from .._exceptions import ConfigError, LeaderTimeout
from .._files import check_dir
from .._preflight import check_open_sink
from ..launch.run import delivery_line
from ..leader.election import read_lease, recorded_sink
from ..leader.lead import lead
from ..leader.sender import Sender
from ._common import require_run_dir, resolve_dir


def run(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distwal drain", description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", help="the distwal directory (default: $DISTWAL_DIR or ./.distwal)")
    parser.add_argument("--sink", help="sink URL; must match the one the directory recorded (default: $DISTWAL_SINK, "
                        "else the recorded sink, else the directory's SQLite file)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before giving up (default 300)")
    opts = parser.parse_args(args)

    root = require_run_dir(resolve_dir(opts.dir))
    check_dir(root)
    config = Config.load(dir=root, sink=sink_for(root, opts.sink))
    deadline = time.monotonic() + opts.timeout
    started: float | None = None
    marks: dict[str, int] | None = None
    while True:  # a lease lost to a stall (or to another leader) is taken back until the deadline
        try:
            with lead(config, kind="drain", timeout=max(0.0, deadline - time.monotonic()),
                      waiting=_waiting(root, config.sink)) as sender:
                if started is None:
                    started = time.monotonic()
                    # Only now, as the leader, and through the leader's own sink: the SQLite sink
                    # is opened by the leader alone.
                    print(f"distwal drain: {check_open_sink(sender.sink, config.sink)[1]}", file=sys.stderr)
                sender.roster.discover()
                if marks is None:
                    marks = sender.roster.pending_marks()
                    print(f"distwal drain: leading {root} with epoch {sender.lease.epoch}; {len(marks)} writers, "
                          f"{sum(marks.values())} records up to their marks", file=sys.stderr)
                else:
                    print(f"distwal drain: leading again with epoch {sender.lease.epoch}", file=sys.stderr)
                outcome = _send_through(sender, marks, deadline, opts.timeout, root)
                if outcome == "delivered":
                    state = {"acked_records": sender.health.acked_records, "writers": len(marks)}
                    dead = f", {sender.health.dead_letters} kept as dead letters" if sender.health.dead_letters else ""
                    line = delivery_line(config, True, state, time.monotonic() - started, opts.timeout)
                    print(f"distwal: {line}{dead}", file=sys.stderr)
        except LeaderTimeout:
            leader = _live_leader(root)
            if leader:
                print(f"distwal drain: another process leads {root}: {leader}, still after {opts.timeout:.0f}s; "
                      "stop it or let it finish, then retry", file=sys.stderr)
            else:
                print(f"distwal drain: could not take leadership of {root} within {opts.timeout:.0f}s "
                      "(no lease is held: see `distwal status` and the log above)", file=sys.stderr)
            return 1
        if outcome != "lost":
            return 0 if outcome == "delivered" else 1


def _waiting(root: str, sink: str) -> Callable[[], None]:
    """Between attempts to lead: refuse a sink recorded since we looked, and say once who leads."""
    announced = False

    def waiting() -> None:
        nonlocal announced
        recorded = recorded_sink(root)
        if recorded is not None and public_url(recorded) != public_url(sink):  # recorded since we looked
            raise ConfigError(_contradiction(root, recorded, sink))
        leader = _live_leader(root)
        if leader and not announced:
            print(f"distwal drain: waiting for {leader} to end its lease", file=sys.stderr)
            announced = True

    return waiting


def _send_through(sender: Sender, marks: dict[str, int], deadline: float, timeout: float, root: str) -> str:
    """Send until the drain rule holds for `marks`: "delivered", "lost" (leadership), or "failed"."""
    outcome = sender.run(lambda: False, lambda: deadline, marks)
    if outcome == "drained":
        return "delivered"
    if outcome == "deadline" or time.monotonic() >= deadline:
        left = sender.roster.records_left(marks)
        print(f"distwal drain: not everything was delivered: timeout after {timeout:.0f}s; sink state "
              f"{sender.health.state}: {sender.health.last_error}; {left} records left in {root}, "
              f"delivered when the sink takes them: distwal drain {root}", file=sys.stderr)
        return "failed"
    print(f"distwal drain: lost leadership ({sender.lost}); taking it back", file=sys.stderr)
    return "lost"


def sink_for(root: str, given: str | None) -> str | None:
    """The sink to drain into: --sink, else DISTWAL_SINK, else the one the directory recorded
    (None: the default). A given sink that contradicts the recorded one is a ConfigError."""
    recorded = recorded_sink(root)
    wanted = given or os.environ.get(ENV_SINK) or None
    if wanted is None:
        return recorded
    if recorded is not None and public_url(wanted) != public_url(recorded):  # a password may differ
        raise ConfigError(_contradiction(root, recorded, wanted))
    return wanted


def _contradiction(root: str, recorded: str, wanted: str) -> str:
    return (f"{root} ships to {_redact(recorded)} (recorded by its first leader), not {_redact(wanted)}: "
            f"drop --sink and unset {ENV_SINK} to drain into the recorded sink, or use another directory")


def _live_leader(root: str) -> str | None:
    """Who holds the lease now, in words (kind, host, pid, epoch); None when nobody does."""
    lease: dict[str, Any] | None = read_lease(root)
    if lease is None or lease.get("released"):
        return None
    return (f"{lease.get('kind') or 'a process'} on {lease.get('host')} pid {lease.get('pid')} "
            f"(epoch {lease.get('epoch')})")
