"""Segment files: SegmentWriter appends blocks and rotates; read_segment iterates them back.

A reader never crashes, stalls or invents a record on damage: it yields the valid blocks
and a Damage for every span it cannot read, then resumes at the next valid block. Whether
a damaged tail is "not yet written" (a live writer, above its durable watermark), "torn"
(a dead writer) or corruption is for the caller to decide; see Damage.
"""

from __future__ import annotations

import os
from array import array
from dataclasses import dataclass
from typing import Iterator, Sequence, Union

from . import _files, _layout
from ._layout import Modes
from ._record import HEADER_SIZE, MAGIC, decode_body, parse_header

_RESYNC_CHUNK = 1 << 20  # bytes read at a time while looking for the next valid block
_IOV_MAX = 1024  # buffers one writev may take (Linux)

Part = Union[bytes, bytearray, memoryview]  # a piece of a block, as writev takes it


class SegmentWriter:
    """Appends blocks to <writer dir>/NNNNNNNN.wal files, one writer process per folder.

    Not thread-safe: the writer's flusher thread is its only user. On a failed write the
    segment is cut back to its last whole block, so a full disk never leaves a torn block
    in front of later ones.
    """

    def __init__(
        self, dir_fd: int, modes: Modes, segment_bytes: int, index: int = 0, sync_on_seal: bool = True
    ) -> None:
        self._dir_fd = dir_fd
        self._modes = modes
        self._segment_bytes = segment_bytes
        self._sync_on_seal = sync_on_seal  # False in "none" mode: nothing is ever fdatasynced
        self.index = index
        self.offset = 0
        self._fd = -1

    def append(self, parts: Sequence[Part]) -> None:
        """Write one block (its header, then its body parts) at the end of the current segment."""
        self.append_many([parts])

    def append_many(self, blocks: Sequence[Sequence[Part]]) -> int:
        """Write blocks in order with one writev where they fit; return how many were written.

        One system call per commit matters: the flusher gives up the GIL for each call and
        may wait a whole switch interval (5 ms) to get it back from a busy caller. On an
        error nothing of this call counts: the segment is cut back and OSError raised.
        """
        if self._fd < 0 or self.offset >= self._segment_bytes:
            self._next_segment()
        iov: list[Part] = []
        size = count = 0
        for parts in blocks:
            if count and (self.offset + size >= self._segment_bytes or len(iov) + len(parts) > _IOV_MAX):
                break
            iov.extend(parts)
            size += sum(len(p) for p in parts)
            count += 1
        start = self.offset
        try:
            written = os.writev(self._fd, iov)
            if written < size:  # short write: rare, but legal
                rest = b"".join(bytes(p) for p in iov)[written:]
                while rest:
                    rest = rest[os.write(self._fd, rest) :]
        except OSError:
            self._cut_back(start)
            if count == 1:
                raise
            # Perhaps only part fits (a disk filling up): make what fits durable, block by block.
            return self.append_many(blocks[:1])
        self.offset = start + size
        return count

    def sync(self) -> None:
        if self._fd >= 0:
            os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _next_segment(self) -> None:
        if self._fd >= 0:
            if self._sync_on_seal:
                os.fdatasync(self._fd)  # a sealed segment is complete on disk before the next begins
            os.close(self._fd)
            self._fd = -1
            self.index += 1
        name = _layout.format_segment_name(self.index)
        self._fd = _files.create_file(self._dir_fd, name, self._modes, os.O_WRONLY | os.O_APPEND)
        os.fsync(self._dir_fd)  # the segment's name is durable before anything in it counts
        self.offset = 0

    def _cut_back(self, offset: int) -> None:
        try:
            os.ftruncate(self._fd, offset)
        except OSError:
            pass  # the reader stops at the torn tail; the next append retries the cut


@dataclass(frozen=True)
class Block:
    """Records read back from one block: seq first_seq + i was logged at ts[i] as lines[i]."""

    segment: int
    offset: int
    end: int
    first_seq: int
    ts: "array[float]"
    lines: list[bytes]

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.lines) - 1


@dataclass(frozen=True)
class Damage:
    """Bytes [start, end) of a segment that hold no valid block.

    at_tail: nothing valid follows in this segment. For a live writer such a tail above
    its durable watermark is simply not written yet; for a dead one it is a torn write.
    Anything else is corruption.
    """

    segment: int
    start: int
    end: int
    at_tail: bool


Item = Union[Block, Damage]


def read_segment(fd: int, segment: int = 0, offset: int = 0, *, writer: int) -> Iterator[Item]:
    """Iterate the blocks and damaged spans of one open segment from `offset` to its end.

    `writer` is the writer_tag of the folder: a block with another tag is damage here.
    """
    size = os.fstat(fd).st_size
    pos = offset
    while pos < size:
        block = _read_block(fd, writer, segment, pos, size)
        if block is not None:
            yield block
            pos = block.end
            continue
        resume = _find_next_block(fd, writer, pos + 1, size)
        yield Damage(segment, pos, resume if resume is not None else size, at_tail=resume is None)
        if resume is None:
            return
        pos = resume


def _read_block(fd: int, writer: int, segment: int, pos: int, size: int) -> Block | None:
    header = parse_header(os.pread(fd, HEADER_SIZE, pos), writer)
    if header is None or pos + HEADER_SIZE + header.body_len > size:
        return None
    decoded = decode_body(header, os.pread(fd, header.body_len, pos + HEADER_SIZE))
    if decoded is None:
        return None
    ts, lines = decoded
    return Block(segment, pos, pos + HEADER_SIZE + header.body_len, header.first_seq, ts, lines)


def _find_next_block(fd: int, writer: int, pos: int, size: int) -> int | None:
    while pos < size:
        try:
            pos = os.lseek(fd, pos, os.SEEK_DATA)  # skip holes: a sparse file holds no block there
        except OSError:
            return None  # ENXIO: nothing but a hole up to the end
        if pos >= size:
            return None
        chunk = os.pread(fd, _RESYNC_CHUNK + HEADER_SIZE, pos)
        at = chunk.find(MAGIC)
        while at != -1 and at < _RESYNC_CHUNK:
            if _read_block(fd, writer, 0, pos + at, size) is not None:
                return pos + at
            at = chunk.find(MAGIC, at + 1)
        pos += _RESYNC_CHUNK
    return None


def open_segments(dir_fd: int, segment: int = 0, offset: int = 0) -> Iterator[tuple[int, int, int]]:
    """(index, open fd, where to start reading) of each segment from (segment, offset) on.

    Each descriptor is closed when the caller asks for the next one (or stops).
    """
    for index, name in list_segments(dir_fd):
        if index < segment:
            continue
        fd = open_segment(dir_fd, name)
        if fd is None:
            continue
        try:
            yield index, fd, offset if index == segment else 0
        finally:
            os.close(fd)


def last_seq_on_disk(dir_fd: int, segment: int = 0, offset: int = 0, *, writer: int) -> int:
    """The last seq of the whole blocks from (segment, offset) on, reading headers only.

    For status: cheap (one small read per block) and never more than a header is trusted;
    bodies are not verified here, the sender does that. 0 when there is no block.
    """
    last = 0
    for _index, fd, pos in open_segments(dir_fd, segment, offset):
        size = os.fstat(fd).st_size
        while pos + HEADER_SIZE <= size:
            header = parse_header(os.pread(fd, HEADER_SIZE, pos), writer)
            if header is None or pos + HEADER_SIZE + header.body_len > size:
                break
            last = header.last_seq
            pos += HEADER_SIZE + header.body_len
    return last


def last_ts_on_disk(dir_fd: int, *, writer: int) -> float | None:
    """When the last whole record on disk was logged (unix time), or None when there is none.

    Reads the headers of the last segment, then the one body that holds the last record:
    for status and the sender, which ask it only of writers that ended without a word.
    """
    segments = list_segments(dir_fd)
    for _index, name in reversed(segments):
        fd = open_segment(dir_fd, name)
        if fd is None:
            continue
        try:
            size = os.fstat(fd).st_size
            pos, last = 0, None
            while pos + HEADER_SIZE <= size:
                header = parse_header(os.pread(fd, HEADER_SIZE, pos), writer)
                if header is None or pos + HEADER_SIZE + header.body_len > size:
                    break
                last = pos
                pos += HEADER_SIZE + header.body_len
            block = _read_block(fd, writer, 0, last, size) if last is not None else None
        finally:
            os.close(fd)
        if block is not None and len(block.ts):
            return float(block.ts[-1])
    return None


def list_segments(dir_fd: int) -> list[tuple[int, str]]:
    """(index, name) of every segment in a writer folder, in order; other names are ignored."""
    found = []
    for name in os.listdir(dir_fd):
        index = _layout.parse_segment_name(name)
        if index is not None:
            found.append((index, name))
    return sorted(found)


def open_segment(dir_fd: int, name: str) -> int | None:
    """Open a segment for reading; None if it vanished or is not a regular file (a planted link)."""
    return _files.open_regular(dir_fd, name)
