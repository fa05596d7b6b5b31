"""Coverage-guided fuzzing (atheris) of the segment reader and the directory scanner.

    .venv/bin/python tests/reliability/fuzz_reader.py -max_total_time=60          # one minute
    .venv/bin/python tests/reliability/fuzz_reader.py CORPUS_DIR -runs=200000     # keep a corpus

Needs `pip install atheris` (a wheel for CPython 3.11 on Linux x86-64). test_hostile_files.py runs
it for a few seconds when atheris is installed.

Each input is split into a segment, an offset and the three marks of a writer folder
(meta.json, heartbeat.json, finish.json); without a corpus directory on the command line the
run starts from a few valid inputs (whole blocks, marks as a writer writes them):
- read_segment, from an offset the input picks: never raises, never loops; its items tile
  [offset, size) in order; every Block is, byte for byte, a block the encoder would write for
  those records (so nothing is invented), and the bytes it covers are exactly that block.
- the scanner (list_writers, load_writer, iter_envelopes) over a directory holding that
  writer folder, a garbage entry and a link: never raises; envelopes name the folder, seqs
  strictly increase, and every envelope is one of the blocks read above.
- distwal.status() of that directory: never raises (60,000 runs in 91 s found nothing).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import sys
import tempfile
from array import array

import atheris
import orjson

with atheris.instrument_imports():
    from distwal import _files, _folder, _segment, _status
    from distwal._record import encode_block, timestamps_bytes, writer_tag
    from distwal._segment import Block, Damage

logging.getLogger("distwal").setLevel(logging.CRITICAL)  # the scanner warns about every bad name
_segment._RESYNC_CHUNK = 64  # small resync reads: chunk boundaries fall inside the inputs
WRITER_ID = "fuzzhost-0123abcd-4026531836-42-1700000000000-deadbeef"
ROOT = tempfile.mkdtemp(prefix="distwal-fuzz-")
MAX_ITEMS = 100_000
TAG = writer_tag(WRITER_ID)  # the segments fed to the reader are this writer's


def check_reader(segment: bytes, offset: int) -> set[tuple[int, bytes]]:
    """Read `segment` from `offset`; return the (seq, line) pairs of every block read."""
    fd = os.memfd_create("segment")
    try:
        _files.write_all(fd, segment)
        items = list(itertools.islice(_segment.read_segment(fd, 0, offset, writer=TAG), MAX_ITEMS))
    finally:
        os.close(fd)
    assert len(items) < MAX_ITEMS, "read_segment keeps yielding: a loop"
    pos = offset
    found = set()
    for i, item in enumerate(items):
        if isinstance(item, Block):
            assert item.offset == pos and item.end > pos, (item, pos)
            payload = b"".join(line + b"\n" for line in item.lines)
            ts = timestamps_bytes(item.ts)
            rebuilt = encode_block(TAG, item.first_seq, ts, payload)
            assert segment[item.offset : item.end] == rebuilt, "a block that is not the bytes it came from"
            found.update((item.first_seq + k, line) for k, line in enumerate(item.lines))
            pos = item.end
        else:
            assert isinstance(item, Damage) and item.start == pos and item.end > pos, (item, pos)
            assert item.at_tail == (i == len(items) - 1), item
            pos = item.end
    assert pos == max(offset, len(segment)) or (not items and offset >= len(segment)), (pos, len(segment))
    return found


def build_dir(segment: bytes, meta: bytes, beat: bytes, finish: bytes) -> str:
    root = os.path.join(ROOT, "wal")
    shutil.rmtree(root, ignore_errors=True)
    folder = os.path.join(root, "writers", WRITER_ID)
    os.makedirs(folder)
    for name, data in (("meta.json", meta), ("heartbeat.json", beat), ("finish.json", finish),
                       ("00000000.wal", segment)):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    with open(os.path.join(root, "writers", "garbage"), "wb") as f:
        f.write(meta[:64])
    os.symlink("/etc/passwd", os.path.join(folder, "00000001.wal"))
    return root


def check_scanner(root: str, blocks: dict[int, list[bytes]]) -> None:
    writers = _folder.list_writers(root)
    assert [w.id for w in writers] == [WRITER_ID], [w.id for w in writers]
    last = 0
    head = b'{"writer":"%s",' % WRITER_ID.encode()
    for seq, _ts, envelope in _folder.iter_envelopes(writers[0], []):
        assert seq > last, (seq, last)
        last = seq
        assert envelope.startswith(head), envelope[:120]
        assert b'"seq":%d,' % seq in envelope, envelope[:200]
        assert any(envelope.endswith(b'"data":' + line + b"}") for line in blocks.get(seq, [])), (
            f"envelope of seq {seq} is no record read from the segment")
    _status.status(root)


def split(data: bytes) -> tuple[bytes, int, bytes, bytes, bytes]:
    """The input's parts: [u16 n][segment][u16 offset][u8 n][meta][u8 n][heartbeat][u8 n][finish]."""
    view = memoryview(data)

    def take(n: int) -> bytes:
        nonlocal view
        part, view = bytes(view[:n]), view[n:]
        return part

    def size(width: int) -> int:
        return int.from_bytes(take(width).ljust(width, b"\0"), "little")

    segment = take(size(2))
    offset = size(2) % (len(segment) + 1)
    meta, beat, finish = take(size(1)), take(size(1)), take(size(1))
    return segment, offset, meta, beat, finish


def join(segment: bytes, offset: int, meta: bytes, beat: bytes, finish: bytes) -> bytes:
    out = len(segment).to_bytes(2, "little") + segment + offset.to_bytes(2, "little")
    for part in (meta, beat, finish):
        out += len(part).to_bytes(1, "little") + part
    return out


def test_one_input(data: bytes) -> None:
    segment, offset, meta, beat, finish = split(data)
    check_reader(segment, offset)
    blocks: dict[int, list[bytes]] = {}
    for seq, line in check_reader(segment, 0):
        blocks.setdefault(seq, []).append(line)
    check_scanner(build_dir(segment, meta, beat, finish), blocks)


def seed_corpus() -> str:
    """A corpus of valid inputs (whole blocks, marks as a writer writes them) to start from."""
    corpus = tempfile.mkdtemp(prefix="distwal-fuzz-corpus-")

    def block(first: int, recs: list[dict]) -> bytes:
        payload = b"".join(orjson.dumps(r) + b"\n" for r in recs)
        ts = timestamps_bytes(array("d", [1.7e9 + first + k for k in range(len(recs))]))
        return encode_block(TAG, first, ts, payload)

    segment = block(1, [{"i": 1}, {"i": 2}]) + block(3, [{"step": 3, "loss": 0.5}]) + block(4, [{}] * 3)
    meta = orjson.dumps({"writer": WRITER_ID, "host": "h", "pid": 42, "rank": 0, "run": "r", "first_seq": 1})
    beat = orjson.dumps({"state": "live", "seq": 6, "durable_seq": 6, "segment": 0, "offset": len(segment)})
    finish = orjson.dumps({"seq": 6, "segment": 0, "offset": len(segment)})
    seeds = [
        join(segment, 0, meta, beat, finish),
        join(segment, len(block(1, [{"i": 1}, {"i": 2}])), meta, beat, b""),
        join(segment[:-5], 0, meta, b"", b""),
        join(segment[:40] + b"\0" * 30 + segment[40:], 0, b"{}", b"[]", b"null"),
    ]
    for i, seed in enumerate(seeds):
        with open(os.path.join(corpus, f"seed-{i}"), "wb") as f:
            f.write(seed)
    return corpus


def main() -> None:
    argv = list(sys.argv)
    corpus = None
    if not any(not arg.startswith("-") for arg in argv[1:]):
        corpus = seed_corpus()
        argv.append(corpus)
    atheris.Setup(argv, test_one_input)
    try:
        atheris.Fuzz()
    finally:
        shutil.rmtree(ROOT, ignore_errors=True)
        if corpus:
            shutil.rmtree(corpus, ignore_errors=True)


if __name__ == "__main__":
    main()
