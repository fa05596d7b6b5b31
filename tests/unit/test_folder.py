"""The one folder reader (distwal._folder), the envelope (distwal._envelope), and the leader's
reading on top of them (distwal.leader.reading): cursor moves come back as positions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import distwal
from distwal import _files
from distwal._cursor import Position
from distwal._envelope import ENVELOPE_KEYS, envelope_prefix, envelopes
from distwal._folder import NextSegment, WriterFiles, iter_envelopes, iter_items, list_writers, read_blocks
from distwal._layout import Modes, format_quarantine_name, format_segment_name
from distwal._marks import Meta
from distwal._segment import Block, Damage
from distwal.leader.reading import FolderReader, Tracked
from distwal.sinks import Batch, Chunk

LONG = 3600.0  # seconds: the flusher runs only when flush() wakes it
PRIVATE = Modes.for_config(shared_group=False)


@pytest.fixture
def written(tmp_path: Path) -> Iterator[WriterFiles]:
    """A finished writer of 40 records over several 256-byte segments, three records a block."""
    root = tmp_path / "run"
    writer = distwal.init(dir=root, segment_bytes=256, interval=LONG, run_id="r")
    for i in range(40):
        writer.log({"i": i, "pad": "x" * (i % 7) * 10})
        if i % 3 == 2:
            assert writer.flush(timeout=10)
    writer.finish(timeout=10)
    (files,) = list_writers(str(root))
    assert len(list(Path(files.path).glob("*.wal"))) > 3, "no rotation happened"
    yield files


def _segments(files: WriterFiles) -> list[str]:
    return sorted(p.name for p in Path(files.path).glob("*.wal"))


# -- the envelope ------------------------------------------------------------------------


def test_cat_and_the_sender_build_the_same_envelopes(written: WriterFiles) -> None:
    meta = written.meta
    assert meta is not None and meta.run == "r" and meta.pid == os.getpid()
    by_cat = [envelope for _, _, envelope in iter_envelopes(written)]
    chunks = tuple(Chunk(written.id, meta.who, written.envelope_prefix, item.first_seq, item.ts, item.lines)
                   for item in iter_items(written.path) if isinstance(item, Block))
    by_sender = Batch(1, "d", chunks).ndjson().splitlines()
    assert len(by_cat) == 40 and by_cat == by_sender
    first = orjson.loads(by_cat[0])
    assert tuple(first) == ENVELOPE_KEYS, "ingest protocol v1 order"
    assert (first["writer"], first["seq"], first["run"], first["pid"], first["data"]) == (
        written.id, 1, "r", os.getpid(), {"i": 0, "pad": ""})


def test_the_envelope_prefix_is_the_writers_fields_from_its_meta() -> None:
    meta = Meta(host="h", pid=7, rank=2, run="r", local_rank=0, attempt=1, boot_id="b")
    prefix = envelope_prefix("w", meta.who)
    assert prefix == b'{"writer":"w","host":"h","pid":7,"rank":2,"run":"r","local_rank":0,"attempt":1,'


_stamps = st.floats(allow_nan=False, allow_infinity=False) | st.floats(min_value=1e9, max_value=2e9)


@given(st.lists(_stamps, min_size=1, max_size=20))
def test_envelope_timestamps_read_back_as_the_very_floats_logged(ts: list[float]) -> None:
    lines = [b"%d" % i for i in range(len(ts))]
    out = [orjson.loads(e) for e in envelopes(b'{"writer":"w",', 5, ts, lines)]
    assert [(e["seq"], e["ts"], e["data"]) for e in out] == [(5 + i, t, i) for i, t in enumerate(ts)]


@pytest.mark.parametrize("ts", [1700000000.123456, 1.0, 0.1, 1234.5])
def test_envelope_timestamps_are_spelled_like_repr_for_the_times_writers_log(ts: float) -> None:
    # `distwal cat` formatted with %r before the envelope had one home; both agree here.
    (envelope,) = envelopes(b"{", 1, [ts], [b"null"])
    assert envelope == b'{"seq":1,"ts":%r,"data":null}' % ts


# -- reading across segments ---------------------------------------------------------------


def test_read_blocks_says_where_it_goes_on_past_a_missing_segment(written: WriterFiles) -> None:
    names = _segments(written)
    os.unlink(os.path.join(written.path, names[1]))
    fd = _files.open_dir(written.path)
    try:
        items = list(read_blocks(fd, written.tag))
        from_missing = list(read_blocks(fd, written.tag, 1, 40))
    finally:
        os.close(fd)
    steps = [i for i in items if isinstance(i, NextSegment)]
    size = os.path.getsize(os.path.join(written.path, names[0]))
    assert steps[0] == NextSegment(2, 0, size), "the gap shows: 2 follows 0"
    assert from_missing[0] == NextSegment(2, 1, None, 40), "a start in a missing segment is reported"
    assert not [i for i in items + from_missing if isinstance(i, Damage)]
    assert isinstance(from_missing[1], Block) and from_missing[1].segment == 2


def _tracked(files: WriterFiles, pos: Position) -> Tracked:
    return Tracked(files, _files.open_dir(files.path), pos, parent="writers")


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[FolderReader]:
    """The leader's reader, quarantining into tmp_path/quarantine."""
    quarantine = tmp_path / "quarantine"
    quarantine.mkdir()
    fd = _files.open_dir(str(quarantine))
    yield FolderReader(fd, PRIVATE, lease_s=5.0, clock=lambda: 0.0)
    os.close(fd)


def _drive(reader: FolderReader, files: WriterFiles, pos: Position) -> list[Any]:
    """What the sender does with a writer at `pos`: record each position before taking the next item."""
    t = _tracked(files, pos)
    out = []
    try:
        for item in reader.items(t):
            if isinstance(item, Position):
                t.pos = item
            out.append(item)
    finally:
        t.close()
    return out


def test_the_leader_reader_moves_the_cursor_off_a_missing_segment_by_yielding_it(
    written: WriterFiles, reader: FolderReader
) -> None:
    os.unlink(os.path.join(written.path, format_segment_name(0)))  # acknowledged and unlinked
    items = _drive(reader, written, Position())
    assert items[0] == Position(segment=1, offset=0)
    assert [i for i in items if isinstance(i, Position)] == [Position(segment=1, offset=0)]
    assert isinstance(items[1], Block) and items[1].segment == 1


def test_the_leader_reader_moves_onto_the_next_segment_once_a_sealed_one_is_acknowledged(
    written: WriterFiles, reader: FolderReader
) -> None:
    size = os.path.getsize(os.path.join(written.path, format_segment_name(0)))
    moved = [i for i in _drive(reader, written, Position(seq=3, segment=0, offset=size)) if isinstance(i, Position)]
    stayed = [i for i in _drive(reader, written, Position(seq=0, segment=0, offset=0)) if isinstance(i, Position)]
    assert moved[0] == Position(seq=3, segment=1, offset=0)
    assert stayed == [], "the cursor moves on acknowledgement only"


def test_the_leader_reader_quarantines_a_corrupt_span_and_yields_the_cursor_past_it(
    written: WriterFiles, reader: FolderReader, tmp_path: Path
) -> None:
    path = os.path.join(written.path, format_segment_name(0))
    data = bytearray(open(path, "rb").read())
    blocks = [i for i in iter_items(written.path) if isinstance(i, Block) and i.segment == 0]
    assert len(blocks) >= 2
    data[blocks[0].offset + 30] ^= 0xFF  # the first block's body: its checksum fails
    with open(path, "wb") as f:
        f.write(data)
    items = _drive(reader, written, Position())
    assert items[0] == Position(segment=0, offset=blocks[1].offset)
    assert isinstance(items[1], Block) and items[1].offset == blocks[1].offset
    copy = tmp_path / "quarantine" / format_quarantine_name(written.id, 0, 0)
    assert copy.read_bytes() == bytes(data[: blocks[1].offset])
    assert reader.quarantined_bytes == blocks[1].offset


def test_the_leader_reader_waits_on_damage_above_a_live_writers_durable_watermark(
    written: WriterFiles, reader: FolderReader, tmp_path: Path
) -> None:
    path = os.path.join(written.path, format_segment_name(0))
    with open(path, "ab") as f:
        f.write(b"\0" * 64)  # a tail not written yet, as a reader on NFS may see it
    live = WriterFiles(written.id, written.path, written.meta, None, None)
    os.unlink(os.path.join(written.path, "heartbeat.json"))  # no watermark: everything is above it
    items = _drive(reader, live, Position())
    assert not [i for i in items if isinstance(i, Position)]
    assert all(isinstance(i, Block) and i.segment == 0 for i in items), "it stops at the damage and waits"
    assert os.listdir(tmp_path / "quarantine") == []
