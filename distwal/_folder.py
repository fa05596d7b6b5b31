"""Reading writer folders: their marks, and their blocks in order across segments.

One reader for everyone who reads a directory: the leader (through leader/reading.py,
which adds what it decides about damage), `distwal cat`, status, the tests and the
benchmarks, so the tests check the disk with the code the leader runs.

It trusts nothing it finds: names that are not writer ids, symlinks, fifos and unparsable
files are skipped with a warning, never followed and never a crash.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterator, Union

from . import _files, _layout
from ._envelope import envelope_prefix, envelopes
from ._exceptions import LayoutError
from ._marks import Finish, Heartbeat, Meta
from ._record import writer_tag
from ._segment import Block, Damage, read_segment

logger = logging.getLogger("distwal")


@dataclass
class WriterFiles:
    """One writer folder as found on disk: its metadata and marks (None when absent)."""

    id: str
    path: str
    meta: Meta | None
    heartbeat: Heartbeat | None
    finish: Finish | None
    problems: list[str] = field(default_factory=list)

    @cached_property
    def tag(self) -> int:
        """The writer_tag its blocks carry."""
        return writer_tag(self.id)

    @cached_property
    def envelope_prefix(self) -> bytes:
        """The constant head of this writer's envelopes (see _envelope)."""
        return envelope_prefix(self.id, (self.meta or Meta()).who)


@dataclass(frozen=True)
class NextSegment:
    """Reading goes on at `segment`, after `previous`: sealed at `size` bytes, or missing
    (size None) where reading was to start at `offset`."""

    segment: int
    previous: int
    size: int | None
    offset: int = 0


Step = Union[Block, Damage, NextSegment]


# -- folders and marks -------------------------------------------------------------------


def list_writers(root: str) -> list[WriterFiles]:
    """Every writer folder under root/writers, in id order; other names are warned about."""
    writers_dir = os.path.join(root, _layout.WRITERS)
    try:
        dir_fd = _files.open_dir(writers_dir)
    except FileNotFoundError:
        raise LayoutError(f"{root} is not a distwal directory (no {_layout.WRITERS}/ inside)") from None
    except NotADirectoryError:
        raise LayoutError(f"{writers_dir} is not a directory: distwal never follows links there") from None
    try:
        return _load_all(dir_fd, writers_dir, warn=True)
    finally:
        os.close(dir_fd)


def list_folders(parent: str) -> list[WriterFiles]:
    """Every writer folder under `parent` (writers/ or adopted/), in id order; [] if unreadable."""
    try:
        dir_fd = _files.open_dir(parent)
    except OSError:
        return []
    try:
        return _load_all(dir_fd, parent, warn=False)
    finally:
        os.close(dir_fd)


def _load_all(parent_fd: int, parent: str, warn: bool) -> list[WriterFiles]:
    found = []
    for name in sorted(os.listdir(parent_fd)):
        if not _layout.is_writer_id(name):
            if warn and not name.startswith("."):
                logger.warning("distwal: ignoring %s in %s: not a writer folder", name, parent)
            continue
        writer = load_writer(parent_fd, name, os.path.join(parent, name))
        if writer is not None:
            found.append(writer)
    return found


def load_writer(parent_fd: int, name: str, path: str) -> WriterFiles | None:
    """The folder `name` under parent_fd with its marks; None (warned) if it is not a folder."""
    try:
        fd = _files.open_dir(name, dir_fd=parent_fd)
    except OSError as exc:
        logger.warning("distwal: ignoring %s: %s (not a directory, or a link)", path, exc.strerror)
        return None
    try:
        problems: list[str] = []
        meta = Meta.parse(_read_mark(fd, _layout.META, problems))
        beat = Heartbeat.parse(_read_mark(fd, _layout.HEARTBEAT, problems))
        finish = Finish.parse(_read_mark(fd, _layout.FINISH, problems))
        return WriterFiles(name, path, meta, beat, finish, problems)
    finally:
        os.close(fd)


def _read_mark(dir_fd: int, name: str, problems: list[str]) -> object:
    try:
        return _files.read_json(dir_fd, name)
    except LayoutError as exc:
        problems.append(str(exc))
        return None


# -- blocks ------------------------------------------------------------------------------


def read_blocks(
    dir_fd: int, tag: int, segment: int = 0, offset: int = 0, moved_on: Callable[[int], bool] = lambda size: True
) -> Iterator[Step]:
    """Blocks and damaged spans of the writer folder dir_fd from (segment, offset) on, across
    segments, with a NextSegment between two segments.

    moved_on(size): whether a later segment may follow one of `size` bytes; False stops
    reading there without listing the folder (the leader's idle writers, see Tracked).
    """
    while True:
        fd = _files.open_regular(dir_fd, _layout.format_segment_name(segment))
        if fd is None:
            later = later_segment(dir_fd, segment)
            if later is None:
                return
            yield NextSegment(later, segment, None, offset)
            segment, offset = later, 0
            continue
        try:
            size = os.fstat(fd).st_size
            yield from read_segment(fd, segment, offset, writer=tag)
        finally:
            os.close(fd)
        if not moved_on(size):
            return
        following = later_segment(dir_fd, segment)
        if following is None:
            return
        yield NextSegment(following, segment, size)
        segment, offset = following, 0


def later_segment(dir_fd: int, segment: int) -> int | None:
    """The first segment after `segment` in the folder, None when there is none."""
    indexes = [i for i in map(_layout.parse_segment_name, os.listdir(dir_fd)) if i is not None and i > segment]
    return min(indexes) if indexes else None


def iter_items(path: str, segment: int = 0, offset: int = 0) -> Iterator[Block | Damage]:
    """Blocks and damaged spans of the writer folder at `path`, from (segment, offset) on."""
    tag = writer_tag(os.path.basename(os.path.normpath(path)))
    try:
        dir_fd = _files.open_dir(path)
    except OSError:
        return
    try:
        for item in read_blocks(dir_fd, tag, segment, offset):
            if not isinstance(item, NextSegment):
                yield item
    finally:
        os.close(dir_fd)


def iter_envelopes(writer: WriterFiles, damage: list[Damage] | None = None) -> Iterator[tuple[int, float, bytes]]:
    """(seq, ts, envelope JSON) of every readable record of `writer`, in seq order.

    Damaged spans are appended to `damage` when given. A block whose seqs go backwards
    (a duplicate left by a rewrite) is skipped, so seqs come out strictly increasing.
    """
    prefix = writer.envelope_prefix
    last = 0
    for item in iter_items(writer.path):
        if isinstance(item, Damage):
            if damage is not None:
                damage.append(item)
            continue
        start = max(0, last + 1 - item.first_seq)
        if start >= len(item.lines):
            continue
        first = item.first_seq + start
        ts = item.ts[start:]
        for i, envelope in enumerate(envelopes(prefix, first, ts, item.lines[start:])):
            yield first + i, ts[i], envelope
        last = item.last_seq
