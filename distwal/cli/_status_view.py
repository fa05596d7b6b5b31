"""The status table as plain text that fits a given width.

    distwal /shared/run1  (12:03:09)
    rank 1 failed first: RuntimeError: boom at 40, 12:03:04
     rank  state     end                  records  pending  host  writer
        0  done      SIGTERM                   57        0  vm    8a1c02ef
        1  done      RuntimeError: boom…       40        0  vm    77d0e415
    leader: none now (last: epoch 1, sidecar ...)

Columns are dropped by priority until the table fits: rank, state and end always stay
(the end is shortened last); then the run (when several runs share the directory), the
writer's short id, records, pending, host, acked, pid, beat age, try. `wide` keeps every
column and the full writer ids. Lines around the table are wrapped to the width.
"""

from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass
from typing import Any

_GAP = "  "
_END_CHARS = 30  # an exception's detail in the end column, before the width squeezes it
_MIN_END = 8  # the end column is never squeezed below this


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    right: bool  # numbers align right
    priority: int  # lower is kept longer; 0..2 are never dropped


COLUMNS = (
    Column("rank", "rank", True, 0),
    Column("state", "state", False, 1),
    Column("end", "end", False, 2),
    Column("run", "run", False, 3),
    Column("writer", "writer", False, 4),
    Column("records", "records", True, 5),
    Column("pending", "pending", True, 6),
    Column("host", "host", False, 7),
    Column("acked", "acked", True, 8),
    Column("pid", "pid", True, 9),
    Column("beat", "beat age", True, 10),
    Column("try", "try", True, 11),
)
_KEEP = 2  # columns with a priority up to this one are never dropped


def render(report: dict[str, Any], width: int | None = None, wide: bool = False) -> str:
    """The whole status view; every line fits `width` columns (None or `wide`: no limit)."""
    limit = None if wide or not width else max(40, width)
    now = report.get("now") or time.time()
    lines = _wrap(f"distwal {report['dir']}  ({clock(now)})", limit)
    failure = report.get("first_failure")
    if failure:
        lines += _wrap(describe_failure(failure), limit)
    several_runs = len({row.get("run") for row in report["writers"] + report["history"]}) > 1
    rows = [_cells(w, False, wide) for w in report["writers"]] + [_cells(h, True, wide) for h in report["history"]]
    if rows:
        lines += table(rows, limit, several_runs)
    else:
        lines.append("no writers")
    lines += _footer(report, limit)
    return "\n".join(lines) + "\n"


def table(rows: list[dict[str, str]], limit: int | None, several_runs: bool = False) -> list[str]:
    """Header and rows, dropping and then shortening columns until they fit `limit`."""
    columns = [c for c in COLUMNS if several_runs or c.key != "run"]
    widths = {c.key: max(len(c.header), *(len(r[c.key]) for r in rows)) for c in columns}

    def total() -> int:
        return sum(widths[c.key] for c in columns) + len(_GAP) * (len(columns) - 1) + 1

    if limit is not None:
        while total() > limit and max(c.priority for c in columns) > _KEEP:
            columns.remove(max(columns, key=lambda c: c.priority))
        excess = total() - limit
        if excess > 0:
            widths["end"] = max(_MIN_END, widths["end"] - excess)
    out = [" " + _GAP.join(_fit(c.header, widths[c.key], c.right) for c in columns)]
    for row in rows:
        out.append(" " + _GAP.join(_fit(row[c.key], widths[c.key], c.right) for c in columns))
    return [line.rstrip() for line in out]


def end_word(end: dict[str, Any] | None, wide: bool = False) -> str:
    """The end column: `-` while running, else one short phrase."""
    if end is None:
        return "-"
    reason = end.get("reason")
    if reason == "exit":
        return f"exit {end.get('code')}"
    if reason == "signal":
        return str(end.get("signal") or "signal")
    if reason == "exception":
        detail = str(end.get("detail") or "exception")
        return detail if wide else _cut(detail, _END_CHARS)
    return str(reason)


def describe_failure(failure: dict[str, Any]) -> str:
    """`rank 1 failed first: RuntimeError: boom at 40, 12:03:04` (the writer's id without a rank)."""
    who = f"rank {failure['rank']}" if failure.get("rank") is not None else f"writer {short_id(str(failure['writer']))}"
    ts = failure.get("ts")
    reason = failure.get("reason")
    if reason == "lost":
        what = "lost (no finish mark: SIGKILL, OOM killer or dead host)"
        when = f", last sign of life {clock(ts)}" if ts is not None else ""
    else:
        what = str(failure.get("detail") or reason)
        when = f", {clock(ts)}" if ts is not None else ""
    return f"{who} failed first: {what}{when}"


def short_id(writer_id: str) -> str:
    """The random suffix: enough to tell writers apart in a table; --wide and --json show the id."""
    return writer_id.rsplit("-", 1)[-1]


def clock(ts: float) -> str:
    """Local time of day; with the date when it is not today (a directory read days later)."""
    when = time.localtime(ts)
    today = time.localtime()[:3] == when[:3]
    return time.strftime("%H:%M:%S" if today else "%Y-%m-%d %H:%M:%S", when)


def _cells(row: dict[str, Any], done: bool, wide: bool) -> dict[str, str]:
    writer = str(row["writer"])
    pending = str(row.get("pending_records", 0))
    if wide and not done:
        pending += f" ({_bytes(row['pending_bytes'])})"
    return {
        "rank": _rank(row),
        "state": "done" if done else str(row["state"]),
        "end": end_word(row.get("end"), wide),
        "run": _dash(row.get("run")) if wide else _cut(_dash(row.get("run")), 12),
        "writer": writer if wide else short_id(writer),
        "records": str(row["records"]),
        "pending": pending,
        "host": _dash(row.get("host")) if wide else _cut(_dash(row.get("host")), 16),
        "acked": str(row["acked_seq"]),
        "pid": _dash(row.get("pid")),
        "beat": "-" if done else _secs(row.get("heartbeat_age")),
        "try": _dash(row.get("attempt")),
    }


def _footer(report: dict[str, Any], limit: int | None) -> list[str]:
    lines: list[str] = []
    leader = report["leader"]
    if leader:
        who = (f"epoch {leader['epoch']}, {leader['kind'] or 'rank'} {short_id(str(leader['owner']))} on "
               f"{leader['host']} pid {leader['pid']}, lease renewed {_secs(leader['heartbeat_age'])} ago")
        lines += _wrap(f"leader: none now (last: {who})" if not leader["alive"] else f"leader: {who}", limit)
    else:
        lines.append("leader: none yet")
    sender = report["sender"] or {}
    sink_line = f"sink: {report['sink'] or 'not recorded yet'}"
    if sender:
        sink_line += (f"  state {sender.get('state')}, {sender.get('acked_records', 0)} records acknowledged "
                      f"by epoch {sender.get('epoch')}, {sender.get('errors', 0)} errors")
        if sender.get("sink_rejected"):  # accepted, then dropped by the sink (OTLP partial_success)
            sink_line += f", {sender['sink_rejected']} rejected by the sink"
        if sender.get("last_error"):
            sink_line += f", last: {sender['last_error']}"
    lines += _wrap(sink_line, limit)
    totals = report["totals"]
    lines += _wrap(
        f"totals: {totals['writers']} writers on disk, {len(report['history'])} done; {totals['records']} records, "
        f"{totals['pending_records']} pending ({_bytes(totals['pending_bytes'])}); dead letters "
        f"{report['dead_letters']}; quarantined {_bytes(report['quarantined_bytes'])}",
        limit,
    )
    return lines


def _wrap(text: str, limit: int | None) -> list[str]:
    if limit is None or len(text) <= limit:
        return [text]
    return textwrap.wrap(text, limit, subsequent_indent="  ", break_on_hyphens=False) or [""]


def _fit(text: str, width: int, right: bool) -> str:
    text = _cut(text, width)
    return text.rjust(width) if right else text.ljust(width)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _rank(row: dict[str, Any]) -> str:
    rank, local = row.get("rank"), row.get("local_rank")
    if rank is None:
        return "-"
    return f"{rank}" if local is None or local == rank else f"{rank} ({local})"


def _secs(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
