"""distwal.status(dir): what a directory holds, read without taking any lock.

Works during a job and after it, on a directory of any age. The result is plain data
(the schema of `distwal status --json`, documented in docs/STATUS.md):

    {"dir", "domain", "now", "sink", "leader", "sender", "writers": [...], "history": [...],
     "first_failure", "runs", "dead_letters", "quarantined_bytes", "totals"}

Every writer row carries "end" (how it ended, null while it runs: see _ends), and
"first_failure" names the earliest-ending writer that did not finish.
"""

from __future__ import annotations

import os
import time
from typing import Any

from . import _files, _layout
from ._config import _redact
from ._cursor import Position, read_cursors
from ._ends import LOST_DETAIL, first_failure, folder_last_sign, make_end, recorded_end, writer_end
from ._folder import WriterFiles, list_folders
from ._layout import ADOPTED, DEADLETTERS, HISTORY, QUARANTINE, SENDER, Identity
from ._marks import Heartbeat, Lease, Meta, Tombstone
from ._segment import last_seq_on_disk
from .leader.election import node_local_locks, read_lease, recorded_sink
from .leader.liveness import probe_process


def status(dir: str | os.PathLike[str], run: str | None = None) -> dict[str, Any]:
    """Per-writer status of a distwal directory, as plain data (see the module docstring).

    With `run`, only the writers of that run id (rows, totals and first_failure alike).
    """
    root = os.path.abspath(os.fspath(dir))
    if not os.path.isdir(os.path.join(root, _layout.WRITERS)):
        from ._exceptions import LayoutError

        raise LayoutError(f"{root} is not a distwal directory (no {_layout.WRITERS}/ inside)")
    now = time.time()
    me = Identity.of_this_process()
    book = read_cursors(root)
    lease = Lease.parse(read_lease(root))
    health = _files.read_root_json(root, SENDER)
    lease_s = (lease.lease_s if lease is not None else None) or 15.0
    writers = []
    for sub, adopted in ((_layout.WRITERS, False), (ADOPTED, True)):
        for files in list_folders(os.path.join(root, sub)):
            writers.append(_writer_row(files, book.get(files.id, Position()), adopted, now, me, lease_s))
    history = [_history_row(t) for t in _tombstones(root)]
    runs = sorted({str(row["run"]) for row in writers + history if row["run"] is not None})
    if run is not None:
        writers = [w for w in writers if w["run"] == run]
        history = [h for h in history if h["run"] == run]
    dead_letters = _count_lines(os.path.join(root, DEADLETTERS))
    leader = None
    if lease is not None:
        leader = {
            "epoch": lease.epoch,
            "owner": lease.owner,
            "kind": lease.kind,
            "host": lease.host,
            "pid": lease.pid,
            "renewals": lease.n,
            "heartbeat_age": _age(now, lease.ts),
            "alive": not lease.released and (_age(now, lease.ts) or 0.0) < lease_s,
        }
    return {
        "dir": root,
        "domain": (_files.read_root_json(root, _layout.DOMAIN) or {}).get("domain"),
        "now": now,
        "sink": _redact(recorded_sink(root) or "") or None,
        "leader": leader,
        "sender": health,
        # Set once a contender held the lock while another owner renewed the lease (issue 11).
        "locks_note": f"locks on {root} are node-local: failover waits a lease" if node_local_locks(root) else None,
        "writers": writers,
        "history": history,
        "first_failure": first_failure(writers + history),
        "runs": runs,  # every run id in the directory (also with `run`)
        "dead_letters": dead_letters,
        "quarantined_bytes": _dir_bytes(os.path.join(root, QUARANTINE)),
        "totals": {
            "writers": len(writers),
            "records": sum(w["records"] for w in writers) + sum(h["records"] for h in history),
            "pending_records": sum(w["pending_records"] for w in writers),
            "pending_bytes": sum(w["pending_bytes"] for w in writers),
            "acked_records": sum(w["acked_seq"] for w in writers) + sum(h["acked_seq"] for h in history),
        },
    }


def _writer_row(
    files: WriterFiles, pos: Position, adopted: bool, now: float, me: Identity, lease_s: float
) -> dict[str, Any]:
    meta = files.meta or Meta()
    beat = files.heartbeat or Heartbeat()
    finish = files.finish
    age = _age(now, beat.ts)
    if adopted:
        state = "adopted"
    elif finish is not None:
        state = "finished"
    else:
        state = _live_state(meta, age, me, lease_s)
    # The heartbeat may be a second old, or the last one of a killed writer: what is on
    # disk counts too (block headers only, from the cursor on).
    on_disk = max(_on_disk(files, pos), pos.seq)
    if finish is not None:
        durable = finish.durable_seq
    else:
        durable = max(beat.durable_seq, on_disk)
    logged = max(beat.logged_seq, durable)
    return {
        "writer": files.id,
        **_who(meta),
        "state": state,
        "records": logged,
        "durable_seq": durable,
        "acked_seq": pos.seq,
        "pending_records": max(0, durable - pos.seq),
        "pending_bytes": _pending_bytes(files.path, pos),
        "dead_letters": pos.dead,
        "dropped": beat.dropped or (finish.dropped if finish is not None else 0),
        "heartbeat_age": age,
        "error": beat.error,
        "started": meta.started,
        # null while it runs; "stale" (another host, silent for a lease) is not proof of death yet
        "end": writer_end(finish, state in ("adopted", "dead"),
                          lambda: folder_last_sign(files.path, files.tag, files.heartbeat)),
    }


def _on_disk(files: WriterFiles, pos: Position) -> int:
    try:
        fd = _files.open_dir(files.path)
    except OSError:
        return 0
    try:
        return last_seq_on_disk(fd, pos.segment, pos.offset, writer=files.tag)
    finally:
        os.close(fd)


def _live_state(meta: Meta, age: float | None, me: Identity, lease_s: float) -> str:
    """live, dead (proven on this host), or stale (no heartbeat for a lease, another host)."""
    if meta.boot_id == me.boot_id and meta.pid_ns == me.pid_ns:
        alive = None
        if meta.pid is not None and meta.create_time is not None:
            alive = probe_process(meta.pid, meta.create_time, thorough=True)
        return "dead" if alive is False else "live"
    return "stale" if age is not None and age > lease_s else "live"


def _who(meta: Meta) -> dict[str, Any]:
    """The fields that say which process a writer was."""
    return {"rank": meta.rank, "local_rank": meta.local_rank, "host": meta.host, "pid": meta.pid,
            "run": meta.run, "attempt": meta.attempt}


def _history_row(tomb: Tombstone) -> dict[str, Any]:
    return {
        "writer": tomb.writer,
        **_who(tomb.meta),
        "state": tomb.state,
        "records": (tomb.finish.durable_seq if tomb.finish is not None else 0) or tomb.acked_seq,
        "acked_seq": tomb.acked_seq,
        "dead_letters": tomb.dead_letters,
        "removed": tomb.removed,
        "end": _tombstone_end(tomb),
    }


def _tombstone_end(tomb: Tombstone) -> dict[str, Any]:
    """The end the leader wrote in the tombstone; older tombstones carry none."""
    if tomb.end is not None:
        return recorded_end(tomb.end)
    if tomb.state == "adopted":
        return make_end("lost", LOST_DETAIL, ts=None)
    return recorded_end(None) if tomb.finish is None else recorded_end(tomb.finish.end, tomb.finish.ts)


def _tombstones(root: str) -> list[Tombstone]:
    path = os.path.join(root, HISTORY)
    try:
        fd = _files.open_dir(path)
    except OSError:
        return []
    try:
        found = []
        for name in sorted(os.listdir(fd)):
            if name.endswith(_layout.TOMBSTONE_SUFFIX):
                tomb = Tombstone.parse(_files.read_json_quietly(fd, name))
                if tomb is not None:
                    found.append(tomb)
        return found
    finally:
        os.close(fd)


def _pending_bytes(path: str, pos: Position) -> int:
    total = 0
    try:
        for name in os.listdir(path):
            index = _layout.parse_segment_name(name)
            if index is None or index < pos.segment:
                continue
            size = os.lstat(os.path.join(path, name)).st_size
            total += max(0, size - pos.offset) if index == pos.segment else size
    except OSError:
        pass
    return total


def _count_lines(path: str) -> int:
    """Newlines in the files of a folder, read a chunk at a time (never a line at a time)."""
    return sum(_scan_files(path, lambda fd: _count_newlines(fd)))


def _dir_bytes(path: str) -> int:
    return sum(_scan_files(path, lambda fd: os.fstat(fd).st_size))


def _scan_files(path: str, measure: Any) -> list[int]:
    """measure(fd) of every regular file in the folder `path`; no link is followed."""
    try:
        dir_fd = _files.open_dir(path)
    except OSError:
        return []
    found = []
    try:
        for name in os.listdir(dir_fd):
            fd = _files.open_regular(dir_fd, name)
            if fd is not None:
                try:
                    found.append(int(measure(fd)))
                finally:
                    os.close(fd)
    finally:
        os.close(dir_fd)
    return found


def _count_newlines(fd: int) -> int:
    total, pos = 0, 0
    while True:
        try:
            pos = os.lseek(fd, pos, os.SEEK_DATA)  # holes hold no newline
        except OSError:
            return total  # ENXIO: only a hole is left
        chunk = os.pread(fd, 1 << 20, pos)
        if not chunk:
            return total
        total += chunk.count(b"\n")
        pos += len(chunk)


def _age(now: float, ts: Any) -> float | None:
    try:
        return round(max(0.0, now - float(ts)), 3)
    except (TypeError, ValueError):
        return None
