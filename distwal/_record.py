"""The on-disk framing: records travel in checksummed blocks, one block per group commit.

    header (28 bytes, little endian)
      magic      4s   b"DWB1"
      count      u32  records in the block
      first_seq  u64  seq of the first record; the others follow contiguously
      body_len   u32  bytes after the header
      body_crc   u32  CRC-32 of the body
      header_crc u32  CRC-32 of the 24 bytes before it, so a resync can trust a header it finds
    body
      count x f64     the unix time of each log() call
      count x line    the record as orjson wrote it, each followed by b"\\n"

Why blocks and not a frame per record: a block is what one write() and one fdatasync make
durable together, so it is the natural unit of atomicity; and building it costs a few C
calls however many records it holds (array.tobytes, zlib.crc32), where a
per-record header would cost about 0.3 us of Python per record on the flusher thread,
which holds the GIL the caller needs. The delimiter is a newline because orjson never
emits one inside a document. The checksum is CRC-32 from zlib: in the standard library,
it releases the GIL on large buffers, and it catches torn writes and bit flips, which is
its job here (the sink, not the checksum, defends against malice). Blocks are capped
(BLOCK_BYTES), so damage costs at most one block of records.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from dataclasses import dataclass

MAGIC = b"DWB1"
HEADER = struct.Struct("<4sIQIII")
HEADER_SIZE = HEADER.size
_HEADER_PREFIX = struct.Struct("<4sIQII")
BLOCK_BYTES = 1 << 20  # payload bytes per block, unless one record is larger
_TS_SIZE = 8
_CRC_PIECE = 4096  # bytes: below zlib's 5 KiB threshold for releasing the GIL
_SWAP = sys.byteorder != "little"


def encode_header(
    first_seq: int, count: int, ts: bytes | memoryview, payload: bytes | bytearray | memoryview
) -> bytes:
    """The header of the block whose body is ts + payload (passed apart, to avoid a copy)."""
    body_len = len(ts) + len(payload)
    body_crc = crc32_holding_gil(payload, crc32_holding_gil(ts))
    prefix = _HEADER_PREFIX.pack(MAGIC, count, first_seq, body_len, body_crc)
    return prefix + struct.pack("<I", zlib.crc32(prefix))


def crc32_holding_gil(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """zlib.crc32 in pieces small enough that zlib keeps the GIL (it lets go above 5 KiB).

    The writer's flusher calls this: letting go of the GIL is cheap, getting it back from a
    caller busy logging costs up to a switch interval (5 ms), once per call. About 0.3 ms
    per MiB with the GIL held is the better deal.
    """
    view = memoryview(data)
    for start in range(0, len(view), _CRC_PIECE):
        crc = zlib.crc32(view[start : start + _CRC_PIECE], crc)
    return crc


def timestamps_bytes(ts: "array[float]") -> bytes:
    """The timestamps section of a block, little endian whatever the machine."""
    if _SWAP:
        ts = array("d", ts)
        ts.byteswap()
    return ts.tobytes()


@dataclass(frozen=True)
class Header:
    count: int
    first_seq: int
    body_len: int
    body_crc: int

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1


def parse_header(raw: bytes) -> Header | None:
    """The header in `raw` (HEADER_SIZE bytes), or None when it is not a valid one."""
    if len(raw) < HEADER_SIZE or raw[:4] != MAGIC:
        return None
    magic, count, first_seq, body_len, body_crc, header_crc = HEADER.unpack_from(raw)
    if zlib.crc32(raw[: HEADER_SIZE - 4]) != header_crc:
        return None
    if count == 0 or first_seq == 0 or body_len < count * (_TS_SIZE + 1):
        return None
    return Header(count, first_seq, body_len, body_crc)


def decode_body(header: Header, body: bytes) -> tuple["array[float]", list[bytes]] | None:
    """Timestamps and record lines of a block, or None when the body does not match its header."""
    if len(body) != header.body_len or zlib.crc32(body) != header.body_crc:
        return None
    split = header.count * _TS_SIZE
    ts = array("d")
    ts.frombytes(body[:split])
    if _SWAP:
        ts.byteswap()
    lines = body[split:].split(b"\n")
    if len(lines) != header.count + 1 or lines[-1]:
        return None
    lines.pop()
    return ts, lines
