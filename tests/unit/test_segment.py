"""Segments (distwal._segment): SegmentWriter appends and rotates; read_segment never invents,
never crashes, never stalls, reports every damaged span and resyncs past it."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
import tempfile
import time
from array import array
from dataclasses import dataclass
from typing import Iterator

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from distwal import _segment
from distwal._files import open_dir, write_all
from distwal._layout import Modes
from distwal._record import HEADER_SIZE, MAGIC, Sealed, timestamps_bytes, writer_tag
from distwal._segment import Block, Damage, SegmentWriter, list_segments, open_segment, read_segment

PRIVATE = Modes.for_config(shared_group=False)
SHARED = Modes.for_config(shared_group=True)
MAX_ITEMS = 100_000  # a reader that yields more than this from a small file is looping
TAG = writer_tag("segment-test")  # the writer every block here belongs to


# -- building segments ----------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One block as written: where it lies and what it holds."""

    start: int
    end: int
    first_seq: int
    lines: tuple[bytes, ...]
    ts: bytes  # the timestamps as native doubles, compared bit-exactly

    def matches(self, block: Block, shift: int = 0) -> bool:
        return (
            block.offset == self.start + shift
            and block.end == self.end + shift
            and block.first_seq == self.first_seq
            and tuple(block.lines) == self.lines
            and block.ts.tobytes() == self.ts
        )


def block_parts(first_seq: int, recs: list[dict], ts: list[float]) -> list[bytes]:
    payload = b"".join(orjson.dumps(r) + b"\n" for r in recs)
    ts_bytes = timestamps_bytes(array("d", ts))
    return Sealed.of(first_seq, ts_bytes, payload).parts(TAG)


def encode_segment(blocks: list[list[dict]], first_seq: int = 1, t0: float = 1.7e9) -> tuple[bytes, list[Spec]]:
    """The bytes of a segment holding `blocks` with contiguous seqs, and where each block lies."""
    out = bytearray()
    specs = []
    seq = first_seq
    for recs in blocks:
        ts = [t0 + seq + i / 8 for i in range(len(recs))]
        raw = b"".join(block_parts(seq, recs, ts))
        specs.append(
            Spec(len(out), len(out) + len(raw), seq, tuple(orjson.dumps(r) for r in recs), array("d", ts).tobytes())
        )
        out += raw
        seq += len(recs)
    return bytes(out), specs


@contextlib.contextmanager
def segment_fd(data: bytes) -> Iterator[int]:
    """An open descriptor of a file holding `data` (in memory where the OS allows)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("segment")
    else:  # pragma: no cover - non-Linux
        fd = os.dup(tempfile.TemporaryFile().fileno())
    try:
        write_all(fd, data)
        yield fd
    finally:
        os.close(fd)


def read_bytes(data: bytes, offset: int = 0) -> list[Block | Damage]:
    with segment_fd(data) as fd:
        items = list(itertools.islice(read_segment(fd, 0, offset, writer=TAG), MAX_ITEMS))
    assert len(items) < MAX_ITEMS, "read_segment keeps yielding: it is looping"
    return items


@contextlib.contextmanager
def resync_chunk(size: int) -> Iterator[None]:
    """Shrink the resync read size so chunk boundaries fall inside small test files."""
    saved = _segment._RESYNC_CHUNK
    _segment._RESYNC_CHUNK = size
    try:
        yield
    finally:
        _segment._RESYNC_CHUNK = saved


def assert_tiles(items: list[Block | Damage], start: int, size: int) -> None:
    """Items cover [start, size) in order, without gaps or overlaps; at_tail only on a last Damage."""
    pos = start
    for i, item in enumerate(items):
        lo, hi = (item.offset, item.end) if isinstance(item, Block) else (item.start, item.end)
        assert lo == pos and hi > lo, f"item {i} {item!r} does not continue at {pos}"
        if isinstance(item, Damage):
            assert item.at_tail == (i == len(items) - 1), f"at_tail wrong on {item!r}"
            if i + 1 < len(items):
                assert isinstance(items[i + 1], Block), "two damages in a row: a resync point was missed"
        pos = hi
    assert pos == size, f"items end at {pos}, the file at {size}"


def blocks_of(items: list[Block | Damage]) -> list[Block]:
    return [item for item in items if isinstance(item, Block)]


def damages_of(items: list[Block | Damage]) -> list[Damage]:
    return [item for item in items if isinstance(item, Damage)]


# -- strategies -------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)


def records(max_pad: int) -> st.SearchStrategy[dict]:
    """Random JSON-able dicts of random size (a pad string stretches some of them)."""
    return st.builds(
        lambda d, pad: {**d, "pad": "p" * pad} if pad else d,
        st.dictionaries(_text, _json, max_size=4),
        st.integers(min_value=0, max_value=max_pad),
    )


def block_lists(max_blocks: int, max_records: int, max_pad: int) -> st.SearchStrategy[list[list[dict]]]:
    return st.lists(
        st.lists(records(max_pad), min_size=1, max_size=max_records), min_size=1, max_size=max_blocks
    )


first_seqs = st.integers(min_value=1, max_value=2**62)


# -- (a) written through SegmentWriter, read back exactly --------------------------------


@given(blocks=block_lists(max_blocks=8, max_records=6, max_pad=3000), first_seq=first_seqs, data=st.data())
def test_segment_writer_blocks_read_back_exactly_across_rotation(
    blocks: list[list[dict]], first_seq: int, data: st.DataObject
) -> None:
    segment_bytes = data.draw(st.sampled_from([1, 200, 4096, 1 << 30]), label="segment_bytes")
    expected: list[tuple[int, tuple[bytes, ...], bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        dir_fd = open_dir(tmp)
        try:
            writer = SegmentWriter(dir_fd, PRIVATE, segment_bytes)
            seq = first_seq
            for i, recs in enumerate(blocks):
                ts = [1.0e9 + i + j / 3 for j in range(len(recs))]
                writer.append(block_parts(seq, recs, ts))
                expected.append((seq, tuple(orjson.dumps(r) for r in recs), array("d", ts).tobytes()))
                seq += len(recs)
            writer.sync()
            writer.close()

            got = []
            segments = list_segments(dir_fd)
            assert [index for index, _ in segments] == list(range(len(segments)))
            for index, name in segments:
                fd = open_segment(dir_fd, name)
                assert fd is not None
                try:
                    size = os.fstat(fd).st_size
                    items = list(read_segment(fd, index, writer=TAG))
                finally:
                    os.close(fd)
                assert not damages_of(items), f"damage in a cleanly written segment: {items!r}"
                assert_tiles(items, 0, size)
                assert all(block.segment == index for block in blocks_of(items))
                if index != segments[-1][0]:
                    # Rotation rule: a segment takes blocks until it reaches segment_bytes.
                    last = items[-1]
                    assert size >= segment_bytes and last.offset < segment_bytes
                got += [(b.first_seq, tuple(b.lines), b.ts.tobytes()) for b in items]
        finally:
            os.close(dir_fd)
    assert got == expected


@given(blocks=block_lists(max_blocks=5, max_records=5, max_pad=50), first_seq=first_seqs)
def test_read_segment_returns_encoded_blocks_exactly(blocks: list[list[dict]], first_seq: int) -> None:
    data, specs = encode_segment(blocks, first_seq)
    items = read_bytes(data)
    assert len(items) == len(specs)
    for spec, item in zip(specs, items):
        assert isinstance(item, Block) and spec.matches(item)
        assert item.last_seq == spec.first_seq + len(spec.lines) - 1


# -- (b) truncation at every byte offset --------------------------------------------------


@settings(max_examples=25)
@given(blocks=block_lists(max_blocks=4, max_records=3, max_pad=20), first_seq=first_seqs)
def test_truncation_at_every_offset_keeps_whole_blocks_and_reports_a_tail(
    blocks: list[list[dict]], first_seq: int
) -> None:
    data, specs = encode_segment(blocks, first_seq)
    for cut in range(len(data) + 1):
        items = read_bytes(data[:cut])
        whole = [spec for spec in specs if spec.end <= cut]
        got = blocks_of(items)
        assert len(got) == len(whole), f"cut at {cut}: {len(got)} blocks, {len(whole)} whole before the cut"
        assert all(spec.matches(block) for spec, block in zip(whole, got)), f"cut at {cut}: a block changed"
        tail_start = whole[-1].end if whole else 0
        if tail_start == cut:
            assert damages_of(items) == [], f"cut at a block boundary {cut} reported damage"
        else:
            assert items[-1] == Damage(0, tail_start, cut, at_tail=True), f"cut at {cut}: {items[-1]!r}"
            assert len(damages_of(items)) == 1
        assert_tiles(items, 0, cut)


# -- (c) bit flips and overwrites anywhere -------------------------------------------------

mutations = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
        st.tuples(st.just("byte"), st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
        st.tuples(st.just("splat"), st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=24)),
    ),
    min_size=1,
    max_size=4,
)


def apply(data: bytes, muts: list[tuple]) -> bytes:
    out = bytearray(data)
    for kind, where, what in muts:
        at = int(where * len(out))
        if kind == "flip":
            out[at] ^= 1 << what
        elif kind == "byte":
            out[at] = what
        else:
            chunk = what[: len(out) - at]
            out[at : at + len(chunk)] = chunk
    return bytes(out)


def check_damaged(data: bytes, damaged: bytes, specs: list[Spec]) -> None:
    """The reader's contract on a same-length file with some bytes changed."""
    changed = {i for i in range(len(data)) if data[i] != damaged[i]}
    touched = [any(spec.start <= i < spec.end for i in changed) for spec in specs]
    items = read_bytes(damaged)
    assert_tiles(items, 0, len(damaged))

    # Nothing invented, no wrong seq: every block read is a block written, where it was written.
    by_offset = {spec.start: spec for spec in specs}
    for block in blocks_of(items):
        spec = by_offset.get(block.offset)
        assert spec is not None and spec.matches(block), f"invented or altered block {block!r}"

    # Every untouched block comes back, also after the damage (the reader resyncs); no
    # touched block does (its checksums fail).
    got = {block.offset for block in blocks_of(items)}
    for spec, hit in zip(specs, touched):
        assert (spec.start in got) != hit, f"block at {spec.start} (touched={hit}) read back={spec.start in got}"

    # Damage spans are exactly the runs of touched blocks, and cover every changed byte.
    runs = []
    for spec, hit in zip(specs, touched):
        if hit and runs and runs[-1][1] == spec.start:
            runs[-1] = (runs[-1][0], spec.end)
        elif hit:
            runs.append((spec.start, spec.end))
    assert [(d.start, d.end) for d in damages_of(items)] == runs
    assert all(any(d.start <= i < d.end for d in damages_of(items)) for i in changed)


@given(blocks=block_lists(max_blocks=6, max_records=4, max_pad=200), muts=mutations)
def test_flips_and_overwrites_lose_only_touched_blocks(blocks: list[list[dict]], muts: list[tuple]) -> None:
    data, specs = encode_segment(blocks)
    check_damaged(data, apply(data, muts), specs)


@pytest.mark.parametrize("chunk", [5, 29, 64])
@settings(max_examples=15)
@given(blocks=block_lists(max_blocks=5, max_records=3, max_pad=40), muts=mutations)
def test_resync_works_across_small_read_chunks(chunk: int, blocks: list[list[dict]], muts: list[tuple]) -> None:
    data, specs = encode_segment(blocks)
    with resync_chunk(chunk):
        check_damaged(data, apply(data, muts), specs)


def test_every_single_bit_flip_in_a_three_block_segment_loses_only_its_block() -> None:
    data, specs = encode_segment([[{"a": 1}, {"b": [1, 2]}], [{"step": 2, "loss": 0.5}], [{"z": None}] * 3])
    for bit in range(len(data) * 8):
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        check_damaged(data, bytes(damaged), specs)


def check_spliced(items: list[Block | Damage], specs: list[Spec], required: list[tuple[Spec, int]]) -> list[Block]:
    """After bytes were inserted or deleted: every block read is a block written (same seq,
    same records); every block the splice left whole comes back at its shifted offset.
    Returns the blocks read that were not required: a splice can, rarely, rebuild a cut
    block byte for byte (see the test below), which is the written block, not an invention."""
    content = {(s.first_seq, s.lines, s.ts) for s in specs}
    got = blocks_of(items)
    for block in got:
        assert (block.first_seq, tuple(block.lines), block.ts.tobytes()) in content, f"invented {block!r}"
    for spec, shift in required:
        assert any(spec.matches(block, shift) for block in got), f"lost the intact block at {spec.start}"
    wanted = {spec.start + shift for spec, shift in required}
    return [block for block in got if block.offset not in wanted]


@given(
    blocks=block_lists(max_blocks=5, max_records=3, max_pad=60),
    where=st.floats(0, 1),
    garbage=st.binary(min_size=1, max_size=80) | st.builds(lambda n: MAGIC * n, st.integers(1, 8)),
)
def test_inserted_garbage_is_one_damage_and_every_other_block_survives(
    blocks: list[list[dict]], where: float, garbage: bytes
) -> None:
    data, specs = encode_segment(blocks)
    at = int(where * len(data))
    items = read_bytes(data[:at] + garbage + data[at:])
    assert_tiles(items, 0, len(data) + len(garbage))
    required = [(spec, len(garbage) if spec.start >= at else 0) for spec in specs if spec.end <= at or spec.start >= at]
    if not check_spliced(items, specs, required):
        hit = [spec for spec in specs if spec.start < at < spec.end]
        lo = hit[0].start if hit else at
        hi = (hit[0].end if hit else at) + len(garbage)
        assert [(d.start, d.end) for d in damages_of(items)] == [(lo, hi)]


@given(blocks=block_lists(max_blocks=5, max_records=3, max_pad=60), lo=st.floats(0, 1), hi=st.floats(0, 1))
def test_deleted_bytes_lose_only_the_blocks_they_cut(blocks: list[list[dict]], lo: float, hi: float) -> None:
    data, specs = encode_segment(blocks)
    a, b = sorted((int(lo * len(data)), int(hi * len(data))))
    assume(a < b)
    items = read_bytes(data[:a] + data[b:])
    assert_tiles(items, 0, len(data) - (b - a))
    required = [(spec, -(b - a) if spec.start >= b else 0) for spec in specs if spec.end <= a or spec.start >= b]
    if not check_spliced(items, specs, required):
        assert len(blocks_of(items)) == len(required)
        assert bool(damages_of(items)) == any(spec.start < b and spec.end > a for spec in specs if spec.start < a or spec.end > b)


def test_a_deletion_that_rebuilds_a_block_exactly_is_not_an_invention() -> None:
    # Found by hypothesis: deleting from a block's last byte to the next block's last byte
    # leaves the first block whole again. The reader may return it: it is the written block.
    data, specs = encode_segment([[{"a": 1}], [{"b": 2}]])
    items = read_bytes(data[: specs[0].end - 1] + data[specs[1].end - 1 :])
    assert len(items) == 1 and specs[0].matches(items[0])


# -- (d) garbage files ----------------------------------------------------------------------


def check_garbage(data: bytes) -> None:
    started = time.monotonic()
    items = read_bytes(data)
    assert time.monotonic() - started < 5.0, "reading garbage took too long"
    assert blocks_of(items) == [], "a record was read from garbage"
    assert items == ([Damage(0, 0, len(data), at_tail=True)] if data else [])


@pytest.mark.timeout(30)
@given(data=st.binary(max_size=4096))
def test_random_bytes_never_yield_a_record(data: bytes) -> None:
    check_garbage(data)


@pytest.mark.timeout(30)
@given(
    n=st.integers(0, 300),
    tail=st.binary(max_size=40),
    chunk=st.sampled_from([None, 4, 7, 64]),
)
def test_magic_bytes_and_fragments_never_yield_a_record(n: int, tail: bytes, chunk: int | None) -> None:
    with resync_chunk(chunk) if chunk else contextlib.nullcontext():
        check_garbage(MAGIC * n + tail)


@pytest.mark.timeout(30)
def test_a_megabyte_of_magic_is_read_quickly_as_one_tail() -> None:
    check_garbage(MAGIC * ((_segment._RESYNC_CHUNK + 4096) // 4))


def test_empty_file_yields_nothing() -> None:
    assert read_bytes(b"") == []


def _forged_header(count: int, first_seq: int, body_len: int, body_crc: int = 0) -> bytes:
    import struct
    import zlib

    prefix = struct.pack("<4sIQII", MAGIC, count, first_seq, body_len, body_crc)
    return prefix + struct.pack("<I", zlib.crc32(prefix))


@pytest.mark.timeout(30)
def test_valid_header_claiming_a_huge_body_is_damage_not_a_giant_read(monkeypatch) -> None:
    data = _forged_header(1, 1, 2**32 - 1) + b"x" * 100
    asked: list[int] = []
    real_pread = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        asked.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(_segment.os, "pread", pread)
    check_garbage(data)
    assert asked and max(asked) <= _segment._RESYNC_CHUNK + HEADER_SIZE, "asked for the claimed body size"


def test_valid_header_with_a_body_that_fails_its_crc_is_damage() -> None:
    body = b"\0" * 8 + b"{}\n"
    check_garbage(_forged_header(1, 1, len(body), body_crc=12345) + body)


# -- reading from an offset -----------------------------------------------------------------


def test_read_from_a_block_boundary_starts_exactly_there() -> None:
    data, specs = encode_segment([[{"i": i}] for i in range(4)])
    items = read_bytes(data, offset=specs[2].start)
    assert [b.first_seq for b in blocks_of(items)] == [3, 4]
    assert damages_of(items) == []


def test_read_from_mid_block_reports_the_partial_block_then_resyncs() -> None:
    data, specs = encode_segment([[{"i": i}] for i in range(4)])
    items = read_bytes(data, offset=specs[1].start + 3)
    assert items[0] == Damage(0, specs[1].start + 3, specs[2].start, at_tail=False)
    assert [b.first_seq for b in blocks_of(items)] == [3, 4]


def test_read_from_the_end_yields_nothing() -> None:
    data, _ = encode_segment([[{"i": 1}]])
    assert read_bytes(data, offset=len(data)) == []


# -- SegmentWriter -------------------------------------------------------------------------


@pytest.fixture
def dir_fd(tmp_path) -> Iterator[int]:
    fd = open_dir(str(tmp_path))
    yield fd
    os.close(fd)


def _read_dir(dir_fd: int) -> list[Block | Damage]:
    items: list[Block | Damage] = []
    for index, name in list_segments(dir_fd):
        fd = open_segment(dir_fd, name)
        assert fd is not None
        try:
            items += read_segment(fd, index, writer=TAG)
        finally:
            os.close(fd)
    return items


@pytest.mark.parametrize("modes, expected", [(PRIVATE, 0o600), (SHARED, 0o660)])
def test_segment_files_have_exact_modes_whatever_the_umask(
    dir_fd: int, tmp_path, umask, modes: Modes, expected: int
) -> None:
    umask(0o077)
    writer = SegmentWriter(dir_fd, modes, segment_bytes=1)
    writer.append(block_parts(1, [{"a": 1}], [1.0]))
    writer.append(block_parts(2, [{"a": 2}], [2.0]))
    writer.close()
    names = sorted(os.listdir(tmp_path))
    assert names == ["00000000.wal", "00000001.wal"]
    for name in names:
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == expected


def test_segment_rotates_once_it_reaches_segment_bytes_exactly(dir_fd: int, tmp_path) -> None:
    parts = block_parts(1, [{"a": 1}], [1.0])
    size = sum(len(p) for p in parts)
    writer = SegmentWriter(dir_fd, PRIVATE, segment_bytes=size)
    writer.append(parts)
    writer.append(block_parts(2, [{"a": 2}], [2.0]))
    writer.close()
    assert sorted(os.listdir(tmp_path)) == ["00000000.wal", "00000001.wal"]
    assert (writer.index, writer.offset) == (1, size)


def test_segment_writer_resumes_at_the_given_index(dir_fd: int, tmp_path) -> None:
    writer = SegmentWriter(dir_fd, PRIVATE, segment_bytes=1 << 20, index=5)
    writer.append(block_parts(1, [{"a": 1}], [1.0]))
    writer.close()
    assert os.listdir(tmp_path) == ["00000005.wal"]
    assert writer.index == 5 and writer.offset == (tmp_path / "00000005.wal").stat().st_size


def test_list_segments_sorts_by_index_and_ignores_other_names(dir_fd: int, tmp_path) -> None:
    for name in ["0000000a.wal", "00000002.wal", "meta.json", "00000001.wal.tmp", "x.wal", "0000000A.wal"]:
        (tmp_path / name).write_bytes(b"")
    assert list_segments(dir_fd) == [(2, "00000002.wal"), (10, "0000000a.wal")]


def test_open_segment_refuses_links_and_fifos(dir_fd: int, tmp_path) -> None:
    (tmp_path / "real.wal").write_bytes(b"data")
    os.symlink(tmp_path / "real.wal", tmp_path / "00000000.wal")
    os.mkfifo(tmp_path / "00000001.wal")
    assert open_segment(dir_fd, "00000000.wal") is None
    assert open_segment(dir_fd, "00000001.wal") is None
    assert open_segment(dir_fd, "00000002.wal") is None  # missing
    fd = open_segment(dir_fd, "real.wal")
    assert fd is not None
    os.close(fd)


def test_failed_write_is_cut_back_so_later_blocks_read_cleanly(dir_fd: int, monkeypatch) -> None:
    writer = SegmentWriter(dir_fd, PRIVATE, segment_bytes=1 << 20)
    writer.append(block_parts(1, [{"a": 1}], [1.0]))
    good_end = writer.offset
    real_writev = os.writev

    def half_then_enospc(fd: int, parts: list) -> int:
        raw = b"".join(bytes(p) for p in parts)
        real_writev(fd, [raw[: len(raw) // 2]])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_segment.os, "writev", half_then_enospc)
    with pytest.raises(OSError):
        writer.append(block_parts(2, [{"a": 2}, {"a": 3}], [2.0, 3.0]))
    monkeypatch.setattr(_segment.os, "writev", real_writev)
    assert writer.offset == good_end
    assert os.fstat(writer._fd).st_size == good_end, "the torn block was left in the segment"

    writer.append(block_parts(2, [{"a": 2}, {"a": 3}], [2.0, 3.0]))  # the caller retries it
    writer.close()
    items = _read_dir(dir_fd)
    assert damages_of(items) == []
    assert [(b.first_seq, b.lines) for b in blocks_of(items)] == [(1, [b'{"a":1}']), (2, [b'{"a":2}', b'{"a":3}'])]


def test_short_writes_are_completed(dir_fd: int, monkeypatch) -> None:
    real_writev = os.writev
    monkeypatch.setattr(_segment.os, "writev", lambda fd, parts: real_writev(fd, [bytes(parts[0])[:5]]))
    writer = SegmentWriter(dir_fd, PRIVATE, segment_bytes=1 << 20)
    parts = block_parts(1, [{"a": 1}, {"b": 2}], [1.0, 2.0])
    writer.append(parts)
    writer.close()
    assert writer.offset == sum(len(p) for p in parts)
    items = _read_dir(dir_fd)
    assert [(b.first_seq, b.lines) for b in items] == [(1, [b'{"a":1}', b'{"b":2}'])]


def test_header_size_is_what_the_reader_skips() -> None:
    # Guards the arithmetic of the tests above: a block is header + 8 bytes per ts + lines.
    data, specs = encode_segment([[{"a": 1}]])
    assert specs[0].end == HEADER_SIZE + 8 + len(b'{"a":1}\n') == len(data)
