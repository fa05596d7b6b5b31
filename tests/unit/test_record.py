"""Block framing (distwal._record): Sealed / encode_header / parse_header / decode_body / timestamps_bytes."""

from __future__ import annotations

import struct
import zlib
from array import array

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from distwal._record import HEADER_SIZE, MAGIC, Header, Sealed, decode_body, parse_header, timestamps_bytes, writer_tag

TAG = writer_tag("host.1.2.3.record-test")

# JSON-able values orjson accepts: no lone surrogates, 64-bit integers, finite floats.
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
records = st.dictionaries(_text, _json, max_size=5)
timestamps = st.floats(allow_nan=True, allow_infinity=True)  # the framing must carry any double


def build_block(first_seq: int, recs: list[dict], ts: list[float]) -> tuple[bytes, bytes, bytes]:
    payload = b"".join(orjson.dumps(r) + b"\n" for r in recs)
    ts_bytes = timestamps_bytes(array("d", ts))
    header, ts_part, payload_part = Sealed.of(first_seq, ts_bytes, payload).parts(TAG)
    return header, bytes(ts_part), bytes(payload_part)


@given(
    first_seq=st.integers(min_value=1, max_value=2**63),
    data=st.data(),
)
def test_block_round_trips_records_timestamps_and_seq(first_seq: int, data: st.DataObject) -> None:
    recs = data.draw(st.lists(records, min_size=1, max_size=8))
    ts = data.draw(st.lists(timestamps, min_size=len(recs), max_size=len(recs)))
    header_bytes, ts_bytes, payload = build_block(first_seq, recs, ts)

    assert len(header_bytes) == HEADER_SIZE
    header = parse_header(header_bytes, TAG)
    assert header == Header(len(recs), first_seq, len(ts_bytes) + len(payload), zlib.crc32(ts_bytes + payload))
    assert header.last_seq == first_seq + len(recs) - 1

    decoded = decode_body(header, ts_bytes + payload)
    assert decoded is not None
    got_ts, lines = decoded
    assert got_ts.tobytes() == array("d", ts).tobytes()  # bit-exact, NaN and -0.0 included
    assert lines == [orjson.dumps(r) for r in recs]
    assert [orjson.loads(line) for line in lines] == recs


def test_header_layout_is_little_endian_with_magic_first() -> None:
    header_bytes, ts_bytes, payload = build_block(7, [{"a": 1}, {"b": 2}], [1.5, 2.5])
    magic, count, first_seq, tag, body_len, body_crc, header_crc = struct.unpack("<4sIQQIII", header_bytes)
    assert (magic, count, first_seq, tag) == (MAGIC, 2, 7, TAG)
    assert body_len == len(ts_bytes) + len(payload)
    assert body_crc == zlib.crc32(ts_bytes + payload)
    assert header_crc == zlib.crc32(header_bytes[:32])


def test_a_header_is_refused_for_any_other_writer() -> None:
    header_bytes, _, _ = build_block(1, [{"a": 1}], [0.0])
    assert parse_header(header_bytes, TAG) is not None
    assert parse_header(header_bytes, writer_tag("host.1.2.3.another")) is None


def test_writer_tags_differ_between_writer_ids_and_are_stable() -> None:
    ids = [f"host.{pid}.1700000000.{n:08x}" for pid in range(50) for n in range(20)]
    assert len({writer_tag(i) for i in ids}) == len(ids)
    assert writer_tag("a") == writer_tag("a") and 0 <= writer_tag("a") < 2**64


def test_timestamps_bytes_are_little_endian_doubles() -> None:
    assert timestamps_bytes(array("d", [1.5, -2.0, 1e300])) == struct.pack("<3d", 1.5, -2.0, 1e300)


def test_every_single_bit_flip_in_a_header_is_refused() -> None:
    header_bytes, _, _ = build_block(42, [{"k": "v"}] * 3, [1.0, 2.0, 3.0])
    assert parse_header(header_bytes, TAG) is not None
    for bit in range(HEADER_SIZE * 8):
        flipped = bytearray(header_bytes)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert parse_header(bytes(flipped), TAG) is None, f"bit {bit} flipped went unnoticed"


def test_every_single_bit_flip_in_a_body_is_refused() -> None:
    header_bytes, ts_bytes, payload = build_block(1, [{"step": 1, "loss": 0.25}, {"x": [1, 2]}], [10.0, 11.0])
    header = parse_header(header_bytes, TAG)
    assert header is not None
    body = ts_bytes + payload
    assert decode_body(header, body) is not None
    for bit in range(len(body) * 8):
        flipped = bytearray(body)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert decode_body(header, bytes(flipped)) is None, f"bit {bit} flipped went unnoticed"


@pytest.mark.parametrize("cut", [0, 1, 4, HEADER_SIZE - 1])
def test_short_header_is_refused(cut: int) -> None:
    header_bytes, _, _ = build_block(1, [{"a": 1}], [0.0])
    assert parse_header(header_bytes[:cut], TAG) is None


def _forge(count: int, first_seq: int, body_len: int, body_crc: int = 0, magic: bytes = MAGIC) -> bytes:
    """A header with a correct header CRC but whatever fields we like."""
    prefix = struct.pack("<4sIQQII", magic, count, first_seq, TAG, body_len, body_crc)
    return prefix + struct.pack("<I", zlib.crc32(prefix))


def test_parse_header_accepts_a_well_formed_forged_header() -> None:
    # Control for the refusals below: the forging itself yields a parseable header.
    assert parse_header(_forge(count=2, first_seq=5, body_len=18, body_crc=9), TAG) == Header(2, 5, 18, 9)


@pytest.mark.parametrize(
    "count, first_seq, body_len, magic",
    [
        (0, 1, 0, MAGIC),  # an empty block never exists
        (1, 0, 9, MAGIC),  # seqs start at 1
        (2, 1, 17, MAGIC),  # too short for 2 timestamps and 2 newlines
        (1, 1, 9, b"DWB1"),  # format 1, or any other magic, even with a valid CRC
    ],
)
def test_parse_header_refuses_impossible_fields(count: int, first_seq: int, body_len: int, magic: bytes) -> None:
    assert parse_header(_forge(count, first_seq, body_len, magic=magic), TAG) is None


def _header_for(count: int, body: bytes) -> Header:
    header = parse_header(_forge(count, 1, len(body), zlib.crc32(body)), TAG)
    assert header is not None
    return header


def test_decode_body_refuses_wrong_length() -> None:
    body = struct.pack("<d", 1.0) + b"{}\n"
    header = _header_for(1, body)
    assert decode_body(header, body) is not None
    assert decode_body(header, body[:-1]) is None
    assert decode_body(header, body + b"\n") is None


@pytest.mark.parametrize(
    "count, lines",
    [
        (1, b'{"a":1}\n{"b":2}\n'),  # more lines than records
        (2, b'{"a":1}\n{"b":2}'),  # last line without its newline
        (1, b'{"a":1}'),  # no newline at all
        (2, b'{"a":1}\n{"b":2}\n\n'),  # a stray empty line
    ],
)
def test_decode_body_refuses_line_count_mismatch_even_with_valid_crc(count: int, lines: bytes) -> None:
    body = struct.pack(f"<{count}d", *range(count)) + lines
    assert decode_body(_header_for(count, body), body) is None


def _records_of(block: Sealed) -> list[tuple[int, float, bytes]]:
    header, ts_bytes, payload = block.parts(TAG)
    parsed = parse_header(header, TAG)
    assert parsed is not None
    decoded = decode_body(parsed, bytes(ts_bytes) + bytes(payload))
    assert decoded is not None, "a split half is not a valid block"
    ts, lines = decoded
    return [(block.first_seq + i, t, line) for i, (t, line) in enumerate(zip(ts, lines))]


@given(first_seq=st.integers(min_value=1, max_value=2**62), data=st.data())
def test_split_keeps_every_record_in_order_in_two_valid_blocks_the_first_within_the_limit(
    first_seq: int, data: st.DataObject
) -> None:
    recs = data.draw(st.lists(records, min_size=2, max_size=12))
    ts = [float(i) for i in range(len(recs))]
    payload = b"".join(orjson.dumps(r) + b"\n" for r in recs)
    whole = Sealed.of(first_seq, timestamps_bytes(array("d", ts)), bytearray(payload))
    limit = data.draw(st.integers(min_value=0, max_value=whole.size + 10))
    halves = whole.split(limit)
    lines = [orjson.dumps(r) + b"\n" for r in recs]
    sizes = [HEADER_SIZE + 8 * k + sum(map(len, lines[:k])) for k in range(1, len(recs))]  # first k records
    if halves is None:  # only when no cut short of the whole block fits
        assert not any(size <= limit for size in sizes), (limit, sizes)
        return
    left, right = halves
    assert left.size <= limit and left.count >= 1 and right.count >= 1 and right.first_seq == left.last_seq + 1
    assert left.count == 1 + max(i for i, size in enumerate(sizes) if size <= limit), "not the largest cut that fits"
    assert _records_of(left) + _records_of(right) == _records_of(whole)
    assert len(left.payload) + len(right.payload) == len(payload)


def test_split_refuses_a_single_record() -> None:
    whole = Sealed.of(5, timestamps_bytes(array("d", [1.0])), orjson.dumps({"big": "y" * 1000}) + b"\n")
    assert whole.split(whole.size // 2) is None and whole.split(10**9) is None
