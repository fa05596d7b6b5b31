"""How far the sink has acknowledged each writer: the cursor book, saved only after an ack.

    <dir>/cursors.json   {"epoch": E, "writers": {"<writer-id>": {"seq", "segment", "offset", "dead", "dead_max", "dead_min"}}}

seq is the last acknowledged seq of the writer; (segment, offset) is where the block
holding seq + 1 starts, so reading resumes there and skips records up to seq. dead
counts the writer's records the sink refused for good (dead letters, kept in
<dir>/deadletters/). One file for all writers: one fsync per acknowledged batch however
many writers it holds. It is replaced atomically (temp, fsync, rename, fsync dir), so a
crash leaves the old book or the new, never a mix. Only the leader writes it; writers
read their own entry for flush(delivered=True).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import _files
from .._layout import CURSORS, Modes

MAX_CURSORS_FILE = 64 << 20  # bytes: generous, ~100 bytes a writer


@dataclass(frozen=True)
class Position:
    """Everything up to seq is acknowledged; reading resumes at (segment, offset)."""

    seq: int = 0
    segment: int = 0
    offset: int = 0
    dead: int = 0
    dead_max: int = 0  # the highest seq that became a dead letter
    dead_min: int = 0  # the lowest one (0: none)


def read_cursors(root: str) -> dict[str, Position]:
    """Every writer's saved cursor; empty when there is no book or it is unreadable."""
    raw = _files.read_root_json(root, CURSORS, MAX_CURSORS_FILE)  # damaged: start over (at-least-once)
    book = {}
    if isinstance(raw, dict) and isinstance(raw.get("writers"), dict):
        for writer_id, entry in raw["writers"].items():
            try:
                book[writer_id] = Position(**{k: int(v) for k, v in entry.items() if k in _FIELDS})
            except (AttributeError, TypeError, ValueError):
                continue
    return book


def write_cursors(root: str, book: dict[str, Position], epoch: int, modes: Modes) -> None:
    body = {"epoch": epoch, "writers": {writer_id: asdict(pos) for writer_id, pos in book.items()}}
    _files.write_root_json(root, CURSORS, body, modes)


_FIELDS = frozenset(Position.__dataclass_fields__)
