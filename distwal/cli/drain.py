"""`distwal drain [DIR] [--sink URL] [--timeout S]`: deliver everything logged so far.

Takes leadership (waiting for it), notes each writer's last durable seq, adopts dead
writers (never live ones), and sends. Exit 0 once everything up to those marks is
acknowledged, 1 at the timeout.
"""

from __future__ import annotations

import argparse
import sys
import time

from .._config import Config
from .._election import LeaseWatch, release_lease
from .._layout import Identity, Modes, check_dir, ensure_domain
from .._leader import Elector, build_sender, owner_of
from .._sender import LostLeadership, Sender
from ._common import require_run_dir, resolve_dir

POLL = 0.2  # seconds between attempts to take leadership


def run(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distwal drain", description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", help="the distwal directory (default: $DISTWAL_DIR or ./.distwal)")
    parser.add_argument("--sink", help="sink URL (default: $DISTWAL_SINK, else the directory's SQLite file)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before giving up (default 300)")
    opts = parser.parse_args(args)

    root = require_run_dir(resolve_dir(opts.dir))
    check_dir(root)
    config = Config.load(dir=root, sink=opts.sink)
    domain = ensure_domain(root, Modes.for_config(config.shared_group))
    identity = Identity.of_this_process()
    owner = owner_of(identity, "drain")
    elector = Elector(config, identity, owner, domain, start=lambda epoch: None)  # type: ignore[arg-type,return-value]
    deadline = time.monotonic() + opts.timeout
    marks: dict[str, int] | None = None
    while True:  # a lease lost to a stall (or to another leader) is taken back until the deadline
        if not _take_leadership(elector, root, deadline, config.lease_s):
            return 1
        sender = build_sender(config, elector.epoch, owner, domain, identity)
        try:
            sender._discover()
            if marks is None:
                marks = sender.pending_marks()
                print(f"distwal drain: leading {root} with epoch {elector.epoch}; {len(marks)} writers, "
                      f"{sum(marks.values())} records up to their marks", file=sys.stderr)
            else:
                print(f"distwal drain: leading again with epoch {elector.epoch}", file=sys.stderr)
            outcome = _send_through(sender, marks, deadline, opts.timeout)
        finally:
            sender.close()
            release_lease(root, elector.epoch, elector.modes)
            elector.lock.release()
        if outcome != "lost":
            return 0 if outcome == "delivered" else 1


def _take_leadership(elector: Elector, root: str, deadline: float, lease_s: float) -> bool:
    waiting = LeaseWatch(root, lease_s)
    while not elector.acquire():
        if time.monotonic() >= deadline:
            print(f"distwal drain: another process leads {root} (lease moving for {waiting.silent_for():.0f}s "
                  "without a change counted); stop it or wait, then retry", file=sys.stderr)
            return False
        time.sleep(POLL)
    return True


def _send_through(sender: Sender, marks: dict[str, int], deadline: float, timeout: float) -> str:
    """Send until everything up to `marks` is acknowledged: "delivered", "lost" (leadership), or "failed"."""
    while True:
        try:
            sent = sender.cycle()
        except LostLeadership as exc:
            sent, sender.lease.lost = 0, sender.lease.lost or str(exc)
        if not sent and sender.delivered_through(marks) and not sender.settling():
            break  # a pass that found nothing more, and no dead writer left to adopt or remove
        if time.monotonic() >= deadline:
            print(f"distwal drain: not everything was delivered: timeout after {timeout:.0f}s; sink state "
                  f"{sender.health.state}: {sender.health.last_error}", file=sys.stderr)
            return "failed"
        if sender.lease.lost:
            print(f"distwal drain: lost leadership ({sender.lease.lost}); taking it back", file=sys.stderr)
            return "lost"
        if not sent:
            time.sleep(0.05)
    sender.retire()
    print(f"distwal drain: delivered; {sender.health.acked_records} records acknowledged, "
          f"{sender.health.dead_letters} dead letters", file=sys.stderr)
    return "delivered"
