"""The writer's flusher on its own (distwal.writer.flusher): commit() driven by hand against a
fake folder whose segment writer is a disk of a chosen size. No thread, no real segment file."""

from __future__ import annotations

import errno
from array import array
from pathlib import Path
from typing import Any

import pytest

from distwal._config import Config
from distwal._cursor import Position, write_cursors
from distwal._layout import Modes
from distwal._record import HEADER, HEADER_SIZE
from distwal.writer.flusher import HEADROOM, Block, Flusher

# Every record: 4,000 bytes, plus 8 bytes of timestamp in its block. Large enough that a few
# records outweigh the headroom a full disk keeps for the marks.
LINE = b'{"pad":"' + b"x" * 3990 + b'"}\n'


def block(first_seq: int, count: int) -> Block:
    return first_seq, array("d", [1.0] * count), bytearray(LINE * count)


def block_bytes(count: int) -> int:
    return HEADER_SIZE + count * (8 + len(LINE))


class FakeSegments:
    """A disk of `capacity` bytes: blocks are written whole while they fit, else ENOSPC;
    `fail` lists errnos for the next calls to raise before anything is written."""

    def __init__(self, capacity: int = 1 << 30) -> None:
        self.capacity = capacity
        self.index = 0
        self.offset = 0
        self.written: list[tuple[int, int]] = []  # (first seq, count) of each block, in order
        self.syncs = 0
        self.fail: list[int] = []

    def append_many(self, blocks: list[list[Any]]) -> int:
        if self.fail:
            raise OSError(self.fail.pop(0), "injected")
        count = 0
        for parts in blocks:
            size = sum(len(p) for p in parts)
            if self.offset + size > self.capacity:
                break
            _, n, first_seq, *_ = HEADER.unpack_from(parts[0])
            self.written.append((first_seq, n))
            self.offset += size
            count += 1
        if not count:
            raise OSError(errno.ENOSPC, "No space left on device")
        return count

    def sync(self) -> None:
        self.syncs += 1


class FakeFolder:
    id = "host-writer"
    tag = 7

    def __init__(self, segments: FakeSegments) -> None:
        self.segments = segments
        self.beats: list[tuple[str, int, int]] = []

    def free_bytes(self) -> int:
        return self.segments.capacity - self.segments.offset

    def write_heartbeat(self, state: str, seq: int, durable_seq: int, at: Any, dropped: int, error: Any) -> None:
        self.beats.append((state, seq, durable_seq))


class Buffer:
    """The writer's side: blocks to hand over, and the bytes given back."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.released = 0

    def take(self) -> list[Block]:
        taken, self.blocks = self.blocks, []
        return taken

    def release(self, n: int) -> None:
        self.released += n


def make(tmp_path: Path, segments: FakeSegments, **options: Any) -> tuple[Flusher, Buffer]:
    config = Config.load(dir=tmp_path, **options)
    buffer = Buffer()
    flusher = Flusher(config, FakeFolder(segments), buffer.take, buffer.release, lambda: (0, 0))  # type: ignore[arg-type]
    return flusher, buffer


def test_taken_blocks_are_written_in_order_with_one_sync_per_commit(tmp_path: Path) -> None:
    segments = FakeSegments()
    flusher, buffer = make(tmp_path, segments)
    buffer.blocks = [block(1, 3), block(4, 2)]
    flusher.commit()
    assert segments.written == [(1, 3), (4, 2)]
    assert segments.syncs == 1
    assert flusher.durable_seq == 5
    assert flusher.durable_at == (0, segments.offset)
    assert buffer.released == 5 * len(LINE)
    flusher.commit()  # nothing new: no sync
    assert segments.syncs == 1


def test_no_sync_in_none_mode(tmp_path: Path) -> None:
    segments = FakeSegments()
    flusher, buffer = make(tmp_path, segments, durability="none")
    buffer.blocks = [block(1, 2)]
    flusher.commit()
    assert (segments.written, segments.syncs, flusher.durable_seq) == ([(1, 2)], 0, 2)


def test_a_failed_write_keeps_the_blocks_and_retries_them_first(tmp_path: Path) -> None:
    segments = FakeSegments()
    flusher, buffer = make(tmp_path, segments)
    segments.fail = [errno.EIO]
    buffer.blocks = [block(1, 2)]
    with pytest.raises(OSError):
        flusher.commit()
    assert (segments.written, flusher.durable_seq, buffer.released) == ([], 0, 0)
    buffer.blocks = [block(3, 1)]
    flusher.commit()
    assert segments.written == [(1, 2), (3, 1)]
    assert flusher.durable_seq == 3


def test_on_a_full_disk_what_leaves_headroom_free_is_written_cut_at_a_record_boundary(tmp_path: Path) -> None:
    fits = 3  # records whose block fits beside the headroom
    segments = FakeSegments(capacity=HEADROOM + block_bytes(fits) + 5)
    assert block_bytes(10) > segments.capacity
    flusher, buffer = make(tmp_path, segments)
    buffer.blocks = [block(1, 10)]
    with pytest.raises(OSError) as raised:
        flusher.commit()
    assert raised.value.errno == errno.ENOSPC
    assert segments.written == [(1, fits)], "the block was not cut to what fits"
    assert flusher.durable_seq == fits, "what was written before the error is durable"
    assert segments.syncs == 1
    assert segments.capacity - segments.offset >= HEADROOM, "the headroom for the marks was used"
    segments.capacity += 1 << 20  # space freed: the rest follows, in order
    flusher.commit()
    assert segments.written == [(1, fits), (fits + 1, 10 - fits)]
    assert flusher.durable_seq == 10
    assert buffer.released == 10 * len(LINE)


def test_nothing_is_written_over_the_pending_budget_until_the_sink_acknowledges(tmp_path: Path) -> None:
    segments = FakeSegments()
    budget = block_bytes(4)
    flusher, buffer = make(tmp_path, segments, max_pending_bytes=budget)
    buffer.blocks = [block(1, 5)]  # more than the budget: written, since nothing was pending
    flusher.commit()
    assert flusher.durable_seq == 5
    buffer.blocks = [block(6, 1)]
    flusher.commit()
    assert segments.written == [(1, 5)], "written over the pending budget"
    assert flusher.pending_bytes == block_bytes(5)
    write_cursors(str(tmp_path), {"host-writer": Position(seq=5, segment=0, offset=segments.offset)}, 1, Modes.for_config(False))
    flusher.refresh_acked()
    flusher.commit()
    assert segments.written == [(1, 5), (6, 1)]
    assert flusher.durable_seq == 6
