"""Reading a directory back: its writers, their marks, and their envelopes in seq order.

The scanner trusts nothing it finds: names that are not writer ids, symlinks, fifos and
unparsable files are skipped with a warning, never followed and never a crash.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterator

import orjson

from . import _files, _layout
from ._exceptions import LayoutError
from ._record import writer_tag
from ._segment import Block, Damage, open_segments, read_segment

logger = logging.getLogger("distwal")

ENVELOPE_KEYS = ("writer", "host", "pid", "rank", "run", "local_rank", "attempt")


@dataclass
class WriterFiles:
    """One writer folder as found on disk: its metadata and marks (None when absent)."""

    id: str
    path: str
    meta: dict[str, Any] | None
    heartbeat: dict[str, Any] | None
    finish: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)

    @cached_property
    def tag(self) -> int:
        """The writer_tag its blocks carry."""
        return writer_tag(self.id)

    def envelope_prefix(self) -> bytes:
        """The constant head of this writer's envelopes: `{"writer":...,"run":...,` ."""
        meta = self.meta or {}
        head = {key: meta.get(key) for key in ENVELOPE_KEYS}
        head["writer"] = self.id
        return orjson.dumps(head)[:-1] + b","


def list_writers(root: str) -> list[WriterFiles]:
    """Every writer folder under root/writers, in id order."""
    writers_dir = os.path.join(root, _layout.WRITERS)
    try:
        dir_fd = _files.open_dir(writers_dir)
    except FileNotFoundError:
        raise LayoutError(f"{root} is not a distwal directory (no {_layout.WRITERS}/ inside)") from None
    except NotADirectoryError:
        raise LayoutError(f"{writers_dir} is not a directory: distwal never follows links there") from None
    found = []
    try:
        for name in sorted(os.listdir(dir_fd)):
            if not _layout.is_writer_id(name):
                if not name.startswith("."):
                    logger.warning("distwal: ignoring %s in %s: not a writer folder", name, writers_dir)
                continue
            writer = load_writer(dir_fd, name, os.path.join(writers_dir, name))
            if writer is not None:
                found.append(writer)
    finally:
        os.close(dir_fd)
    return found


def load_writer(writers_fd: int, name: str, path: str) -> WriterFiles | None:
    try:
        fd = _files.open_dir(name, dir_fd=writers_fd)
    except (FileNotFoundError, NotADirectoryError, OSError) as exc:
        logger.warning("distwal: ignoring %s: %s (not a directory, or a link)", path, exc.strerror)
        return None
    try:
        marks: dict[str, Any] = {}
        problems = []
        for key, filename in (("meta", _layout.META), ("heartbeat", _layout.HEARTBEAT), ("finish", _layout.FINISH)):
            try:
                value = _files.read_json(fd, filename)
            except LayoutError as exc:
                problems.append(str(exc))
                value = None
            marks[key] = value if isinstance(value, dict) else None
        return WriterFiles(name, path, marks["meta"], marks["heartbeat"], marks["finish"], problems)
    finally:
        os.close(fd)


def iter_items(path: str, segment: int = 0, offset: int = 0) -> Iterator[Block | Damage]:
    """Blocks and damaged spans of one writer folder, from (segment, offset) on."""
    tag = writer_tag(os.path.basename(os.path.normpath(path)))
    try:
        dir_fd = _files.open_dir(path)
    except OSError:
        return
    try:
        for index, fd, start in open_segments(dir_fd, segment, offset):
            yield from read_segment(fd, index, start, writer=tag)
    finally:
        os.close(dir_fd)


def iter_envelopes(writer: WriterFiles, damage: list[Damage] | None = None) -> Iterator[tuple[int, float, bytes]]:
    """(seq, ts, envelope JSON) of every readable record of `writer`, in seq order.

    Damaged spans are appended to `damage` when given. A block whose seqs go backwards
    (a duplicate left by a rewrite) is skipped, so seqs come out strictly increasing.
    """
    prefix = writer.envelope_prefix()
    last = 0
    for item in iter_items(writer.path):
        if isinstance(item, Damage):
            if damage is not None:
                damage.append(item)
            continue
        seq = item.first_seq
        for ts, line in zip(item.ts, item.lines):
            if seq > last:
                yield seq, ts, b"%s\"seq\":%d,\"ts\":%r,\"data\":%s}" % (prefix, seq, ts, line)
                last = seq
            seq += 1
