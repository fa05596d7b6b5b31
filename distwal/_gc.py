"""Retention: remove what only history keeps, never a record that is not delivered.

    <dir>/history/<writer-id>.json   tombstones: a writer whose records were all acknowledged,
                                     whose folder the leader removed; status shows them

gc removes tombstones older than a cutoff (by the time the leader removed the writer), and
nothing else: writer folders (live, finished, adopted), cursors, dead letters and quarantine
are left alone, so no undelivered record can be lost to it. A tombstone whose writer still
has a folder is kept too. Delivered records themselves live in the sink: pruning the
embedded SQLite sink is a SQL DELETE (README, "Runs and retention").
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from . import _files, _layout
from ._layout import ADOPTED, HISTORY, WRITERS
from ._marks import Tombstone


@dataclass
class Collected:
    """What gc removed (or, in a dry run, would remove), and what it kept."""

    removed: list[str] = field(default_factory=list)  # writer ids whose tombstones went
    kept: int = 0  # tombstones newer than the cutoff, or whose writer still has a folder
    freed_bytes: int = 0


def collect(root: str, older_than: float, dry_run: bool = False, now: float | None = None) -> Collected:
    """Remove the tombstones in `root` older than `older_than` seconds; see the module docstring."""
    cutoff = (time.time() if now is None else now) - older_than
    result = Collected()
    try:
        fd = _files.open_dir(os.path.join(root, HISTORY))
    except FileNotFoundError:
        return result
    try:
        folders = _writer_folders(root)
        for name in sorted(os.listdir(fd)):
            writer_id = _layout.parse_tombstone_name(name)
            if writer_id is None:
                continue  # not a tombstone: not ours to judge
            tomb = Tombstone.parse(_files.read_json_quietly(fd, name))
            if tomb is None or tomb.removed is None or tomb.writer != writer_id:
                continue
            if tomb.removed >= cutoff or writer_id in folders:
                result.kept += 1
                continue
            size = os.stat(name, dir_fd=fd, follow_symlinks=False).st_size
            if not dry_run:
                try:
                    os.unlink(name, dir_fd=fd)
                except FileNotFoundError:
                    continue  # removed by another gc meanwhile
            result.removed.append(writer_id)
            result.freed_bytes += size
        if result.removed and not dry_run:
            os.fsync(fd)
    finally:
        os.close(fd)
    return result


def _writer_folders(root: str) -> set[str]:
    """Writer ids that still have a folder in writers/ or adopted/."""
    found: set[str] = set()
    for sub in (WRITERS, ADOPTED):
        try:
            found.update(os.listdir(os.path.join(root, sub)))
        except FileNotFoundError:
            pass
    return found
