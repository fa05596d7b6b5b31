"""`distwal status [DIR] [--json] [--watch]`: per-writer table of a directory.

Reads the directory without taking any lock, during a job or after it.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from .._status import status
from ._common import require_run_dir, resolve_dir


def run(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distwal status", description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", help="the distwal directory (default: $DISTWAL_DIR or ./.distwal)")
    parser.add_argument("--json", action="store_true", help="print the status as JSON (schema: docs/STATUS.md)")
    parser.add_argument("--watch", action="store_true", help="refresh every --interval seconds until Ctrl-C")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes with --watch")
    opts = parser.parse_args(args)
    root = require_run_dir(resolve_dir(opts.dir))

    if opts.json and not opts.watch:
        sys.stdout.buffer.write(orjson.dumps(status(root), option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    from rich.console import Console
    from rich.live import Live

    console = Console(width=None if sys.stdout.isatty() else 120)  # a pipe gets whole rows
    if not opts.watch:
        console.print(render(status(root)))
        return 0
    with Live(render(status(root)), console=console, refresh_per_second=4) as live:
        while True:
            time.sleep(opts.interval)
            live.update(render(status(root)))


def render(report: dict[str, Any]) -> Any:
    """A rich renderable: the writers table, then leader, sink and totals."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"distwal {report['dir']}", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    right = {"rank", "try", "pid", "records", "acked", "pending", "beat age"}
    for column in ("rank", "try", "host", "pid", "state", "records", "acked", "pending", "beat age", "writer"):
        table.add_column(column, justify="right" if column in right else "left", no_wrap=True)
    styles = {"live": "green", "finished": "cyan", "adopted": "yellow", "dead": "red", "stale": "red"}
    for w in report["writers"]:
        table.add_row(
            _rank(w), _dash(w["attempt"]), str(w["host"]), str(w["pid"]), Text(w["state"], style=styles.get(w["state"], "")),
            str(w["records"]), str(w["acked_seq"]), f"{w['pending_records']} ({_bytes(w['pending_bytes'])})",
            _secs(w["heartbeat_age"]), _short(w["writer"]),
        )
    for h in report["history"]:
        table.add_row(
            _rank(h), _dash(h["attempt"]), str(h["host"]), str(h["pid"]), Text(f"{h['state']}, done", style="dim"),
            str(h["records"]), str(h["acked_seq"]), "0", "-", Text(_short(str(h["writer"])), style="dim"),
        )
    lines: list[Any] = [table]
    leader = report["leader"]
    if leader:
        who = (f"epoch {leader['epoch']}, {leader['kind'] or 'rank'} {_short(str(leader['owner']))} on "
               f"{leader['host']} pid {leader['pid']}, lease renewed {_secs(leader['heartbeat_age'])} ago")
        gone = not leader["alive"]
        lines.append(Text(f"leader: none now (last: {who})" if gone else f"leader: {who}"))
    else:
        lines.append(Text("leader: none yet"))
    sender = report["sender"] or {}
    sink_line = f"sink: {report['sink'] or 'not recorded yet'}"
    if sender:
        sink_line += (f"  state {sender.get('state')}, {sender.get('acked_records', 0)} records acknowledged "
                      f"by epoch {sender.get('epoch')}, {sender.get('errors', 0)} errors")
        if sender.get("last_error"):
            sink_line += f", last: {sender['last_error']}"
    lines.append(Text(sink_line))
    if report.get("locks_note"):
        lines.append(Text(str(report["locks_note"])))
    totals = report["totals"]
    lines.append(Text(
        f"totals: {totals['writers']} writers on disk, {len(report['history'])} done; {totals['records']} records, "
        f"{totals['pending_records']} pending ({_bytes(totals['pending_bytes'])}); dead letters "
        f"{report['dead_letters']}; quarantined {_bytes(report['quarantined_bytes'])}"
    ))
    return Group(*lines)


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _rank(row: dict[str, Any]) -> str:
    rank, local = row.get("rank"), row.get("local_rank")
    if rank is None:
        return "-"
    return f"{rank}" if local is None else f"{rank} ({local})"


def _short(writer_id: str) -> str:
    """The random suffix: enough to tell writers apart in a table; --json has the full id."""
    return writer_id.rsplit("-", 1)[-1]


def _secs(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)
